"""SIP over WebSocket (RFC 7118): one SIP message per text frame, sub-protocol ``sip``.

The transport is the only part of the SIP stack that touches the network.  It
keeps the connection alive (RFC 5626 double-CRLF ping or WebSocket ping),
reconnects after a loss with exponential back-off and jitter, and turns
frames into parsed messages.  Nothing received from the network may crash the
agent: unparsable frames are logged (redacted) and dropped, and a request
that parsed far enough to be answered gets a ``400`` naming the problem.

:class:`Transport` is the abstract interface the user-agent core talks to;
:mod:`softphone.sip.testing` has an in-memory implementation for unit tests.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import random
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from pyee import EventEmitter

from softphone.errors import ConfigurationError, SipParseError, TransportError
from softphone.log import get_logger, redact
from softphone.sip.ladder import Ladder
from softphone.sip.message import make_response, parse_message

log = get_logger(__name__)

CRLF_PING = "\r\n\r\n"
CRLF_PONG = "\r\n"
_DIGEST_RESPONSE_RE = re.compile(r'(\bresponse\s*=\s*)("[^"]*"|[^,\s]+)', re.IGNORECASE)


def trace_text(text: str) -> str:
    """A SIP message as it may appear in a debug log: digest responses masked, secrets redacted."""
    return redact(_DIGEST_RESPONSE_RE.sub(r'\1"***"', text))


class TransportState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSING = "closing"
    CLOSED = "closed"


class KeepAliveMode(enum.Enum):
    NONE = "none"
    CRLF = "crlf"
    """RFC 5626 section 4.4.1 over WebSocket: send CRLFCRLF, expect CRLF (as SIP.js)."""
    WS_PING = "ws-ping"
    """WebSocket ping frames, answered by pong at the WebSocket layer."""


@dataclass(frozen=True)
class KeepAlive:
    """How, and how often, an idle connection is proven alive."""

    mode: KeepAliveMode = KeepAliveMode.CRLF
    interval: float = 30.0
    timeout: float = 10.0
    """No pong within this many seconds: the connection is declared lost."""


@dataclass(frozen=True)
class Reconnect:
    """Exponential back-off with jitter between reconnection attempts."""

    enabled: bool = True
    min_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.2
    """Each delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``."""
    max_attempts: int | None = None
    """Give up (and close) after this many failed attempts; ``None``: never."""

    def delay(self, attempt: int, rng: Callable[[float, float], float] = random.uniform) -> float:
        """Delay before reconnection ``attempt`` (1-based)."""
        base = min(self.max_delay, self.min_delay * (2 ** max(0, attempt - 1)))
        if self.jitter:
            base *= rng(1.0 - self.jitter, 1.0 + self.jitter)
        return max(0.0, base)


@dataclass(frozen=True)
class TlsOptions:
    """``wss://`` is verified by default; a CA file or an explicit insecure flag change that."""

    ca_file: str | None = None
    insecure: bool = False

    def ssl_context(self, url: str) -> ssl.SSLContext | bool:
        if not url.startswith("wss://"):
            return False
        if self.insecure:
            log.warning("TLS verification DISABLED for %s (insecure=True)", url)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(f"ca_file {self.ca_file!r} cannot be loaded: {exc}") from exc


class Transport(EventEmitter, abc.ABC):
    """A connection-oriented, reliable SIP transport.

    Events: ``message`` (parsed :class:`~softphone.sip.message.SipMessage`),
    ``connected``, ``disconnected`` (reason), ``reconnecting`` (attempt, delay),
    ``state`` (new :class:`TransportState`), ``closed``.
    """

    reliable = True

    def __init__(self) -> None:
        super().__init__()
        self._state = TransportState.DISCONNECTED
        self.ladder = Ladder()
        """The last SIP messages both ways (start line, Call-ID, CSeq): see :mod:`softphone.sip.ladder`."""

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def connected(self) -> bool:
        return self._state is TransportState.CONNECTED

    @property
    @abc.abstractmethod
    def via_transport(self) -> str:
        """``WS`` or ``WSS``: the transport token for Via headers."""

    def _set_state(self, state: TransportState) -> None:
        if state is self._state:
            return
        log.debug("transport %s -> %s", self._state.value, state.value)
        self._state = state
        self.emit("state", state)

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise :class:`TransportError` if that fails."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close for good; no reconnection afterwards."""

    @abc.abstractmethod
    def send_text(self, text: str) -> None:
        """Queue one frame; raise :class:`TransportError` at once if not connected."""

    def send(self, message) -> None:
        """Queue a SIP message (anything with ``encode()``) or a raw string."""
        if not self.connected:
            raise TransportError(
                f"cannot send {_describe(message)}: SIP transport is {self._state.value}, not connected"
            )
        text = message if isinstance(message, str) else message.encode().decode("utf-8", "replace")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("SIP out:\n%s", trace_text(text))
        self.send_text(text)
        self.ladder.add_text(text, outgoing=True)

    def receive_text(self, text: str) -> None:
        """Turn one incoming frame into a ``message`` event; never raises."""
        if text in (CRLF_PONG, CRLF_PING, ""):
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("SIP in:\n%s", trace_text(text))
        self.ladder.add_text(text, outgoing=False)
        try:
            message = parse_message(text)
        except SipParseError as exc:
            partial = getattr(exc, "partial", None)
            log.warning("dropping unparsable SIP frame (%s): %r", exc.reason, redact(text[:200]))
            if partial is not None and getattr(partial, "method", None) != "ACK" and self.connected:
                try:
                    reason = "".join(c for c in " ".join(str(exc.reason).split()) if c.isprintable())[:100]
                    response = make_response(partial, 400, f"Bad Request ({reason})")
                    # The copied Via/From/To/CSeq may be the broken part: never send a
                    # reply that would itself be unparsable (and unroutable).
                    parse_message(response.encode())
                    self.send(response)
                except Exception as reply_exc:
                    log.warning("bad request not answered: its headers cannot make a valid 400 (%s)",
                                redact(reply_exc))
            return
        except Exception as exc:  # a parser bug must not kill the connection
            log.exception("SIP parser failed on a frame: %s", redact(exc))
            return
        try:
            self.emit("message", message)
        except Exception:
            log.exception("error while handling %s", _describe(message))


def _describe(message) -> str:
    if isinstance(message, str):
        return "keep-alive" if message.strip() == "" else "raw frame"
    method = getattr(message, "method", None)
    if method:
        return f"{method} request"
    status = getattr(message, "status", None)
    return f"{status} response" if status else type(message).__name__


@dataclass
class WebSocketTransportOptions:
    url: str
    keep_alive: KeepAlive = field(default_factory=KeepAlive)
    reconnect: Reconnect = field(default_factory=Reconnect)
    tls: TlsOptions = field(default_factory=TlsOptions)
    connect_timeout: float = 10.0


def _error_cause(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> str:
    """What an ERROR message means: aiohttp puts the cause (a too-big frame: close code 1009
    and the size) in the message, and ``ws.exception()`` is often None."""
    cause = msg.data if isinstance(msg.data, BaseException) else ws.exception()
    if cause is None:
        return f"close code {ws.close_code}" if ws.close_code is not None else "unknown cause"
    code = getattr(cause, "code", None)
    text = str(cause) or cause.__class__.__name__
    return f"{text} (close code {int(code)})" if isinstance(code, int) else text


class WebSocketTransport(Transport):
    """aiohttp WebSocket client carrying SIP (RFC 7118)."""

    def __init__(self, options: WebSocketTransportOptions | str) -> None:
        super().__init__()
        if isinstance(options, str):
            options = WebSocketTransportOptions(url=options)
        if not options.url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"ws url must start with ws:// or wss://, got {options.url!r}")
        self.options = options
        self._ssl = options.tls.ssl_context(options.url)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[str] | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pong: asyncio.Event | None = None
        self._reconnect_task: asyncio.Task | None = None
        self._rng = random.Random()

    @property
    def url(self) -> str:
        return self.options.url

    @property
    def via_transport(self) -> str:
        return "WSS" if self.options.url.startswith("wss://") else "WS"

    async def connect(self) -> None:
        if self._state is TransportState.CLOSED:
            raise TransportError(f"transport to {self.url} is closed")
        if self._state is TransportState.CONNECTED:
            return
        await self._open()
        self.emit("connected")

    async def _open(self) -> None:
        self._set_state(TransportState.CONNECTING)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            ws = await asyncio.wait_for(
                # autoping=False: aiohttp's autoping swallows PONG frames, which the WS_PING
                # keep-alive must see; PING frames are answered in _reader instead.
                self._session.ws_connect(self.url, protocols=("sip",), ssl=self._ssl, autoping=False),
                self.options.connect_timeout,
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            self._set_state(TransportState.DISCONNECTED)
            raise TransportError(
                f"TLS certificate verification failed for {self.url}: {exc.certificate_error}; "
                "pass ca_file=... to trust its CA, or insecure=True to skip verification"
            ) from exc
        except aiohttp.ClientSSLError as exc:
            self._set_state(TransportState.DISCONNECTED)
            raise TransportError(f"TLS handshake with {self.url} failed: {exc}") from exc
        except aiohttp.WSServerHandshakeError as exc:
            self._set_state(TransportState.DISCONNECTED)
            raise TransportError(f"WebSocket handshake with {self.url} refused: HTTP {exc.status}") from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self._set_state(TransportState.DISCONNECTED)
            raise TransportError(f"cannot connect to {self.url}: {exc or type(exc).__name__}") from exc
        if ws.protocol != "sip":
            log.warning("server at %s did not agree to sub-protocol 'sip' (got %r)", self.url, ws.protocol)
        self._ws = ws
        self._outbox = asyncio.Queue()
        self._pong = asyncio.Event()
        self._set_state(TransportState.CONNECTED)
        log.info("SIP WebSocket connected to %s", self.url)
        self._spawn(self._reader(ws))
        self._spawn(self._writer(ws, self._outbox))
        if self.options.keep_alive.mode is not KeepAliveMode.NONE:
            self._spawn(self._keep_alive(ws))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def send_text(self, text: str) -> None:
        if not self.connected or self._outbox is None:
            raise TransportError(f"cannot send: SIP transport to {self.url} is {self._state.value}")
        self._outbox.put_nowait(text)

    async def _writer(self, ws: aiohttp.ClientWebSocketResponse, outbox: asyncio.Queue[str]) -> None:
        try:
            while True:
                text = await outbox.get()
                await ws.send_str(text)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(ws, f"send failed: {exc}")

    async def _reader(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        reason = "connection closed by server"
        try:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    if msg.data == CRLF_PONG and self._pong is not None:
                        self._pong.set()
                    self.receive_text(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    try:
                        self.receive_text(msg.data.decode("utf-8"))
                    except UnicodeDecodeError:
                        log.warning("dropping binary frame that is not UTF-8 (%d bytes)", len(msg.data))
                elif msg.type == aiohttp.WSMsgType.PONG:
                    if self._pong is not None:
                        self._pong.set()
                elif msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = f"WebSocket error: {_error_cause(ws, msg)}"
                    break
            if ws.close_code is not None and reason == "connection closed by server":
                reason = f"connection closed by server (code {ws.close_code})"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"read failed: {exc}"
        self._lost(ws, reason)

    async def _keep_alive(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        ka = self.options.keep_alive
        try:
            while not ws.closed:
                await asyncio.sleep(ka.interval)
                if ws is not self._ws or ws.closed:
                    return
                assert self._pong is not None
                self._pong.clear()
                if ka.mode is KeepAliveMode.CRLF:
                    self.send_text(CRLF_PING)
                else:
                    await ws.ping()
                try:
                    await asyncio.wait_for(self._pong.wait(), ka.timeout)
                except TimeoutError:
                    self._lost(ws, f"no keep-alive pong within {ka.timeout:g}s")
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(ws, f"keep-alive failed: {exc}")

    def _lost(self, ws: aiohttp.ClientWebSocketResponse, reason: str) -> None:
        """The connection ``ws`` is gone: tell listeners and start reconnecting."""
        if ws is not self._ws or self._state in (TransportState.CLOSING, TransportState.CLOSED):
            return
        self._ws = None
        self._outbox = None
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current and task is not self._reconnect_task:
                task.cancel()
        self._spawn(ws.close())
        self._set_state(TransportState.DISCONNECTED)
        log.warning("SIP WebSocket to %s lost: %s", self.url, reason)
        self.emit("disconnected", reason)
        if self.options.reconnect.enabled:
            self._reconnect_task = self._spawn(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        policy = self.options.reconnect
        attempt = 0
        while self._state is TransportState.DISCONNECTED:
            attempt += 1
            if policy.max_attempts is not None and attempt > policy.max_attempts:
                log.error("giving up on %s after %d reconnection attempts", self.url, attempt - 1)
                await self.close()
                return
            delay = policy.delay(attempt, self._rng.uniform)
            log.info("reconnecting to %s in %.2fs (attempt %d)", self.url, delay, attempt)
            self.emit("reconnecting", attempt, delay)
            await asyncio.sleep(delay)
            if self._state is not TransportState.DISCONNECTED:
                return
            try:
                await self._open()
            except TransportError as exc:
                log.info("reconnection attempt %d failed: %s", attempt, exc)
                continue
            self._reconnect_task = None
            self.emit("connected")
            return

    async def close(self) -> None:
        if self._state is TransportState.CLOSED:
            return
        self._set_state(TransportState.CLOSING)
        ws, self._ws = self._ws, None
        outbox, self._outbox = self._outbox, None
        if ws is not None and outbox is not None:
            # Let queued frames (an un-REGISTER, a BYE) go out before closing.
            for _ in range(100):
                if outbox.empty():
                    break
                await asyncio.sleep(0.005)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for task in list(self._tasks):
            if task is not current:
                try:
                    await asyncio.wait_for(asyncio.shield(task), 1.0)
                except (asyncio.CancelledError, Exception):
                    pass
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 2.0)
            except (TimeoutError, Exception):
                pass
        if self._session is not None:
            await self._session.close()
            self._session = None
        was_connected = ws is not None
        self._set_state(TransportState.CLOSED)
        if was_connected:
            self.emit("disconnected", "closed by us")
        self.emit("closed")
