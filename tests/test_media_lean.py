"""The lean media path: pre-encoded sending, counting receiver, shared cache, cleanup.

Calls run between two aiortc peer connections in this process, over 127.0.0.1
host candidates with no ICE server (no public STUN attempt).
"""

from __future__ import annotations

import asyncio
import gc
import math
import struct
import threading
import wave
import weakref

import numpy as np
import pytest
from aiortc import RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st
from media_support import wait_until

from softphone.errors import AiortcCompatibilityError, AudioFileError, CodecError, MediaError
from softphone.media import lean
from softphone.media.lean import (
    CountingRtpReceiver,
    EncodedAudioCache,
    EncodedPacket,
    PlaybackState,
    PreEncodedAudioTrack,
    Tone,
    codec_spec,
    install_counting_receiver,
)
from softphone.media.rtp_counter import RtpStreamCounter, RtpStreamReport
from softphone.media.slot_scheduler import slot_scheduler
from softphone.media.testing import loopback_host_candidates, open_loopback_call

CODECS = ["PCMU", "PCMA", "G722", "opus"]


@pytest.fixture(autouse=True)
def _loopback_only():
    with loopback_host_candidates():
        yield


def write_tone_wav(path, frequency: float, seconds: float, rate: int = 16000) -> None:
    samples = [int(12000 * math.sin(2 * math.pi * frequency * n / rate)) for n in range(int(rate * seconds))]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))


def dominant_frequency(pcm: np.ndarray, rate: int) -> float:
    x = pcm.astype(np.float64)
    x = x - x.mean()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate)[int(np.argmax(spectrum))])


def rtp(seq: int, ts: int | None = None, pt: int = 0, ssrc: int = 1234, payload: bytes = b"\xff" * 160):
    packet = RtpPacket(payload_type=pt, sequence_number=seq & 0xFFFF,
                       timestamp=((seq * 160) if ts is None else ts) & 0xFFFFFFFF, ssrc=ssrc)
    packet.payload = payload
    return packet


# --- the bitstream is right: a real pc pair, decode on the far side --------------------


@pytest.mark.parametrize("codec", CODECS)
async def test_pre_encoded_file_decodes_to_the_same_tone(tmp_path, codec):
    wav = tmp_path / "tone.wav"
    write_tone_wav(wav, 440.0, 1.0)
    cache = EncodedAudioCache()
    sender_track = PreEncodedAudioTrack(wav, cache=cache)
    call = await open_loopback_call(codec, sender_track, None, callee_decode=True)
    try:
        remote = call.callee.receiver.track
        chunks, rate = [], None
        while sum(len(c) for c in chunks) < (rate or 8000) * 0.8:
            frame = await asyncio.wait_for(remote.recv(), 5)
            rate = frame.sample_rate
            chunks.append(frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0])
        pcm = np.concatenate(chunks)[int(rate * 0.1):]  # skip decoder warm-up
        assert abs(dominant_frequency(pcm, rate) - 440.0) < 15.0
        assert sender_track.audio.codec == codec_spec(codec)
        report = call.callee.report()
        assert report.payload_types and report.unexpected_payload_type == 0
        assert report.lost == 0 and report.duplicates == 0
    finally:
        await call.close()
    assert cache.encodes == 1


async def test_counting_receiver_counts_every_packet_and_keeps_rtcp():
    caller_track = PreEncodedAudioTrack(Tone(440, 0.5), codec=None)
    callee_track = PreEncodedAudioTrack(Tone(880, 0.5))
    call = await open_loopback_call("PCMU", caller_track, callee_track)
    try:
        assert isinstance(call.caller.receiver, CountingRtpReceiver)
        assert not call.caller.receiver.decoding
        # No decoder thread for either lean receiver.
        assert call.caller.receiver._RTCRtpReceiver__decoder_thread is None
        assert call.callee.receiver._RTCRtpReceiver__decoder_thread is None

        # RTCP receiver reports still flow: the senders learn loss and RTT from them.
        async def remote_inbound(pc):
            stats = await call.caller.transceiver.sender.getStats() if pc is call.caller.pc else \
                await call.callee.transceiver.sender.getStats()
            return [s for s in stats.values() if s.type == "remote-inbound-rtp"]

        async def rtcp_seen():
            while not (await remote_inbound(call.caller.pc) and await remote_inbound(call.callee.pc)):
                await asyncio.sleep(0.1)

        await asyncio.wait_for(rtcp_seen(), 10)
        (ri,) = await remote_inbound(call.caller.pc)
        assert ri.packetsLost == 0

        # Stop sending, then every packet sent must have been counted exactly once.
        caller_track.stop()
        callee_track.stop()
        sent = {}
        for leg in (call.caller, call.callee):
            stats = await leg.transceiver.sender.getStats()
            sent[leg is call.caller] = next(s for s in stats.values() if s.type == "outbound-rtp").packetsSent
        await wait_until(lambda: call.callee.report().received >= sent[True]
                         and call.caller.report().received >= sent[False], what="all packets counted")
        for leg, far_sent in ((call.callee, sent[True]), (call.caller, sent[False])):
            report = leg.report()
            assert far_sent > 10
            assert report.received == far_sent
            assert report.expected == far_sent
            assert report.lost == 0 and report.duplicates == 0 and report.out_of_order == 0
            assert report.payload_types == {0: far_sent}

        # getStats() of the lean receiver is fed by the counters too.
        stats = await call.callee.receiver.getStats()
        inbound = next(s for s in stats.values() if s.type == "inbound-rtp")
        assert inbound.packetsReceived == sent[True] and inbound.packetsLost == 0
    finally:
        await call.close()


async def test_non_repeating_track_ends_the_stream():
    track = PreEncodedAudioTrack(Tone(440, 0.1), codec="PCMU", repeat=False)
    packets = []
    with pytest.raises(MediaStreamError):
        for _ in range(100):
            packets.append(await asyncio.wait_for(track.recv(), 2))
    assert len(packets) == track.audio.frames
    assert track.state is PlaybackState.ENDED and track.readyState == "ended"
    # Timestamps advance by one 20 ms frame in the codec's clock.
    assert [p.pts for p in packets] == [i * 160 for i in range(len(packets))]
    assert all(isinstance(p, EncodedPacket) and bytes(p) == p.payload for p in packets)


async def test_repeating_track_loops_with_continuous_timestamps():
    track = PreEncodedAudioTrack(Tone(440, 0.06), codec="opus")
    got = [await asyncio.wait_for(track.recv(), 2) for _ in range(7)]
    n = track.audio.frames
    assert n < 7
    assert [p.pts for p in got] == [i * 960 for i in range(7)]
    assert got[n].payload is track.audio.payloads[0]
    track.stop()
    with pytest.raises(MediaStreamError):
        await track.recv()


async def test_starved_track_skips_missed_frames_instead_of_bursting():
    import time

    track = PreEncodedAudioTrack(Tone(440, 1.0), codec="PCMU")
    first = await track.recv()
    time.sleep(0.3)  # the event loop is blocked: every frame due meanwhile is late
    second = await asyncio.wait_for(track.recv(), 2)
    assert track.frames_skipped >= 10
    assert first.pts == 0 and second.pts == (1 + track.frames_skipped) * 160
    third = await asyncio.wait_for(track.recv(), 2)
    assert third.pts == second.pts + 160  # then back to one frame per 20 ms
    track.stop()


async def test_track_without_codec_or_binding_says_so():
    track = PreEncodedAudioTrack(Tone(440, 0.1))
    with pytest.raises(MediaError, match="no codec"):
        await track.recv()


async def test_pacer_wakes_at_or_after_the_deadline_and_isolates_cancellation():
    loop = asyncio.get_running_loop()
    pacer = slot_scheduler()
    assert slot_scheduler() is pacer
    deadline = loop.time() + 0.01
    futures = [pacer.sleep_until(deadline) for _ in range(5)]
    futures[2].cancel()
    await asyncio.wait_for(asyncio.gather(*futures[:2], *futures[3:]), 2)
    assert loop.time() >= deadline
    assert futures[2].cancelled() and all(f.result() is None for i, f in enumerate(futures) if i != 2)
    assert pacer.scheduled == 0


# --- the cache ------------------------------------------------------------------------


async def test_cache_encodes_once_for_many_tracks():
    cache = EncodedAudioCache()
    tone = Tone(500, 0.3)
    tracks = [PreEncodedAudioTrack(tone, codec="PCMU", cache=cache) for _ in range(8)]
    await asyncio.gather(*(t.recv() for t in tracks))
    assert cache.encodes == 1
    assert len({id(t.audio) for t in tracks}) == 1
    assert all(t.audio.payloads is tracks[0].audio.payloads for t in tracks)
    assert cache.memory_bytes == tracks[0].audio.nbytes == tracks[0].audio.frames * 160
    other = PreEncodedAudioTrack(tone, codec="opus", cache=cache)
    await other.recv()
    assert cache.encodes == 2 and other.audio is not tracks[0].audio
    for t in [*tracks, other]:
        t.stop()


def test_cache_is_thread_safe_and_shares_one_encoding():
    cache = EncodedAudioCache()
    results = []

    def worker():
        results.append(cache.get(Tone(300, 0.5), "G722"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 6 and len({id(r) for r in results}) == 1
    assert cache.encodes == 1


def test_cache_reencodes_a_rewritten_file(tmp_path):
    cache = EncodedAudioCache()
    wav = tmp_path / "prompt.wav"
    write_tone_wav(wav, 440, 0.2)
    first = cache.get(wav, "PCMU")
    assert cache.get(str(wav), "pcmu") is first
    write_tone_wav(wav, 440, 0.4)
    second = cache.get(wav, "PCMU")
    assert second is not first and second.frames > first.frames
    assert cache.encodes == 2


def test_cache_errors_name_the_culprit(tmp_path):
    cache = EncodedAudioCache()
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        cache.get(tmp_path / "missing.wav", "PCMU")
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioFileError, match=r"garbage\.wav"):
        cache.get(garbage, "PCMU")
    with pytest.raises(CodecError, match="'speex'"):
        cache.get(Tone(), "speex")
    with pytest.raises(ValueError, match="frequency"):
        Tone(frequency=30000)


async def test_loopback_call_rejects_an_unknown_codec_before_creating_anything():
    with pytest.raises(CodecError, match="'iLBC'"):
        await open_loopback_call("iLBC", None, None)


def test_encoded_payloads_match_aiortc_encoder_output():
    """The cache uses aiortc's own encoder: same frames in, same bytes out."""
    from aiortc.codecs import get_encoder

    tone = Tone(700, 0.2)
    expected = []
    encoder = get_encoder(codec_spec("PCMA").parameters())
    for frame in tone.frames():
        expected += encoder.encode(frame)[0]
    assert list(EncodedAudioCache().get(tone, "PCMA").payloads) == expected


def test_every_cached_payload_is_one_20ms_frame(tmp_path):
    """Stereo 44.1 kHz in: 20 ms packets out, in each codec's own framing."""
    wav = tmp_path / "stereo.wav"
    rate, seconds = 44100, 0.5
    frames = []
    for n in range(int(rate * seconds)):
        v = int(9000 * math.sin(2 * math.pi * 600 * n / rate))
        frames.append(struct.pack("<hh", v, -v))
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"".join(frames))
    cache = EncodedAudioCache()
    for name, size in (("PCMU", 160), ("PCMA", 160), ("G722", 160)):
        audio = cache.get(wav, name)
        assert {len(p) for p in audio.payloads} == {size}
        assert abs(audio.seconds - seconds) <= 0.04
    opus = cache.get(wav, "opus")
    # RFC 6716 TOC byte: configurations with 20 ms frames, code 0 (one frame per packet).
    assert {p[0] >> 3 for p in opus.payloads} <= {1, 5, 9, 13, 15, 19, 23, 27, 31}
    assert {p[0] & 3 for p in opus.payloads} == {0}
    assert abs(opus.seconds - seconds) <= 0.04
    assert cache.encodes == 4 and cache.memory_bytes == sum(e.nbytes for e in cache.entries())


# --- the counter, with crafted packets -----------------------------------------------


def test_counter_in_order_no_loss():
    c = RtpStreamCounter(8000)
    for i in range(100):
        c.add(rtp(1000 + i), arrival=i * 0.02)
    r = c.report()
    assert (r.received, r.expected, r.lost, r.duplicates, r.out_of_order) == (100, 100, 0, 0, 0)
    assert r.jitter_ms == pytest.approx(0.0, abs=1e-6)
    assert c.max_seq == 1099 and c.packets_lost == 0


def test_counter_detects_loss_reordering_and_duplicates():
    c = RtpStreamCounter(8000)
    order = [0, 1, 2, 4, 3, 5, 5, 8, 9, 2, 10]  # 6 and 7 lost, 3 late, 5 and 2 duplicated
    for n, seq in enumerate(order):
        c.add(rtp(seq), arrival=n * 0.02)
    r = c.report()
    assert r.expected == 11
    assert r.lost == 2
    assert r.out_of_order == 1
    assert r.duplicates == 2
    assert r.received == 9
    # RTCP's cumulative figure counts duplicates as received (RFC 3550 A.3).
    assert c.packets_lost == 11 - 11


def test_counter_handles_sequence_wrap():
    c = RtpStreamCounter(8000)
    seqs = [65530 + i for i in range(12)]  # wraps after 65535
    del seqs[8]  # lose 65538 & 0xFFFF == 2
    for n, seq in enumerate(seqs):
        c.add(rtp(seq), arrival=n * 0.02)
    r = c.report()
    assert r.expected == 12 and r.lost == 1 and r.out_of_order == 0
    assert c.extended_max_seq == 65541 and c.max_seq == 5


def test_counter_late_packet_before_the_first_one_widens_the_window():
    c = RtpStreamCounter(8000)
    for n, seq in enumerate([11, 12, 10, 13]):
        c.add(rtp(seq), arrival=n * 0.02)
    r = c.report()
    assert r.expected == 4 and r.lost == 0 and r.out_of_order == 1


def test_counter_jitter_follows_rfc3550():
    c = RtpStreamCounter(8000)
    # Packets every 20 ms of media, arrivals alternately 5 ms early and late.
    arrivals = [0.0, 0.025, 0.035, 0.065, 0.075]
    for n, t in enumerate(arrivals):
        c.add(rtp(n), arrival=t)
    j = 0.0
    for n in range(1, len(arrivals)):
        d = (arrivals[n] - arrivals[n - 1]) * 8000 - 160
        j += (abs(d) - j) / 16
    assert c.jitter_seconds == pytest.approx(j / 8000)
    assert c.jitter == int(j) and c.jitter > 0


def test_counter_fraction_lost_is_per_interval():
    c = RtpStreamCounter(8000)
    for seq in range(0, 100):
        if seq % 4 != 3:
            c.add(rtp(seq), arrival=seq * 0.02)
    assert c.fraction_lost == (24 << 8) // 99  # 0..98 expected (99 is missing), 75 received
    for seq in range(100, 200):
        c.add(rtp(seq), arrival=seq * 0.02)
    assert c.fraction_lost == (1 << 8) // 101  # 99..199 expected: only 99 is missing
    for seq in range(200, 300):
        c.add(rtp(seq), arrival=seq * 0.02)
    assert c.fraction_lost == 0


def test_counter_flags_payload_types_not_negotiated():
    c = RtpStreamCounter(8000, allowed_payload_types={0})
    c.add(rtp(1, pt=0), arrival=0)
    c.add(rtp(2, pt=8), arrival=0.02)
    r = c.report()
    assert r.unexpected_payload_type == 1 and r.payload_types == {0: 1, 8: 1}


def test_reports_add_up():
    a = RtpStreamReport(received=10, expected=12, lost=2, jitter_ms=1.0, payload_types={0: 10})
    b = RtpStreamReport(received=30, expected=30, jitter_ms=3.0, payload_types={0: 29, 8: 1})
    s = a + b
    assert (s.received, s.expected, s.lost) == (40, 42, 2)
    assert s.payload_types == {0: 39, 8: 1}
    assert s.jitter_ms == pytest.approx(2.5)
    assert s.loss_fraction == pytest.approx(2 / 42)
    assert RtpStreamReport().loss_fraction == 0.0


@settings(max_examples=60, deadline=None)
@given(
    start=st.integers(0, 65535),
    n=st.integers(2, 400),
    data=st.data(),
)
def test_counter_property_loss_and_duplicates(start, n, data):
    """Whatever is dropped, duplicated or swapped, the figures account for it exactly."""
    keep = [i for i in range(n) if i in (0, n - 1) or not data.draw(st.booleans(), label=f"drop{i}")]
    dropped = n - len(keep)
    stream = list(keep)
    dup_at = data.draw(st.lists(st.sampled_from(keep), max_size=5, unique=True), label="dups")
    for i in dup_at:
        stream.insert(stream.index(i) + 1, i)
    # Swap adjacent packets (reordering) away from the first and last.
    swaps = data.draw(st.lists(st.integers(1, max(1, len(stream) - 3)), max_size=3), label="swaps")
    for s in swaps:
        if 0 < s < len(stream) - 2 and stream[s] != stream[s + 1]:
            stream[s], stream[s + 1] = stream[s + 1], stream[s]
    c = RtpStreamCounter(8000)
    for k, i in enumerate(stream):
        c.add(rtp(start + i), arrival=k * 0.02)
    r = c.report()
    assert r.expected == n
    assert r.lost == dropped
    assert r.duplicates == len(dup_at)
    assert r.received == len(keep)


# --- the receiver hook, fed crafted packets -------------------------------------------


class FakeDtlsTransport:
    """Just enough of RTCDtlsTransport for a receiver: records RTCP it sends."""

    state = "connected"
    _stats_id = "transport_fake"

    def __init__(self):
        self.sent = []
        self.registered = []

    def _register_rtp_receiver(self, receiver, parameters):
        self.registered.append(receiver)

    def _unregister_rtp_receiver(self, receiver):
        self.registered.remove(receiver)

    async def _send_rtp(self, data):
        self.sent.append(data)

    def _get_stats(self):
        return {}


def receive_parameters(pts=(0,)):
    from aiortc.rtcrtpparameters import RTCRtcpParameters, RTCRtpCodecParameters, RTCRtpReceiveParameters

    codecs = [RTCRtpCodecParameters(mimeType="audio/PCMU", clockRate=8000, channels=1, payloadType=pt)
              for pt in pts]
    return RTCRtpReceiveParameters(codecs=codecs, rtcp=RTCRtcpParameters(cname="x", ssrc=1))


async def test_hook_counts_crafted_packets_without_decoding():
    transport = FakeDtlsTransport()
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    threads_before = threading.active_count()
    hooked = install_counting_receiver(receiver)
    assert hooked is receiver and isinstance(receiver, CountingRtpReceiver)
    await receiver.receive(receive_parameters())
    assert transport.registered == [receiver]
    assert threading.active_count() == threads_before  # no decoder thread
    for seq in [0, 1, 2, 3, 5, 4, 6, 6, 9]:
        await receiver._handle_rtp_packet(rtp(100 + seq), arrival_time_ms=0)
    await receiver._handle_rtp_packet(rtp(110, pt=96), arrival_time_ms=0)  # not negotiated
    r = receiver.report()
    assert r.expected == 11 and r.lost == 2 and r.out_of_order == 1 and r.duplicates == 1
    assert receiver.unknown_payload_type == 1 and r.unexpected_payload_type == 1
    assert r.payload_types == {0: 9, 96: 1}
    assert receiver.getSynchronizationSources()[0].source == 1234

    # A disabled (held) receiver ignores packets, as aiortc's does.
    receiver._enabled = False
    await receiver._handle_rtp_packet(rtp(111), arrival_time_ms=0)
    assert receiver.report().expected == 11
    receiver._enabled = True

    # RTCP receiver reports are built from our counters.
    receiver._set_rtcp_ssrc(42)
    await asyncio.wait_for(_first_rtcp(transport), 5)
    from aiortc.rtp import RtcpPacket

    rr = RtcpPacket.parse(transport.sent[0])[0]
    assert rr.reports[0].ssrc == 1234 and rr.reports[0].highest_sequence == 110

    # Stopping ends the remote track so a consumer never hangs.
    await receiver.stop()
    with pytest.raises(MediaStreamError):
        await asyncio.wait_for(receiver.track.recv(), 2)


async def _first_rtcp(transport):
    while not transport.sent:
        await asyncio.sleep(0.05)


async def test_hook_in_decode_mode_still_counts_once():
    transport = FakeDtlsTransport()
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    install_counting_receiver(receiver, decode=True)
    await receiver.receive(receive_parameters())
    try:
        for seq in range(20):
            await receiver._handle_rtp_packet(rtp(seq), arrival_time_ms=0)
        r = receiver.report()
        assert r.received == 20 and r.expected == 20 and r.duplicates == 0
        frame = await asyncio.wait_for(receiver.track.recv(), 5)
        assert frame.sample_rate == 8000
    finally:
        await receiver.stop()


async def test_decoded_frames_nobody_reads_are_bounded():
    transport = FakeDtlsTransport()
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    install_counting_receiver(receiver, decode=True)
    await receiver.receive(receive_parameters())
    try:
        queue = receiver.track._queue
        assert isinstance(queue, lean.DroppingFrameQueue)
        for seq in range(200):
            await receiver._handle_rtp_packet(rtp(seq), arrival_time_ms=0)
        # The jitter buffer holds a few packets back; everything else gets decoded.
        await wait_until(lambda: receiver.frames_dropped + queue.qsize() >= 190, what="decoding")
        assert queue.qsize() <= CountingRtpReceiver.DECODED_BACKLOG
        assert receiver.frames_dropped >= 190 - CountingRtpReceiver.DECODED_BACKLOG
        frame = await asyncio.wait_for(receiver.track.recv(), 2)
        assert frame.pts > 0  # the oldest frames were the ones dropped
    finally:
        await receiver.stop()
    with pytest.raises(MediaStreamError):
        for _ in range(CountingRtpReceiver.DECODED_BACKLOG + 1):
            await asyncio.wait_for(receiver.track.recv(), 2)


async def test_a_reader_waiting_before_media_starts_gets_the_frames():
    """Sinks start on the pc's "track" event, before the receiver starts: bounding must not strand them."""
    transport = FakeDtlsTransport()
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    install_counting_receiver(receiver, decode=True)
    reader = asyncio.ensure_future(receiver.track.recv())
    await asyncio.sleep(0)
    await receiver.receive(receive_parameters())
    try:
        for seq in range(10):
            await receiver._handle_rtp_packet(rtp(seq), arrival_time_ms=0)
        frame = await asyncio.wait_for(reader, 5)
        assert frame.sample_rate == 8000
    finally:
        reader.cancel()
        await receiver.stop()


async def test_install_refuses_late_or_foreign_receivers(monkeypatch):
    transport = FakeDtlsTransport()
    receiver = RTCRtpReceiver("audio", transport)
    receiver._track = RemoteStreamTrack(kind="audio")
    await receiver.receive(receive_parameters())
    try:
        with pytest.raises(MediaError, match="already receiving"):
            install_counting_receiver(receiver)
    finally:
        await receiver.stop()

    class Custom(RTCRtpReceiver):
        pass

    with pytest.raises(AiortcCompatibilityError, match="Custom"):
        install_counting_receiver(Custom("audio", transport))
    # An untested aiortc version is refused earlier, by MediaConfig.fast_path (tests/test_aiortc_seam.py).


# --- cleanup ----------------------------------------------------------------------------


async def test_released_calls_are_freed_and_leave_no_threads():
    threads_before = {t.ident for t in threading.enumerate()}
    refs = []
    for decode in (False, True):
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(Tone(440, 0.2)),
                                        PreEncodedAudioTrack(Tone(880, 0.2)),
                                        caller_decode=decode, callee_decode=decode)
        await wait_until(lambda c=call: c.callee.report().received > 5, what="media")
        # Decoded frames nobody reads pile up in the remote track's queue; release drops them.
        refs += [weakref.ref(call.caller.pc), weakref.ref(call.callee.pc),
                 weakref.ref(call.caller.receiver), weakref.ref(call.caller.track)]
        await call.close()
        await call.close()  # idempotent
        assert call.caller.pc.connectionState == "closed"
        if decode:
            assert call.callee.receiver.track._queue.qsize() <= 1
        del call
    await asyncio.sleep(0)
    gc.collect()
    assert [r() for r in refs] == [None] * len(refs)
    leftover = [t for t in threading.enumerate() if t.ident not in threads_before and "decoder" in t.name]
    assert leftover == []


# --- wired into the WebRTC description handler ------------------------------------------


async def test_handler_lean_call_counts_rtp_and_still_carries_dtmf():
    from media_support import negotiate, wait_connected

    from softphone.media.config import MediaConfig
    from softphone.media.description_handler import WebRtcDescriptionHandler

    # The offer prefers opus, the answerer only speaks PCMU: the bound tracks follow.
    a_track = PreEncodedAudioTrack(Tone(440, 0.5))
    b_track = PreEncodedAudioTrack(Tone(880, 0.5))
    a = WebRtcDescriptionHandler(MediaConfig(codecs=("opus", "PCMU"), decode=False), source=a_track)
    b = WebRtcDescriptionHandler(MediaConfig(codecs=("PCMU",), decode=False), source=b_track)
    digits = []
    b.on("dtmf", lambda event: digits.append(event.digit))
    try:
        assert isinstance(a.receiver, CountingRtpReceiver) and not a.receiver.decoding
        await negotiate(a, b)
        await wait_connected(a, b)
        await wait_until(lambda: a.receiver.report().received > 10 and b.receiver.report().received > 10,
                         what="media both ways")
        assert a_track.audio.codec.name == b_track.audio.codec.name == "PCMU"
        assert await a.send_dtmf("1#", duration_ms=100, gap_ms=50)
        await wait_until(lambda: digits == ["1", "#"], what="DTMF digits")
        report = b.receiver.report()
        # DTMF packets share the audio sequence space: counted, no false loss.
        assert report.lost == 0 and report.duplicates == 0
        events = [pt for pt in report.payload_types if pt != 0]
        assert 0 in report.payload_types and len(events) == 1 and 96 <= events[0] <= 127
        assert a.remote_track is not None and a._drain_task is None  # nothing decodes, nothing to drain
        quality = await b.stats()
        assert quality.packets_received > 0
    finally:
        await a.close()
        await b.close()


async def test_release_gives_up_on_a_close_that_hangs(caplog):
    class HangingPc:
        def getTransceivers(self):
            return []

        async def close(self):
            await asyncio.sleep(3600)

    await asyncio.wait_for(lean.release_peer_connection(HangingPc(), timeout=0.05), 5)
    assert "did not close" in caplog.text
