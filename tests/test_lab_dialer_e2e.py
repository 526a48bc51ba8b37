"""The whole lab end to end: our SIP user agent registers over ws://, the REST client drives the calls.

start_lab wires SipTelephony on the lab's SIP edge; the phone is a softphone.sip
UserAgent with real aiortc media (a 1000 Hz tone out, tone detection in); the
webhooks go to a local receiver.  Nothing here is faked but the customers, who sit
behind the lab's SIP trunk as documented.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from lab_dialer_support import loopback_media  # noqa: F401
from lab_sip_support import extension, password, seed_with_phones
from media_support import wait_until
from test_lab_webhooks import check_against_openapi

from softphone.errors import PlatformError
from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.media.config import MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandlerFactory
from softphone.media.sinks import ToneDetector
from softphone.media.sources import ToneSource, decode_file
from softphone.media.tones import frequencies_close, pcm16_to_float, tone_levels
from softphone.platform.client import PlatformClient
from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
from softphone.sip.user_agent import UserAgent, UserAgentConfig

pytestmark = pytest.mark.usefixtures("loopback_media")

AGENT_TONE, PROMPT, CUSTOMER_TONE = 1000.0, 440.0, 600.0


class Hooks:
    def __init__(self) -> None:
        self.received: list[dict] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        return web.Response()

    def of(self, kind: str) -> list[dict]:
        return [n["payload"] for n in self.received if n["type"] == kind]


@contextlib.asynccontextmanager
async def hook_server():
    hooks = Hooks()
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hooks.url = f"http://{host}:{port}/hook"
    try:
        yield hooks
    finally:
        await runner.cleanup()


def agent_phone(lab: Any, i: int, ear: ToneDetector) -> UserAgent:
    factory = WebRtcDescriptionHandlerFactory(MediaConfig(), source_factory=lambda _s: ToneSource(AGENT_TONE, amplitude=0.3),
                                              sinks_factory=lambda _s: [ear])
    return UserAgent(UserAgentConfig(
        ws_url=lab.sip_ws_url, aor=f"sip:{extension(i)}@{lab.domain}", password=password(i),
        description_handler_factory=factory, reconnect=Reconnect(enabled=False),
        keep_alive=KeepAlive(mode=KeepAliveMode.NONE), timers=Timers.scaled(0.2)))


async def dominates(ear: ToneDetector, freq: float) -> None:
    await ear.wait_for(freq, timeout=15, include_past=False)
    await wait_until(lambda: frequencies_close(ear.dominant_frequency()[0], freq), 15, f"{freq:g} Hz to dominate")


async def test_login_call_hold_customer_hangup_cdr_recording_busy_and_inbound(tmp_path):
    customers = CustomerTable().with_numbers({
        "0821234567": Behaviour(answer_after=0.3, play=f"tone:{CUSTOMER_TONE:g}", listen=(AGENT_TONE,)),
        "0831234567": Behaviour(play="tone:750"),
    })
    async with hook_server() as hooks, \
            await start_lab(seed=seed_with_phones(2), turn=False, prompt=f"tone:{PROMPT:g}", recordings_dir=tmp_path,
                            customers=customers, telephony_options={"ring_wait": 0.5}) as lab:
        lab.lab.notifier.url = hooks.url
        ear = ToneDetector((PROMPT, CUSTOMER_TONE, 750.0))
        async with agent_phone(lab, 0, ear) as ua, \
                PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                               allow_http=True) as api, \
                PlatformClient(lab.url, lab.api_key, username="phone1", password=password(1),
                               allow_http=True) as api2:
            # an extension nobody registered: the login is refused, naming why
            with pytest.raises(PlatformError, match=f"extension {extension(1)} is not registered") as refused:
                await api2.login(1, extension(1))
            assert refused.value.status == 409

            await api.login(1, extension(0))
            await dominates(ear, PROMPT)

            call = await api.call("0821234567", outbound_cli="27110001111", unique_id="e2e-1")
            await wait_until(lambda: call.call_id in lab.lab.telephony.calls
                             and lab.lab.telephony.calls[call.call_id].winner is not None, 10, "the answer")
            customer = lab.lab.telephony.calls[call.call_id].winner.customer
            await dominates(ear, CUSTOMER_TONE)
            await customer.tones.wait_for(AGENT_TONE, timeout=15)
            recording = await api.start_recording(call.call_id)
            assert recording.recording_url == f"{lab.url}/recordings/call-{call.call_id}.wav"

            await api.hold(call.call_id)
            await wait_until(lambda: not customer.tones.present(), 10, "silence at the customer on hold")
            await api.retrieve(call.call_id)
            await wait_until(lambda: AGENT_TONE in customer.tones.present(), 10, "the agent heard again")

            await customer.hangup()
            await wait_until(lambda: hooks.of("call_end"), 10, "the CDR")
            assert [c.call_id for c in await api.active_calls()] == []
            cdr = hooks.of("call_end")[0]
            assert cdr["call_id"] == call.call_id and cdr["sip_code"] == 200
            assert cdr["talk_time"] > 0 and cdr["hold_time"] > 0 and cdr["ring_time"] > 0
            assert cdr["recording_url"] == recording.recording_url
            async with aiohttp.ClientSession() as http, http.get(cdr["recording_url"]) as resp:
                assert resp.status == 200 and len(await resp.read()) > 1000
            # both sides are in the recording: the agent's tone and the customer's
            samples = pcm16_to_float(decode_file(tmp_path / f"call-{call.call_id}.wav", 8000))
            agent_level, customer_level = tone_levels(samples, (AGENT_TONE, CUSTOMER_TONE), 8000)
            assert agent_level > -40 and customer_level > -40, (agent_level, customer_level)
            await dominates(ear, PROMPT)

            busy = await api.call("0821110486", outbound_cli="27110001111", unique_id="e2e-2")
            await wait_until(lambda: len(hooks.of("call_end")) == 2, 10, "the busy CDR")
            assert hooks.of("call_end")[1]["call_id"] == busy.call_id and hooks.of("call_end")[1]["sip_code"] == 486

            async with aiohttp.ClientSession() as http:
                async with http.post(f"{lab.url}/lab/inbound", json={
                        "user_id": 5000, "phone_number": "0831234567", "dnis": "0800123123"},
                        headers={"Authorization": f"Key={lab.api_key.reveal()}"}) as resp:
                    inbound = await resp.json()
                    assert resp.status == 200, inbound
            assert inbound["call_direction"] == "inbound" and inbound["DNIS"] == "0800123123"
            await dominates(ear, 750.0)
            note = [c for c in hooks.of("call") if c["call_id"] == inbound["call_id"]]
            assert note and note[0]["call_direction"] == "inbound" and note[0]["DNIS"] == "0800123123"
            await api.hangup(inbound["call_id"])

            await api.logout()
            await wait_until(lambda: not ua.sessions, 10, "the BYE of the bridge call")
            for notification in hooks.received:  # every field as the contract documents it
                check_against_openapi(notification)
            await wait_until(lambda: len(hooks.of("user_status")) == 2, 10, "the logout notification")
            assert [s["status"] for s in hooks.of("user_status")] == ["Available", "Logged Out"]


@pytest.mark.parametrize("how", ["stop", "websocket closed"])
async def test_a_phone_that_goes_away_ends_its_calls_and_logs_the_agent_out(how):
    async with hook_server() as hooks, \
            await start_lab(seed=seed_with_phones(1), turn=False, telephony_options={"ring_wait": 0.5}) as lab:
        lab.lab.notifier.url = hooks.url
        ear = ToneDetector((PROMPT, CUSTOMER_TONE))
        ua = agent_phone(lab, 0, ear)
        await ua.start()
        async with PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                                  allow_http=True) as api:
            await api.login(1, extension(0))
            call = await api.call("0821234567", outbound_cli="27110001111", unique_id="gone-1")
            if how == "stop":
                await ua.stop()  # BYE for the bridge call, then REGISTER Expires 0
            else:
                await ua.transport.close()  # no BYE: the edge unbinds on the closed WebSocket
            await wait_until(lambda: hooks.of("call_end") and len(hooks.of("user_status")) == 2, 10,
                             "the call ended and the agent logged out")
            assert hooks.of("call_end")[0]["call_id"] == call.call_id
            assert hooks.of("user_status")[-1]["status"] == "Logged Out"
            assert lab.lab.telephony.bridges == {} and lab.lab.telephony.calls == {}
            with pytest.raises(PlatformError, match="not logged in"):
                await api.logout()
        await ua.stop()


def lean_phone(lab: Any, i: int) -> UserAgent:
    """A phone on the lean media path: a pre-encoded tone out, RTP counted (not decoded) in."""
    from softphone.media.lean import PreEncodedAudioTrack, Tone

    factory = WebRtcDescriptionHandlerFactory(MediaConfig(decode=False),
                                              source_factory=lambda _s: PreEncodedAudioTrack(Tone(AGENT_TONE)))
    return UserAgent(UserAgentConfig(
        ws_url=lab.sip_ws_url, aor=f"sip:{extension(i)}@{lab.domain}", password=password(i),
        description_handler_factory=factory, reconnect=Reconnect(enabled=False),
        keep_alive=KeepAlive(mode=KeepAliveMode.NONE)))


def received(handler: Any) -> int:
    return handler.receiver.report().received if handler is not None and not handler.closed else 0


async def test_fifty_agents_registered_and_bridged_at_once_with_audio_both_ways():
    n = 50
    async with await start_lab(seed=seed_with_phones(n), turn=False,
                               telephony_options={"decode": False, "answer_timeout": 60.0}) as lab:
        phones = [lean_phone(lab, i) for i in range(n)]
        clients = [PlatformClient(lab.url, lab.api_key, username=f"phone{i}", password=password(i),
                                  allow_http=True, timeout=60) for i in range(n)]
        try:
            await asyncio.gather(*(ua.start() for ua in phones))
            assert sorted(lab.endpoint.registered_extensions()) == sorted(extension(i) for i in range(n))
            await asyncio.gather(*(api.login(1, extension(i)) for i, api in enumerate(clients)))
            tel = lab.lab.telephony
            assert len(tel.bridges) == n
            start_phone = [received(next(iter(ua.sessions))._handler) for ua in phones]
            start_lab_rx = {u: received(b.handler) for u, b in tel.bridges.items()}
            # every bridge call carries audio both ways: a second's worth more on each side
            await wait_until(lambda: all(received(next(iter(ua.sessions))._handler) >= start_phone[i] + 50
                                         for i, ua in enumerate(phones)), 30, "audio at every phone")
            await wait_until(lambda: all(received(b.handler) >= start_lab_rx[u] + 50
                                         for u, b in tel.bridges.items()), 30, "audio from every phone")
        finally:
            await asyncio.gather(*(api.logout() for api in clients), return_exceptions=True)
            await asyncio.gather(*(api.close() for api in clients), return_exceptions=True)
            await asyncio.gather(*(ua.stop() for ua in phones), return_exceptions=True)


async def test_shotgun_conference_connect_and_dispose_through_the_api():
    customers = CustomerTable().with_numbers({
        "0821000001": Behaviour(answer_after=30), "0821000002": Behaviour(answer_after=0.2, play="tone:750"),
        "0821000003": Behaviour(answer_after=30), "0821000004": Behaviour(answer_after=0, play="tone:850"),
    })
    async with hook_server() as hooks, \
            await start_lab(seed=seed_with_phones(1), turn=False, customers=customers,
                            telephony_options={"ring_wait": 0.5}) as lab:
        lab.lab.notifier.url = hooks.url
        ear = ToneDetector((PROMPT, 750.0, 850.0))
        async with agent_phone(lab, 0, ear), \
                PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                               allow_http=True) as api:
            await api.login(1, extension(0))
            first = await api.shotgun(["0821000001", "0821000002", "0821000003"], outbound_cli="2711",
                                      unique_id="shot-1")
            gateway = lab.lab.telephony.gateway
            await wait_until(lambda: len(gateway.messages("CANCEL", source="trunk")) == 2, 10, "two CANCELs")
            assert {m.uri.user for m in gateway.messages("CANCEL")} == {"0821000001", "0821000003"}
            await wait_until(lambda: lab.lab.telephony.calls[first.call_id].winner is not None, 10, "the winner")
            await dominates(ear, 750.0)

            async def listed() -> list[tuple]:
                while True:  # the winner's number reaches the record with the answer report
                    live = [(c.call_id, c.phone_number, c.call_state) for c in await api.active_calls()]
                    if live != [(first.call_id, "0821000001", "answered")]:
                        return live
                    await asyncio.sleep(0.05)

            assert await asyncio.wait_for(listed(), 10) == [(first.call_id, "0821000002", "answered")]

            second = await api.call("0821000004", outbound_cli="2711", unique_id="conf-1")  # a conference
            await ear.wait_for(850.0, timeout=15, include_past=False)
            await ear.wait_for(750.0, timeout=15, include_past=False)
            assert len(await api.active_calls()) == 2

            await api.connect_calls(first.call_id, second.call_id)
            assert await api.active_calls() == []
            await dominates(ear, PROMPT)
            a = lab.lab.telephony.calls[first.call_id].winner.customer
            b = lab.lab.telephony.calls[second.call_id].winner.customer
            assert not a.ended.is_set() and not b.ended.is_set()  # the customers stay connected
            await api.dispose(first.call_id, "SALE")
            await wait_until(lambda: len(hooks.of("call_end")) == 2, 10, "both CDRs")
            assert {c["call_type"] for c in hooks.of("call_end")} == {"connected"}
            await b.hangup()
            await wait_until(lambda: a.ended.is_set(), 10, "the other customer hung up by the lab")
            await api.logout()


async def test_a_phone_that_refuses_the_bridge_call_fails_the_login_naming_why():
    from softphone.sip.invitation import AnswerPolicy

    async with await start_lab(seed=seed_with_phones(1), turn=False) as lab:
        ua = UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{extension(0)}@{lab.domain}",
                                       password=password(0), answer_policy=AnswerPolicy.reject(486),
                                       reconnect=Reconnect(enabled=False), keep_alive=KeepAlive(mode=KeepAliveMode.NONE)))
        async with ua, PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                                      allow_http=True) as api:
            with pytest.raises(PlatformError, match=f"extension {extension(0)} is busy") as refused:
                await api.login(1, extension(0))
            assert refused.value.status == 409
            assert lab.lab.telephony.bridges == {}


async def test_recordings_are_served_by_name_only(tmp_path):
    (tmp_path / "call-7.wav").write_bytes(b"RIFF....WAVE")
    (tmp_path / ".hidden").write_bytes(b"x")
    async with await start_lab(turn=False, recordings_dir=tmp_path) as lab, aiohttp.ClientSession() as http:
        async with http.get(f"{lab.url}/recordings/call-7.wav") as resp:
            assert resp.status == 200 and await resp.read() == b"RIFF....WAVE"
        for name in ("missing.wav", ".hidden", "..%2Fcall-7.wav", "a%2Fb.wav"):
            async with http.get(f"{lab.url}/recordings/{name}") as resp:
                assert resp.status == 404, name


async def test_relay_only_through_the_labs_coturn_on_both_sides():
    from softphone.media.config import IceConfig

    customers = CustomerTable().with_numbers({"0821234567": Behaviour(answer_after=0, listen=(AGENT_TONE,))})
    async with await start_lab(seed=seed_with_phones(1), turn=True, relay_only=True, prompt=f"tone:{PROMPT:g}",
                               customers=customers) as lab:
        assert lab.turn is not None, "coturn is installed on this machine: the lab must start it"
        ear = ToneDetector((PROMPT, CUSTOMER_TONE))
        ice = IceConfig(turn_urls=(lab.turn.url,), username="phone0", credential=password(0), relay_only=True)
        factory = WebRtcDescriptionHandlerFactory(MediaConfig(ice=ice),
                                                  source_factory=lambda _s: ToneSource(AGENT_TONE, amplitude=0.3),
                                                  sinks_factory=lambda _s: [ear])
        ua = UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{extension(0)}@{lab.domain}",
                                       password=password(0), description_handler_factory=factory,
                                       reconnect=Reconnect(enabled=False),
                                       keep_alive=KeepAlive(mode=KeepAliveMode.NONE)))
        async with ua, PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                                      allow_http=True) as api:
            await api.login(1, extension(0))
            invite = next(iter(ua.sessions)).request
            candidates = [line for line in invite.body.splitlines() if line.startswith("a=candidate")]
            assert candidates and all(" typ relay" in c for c in candidates)  # the lab offers relay only
            await dominates(ear, PROMPT)
            call = await api.call("0821234567", outbound_cli="2711", unique_id="relay-1")
            await dominates(ear, CUSTOMER_TONE)
            customer = lab.lab.telephony.calls[call.call_id].winner.customer
            await customer.tones.wait_for(AGENT_TONE, timeout=15)
            await api.logout()
