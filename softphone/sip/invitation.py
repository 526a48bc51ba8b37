"""An incoming INVITE session (the UAS side), as SIP.js's Invitation.

INVITE -> 100 (core) -> 180 Ringing -> the answer policy decides (answer now,
after a delay, reject with a code, or a callable) -> 200 OK with our answer
(or our offer when the INVITE had no SDP; the answer then comes in the ACK)
-> ACK.  A CANCEL while ringing ends it with 487.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from softphone.errors import SessionError, SipError
from softphone.log import get_logger
from softphone.sip.core import UserAgentCore
from softphone.sip.description_handler import Body, SessionDescriptionHandlerFactory
from softphone.sip.dialog import Dialog
from softphone.sip.direction import sdp_direction
from softphone.sip.message import generate_tag
from softphone.sip.session import Session, SessionState
from softphone.sip.transaction import InviteServerTransaction, TransactionState

log = get_logger(__name__)


class AnswerMode(enum.Enum):
    ANSWER = "answer"
    REJECT = "reject"
    MANUAL = "manual"
    """Leave it ringing: the application calls ``accept()``/``reject()`` itself."""


@dataclass(frozen=True)
class AnswerPolicy:
    """What to do with an incoming call once it rings.

    ``decide`` (optional) gets the :class:`Invitation` and returns an
    :class:`AnswerPolicy` (without ``decide``), an awaitable of one, or None
    (manual); it overrides the fixed fields.
    """

    mode: AnswerMode = AnswerMode.ANSWER
    delay: float = 0.0
    reject_status: int = 486
    reject_reason: str | None = None
    ring: bool = True
    decide: Callable[[Invitation], AnswerPolicy | Awaitable[AnswerPolicy | None] | None] | None = None

    @classmethod
    def answer(cls, delay: float = 0.0) -> AnswerPolicy:
        return cls(AnswerMode.ANSWER, delay=delay)

    @classmethod
    def reject(cls, status: int = 486, reason: str | None = None, delay: float = 0.0) -> AnswerPolicy:
        if not 300 <= status <= 699:
            raise SessionError(f"reject status must be 300-699, got {status}")
        return cls(AnswerMode.REJECT, delay=delay, reject_status=status, reject_reason=reason)

    @classmethod
    def manual(cls) -> AnswerPolicy:
        return cls(AnswerMode.MANUAL)


class Invitation(Session):
    direction = "incoming"

    def __init__(self, core: UserAgentCore, request: Any, transaction: InviteServerTransaction,
                 handler_factory: SessionDescriptionHandlerFactory) -> None:
        super().__init__(core, handler_factory)
        self.request = request
        self.transaction = transaction
        self.local_tag = generate_tag()
        self.remote_identity: str = request.headers.get("From") or ""
        self._final_sent = False
        self._early_answer: Body | None = None
        core.cancel_handlers[transaction] = self._on_cancel
        transaction.add_terminated_callback(lambda _tx: core.cancel_handlers.pop(transaction, None))
        self._move(SessionState.ESTABLISHING)

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def offer(self) -> Body | None:
        if not self.request.body:
            return None
        return Body(self.request.content_type or "application/sdp", self.request.body)

    def _ensure_dialog(self) -> Dialog:
        if self.dialog is None:
            self.dialog = Dialog.uas(self.request, self.local_tag, self.core.contact())
            self.core.add_dialog(self)
        return self.dialog

    def _check_pending(self, what: str) -> None:
        if self._final_sent or self.state is not SessionState.ESTABLISHING:
            raise SessionError(f"cannot {what}: the call is {self.state.value}")

    def progress(self, status: int = 180, reason: str | None = None) -> None:
        """Send a provisional response (180 Ringing by default) that opens an early dialog."""
        self._check_pending("send progress")
        if not 101 <= status <= 199:
            raise SessionError(f"progress status must be 101-199, got {status}")
        self._ensure_dialog()
        self.core.reply(self.transaction, status, reason, to_tag=self.local_tag, contact=self.core.contact())

    async def send_early_media(self, status: int = 183, reason: str = "Session Progress") -> None:
        """A provisional response carrying our answer, so media flows before the 200."""
        self._check_pending("send early media")
        offer = self.offer
        if offer is None:
            raise SessionError("early media needs an offer in the INVITE (this one has no SDP)")
        if self._early_answer is None:
            try:
                await self.handler.set_description(offer)
                self._note_remote_direction(sdp_direction(offer.content))
                self._early_answer = await self.handler.get_description()
            except SipError as exc:
                await self.reject(488, "Not Acceptable Here")
                raise SessionError(f"cannot answer the offer: {exc}", 488) from exc
        self._ensure_dialog()
        self.core.reply(self.transaction, status, reason, to_tag=self.local_tag, contact=self.core.contact(),
                        body=self._early_answer.content, content_type=self._early_answer.content_type)

    async def accept(self, timeout: float | None = None) -> None:
        """Answer with 200 OK and wait for the ACK (bounded by 64*T1 unless ``timeout``)."""
        self._check_pending("accept")
        offer = self.offer
        if self._early_answer is None and offer is not None and \
                not self.handler.has_description(offer.content_type):
            await self.reject(415, "Unsupported Media Type")
            raise SessionError(f"cannot accept: offer type {offer.content_type!r} not supported", 415)
        try:
            if self._early_answer is not None:
                body = self._early_answer
            elif offer is not None:
                await self.handler.set_description(offer)
                self._note_remote_direction(sdp_direction(offer.content))
                body = await self.handler.get_description()
            else:
                body = await self.handler.get_description()
        except SipError as exc:  # the handler cannot use the offer (DescriptionError, SessionError)
            if not self._final_sent and self.state is SessionState.ESTABLISHING:
                await self.reject(488, "Not Acceptable Here")
            raise SessionError(f"cannot accept: {exc}", 488) from exc
        if self._final_sent or self.state is not SessionState.ESTABLISHING:
            raise SessionError(f"cannot accept: the call is {self.state.value}", self.termination_status)
        dialog = self._ensure_dialog()
        response = self.core.make_response(
            self.request, 200, "OK", to_tag=self.local_tag, contact=self.core.contact(),
            body=body.content, content_type=body.content_type)
        self._final_sent = True
        dialog.confirm()
        self._awaiting_answer_in_ack = offer is None
        self.transaction.respond(response)
        self._start_ack_wait(response)
        self.emit("accepted", None)
        assert self._ack_waiter is not None
        bound = timeout if timeout is not None else self.core.config.timers.ack_timeout * 1.5
        try:
            await asyncio.wait_for(asyncio.shield(self._ack_waiter), bound)
        except TimeoutError:
            raise SessionError("no ACK for our 200 OK", 408) from None
        if self.state is SessionState.ESTABLISHING:
            self._move(SessionState.ESTABLISHED)

    async def reject(self, status: int = 486, reason: str | None = None) -> None:
        """Refuse the call with a final 3xx-6xx response."""
        self._check_pending("reject")
        if not 300 <= status <= 699:
            raise SessionError(f"reject status must be 300-699, got {status}")
        self._final_sent = True
        self.core.reply(self.transaction, status, reason, to_tag=self.local_tag)
        await self._terminate("rejected", status)

    def _on_cancel(self, cancel: Any) -> None:
        if self._final_sent:
            return
        self._final_sent = True
        self.core.reply(self.transaction, 487, "Request Terminated", to_tag=self.local_tag)
        self.emit("cancel", cancel)
        self._spawn(self._terminate("cancelled", 487))

    async def _on_remote_bye(self) -> None:
        if not self._final_sent and self.transaction.state is TransactionState.PROCEEDING:
            self._final_sent = True
            self.core.reply(self.transaction, 487, "Request Terminated", to_tag=self.local_tag)

    async def apply_policy(self, policy: AnswerPolicy) -> None:
        """Ring, then answer/reject/leave as ``policy`` says (what the UserAgent does on INVITE)."""
        try:
            if policy.ring and self.state is SessionState.ESTABLISHING:
                self.progress(180, "Ringing")
            if policy.decide is not None:
                decided = policy.decide(self)
                if inspect.isawaitable(decided):
                    decided = await decided
                if decided is None:
                    return
                policy = decided
            if policy.mode is AnswerMode.MANUAL:
                return
            if policy.delay > 0:
                await asyncio.sleep(policy.delay)
            if self._final_sent or self.state is not SessionState.ESTABLISHING:
                return  # cancelled while we waited
            if policy.mode is AnswerMode.REJECT:
                await self.reject(policy.reject_status, policy.reject_reason)
            else:
                await self.accept()
        except SessionError as exc:
            log.warning("incoming call %s: %s", self.call_id, exc)
            if not self._final_sent and self.state is SessionState.ESTABLISHING:
                await self.reject(500, "Server Internal Error")
        except Exception:
            log.exception("answer policy failed for incoming call %s", self.call_id)
            if not self._final_sent and self.state is SessionState.ESTABLISHING:
                await self.reject(500, "Server Internal Error")
