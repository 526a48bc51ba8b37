"""softphone.Agent against the lab's REST API, Kamailio as registrar/proxy and coturn for media.

The lab's telephony (tests/agent_support.py) calls the agent through Kamailio on
login, as the platform bridges its call to the Webphone's extension.
"""

from __future__ import annotations

import asyncio

import pytest
from agent_support import PROMPT_HZ, start_agent_lab

from softphone import Agent, AgentState, CallState, load_params
from softphone.agent.agent import expiry_lead
from softphone.errors import (
    AgentError,
    AuthenticationError,
    IceGatheringError,
    PlatformAuthError,
    PlatformConnectionError,
    SessionExpiredError,
)
from softphone.lab.store import AgentStatus

pytestmark = pytest.mark.peer
BOUND = 20.0


@pytest.fixture
async def lab(kamailio_factory, coturn):
    from agent_support import KAMAILIO_USERS

    kam = kamailio_factory(users=KAMAILIO_USERS)
    lab = await start_agent_lab(kam, coturn)
    try:
        yield lab
    finally:
        await lab.server.close()


def make_agent(lab, user_id: int = 1001, *, expire_in: float = 3600.0, launch: dict | None = None,
               **options) -> Agent:
    params = load_params(None, flags={**lab.launch(user_id, expire_in=expire_in), **(launch or {})})
    options.setdefault("campaign_id", 1)
    options.setdefault("relay_only", True)
    return Agent(params, **options)


async def test_full_session_bridge_call_audio_dtmf_hold_and_stop_order(lab):
    agent = make_agent(lab, play="tone:1000")
    events: list = []
    for name in ("state", "registered", "logged_in", "call_incoming", "call_answered", "dtmf", "hold", "unhold",
                 "call_ended", "logged_out", "unregistered"):
        agent.on(name, events.append)
    sent_registers: list[tuple[float, str]] = []
    async with agent:
        # the wire: REGISTER frames the agent sends, to order the unregister against the logout
        import time

        original = agent.ua.transport.send_text

        def spy(text: str) -> None:
            if text.startswith("REGISTER "):
                sent_registers.append((time.monotonic(), text))
            original(text)

        agent.ua.transport.send_text = spy
        assert agent.state is AgentState.READY and agent.extension == "9001" and agent.logged_in
        call = await agent.wait_for_call(timeout=BOUND)
        assert call.bridge and call.state is CallState.ANSWERED and agent.call is call
        assert await lab.agent_status() is AgentStatus.LOGGED_IN
        # the platform's prompt is heard, and the platform hears us
        await call.wait_for_tone(PROMPT_HZ, timeout=BOUND)
        platform_side = lab.telephony.bridge_calls[1001]
        await platform_side.wait_for_tone(1000, timeout=BOUND)
        # DTMF both ways: INFO and RFC 4733 from the platform arrive as one stream
        # (one way at a time: RTP through the relay and SIP through Kamailio may overtake each other)
        await platform_side.send_dtmf("4", method="info")
        assert await call.wait_for_dtmf(1, timeout=BOUND) == "4"
        await platform_side.send_dtmf("2", method="rfc4733")
        assert await call.wait_for_dtmf(1, timeout=BOUND) == "2"
        assert [e.via for e in call.digits] == ["info", "rfc4733"]
        await call.send_dtmf("7", method="rfc4733")
        assert await platform_side.wait_for_dtmf(1, timeout=BOUND) == "7"
        await call.send_dtmf("#", method="info")
        assert await platform_side.wait_for_dtmf(1, timeout=BOUND) == "#"
        await call.hold()
        assert call.state is CallState.HELD
        await call.unhold()
        assert call.state is CallState.ANSWERED
        assert (await call.stats()).packets_received > 0
    assert agent.state is AgentState.STOPPED
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT
    # the order seen from the platform's side: logout, then the bridge ends, then the unregister
    journal = lab.telephony.journal
    assert journal.names()[:2] == ["login", "bridge answered"]
    assert "logout" in journal.names() and "bridge ended" in journal.names()
    assert journal.time_of("logout") <= journal.time_of("bridge ended")
    unregister_at = next(t for t, text in sent_registers if "expires=0" in text.lower() or "Expires: 0" in text)
    assert journal.time_of("logout") < unregister_at
    assert not await lab.registered("9001")
    names = [e.EVENT for e in events]
    for a, b in [("registered", "logged_in"), ("logged_in", "call_answered"), ("call_answered", "logged_out"),
                 ("logged_out", "unregistered")]:
        assert names.index(a) < names.index(b), names
    states = [e.state for e in events if e.EVENT == "state"]
    assert states == ["authorizing", "provisioning", "registering", "logging_in", "ready", "stopping", "stopped"]


async def test_stale_session_from_a_crashed_run_is_logged_out_first(lab):
    # a run that "crashed": logged in through the REST API and never logged out
    crashed = make_agent(lab)
    await crashed.api.authorize()
    await crashed.api.provision_extension(1, crashed.params.expire_date)
    await crashed.api.login(1, "9001")
    await crashed.api.close()
    assert await lab.agent_status() is AgentStatus.LOGGED_IN
    agent = make_agent(lab)
    outs: list = []
    agent.on("logged_out", outs.append)
    async with agent:
        assert agent.stale_session_logged_out and agent.logged_in
        assert outs and outs[0].stale
        await agent.wait_for_call(timeout=BOUND)
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


async def test_expire_date_ends_the_session_with_expiring_first(lab):
    agent = make_agent(lab, expire_in=6.0, expiry_warning=2.0)
    seen: list[str] = []
    for name in ("expiring", "logged_out", "unregistered"):
        agent.on(name, lambda ev, _n=name: seen.append(_n))
    with pytest.raises(SessionExpiredError):
        async with agent:
            await agent.wait_for_call(timeout=BOUND)
            await asyncio.sleep(3600)  # ended by expire_date
    assert seen[:3] == ["expiring", "logged_out", "unregistered"]
    assert agent.state is AgentState.STOPPED and agent.stop_reason == "expired"
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


def test_expiry_lead_is_sixty_seconds_or_ten_percent():
    assert expiry_lead(3600) == 60
    assert expiry_lead(100) == 10
    assert expiry_lead(0) == 0


@pytest.mark.parametrize("what", ["password", "auth_key"])
async def test_wrong_credentials_fail_with_an_auth_error_and_leave_nothing(lab, what):
    agent = make_agent(lab, launch={what: "definitely-wrong-secret"})
    with pytest.raises(PlatformAuthError) as info:
        async with agent:
            raise AssertionError("not reached")
    assert "definitely-wrong-secret" not in str(info.value) and "definitely-wrong-secret" not in repr(agent)
    assert agent.state is AgentState.FAILED
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


async def test_wrong_sip_password_fails_at_register_and_leaves_nothing(lab):
    # the REST API accepts the user, the registrar refuses the extension's password
    agent = make_agent(lab, launch={"extension": "9002"})  # agent1 given agent2's extension
    with pytest.raises(AuthenticationError):
        async with agent:
            raise AssertionError("not reached")
    assert agent.state is AgentState.FAILED and not agent.logged_in
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["unreachable", "http as https"])
async def test_unreachable_or_plain_http_server_is_a_connection_error(lab, where):
    api_url = (f"http://127.0.0.1:{_closed_port()}" if where == "unreachable"
               else lab.server.url.replace("http://", "https://"))
    agent = make_agent(lab, launch={"api_url": api_url}, api_timeout=5.0)
    with pytest.raises(PlatformConnectionError) as info:
        async with agent:
            raise AssertionError("not reached")
    assert "\n" not in str(info.value)
    assert agent.state is AgentState.FAILED


async def test_turn_unreachable_fails_the_bridge_call_and_logs_out(lab):
    agent = make_agent(lab, launch={"turn_urls": "turn:127.0.0.1:9?transport=udp"})
    with pytest.raises(IceGatheringError):
        async with agent:
            await agent.wait_stop_requested()
    assert agent.state is AgentState.FAILED
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


async def test_repr_has_no_secret(lab):
    agent = make_agent(lab)
    text = repr(agent) + repr(agent.params) + repr(agent.api)
    for secret in ("agent1pass", lab.server.api_key.reveal(), lab.coturn.password):
        assert secret not in text


async def test_stop_while_the_login_is_in_flight_still_logs_out(lab):
    lab.telephony.login_delay = 1.0
    agent = make_agent(lab)
    tasks: list[asyncio.Task] = []

    def stop_once_the_lab_has_the_login(ev) -> None:
        if ev.state == "logging_in":
            async def later() -> None:
                while "login started" not in lab.telephony.journal.names():
                    await asyncio.sleep(0.02)
                agent.request_stop("interrupted while logging in")

            tasks.append(asyncio.ensure_future(later()))

    agent.on("state", stop_once_the_lab_has_the_login)
    with pytest.raises(AgentError, match="stopped while starting: interrupted while logging in"):
        async with agent:
            raise AssertionError("not reached: the start was interrupted")
    assert agent.state is AgentState.STOPPED
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT
    assert not await lab.registered("9001")


async def test_voice_api_helpers_on_the_agent(lab):
    agent = make_agent(lab, outbound_cli="0215550000")
    async with agent:
        await agent.wait_for_call(timeout=BOUND)
        assert (await agent.campaign_status()).status == 1
        first = await agent.dial("0821110001")
        second = await agent.dial("0821110002", unique_id="u-2")
        assert {c.call_id for c in await agent.active_calls()} == {first.call_id, second.call_id}
        assert (await agent.start_recording(first.call_id)).success
        assert (await agent.stop_recording(first.call_id)).success
        assert (await agent.hold_call(first.call_id)).success
        assert (await agent.retrieve_call(first.call_id)).success
        assert (await agent.connect_calls(first.call_id, second.call_id)).success
        for call in (first, second):  # connected to each other, the agent dropped: dispose them
            assert (await agent.dispose(call.call_id, "DONE")).success
        shot = await agent.shotgun(["0821110003", "0821110004"])
        assert shot.call_id and await agent.active_calls()
        await agent.hangup_call(shot.call_id)
    with pytest.raises(AgentError, match="not logged in"):
        await agent.dial("0821110005")
