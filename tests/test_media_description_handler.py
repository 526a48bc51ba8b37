"""WebRtcDescriptionHandler as the SIP layer drives it: offer/answer, hold, rollback, events, close."""

from __future__ import annotations

import asyncio
import gc
import weakref

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError
from media_support import (
    FAST_PATH_ON_AND_OFF,
    SineTrack,
    ToneMeter,
    negotiate,
    packets_arrive,
    packets_during,
    relay_config,
    settle,
    wait_connected,
    wait_until,
)

from softphone.errors import DescriptionError, MediaError, SipError
from softphone.media import sdp as sdpmod
from softphone.media.description_handler import (
    NegotiationState,
    WebRtcDescriptionHandler,
    WebRtcDescriptionHandlerFactory,
)
from softphone.media.sdp import Direction
from softphone.sip.description_handler import Body, DescriptionOptions, SessionDescriptionHandler
from softphone.sip.session import SessionState
from softphone.sip.testing import LoopbackHub, hub_user_agent
from softphone.sip.timers import Timers
from softphone.sip.user_agent import UserAgent, UserAgentConfig

pytestmark = pytest.mark.peer

HOLD = DescriptionOptions(hold=True)


def _close_enough(freq: float, expected: float) -> bool:
    return abs(freq - expected) / expected < 0.02


async def _pair(coturn, codecs=("PCMU",), freq_a=440.0, freq_b=1000.0):
    meter_a, meter_b = ToneMeter(), ToneMeter()
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=codecs), source=SineTrack(freq_a), sinks=[meter_a])
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=codecs), source=SineTrack(freq_b), sinks=[meter_b])
    return a, b, meter_a, meter_b


async def test_offer_answer_states_and_events(coturn):
    a, b, _, meter_b = await _pair(coturn)
    seen: dict[str, list] = {"track": [], "ice": [], "conn": []}
    b.on("track", seen["track"].append)
    b.on("ice_state", seen["ice"].append)
    b.on("connection_state", seen["conn"].append)
    try:
        assert isinstance(a, SessionDescriptionHandler)
        assert a.has_description("application/sdp") and a.has_description("Application/SDP; charset=x")
        assert not a.has_description("text/plain")
        assert a.state is NegotiationState.NEW
        offer = await a.get_description()
        assert offer.content_type == "application/sdp"
        assert a.state is NegotiationState.HAVE_LOCAL_OFFER
        with pytest.raises(MediaError, match="pending"):
            await a.get_description()
        assert sdpmod.setup_attribute(offer.content) == "actpass"
        assert "a=rtcp-mux" in offer.content
        await b.set_description(offer)
        assert b.state is NegotiationState.HAVE_REMOTE_OFFER
        answer = await b.get_description()
        assert b.state is NegotiationState.STABLE
        assert sdpmod.setup_attribute(answer.content) == "active"
        await a.set_description(answer)
        assert a.state is NegotiationState.STABLE
        await wait_connected(a, b)
        await meter_b.wait_frames(25)
        assert _close_enough(meter_b.dominant_frequency(), 440.0)
        assert len(seen["track"]) == 1 and seen["track"][0].kind == "audio"
        assert "completed" in seen["ice"]
        assert seen["conn"][-1] == "connected"
        assert a.local_direction is Direction.SENDRECV and b.local_direction is Direction.SENDRECV
    finally:
        await a.close()
        await b.close()


@FAST_PATH_ON_AND_OFF
async def test_hold_and_unhold_change_directions_and_media_flow(fast_path, coturn):
    a, b, meter_a, _ = await _pair(coturn)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await meter_a.wait_frames(10)
        offer, answer = await negotiate(a, b, offer_options=HOLD)  # a holds the call
        assert sdpmod.audio_direction(offer) is Direction.SENDONLY
        assert sdpmod.audio_direction(answer) is Direction.RECVONLY
        assert a.local_direction is Direction.SENDONLY and b.local_direction is Direction.RECVONLY
        await settle(a)  # packets already in flight
        assert await packets_during(a, 0.4) == 0  # b stopped sending to a
        await packets_arrive(b, more_than=5)  # a still sends (music on hold)
        offer, answer = await negotiate(a, b)  # unhold
        assert sdpmod.audio_direction(offer) is Direction.SENDRECV
        assert sdpmod.audio_direction(answer) is Direction.SENDRECV
        await packets_arrive(a, more_than=5)
        meter_a.reset()
        await meter_a.wait_frames(25)
        assert _close_enough(meter_a.dominant_frequency(), 1000.0)
    finally:
        await a.close()
        await b.close()


@FAST_PATH_ON_AND_OFF
async def test_remote_inactive_offer_is_answered_inactive_and_stops_both_ways(fast_path, coturn):
    a, b, _, _ = await _pair(coturn)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        offer = await b.get_description()
        inactive = sdpmod.set_audio_direction(offer.content, Direction.INACTIVE)
        await a.set_description(Body(offer.content_type, inactive))
        answer = await a.get_description()
        assert sdpmod.audio_direction(answer.content) is Direction.INACTIVE
        await b.set_description(answer)
        assert a.local_direction is Direction.INACTIVE
        await settle(a)
        await settle(b)
        assert await packets_during(a, 0.4) == 0
        assert await packets_during(b, 0.4) == 0
        await negotiate(b, a)  # back to sendrecv
        assert a.local_direction is Direction.SENDRECV
        await packets_arrive(a, more_than=5)
    finally:
        await a.close()
        await b.close()


async def test_media_starts_on_unhold_when_the_call_began_on_hold(coturn):
    a, b, meter_a, _ = await _pair(coturn)
    try:
        offer = await b.get_description()
        held = sdpmod.set_audio_direction(offer.content, Direction.SENDONLY)  # b holds from the start
        await a.set_description(Body(offer.content_type, held))
        answer = await a.get_description()
        assert sdpmod.audio_direction(answer.content) is Direction.RECVONLY
        await b.set_description(answer)
        await wait_connected(a, b)
        await settle(b)
        assert await packets_during(b, 0.4) == 0  # a's sender never started
        await negotiate(b, a)  # b retrieves the call
        assert a.local_direction is Direction.SENDRECV
        await packets_arrive(b, more_than=5)
        await meter_a.wait_frames(25)
        assert _close_enough(meter_a.dominant_frequency(), 1000.0)
    finally:
        await a.close()
        await b.close()


async def test_our_hold_offer_is_inactive_when_the_far_end_does_not_send(coturn):
    a, b, _, _ = await _pair(coturn)
    try:
        offer = await b.get_description()
        recvonly = sdpmod.set_audio_direction(offer.content, Direction.RECVONLY)  # b will not send
        await a.set_description(Body(offer.content_type, recvonly))
        answer = await a.get_description()
        assert sdpmod.audio_direction(answer.content) is Direction.SENDONLY
        await b.set_description(answer)
        hold_offer = await a.get_description(HOLD)
        assert sdpmod.audio_direction(hold_offer.content) is Direction.INACTIVE
    finally:
        await a.close()
        await b.close()


async def test_holding_while_answering_makes_the_answer_sendonly(coturn):
    a, b, _, _ = await _pair(coturn)
    try:
        _, answer = await negotiate(a, b, answer_options=HOLD)
        assert sdpmod.audio_direction(answer) is Direction.SENDONLY
        assert a.local_direction is Direction.RECVONLY
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize("offered, answered", [("actpass", "active"), ("passive", "active"),
                                               ("active", "passive")])
async def test_dtls_setup_of_answers(coturn, offered, answered):
    a, b, _, _ = await _pair(coturn)
    try:
        offer = await a.get_description()
        await b.set_description(Body(offer.content_type, sdpmod.set_setup_attribute(offer.content, offered)))
        answer = await b.get_description()
        assert sdpmod.setup_attribute(answer.content) == answered
    finally:
        await a.close()
        await b.close()


CHROMIUM_AUDIO = [
    "a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2", "a=fmtp:63 111/111", "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000", "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
]


def _chromium_like(offer: str) -> str:
    """Our own offer reshaped into what Chromium 156 sends (peers.md)."""
    sd = sdpmod.SessionDescription.parse(offer)
    audio = sd.audio()
    audio.set_formats("111 63 9 0 8 13 110 126".split())
    kept = [ln for ln in audio.lines[1:] if not ln.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"))]
    audio.lines[1:] = [*kept, *CHROMIUM_AUDIO, "a=rtcp-rsize", "a=ice-options:trickle"]
    return str(sd)


async def test_answer_to_a_chromium_offer(coturn):
    a, b, _, _ = await _pair(coturn, codecs=("opus", "PCMU", "PCMA", "G722"))
    try:
        offer = await a.get_description()
        await b.set_description(Body("application/sdp", _chromium_like(offer.content)))
        answer = (await b.get_description()).content
        codecs = sdpmod.audio_codecs(answer)
        assert codecs[0].name == "opus" and codecs[0].payload_type == 111
        assert [c.name for c in codecs if c.name != "telephone-event"] == ["opus", "PCMU", "PCMA", "G722"]
        assert sdpmod.telephone_events(answer) == {110: 48000}
        assert sdpmod.setup_attribute(answer) == "active"
        assert "a=rtcp-mux" in answer
        assert "red/" not in answer and "CN/" not in answer
        assert b.dtmf_payload_type == 110
    finally:
        await a.close()
        await b.close()


async def test_codec_preference_orders_the_offer(coturn):
    handler = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMA", "opus")))
    try:
        offer = (await handler.get_description()).content
        names = [c.name for c in sdpmod.audio_codecs(offer)]
        assert names == ["PCMA", "opus", "telephone-event", "telephone-event"]
        assert sdpmod.telephone_events(offer) == {110: 48000, 126: 8000}
    finally:
        await handler.close()


async def test_the_negotiated_codec_is_kept_for_the_whole_call(coturn):
    codecs = ("opus", "PCMU", "PCMA")
    a, b, meter_a, _ = await _pair(coturn, codecs=codecs)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        reoffer, reanswer = await negotiate(a, b, offer_options=HOLD)
        assert [c.name for c in sdpmod.audio_codecs(reoffer) if c.name != "telephone-event"] == ["opus"]
        assert [c.name for c in sdpmod.audio_codecs(reanswer) if c.name != "telephone-event"] == ["opus"]
        # a re-offer without the codec in use cannot be honoured by aiortc's sender: 488
        offer = await b.get_description()
        sd = sdpmod.SessionDescription.parse(offer.content)
        audio = sd.audio()
        audio.set_formats(["0"] + [f for f in audio.formats if f != "96"])
        audio.lines[:] = [ln if ln != "a=rtpmap:96 opus/48000/2" else "a=rtpmap:0 PCMU/8000"
                          for ln in audio.lines]
        pcmu_only = str(sd)
        assert sdpmod.audio_codecs(pcmu_only)[0].name == "PCMU"
        with pytest.raises(DescriptionError, match="remote offer"):
            await a.set_description(Body("application/sdp", pcmu_only))
        assert a.state is NegotiationState.STABLE
        await b.rollback_description()
        await negotiate(a, b)  # the call goes on: unhold with opus
        assert a.local_direction is Direction.SENDRECV
        meter_a.reset()
        await meter_a.wait_frames(25)
        assert _close_enough(meter_a.dominant_frequency(), 1000.0)
        assert (await a.stats()).codec == "opus"
    finally:
        await a.close()
        await b.close()


async def test_rollback_keeps_the_call_as_it_was(coturn):
    a, b, _, _ = await _pair(coturn)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await a.get_description(HOLD)  # the far end rejects this re-INVITE (e.g. 491)
        assert a.state is NegotiationState.HAVE_LOCAL_OFFER
        await a.rollback_description()
        assert a.state is NegotiationState.STABLE and a.hold is False
        assert a.local_direction is Direction.SENDRECV
        await packets_arrive(a, more_than=5)
        offer, _ = await negotiate(a, b, offer_options=HOLD)  # a later re-INVITE works
        assert sdpmod.audio_direction(offer) is Direction.SENDONLY
        assert a.local_direction is Direction.SENDONLY
    finally:
        await a.close()
        await b.close()


async def test_rollback_of_a_first_offer_returns_to_new(coturn):
    a = WebRtcDescriptionHandler(relay_config(coturn))
    try:
        await a.get_description()
        await a.rollback_description()
        assert a.state is NegotiationState.NEW
        await a.rollback_description()  # nothing pending: no-op
    finally:
        await a.close()


async def test_replace_source_switches_what_the_far_end_hears(coturn):
    a, b, _, meter_b = await _pair(coturn, freq_a=500.0)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await meter_b.wait_frames(25)
        assert _close_enough(meter_b.dominant_frequency(), 500.0)
        a.replace_source(SineTrack(1500.0))
        await meter_b.wait_frames(10)  # frames of the old source still in flight
        meter_b.reset()
        await meter_b.wait_frames(50)
        assert _close_enough(meter_b.dominant_frequency(), 1500.0)
        with pytest.raises(MediaError, match="kind"):
            a.replace_source(_VideoTrack(1.0))
    finally:
        await a.close()
        await b.close()


class _VideoTrack(SineTrack):
    kind = "video"


class _ShortTrack(SineTrack):
    """Ends after a few frames, as a finite source without 'send silence' would."""

    async def recv(self):
        if self._samples >= 5 * 960:
            self.stop()
            raise MediaStreamError
        return await super().recv()


async def test_a_source_that_ends_stops_the_sender_and_says_so(coturn):
    a, b, _, _ = await _pair(coturn)
    a.replace_source(_ShortTrack(440.0))
    try:
        await negotiate(a, b)
        await wait_connected(a, b)

        async def _stopped():
            while not a.sending_stopped:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(_stopped(), 5)
        with pytest.raises(MediaError, match="stay live"):
            a.replace_source(SineTrack(500.0))
    finally:
        await a.close()
        await b.close()


@FAST_PATH_ON_AND_OFF
async def test_a_call_through_turn_is_recorded(fast_path, coturn, tmp_path):
    from softphone.media import tones
    from softphone.media.recorder import Recorder
    from softphone.media.sinks import SinkState

    recorder = Recorder(tmp_path / "call.wav")
    meter = ToneMeter()
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(700.0))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(300.0),
                                 sinks=[recorder, meter])
    try:
        assert a.fast_path is (fast_path == "on") and b.fast_path is (fast_path == "on")
        await negotiate(a, b)
        await wait_connected(a, b)
        await meter.wait_frames(60)
    finally:
        await a.close()
        await b.close()
    assert recorder.state is SinkState.CLOSED
    with av.open(str(recorder.path)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    samples = np.concatenate(frames).astype(np.float64)
    assert samples.size / rate >= 1.0
    freq, _level = tones.dominant_frequency(samples[-rate // 2:], rate)
    assert tones.frequencies_close(freq, 700.0)


async def test_every_sink_gets_every_frame(coturn):
    meters = [ToneMeter(), ToneMeter(), ToneMeter()]
    a = WebRtcDescriptionHandler(relay_config(coturn), source=SineTrack(700.0))
    b = WebRtcDescriptionHandler(relay_config(coturn), source=SineTrack(300.0), sinks=meters)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        for meter in meters:
            await meter.wait_frames(30)
        for meter in meters:
            steps = {later - earlier for earlier, later in zip(meter.pts[-25:-1], meter.pts[-24:], strict=True)}
            assert steps == {960}, steps  # consecutive 20 ms frames at 48 kHz: nothing shared out
            assert _close_enough(meter.dominant_frequency(), 700.0)
    finally:
        await a.close()
        await b.close()


async def test_factory_builds_handlers_with_source_and_sinks(coturn):
    meters: list[ToneMeter] = []

    def sinks(session):
        meters.append(ToneMeter())
        return [meters[-1]]

    factory = WebRtcDescriptionHandlerFactory(
        relay_config(coturn), source_factory=lambda session: SineTrack(session["freq"]), sinks_factory=sinks
    )
    a = factory({"freq": 600.0})
    b = factory({"freq": 1100.0})
    try:
        assert a.session == {"freq": 600.0}
        await negotiate(a, b)
        await wait_connected(a, b)
        await meters[1].wait_frames(25)
        assert _close_enough(meters[1].dominant_frequency(), 600.0)
    finally:
        await a.close()
        await b.close()


async def test_close_is_idempotent_and_frees_the_peer_connection(coturn):
    a, b, _, _ = await _pair(coturn)
    await negotiate(a, b)
    await wait_connected(a, b)
    pc_ref = weakref.ref(a.pc)
    transceiver_ref = weakref.ref(a.transceiver)
    await asyncio.gather(a.close(), a.close())
    await a.close()
    await b.close()
    assert a.closed and a.pc.connectionState == "closed"
    with pytest.raises(MediaError, match="closed"):
        await a.get_description()
    with pytest.raises(MediaError, match="closed"):
        await a.set_description(Body("application/sdp", "v=0\r\n"))
    assert await a.send_dtmf("1") is False
    del a
    await asyncio.sleep(0.05)
    gc.collect()
    assert pc_ref() is None, gc.get_referrers(pc_ref())
    assert transceiver_ref() is None


async def test_bad_remote_descriptions_are_media_errors(coturn):
    a = WebRtcDescriptionHandler(relay_config(coturn))
    try:
        with pytest.raises(MediaError, match="content type"):
            await a.set_description(Body("text/plain", "hello"))
        with pytest.raises(MediaError, match="v=0"):
            await a.set_description(Body("application/sdp", "hello"))
        with pytest.raises(MediaError, match="m=audio"):
            await a.set_description(Body("application/sdp", "v=0\r\ns=-\r\nt=0 0\r\n"))
        other = WebRtcDescriptionHandler(relay_config(coturn))
        no_mux = (await other.get_description()).content.replace("a=rtcp-mux\r\n", "")
        await other.close()
        with pytest.raises(MediaError, match="remote offer") as info:
            await a.set_description(Body("application/sdp", no_mux))
        # the SIP layer answers SipErrors from its handler with 488
        assert isinstance(info.value, DescriptionError) and isinstance(info.value, SipError)
    finally:
        await a.close()


async def test_offer_without_a_common_codec_is_a_description_error(coturn):
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("opus",)))
    try:
        offer = await a.get_description()
        with pytest.raises(DescriptionError, match="remote offer"):
            await b.set_description(offer)
    finally:
        await a.close()
        await b.close()


async def test_repeated_calls_leave_no_peer_connections_behind(coturn):
    from aiortc import RTCPeerConnection

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, RTCPeerConnection) for o in gc.get_objects())

    before = alive()
    for _ in range(3):
        a, b, _, _ = await _pair(coturn)
        await negotiate(a, b)
        await wait_connected(a, b)
        await a.send_dtmf("1", 40, 40)
        await a.close()
        await b.close()
        del a, b
    await wait_until(lambda: alive() == before, 5, "no RTCPeerConnection left alive")


def _media_factory(coturn, meters: dict, name: str, freq: float) -> WebRtcDescriptionHandlerFactory:
    return WebRtcDescriptionHandlerFactory(
        relay_config(coturn, codecs=("PCMU",)), source_factory=lambda session: SineTrack(freq),
        sinks_factory=lambda session: [meters.setdefault(name, ToneMeter())])


async def _sip_call_scenario(a, b, meters: dict) -> None:
    """a calls b: tones both ways, hold/unhold, RFC 4733 digits, BYE closes the media."""
    callee_fut = asyncio.get_running_loop().create_future()
    b.on("invite", lambda invitation: callee_fut.done() or callee_fut.set_result(invitation))
    caller = await asyncio.wait_for(a.call(b.core.config.aor.split(":")[1].split("@")[0]), 10)
    callee = await asyncio.wait_for(callee_fut, 5)
    await callee.wait_established(5)
    digits: list = []
    callee.handler.on("dtmf", digits.append)
    await wait_connected(caller.handler, callee.handler)
    await meters["b"].wait_frames(25)
    await meters["a"].wait_frames(25)
    assert _close_enough(meters["b"].dominant_frequency(), 440.0)
    assert _close_enough(meters["a"].dominant_frequency(), 1000.0)

    await asyncio.wait_for(caller.hold(), 10)
    assert caller.handler.local_direction is Direction.SENDONLY
    assert callee.handler.local_direction is Direction.RECVONLY
    await settle(caller.handler)
    assert await packets_during(caller.handler, 0.4) == 0
    await asyncio.wait_for(caller.unhold(), 10)
    assert caller.handler.local_direction is Direction.SENDRECV
    await packets_arrive(caller.handler, more_than=5)

    assert await asyncio.wait_for(caller.send_dtmf("12#"), 10) == "rtp"

    async def _three():
        while len(digits) < 3:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_three(), 5)
    assert [d.digit for d in digits] == ["1", "2", "#"]

    handler = caller.handler
    await asyncio.wait_for(caller.bye(), 10)
    assert caller.state is SessionState.TERMINATED

    async def _closed():
        while not (handler.closed and handler.pc.connectionState == "closed"):
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_closed(), 5)


@FAST_PATH_ON_AND_OFF
async def test_sip_sessions_drive_webrtc_media(fast_path, coturn):
    """The SIP layer's own sessions (in-memory registrar/proxy) with this handler as media."""
    hub = LoopbackHub(users={"1001": "secret-1001", "1002": "secret-1002"})
    meters: dict[str, ToneMeter] = {}
    a = hub_user_agent(hub, "1001", scale=0.1, description_handler_factory=_media_factory(coturn, meters, "a", 440.0))
    b = hub_user_agent(hub, "1002", scale=0.1, description_handler_factory=_media_factory(coturn, meters, "b", 1000.0))
    await a.start()
    await b.start()
    try:
        await _sip_call_scenario(a, b, meters)
    finally:
        await asyncio.wait_for(a.stop(), 10)
        await asyncio.wait_for(b.stop(), 10)


@FAST_PATH_ON_AND_OFF
async def test_call_through_kamailio_with_webrtc_media(fast_path, coturn, kamailio):
    """Real Kamailio over WebSocket (digest auth) for SIP, real coturn for media."""
    meters: dict[str, ToneMeter] = {}

    def make_ua(ext: str, name: str, freq: float) -> UserAgent:
        return UserAgent(UserAgentConfig(
            ws_url=kamailio.ws_url, aor=f"sip:{ext}@{kamailio.domain}", password=kamailio.users[ext],
            timers=Timers.scaled(0.2), description_handler_factory=_media_factory(coturn, meters, name, freq)))

    ext_a, ext_b = kamailio.allocate(2)
    a = make_ua(ext_a, "a", 440.0)
    b = make_ua(ext_b, "b", 1000.0)
    await asyncio.wait_for(a.start(), 10)
    await asyncio.wait_for(b.start(), 10)
    try:
        await _sip_call_scenario(a, b, meters)
    finally:
        await asyncio.wait_for(a.stop(), 10)
        await asyncio.wait_for(b.stop(), 10)


async def test_factory_for_load_plays_a_file_encoded_once_and_counts_without_decoding(coturn, tmp_path):
    """The README's load recipe: PreEncodedAudioTrack(path) as the source, decode=False."""
    from softphone.media.lean import PreEncodedAudioTrack
    from softphone.media.lean_sender import lean_sender_of
    from softphone.media.sources import generate_tone_file

    prompt = generate_tone_file(tmp_path / "prompt.wav", 800.0, duration=1.0, rate=8000)
    factory = WebRtcDescriptionHandlerFactory(relay_config(coturn, codecs=("PCMU",)),
                                              source_factory=lambda session: PreEncodedAudioTrack(prompt),
                                              decode=False)
    decoding = WebRtcDescriptionHandlerFactory(factory.config, source_factory=factory.source_factory, decode=True)
    a, b = factory(), decoding()
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await wait_until(lambda: all(lean_sender_of(h.sender).packets > 15 and h.receiver.report().received > 15
                                     for h in (a, b)), 10, "more than 15 packets sent and received each way")
        for handler in (a, b):
            assert lean_sender_of(handler.sender).packets > 15
            report = handler.receiver.report()
            assert report.received > 15 and report.lost == 0
        assert a.receiver._RTCRtpReceiver__decoder_thread is None  # counts, decodes nothing
        assert b.receiver._RTCRtpReceiver__decoder_thread is not None
    finally:
        await a.close()
        await b.close()
