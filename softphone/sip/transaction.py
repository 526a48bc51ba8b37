"""SIP transactions (RFC 3261 section 17, RFC 6026) over a reliable transport.

Four state machines, named and shaped like the RFC figures, each with one
``_move`` method that changes state.  WebSocket is reliable, so nothing here
retransmits requests; the timers that remain bound how long a transaction
waits for a final response (B, F), for an ACK (H) and how long an accepted
INVITE absorbs 2xx/INVITE retransmissions (M, L).

:class:`TransactionTable` matches responses to client transactions
(17.1.3: top Via branch + CSeq method) and requests to server transactions
(17.2.3: branch + sent-by + method, ACK matching its INVITE); CANCEL finds
the INVITE it cancels with :meth:`TransactionTable.find_invite_for_cancel`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Any, Protocol

from softphone.errors import TransactionTimeoutError, TransportError
from softphone.log import get_logger
from softphone.sip.message import CSeq, Headers, SipRequest, make_response
from softphone.sip.timers import Timers

log = get_logger(__name__)


class TransactionState(enum.Enum):
    TRYING = "Trying"
    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class ClientTransactionUser(Protocol):
    """What a client transaction reports to its user (the UAC core or a session)."""

    def receive_response(self, response: Any) -> None: ...

    def on_transaction_timeout(self, error: TransactionTimeoutError) -> None: ...

    def on_transport_error(self, error: TransportError) -> None: ...


class _Sender(Protocol):
    def send(self, message: Any) -> None: ...


def _header(message: Any, name: str) -> str | None:
    return message.headers.get(name)


class Transaction:
    """Common parts: state, timers, termination callback."""

    kind = "transaction"
    _allowed: dict[TransactionState, frozenset[TransactionState]] = {}

    def __init__(self, request: Any, transport: _Sender, timers: Timers) -> None:
        self.request = request
        self.transport = transport
        self.timers = timers
        self.branch: str = request.top_via.branch or ""
        self.method: str = request.method
        self.state: TransactionState = self._initial_state()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._on_terminated: list[Callable[[Transaction], None]] = []

    def _initial_state(self) -> TransactionState:
        raise NotImplementedError

    @property
    def id(self) -> str:
        return f"{self.branch}/{self.method}"

    def add_terminated_callback(self, callback: Callable[[Transaction], None]) -> None:
        self._on_terminated.append(callback)

    def _move(self, state: TransactionState) -> None:
        """The one place where the state changes; checks the RFC figure's arrows."""
        if state is self.state:
            return
        allowed = self._allowed.get(self.state, frozenset())
        if state not in allowed:
            raise RuntimeError(f"{self.kind} {self.id}: illegal move {self.state.value} -> {state.value}")
        log.debug("%s %s: %s -> %s", self.kind, self.id, self.state.value, state.value)
        self.state = state
        if state is TransactionState.TERMINATED:
            for handle in self._timers.values():
                handle.cancel()
            self._timers.clear()
            for callback in self._on_terminated:
                try:
                    callback(self)
                except Exception:
                    log.exception("transaction termination callback failed")

    def _start_timer(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._stop_timer(name)
        loop = asyncio.get_running_loop()
        if delay <= 0:
            self._timers[name] = loop.call_soon(self._fire, name, callback)
        else:
            self._timers[name] = loop.call_later(delay, self._fire, name, callback)

    def _fire(self, name: str, callback: Callable[[], None]) -> None:
        self._timers.pop(name, None)
        if self.state is not TransactionState.TERMINATED:
            callback()

    def _stop_timer(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def terminate(self) -> None:
        """Terminate at once (transport gone, user gave up)."""
        if self.state is not TransactionState.TERMINATED:
            self._move(TransactionState.TERMINATED)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state.value}>"


# --- client -----------------------------------------------------------------------


class ClientTransaction(Transaction):
    kind = "client transaction"

    def __init__(self, request: Any, transport: _Sender, timers: Timers, user: ClientTransactionUser) -> None:
        super().__init__(request, transport, timers)
        self.user = user
        self.last_response: Any = None

    def start(self) -> None:
        """Send the request; a transport failure is reported to the user, not raised."""
        try:
            self.transport.send(self.request)
        except TransportError as exc:
            self.terminate()
            self.user.on_transport_error(exc)
            return
        self._start_timeout()

    def _start_timeout(self) -> None:
        raise NotImplementedError

    def receive_response(self, response: Any) -> None:
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 figure 5 with RFC 6026's Accepted state."""

    kind = "INVITE client transaction"
    S = TransactionState
    _allowed = {
        S.CALLING: frozenset({S.PROCEEDING, S.ACCEPTED, S.COMPLETED, S.TERMINATED}),
        S.PROCEEDING: frozenset({S.ACCEPTED, S.COMPLETED, S.TERMINATED}),
        S.ACCEPTED: frozenset({S.TERMINATED}),
        S.COMPLETED: frozenset({S.TERMINATED}),
    }

    def _initial_state(self) -> TransactionState:
        return TransactionState.CALLING

    def _start_timeout(self) -> None:
        self._start_timer("B", self.timers.timer_b, self._timer_b)

    def _timer_b(self) -> None:
        if self.state is TransactionState.CALLING:
            self._move(TransactionState.TERMINATED)
            self.user.on_transaction_timeout(TransactionTimeoutError(
                f"INVITE to {self.request.uri}: no response within {self.timers.timer_b:g}s (timer B)"))

    def receive_response(self, response: Any) -> None:
        status = response.status
        state = self.state
        if state in (TransactionState.CALLING, TransactionState.PROCEEDING):
            self.last_response = response
            if status < 200:
                self._stop_timer("B")
                self._move(TransactionState.PROCEEDING)
                self.user.receive_response(response)
            elif status < 300:
                self._stop_timer("B")
                self._move(TransactionState.ACCEPTED)
                self._start_timer("M", self.timers.timer_m, lambda: self._move(TransactionState.TERMINATED))
                self.user.receive_response(response)
            else:
                self._stop_timer("B")
                self._move(TransactionState.COMPLETED)
                self._send_ack(response)
                self.user.receive_response(response)
                self._start_timer("D", self.timers.timer_d, lambda: self._move(TransactionState.TERMINATED))
        elif state is TransactionState.ACCEPTED:
            if 200 <= status < 300:
                self.user.receive_response(response)  # retransmission or another fork's 2xx
        elif state is TransactionState.COMPLETED:
            if status >= 300:
                self._send_ack(response)

    def _send_ack(self, response: Any) -> None:
        try:
            self.transport.send(make_non_2xx_ack(self.request, response))
        except TransportError as exc:
            log.warning("could not ACK %d to INVITE %s: %s", response.status, self.request.uri, exc)


def same_branch_headers(invite: Any, method: str, to: str) -> Headers:
    """Headers of a request in the INVITE's own transaction (CANCEL, non-2xx ACK).

    RFC 3261 9.1 and 17.1.1.3: the INVITE's top Via (same branch), its Route
    set, From, Call-ID and CSeq number, with ``method`` and the given To.
    """
    headers = Headers()
    headers.add("Via", str(invite.top_via))
    for route in invite.headers.get_all("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("To", to)
    headers.add("From", invite.headers.get("From"))
    headers.add("Call-ID", invite.call_id)
    headers.add("CSeq", str(CSeq(invite.cseq.seq, method)))
    return headers


def make_non_2xx_ack(invite: Any, response: Any) -> Any:
    """The ACK for a 3xx-6xx final response (RFC 3261 17.1.1.3): hop-by-hop, same branch."""
    headers = same_branch_headers(invite, "ACK", response.headers.get("To"))
    headers.add("Content-Length", "0")
    return SipRequest("ACK", invite.uri, headers, "")


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 figure 6 on a reliable transport (no retransmissions, timer K = 0)."""

    kind = "non-INVITE client transaction"
    S = TransactionState
    _allowed = {
        S.TRYING: frozenset({S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
        S.PROCEEDING: frozenset({S.COMPLETED, S.TERMINATED}),
        S.COMPLETED: frozenset({S.TERMINATED}),
    }

    def _initial_state(self) -> TransactionState:
        return TransactionState.TRYING

    def _start_timeout(self) -> None:
        self._start_timer("F", self.timers.timer_f, self._timer_f)

    def _timer_f(self) -> None:
        if self.state in (TransactionState.TRYING, TransactionState.PROCEEDING):
            self._move(TransactionState.TERMINATED)
            self.user.on_transaction_timeout(TransactionTimeoutError(
                f"{self.method} to {self.request.uri}: no final response within "
                f"{self.timers.timer_f:g}s (timer F)"))

    def receive_response(self, response: Any) -> None:
        if self.state not in (TransactionState.TRYING, TransactionState.PROCEEDING):
            return  # Completed absorbs retransmissions
        self.last_response = response
        if response.status < 200:
            self._move(TransactionState.PROCEEDING)
            self.user.receive_response(response)
            return
        self._stop_timer("F")
        self._move(TransactionState.COMPLETED)
        self.user.receive_response(response)
        self._start_timer("K", self.timers.timer_k, lambda: self._move(TransactionState.TERMINATED))


# --- server -----------------------------------------------------------------------


class ServerTransaction(Transaction):
    kind = "server transaction"

    def __init__(self, request: Any, transport: _Sender, timers: Timers) -> None:
        super().__init__(request, transport, timers)
        self.last_response: Any = None
        self.on_ack_timeout: Callable[[], None] | None = None
        via = request.top_via
        self.sent_by = f"{via.host}:{via.port or ''}".lower()

    def _send(self, response: Any) -> bool:
        try:
            self.transport.send(response)
            return True
        except TransportError as exc:
            log.warning("could not send %d for %s: %s", response.status, self.id, exc)
            return False

    def respond(self, response: Any) -> None:
        raise NotImplementedError

    def receive_request(self, request: Any) -> None:
        """A retransmission of our request (or the ACK for our non-2xx)."""
        raise NotImplementedError


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 figure 7 with RFC 6026's Accepted state."""

    kind = "INVITE server transaction"
    S = TransactionState
    _allowed = {
        S.PROCEEDING: frozenset({S.ACCEPTED, S.COMPLETED, S.TERMINATED}),
        S.ACCEPTED: frozenset({S.TERMINATED}),
        S.COMPLETED: frozenset({S.CONFIRMED, S.TERMINATED}),
        S.CONFIRMED: frozenset({S.TERMINATED}),
    }

    def __init__(self, request: Any, transport: _Sender, timers: Timers) -> None:
        super().__init__(request, transport, timers)
        self._start_timer("trying", timers.trying_delay, self._send_trying)

    def _initial_state(self) -> TransactionState:
        return TransactionState.PROCEEDING

    def _send_trying(self) -> None:
        """The TU is slow: tell the caller we are alive (17.2.1)."""
        if self.state is TransactionState.PROCEEDING and self.last_response is None:
            self.respond(make_response(self.request, 100, "Trying"))

    def respond(self, response: Any) -> None:
        status = response.status
        state = self.state
        if state is TransactionState.PROCEEDING:
            self._stop_timer("trying")
            self.last_response = response
            self._send(response)
            if 200 <= status < 300:
                self._move(TransactionState.ACCEPTED)
                self._start_timer("L", self.timers.timer_l, lambda: self._move(TransactionState.TERMINATED))
            elif status >= 300:
                self._move(TransactionState.COMPLETED)
                self._start_timer("H", self.timers.timer_h, self._timer_h)
        elif state is TransactionState.ACCEPTED and 200 <= status < 300:
            self._send(response)  # 2xx retransmission driven by the UAS core
        else:
            log.debug("%s: response %d ignored in state %s", self.id, status, state.value)

    def _timer_h(self) -> None:
        if self.state is TransactionState.COMPLETED:
            log.warning("%s: no ACK for %d within %gs (timer H)", self.id,
                        self.last_response.status, self.timers.timer_h)
            self._move(TransactionState.TERMINATED)
            if self.on_ack_timeout is not None:
                self.on_ack_timeout()

    def receive_request(self, request: Any) -> None:
        if request.method == "ACK":
            if self.state is TransactionState.COMPLETED:
                self._stop_timer("H")
                self._move(TransactionState.CONFIRMED)
                self._start_timer("I", self.timers.timer_i, lambda: self._move(TransactionState.TERMINATED))
            return
        if self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED) and self.last_response:
            self._send(self.last_response)


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 figure 8 on a reliable transport (timer J = 0)."""

    kind = "non-INVITE server transaction"
    S = TransactionState
    _allowed = {
        S.TRYING: frozenset({S.PROCEEDING, S.COMPLETED, S.TERMINATED}),
        S.PROCEEDING: frozenset({S.COMPLETED, S.TERMINATED}),
        S.COMPLETED: frozenset({S.TERMINATED}),
    }

    def _initial_state(self) -> TransactionState:
        return TransactionState.TRYING

    def respond(self, response: Any) -> None:
        if self.state in (TransactionState.COMPLETED, TransactionState.TERMINATED):
            log.debug("%s: response %d after the final one ignored", self.id, response.status)
            return
        self.last_response = response
        self._send(response)
        if response.status < 200:
            self._move(TransactionState.PROCEEDING)
        else:
            self._move(TransactionState.COMPLETED)
            self._start_timer("J", self.timers.timer_j, lambda: self._move(TransactionState.TERMINATED))

    def receive_request(self, request: Any) -> None:
        if self.state in (TransactionState.PROCEEDING, TransactionState.COMPLETED) and self.last_response:
            self._send(self.last_response)


# --- matching ---------------------------------------------------------------------


def server_key(request: Any, method: str | None = None) -> tuple[str, str, str]:
    via = request.top_via
    return (
        (via.branch or "").lower(),
        f"{via.host}:{via.port or ''}".lower(),
        method or ("INVITE" if request.method == "ACK" else request.method),
    )


class TransactionTable:
    """Live transactions, found by the RFC 3261 17.1.3 / 17.2.3 matching rules."""

    def __init__(self) -> None:
        self.client: dict[tuple[str, str], ClientTransaction] = {}
        self.server: dict[tuple[str, str, str], ServerTransaction] = {}

    def add_client(self, tx: ClientTransaction) -> None:
        key = (tx.branch.lower(), tx.method)
        self.client[key] = tx
        tx.add_terminated_callback(lambda t: self.client.pop(key, None) if self.client.get(key) is t else None)

    def add_server(self, tx: ServerTransaction) -> None:
        key = server_key(tx.request)
        self.server[key] = tx
        tx.add_terminated_callback(lambda t: self.server.pop(key, None) if self.server.get(key) is t else None)

    def match_response(self, response: Any) -> ClientTransaction | None:
        via = response.top_via
        if via is None or not via.branch:
            return None
        return self.client.get((via.branch.lower(), response.cseq.method))

    def match_request(self, request: Any) -> ServerTransaction | None:
        branch = request.top_via.branch if request.top_via else None
        if not branch or not branch.startswith("z9hG4bK"):
            return None  # RFC 2543 peers are not supported: treat as new
        return self.server.get(server_key(request))

    def find_invite_for_cancel(self, cancel: Any) -> InviteServerTransaction | None:
        tx = self.server.get(server_key(cancel, "INVITE"))
        return tx if isinstance(tx, InviteServerTransaction) else None

    def terminate_all(self) -> None:
        for tx in list(self.client.values()) + list(self.server.values()):
            tx.terminate()
