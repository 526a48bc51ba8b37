"""The lab's SIP edge: SIP over WebSocket (RFC 7118) served at ``/ws``, ws:// and wss://.

Each accepted WebSocket gets a server-side :class:`WebSocketServerTransport`
and its own :class:`~softphone.sip.core.UserAgentCore`; the core answers
OPTIONS (200), unknown methods (501), methods the lab does not allow (405 with
Allow), in-dialog requests for unknown dialogs (481).  REGISTER goes to the
:class:`~softphone.lab.registrar.Registrar`; an INVITE from a phone is handed
to an ``invite`` listener (the dialer) or refused with 403.
:meth:`SipEndpoint.inviter` is how the lab calls a registered phone: an
:class:`~softphone.sip.inviter.Inviter` on the connection the extension
registered from, to its registered Contact.

Limits (one WebSocket can never disturb the others; :class:`EdgeLimits`):

* handshake: sub-protocol ``sip`` required (400 otherwise); at most
  ``max_connections`` WebSockets (503 beyond);
* frames: at most ``max_frame_bytes`` (64 KiB) each; a bigger frame closes
  that WebSocket with 1009 (message too big); a binary frame that is not UTF-8
  is dropped; an unparsable message is dropped, and answered 400 with the
  reason when it parsed far enough to be answered;
* rate: a token bucket per connection (``rate`` messages per second, bursts
  of ``burst``); messages over it are dropped and logged once per episode;
  after ``abuse_drops`` dropped messages the connection is closed with 1008
  (policy violation);
* at most ``max_pending_registers`` REGISTERs being processed per connection
  (503 with Retry-After beyond), and ``max_outbox`` frames waiting to be sent
  to a peer that does not read (the connection is closed beyond).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from pyee.asyncio import AsyncIOEventEmitter

from softphone import __version__
from softphone.errors import ConfigurationError, TelephonyError, TransportError
from softphone.lab.registrar import Binding, Registrar
from softphone.log import get_logger
from softphone.sip.core import CoreConfig, UserAgentCore
from softphone.sip.description_handler import SessionDescriptionHandlerFactory
from softphone.sip.invitation import Invitation
from softphone.sip.inviter import Inviter
from softphone.sip.null_handler import null_handler_factory
from softphone.sip.transaction import InviteServerTransaction, ServerTransaction
from softphone.sip.transport import CRLF_PING, CRLF_PONG, Transport, TransportState

log = get_logger(__name__)

WS_PATH = "/ws"
SUBPROTOCOL = "sip"
#: What the lab accepts; anything else known gets 405 with this Allow.
LAB_ALLOW = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "REGISTER")
LAB_USER_AGENT = f"softphone-lab/{__version__}"
WS_POLICY_VIOLATION = 1008
WS_MESSAGE_TOO_BIG = 1009


@dataclass(frozen=True)
class EdgeLimits:
    """What one WebSocket may cost the lab (see the module docstring)."""

    max_connections: int = 5000
    max_frame_bytes: int = 64 * 1024
    rate: float = 50.0
    """Messages per second a connection may send, sustained."""
    burst: int = 200
    abuse_drops: int = 1000
    """Dropped (over-rate) messages after which the connection is closed with 1008."""
    max_pending_registers: int = 8
    max_outbox: int = 1000

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_frame_bytes", "burst", "abuse_drops", "max_pending_registers",
                     "max_outbox"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigurationError(f"EdgeLimits.{name} must be a positive integer, got {value!r}")
        if not self.rate > 0:
            raise ConfigurationError(f"EdgeLimits.rate must be > 0 messages per second, got {self.rate!r}")


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` spends one if there is one."""

    __slots__ = ("_clock", "_last", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class WebSocketServerTransport(Transport):
    """The lab's end of one accepted WebSocket: connected from birth, never reconnects."""

    def __init__(self, ws: web.WebSocketResponse, *, secure: bool, name: str, max_outbox: int) -> None:
        super().__init__()
        self.ws = ws
        self.secure = secure
        self.name = name
        self.max_outbox = max_outbox
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._closing: asyncio.Task | None = None
        self._set_state(TransportState.CONNECTED)
        self._writer = asyncio.get_running_loop().create_task(self._write())

    @property
    def via_transport(self) -> str:
        return "WSS" if self.secure else "WS"

    async def connect(self) -> None:
        if not self.connected:
            raise TransportError(f"connection {self.name} is gone; a phone reconnects, the lab cannot")

    def send_text(self, text: str) -> None:
        if not self.connected:
            raise TransportError(f"connection {self.name} is {self.state.value}")
        if self._outbox.qsize() >= self.max_outbox:
            log.warning("connection %s does not read (%d frames waiting): closing it", self.name,
                        self._outbox.qsize())
            self.abort("peer does not read", WS_POLICY_VIOLATION)
            raise TransportError(f"connection {self.name}: peer does not read")
        self._outbox.put_nowait(text)

    def receive_text(self, text: str) -> None:
        if text == CRLF_PING:  # RFC 5626 keep-alive: answer, as SIP.js and our agent expect
            try:
                self.send_text(CRLF_PONG)
            except TransportError:
                pass
            return
        super().receive_text(text)

    async def _write(self) -> None:
        try:
            while True:
                text = await self._outbox.get()
                await self.ws.send_str(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("connection %s: send failed (%s)", self.name, exc)
            self.abort(f"send failed: {exc}")

    @property
    def aborting(self) -> bool:
        """The lab decided to close this WebSocket (what arrives meanwhile is ignored)."""
        return self._closing is not None

    def abort(self, reason: str, code: int = aiohttp.WSCloseCode.GOING_AWAY) -> None:
        """Close the WebSocket from inside a callback, once (the reader then sees the end)."""
        if self._closing is None and not self.ws.closed:
            self._closing = asyncio.get_running_loop().create_task(
                self.ws.close(code=code, message=reason[:100].encode()))

    def lost(self, reason: str) -> None:
        """The reader saw the end of the WebSocket: tell the core, stop writing."""
        if self._state in (TransportState.CLOSED,):
            return
        self._writer.cancel()
        was = self.connected
        self._set_state(TransportState.CLOSED)
        if was:
            self.emit("disconnected", reason)
        self.emit("closed")

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"lab closing")
        self.lost("closed by the lab")


class SipConnection:
    """One phone's WebSocket: transport, UA core, rate limit, and the requests it may make."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: SipEndpoint, ws: web.WebSocketResponse, *, secure: bool, peer: str) -> None:
        self.endpoint = endpoint
        self.id = next(self._ids)
        self.peer = peer
        self.secure = secure
        self.scheme = "wss" if secure else "ws"
        self.opened_at = time.time()
        limits = endpoint.limits
        self.name = f"#{self.id} {peer} ({self.scheme})"
        self.transport = WebSocketServerTransport(ws, secure=secure, name=self.name, max_outbox=limits.max_outbox)
        self.core = UserAgentCore(CoreConfig(aor=f"sip:lab@{endpoint.domain}", user_agent=LAB_USER_AGENT,
                                             allow=LAB_ALLOW, supported=("outbound", "path")),
                                  self.transport, delegate=self)
        self.bucket = TokenBucket(limits.rate, limits.burst)
        self.received = 0
        self.dropped = 0
        self.close_code: int | None = None
        self._flooding = False
        self._pending_registers = 0
        self._tasks: set[asyncio.Task] = set()

    def __repr__(self) -> str:
        return f"SipConnection({self.name})"

    # --- frames -----------------------------------------------------------------------

    def receive_frame(self, text: str) -> None:
        """One frame from the phone: rate-limited, then parsed and dispatched; never raises."""
        if self.transport.aborting:
            return
        if not self.bucket.take():
            self.dropped += 1
            if not self._flooding:
                self._flooding = True
                log.warning("connection %s sends more than %g messages/s: dropping the excess", self.name,
                            self.endpoint.limits.rate)
            if self.dropped >= self.endpoint.limits.abuse_drops:
                log.warning("connection %s closed: %d messages over the rate limit", self.name, self.dropped)
                self.transport.abort("message flood", WS_POLICY_VIOLATION)
            return
        if self._flooding and self.bucket.tokens >= 1.0:
            self._flooding = False
        self.received += 1
        self.transport.receive_text(text)

    def closed(self, reason: str) -> None:
        self.transport.lost(reason)
        for task in list(self._tasks):
            task.cancel()
        self.core.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- RequestDelegate ------------------------------------------------------------------

    def on_invite(self, request: Any, transaction: InviteServerTransaction) -> None:
        extension = request.from_.uri.user or ""
        binding = self.endpoint.registrar.bindings.get(extension)
        if binding is None or binding.connection is not self:
            self.core.reply(transaction, 403, "Forbidden (register before calling)")
            return
        if not self.endpoint.listeners("invite"):
            self.core.reply(transaction, 403, "Forbidden (calls from phones are not routed in the lab)")
            return
        if not request.contact:
            self.core.reply(transaction, 400, "Bad Request (missing Contact)")
            return
        invitation = Invitation(self.core, request, transaction, self.endpoint.incoming_handler_factory)
        self.endpoint.emit("invite", extension, invitation)

    def on_out_of_dialog_request(self, request: Any, transaction: ServerTransaction) -> bool:
        if request.method != "REGISTER":
            return False
        if self._pending_registers >= self.endpoint.limits.max_pending_registers:
            self.core.reply(transaction, 503, "Service Unavailable (too many REGISTERs in progress)",
                            headers=[("Retry-After", "1")])
            return True
        self._pending_registers += 1
        self._spawn(self._register(request, transaction))
        return True

    async def _register(self, request: Any, transaction: ServerTransaction) -> None:
        try:
            answer = await self.endpoint.registrar.register(request, self)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("REGISTER on %s failed", self.name)
            answer = None
        finally:
            self._pending_registers -= 1
        if not self.transport.connected:
            return
        try:
            if answer is None:
                self.core.reply(transaction, 500, "Server Internal Error")
            else:
                self.core.reply(transaction, answer.status, answer.reason, headers=answer.headers)
        except TransportError as exc:
            log.info("REGISTER answer on %s not sent: %s", self.name, exc)


class _CallerIdCore:
    """A connection's core as one lab-originated call sees it: From is the caller's identity.

    Everything else (transactions, dialogs, the transport) is the connection's
    core itself; only out-of-dialog requests get the caller's ``From``.
    """

    def __init__(self, core: UserAgentCore, identity: str) -> None:
        self._core = core
        self._identity = identity

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def create_request(self, *args: Any, **kwargs: Any) -> Any:
        request = self._core.create_request(*args, **kwargs)
        request.headers.set("From", f"{self._identity};tag={request.from_.tag}")
        return request


class SipEndpoint(AsyncIOEventEmitter):
    """The lab's phone directory (:class:`softphone.lab.telephony.PhoneDirectory`) over WebSocket.

    Events: ``registered``(extension), ``unregistered``(extension, reason),
    ``invite``(extension, Invitation) for calls from phones (403 without a listener),
    ``connection``(SipConnection) and ``disconnection``(SipConnection, reason).
    """

    def __init__(self, registrar: Registrar, *, domain: str = "127.0.0.1", limits: EdgeLimits | None = None,
                 incoming_handler_factory: SessionDescriptionHandlerFactory = null_handler_factory) -> None:
        super().__init__()
        self.registrar = registrar
        self.domain = domain
        self.limits = limits or EdgeLimits()
        self.incoming_handler_factory = incoming_handler_factory
        """Media of INVITEs from phones (the dialer may replace it)."""
        self.connections: set[SipConnection] = set()
        self.refused = {"subprotocol": 0, "capacity": 0}
        self.events: deque[tuple[float, str, str]] = deque(maxlen=200)
        """(time, kind, text) of recent edge events, newest last (the status page shows them)."""
        self.on("error", lambda exc: log.error("SIP edge event listener failed: %s", exc))
        registrar.on("registered", self._registered)
        registrar.on("unregistered", self._unregistered)

    def _registered(self, extension: str) -> None:
        self.events.append((time.time(), "registered", extension))
        self.emit("registered", extension)

    def _unregistered(self, extension: str, reason: str) -> None:
        self.events.append((time.time(), "unregistered", f"{extension}: {reason}"))
        self.emit("unregistered", extension, reason)

    # --- aiohttp ------------------------------------------------------------------------

    def add_routes(self, app: web.Application, path: str = WS_PATH) -> None:
        app.router.add_get(path, self.handle, name="sip_ws")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """GET /ws: the WebSocket handshake, then this connection's life."""
        offered = [p.strip().lower() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if SUBPROTOCOL not in offered:
            self.refused["subprotocol"] += 1
            return web.Response(status=400, text="SIP over WebSocket: sub-protocol 'sip' required (RFC 7118)\n")
        if len(self.connections) >= self.limits.max_connections:
            self.refused["capacity"] += 1
            log.warning("refusing a WebSocket from %s: %d connections open (the limit)", request.remote,
                        len(self.connections))
            return web.Response(status=503, text="too many SIP connections\n", headers={"Retry-After": "5"})
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=self.limits.max_frame_bytes,
                                   autoping=True, timeout=5.0)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade\n")
        await ws.prepare(request)
        secure = request.secure
        peer = f"{request.remote or '?'}"
        transport = request.transport
        if transport is not None:
            addr = transport.get_extra_info("peername")
            if isinstance(addr, tuple) and len(addr) >= 2:
                peer = f"{addr[0]}:{addr[1]}"
        conn = SipConnection(self, ws, secure=secure, peer=peer)
        self.connections.add(conn)
        log.debug("SIP connection %s opened", conn.name)
        self.emit("connection", conn)
        reason = "websocket closed"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    conn.receive_frame(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        text = msg.data.decode("utf-8")
                    except UnicodeDecodeError:
                        log.info("connection %s: binary frame that is not UTF-8 dropped (%d bytes)", conn.name,
                                 len(msg.data))
                        continue
                    conn.receive_frame(text)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    exc = ws.exception()
                    code = getattr(exc, "code", None)
                    conn.close_code = int(code) if isinstance(code, int) else None
                    log.info("connection %s closed: %s", conn.name, exc)
                    reason = f"websocket error: {exc}"
                    break
        except asyncio.CancelledError:
            reason = "lab stopping"
            raise
        finally:
            if conn.close_code is None:
                conn.close_code = ws.close_code
            self.connections.discard(conn)
            gone = self.registrar.drop_connection(conn, "websocket closed")
            conn.closed(reason)
            log.debug("SIP connection %s closed (%s; %d binding(s) dropped)", conn.name, reason, len(gone))
            self.emit("disconnection", conn, reason)
        return ws

    async def close(self) -> None:
        """Close every WebSocket (bindings end with "lab stopping")."""
        await self.registrar.close()

        async def close_one(conn: SipConnection) -> None:
            try:
                await asyncio.wait_for(conn.transport.close(), 2.0)
            except (TimeoutError, Exception) as exc:
                log.debug("closing %s: %s", conn.name, exc)

        await asyncio.gather(*(close_one(conn) for conn in list(self.connections)))

    # --- PhoneDirectory -------------------------------------------------------------------

    def is_registered(self, extension: str) -> bool:
        binding = self.registrar.bindings.get(extension)
        return binding is not None and binding.connection.transport.connected

    def registered_extensions(self) -> list[str]:
        return sorted(ext for ext in self.registrar.bindings if self.is_registered(ext))

    def binding(self, extension: str) -> Binding | None:
        return self.registrar.bindings.get(extension)

    def inviter(self, extension: str, handler_factory: SessionDescriptionHandlerFactory, *, caller_id: str,
                display_name: str | None = None, extra_headers: list[tuple[str, str]] | None = None,
                no_answer_timeout: float = 60.0) -> Inviter:
        """An INVITE session to ``extension``'s registered Contact on its WebSocket (not sent yet:
        ``await inviter.invite()``); From is ``sip:{caller_id}@{domain}``."""
        binding = self.registrar.bindings.get(extension)
        if binding is None or not binding.connection.transport.connected:
            raise TelephonyError(f"extension {extension} is not registered")
        conn: SipConnection = binding.connection
        uri = f"sip:{caller_id}@{self.domain}"
        identity = f'"{_quoted(display_name)}" <{uri}>' if display_name else f"<{uri}>"
        core = _CallerIdCore(conn.core, identity)
        return Inviter(core, binding.contact_uri.copy() if hasattr(binding.contact_uri, "copy")
                       else binding.contact_uri, handler_factory,  # type: ignore[arg-type]
                       extra_headers=extra_headers, no_answer_timeout=no_answer_timeout)

    def status(self) -> dict[str, Any]:
        """Registrations and connection counts, JSON-ready (the status page)."""
        now = self.registrar.clock()
        return {
            "registrations": [b.as_dict(now) for _, b in sorted(self.registrar.bindings.items())],
            "connections": len(self.connections),
            "refused": dict(self.refused),
            "counters": dict(self.registrar.counters),
        }


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
