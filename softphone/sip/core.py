"""The user-agent core (RFC 3261 sections 8, 12-17), as SIP.js's UserAgentCore.

It sits between the transport and the transaction users (registerer,
sessions): builds requests with SIP.js's header set (random ``.invalid``
Via host and Contact, ``+sip.instance``/``reg-id`` for RFC 5626 outbound),
sends them in client transactions with digest authentication handled once
(:class:`OutgoingRequest`), and dispatches incoming requests to server
transactions, dialogs or the user agent.  Requests the core can answer on its
own are answered here: OPTIONS (200), unknown methods (501), known methods we
do not allow (405 with Allow), requests for a dialog we do not have (481),
out-of-order in-dialog requests (500).
"""

from __future__ import annotations

import asyncio
import enum
import random
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from softphone import __version__
from softphone.errors import AuthenticationError, SipError, TransactionTimeoutError, TransportError
from softphone.log import Secret, get_logger, register_secret, reveal
from softphone.sip.dialog import Dialog, DialogId
from softphone.sip.digest import DigestChallenge, DigestClient, DigestCredentials, choose_challenge
from softphone.sip.message import (
    CSeq,
    Headers,
    SipRequest,
    SipUri,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
)
from softphone.sip.timers import Timers
from softphone.sip.transaction import (
    ClientTransaction,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    TransactionState,
    TransactionTable,
    same_branch_headers,
)
from softphone.sip.transport import Transport

log = get_logger(__name__)

ALLOW = ("ACK", "CANCEL", "INVITE", "MESSAGE", "BYE", "OPTIONS", "INFO", "NOTIFY", "REFER")
"""What SIP.js 0.15.11 advertises, in its order."""
SUPPORTED = ("outbound", "path", "gruu")
KNOWN_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "MESSAGE", "NOTIFY", "REFER",
     "SUBSCRIBE", "UPDATE", "PRACK", "PUBLISH"}
)
MAX_STALE_RETRIES = 3


def random_token(length: int = 8) -> str:
    """Lower-case alphanumerics, like SIP.js's random Contact user and Via host."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(random.choice(alphabet) for _ in range(length))


@dataclass
class CoreConfig:
    """Identity and protocol settings of one user agent."""

    aor: str
    """``sip:EXT@DOMAIN``."""
    auth_username: str | None = None
    password: Secret | None = None
    display_name: str | None = None
    timers: Timers = field(default_factory=Timers)
    user_agent: str = f"softphone/{__version__}"
    via_host: str = field(default_factory=lambda: f"{random_token(12)}.invalid")
    contact_user: str = field(default_factory=lambda: random_token(8))
    instance_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    allow: tuple[str, ...] = ALLOW
    supported: tuple[str, ...] = SUPPORTED

    def __post_init__(self) -> None:
        if self.password is not None and not isinstance(self.password, Secret):
            self.password = Secret(self.password)

    @property
    def aor_uri(self) -> Any:
        return SipUri.parse(self.aor)

    @property
    def domain(self) -> str:
        return self.aor_uri.host

    @property
    def user(self) -> str:
        return self.aor_uri.user or ""


class RequestDelegate(Protocol):
    """How the user agent (above the core) is told about new incoming requests."""

    def on_invite(self, request: Any, transaction: InviteServerTransaction) -> None: ...

    def on_out_of_dialog_request(self, request: Any, transaction: ServerTransaction) -> bool:
        """Return True if handled (a response was or will be sent)."""


class DialogUser(Protocol):
    """A session that owns a dialog and receives its in-dialog requests."""

    dialog: Dialog

    def receive_in_dialog_request(self, request: Any, transaction: ServerTransaction | None) -> None: ...

    def receive_stray_2xx(self, response: Any) -> None: ...


class OutgoingState(enum.Enum):
    SENDING = "sending"
    AUTHENTICATING = "authenticating"
    DONE = "done"


class OutgoingRequest:
    """One logical request: its transactions, its digest retry, its final answer.

    ``final`` resolves with the final response (any status), or raises
    :class:`AuthenticationError` after a second non-stale challenge,
    :class:`TransactionTimeoutError`, or :class:`TransportError`.  For INVITE,
    2xx responses after the first (retransmissions, forks) go to ``on_extra_2xx``.
    """

    def __init__(
        self,
        core: UserAgentCore,
        request: Any,
        *,
        on_progress: Callable[[Any], None] | None = None,
        on_extra_2xx: Callable[[Any], None] | None = None,
        next_cseq: Callable[[], int] | None = None,
    ) -> None:
        self.core = core
        self.request = request
        self.on_progress = on_progress
        self.on_extra_2xx = on_extra_2xx
        self.next_cseq = next_cseq
        self.final: asyncio.Future = asyncio.get_running_loop().create_future()
        self.final.add_done_callback(_consume_exception)
        self.transaction: ClientTransaction | None = None
        self.state = OutgoingState.SENDING
        """SENDING -> AUTHENTICATING (a credentialed retry is out) -> DONE; only :meth:`_move` changes it."""
        self.auth_retries = 0
        self.stale_retries = 0
        self.provisional_received = False

    def _move(self, state: OutgoingState) -> None:
        if self.state is OutgoingState.DONE and state is not OutgoingState.DONE:
            raise SipError(f"{self.request.method} request is done; cannot go to {state.value}")
        self.state = state

    def send(self) -> OutgoingRequest:
        self.transaction = self.core.send_request(self.request, self)
        return self

    # ClientTransactionUser
    def receive_response(self, response: Any) -> None:
        status = response.status
        if status < 200:
            self.provisional_received = True
            if self.on_progress is not None and not self.final.done():
                self.on_progress(response)
            return
        if self.final.done():
            if 200 <= status < 300 and self.on_extra_2xx is not None:
                self.on_extra_2xx(response)
            return
        if status in (401, 407) and self._retry_with_credentials(response):
            return
        self._move(OutgoingState.DONE)
        self.final.set_result(response)

    def on_transaction_timeout(self, error: TransactionTimeoutError) -> None:
        if not self.final.done():
            self._move(OutgoingState.DONE)
            self.final.set_exception(error)

    def on_transport_error(self, error: TransportError) -> None:
        if not self.final.done():
            self._move(OutgoingState.DONE)
            self.final.set_exception(error)

    def _retry_with_credentials(self, response: Any) -> bool:
        """Answer a digest challenge once; True if a new request went out."""
        config = self.core.config
        who = f"{config.auth_username or config.user}@{config.domain}"
        proxy = response.status == 407
        header = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        values = response.headers.get_all(header)
        if config.password is None:
            self._fail(response, f"authentication required for {who} ({response.status} "
                                 f"{response.reason}) but no password is configured")
            return True
        challenges = []
        for value in values:
            try:
                challenges.append(DigestChallenge.parse(value))
            except Exception as exc:
                log.warning("ignoring unparsable %s: %s", header, exc)
        try:
            challenge = choose_challenge(challenges)
        except AuthenticationError as exc:
            self._fail(response, f"authentication for {who} impossible: {response.status} "
                                 f"{response.reason}: {exc}")
            return True
        stale = bool(getattr(challenge, "stale", False))
        if stale and self.auth_retries and self.stale_retries < MAX_STALE_RETRIES:
            self.stale_retries += 1
        elif self.auth_retries >= 1:
            self._fail(response, f"authentication rejected for {who} ({response.status} {response.reason})")
            return True
        else:
            self.auth_retries += 1
        self._move(OutgoingState.AUTHENTICATING)
        retry = self._next_request(proxy, challenge)
        self.request = retry
        self.transaction = self.core.send_request(retry, self)
        return True

    def _next_request(self, proxy: bool, challenge: Any) -> Any:
        old = self.request
        headers = old.headers.copy()
        seq = self.next_cseq() if self.next_cseq is not None else old.cseq.seq + 1
        headers.set("CSeq", str(CSeq(seq, old.method)))
        auth_header = "Proxy-Authorization" if proxy else "Authorization"
        value = self.core.authorize(challenge, old.method, str(old.uri), old.body or "")
        headers.remove(auth_header)
        headers.add(auth_header, value)
        return SipRequest(old.method, old.uri, headers, old.body)

    def _fail(self, response: Any, message: str) -> None:
        self._move(OutgoingState.DONE)
        error = AuthenticationError(message)
        error.response = response  # type: ignore[attr-defined]
        if not self.final.done():
            self.final.set_exception(error)

    def cancel_request(self, reason: str | None = None) -> Any:
        """Build the CANCEL for this INVITE (RFC 3261 9.1): same branch, Call-ID, From, To, CSeq."""
        invite = self.request
        headers = same_branch_headers(invite, "CANCEL", invite.headers.get("To"))
        if reason:
            headers.add("Reason", reason)
        headers.add("User-Agent", self.core.config.user_agent)
        headers.add("Content-Length", "0")
        return SipRequest("CANCEL", invite.uri, headers, "")

    async def response(self, timeout: float | None = None) -> Any:
        """Wait for the final response (bounded by ``timeout``, default timer B/F plus a margin)."""
        if timeout is None:
            timeout = self.core.config.timers.timer_b * 3
        return await asyncio.wait_for(asyncio.shield(self.final), timeout)


def _consume_exception(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()


class Uas2xxRetransmitter:
    """Resends an INVITE 2xx until its ACK arrives (RFC 3261 13.3.1.4).

    Intervals start at T1 and double up to T2; without an ACK after 64*T1
    ``on_timeout`` runs (the session then sends BYE).
    """

    def __init__(self, core: UserAgentCore, response: Any, on_timeout: Callable[[], None]) -> None:
        self.core = core
        self.response = response
        self.on_timeout = on_timeout
        self._task = asyncio.get_running_loop().create_task(self._run())
        self.retransmissions = 0

    async def _run(self) -> None:
        timers = self.core.config.timers
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timers.ack_timeout
        interval = timers.t1
        try:
            while True:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.sleep(min(interval, remaining))
                if loop.time() >= deadline:
                    break
                try:
                    self.core.transport.send(self.response)
                    self.retransmissions += 1
                except TransportError as exc:
                    log.debug("2xx retransmission not sent: %s", exc)
                interval = min(interval * 2, timers.t2)
        except asyncio.CancelledError:
            return
        log.warning("no ACK for 200 to INVITE (Call-ID %s) within %gs", self.response.call_id,
                    timers.ack_timeout)
        self.on_timeout()

    def ack_received(self) -> None:
        self._task.cancel()

    def stop(self) -> None:
        self._task.cancel()

    @property
    def active(self) -> bool:
        return not self._task.done()


class UserAgentCore:
    """Dispatches SIP messages between one transport and the transaction users."""

    def __init__(self, config: CoreConfig, transport: Transport, delegate: RequestDelegate | None = None):
        self.config = config
        self.transport = transport
        self.delegate = delegate
        self.transactions = TransactionTable()
        self.dialogs: dict[DialogId, DialogUser] = {}
        self.cancel_handlers: dict[InviteServerTransaction, Callable[[Any], None]] = {}
        self._merged: dict[tuple[str, str, int, str], ServerTransaction] = {}
        self._digest_client: Any = None
        self._nc: dict[str, int] = {}
        transport.on("message", self.receive_message)
        transport.on("disconnected", self._on_transport_lost)
        if config.password is not None:
            register_secret(reveal(config.password))

    # --- identity ------------------------------------------------------------------

    def contact(self, *, ob: bool = False, register: bool = False, expires: int | None = None) -> str:
        """``<sip:USER@HOST.invalid;transport=ws[;ob]>`` as SIP.js; instance/reg-id on REGISTER."""
        uri = f"sip:{self.config.contact_user}@{self.config.via_host};transport=ws"
        if ob:
            uri += ";ob"
        value = f"<{uri}>"
        if register:
            value += f';+sip.instance="<urn:uuid:{self.config.instance_id}>";reg-id=1'
            if expires is not None:
                value += f";expires={expires}"
        return value

    def new_via(self) -> str:
        return f"SIP/2.0/{self.transport.via_transport} {self.config.via_host};branch={generate_branch()}"

    def local_identity(self, tag: str | None = None) -> str:
        """The From value for out-of-dialog requests: ``"Name" <sip:EXT@DOMAIN>;tag=...``."""
        name = self.config.display_name
        value = f'"{name}" <{self.config.aor}>' if name else f"<{self.config.aor}>"
        if tag:
            value += f";tag={tag}"
        return value

    def create_request(
        self,
        method: str,
        uri: Any,
        *,
        to: str,
        from_tag: str | None = None,
        call_id: str | None = None,
        cseq: int | None = None,
        contact: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        body: str = "",
        content_type: str | None = None,
        supported: tuple[str, ...] | None = None,
    ) -> Any:
        """An out-of-dialog request with SIP.js's header set (Via is added by :meth:`send_request`)."""
        if isinstance(uri, str):
            uri = SipUri.parse(uri)
        headers = Headers()
        headers.add("To", to)
        headers.add("From", self.local_identity(from_tag or generate_tag()))
        headers.add("CSeq", str(CSeq(cseq if cseq is not None else random.randint(1, 10000), method)))
        headers.add("Call-ID", call_id or generate_call_id())
        headers.add("Max-Forwards", "70")
        if contact:
            headers.add("Contact", contact)
        for name, value in extra_headers or []:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        headers.add("Content-Length", str(len(body.encode("utf-8"))))
        self._decorate(headers, supported)
        return SipRequest(method, uri, headers, body)

    def _decorate(self, headers: Any, supported: tuple[str, ...] | None = None) -> None:
        if "Allow" not in headers:
            headers.add("Allow", ",".join(self.config.allow))
        if "Supported" not in headers:
            headers.add("Supported", ", ".join(supported if supported is not None else self.config.supported))
        if "User-Agent" not in headers:
            headers.add("User-Agent", self.config.user_agent)

    def authorize(self, challenge: Any, method: str, uri: str, body: str = "") -> str:
        if self._digest_client is None:
            credentials = DigestCredentials(self.config.auth_username or self.config.user,
                                            self.config.password or "")
            self._digest_client = DigestClient(credentials)
        # The digest response is a one-use hash; it is not registered with the
        # log redactor (that recompiles a regex per secret: quadratic with
        # hundreds of agents) because the core never logs message text it sends.
        return self._digest_client.authorize(challenge, method, uri, body)

    # --- sending -------------------------------------------------------------------

    def send_request(self, request: Any, user: Any, *, keep_via: bool = False) -> ClientTransaction:
        """Start a client transaction for ``request`` (a fresh Via/branch unless ``keep_via``)."""
        if not keep_via:
            request.headers.remove("Via")
            request.headers.prepend("Via", self.new_via())
        if "User-Agent" not in request.headers and request.method not in ("ACK", "CANCEL"):
            request.headers.add("User-Agent", self.config.user_agent)
        tx_class = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        tx = tx_class(request, self.transport, self.config.timers, user)
        self.transactions.add_client(tx)
        tx.start()
        return tx

    def request(self, request: Any, **kwargs: Any) -> OutgoingRequest:
        """Send ``request`` with digest handling; returns the :class:`OutgoingRequest`."""
        return OutgoingRequest(self, request, **kwargs).send()

    def send_cancel(self, outgoing: OutgoingRequest, reason: str | None = None) -> OutgoingRequest:
        cancel = outgoing.cancel_request(reason)
        req = OutgoingRequest(self, cancel)
        req.transaction = self.send_request(cancel, req, keep_via=True)
        return req

    def send_ack(self, ack: Any) -> None:
        """ACK for a 2xx: its own branch, no transaction (RFC 3261 13.2.2.4)."""
        ack.headers.remove("Via")
        ack.headers.prepend("Via", self.new_via())
        self.transport.send(ack)

    def make_response(self, request: Any, status: int, reason: str | None = None, *,
                      to_tag: str | None = None, headers: list[tuple[str, str]] | None = None,
                      body: str = "", content_type: str | None = None, contact: str | None = None) -> Any:
        if to_tag is None and status > 100:
            to_tag = generate_tag()  # RFC 3261 8.2.6.2; ignored when the To already has a tag
        extra = list(headers or [])
        if contact:
            extra.append(("Contact", contact))
        if status > 100:
            extra.append(("Supported", ", ".join(self.config.supported)))
        extra.append(("User-Agent", self.config.user_agent))
        if (request.method in ("INVITE", "OPTIONS") and 200 <= status < 300) or status == 405:
            extra.append(("Allow", ",".join(self.config.allow)))
        return make_response(request, status, reason, to_tag=to_tag, headers=extra, body=body,
                             content_type=content_type)

    def reply(self, transaction: ServerTransaction, status: int, reason: str | None = None, **kwargs: Any) -> Any:
        response = self.make_response(transaction.request, status, reason, **kwargs)
        transaction.respond(response)
        return response

    def reply_stateless(self, request: Any, status: int, reason: str | None = None, **kwargs: Any) -> None:
        try:
            self.transport.send(self.make_response(request, status, reason, **kwargs))
        except TransportError as exc:
            log.warning("could not answer %d to %s: %s", status, request.method, exc)

    # --- dialogs ---------------------------------------------------------------------

    def add_dialog(self, user: DialogUser) -> None:
        self.dialogs[user.dialog.id] = user

    def remove_dialog(self, user: DialogUser) -> None:
        if self.dialogs.get(user.dialog.id) is user:
            del self.dialogs[user.dialog.id]

    # --- receiving -------------------------------------------------------------------

    def receive_message(self, message: Any) -> None:
        try:
            if getattr(message, "method", None):
                self.receive_request(message)
            else:
                self.receive_response(message)
        except Exception:
            log.exception("failed to handle incoming SIP message")

    def receive_response(self, response: Any) -> None:
        via = response.top_via
        if via is None or via.host.lower() != self.config.via_host.lower():
            log.warning("dropping %d response whose top Via is not ours", response.status)
            return
        tx = self.transactions.match_response(response)
        if tx is not None:
            tx.receive_response(response)
            return
        if response.cseq.method == "INVITE" and 200 <= response.status < 300:
            from_tag = response.from_.tag or ""
            to_tag = response.to.tag or ""
            user = self.dialogs.get((response.call_id, from_tag, to_tag))
            if user is not None:
                user.receive_stray_2xx(response)
                return
        log.debug("dropping %d %s response matching no transaction", response.status, response.cseq.method)

    def receive_request(self, request: Any) -> None:
        method = request.method
        tx = self.transactions.match_request(request)
        if tx is not None:
            tx.receive_request(request)
            return
        if method == "ACK":
            self._receive_ack(request)
            return
        if method == "CANCEL":
            self._receive_cancel(request)
            return
        if method not in KNOWN_METHODS:
            self.reply_stateless(request, 501, "Not Implemented")
            return
        if method not in self.config.allow:
            self.reply_stateless(request, 405, "Method Not Allowed")
            return
        unsupported = self._unsupported_requirements(request)
        if unsupported:
            self.reply_stateless(request, 420, "Bad Extension", headers=[("Unsupported", ", ".join(unsupported))])
            return
        dialog_id = Dialog.id_of_incoming(request)
        merge_key = None
        if dialog_id is None:
            # RFC 3261 8.2.2.2: the same request arriving by two paths (a forking loop).
            merge_key = (request.from_.tag or "", request.call_id, request.cseq.seq, method)
            if merge_key in self._merged:
                self.reply_stateless(request, 482, "Loop Detected")
                return
        if method == "INVITE":
            stx: ServerTransaction = InviteServerTransaction(request, self.transport, self.config.timers)
        else:
            stx = NonInviteServerTransaction(request, self.transport, self.config.timers)
        self.transactions.add_server(stx)
        if merge_key is not None:
            self._merged[merge_key] = stx
            stx.add_terminated_callback(lambda _tx, key=merge_key: self._merged.pop(key, None))
        if method == "INVITE":
            self.reply(stx, 100, "Trying")
        if dialog_id is not None:
            user = self.dialogs.get(dialog_id)
            if user is None:
                self.reply(stx, 481, "Call/Transaction Does Not Exist")
                return
            if not user.dialog.receive_request(request):
                self.reply(stx, 500, "Server Internal Error", headers=[("Retry-After", "1")])
                return
            user.receive_in_dialog_request(request, stx)
            return
        self._receive_out_of_dialog(request, stx)

    def _unsupported_requirements(self, request: Any) -> list[str]:
        """Option tags in Require we do not support (RFC 3261 8.2.2.3: answer 420)."""
        if request.method in ("ACK", "CANCEL"):
            return []
        required = [tag.strip() for tag in request.headers.get_all("Require") if tag.strip()]
        return [tag for tag in required if tag.lower() not in {s.lower() for s in self.config.supported}]

    def _receive_out_of_dialog(self, request: Any, stx: ServerTransaction) -> None:
        method = request.method
        if method == "OPTIONS":
            self.reply(stx, 200, "OK", headers=[("Accept", "application/sdp")])
            return
        if method == "INVITE":
            if self.delegate is None:
                self.reply(stx, 480, "Temporarily Unavailable")
                return
            self.delegate.on_invite(request, stx)  # type: ignore[arg-type]
            return
        if method in ("BYE", "INFO", "REFER"):
            self.reply(stx, 481, "Call/Transaction Does Not Exist")
            return
        if self.delegate is not None and self.delegate.on_out_of_dialog_request(request, stx):
            return
        self.reply(stx, 200, "OK")

    def _receive_ack(self, request: Any) -> None:
        dialog_id = Dialog.id_of_incoming(request)
        user = self.dialogs.get(dialog_id) if dialog_id else None
        if user is None:
            log.debug("dropping ACK matching no transaction or dialog (Call-ID %s)", request.call_id)
            return
        user.receive_in_dialog_request(request, None)

    def _receive_cancel(self, request: Any) -> None:
        stx = NonInviteServerTransaction(request, self.transport, self.config.timers)
        self.transactions.add_server(stx)
        invite_tx = self.transactions.find_invite_for_cancel(request)
        if invite_tx is None:
            self.reply(stx, 481, "Call/Transaction Does Not Exist")
            return
        self.reply(stx, 200, "OK")  # RFC 3261 9.2: even if the INVITE is already answered
        if invite_tx.state is not TransactionState.PROCEEDING:
            return  # a final response went out first: the CANCEL has no effect
        handler = self.cancel_handlers.pop(invite_tx, None)
        if handler is not None:
            handler(request)
        else:
            self.reply(invite_tx, 487, "Request Terminated")

    def _on_transport_lost(self, reason: str) -> None:
        """Responses come back on the connection the request left on: with it gone,
        pending requests fail now instead of waiting for timer B/F."""
        error = TransportError(f"connection lost before a final response ({reason})")
        for tx in list(self.transactions.client.values()):
            if tx.state in (TransactionState.CALLING, TransactionState.TRYING, TransactionState.PROCEEDING):
                tx.terminate()
                tx.user.on_transport_error(error)
        for stx in list(self.transactions.server.values()):
            stx.terminate()

    def close(self) -> None:
        self.transactions.terminate_all()
        self.transport.remove_listener("message", self.receive_message)
        self.transport.remove_listener("disconnected", self._on_transport_lost)


def ensure_sip_error(exc: BaseException) -> SipError:
    return exc if isinstance(exc, SipError) else SipError(str(exc))
