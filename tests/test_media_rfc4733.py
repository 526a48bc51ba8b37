"""RFC 4733 DTMF: payload format, decoder rules, packet layout, and round trips through coturn."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtcdtlstransport import RtpRouter
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensionsMap, RtcpByePacket, RtpPacket, is_rtcp
from hypothesis import given, settings
from hypothesis import strategies as st
from media_support import FAST_PATH_ON_AND_OFF, SineTrack, negotiate, relay_config, settle, wait_connected

from softphone.media import sdp as sdpmod
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.media.rfc4733 import (
    DtmfError,
    DtmfEvent,
    DtmfReceiver,
    DtmfSender,
    RtpSenderTap,
    TelephoneEvent,
    TelephoneEventDecoder,
    check_aiortc_supported,
    validate_tones,
)
from softphone.sip.description_handler import Body, DescriptionOptions

# --- payload and validation -------------------------------------------------------------


@given(event=st.integers(0, 255), end=st.booleans(), volume=st.integers(0, 63), duration=st.integers(0, 0xFFFF))
def test_telephone_event_payload_round_trips(event, end, volume, duration):
    ev = TelephoneEvent(event, end, volume, duration)
    packed = ev.pack()
    assert len(packed) == 4
    assert TelephoneEvent.parse(packed) == ev


def test_telephone_event_layout_matches_rfc4733():
    # event 5, E bit, volume 10, duration 800
    assert TelephoneEvent(5, True, 10, 800).pack() == bytes([5, 0x80 | 10, 0x03, 0x20])
    with pytest.raises(DtmfError):
        TelephoneEvent.parse(b"\x05\x8a")


@pytest.mark.parametrize(
    "tones, duration, gap, field",
    [("12X", 100, 70, "tones"), ("", 100, 70, "tones"), ("1", 10, 70, "duration_ms"),
     ("1", 7000, 70, "duration_ms"), ("1", 100, 5, "gap_ms")],
)
def test_invalid_requests_name_the_field(tones, duration, gap, field):
    with pytest.raises(DtmfError, match=field):
        validate_tones(tones, duration, gap)


def test_valid_tones_are_upper_cased():
    assert validate_tones("0123456789*#abcd,", 100, 70) == "0123456789*#ABCD,"


def test_this_aiortc_is_supported():
    check_aiortc_supported()


async def test_an_aiortc_without_the_hooks_fails_clearly(monkeypatch):
    from aiortc.rtcdtlstransport import RTCDtlsTransport

    from softphone.errors import AiortcCompatibilityError

    monkeypatch.delattr(RTCDtlsTransport, "_register_rtp_sender")
    with pytest.raises(AiortcCompatibilityError, match="_register_rtp_sender"):
        check_aiortc_supported()
    with pytest.raises(AiortcCompatibilityError):
        DtmfSender(RTCRtpSender("audio", RecordingTransport()))


# --- decoder -------------------------------------------------------------------------------


def _digit_packets(code: int, ts: int, total: int, step: int, ends: int = 3):
    """(timestamp, payload) of one event as RFC 4733 section 2.5 sends it."""
    out = []
    elapsed = 0
    while elapsed < total:
        elapsed = min(elapsed + step, total)
        out.append((ts, TelephoneEvent(code, False, 10, elapsed).pack()))
    out += [(ts, TelephoneEvent(code, True, 10, total).pack())] * ends
    return out


def test_decoder_reports_each_event_once_with_its_duration():
    decoder = TelephoneEventDecoder()
    got = []
    for ts, payload in _digit_packets(5, 1000, 800, 160) + _digit_packets(11, 3000, 1600, 160):
        got += decoder.feed(ts, payload, 8000)
    assert got == [DtmfEvent("5", 100, "rfc4733"), DtmfEvent("#", 200, "rfc4733")]


def test_decoder_ignores_late_packets_of_finished_events():
    decoder = TelephoneEventDecoder()
    packets = _digit_packets(1, 500, 4800, 960)
    got = []
    for ts, payload in packets:
        got += decoder.feed(ts, payload, 48000)
    got += decoder.feed(*packets[1], 48000)  # a reordered packet arriving after the end
    assert got == [DtmfEvent("1", 100, "rfc4733")]


def test_decoder_ends_an_event_whose_end_packets_were_lost_when_the_next_starts():
    decoder = TelephoneEventDecoder()
    first = _digit_packets(2, 100, 800, 160, ends=0)
    second = _digit_packets(3, 2000, 800, 160)
    got = []
    for ts, payload in first + second:
        got += decoder.feed(ts, payload, 8000)
    assert got == [DtmfEvent("2", 100, "rfc4733"), DtmfEvent("3", 100, "rfc4733")]


def test_flush_reports_an_event_that_stopped_without_end():
    decoder = TelephoneEventDecoder()
    for ts, payload in _digit_packets(9, 100, 480, 160, ends=0):
        assert decoder.feed(ts, payload, 8000) == []
    assert decoder.flush() == [DtmfEvent("9", 60, "rfc4733")]
    assert decoder.flush() == []


def test_only_an_end_packet_is_enough():
    decoder = TelephoneEventDecoder()
    assert decoder.feed(42, TelephoneEvent(10, True, 10, 1600).pack(), 8000) == [DtmfEvent("*", 200, "rfc4733")]


def test_same_digit_twice_is_two_events():
    decoder = TelephoneEventDecoder()
    got = []
    for ts, payload in _digit_packets(7, 0, 800, 160) + _digit_packets(7, 1360, 800, 160):
        got += decoder.feed(ts, payload, 8000)
    assert got == [DtmfEvent("7", 100, "rfc4733"), DtmfEvent("7", 100, "rfc4733")]


def test_long_event_continues_across_segments():
    decoder = TelephoneEventDecoder()
    ts = 4_294_960_000  # the second segment's timestamp wraps around 2**32
    got = []
    for d in range(8000, 0xFFFF, 8000):
        got += decoder.feed(ts, TelephoneEvent(4, False, 10, d).pack(), 8000)
    got += decoder.feed(ts, TelephoneEvent(4, False, 10, 0xFFFF).pack(), 8000)
    second = (ts + 0xFFFF) & 0xFFFFFFFF
    got += decoder.feed(second, TelephoneEvent(4, False, 10, 8000).pack(), 8000)
    got += decoder.feed(second, TelephoneEvent(4, True, 10, 80000 - 0xFFFF).pack(), 8000)
    assert got == [DtmfEvent("4", 10000, "rfc4733")]


# --- sender packet layout (real RTCRtpSender, recording transport) ------------------------------


class RecordingTransport:
    """What RTCRtpSender needs of an RTCDtlsTransport, recording what is sent."""

    state = "connected"
    _stats_id = "transport_test"

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._rtp_header_extensions_map = HeaderExtensionsMap()
        self._rtp_router = RtpRouter()

    async def _send_rtp(self, data: bytes) -> None:
        self.sent.append(data)


@pytest.mark.parametrize("rate, audio_rate", [(8000, 8000), (48000, 48000)])
async def test_sender_packets_follow_rfc4733_section_2_5(rate, audio_rate):
    transport = RecordingTransport()
    sender = RTCRtpSender("audio", transport)
    dtmf = DtmfSender(sender, packet_interval=0.005)
    dtmf.configure(payload_type=101, event_clock_rate=rate, audio_clock_rate=audio_rate, mid="0")
    assert sender.transport is dtmf.tap
    await dtmf.send("5", duration_ms=100, gap_ms=70)
    packets = [RtpPacket.parse(p) for p in transport.sent]
    events = [TelephoneEvent.parse(p.payload) for p in packets]
    step = round(0.005 * rate)
    total = rate // 10
    assert [e.duration for e in events if not e.end] == list(range(step, total + 1, step))
    assert [e.duration for e in events if e.end] == [total] * 3
    assert all(e.event == 5 and e.volume == 10 for e in events)
    assert [p.marker for p in packets] == [1] + [0] * (len(packets) - 1)
    assert len({p.timestamp for p in packets}) == 1
    assert {p.ssrc for p in packets} == {sender._ssrc}
    assert {p.payload_type for p in packets} == {101}
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(seqs[0] + i) & 0xFFFF for i in range(len(seqs))]
    dtmf.close()
    assert sender.transport is transport


async def test_digits_asked_for_before_any_audio_use_the_audio_timestamps():
    """Right after connect aiortc has not sent audio yet; its timestamp origin is random
    and private, so the first digit waits for the first audio packet."""
    transport = RecordingTransport()
    sender = RTCRtpSender(SineTrack(440.0), transport)  # has a source, not started
    dtmf = DtmfSender(sender, sleep=_no_wait)
    dtmf.configure(payload_type=126, event_clock_rate=8000, audio_clock_rate=8000, mid=None)
    task = asyncio.ensure_future(dtmf.send("3", 40, 40))
    await asyncio.sleep(0.01)
    assert transport.sent == []  # waiting for audio
    audio = RtpPacket(payload_type=0, sequence_number=77, timestamp=3_000_000_000, ssrc=sender._ssrc,
                      payload=b"\xff" * 160)
    await dtmf.tap._send_rtp(audio.serialize())
    await asyncio.wait_for(task, 5)
    packets = [RtpPacket.parse(p) for p in transport.sent]
    assert packets[0].payload_type == 0
    events = packets[1:]
    assert {p.payload_type for p in events} == {126}
    assert [p.sequence_number for p in events] == list(range(78, 78 + len(events)))
    offset = events[0].timestamp - 3_000_000_000
    assert 0 <= offset < 8000  # within a second of the audio, not a random origin


async def test_digits_before_any_audio_are_counted_by_the_receiver():
    transport = RecordingTransport()
    receiver = RTCRtpReceiver("audio", transport)
    got: list = []
    dtmf = DtmfReceiver(receiver, got.append)
    dtmf.configure({101: 8000})
    assert receiver in transport._rtp_router.payload_type_table[101]
    for seq, (ts, payload) in enumerate(_digit_packets(8, 5000, 800, 160)):
        packet = RtpPacket(payload_type=101, sequence_number=seq, timestamp=ts, ssrc=42, payload=payload)
        await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
    assert got == [DtmfEvent("8", 100, "rfc4733")]
    stream = receiver._RTCRtpReceiver__remote_streams[42]
    assert stream.packets_received == 8 and stream.packets_lost == 0
    other = RtpPacket(payload_type=0, sequence_number=8, timestamp=5800, ssrc=42, payload=b"\xff" * 160)
    await receiver._handle_rtp_packet(other, arrival_time_ms=0)  # not DTMF: aiortc's own path (PT unknown)
    assert got == [DtmfEvent("8", 100, "rfc4733")]
    dtmf.close()
    assert "_handle_rtp_packet" not in receiver.__dict__


async def test_long_digit_is_split_into_segments():
    transport = RecordingTransport()
    dtmf = DtmfSender(RTCRtpSender("audio", transport), packet_interval=0.05)
    dtmf.configure(payload_type=110, event_clock_rate=48000, audio_clock_rate=48000, mid=None)
    await dtmf.send("0", duration_ms=1500, gap_ms=70)  # 72000 units > 0xFFFF
    packets = [RtpPacket.parse(p) for p in transport.sent]
    stamps = sorted({p.timestamp for p in packets})
    assert len(stamps) == 2 and (stamps[1] - stamps[0]) & 0xFFFFFFFF == 0xFFFF
    decoder = TelephoneEventDecoder()
    got = []
    for p in packets:
        got += decoder.feed(p.timestamp, p.payload, 48000)
    assert got == [DtmfEvent("0", 1500, "rfc4733")]


async def test_tap_renumbers_audio_and_events_into_one_sequence():
    transport = RecordingTransport()
    tap = RtpSenderTap(transport, audio_clock_rate=8000)

    def audio(seq: int, ts: int) -> bytes:
        return RtpPacket(payload_type=0, sequence_number=seq, timestamp=ts, ssrc=7, payload=b"\xff" * 160).serialize()

    await tap._send_rtp(audio(1000, 160))
    await tap._send_rtp(audio(1001, 320))
    await tap.send_event(ssrc=7, payload_type=126, timestamp=tap.timestamp_now(), marker=True,
                         event=TelephoneEvent(1, False, 10, 160), mid=None)
    tap.suppress_audio = True
    await tap._send_rtp(audio(1002, 480))  # held back while an event plays
    tap.suppress_audio = False
    bye = bytes(RtcpByePacket(sources=[7]))
    await tap._send_rtp(bye)
    await tap._send_rtp(audio(1003, 640))
    rtp = [RtpPacket.parse(p) for p in transport.sent if not is_rtcp(p)]
    assert [p.sequence_number for p in rtp] == [1000, 1001, 1002, 1003]
    assert [p.payload_type for p in rtp] == [0, 0, 126, 0]
    assert rtp[2].timestamp >= 320
    assert bye in transport.sent
    assert (tap.audio_packets, tap.audio_suppressed, tap.event_packets) == (3, 1, 1)


# --- round trips through coturn --------------------------------------------------------------


async def _call(coturn, codecs_a=("opus",), codecs_b=("opus",)):
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=codecs_a), source=SineTrack(400))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=codecs_b), source=SineTrack(900))
    got = {"a": [], "b": []}
    a.on("dtmf", got["a"].append)
    b.on("dtmf", got["b"].append)
    await negotiate(a, b)
    await wait_connected(a, b)
    return a, b, got


async def _wait_digits(events: list, count: int, timeout: float = 10.0) -> None:
    async def _wait():
        while len(events) < count:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_wait(), timeout)


@pytest.mark.peer
@FAST_PATH_ON_AND_OFF
@pytest.mark.parametrize("codec, rate, pt", [("opus", 48000, 110), ("PCMU", 8000, 126)])
async def test_digits_round_trip_both_ways(fast_path, coturn, codec, rate, pt):
    a, b, got = await _call(coturn, (codec,), (codec,))
    try:
        assert a.negotiated_events == {pt: rate} and b.negotiated_events == {pt: rate}
        assert a.dtmf_payload_type == pt
        assert await a.send_dtmf("123#*", duration_ms=100, gap_ms=70) is True
        assert await b.send_dtmf("9D", duration_ms=250, gap_ms=100) is True
        await _wait_digits(got["b"], 5)
        await _wait_digits(got["a"], 2)
        assert [(e.digit, e.duration_ms, e.via) for e in got["b"]] == [
            (d, 100, "rfc4733") for d in "123#*"
        ]
        assert [(e.digit, e.duration_ms) for e in got["a"]] == [("9", 250), ("D", 250)]
        # events share the audio sequence space: they must not show up as loss
        quality = await b.stats()
        assert quality.packets_lost == 0, quality
        # what a reports as sent (audio held back during events, events added) is what b got
        a.replace_source(None)
        await settle(b)
        assert (await a.stats()).packets_sent == (await b.stats()).packets_received
    finally:
        await a.close()
        await b.close()


@pytest.mark.peer
async def test_opus_answer_to_an_offer_with_only_8000_uses_8000(coturn):
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("opus",)), source=SineTrack(400))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("opus",)), source=SineTrack(900))
    got: list = []
    b.on("dtmf", got.append)
    try:
        offer = await a.get_description()
        stripped = _strip_telephone_event(offer.content, keep_rate=8000)
        await b.set_description(Body(offer.content_type, stripped))
        answer = await b.get_description()
        assert sdpmod.telephone_events(answer.content) == {126: 8000}
        await a.set_description(answer)
        await wait_connected(a, b)
        assert a.dtmf_payload_type == 126
        assert await a.send_dtmf("7", 120, 70)
        await _wait_digits(got, 1)
        assert [(e.digit, e.duration_ms) for e in got] == [("7", 120)]
    finally:
        await a.close()
        await b.close()


def _strip_telephone_event(text: str, keep_rate: int | None = None) -> str:
    sd = sdpmod.SessionDescription.parse(text)
    audio = sd.audio()
    drop = {pt for pt, rate in audio.telephone_events().items() if rate != keep_rate}
    audio.set_formats([f for f in audio.formats if not (f.isdigit() and int(f) in drop)])
    audio.lines[:] = [
        ln for ln in audio.lines
        if not any(ln.startswith((f"a=rtpmap:{pt} ", f"a=fmtp:{pt} ")) for pt in drop)
    ]
    return str(sd)


@pytest.mark.peer
async def test_without_telephone_event_send_dtmf_returns_false(coturn):
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(400))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",), telephone_event=False))
    try:
        offer = await a.get_description()
        await b.set_description(offer)
        answer = await b.get_description()
        assert sdpmod.telephone_events(answer.content) == {}
        await a.set_description(answer)
        await wait_connected(a, b)
        assert a.negotiated_events == {}
        assert await a.send_dtmf("1") is False
        assert await b.send_dtmf("1") is False
        with pytest.raises(DtmfError):
            await a.send_dtmf("x")
    finally:
        await a.close()
        await b.close()


@pytest.mark.peer
async def test_no_dtmf_while_the_far_end_holds_us(coturn):
    a, b, got = await _call(coturn, ("PCMU",), ("PCMU",))
    try:
        await negotiate(b, a, offer_options=DescriptionOptions(hold=True))  # b holds: a becomes recvonly
        assert a.local_direction is sdpmod.Direction.RECVONLY
        assert await a.send_dtmf("1") is False
        await negotiate(b, a)  # unhold
        assert a.local_direction is sdpmod.Direction.SENDRECV
        assert await a.send_dtmf("1") is True
        await _wait_digits(got["b"], 1)
        assert got["b"][0].digit == "1"
    finally:
        await a.close()
        await b.close()


@pytest.mark.peer
async def test_digits_reach_a_lean_counting_receiver(coturn):
    from softphone.media.counting_receiver import install_counting_receiver

    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(400))
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(900), decode=False)
    install_counting_receiver(b.receiver, decode=False)  # after the RFC 4733 hook: order must not matter
    got: list = []
    b.on("dtmf", got.append)
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        assert await a.send_dtmf("4*", 80, 60)
        await _wait_digits(got, 2)
        assert [(e.digit, e.duration_ms) for e in got] == [("4", 80), ("*", 80)]
        quality = await b.stats()
        assert quality.packets_received > 0 and quality.packets_lost == 0
    finally:
        await a.close()
        await b.close()


async def _no_wait(_seconds: float) -> None:
    await asyncio.sleep(0)


@settings(max_examples=40, deadline=None)
@given(
    tones=st.text(alphabet="0123456789*#ABCD", min_size=1, max_size=6),
    duration=st.integers(40, 400),
    rate=st.sampled_from([8000, 48000]),
    seed=st.integers(0, 2**16),
)
def test_any_digit_string_survives_reordering_duplicates_and_loss(tones, duration, rate, seed):
    """Whatever the sender emits decodes to the same digits and durations, even when
    non-final packets are lost and end packets arrive twice (the end is sent three times)."""
    import random

    async def scenario():
        transport = RecordingTransport()
        dtmf = DtmfSender(RTCRtpSender("audio", transport), sleep=_no_wait)
        dtmf.configure(payload_type=101, event_clock_rate=rate, audio_clock_rate=rate, mid=None)
        await dtmf.send(tones, duration_ms=duration, gap_ms=50)
        return [RtpPacket.parse(p) for p in transport.sent]

    packets = asyncio.run(scenario())
    rng = random.Random(seed)
    delivered = []
    for p in packets:
        end = TelephoneEvent.parse(p.payload).end
        if not end and rng.random() < 0.3:
            continue  # lost
        delivered.append(p)
        if end and rng.random() < 0.3:
            delivered.append(p)  # duplicated
    decoder = TelephoneEventDecoder()
    got = []
    for p in delivered:
        got += decoder.feed(p.timestamp, p.payload, rate)
    got += decoder.flush()
    assert [(e.digit, e.duration_ms) for e in got] == [(t, duration) for t in tones]
