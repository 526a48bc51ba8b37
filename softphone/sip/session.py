"""An INVITE session (RFC 3261 sections 13-15), as SIP.js's Session.

What both directions share once a dialog exists: re-INVITE either way
(hold/unhold, with RFC 3261 14.1 glare handling on 491), BYE either way, INFO
DTMF in SIP.js's two bodies, the 2xx/ACK handshake of in-dialog INVITEs, and
the one place that moves between :class:`SessionState` values.  Media is the
description handler's business; the session only carries bodies.

Events: ``progress`` (response), ``accepted`` (response or None),
``established``, ``terminated`` (reason, status), ``dtmf``
(:class:`softphone.events.DtmfEvent`, via="info"), ``hold``/``unhold`` (far end), ``reinvite`` (request),
``info`` (request), ``state`` (SessionState).
"""

from __future__ import annotations

import asyncio
import enum
import random
import re
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import SessionError, SipError
from softphone.events import DtmfEvent
from softphone.log import get_logger
from softphone.sip.core import Uas2xxRetransmitter, UserAgentCore
from softphone.sip.description_handler import (
    Body,
    DescriptionOptions,
    SessionDescriptionHandler,
    SessionDescriptionHandlerFactory,
)
from softphone.sip.dialog import Dialog
from softphone.sip.direction import Direction, sdp_direction
from softphone.sip.transaction import ServerTransaction

log = get_logger(__name__)

DTMF_RELAY = "application/dtmf-relay"
DTMF_PLAIN = "application/dtmf"
DTMF_DIGITS = frozenset("0123456789*#ABCD")
_SIGNAL_RE = re.compile(r"^\s*Signal\s*=\s*(\S+)\s*$", re.IGNORECASE | re.MULTILINE)
_DURATION_RE = re.compile(r"^\s*Duration\s*=\s*(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
MAX_GLARE_RETRIES = 3


class SessionState(enum.Enum):
    INITIAL = "initial"
    ESTABLISHING = "establishing"
    ESTABLISHED = "established"
    TERMINATING = "terminating"
    TERMINATED = "terminated"


_ALLOWED = {
    SessionState.INITIAL: {SessionState.ESTABLISHING, SessionState.TERMINATED},
    SessionState.ESTABLISHING: {SessionState.ESTABLISHED, SessionState.TERMINATING, SessionState.TERMINATED},
    SessionState.ESTABLISHED: {SessionState.TERMINATING, SessionState.TERMINATED},
    SessionState.TERMINATING: {SessionState.TERMINATED},
    SessionState.TERMINATED: set(),
}


def parse_dtmf_info(content_type: str, body: str) -> tuple[str, int | None]:
    """(digit, duration ms or None) from an INFO body of either SIP.js content type."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == DTMF_RELAY:
        signal = _SIGNAL_RE.search(body)
        if not signal:
            raise SessionError(f"{DTMF_RELAY} INFO body has no Signal= line")
        digit = signal.group(1).upper()
        duration = _DURATION_RE.search(body)
        duration_ms = int(duration.group(1)) if duration else None
    elif kind == DTMF_PLAIN:
        digit = body.strip().upper()
        duration_ms = None
    else:
        raise SessionError(f"INFO content type {content_type!r} is not DTMF")
    if digit == "10":
        digit = "*"
    elif digit == "11":
        digit = "#"
    if len(digit) != 1 or digit not in DTMF_DIGITS:
        raise SessionError(f"INFO DTMF signal {digit!r} is not one of 0-9 * # A-D")
    return digit, duration_ms


def dtmf_info_body(digit: str, duration_ms: int, content_type: str) -> str:
    """The INFO body SIP.js sends for one digit."""
    if content_type == DTMF_RELAY:
        return f"Signal={digit}\r\nDuration={duration_ms}"
    return digit


class Session(AsyncIOEventEmitter):
    """Base of :class:`~softphone.sip.inviter.Inviter` and :class:`~softphone.sip.invitation.Invitation`."""

    direction = "?"

    def __init__(self, core: UserAgentCore, handler_factory: SessionDescriptionHandlerFactory) -> None:
        super().__init__()
        self.core = core
        self.state = SessionState.INITIAL
        self.dialog: Dialog | None = None
        self._handler_factory = handler_factory
        self._handler: SessionDescriptionHandler | None = None
        self.local_hold = False
        self.remote_hold = False
        self.termination_reason: str | None = None
        self.termination_status: int | None = None
        self.terminated_event = asyncio.Event()
        self.established_event = asyncio.Event()
        self._reinvite_pending = False
        self._reinvite_in_flight = False
        self._incoming_reinvite: ServerTransaction | None = None
        self._retransmitter: Uas2xxRetransmitter | None = None
        self._ack_waiter: asyncio.Future | None = None
        self._ack_cseq: int | None = None
        self._awaiting_answer_in_ack = False
        self._last_acks: dict[int, Any] = {}
        self._tasks: set[asyncio.Task] = set()

    # --- basics ----------------------------------------------------------------------

    @property
    def handler(self) -> SessionDescriptionHandler:
        if self._handler is None:
            self._handler = self._handler_factory(self)
        return self._handler

    @property
    def call_id(self) -> str | None:
        return self.dialog.call_id if self.dialog else None

    def _move(self, state: SessionState) -> None:
        if state is self.state:
            return
        if state not in _ALLOWED[self.state]:
            raise SessionError(f"session {self.call_id}: cannot go from {self.state.value} to {state.value}")
        log.debug("session %s (%s): %s -> %s", self.call_id, self.direction, self.state.value, state.value)
        self.state = state
        self.emit("state", state)
        if state is SessionState.ESTABLISHED:
            self.established_event.set()
            self.emit("established")

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("session %s task failed: %s", self.call_id, task.exception())

    async def _terminate(self, reason: str, status: int | None = None) -> None:
        """The one way out: release media, forget the dialog, tell listeners."""
        if self.state is SessionState.TERMINATED:
            return
        self.termination_reason, self.termination_status = reason, status
        self._move(SessionState.TERMINATED)
        if self._retransmitter is not None:
            self._retransmitter.stop()
        if self._ack_waiter is not None and not self._ack_waiter.done():
            self._ack_waiter.set_exception(SessionError(f"session terminated before ACK: {reason}", status))
            self._ack_waiter.exception()
        if self.dialog is not None:
            self.core.remove_dialog(self)
            if self.dialog.state.value != "terminated":
                self.dialog.terminate()
        if self._handler is not None:
            try:
                await self._handler.close()
            except Exception as exc:
                log.warning("closing the description handler failed: %s", exc)
        log.info("session %s terminated: %s%s", self.call_id, reason, f" ({status})" if status else "")
        self.terminated_event.set()
        self.emit("terminated", reason, status)

    async def wait_terminated(self, timeout: float) -> None:
        await asyncio.wait_for(self.terminated_event.wait(), timeout)

    async def wait_established(self, timeout: float) -> None:
        await asyncio.wait_for(self.established_event.wait(), timeout)

    def _require_established(self, what: str) -> Dialog:
        if self.state is not SessionState.ESTABLISHED or self.dialog is None:
            raise SessionError(f"cannot {what}: session is {self.state.value}, not established")
        return self.dialog

    # --- outgoing in-dialog requests --------------------------------------------------

    async def _send_in_dialog(self, method: str, *, body: str = "", content_type: str | None = None,
                              extra_headers: list[tuple[str, str]] | None = None, **kwargs: Any) -> Any:
        dialog = self.dialog
        if dialog is None:
            raise SessionError(f"cannot send {method}: no dialog")
        request = dialog.create_request(method, body=body, content_type=content_type,
                                        extra_headers=extra_headers)
        outgoing = self.core.request(request, next_cseq=dialog.next_cseq, **kwargs)
        response = await outgoing.response()
        if response.status in (408, 481) and method != "BYE":
            # RFC 3261 12.2.1.2: the dialog is gone.
            self._spawn(self._end_dialog(f"{method} answered {response.status}", response.status))
        return response

    async def _end_dialog(self, reason: str, status: int | None) -> None:
        await self._send_bye_quietly()
        await self._terminate(reason, status)

    async def _send_bye_quietly(self) -> None:
        if self.dialog is None:
            return
        try:
            await self._send_in_dialog("BYE")
        except (SipError, TimeoutError) as exc:
            log.info("BYE for %s not answered: %s", self.call_id, exc)

    async def bye(self, reason: str = "local hangup") -> None:
        """Hang up an established session (BYE) and wait for its answer (bounded)."""
        if self.state in (SessionState.TERMINATING, SessionState.TERMINATED):
            return
        self._require_established("send BYE")
        self._move(SessionState.TERMINATING)
        await self._send_bye_quietly()
        await self._terminate(reason)

    async def reinvite(self, options: DescriptionOptions | None = None) -> Any:
        """Send a re-INVITE with a fresh offer; retries after 491 as RFC 3261 14.1."""
        dialog = self._require_established("re-INVITE")
        if self._reinvite_pending or self._incoming_reinvite is not None:
            raise SessionError("cannot re-INVITE: another re-INVITE is in progress")
        self._reinvite_pending = True
        try:
            for attempt in range(MAX_GLARE_RETRIES + 1):
                offer = await self.handler.get_description(options)
                request = dialog.create_request(
                    "INVITE", body=offer.content, content_type=offer.content_type,
                    extra_headers=[("Allow", ",".join(self.core.config.allow)), ("Supported", "outbound")])
                outgoing = self.core.request(request, next_cseq=dialog.next_cseq,
                                             on_extra_2xx=self._resend_ack)
                self._reinvite_in_flight = True
                try:
                    response = await outgoing.response()
                finally:
                    self._reinvite_in_flight = False
                if 200 <= response.status < 300:
                    dialog.receive_response(response, "INVITE")
                    self._send_ack(response)
                    if not response.body:
                        await self.handler.rollback_description()
                        raise SessionError("2xx to our re-INVITE carries no answer", 488)
                    await self.handler.set_description(
                        Body(response.content_type or "application/sdp", response.body), options)
                    return response
                await self.handler.rollback_description()
                if response.status == 491 and attempt < MAX_GLARE_RETRIES:
                    low, high = self._glare_range()
                    delay = random.uniform(low, high)
                    log.info("re-INVITE glare (491): retrying in %.2fs", delay)
                    await asyncio.sleep(delay)
                    continue
                if response.status in (408, 481):
                    self._spawn(self._end_dialog(f"re-INVITE answered {response.status}", response.status))
                raise SessionError(f"re-INVITE rejected: {response.status} {response.reason}", response.status)
            raise SessionError("re-INVITE kept colliding (491)", 491)
        finally:
            self._reinvite_pending = False

    def _glare_range(self) -> tuple[float, float]:
        """RFC 3261 14.1: the Call-ID owner (the UAC of the dialog) waits longer."""
        timers = self.core.config.timers
        return timers.glare_owner if self.direction == "outgoing" else timers.glare_other

    async def hold(self) -> Any:
        self.local_hold = True
        try:
            return await self.reinvite(DescriptionOptions(hold=True))
        except SessionError:
            self.local_hold = False
            raise

    async def unhold(self) -> Any:
        self.local_hold = False
        try:
            return await self.reinvite(DescriptionOptions(hold=False))
        except SessionError:
            self.local_hold = True
            raise

    def _send_ack(self, response: Any, body: Body | None = None) -> None:
        assert self.dialog is not None
        seq = response.cseq.seq
        ack = self.dialog.create_ack(seq, body.content if body else "", body.content_type if body else None)
        self._last_acks[seq] = ack
        self.core.send_ack(ack)

    def _resend_ack(self, response: Any) -> None:
        ack = self._last_acks.get(response.cseq.seq)
        if ack is not None:
            try:
                self.core.transport.send(ack)
            except SipError as exc:
                log.debug("ACK retransmission not sent: %s", exc)

    def receive_stray_2xx(self, response: Any) -> None:
        self._resend_ack(response)

    async def send_info(self, content_type: str, body: str) -> Any:
        self._require_established("send INFO")
        return await self._send_in_dialog("INFO", body=body, content_type=content_type)

    async def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 70, method: str = "auto",
                        info_content_type: str = DTMF_RELAY) -> str:
        """Send DTMF; returns how it went (``"rtp"`` or ``"info"``).

        ``auto`` tries the media path (RFC 4733) and falls back to INFO when the
        handler cannot; ``rtp`` fails if it cannot; ``info`` always uses INFO.
        """
        digits = digits.upper()
        bad = [d for d in digits if d not in DTMF_DIGITS]
        if not digits or bad:
            raise SessionError(f"send_dtmf: digits {digits!r} must be non-empty and only 0-9 * # A-D")
        if method not in ("auto", "rtp", "info"):
            raise SessionError(f"send_dtmf: method must be auto, rtp or info, got {method!r}")
        if info_content_type not in (DTMF_RELAY, DTMF_PLAIN):
            raise SessionError(f"send_dtmf: info_content_type must be {DTMF_RELAY} or {DTMF_PLAIN}")
        self._require_established("send DTMF")
        if method in ("auto", "rtp"):
            if await self.handler.send_dtmf(digits, duration_ms, gap_ms):
                return "rtp"
            if method == "rtp":
                raise SessionError("send_dtmf: the media path cannot send RFC 4733 DTMF")
        for index, digit in enumerate(digits):
            response = await self.send_info(info_content_type, dtmf_info_body(digit, duration_ms,
                                                                              info_content_type))
            if response.status >= 300:
                raise SessionError(f"INFO DTMF {digit!r} rejected: {response.status} {response.reason}",
                                   response.status)
            if index < len(digits) - 1:
                await asyncio.sleep((duration_ms + gap_ms) / 1000)
        return "info"

    # --- incoming in-dialog requests ----------------------------------------------------

    def receive_in_dialog_request(self, request: Any, transaction: ServerTransaction | None) -> None:
        method = request.method
        if method == "ACK":
            self._receive_ack(request)
            return
        assert transaction is not None
        if method == "BYE":
            self.core.reply(transaction, 200, "OK")
            self._spawn(self._remote_bye())
        elif method == "INVITE":
            self._spawn(self._receive_reinvite(request, transaction))
        elif method == "INFO":
            self._receive_info(request, transaction)
        elif method in ("NOTIFY", "MESSAGE", "OPTIONS"):
            self.core.reply(transaction, 200, "OK")
            self.emit(method.lower(), request)
        else:
            self.core.reply(transaction, 501, "Not Implemented")

    async def _remote_bye(self) -> None:
        await self._on_remote_bye()
        await self._terminate("remote hangup")

    async def _on_remote_bye(self) -> None:
        """Hook: an Invitation still ringing answers its INVITE 487."""

    def _receive_info(self, request: Any, transaction: ServerTransaction) -> None:
        content_type = request.content_type or ""
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind in (DTMF_RELAY, DTMF_PLAIN):
            try:
                digit, duration = parse_dtmf_info(content_type, request.body or "")
            except SessionError as exc:
                self.core.reply(transaction, 400, "Bad Request", headers=[("Warning", f'399 - "{exc}"')])
                return
            self.core.reply(transaction, 200, "OK")
            self.emit("dtmf", DtmfEvent(digit, duration if duration is not None else 100, "info"))
            return
        self.core.reply(transaction, 200, "OK")
        self.emit("info", request)

    async def _receive_reinvite(self, request: Any, transaction: ServerTransaction) -> None:
        if self._reinvite_in_flight or self._incoming_reinvite is not None or \
                self.state is not SessionState.ESTABLISHED or self._awaiting_ack():
            self.core.reply(transaction, 491, "Request Pending")
            return
        self._incoming_reinvite = transaction
        assert self.dialog is not None
        self.emit("reinvite", request)
        try:
            options = DescriptionOptions(hold=self.local_hold)
            if request.body:
                body = Body(request.content_type or "application/sdp", request.body)
                if not self.handler.has_description(body.content_type):
                    self.core.reply(transaction, 415, "Unsupported Media Type",
                                    headers=[("Accept", "application/sdp")])
                    return
                try:
                    await self.handler.set_description(body, options)
                except SipError as exc:
                    log.warning("re-INVITE offer not acceptable: %s", exc)
                    self.core.reply(transaction, 488, "Not Acceptable Here")
                    return
                self._note_remote_direction(sdp_direction(request.body))
                answer = await self.handler.get_description(options)
                self._awaiting_answer_in_ack = False
            else:
                answer = await self.handler.get_description(options)
                self._awaiting_answer_in_ack = True
            response = self.core.make_response(
                request, 200, "OK", body=answer.content, content_type=answer.content_type,
                contact=self.dialog.local_contact)
            transaction.respond(response)
            self._start_ack_wait(response)
        except Exception:
            # A media failure must not leave the far end's re-INVITE unanswered.
            log.exception("re-INVITE handling failed")
            if transaction.last_response is None or transaction.last_response.status < 200:
                self.core.reply(transaction, 500, "Server Internal Error")
        finally:
            self._incoming_reinvite = None

    def _note_remote_direction(self, direction: Direction) -> None:
        held = direction in (Direction.SENDONLY, Direction.INACTIVE)
        if held and not self.remote_hold:
            self.remote_hold = True
            self.emit("hold", direction.value)
        elif not held and self.remote_hold:
            self.remote_hold = False
            self.emit("unhold", direction.value)

    def _awaiting_ack(self) -> bool:
        return self._ack_waiter is not None and not self._ack_waiter.done()

    def _start_ack_wait(self, response: Any) -> None:
        """Retransmit our INVITE 2xx until the ACK (13.3.1.4); BYE if it never comes."""
        self._ack_cseq = response.cseq.seq
        self._ack_waiter = asyncio.get_running_loop().create_future()
        self._retransmitter = Uas2xxRetransmitter(self.core, response, self._on_ack_timeout)

    def _on_ack_timeout(self) -> None:
        if self._ack_waiter is not None and not self._ack_waiter.done():
            self._ack_waiter.set_exception(SessionError("no ACK for our 200 OK", 408))
            self._ack_waiter.exception()
        self._spawn(self._end_dialog("no ACK", 408))

    def _receive_ack(self, request: Any) -> None:
        if self._ack_cseq is None or request.cseq.seq != self._ack_cseq:
            return  # a retransmitted ACK or one for an older INVITE
        if self._retransmitter is not None:
            self._retransmitter.ack_received()
        self._ack_cseq = None
        if self._awaiting_answer_in_ack:
            self._awaiting_answer_in_ack = False
            self._spawn(self._apply_ack_answer(request))
        elif self._ack_waiter is not None and not self._ack_waiter.done():
            self._ack_waiter.set_result(request)

    async def _apply_ack_answer(self, ack: Any) -> None:
        waiter = self._ack_waiter
        try:
            if not ack.body:
                raise SessionError("ACK carries no answer to the offer in our 200 OK", 488)
            await self.handler.set_description(Body(ack.content_type or "application/sdp", ack.body))
            self._note_remote_direction(sdp_direction(ack.body))
        except SipError as exc:
            log.warning("answer in ACK not usable (%s): ending the session", exc)
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
                waiter.exception()
            await self._end_dialog("bad answer in ACK", 488)
            return
        if waiter is not None and not waiter.done():
            waiter.set_result(ack)
