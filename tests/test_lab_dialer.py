"""SipTelephony with real aiortc media on both sides: bridge call, customers, hold, shotgun, connect.

The phones are softphone.sip user agents on the in-memory SIP hub (a PhoneDirectory
over it stands in for the lab's SIP edge); the media between them and the lab is
real WebRTC (ICE on loopback, DTLS-SRTP, Opus).  Customers sit behind the lab's
PSTN trunk (real SIP, in-process audio).
"""

from __future__ import annotations

import contextlib

import pytest
from lab_dialer_support import HubDirectory, RecordingSink, call_info, loopback_media, make_agent  # noqa: F401
from media_support import wait_until

from softphone.errors import ConfigurationError, TelephonyError
from softphone.lab.customers import Behaviour, CustomerTable, Outcome
from softphone.lab.dialer import SipTelephony, TelephonyOptions
from softphone.lab.telephony import CallState, Telephony
from softphone.media.sinks import ToneDetector
from softphone.media.sources import decode_file
from softphone.media.tones import dominant_frequency, frequencies_close, pcm16_to_float
from softphone.sip.testing import LoopbackHub

pytestmark = pytest.mark.usefixtures("loopback_media")

AGENT_TONE = 1000.0
PROMPT = 440.0
CUSTOMER_TONE = 600.0
LISTEN = (PROMPT, CUSTOMER_TONE, 750.0, 850.0, AGENT_TONE)


def table(**numbers: Behaviour) -> CustomerTable:
    return CustomerTable().with_numbers({k.removeprefix("n"): v for k, v in numbers.items()})


@contextlib.asynccontextmanager
async def lab(tmp_path, customers: CustomerTable | None = None, **options):
    hub = LoopbackHub()
    directory = HubDirectory(hub)
    await directory.lab_ua.start()
    agent = make_agent(hub, "9001", AGENT_TONE, LISTEN)
    await agent.ua.start()
    opts = TelephonyOptions(prompt=f"tone:{PROMPT:g}", recordings_dir=tmp_path,
                            customers=customers or CustomerTable(), ring_wait=0.5, **options)
    tel = SipTelephony(directory, opts)
    sink = RecordingSink()
    tel.attach(sink)
    try:
        yield tel, agent, sink, hub
    finally:
        await tel.close()
        await agent.ua.stop()
        await directory.lab_ua.stop()


async def hears(detector: ToneDetector, freq: float, timeout: float = 10.0) -> None:
    """``freq`` is detected and becomes the dominant frequency (within 2%) of what ``detector`` gets."""
    await detector.wait_for(freq, timeout=timeout, include_past=False)
    await wait_until(lambda: frequencies_close(detector.dominant_frequency()[0], freq), timeout,
                     f"{freq:g} Hz to dominate (last {detector.dominant_frequency()[0]:.1f} Hz)")


async def answered(tel: SipTelephony, sink: RecordingSink, call_id: int, state: CallState) -> None:
    if state is not CallState.ANSWERED:
        await wait_until(lambda: CallState.ANSWERED in sink.states(call_id), 10, "the customer to answer")


def test_sip_telephony_satisfies_the_protocol():
    assert isinstance(SipTelephony(HubDirectory(LoopbackHub())), Telephony)


async def test_login_invites_the_extension_which_hears_the_prompt_and_is_recorded(tmp_path):
    async with lab(tmp_path) as (tel, agent, _sink, hub):
        await tel.on_login(1001, "9001", 1)
        invites = [m for m in hub.messages("INVITE") if "9001" in str(m.uri)]
        assert invites and "a=fingerprint" in invites[0].body and "a=rtcp-mux" in invites[0].body
        assert "opus/48000" in invites[0].body and "PCMU/8000" in invites[0].body
        assert "a=candidate" in invites[0].body and "telephone-event" in invites[0].body
        await hears(agent.ear, PROMPT)
        bridge = tel.bridges[1001]
        await wait_until(lambda: bridge.frames_heard > 100, 10, "two seconds of the agent's audio")
        path = tel.bridge_recordings[1001]
        await tel.on_logout(1001)
        assert hub.messages("BYE", source="lab")
        await wait_until(lambda: agent.session is None, 5, "the agent's session to end")
        rate = 8000
        samples = pcm16_to_float(decode_file(path, rate))
        assert len(samples) > rate
        freq, _ = dominant_frequency(samples[-rate:], rate)
        assert frequencies_close(freq, AGENT_TONE), f"recording's dominant frequency {freq:.1f} Hz"


async def test_login_of_an_unregistered_or_refusing_extension_fails_naming_why(tmp_path):
    async with lab(tmp_path) as (tel, _agent, _sink, hub):
        with pytest.raises(TelephonyError, match="extension 9002 is not registered"):
            await tel.on_login(1002, "9002", 1)
        hub.interceptors.append(lambda msg, src: getattr(msg, "method", None) == "INVITE" and src.name == "lab"
                                and (hub.respond(src, msg, 486, "Busy Here") or True))
        with pytest.raises(TelephonyError, match="extension 9001 is busy"):
            await tel.on_login(1001, "9001", 1)
        assert 1001 not in tel.bridges
        assert not list(tmp_path.iterdir())  # no recording of a bridge call that never was


async def test_customer_and_agent_hear_each_other_hold_silences_and_hangup_is_reported(tmp_path):
    customers = table(n0821234567=Behaviour(answer_after=0.3, play=f"tone:{CUSTOMER_TONE:g}",
                                            listen=(AGENT_TONE,)))
    async with lab(tmp_path, customers) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await hears(agent.ear, PROMPT)
        state = await tel.place_call(call_info(1, "0821234567"))
        assert state in (CallState.RINGING, CallState.ANSWERED)
        await answered(tel, sink, 1, state)
        customer = tel.calls[1].winner.customer
        await hears(agent.ear, CUSTOMER_TONE)
        await customer.tones.wait_for(AGENT_TONE, timeout=10)
        assert frequencies_close(customer.tones.dominant_frequency()[0], AGENT_TONE)

        await tel.hold(call_info(1, "0821234567"))
        reinvites = tel.gateway.messages("INVITE", source="trunk")
        assert len(reinvites) == 2 and "a=sendonly" in reinvites[-1].body
        await wait_until(lambda: not customer.tones.present(), 10, "the agent's tone to stop reaching the customer")
        await tel.retrieve(call_info(1, "0821234567"))
        assert "a=sendrecv" in tel.gateway.messages("INVITE", source="trunk")[-1].body
        await wait_until(lambda: AGENT_TONE in customer.tones.present(), 10,
                         "the agent's tone to reach the customer again")

        await customer.hangup()
        await wait_until(lambda: CallState.ENDED in sink.states(1), 10, "the hang-up to be reported")
        assert sink.events[-1][:3] == (1, CallState.ENDED, 200)
        assert tel.gateway.messages("BYE", source="pstn")
        await hears(agent.ear, PROMPT)  # back to the prompt


async def test_busy_reject_and_cancel_codes(tmp_path):
    customers = table(n0820000480=Behaviour(outcome=Outcome.NO_ANSWER))
    async with lab(tmp_path, customers) as (tel, _agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await tel.place_call(call_info(1, "0821110486"))
        await tel.place_call(call_info(2, "0821110603"))
        await wait_until(lambda: CallState.ENDED in sink.states(1) and CallState.ENDED in sink.states(2), 10,
                         "busy and reject to be reported")
        codes = {e[0]: e[2] for e in sink.events if e[1] is CallState.ENDED}
        assert codes == {1: 486, 2: 603}
        assert await tel.place_call(call_info(3, "0820000480")) is CallState.RINGING
        assert await tel.hangup(call_info(3, "0820000480")) == 487
        assert tel.gateway.messages("CANCEL", source="trunk")
        assert tel.gateway.messages("487", source="pstn")
        assert 3 not in [e[0] for e in sink.events]


async def test_shotgun_first_answer_wins_and_the_others_are_cancelled(tmp_path):
    customers = table(n0821000001=Behaviour(answer_after=30), n0821000002=Behaviour(answer_after=0.2),
                      n0821000003=Behaviour(answer_after=30))
    async with lab(tmp_path, customers) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        info = call_info(1, "0821000001", alternatives=("0821000002", "0821000003"))
        state = await tel.place_call(info)
        await answered(tel, sink, 1, state)
        assert tel.calls[1].winner.number == "0821000002"
        assert (1, CallState.ANSWERED, None, "0821000002") in sink.events
        await wait_until(lambda: len(tel.gateway.messages("CANCEL", source="trunk")) == 2, 10, "two CANCELs")
        cancelled = {m.uri.user for m in tel.gateway.messages("CANCEL", source="trunk")}
        assert cancelled == {"0821000001", "0821000003"}
        assert len(tel.gateway.messages("487", source="pstn")) == 2
        await hears(agent.ear, CUSTOMER_TONE)


async def test_conference_and_connect(tmp_path):
    customers = table(n0821000001=Behaviour(answer_after=0, play="tone:750", listen=(AGENT_TONE, 850.0)),
                      n0821000002=Behaviour(answer_after=0, play="tone:850", listen=(AGENT_TONE, 750.0)))
    async with lab(tmp_path, customers) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await answered(tel, sink, 1, await tel.place_call(call_info(1, "0821000001")))
        await hears(agent.ear, 750.0)
        await answered(tel, sink, 2, await tel.place_call(call_info(2, "0821000002")))
        # conference: the agent hears both customers, both hear the agent
        await agent.ear.wait_for(850.0, timeout=10, include_past=False)
        await agent.ear.wait_for(750.0, timeout=10, include_past=False)
        first, second = tel.calls[1].winner.customer, tel.calls[2].winner.customer
        await first.tones.wait_for(AGENT_TONE, timeout=10)
        await second.tones.wait_for(AGENT_TONE, timeout=10)
        await first.tones.wait_for(850.0, timeout=10)  # the customers hear each other too
        await second.tones.wait_for(750.0, timeout=10)
        assert not tel.gateway.messages("BYE")

        await tel.connect(call_info(1, "0821000001"), call_info(2, "0821000002"))
        await wait_until(lambda: AGENT_TONE not in first.tones.present() + second.tones.present(), 10,
                         "the agent gone from both customers")
        assert await tel.hangup(call_info(1, "0821000001")) == 200  # the agent leaves, the customers stay
        assert await tel.hangup(call_info(2, "0821000002")) == 200
        await first.tones.wait_for(850.0, timeout=10, include_past=False)
        await second.tones.wait_for(750.0, timeout=10, include_past=False)
        assert not tel.gateway.messages("BYE")
        await hears(agent.ear, PROMPT)
        await first.hangup()
        await wait_until(lambda: second.ended.is_set(), 10, "the connected customer to be hung up too")
        assert tel.gateway.messages("BYE", source="trunk")


async def test_inbound_call_is_bridged_and_customer_dtmf_reaches_the_agent(tmp_path):
    customers = table(n0831234567=Behaviour(play="tone:750", dtmf="12#", dtmf_after=0.5, listen=(AGENT_TONE,)))
    async with lab(tmp_path, customers) as (tel, agent, _sink, _hub):
        await tel.on_login(1001, "9001", 1)
        info = call_info(5, "0831234567", direction="inbound", cli="0800123123")
        assert await tel.place_inbound(info) is CallState.ANSWERED
        invite = tel.gateway.messages("INVITE", source="pstn")[0]
        assert invite.uri.user == "0800123123"
        await hears(agent.ear, 750.0)
        customer = tel.calls[5].winner.customer
        await customer.tones.wait_for(AGENT_TONE, timeout=10)
        await wait_until(lambda: "".join(agent.dtmf) == "12#", 10, "the customer's DTMF at the agent")
        assert len(tel.gateway.messages("INFO", source="pstn")) == 3
        assert await agent.session.send_dtmf("5#", method="rtp") == "rtp"  # the agent answers an IVR
        await wait_until(lambda: "".join(customer.digits_received) == "5#", 10, "the agent's DTMF at the customer")
        assert len(tel.gateway.messages("INFO", source="trunk")) == 2
        assert await tel.hangup(info) == 200
        assert tel.gateway.messages("BYE", source="trunk")


async def test_customer_hangs_up_after_n_seconds_and_echo(tmp_path):
    customers = table(n0821000009=Behaviour(answer_after=0, play="echo", hangup_after=3.0))
    async with lab(tmp_path, customers) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await answered(tel, sink, 1, await tel.place_call(call_info(1, "0821000009")))
        await hears(agent.ear, AGENT_TONE)  # its own voice, echoed by the customer
        await wait_until(lambda: CallState.ENDED in sink.states(1), 15, "the customer's hang-up")
        assert sink.events[-1][2] == 200


async def test_agent_phone_hanging_up_ends_the_bridge(tmp_path):
    async with lab(tmp_path) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await agent.session.bye()
        await wait_until(lambda: sink.bridges_ended, 10, "the bridge end to be reported")
        assert sink.bridges_ended[0][0] == 1001 and 1001 not in tel.bridges


async def test_hold_music_reaches_the_held_customer(tmp_path):
    customers = table(n0821234567=Behaviour(answer_after=0, listen=(AGENT_TONE, 500.0)))
    async with lab(tmp_path, customers, hold_music="tone:500") as (tel, _agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await answered(tel, sink, 1, await tel.place_call(call_info(1, "0821234567")))
        customer = tel.calls[1].winner.customer
        await customer.tones.wait_for(AGENT_TONE, timeout=10)
        await tel.hold(call_info(1, "0821234567"))
        await customer.tones.wait_for(500.0, timeout=10)
        await wait_until(lambda: customer.tones.present() == [500.0], 10, "only the hold music")
        await tel.retrieve(call_info(1, "0821234567"))
        await wait_until(lambda: customer.tones.present() == [AGENT_TONE], 10, "the agent instead of the music")


@pytest.mark.parametrize(("options", "message"), [
    ({"prompt": "echo"}, "prompt: must be"), ({"prompt": "tone:5"}, "prompt: tone frequency"),
    ({"hold_music": "nope.wav"}, "hold_music: audio file 'nope.wav' does not exist"),
    ({"ring_wait": 0}, "ring_wait: must be > 0"),
])
def test_bad_options_name_the_field(tmp_path, options, message):
    with pytest.raises(ConfigurationError, match=message):
        TelephonyOptions(**options)
    with pytest.raises(ConfigurationError, match=r"recordings_dir: .* is not a directory"):
        TelephonyOptions(recordings_dir=tmp_path / "missing")


async def test_a_customer_who_hangs_up_at_once_ends_the_call(tmp_path):
    customers = table(n0821000007=Behaviour(answer_after=0, hangup_after=0))
    async with lab(tmp_path, customers) as (tel, agent, sink, _hub):
        await tel.on_login(1001, "9001", 1)
        await tel.place_call(call_info(1, "0821000007"))
        await wait_until(lambda: CallState.ENDED in sink.states(1), 10, "the hang-up to be reported")
        assert sink.events[-1][:3] == (1, CallState.ENDED, 200) and tel.calls == {}
        assert tel.bridges[1001].voices == {}
        await hears(agent.ear, PROMPT)


def test_phase_moves_table():
    from softphone.lab.dialer import PHASE_MOVES, LabCall, Phase

    assert set(PHASE_MOVES) == set(Phase) and not PHASE_MOVES[Phase.ENDED]
    call = LabCall(call_info(1, "0821234567"))
    assert call.move(Phase.ANSWERED) and not call.move(Phase.DIALING) and call.phase is Phase.ANSWERED
    assert call.move(Phase.CONNECTED) and not call.ending
    assert call.move(Phase.ENDING) and call.ending and call.move(Phase.ENDED)
    assert not call.move(Phase.ANSWERED) and call.phase is Phase.ENDED


def test_decoding_is_on_only_when_something_needs_the_agents_audio(tmp_path):
    assert TelephonyOptions().decode is False
    assert TelephonyOptions(recordings_dir=tmp_path).decode is True
    assert TelephonyOptions(customers=table(n100=Behaviour(listen=True))).decode is True
    assert TelephonyOptions(customers=table(n100=Behaviour(play="echo"))).decode is True
    assert TelephonyOptions(recordings_dir=tmp_path, decode=False).decode is False


async def test_a_bridge_call_nobody_answers_fails_the_login(tmp_path):
    from softphone.sip.invitation import AnswerPolicy

    async with lab(tmp_path, answer_timeout=0.5) as (tel, agent, _sink, hub):
        agent.ua.config.answer_policy = AnswerPolicy.manual()  # it rings and rings
        with pytest.raises(TelephonyError, match=r"extension 9001 did not answer within 0\.5 s"):
            await tel.on_login(1001, "9001", 1)
        assert hub.messages("CANCEL", source="lab") and tel.bridges == {}
