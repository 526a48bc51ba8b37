"""The SIP stack against a real Kamailio (WebSocket, digest auth, registrar, proxy)."""

from __future__ import annotations

import asyncio
import json

import pytest

from softphone.errors import AuthenticationError, SessionError
from softphone.sip.invitation import AnswerPolicy
from softphone.sip.null_handler import Direction, sdp_direction
from softphone.sip.session import SessionState
from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
from softphone.sip.user_agent import UserAgent, UserAgentConfig

pytestmark = pytest.mark.peer
BOUND = 10.0


def make_ua(kam, ext: str, *, password: str | None = None, **kw) -> UserAgent:
    cfg = UserAgentConfig(
        ws_url=kam.ws_url,
        aor=f"sip:{ext}@{kam.domain}",
        password=password if password is not None else kam.users[ext],
        timers=kw.pop("timers", Timers.scaled(0.2)),
        keep_alive=kw.pop("keep_alive", KeepAlive(KeepAliveMode.CRLF, interval=5.0, timeout=3.0)),
        reconnect=kw.pop("reconnect", Reconnect(min_delay=0.05, max_delay=0.5)),
        **kw,
    )
    return UserAgent(cfg)


def count_sent(ua: UserAgent, method: str) -> list[str]:
    """Record the frames of ``method`` requests this UA puts on the wire."""
    sent: list[str] = []
    original = ua.transport.send_text

    def spy(text: str) -> None:
        if text.startswith(f"{method} "):
            sent.append(text)
        original(text)

    ua.transport.send_text = spy  # type: ignore[method-assign]
    return sent


async def until(predicate, timeout=BOUND):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def incoming_call(ua: UserAgent):
    fut = asyncio.get_running_loop().create_future()
    ua.once("invite", lambda inv: fut.done() or fut.set_result(inv))
    return fut


async def test_register_and_unregister(kamailio):
    (ext,) = kamailio.allocate(1)
    ua = make_ua(kamailio, ext)
    events: list[str] = []
    ua.on("registered", lambda expires: events.append(f"registered {expires}"))
    ua.on("unregistered", lambda reason: events.append("unregistered"))
    registers = count_sent(ua, "REGISTER")
    async with ua:
        assert ua.registered
        assert ua.registerer.granted_expires and ua.registerer.granted_expires > 0
    assert events[0].startswith("registered") and events[-1] == "unregistered"
    assert "expires=0" in registers[-1]


async def test_wrong_password_is_rejected_without_a_loop(kamailio):
    (ext,) = kamailio.allocate(1)
    ua = make_ua(kamailio, ext, password="definitely-wrong")
    registers = count_sent(ua, "REGISTER")
    with pytest.raises(AuthenticationError) as info:
        await asyncio.wait_for(ua.start(), BOUND)
    assert f"authentication rejected for {ext}@{kamailio.domain}" in str(info.value)
    assert "definitely-wrong" not in str(info.value)
    assert len(registers) == 2


async def test_two_agents_call_each_other(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a, b = make_ua(kamailio, ext_a), make_ua(kamailio, ext_b)
    async with a, b:
        incoming = await incoming_call(b)
        progress: list[int] = []
        inviter = a.invite(ext_b)
        inviter.on("progress", lambda r: progress.append(r.status))
        await asyncio.wait_for(inviter.invite(), BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await callee.wait_established(BOUND)
        assert 180 in progress
        assert inviter.state is SessionState.ESTABLISHED and callee.state is SessionState.ESTABLISHED
        assert callee.handler.remote_sdp and inviter.handler.remote_sdp
        ended = asyncio.get_running_loop().create_future()
        callee.once("terminated", lambda reason, status: ended.set_result(reason))
        await asyncio.wait_for(inviter.bye(), BOUND)
        assert await asyncio.wait_for(ended, BOUND) == "remote hangup"


async def test_cancel_before_answer(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a = make_ua(kamailio, ext_a)
    b = make_ua(kamailio, ext_b, answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = await incoming_call(b)
        inviter = a.invite(ext_b)
        ringing = asyncio.get_running_loop().create_future()
        inviter.on("progress", lambda r: r.status == 180 and not ringing.done() and ringing.set_result(r))
        call = asyncio.ensure_future(inviter.invite())
        await asyncio.wait_for(ringing, BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await inviter.cancel()
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(call, BOUND)
        assert info.value.status_code == 487
        await callee.wait_terminated(BOUND)
        assert callee.termination_reason == "cancelled"


async def test_reinvite_hold_seen_by_far_end(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a, b = make_ua(kamailio, ext_a), make_ua(kamailio, ext_b)
    async with a, b:
        incoming = await incoming_call(b)
        inviter = await asyncio.wait_for(a.call(ext_b), BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await callee.wait_established(BOUND)
        held = asyncio.get_running_loop().create_future()
        callee.once("hold", lambda direction: held.set_result(direction))
        await asyncio.wait_for(inviter.hold(), BOUND)
        assert await asyncio.wait_for(held, BOUND) == "sendonly"
        assert sdp_direction(callee.handler.remote_sdp) is Direction.SENDONLY
        assert sdp_direction(inviter.handler.remote_sdp) is Direction.RECVONLY
        await asyncio.wait_for(inviter.unhold(), BOUND)
        await until(lambda: not callee.remote_hold)
        await inviter.bye()


async def test_info_dtmf_delivered(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a, b = make_ua(kamailio, ext_a), make_ua(kamailio, ext_b)
    async with a, b:
        incoming = await incoming_call(b)
        inviter = await asyncio.wait_for(a.call(ext_b), BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await callee.wait_established(BOUND)
        digits: list[tuple] = []
        callee.on("dtmf", lambda ev: digits.append((ev.digit, ev.duration_ms, ev.via)))
        assert await asyncio.wait_for(inviter.send_dtmf("19#", duration_ms=40, gap_ms=10), BOUND) == "info"
        await until(lambda: len(digits) == 3)
        assert digits == [("1", 40, "info"), ("9", 40, "info"), ("#", 40, "info")]
        await inviter.bye()


async def test_registrar_restart_reconnects_and_reregisters(kamailio_factory):
    kam = kamailio_factory()
    a, b = make_ua(kam, "1011"), make_ua(kam, "1012")
    async with a, b:
        log: dict[str, list[str]] = {"a": [], "b": []}
        for name, ua in (("a", a), ("b", b)):
            for event in ("disconnected", "reconnecting", "connected", "registered", "unregistered"):
                ua.on(event, lambda *args, _e=event, _n=name: log[_n].append(_e))
        kam.stop()
        await until(lambda: "disconnected" in log["a"] and "disconnected" in log["b"])
        assert not a.registered and not b.registered
        kam.start()
        await until(lambda: a.registered and b.registered, timeout=20.0)
        for name in ("a", "b"):
            events = log[name]
            assert events.index("disconnected") < events.index("connected") < events.index("registered")
            assert "reconnecting" in events and "unregistered" in events
        # And the phones work again without anyone touching them.
        incoming = await incoming_call(b)
        inviter = await asyncio.wait_for(a.call("1012"), BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await callee.wait_established(BOUND)
        await inviter.bye()


async def test_invite_is_proxy_authenticated_and_callee_can_hang_up_and_hold(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a, b = make_ua(kamailio, ext_a), make_ua(kamailio, ext_b)
    invites = count_sent(a, "INVITE")
    async with a, b:
        incoming = await incoming_call(b)
        inviter = await asyncio.wait_for(a.call(ext_b), BOUND)
        callee = await asyncio.wait_for(incoming, BOUND)
        await callee.wait_established(BOUND)
        # Kamailio challenged the INVITE with 407; the retry carried Proxy-Authorization.
        assert len(invites) == 2
        assert "Proxy-Authorization:" not in invites[0] and "Proxy-Authorization:" in invites[1]
        # In-dialog requests from the callee follow the Record-Route back to the caller.
        held = asyncio.get_running_loop().create_future()
        inviter.once("hold", lambda direction: held.set_result(direction))
        await asyncio.wait_for(callee.hold(), BOUND)
        assert await asyncio.wait_for(held, BOUND) == "sendonly"
        ended = asyncio.get_running_loop().create_future()
        inviter.once("terminated", lambda reason, status: ended.set_result(reason))
        await asyncio.wait_for(callee.bye(), BOUND)
        assert await asyncio.wait_for(ended, BOUND) == "remote hangup"


async def test_call_to_unregistered_extension_is_404(kamailio):
    ext_a, nobody = kamailio.allocate(2)  # nobody: never registered by any test
    a = make_ua(kamailio, ext_a)
    async with a:
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(a.call(nobody), BOUND)
        assert info.value.status_code == 404


async def test_crlf_keepalive_is_answered_by_kamailio(kamailio):
    (ext,) = kamailio.allocate(1)
    ua = make_ua(kamailio, ext, keep_alive=KeepAlive(KeepAliveMode.CRLF, interval=0.05, timeout=3.0))
    pings = []
    original = ua.transport.send_text

    def spy(text: str) -> None:
        if text == "\r\n\r\n":
            pings.append(text)
        original(text)

    ua.transport.send_text = spy  # type: ignore[method-assign]
    lost: list[str] = []
    ua.on("disconnected", lost.append)
    async with ua:
        await until(lambda: len(pings) >= 5)
        assert lost == [] and ua.registered  # every ping got its pong in time


async def test_message_between_agents(kamailio):
    ext_a, ext_b = kamailio.allocate(2)
    a, b = make_ua(kamailio, ext_a), make_ua(kamailio, ext_b)
    async with a, b:
        received = asyncio.get_running_loop().create_future()
        b.once("message", lambda request: received.set_result(request))
        response = await asyncio.wait_for(a.message(ext_b, f"hello from {ext_a}"), BOUND)
        assert response.status == 200
        request = await asyncio.wait_for(received, BOUND)
        assert request.body == f"hello from {ext_a}"
        assert request.content_type == "text/plain"


# --- interop with the Webphone's stack: SIP.js 0.15.11 (legacy SIP.UA API) in Chromium -------------

SIPJS_PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="/sip.min.js"></script></head>
<body><script>
const report = (ev, data) => fetch('/event', {method: 'POST', body: JSON.stringify({ev, data: data || ''})});
window.onerror = (msg) => report('error', String(msg));
const ua = new SIP.UA({
  uri: 'sip:%(ext)s@%(domain)s',
  transportOptions: {wsServers: ['%(ws)s'], traceSip: false},
  authorizationUser: '%(ext)s', password: '%(password)s',
  hackIpInContact: true, register: true, userAgentString: 'SIP.js/0.15.11',
  sessionDescriptionHandlerFactoryOptions: {
    constraints: {audio: true, video: false},
    peerConnectionOptions: {rtcConfiguration: {iceServers: []}, iceCheckingTimeout: 500},
  },
  log: {builtinEnabled: false},
});
ua.on('registrationFailed', (r, cause) => report('registrationFailed', String(cause)));
const TARGET = '%(target)s';
ua.once('registered', () => {
  report('registered');
  if (!TARGET) return;
  const s = ua.invite('sip:' + TARGET + '@%(domain)s',
                      {sessionDescriptionHandlerOptions: {constraints: {audio: true, video: false}}});
  s.on('progress', (r) => report('progress', String(r && r.statusCode)));
  s.on('accepted', () => {
    report('accepted');
    s.dtmf('7');
    setTimeout(() => s.bye(), 400);
  });
  s.on('failed', (r, cause) => report('failed', String(cause)));
  s.on('terminated', () => report('terminated'));
});
ua.on('invite', (s) => {
  report('invite');
  s.on('accepted', () => report('accepted'));
  s.on('dtmf', (request, dtmf) => report('dtmf', dtmf.tone));
  s.on('reinvite', () => report('reinvite'));
  s.on('bye', () => report('bye'));
  s.on('failed', (r, cause) => report('failed', String(cause)));
  s.accept({sessionDescriptionHandlerOptions: {constraints: {audio: true, video: false}}});
});
</script></body></html>"""


class SipJsPage:
    """A loopback web server for one SIP.js page; the page POSTs its events back here."""

    def __init__(self, chromium, **params) -> None:
        self.chromium = chromium
        self.page = SIPJS_PAGE % params
        self.events: asyncio.Queue = asyncio.Queue()
        self.seen: list[tuple[str, str]] = []
        self.runner = None
        self.browser = None

    async def __aenter__(self) -> SipJsPage:
        from aiohttp import web

        async def index(request):
            return web.Response(text=self.page, content_type="text/html")

        async def sipjs(request):
            return web.FileResponse(self.chromium.sipjs_path)

        async def event(request):
            item = json.loads(await request.text())
            self.events.put_nowait((item["ev"], item["data"]))
            return web.Response(text="ok")

        app = web.Application()
        app.add_routes([web.get("/", index), web.get("/sip.min.js", sipjs), web.post("/event", event)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
        return self

    def open(self) -> None:
        self.browser = self.chromium.launch(self.url)

    async def next_event(self, name: str, timeout: float = 60.0) -> str:
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            ev, data = await asyncio.wait_for(self.events.get(), max(0.1, end - loop.time()))
            self.seen.append((ev, data))
            assert ev not in ("error", "registrationFailed", "failed"), self.seen
            if ev == name:
                return data

    async def __aexit__(self, *exc_info) -> None:
        if self.browser is not None:
            self.browser.stop()
        await self.runner.cleanup()


async def test_sipjs_webphone_in_chromium_calls_us_through_kamailio(kamailio, chromium):
    """The browser Webphone's real stack registers, calls our agent, sends INFO DTMF and hangs up."""
    ours, theirs = kamailio.allocate(2)
    agent = make_ua(kamailio, ours)
    async with SipJsPage(chromium, ext=theirs, domain=kamailio.domain, ws=kamailio.ws_url,
                         password=kamailio.users[theirs], target=ours) as page, agent:
        incoming = await incoming_call(agent)
        page.open()
        await page.next_event("registered")
        invitation = await asyncio.wait_for(incoming, 60.0)
        assert invitation.request.headers.get("User-Agent") == "SIP.js/0.15.11"
        assert "UDP/TLS/RTP/SAVPF" in invitation.request.body  # a real Chromium offer
        digits: list[tuple] = []
        invitation.on("dtmf", lambda ev: digits.append((ev.digit, ev.duration_ms, ev.via)))
        await page.next_event("accepted")
        await invitation.wait_established(BOUND)
        await asyncio.wait_for(invitation.wait_terminated(30.0), 30.0)
        assert invitation.termination_reason == "remote hangup"
        assert digits and digits[0][0] == "7" and digits[0][2] == "info"


async def test_we_call_sipjs_in_chromium_hold_dtmf_and_hang_up(kamailio, chromium):
    """Our agent calls the Webphone's stack (auto-answer), holds, unholds, sends DTMF, hangs up."""
    from softphone.sip.null_handler import webrtc_null_handler_factory

    ours, theirs = kamailio.allocate(2)
    agent = make_ua(kamailio, ours, description_handler_factory=webrtc_null_handler_factory)
    async with SipJsPage(chromium, ext=theirs, domain=kamailio.domain, ws=kamailio.ws_url,
                         password=kamailio.users[theirs], target="") as page, agent:
        page.open()
        await page.next_event("registered")
        inviter = await asyncio.wait_for(agent.call(theirs), 60.0)
        await page.next_event("accepted", 30.0)
        assert "UDP/TLS/RTP/SAVPF" in inviter.handler.remote_sdp  # Chromium's answer
        await asyncio.wait_for(inviter.hold(), 30.0)
        assert sdp_direction(inviter.handler.remote_sdp) in (Direction.RECVONLY, Direction.INACTIVE)
        await page.next_event("reinvite", 30.0)
        await asyncio.wait_for(inviter.unhold(), 30.0)
        assert sdp_direction(inviter.handler.remote_sdp) is Direction.SENDRECV
        assert await asyncio.wait_for(inviter.send_dtmf("3", duration_ms=50), 30.0) == "info"
        assert await page.next_event("dtmf", 30.0) == "3"
        await asyncio.wait_for(inviter.bye(), 30.0)
        await page.next_event("bye", 30.0)
