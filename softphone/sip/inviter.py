"""An outgoing INVITE session (the UAC side), as SIP.js's Inviter.

INVITE with our offer -> provisional responses (an early dialog on a tagged
1xx, early media when a 18x carries SDP) -> 2xx: dialog confirmed, answer
applied, ACK sent by the UAC core -> established.  ``cancel()`` before the
answer sends CANCEL (after the first provisional, RFC 3261 9.1) and the
session ends on the 487; a 2xx that races the CANCEL is ACKed and BYEd.
Digest challenges on the INVITE are answered by the core's OutgoingRequest.
"""

from __future__ import annotations

import asyncio
from typing import Any

from softphone.errors import AuthenticationError, SessionError, SipError, TransportError
from softphone.log import get_logger
from softphone.sip.core import OutgoingRequest, UserAgentCore
from softphone.sip.description_handler import Body, SessionDescriptionHandlerFactory
from softphone.sip.dialog import Dialog
from softphone.sip.direction import sdp_direction
from softphone.sip.message import SipUri
from softphone.sip.session import Session, SessionState

log = get_logger(__name__)


class Inviter(Session):
    direction = "outgoing"

    def __init__(self, core: UserAgentCore, target: Any, handler_factory: SessionDescriptionHandlerFactory,
                 *, extra_headers: list[tuple[str, str]] | None = None, no_answer_timeout: float = 120.0,
                 early_media: bool = True, offer: bool = True) -> None:
        super().__init__(core, handler_factory)
        self.target = SipUri.parse(target) if isinstance(target, str) else target
        self.extra_headers = list(extra_headers or [])
        self.no_answer_timeout = no_answer_timeout
        self.early_media = early_media
        self.send_offer = offer
        """False: INVITE without SDP (delayed offer); the 2xx offers, our ACK answers."""
        self.outgoing: OutgoingRequest | None = None
        self.request: Any = None
        self._cancel_requested: str | None = None
        self._cancel_sent = False
        self._early_applied = False
        self._early_task: asyncio.Task | None = None
        self._early_dialogs: dict[str, Dialog] = {}

    @property
    def call_id(self) -> str | None:
        return self.request.call_id if self.request is not None else None

    async def invite(self) -> Any:
        """Send the INVITE and wait for the call to be answered; returns the 2xx.

        Raises :class:`SessionError` (with ``status_code``) when rejected or
        cancelled, :class:`AuthenticationError` when the credentials are refused.
        """
        if self.state is not SessionState.INITIAL:
            raise SessionError(f"invite() already called (session is {self.state.value})")
        self._move(SessionState.ESTABLISHING)
        offer = Body("application/sdp", "")
        if self.send_offer:
            try:
                offer = await self.handler.get_description()
            except SipError as exc:
                await self._terminate("no local offer", None)
                raise SessionError(f"cannot create an offer: {exc}") from exc
        self.request = self.core.create_request(
            "INVITE", self.target, to=f"<{self.target}>", contact=self.core.contact(ob=True),
            body=offer.content, content_type=offer.content_type if offer.content else None,
            extra_headers=self.extra_headers,
            supported=("outbound",),
        )
        self.outgoing = self.core.request(self.request, on_progress=self._on_progress,
                                          on_extra_2xx=self._on_extra_2xx)
        try:
            response = await asyncio.wait_for(asyncio.shield(self.outgoing.final), self.no_answer_timeout)
        except AuthenticationError:
            await self._terminate("authentication rejected", 401)
            raise
        except SipError as exc:  # timer B (408), transport gone (503, RFC 3261 8.1.3.1)
            status = 503 if isinstance(exc, TransportError) else 408
            await self._terminate(f"INVITE failed: {exc}", status)
            raise SessionError(f"INVITE to {self.target} failed: {exc}", status) from exc
        except TimeoutError:
            log.info("INVITE to %s: no answer within %gs, cancelling", self.target, self.no_answer_timeout)
            await self.cancel("no answer")
            try:
                response = await asyncio.wait_for(asyncio.shield(self.outgoing.final),
                                                  self.core.config.timers.timer_b)
            except (SipError, TimeoutError):
                await self._terminate("no answer", 408)
                raise SessionError(f"INVITE to {self.target}: no answer", 408) from None
        self.request = self.outgoing.request  # the authenticated retry, if there was one
        if 200 <= response.status < 300:
            await self._on_2xx(response)
            return response
        status = response.status
        reason = "cancelled" if (status == 487 and self._cancel_requested) else "rejected"
        await self._terminate(reason, status)
        raise SessionError(f"INVITE to {self.target} {reason}: {status} {response.reason}", status)

    def _on_progress(self, response: Any) -> None:
        if self.state is not SessionState.ESTABLISHING:
            return
        if self._cancel_requested is not None and not self._cancel_sent:
            self._send_cancel()
        if response.status == 100:
            return
        to_tag = response.to.tag
        if to_tag and to_tag not in self._early_dialogs and response.contact:
            try:
                self._early_dialogs[to_tag] = Dialog.uac(self.outgoing.request, response,
                                                         self.core.contact(ob=True))
            except SipError as exc:
                log.debug("no early dialog from %d: %s", response.status, exc)
        self.emit("progress", response)
        if self.early_media and self.send_offer and response.body and not self._early_applied and \
                self.handler.has_description(response.content_type or ""):
            self._early_applied = True
            self._early_task = self._spawn(self.handler.set_description(
                Body(response.content_type or "application/sdp", response.body)))

    async def _on_2xx(self, response: Any) -> None:
        try:
            dialog = Dialog.uac(self.outgoing.request, response, self.core.contact(ob=True))
        except SipError as exc:
            await self._terminate(f"unusable 2xx: {exc}", response.status)
            raise SessionError(f"INVITE to {self.target}: unusable {response.status}: {exc}") from exc
        self.dialog = dialog
        self.core.add_dialog(self)
        if not self.send_offer:
            await self._answer_in_ack(response)
            return
        self._send_ack(response)
        if self._cancel_requested is not None:
            # The 2xx crossed our CANCEL: the call exists, end it (RFC 3261 15).
            self._move(SessionState.TERMINATING)
            await self._send_bye_quietly()
            await self._terminate("cancelled", 487)
            raise SessionError(f"INVITE to {self.target} cancelled (answer crossed the CANCEL)", 487)
        try:
            if self._early_task is not None:
                await self._early_task
            if response.body and not self._early_applied:
                await self.handler.set_description(Body(response.content_type or "application/sdp",
                                                        response.body))
            elif not response.body and not self._early_applied:
                raise SessionError("2xx to INVITE carries no answer", 488)
        except SipError as exc:
            log.warning("answer to INVITE not usable (%s): BYE", exc)
            self._move(SessionState.TERMINATING)
            await self._send_bye_quietly()
            await self._terminate("bad answer", 488)
            raise SessionError(f"INVITE to {self.target}: answer not usable: {exc}", 488) from exc
        self._move(SessionState.ESTABLISHED)
        self.emit("accepted", response)

    async def _answer_in_ack(self, response: Any) -> None:
        """Delayed offer: the 2xx carries the offer, our ACK the answer (RFC 3261 13.2.1)."""
        try:
            if not response.body:
                raise SessionError("2xx to an INVITE without SDP carries no offer", 488)
            await self.handler.set_description(Body(response.content_type or "application/sdp",
                                                    response.body))
            self._note_remote_direction(sdp_direction(response.body))
            answer = await self.handler.get_description()
        except SipError as exc:
            self._send_ack(response)
            self._move(SessionState.TERMINATING)
            await self._send_bye_quietly()
            await self._terminate("bad offer in 2xx", 488)
            raise SessionError(f"INVITE to {self.target}: offer in 2xx not usable: {exc}", 488) from exc
        self._send_ack(response, answer)
        self._move(SessionState.ESTABLISHED)
        self.emit("accepted", response)

    def _on_extra_2xx(self, response: Any) -> None:
        to_tag = response.to.tag
        if self.dialog is not None and to_tag == self.dialog.remote_tag:
            self._resend_ack(response)
            return
        # Another fork answered too: ACK it and hang it up (as SIP.js does).
        try:
            other = Dialog.uac(self.outgoing.request, response, self.core.contact(ob=True))
            self.core.send_ack(other.create_ack(response.cseq.seq))
            bye = other.create_request("BYE")
            self.core.request(bye, next_cseq=other.next_cseq)
        except SipError as exc:
            log.warning("could not end the extra fork %s: %s", to_tag, exc)

    def _send_cancel(self) -> None:
        self._cancel_sent = True
        reason = f'SIP;cause=487;text="{self._cancel_requested}"' if self._cancel_requested else None
        self.core.send_cancel(self.outgoing, reason)

    async def cancel(self, reason: str = "cancelled") -> None:
        """Give up before the answer: CANCEL now, or as soon as a provisional arrives."""
        if self.state is SessionState.INITIAL:
            await self._terminate("cancelled", None)
            return
        if self.state is not SessionState.ESTABLISHING or self._cancel_requested is not None:
            return
        self._cancel_requested = reason
        if self.outgoing is not None and self.outgoing.provisional_received and not self._cancel_sent:
            self._send_cancel()

    async def hangup(self) -> None:
        """CANCEL if not answered yet, BYE if established (what a red button does)."""
        if self.state is SessionState.ESTABLISHED:
            await self.bye()
        elif self.state in (SessionState.INITIAL, SessionState.ESTABLISHING):
            await self.cancel()
