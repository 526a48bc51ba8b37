"""WebSocket transport against a real aiohttp WebSocket server on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl

import pytest
from aiohttp import WSMsgType, web
from tls_support import make_self_signed

from softphone.errors import ConfigurationError, TransportError
from softphone.sip.transport import (
    CRLF_PING,
    CRLF_PONG,
    KeepAlive,
    KeepAliveMode,
    Reconnect,
    TlsOptions,
    TransportState,
    WebSocketTransport,
    WebSocketTransportOptions,
)

BOUND = 5.0
OPTIONS_REQ = (
    "OPTIONS sip:u@x.invalid;transport=ws SIP/2.0\r\n"
    "Via: SIP/2.0/WS server.invalid;branch=z9hG4bKsrv1\r\n"
    "To: <sip:u@x.invalid>\r\nFrom: <sip:srv@server.invalid>;tag=s1\r\n"
    "Call-ID: ka-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
)


class SipWsServer:
    """A WebSocket server speaking sub-protocol ``sip`` that records frames."""

    def __init__(self, *, pong: bool = True, ssl_context: ssl.SSLContext | None = None):
        self.pong = pong
        self.ssl_context = ssl_context
        self.frames: list[str] = []
        self.pings = 0
        """WebSocket ping frames received (answered with a pong when ``pong``)."""
        self.sockets: list[web.WebSocketResponse] = []
        self.protocols: list[str | None] = []
        self.connections = 0
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    async def handler(self, request):
        ws = web.WebSocketResponse(protocols=("sip",), autoping=False)  # pings are counted here
        await ws.prepare(request)
        self.connections += 1
        self.protocols.append(ws.ws_protocol)
        self.sockets.append(ws)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.frames.append(msg.data)
                if msg.data == CRLF_PING and self.pong:
                    await ws.send_str(CRLF_PONG)
            elif msg.type == WSMsgType.PING:
                self.pings += 1
                if self.pong:
                    await ws.pong(msg.data)
        return ws

    async def start(self, port: int = 0):
        app = web.Application()
        app.router.add_get("/ws", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, ssl_context=self.ssl_context)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self):
        for ws in list(self.sockets):
            await ws.close()
        await self.runner.cleanup()

    @property
    def url(self):
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"


async def until(predicate, timeout=BOUND):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def fast(url, **kw):
    return WebSocketTransport(WebSocketTransportOptions(
        url=url,
        keep_alive=kw.pop("keep_alive", KeepAlive(KeepAliveMode.NONE)),
        reconnect=kw.pop("reconnect", Reconnect(min_delay=0.01, max_delay=0.05, jitter=0.0)),
        connect_timeout=2.0, **kw))


@pytest.fixture
async def server():
    srv = await SipWsServer().start()
    yield srv
    await srv.stop()


async def test_connect_send_receive_and_close(server):
    t = fast(server.url)
    states, messages = [], []
    t.on("state", states.append)
    t.on("message", messages.append)
    await asyncio.wait_for(t.connect(), BOUND)
    assert t.connected and t.via_transport == "WS"
    assert server.protocols == ["sip"]
    t.send(OPTIONS_REQ)
    await until(lambda: server.frames)
    assert server.frames == [OPTIONS_REQ]  # one message per text frame
    await server.sockets[0].send_str(OPTIONS_REQ)
    await until(lambda: messages)
    assert messages[0].method == "OPTIONS"
    await t.close()
    assert states == [TransportState.CONNECTING, TransportState.CONNECTED, TransportState.CLOSING,
                      TransportState.CLOSED]
    with pytest.raises(TransportError, match="closed"):
        t.send(OPTIONS_REQ)


async def test_send_while_disconnected_fails_at_once():
    t = fast("ws://127.0.0.1:9/ws")
    with pytest.raises(TransportError, match="not connected"):
        t.send(OPTIONS_REQ)


async def test_connect_refused_is_a_clear_error():
    t = fast("ws://127.0.0.1:9/ws")
    with pytest.raises(TransportError, match=re.escape("cannot connect to ws://127.0.0.1:9/ws")):
        await asyncio.wait_for(t.connect(), BOUND)
    assert t.state is TransportState.DISCONNECTED
    await t.close()


def test_bad_url_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="ws url"):
        WebSocketTransport("http://127.0.0.1/ws")


async def test_reconnects_after_server_closes(server):
    t = fast(server.url)
    events = []
    t.on("disconnected", lambda reason: events.append(("disconnected", reason)))
    t.on("reconnecting", lambda attempt, delay: events.append(("reconnecting", attempt)))
    t.on("connected", lambda: events.append(("connected",)))
    await t.connect()
    await server.sockets[0].close()
    await until(lambda: server.connections == 2 and t.connected)
    assert events[0] == ("connected",)
    assert events[1][0] == "disconnected" and "closed by server" in events[1][1]
    assert events[2] == ("reconnecting", 1)
    assert events[3] == ("connected",)
    t.send(OPTIONS_REQ)
    await until(lambda: OPTIONS_REQ in server.frames)
    await t.close()


async def test_reconnect_backs_off_until_the_server_returns():
    srv = await SipWsServer().start()
    port = srv.port
    t = fast(srv.url, reconnect=Reconnect(min_delay=0.01, max_delay=0.08, jitter=0.0))
    attempts = []
    t.on("reconnecting", lambda attempt, delay: attempts.append((attempt, delay)))
    await t.connect()
    await srv.stop()
    await until(lambda: len(attempts) >= 4)
    assert not t.connected
    srv2 = await SipWsServer().start(port)
    try:
        await until(lambda: t.connected)
        delays = [d for _, d in attempts[:5]]
        assert delays[:4] == [0.01, 0.02, 0.04, 0.08]  # doubling, capped at max_delay
        assert [a for a, _ in attempts] == list(range(1, len(attempts) + 1))
    finally:
        await t.close()
        await srv2.stop()


def test_backoff_delay_has_bounded_jitter():
    policy = Reconnect(min_delay=1.0, max_delay=8.0, jitter=0.25)
    assert policy.delay(1, lambda lo, hi: lo) == 0.75
    assert policy.delay(1, lambda lo, hi: hi) == 1.25
    assert policy.delay(10, lambda lo, hi: 1.0) == 8.0
    assert Reconnect(min_delay=0.5, jitter=0).delay(3) == 2.0


async def test_crlf_keepalive_pong_keeps_connection(server):
    t = fast(server.url, keep_alive=KeepAlive(KeepAliveMode.CRLF, interval=0.02, timeout=5.0))
    lost = []
    t.on("disconnected", lost.append)
    await t.connect()
    await until(lambda: server.frames.count(CRLF_PING) >= 3)
    assert lost == [] and t.connected
    await t.close()


async def test_missing_pong_declares_connection_lost():
    srv = await SipWsServer(pong=False).start()
    t = fast(srv.url, keep_alive=KeepAlive(KeepAliveMode.CRLF, interval=0.02, timeout=0.05),
             reconnect=Reconnect(enabled=False))
    lost = []
    t.on("disconnected", lost.append)
    try:
        await t.connect()
        await until(lambda: lost)
        assert "keep-alive" in lost[0]
        assert t.state is TransportState.DISCONNECTED
    finally:
        await t.close()
        await srv.stop()


async def test_websocket_ping_keepalive(server):
    t = fast(server.url, keep_alive=KeepAlive(KeepAliveMode.WS_PING, interval=0.02, timeout=5.0))
    lost = []
    t.on("disconnected", lost.append)
    await t.connect()
    await until(lambda: server.pings >= 3)  # ping frames reached the server, each answered
    assert lost == [] and t.connected
    assert CRLF_PING not in server.frames
    await t.close()


async def test_websocket_ping_without_pong_declares_connection_lost():
    srv = await SipWsServer(pong=False).start()
    t = fast(srv.url, keep_alive=KeepAlive(KeepAliveMode.WS_PING, interval=0.02, timeout=0.05),
             reconnect=Reconnect(enabled=False))
    lost = []
    t.on("disconnected", lost.append)
    try:
        await t.connect()
        await until(lambda: lost)
        assert srv.pings >= 1 and "keep-alive" in lost[0]
    finally:
        await t.close()
        await srv.stop()


async def test_partial_request_from_network_gets_400(server):
    t = fast(server.url)
    await t.connect()
    bad = OPTIONS_REQ.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")
    await server.sockets[0].send_str(bad)
    await until(lambda: server.frames)
    assert server.frames[0].startswith("SIP/2.0 400 ")
    assert "z9hG4bKsrv1" in server.frames[0]
    await t.close()


# --- TLS ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    tls = make_self_signed(tmp_path_factory.mktemp("tls"))
    return str(tls.cert_file), str(tls.key_file)


@pytest.fixture
async def tls_server(self_signed):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*self_signed)
    srv = await SipWsServer(ssl_context=ctx).start()
    yield srv
    await srv.stop()


async def test_wss_self_signed_is_refused_by_default(tls_server):
    t = fast(tls_server.url)
    assert t.via_transport == "WSS"
    with pytest.raises(TransportError) as info:
        await asyncio.wait_for(t.connect(), BOUND)
    message = str(info.value)
    assert "certificate verification failed" in message
    assert "ca_file" in message and "insecure" in message
    await t.close()


async def test_wss_with_ca_file_connects(tls_server, self_signed):
    t = fast(tls_server.url, tls=TlsOptions(ca_file=self_signed[0]))
    await asyncio.wait_for(t.connect(), BOUND)
    assert t.connected
    await t.close()


async def test_wss_insecure_connects_with_a_warning(tls_server, caplog):
    t = fast(tls_server.url, tls=TlsOptions(insecure=True))
    await asyncio.wait_for(t.connect(), BOUND)
    assert t.connected
    assert "TLS verification DISABLED" in caplog.text
    await t.close()


def test_unreadable_ca_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="ca_file"):
        TlsOptions(ca_file=str(tmp_path / "missing.pem")).ssl_context("wss://127.0.0.1/ws")


async def test_handshake_refused_names_the_http_status(server):
    t = fast(server.url.replace("/ws", "/nope"))
    with pytest.raises(TransportError, match=r"handshake .* refused: HTTP 404"):
        await asyncio.wait_for(t.connect(), BOUND)
    await t.close()


async def test_gives_up_after_max_attempts():
    srv = await SipWsServer().start()
    t = fast(srv.url, reconnect=Reconnect(min_delay=0.01, max_delay=0.02, jitter=0.0, max_attempts=2))
    closed = asyncio.get_running_loop().create_future()
    t.on("closed", lambda: closed.done() or closed.set_result(True))
    attempts = []
    t.on("reconnecting", lambda attempt, delay: attempts.append(attempt))
    await t.connect()
    await srv.stop()
    await asyncio.wait_for(closed, BOUND)
    assert attempts == [1, 2]
    assert t.state is TransportState.CLOSED


async def test_binary_frames_are_parsed_too(server):
    t = fast(server.url)
    messages = []
    t.on("message", messages.append)
    await t.connect()
    await server.sockets[0].send_bytes(OPTIONS_REQ.encode())
    await server.sockets[0].send_bytes(b"\xff\xfe not utf-8")
    await until(lambda: messages)
    assert messages[0].method == "OPTIONS" and t.connected
    await t.close()


def test_backoff_delay_is_always_within_bounds():
    from hypothesis import given
    from hypothesis import strategies as st

    @given(
        min_delay=st.floats(0.001, 10), spread=st.floats(1, 100), jitter=st.floats(0, 0.9),
        attempt=st.integers(1, 200), draw=st.floats(0, 1),
    )
    def check(min_delay, spread, jitter, attempt, draw):
        policy = Reconnect(min_delay=min_delay, max_delay=min_delay * spread, jitter=jitter)
        delay = policy.delay(attempt, lambda lo, hi: lo + (hi - lo) * draw)
        assert min_delay * (1 - jitter) - 1e-9 <= delay <= policy.max_delay * (1 + jitter) + 1e-9
        later = policy.delay(attempt + 1, lambda lo, hi: lo + (hi - lo) * draw)
        assert later >= delay - 1e-9  # never shorter than the previous one for the same draw

    check()


async def test_oversized_frame_is_logged_with_its_real_cause(server, caplog):
    """A frame past aiohttp's limit closes with 1009: the log says so, not "WebSocket error: None"."""
    t = fast(server.url, reconnect=Reconnect(enabled=False))
    reasons: list[str] = []
    t.on("disconnected", reasons.append)
    await t.connect()
    with contextlib.suppress(ConnectionError):  # the client may drop the connection mid-frame
        await server.sockets[0].send_str("x" * (4 * 1024 * 1024 + 1))
    await until(lambda: reasons)
    assert "None" not in reasons[0]
    assert "1009" in reasons[0] and "exceeds limit" in reasons[0], reasons[0]
    assert reasons[0] in caplog.text
    await t.close()
