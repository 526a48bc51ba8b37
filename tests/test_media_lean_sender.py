"""The lean RTP sender (softphone.media.lean_sender): wire format, continuity, RTCP, hold."""

from __future__ import annotations

import asyncio
import itertools

import aiortc
import numpy as np
import pytest
from aiortc.rtp import RtcpPacket, RtcpSrPacket, RtpPacket, is_rtcp
from hypothesis import given, settings
from hypothesis import strategies as st
from media_support import wait_until

from softphone.media.config import FastPathOptions
from softphone.media.lean import PreEncodedAudioTrack, Tone
from softphone.media.lean_sender import LeanState, lean_sender_of
from softphone.media.rfc4733 import DtmfSender
from softphone.media.slot_scheduler import SlotScheduler
from softphone.media.testing import loopback_host_candidates, open_loopback_call


@pytest.fixture(autouse=True)
def _loopback_only():
    with loopback_host_candidates():
        yield


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    x = pcm.astype(np.float64)
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spectrum))])


class Recorder:
    """Stands in for the DTLS transport: records plaintext RTP/RTCP, then forwards it."""

    def __init__(self, transport) -> None:
        self._transport = transport
        self.rtp: list[RtpPacket] = []
        self.rtcp: list[tuple[int, object]] = []  # (RTP packets recorded before it, packet)

    def __getattr__(self, name):
        return getattr(self._transport, name)

    def _send_rtp(self, data: bytes):
        if is_rtcp(data):
            for packet in RtcpPacket.parse(data):
                self.rtcp.append((len(self.rtp), packet))
        else:
            self.rtp.append(RtpPacket.parse(data))
        return self._transport._send_rtp(data)


async def lean_call(codec="PCMU", **kwargs):
    track = PreEncodedAudioTrack(Tone(440, 1.0))
    call = await open_loopback_call(codec, track, None, **kwargs)
    sender = call.caller.transceiver.sender
    await wait_until(lambda: lean_sender_of(sender) is not None and lean_sender_of(sender).packets > 0,
                     what="the lean sender's first packet")
    return call, track, sender


@pytest.mark.parametrize("codec", ["PCMU", "opus"])
async def test_stock_aiortc_receiver_decodes_the_lean_stream_to_the_tone(codec):
    call, _track, sender = await lean_call(codec, counting=False)
    try:
        assert type(call.callee.receiver) is aiortc.RTCRtpReceiver  # stock, decoding
        remote = call.callee.receiver.track
        chunks, rate = [], None
        while sum(len(c) for c in chunks) < (rate or 8000) * 0.8:
            frame = await asyncio.wait_for(remote.recv(), 5)
            rate = frame.sample_rate
            chunks.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
        pcm = np.concatenate(chunks)[int(rate * 0.1):]
        assert abs(dominant_frequency(pcm, rate) - 440.0) < 15.0
        assert lean_sender_of(sender).state is LeanState.SENDING
    finally:
        await call.close()


async def test_packets_are_byte_identical_to_aiortc_serialize():
    call, _track, sender = await lean_call()
    try:
        lean = lean_sender_of(sender)
        assert lean.ext_head  # at least the mid extension is negotiated for audio
        ntp = 0x1234567890ABCDEF
        payload = bytes(range(160))
        packet = RtpPacket(payload_type=lean.payload_type, marker=1, sequence_number=lean.sequence_number,
                           timestamp=0xDEADBEEF, ssrc=sender._ssrc)
        packet.payload = payload
        packet.extensions.mid = sender._RTCRtpSender__mid
        packet.extensions.abs_send_time = (ntp >> 14) & 0xFFFFFF
        expected = packet.serialize(sender._RTCRtpSender__rtp_header_extensions_map)
        assert lean.build(payload, 0xDEADBEEF, ntp) == expected
    finally:
        await call.close()


async def test_sender_reports_count_exactly_the_packets_sent():
    call, _track, sender = await lean_call()
    try:
        recorder = Recorder(sender.transport)
        sender.setTransport(recorder)
        await wait_until(lambda: any(isinstance(p, RtcpSrPacket) for _, p in recorder.rtcp), 5,
                         "a sender report")
        before, sr = next((n, p) for n, p in recorder.rtcp if isinstance(p, RtcpSrPacket))
        audio = list(recorder.rtp)
        earlier = lean_sender_of(sender).packets - len(audio)  # sent before the recorder went in
        assert sr.ssrc == sender._ssrc
        assert sr.sender_info.packet_count == earlier + before
        assert sr.sender_info.octet_count == 160 * (earlier + before)  # PCMU: 160 B per 20 ms
        assert sr.sender_info.rtp_timestamp == audio[before - 1].timestamp
        stats = await sender.getStats()
        outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
        assert outbound.packetsSent == lean_sender_of(sender).packets
        assert outbound.bytesSent == 160 * outbound.packetsSent  # PCMU: 160 B per 20 ms
    finally:
        await call.close()


async def test_sequence_and_timestamps_stay_continuous_across_a_digit():
    call, _track, sender = await lean_call()
    try:
        dtmf = DtmfSender(sender, packet_interval=0.02)
        dtmf.configure(payload_type=101, event_clock_rate=8000, audio_clock_rate=8000,
                       mid=sender._RTCRtpSender__mid)
        recorder = Recorder(dtmf.tap.wrapped)
        dtmf.tap._transport = recorder
        await wait_until(lambda: len(recorder.rtp) >= 5, what="audio before the digit")
        await asyncio.wait_for(dtmf.send("5", duration_ms=100), 5)
        count = len(recorder.rtp)
        await wait_until(lambda: len(recorder.rtp) >= count + 5, what="audio after the digit")
        packets = list(recorder.rtp)
        seqs = [p.sequence_number for p in packets]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        assert len({p.ssrc for p in packets}) == 1
        events = [p for p in packets if p.payload_type == 101]
        audio = [p for p in packets if p.payload_type == 0]
        assert len(events) >= 5 + 3 - 1 and all(p.timestamp == events[0].timestamp for p in events)
        first_event = packets.index(events[0])
        last_event = packets.index(events[-1])
        assert all(p.payload_type == 101 for p in packets[first_event:last_event + 1])  # audio paused
        # Audio timestamps advance 160 per 20 ms, through the pause too, and the digit sits inside.
        steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(audio)}
        assert 160 in steps and all(s % 160 == 0 and s < 1 << 31 for s in steps)
        before = packets[first_event - 1].timestamp
        after = packets[last_event + 1].timestamp
        assert 0 < (events[0].timestamp - before) & 0xFFFFFFFF < 1 << 31
        assert 0 < (after - events[0].timestamp) & 0xFFFFFFFF < 1 << 31
        assert dtmf.tap.audio_suppressed > 0
    finally:
        await call.close()


async def renegotiate(call, caller_direction: str) -> None:
    a, b = call.caller.pc, call.callee.pc
    call.caller.transceiver.direction = caller_direction
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)


async def test_inactive_direction_stops_packets_and_resuming_continues_the_sequence():
    call, _track, sender = await lean_call()
    try:
        recorder = Recorder(sender.transport)
        sender.setTransport(recorder)
        lean = lean_sender_of(sender)
        await renegotiate(call, "inactive")
        assert call.caller.transceiver.currentDirection == "inactive"
        sent = len(recorder.rtp)
        paused = lean.paused_frames
        await wait_until(lambda: lean.paused_frames >= paused + 10, what="paused frames")
        assert len(recorder.rtp) == sent
        await renegotiate(call, "sendrecv")
        await wait_until(lambda: len(recorder.rtp) >= sent + 5, what="audio after resuming")
        seqs = [p.sequence_number for p in recorder.rtp]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
        gap = (recorder.rtp[sent].timestamp - recorder.rtp[sent - 1].timestamp) & 0xFFFFFFFF
        assert gap >= 160 * 10  # time went on while nothing was sent
    finally:
        await call.close()


async def test_replacing_the_track_keeps_timestamps_continuous_and_stock_tracks_are_handed_back():
    from aiortc.mediastreams import AudioStreamTrack

    call, track, sender = await lean_call()
    try:
        recorder = Recorder(sender.transport)
        sender.setTransport(recorder)
        await wait_until(lambda: len(recorder.rtp) >= 3, what="audio")
        other = PreEncodedAudioTrack(Tone(880, 1.0)).bind(call.caller.transceiver)
        sender.replaceTrack(other)
        count = len(recorder.rtp)
        await wait_until(lambda: other.packets_sent >= 3, what="the new track's audio")
        packets = list(recorder.rtp)
        steps = {(b.timestamp - a.timestamp) & 0xFFFFFFFF for a, b in itertools.pairwise(packets)}
        assert all(s % 160 == 0 and 0 < s < 160 * 20 for s in steps), steps
        assert len(packets) > count
        sender.replaceTrack(AudioStreamTrack())  # silence generator: not pre-encoded
        lean = lean_sender_of(sender)
        await wait_until(lambda: lean.state is LeanState.HANDED_BACK, what="hand-back to aiortc's encoder")
        count = len(recorder.rtp)
        await wait_until(lambda: len(recorder.rtp) >= count + 3, what="encoded packets")
        assert not sender._RTCRtpSender__rtp_exited.is_set()
        sender.replaceTrack(track)  # and back to the pre-encoded path
        await wait_until(lambda: lean.state is LeanState.SENDING, what="the lean path again")
        count = len(recorder.rtp)
        await wait_until(lambda: len(recorder.rtp) >= count + 3, what="lean packets again")
        seqs = [p.sequence_number for p in recorder.rtp]
        assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    finally:
        await call.close()
    assert sender._RTCRtpSender__rtp_exited.is_set()


async def test_switched_off_leaves_aiortc_sending():
    track = PreEncodedAudioTrack(Tone(440, 1.0))
    call = await open_loopback_call("PCMU", track, None, options=FastPathOptions(lean_sender=False))
    try:
        await wait_until(lambda: call.callee.report().received >= 5, what="stock-sent packets")
        assert lean_sender_of(call.caller.transceiver.sender) is None
        assert "_run_rtp" not in call.caller.transceiver.sender.__dict__
    finally:
        await call.close()


async def test_close_stops_the_sender_and_unschedules_it():
    call, track, sender = await lean_call()
    lean = lean_sender_of(sender)
    await call.close()
    assert lean.state is LeanState.STOPPED and lean.slot is None
    assert lean_sender_of(sender) is None
    assert track.readyState == "ended"
    assert sender._RTCRtpSender__rtp_exited.is_set()


async def test_non_repeating_track_ends_the_sender_like_aiortc():
    track = PreEncodedAudioTrack(Tone(440, 0.1), repeat=False)
    call = await open_loopback_call("PCMU", track, None)
    sender = call.caller.transceiver.sender
    try:
        await wait_until(lambda: sender._RTCRtpSender__rtp_exited.is_set(), what="the sender to end")
        assert sender.track is None and track.readyState == "ended"
        assert sender._RTCRtpSender__packet_count == track.audio.frames
    finally:
        await call.close()


async def test_the_sender_loop_cannot_be_replaced_once_aiortc_started_it():
    from softphone.media.lean_sender import install_lean_sender

    call = await open_loopback_call("PCMU", PreEncodedAudioTrack(Tone(440, 1.0)), None,
                                    options=FastPathOptions(lean_sender=False))
    try:
        assert install_lean_sender(call.caller.transceiver) is False
    finally:
        await call.close()


# --- the light RTP parse of the fast receive path ---------------------------------------


def _counting_receiver():
    from types import SimpleNamespace

    from aiortc import RTCRtpReceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from softphone.media.counting_receiver import install_counting_receiver

    receiver = install_counting_receiver(RTCRtpReceiver("audio", SimpleNamespace(state="new")))
    receiver._RTCRtpReceiver__codecs[0] = RTCRtpCodecParameters(
        mimeType="audio/PCMU", clockRate=8000, channels=1, payloadType=0)
    return receiver


@settings(max_examples=60, deadline=None)
@given(csrcs=st.lists(st.integers(0, 0xFFFFFFFF), max_size=3), mid=st.one_of(st.none(), st.text("0123abc", min_size=1, max_size=5)),
       abs_send_time=st.one_of(st.none(), st.integers(0, 0xFFFFFF)), padding=st.integers(0, 8),
       payload=st.binary(min_size=0, max_size=200), seq=st.integers(0, 0xFFFF), ts=st.integers(0, 0xFFFFFFFF),
       marker=st.integers(0, 1))
def test_light_parse_reads_what_aiortc_parses(csrcs, mid, abs_send_time, padding, payload, seq, ts, marker):
    from types import SimpleNamespace

    from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
    from aiortc.rtp import HeaderExtensionsMap

    from softphone.media.aiortc_seam import _handle_rtp_light

    ext_map = HeaderExtensionsMap()
    ext_map.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
        RTCRtpHeaderExtensionParameters(id=3, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    ]))
    packet = RtpPacket(payload_type=0, marker=marker, sequence_number=seq, timestamp=ts, ssrc=77)
    packet.csrc = csrcs
    packet.padding_size = padding
    packet.payload = payload
    packet.extensions.mid = mid
    packet.extensions.abs_send_time = abs_send_time
    data = packet.serialize(ext_map)
    expected = RtpPacket.parse(data, ext_map)

    receiver = _counting_receiver()
    fallbacks = []

    async def full_parse(data, arrival_time_ms):
        fallbacks.append(data)

    dtls = SimpleNamespace(_rtp_router=SimpleNamespace(route_rtp=lambda p: receiver), _handle_rtp_data=full_parse)
    assert _handle_rtp_light(dtls, data, 0) is None  # counted synchronously: no coroutine
    assert fallbacks == []
    counter = receiver.counters[77]
    assert counter.packets_received == 1 and counter.payload_bytes == len(expected.payload)
    assert counter.payload_types == {0: 1} and counter._last_ts == expected.timestamp

    # A hooked (RFC 4733) or decoding receiver gets aiortc's full parse.
    receiver._lean_decode = True
    coro = _handle_rtp_light(dtls, data, 0)
    with pytest.raises(StopIteration):
        coro.send(None)
    assert fallbacks == [data]


async def test_lean_call_counts_full_payloads_with_the_light_parse():
    from softphone.media.aiortc_seam import fast_receive_of

    call, _track, _sender = await lean_call()
    try:
        await wait_until(lambda: call.callee.report().received >= 20, what="packets")
        assert fast_receive_of(call.callee.receiver.transport).direct > 0
        report = call.callee.report()
        assert report.payload_types == {0: report.received}
        counter = next(iter(call.callee.receiver.counters.values()))
        assert counter.payload_bytes == 160 * counter.packets_received
    finally:
        await call.close()


# --- spreading streams over the frame ------------------------------------------------------


class _Loop:
    """Just what SlotScheduler asks of a loop when nothing fires."""

    def __init__(self) -> None:
        self.timers: list[float] = []

    def call_at(self, when, callback, *args):
        self.timers.append(when)


def phase_of(driver, start: float) -> int:
    key = round(start / driver.SLOT + 0.5)  # start is the middle of its slot
    assert start == pytest.approx((key - 0.5) * driver.SLOT)
    return key


def test_start_phase_fills_a_slot_up_to_the_batch_then_spreads():
    driver = SlotScheduler(_Loop())  # type: ignore[arg-type]
    driver.BATCH = 4
    now = 99.5 * driver.SLOT
    # Nothing running: the next slot.
    assert phase_of(driver, driver.start_phase(now)) == 100
    # Slots with room: the busiest of them (the earliest on a tie), to share its wake-up.
    driver._slots = {100: [object()], 103: [object()] * 3, 106: [object()] * 3, 108: [object()] * 4}
    assert phase_of(driver, driver.start_phase(now)) == 103
    # Every slot at the batch size: the least busy one, the earliest on a tie.
    driver._slots = {k: [object()] * (4 if k in (101, 107) else 5) for k in range(100, 110)}
    assert phase_of(driver, driver.start_phase(now)) == 101
    # Phases wrap around the frame: a slot 10 ahead is the same phase.
    driver._slots = {k: [object()] * 5 for k in range(100, 110)}
    driver._slots[112] = driver._slots.pop(102)[:4]
    assert phase_of(driver, driver.start_phase(now)) == 102
    # The rest of a slot being fired counts too: those senders stay in its phase.
    driver._slots = {k: [object()] * 5 for k in range(100, 110) if k != 104}
    driver._firing = (94, [object()] * 8)  # type: ignore[assignment]
    driver._firing_done = 8  # all 8 already rescheduled elsewhere: phase 4 is empty
    assert phase_of(driver, driver.start_phase(now)) == 104
    driver._firing_done = 1  # 7 still to tick in phase 4: busier than the others' 5
    assert phase_of(driver, driver.start_phase(now)) == 100


async def test_calls_set_up_together_are_spread_over_the_frame(monkeypatch):
    monkeypatch.setattr(SlotScheduler, "BATCH", 4)
    tone = Tone(440, 1.0)
    calls = await asyncio.gather(*(open_loopback_call("PCMU", PreEncodedAudioTrack(tone), PreEncodedAudioTrack(tone))
                                   for _ in range(10)))
    try:
        senders = [leg.transceiver.sender for call in calls for leg in (call.caller, call.callee)]
        await wait_until(lambda: all(lean_sender_of(s) is not None and lean_sender_of(s).packets > 2 for s in senders),
                         what="every lean sender to send")
        phases: dict[int, int] = {}
        for sender in senders:
            key, _ = lean_sender_of(sender).slot
            phases[key % 10] = phases.get(key % 10, 0) + 1
        # 20 streams that started together: 4 per 2 ms slot (the batch), not 20 in one.
        assert max(phases.values()) <= 4 and len(phases) >= 5, phases
        for call in calls:
            report = call.caller.report()
            assert report.received > 0 and report.lost == 0
    finally:
        await asyncio.gather(*(call.close() for call in calls))


async def test_align_start_moves_the_clock_only_before_the_first_packet():
    track = PreEncodedAudioTrack(Tone(440, 0.2), codec="PCMU")
    assert track.align_start(1.0) is False  # not prepared: no clock yet
    await track.prepare()
    at = asyncio.get_running_loop().time() + 0.013
    assert track.align_start(at) is True
    assert track.due == at
    track.take(at)
    assert track.align_start(at + 1) is False  # playing: moving it would be a jump
    assert track.due == pytest.approx(at + 0.02)


async def test_spreading_can_be_switched_off(monkeypatch):
    call, _, sender = await lean_call(options=FastPathOptions(spread=False))
    try:
        assert lean_sender_of(sender)._phased is False
    finally:
        await call.close()
    call, _, sender = await lean_call()
    try:
        assert lean_sender_of(sender)._phased is True
    finally:
        await call.close()


# --- RTCP NACK: the lean sender keeps a history and retransmits, as aiortc's loop does ------------


async def test_a_nack_from_the_far_end_gets_the_lost_packet_again(monkeypatch):
    from softphone.media import aiortc_seam

    call, _track, sender = await lean_call()
    try:
        lean = lean_sender_of(sender)
        target = (lean.sequence_number + 10) & 0xFFFF  # a packet not sent yet
        stock_send = aiortc_seam.send_rtp_packet
        dropped: list[int] = []

        def lossy_send(transport, data: bytes) -> None:
            seq = (data[2] << 8) | data[3]
            if seq == target and not dropped:
                dropped.append(seq)  # lost on the way, once
                return
            stock_send(transport, data)

        monkeypatch.setattr(aiortc_seam, "send_rtp_packet", lossy_send)
        await wait_until(lambda: bool(dropped) and call.callee.report().lost == 1, what="the gap at the receiver")
        assert lean.retransmitted == 0
        # What a browser's receiver sends for the gap (aiortc sends NACKs only for video, so by hand).
        ssrc = lean.ssrc
        await call.callee.receiver._send_rtcp_nack(ssrc, [target])
        await wait_until(lambda: call.callee.report().lost == 0, what="the retransmission to fill the gap")
        assert lean.retransmitted == 1
        report = call.callee.report()
        assert report.out_of_order >= 1 and report.duplicates == 0
        # A NACK for a packet no longer (or never) kept is ignored, as aiortc ignores it; one
        # still kept is sent again (the receiver's SRTP replay check drops that duplicate).
        kept = (lean.sequence_number - 2) & 0xFFFF
        await call.callee.receiver._send_rtcp_nack(ssrc, [(target - 1000) & 0xFFFF, kept])
        await wait_until(lambda: lean.retransmitted >= 2, what="the kept packet's retransmission")
        assert lean.retransmitted == 2  # not 3: the old one was not sent
        assert call.callee.report().duplicates == 0
    finally:
        await call.close()


async def test_the_history_is_bounded_and_keyed_by_the_wire_sequence_number():
    call, _track, sender = await lean_call()
    try:
        lean = lean_sender_of(sender)
        await wait_until(lambda: lean.packets > lean.HISTORY + 5, timeout=10, what="more packets than the history")
        kept = [d for d in lean._history if d is not None]
        assert len(kept) == lean.HISTORY == len(lean._history)
        newest = (lean.sequence_number - 1) & 0xFFFF
        assert lean._history[newest % lean.HISTORY][2:4] == newest.to_bytes(2, "big")
        await lean.retransmit((newest - lean.HISTORY) & 0xFFFF)  # overwritten by a newer packet
        assert lean.retransmitted == 0
        await lean.retransmit(newest)
        assert lean.retransmitted == 1
    finally:
        await call.close()


# --- ptime: longer packets as a load lever -----------------------------------------------------


def test_packetized_audio_joins_20_ms_payloads_for_sample_based_codecs_only():
    from softphone.errors import CodecError
    from softphone.media.encoded_audio import EncodedAudioCache

    cache = EncodedAudioCache()
    pcmu = cache.get(Tone(440, 1.0), "PCMU")
    forty = pcmu.packetized(40)
    assert forty is pcmu.packetized(40)  # made once, shared by every call
    assert pcmu.packetized(20) is pcmu
    assert forty.frames == pcmu.frames // 2 and forty.frame_ticks == 320
    assert forty.seconds == pytest.approx(0.04 * forty.frames)
    assert forty.payloads[1] == pcmu.payloads[2] + pcmu.payloads[3]
    assert pcmu.packetized(60).frame_ticks == 480
    with pytest.raises(CodecError, match="sample-based"):
        cache.get(Tone(440, 1.0), "opus").packetized(40)
    with pytest.raises(CodecError, match="ptime"):
        pcmu.packetized(30)
    with pytest.raises(CodecError, match="ptime_ms"):
        PreEncodedAudioTrack(Tone(440, 1.0), ptime_ms=10)


async def test_a_40_ms_track_sends_half_the_packets_with_twice_the_payload():
    track = PreEncodedAudioTrack(Tone(440, 1.0), ptime_ms=40)
    call = await open_loopback_call("PCMU", track, None)
    try:
        await wait_until(lambda: call.callee.report().received >= 10, what="40 ms packets")
        (counter,) = call.callee.receiver.counters.values()
        assert counter.timestamp_step == 320  # 40 ms at 8 kHz, as the RTP timestamps show
        assert counter.payload_bytes == 320 * counter.packets_received
        assert call.callee.report().lost == 0
        # packets due by the clock follow the 40 ms packets, not 20 ms ones
        assert counter.packets_due() <= counter.packets_due(0.02) // 2 + 1
    finally:
        await call.close()
