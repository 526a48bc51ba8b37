"""Audio sinks and recorders: files of the right length holding the right tone, meters, detectors."""

from __future__ import annotations

import asyncio
import fractions

import aioice.ice
import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softphone.errors import AudioFileError, ConfigurationError, MediaError
from softphone.events import DtmfEvent
from softphone.media import tones
from softphone.media.recorder import CallRecorder, Recorder
from softphone.media.sinks import (
    AudioSink,
    Blackhole,
    DtmfDetector,
    LevelMeter,
    SinkFanout,
    SinkState,
    ToneDetector,
    frame_to_mono,
)
from softphone.media.sources import DtmfToneSource, EndBehavior, SilenceSource, SwitchableSource, ToneSource

FRAME = 0.020


def decode(path) -> tuple[np.ndarray, int, int]:
    """(mono float samples, rate, channels) of a whole file, decoded by PyAV."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        channels = stream.codec_context.channels
        resampler = av.AudioResampler(format="s16", layout=stream.codec_context.layout.name,
                                      rate=stream.codec_context.sample_rate)
        pcm = bytearray()
        for frame in c.decode(stream):
            for out in resampler.resample(frame):
                pcm += bytes(out.planes[0])[: out.samples * 2 * channels]
        for out in resampler.resample(None):
            pcm += bytes(out.planes[0])[: out.samples * 2 * channels]
        raw = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float64) / 32768
        return raw, stream.codec_context.sample_rate, channels


def stereo_channels(path) -> tuple[np.ndarray, np.ndarray, int]:
    raw, rate, channels = decode(path)
    assert channels == 2
    pairs = raw.reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1], rate


def frame_of(x: np.ndarray, rate: int, pts: int | None) -> av.AudioFrame:
    pcm = tones.float_to_pcm16(x)
    frame = av.AudioFrame(format="s16", layout="mono", samples=pcm.size)
    frame.planes[0].update(pcm.tobytes())
    frame.sample_rate = rate
    if pts is not None:
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, rate)
    return frame


async def frames_from(source, count: int) -> list[av.AudioFrame]:
    return [await source.recv() for _ in range(count)]


# --- Recorder -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["wav", "ogg", "opus", "mp3", "flac", "m4a"])
async def test_recording_has_the_duration_and_the_tone(tmp_path, ext):
    path = tmp_path / f"rec.{ext}"
    recorder = Recorder(path)
    for frame in await frames_from(ToneSource([660.0], realtime=False), 50):
        recorder.write(frame)
    assert recorder.duration == pytest.approx(1.0)
    recorder.close()
    assert recorder.state is SinkState.CLOSED
    x, rate, _ = decode(path)
    assert x.size / rate == pytest.approx(1.0, abs=FRAME)
    freq, level = tones.dominant_frequency(x[rate // 5: rate * 4 // 5], rate)
    assert tones.frequencies_close(freq, 660.0)
    assert level == pytest.approx(-15.05, abs=1.5)


async def test_recorder_reads_a_track_until_it_ends(tmp_path):
    source = ToneSource([1000.0], duration=0.3, realtime=False, on_end=EndBehavior.STOP, sample_rate=8000)
    recorder = Recorder(tmp_path / "track.wav")
    await recorder.start(source)
    await recorder.wait_closed(timeout=10)
    assert recorder.state is SinkState.CLOSED
    x, rate, _ = decode(recorder.path)
    assert rate == 8000 and x.size == 2400
    with pytest.raises(MediaError, match="already reading"):
        await recorder.start(source)
    await recorder.stop()


async def test_gaps_in_pts_are_padded_with_silence(tmp_path):
    tone = tones.sine_mix([440.0], 960 * 10, 48000, 0.3)
    padded, plain = Recorder(tmp_path / "padded.wav"), Recorder(tmp_path / "plain.wav", pad_gaps=False)
    for i in [0, 1, 2, 7, 8, 9]:  # frames 3..6 lost
        frame = frame_of(tone[i * 960:(i + 1) * 960], 48000, pts=50_000 + i * 960)
        padded.write(frame)
        plain.write(frame)
        assert frame.pts == 50_000 + i * 960  # shared frames are not modified
    padded.close()
    plain.close()
    assert padded.padded_samples == 4 * 960
    x, _, _ = decode(padded.path)
    assert x.size == 10 * 960
    assert not x[3 * 960: 7 * 960].any()
    assert x[7 * 960:].any()
    y, _, _ = decode(plain.path)
    assert y.size == 6 * 960


def test_big_pts_jumps_are_discontinuities_not_silence(tmp_path):
    rec = Recorder(tmp_path / "jump.wav", max_gap=1.0)
    x = tones.sine_mix([440.0], 960, 48000, 0.3)
    rec.write(frame_of(x, 48000, pts=0))
    rec.write(frame_of(x, 48000, pts=48000 * 3600))   # an hour later: a reset, not loss
    rec.write(frame_of(x, 48000, pts=960))            # and back
    rec.write(frame_of(x, 48000, pts=None))           # no timestamps at all
    rec.close()
    assert rec.discontinuities == 2 and rec.padded_samples == 0
    assert decode(rec.path)[0].size == 4 * 960


async def test_input_format_changes_mid_recording(tmp_path):
    rec = Recorder(tmp_path / "mixed.flac")
    for frame in await frames_from(ToneSource([500.0], sample_rate=8000, realtime=False), 10):
        rec.write(frame)
    for frame in await frames_from(ToneSource([500.0], sample_rate=48000, channels=2, realtime=False), 10):
        frame.pts = None
        rec.write(frame)
    rec.close()
    x, rate, _ = decode(rec.path)
    assert rate == 8000
    assert x.size / rate == pytest.approx(0.4, abs=FRAME)
    assert tones.frequencies_close(tones.dominant_frequency(x[2400:3000], rate)[0], 500.0)


async def test_opus_recording_moves_to_a_supported_rate(tmp_path):
    rec = Recorder(tmp_path / "r.opus")
    for frame in await frames_from(ToneSource([300.0], sample_rate=44100, realtime=False), 10):
        rec.write(frame)
    rec.close()
    assert rec.rate == 48000
    x, rate, _ = decode(rec.path)
    assert x.size / rate == pytest.approx(0.2, abs=FRAME)


def test_recorder_errors_name_the_path(tmp_path):
    with pytest.raises(AudioFileError, match=r"rec\.xyz.*unknown audio file extension"):
        Recorder(tmp_path / "rec.xyz")
    with pytest.raises(AudioFileError, match=r"nope.*does not exist"):
        Recorder(tmp_path / "nope" / "rec.wav")
    with pytest.raises(AudioFileError, match=r"rec\.m4a.*encoder 'no_such_codec'"):
        Recorder(tmp_path / "rec.m4a", codec="no_such_codec")
    with pytest.raises(AudioFileError, match=r"rec\.bin.*format 'nut'"):
        Recorder(tmp_path / "rec.bin", format="nut")
    with pytest.raises(ConfigurationError, match="channels"):
        Recorder(tmp_path / "rec.wav", channels=6)


@pytest.mark.parametrize("ext, most", [("wav", 0.0), ("flac", 0.0), ("ogg", 0.021), ("mp3", 0.025),
                                       ("m4a", 0.025)])
def test_empty_recording_is_still_a_valid_file(tmp_path, ext, most):
    rec = Recorder(tmp_path / f"empty.{ext}")
    rec.close()
    rec.close()  # idempotent
    x, rate, _ = decode(rec.path)
    assert rate == 48000
    assert x.size / rate <= most
    assert not x.any()


def test_a_failed_write_marks_the_sink_failed(tmp_path):
    rec = Recorder(tmp_path / "bad.wav")
    weird = av.AudioFrame(format="s16", layout="mono", samples=0)
    weird.sample_rate = 48000
    with pytest.raises(Exception):  # noqa: B017 - whatever PyAV raises for an empty frame
        rec.write(weird)
    assert rec.state is SinkState.FAILED and rec.error is not None
    rec.write(frame_of(np.zeros(960), 48000, 0))  # ignored now
    assert rec.frames == 1


# --- meters and detectors -----------------------------------------------------------


def test_frame_to_mono_handles_formats_and_layouts():
    x = tones.sine_mix([440.0], 480, 48000, 0.5)
    pcm = tones.float_to_pcm16(x)
    stereo = av.AudioFrame(format="s16", layout="stereo", samples=480)
    stereo.planes[0].update(np.repeat(pcm, 2).tobytes())
    stereo.sample_rate = 48000
    for fmt in ["s16", "s16p", "fltp", "flt", "s32", "dbl", "u8"]:
        frame = av.AudioResampler(format=fmt, layout="stereo", rate=48000).resample(stereo)[0]
        tolerance = 1 / 64 if fmt == "u8" else 2e-4
        assert np.allclose(frame_to_mono(frame), x, atol=tolerance), fmt
    assert np.allclose(frame_to_mono(frame_of(x, 48000, 0)), x, atol=2e-4)


async def test_level_meter_measures_rms_and_peak():
    meter = LevelMeter(name="remote")
    for frame in await frames_from(ToneSource([1000.0], amplitude=0.5, realtime=False), 10):
        meter.write(frame)
    for frame in await frames_from(SilenceSource(realtime=False), 10):
        meter.write(frame)
    assert len(meter.history) == 20 and meter.frames == 20
    assert meter.history[0].rms_dbfs == pytest.approx(-9.03, abs=0.05)
    assert meter.history[0].peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert meter.history[15].rms_dbfs == tones.DB_FLOOR
    assert meter.history[5].t == pytest.approx(0.1)
    assert meter.rms_dbfs == pytest.approx(-9.03 - 3.01, abs=0.05)
    assert meter.peak_dbfs == pytest.approx(-6.02, abs=0.05)
    assert meter.silent_fraction == pytest.approx(0.5)
    assert meter.recent_rms_dbfs(0.1) == tones.DB_FLOOR
    assert meter.summary()["seconds"] == pytest.approx(0.4)


def test_level_meter_history_is_bounded():
    meter = LevelMeter(history_max=5)
    for _ in range(12):
        meter.measure(np.full(160, 0.1), 8000)
    assert len(meter.history) == 5 and meter.history[0].t == pytest.approx(7 * 0.02)


async def test_tone_detector_reports_configured_tones_and_pitch():
    detector = ToneDetector([440.0, 1000.0, 2000.0], analysis_seconds=0.3)
    events = []
    detector.on("tone", events.append)
    ended = []
    detector.on("tone_end", ended.append)
    waiter = asyncio.ensure_future(detector.wait_for(1000.0, timeout=5))
    for frame in await frames_from(ToneSource([440.0], duration=0.5, realtime=False), 25):
        detector.write(frame)
    assert detector.present() == [440.0] and not waiter.done()
    for frame in await frames_from(ToneSource([1000.0], realtime=False, amplitude=0.1), 25):
        detector.write(frame)
    event = await waiter
    assert event.freq == 1000.0 and event.level_dbfs == pytest.approx(-23.0, abs=1.0)
    assert [e.freq for e in events] == [440.0, 1000.0]
    assert ended[0].freq == 440.0 and ended[0].duration == pytest.approx(0.5, abs=0.05)
    freq, _ = detector.dominant_frequency()
    assert tones.frequencies_close(freq, 1000.0)
    assert detector.heard(440.0) and not detector.heard(2000.0)
    assert detector.max_level[2000.0] < -40
    detector.close()
    assert [d.freq for d in detector.detections] == [440.0, 1000.0]
    with pytest.raises(ConfigurationError, match="freq"):
        await detector.wait_for(123.0, timeout=1)


def test_tone_detector_ignores_noise_and_tone_in_noise():
    rng = np.random.default_rng(3)
    detector = ToneDetector([1000.0])
    detector.feed(rng.normal(0, 0.2, 8000), 8000)
    assert not detector.heard(1000.0)
    detector.feed(tones.sine_mix([1000.0], 8000, 8000, 0.3) + rng.normal(0, 0.05, 8000), 8000)
    assert detector.present() == [1000.0]


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_dtmf_detector_on_a_track_with_noise(rate):
    source = DtmfToneSource(tones.DTMF_DIGITS, sample_rate=rate, realtime=False, on_end=EndBehavior.STOP)
    detector = DtmfDetector()
    starts = []
    detector.on("digit_start", lambda d, t: starts.append(d))
    unified = []  # the same DtmfEvent shape as digits from SIP INFO and RFC 4733
    detector.on("dtmf", unified.append)
    rng = np.random.default_rng(rate)

    class Noisy:
        """A track wrapper adding white noise 15 dB below the tones."""

        async def recv(self):
            frame = await source.recv()
            x = frame_to_mono(frame)
            return frame_of(x + rng.normal(0, 0.25 / np.sqrt(2) * 10 ** (-15 / 20), x.size), rate, frame.pts)

    waiter = asyncio.ensure_future(detector.wait_digits(16, timeout=10))
    await detector.start(Noisy())
    assert await waiter == tones.DTMF_DIGITS
    await detector.wait_closed(timeout=5)
    assert "".join(starts) == tones.DTMF_DIGITS
    assert all(e.duration == pytest.approx(0.1, abs=0.015) for e in detector.events)
    assert "".join(e.digit for e in unified) == tones.DTMF_DIGITS
    assert all(isinstance(e, DtmfEvent) and e.via == "inband" and abs(e.duration_ms - 100) <= 15 for e in unified)


def test_dtmf_detector_survives_a_rate_change():
    detector = DtmfDetector()
    detector.feed(tones.dtmf_samples("12", rate=8000).astype(float) / 32768, 8000)
    detector.feed(tones.dtmf_samples("34", rate=48000).astype(float) / 32768, 48000)
    detector.close()
    assert detector.digits == "1234"
    assert detector.events[2].start > detector.events[1].start


async def test_blackhole_counts():
    hole = Blackhole()
    await hole.start(ToneSource(duration=0.2, realtime=False, on_end=EndBehavior.STOP))
    await hole.wait_closed(timeout=5)
    assert hole.frames == 10 and hole.samples == 9600 and hole.seconds == pytest.approx(0.2)


# --- fan-out ------------------------------------------------------------------------


class Exploding(AudioSink):
    def _write(self, frame):
        raise RuntimeError("sink bug")


async def test_fanout_shares_one_track_and_drops_a_failing_sink(tmp_path):
    source = DtmfToneSource("5#", sample_rate=8000, realtime=False, on_end=EndBehavior.STOP)
    recorder, meter, dtmf, bad = Recorder(tmp_path / "f.wav"), LevelMeter(), DtmfDetector(), Exploding()
    fanout = SinkFanout(source, [recorder, meter, bad, dtmf])
    await fanout.start()
    await fanout.wait(timeout=10)
    assert bad.state is SinkState.FAILED and bad not in fanout.sinks
    assert dtmf.digits == "5#"
    assert recorder.state is SinkState.CLOSED and meter.state is SinkState.CLOSED
    assert recorder.frames == meter.frames == fanout.frames == 17
    assert decode(recorder.path)[0].size == 17 * 160
    with pytest.raises(MediaError, match="twice"):
        await fanout.start()


async def test_stopping_a_live_track_finalises_the_file(tmp_path):
    source = ToneSource([440.0])  # real time, endless
    recorder = Recorder(tmp_path / "live.ogg")
    await recorder.start(source)
    await asyncio.sleep(0.2)
    await recorder.stop()
    assert recorder.state is SinkState.CLOSED
    x, rate, _ = decode(recorder.path)
    assert x.size / rate == pytest.approx(recorder.duration, abs=FRAME)
    assert source.readyState == "live"  # the sink never stops the track it reads


# --- both directions ----------------------------------------------------------------


class StepClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def test_call_recorder_stereo_aligns_directions(tmp_path):
    clock = StepClock()
    rec = CallRecorder(None, None, tmp_path / "call.wav", clock=clock)
    remote = ToneSource([500.0], sample_rate=8000, realtime=False)    # like PCMU
    local = ToneSource([1500.0], channels=2, realtime=False)          # 48 kHz stereo
    for i in range(50):
        rec.remote_port.write(await remote.recv())
        if i >= 10:  # local starts 0.2 s late
            rec.local_port.write(await local.recv())
        clock.now += FRAME
    rec.close()
    left, right, rate = stereo_channels(tmp_path / "call.wav")
    assert rate == 48000
    assert left.size / rate == pytest.approx(1.0, abs=FRAME)
    assert tones.frequencies_close(tones.dominant_frequency(left[rate // 2:], rate)[0], 500.0)
    assert tones.frequencies_close(tones.dominant_frequency(right[rate // 2:], rate)[0], 1500.0)
    assert not right[: int(0.18 * rate)].any()
    assert right[int(0.25 * rate):].any()


async def test_call_recorder_fills_a_direction_that_went_quiet(tmp_path):
    clock = StepClock()
    rec = CallRecorder(None, None, tmp_path / "quiet.flac", clock=clock, max_lag=0.1)
    remote, local = ToneSource([700.0], realtime=False), ToneSource([900.0], realtime=False)
    for i in range(50):
        rec.remote_port.write(await remote.recv())
        if i < 10:  # local stops after 0.2 s (e.g. on hold)
            rec.local_port.write(await local.recv())
        clock.now += FRAME
    assert rec.recorder.written >= int(0.7 * 48000)  # not held back by the quiet side
    rec.remote_port.close()  # remote ended: the file is finalised
    assert rec.closed
    left, right, rate = stereo_channels(tmp_path / "quiet.flac")
    assert left.size / rate == pytest.approx(1.0, abs=FRAME)
    assert right[: int(0.19 * rate)].any() and not right[int(0.21 * rate):].any()


async def test_call_recorder_reads_remote_and_taps_local(tmp_path):
    remote = ToneSource([400.0], duration=0.4, on_end=EndBehavior.STOP)
    local = ToneSource([1200.0])
    sender = Blackhole()  # stands in for the RTCRtpSender pulling the local track
    rec = CallRecorder(remote, local, tmp_path / "both.wav")
    await rec.start()
    await sender.start(local)
    await asyncio.wait_for(rec.remote_port.wait_closed(), 10)
    await rec.stop()
    await sender.stop()
    assert rec.closed and local._taps == []
    left, right, rate = stereo_channels(tmp_path / "both.wav")
    assert 0.38 <= left.size / rate <= 1.0  # 0.4 s of remote audio plus however late the local side started
    assert tones.frequencies_close(tones.dominant_frequency(left[: rate // 4], rate)[0], 400.0)
    assert tones.frequencies_close(tones.dominant_frequency(right[: rate // 4], rate)[0], 1200.0)


async def test_call_recorder_separate_files(tmp_path):
    rec = CallRecorder(None, None, tmp_path / "call.mp3", mode="separate")
    for frame in await frames_from(ToneSource([600.0], realtime=False), 25):
        rec.remote_port.write(frame)
    for frame in await frames_from(ToneSource([800.0], realtime=False), 15):
        rec.local_port.write(frame)
    await rec.stop()
    assert [p.name for p in rec.paths] == ["call-remote.mp3", "call-local.mp3"]
    for path, freq, seconds in [(rec.remote_path, 600.0, 0.5), (rec.local_path, 800.0, 0.3)]:
        x, rate, _ = decode(path)
        assert x.size / rate == pytest.approx(seconds, abs=FRAME)
        assert tones.frequencies_close(tones.dominant_frequency(x[rate // 10:], rate)[0], freq)
    with pytest.raises(ConfigurationError, match="mode"):
        CallRecorder(None, None, tmp_path / "x.wav", mode="mono")


# --- end to end over aiortc ---------------------------------------------------------


@pytest.fixture
def loopback_ice(monkeypatch):
    """Host candidates on 127.0.0.1 only (aioice skips loopback by default)."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def send_over_aiortc(source, sinks, codec: str, until) -> None:
    """Two loopback peer connections: ``source`` sent by one, read into ``sinks`` on the other."""
    from aiortc.rtcrtpsender import RTCRtpSender

    caller = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    callee = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    received = asyncio.get_running_loop().create_future()

    @callee.on("track")
    def on_track(track):
        received.set_result(track)

    try:
        transceiver = caller.addTransceiver(source, direction="sendonly")
        prefs = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == f"audio/{codec}"]
        transceiver.setCodecPreferences(prefs)
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        track = await asyncio.wait_for(received, 10)
        fanout = SinkFanout(track, sinks)
        await fanout.start()
        for _ in range(300):
            if until():
                break
            await asyncio.sleep(0.05)
        await fanout.stop()
    finally:
        await caller.close()
        await callee.close()


@pytest.mark.parametrize("codec", ["opus", "PCMU"])
async def test_tone_sent_over_aiortc_is_recorded(tmp_path, loopback_ice, codec):
    source = ToneSource([1000.0], amplitude=0.3)
    recorder = Recorder(tmp_path / f"e2e-{codec}.wav")
    meter = LevelMeter()
    await send_over_aiortc(source, [recorder, meter], codec, until=lambda: meter.seconds >= 1.0)
    assert recorder.state is SinkState.CLOSED
    x, rate, _ = decode(recorder.path)
    assert rate == (48000 if codec == "opus" else 8000)
    assert x.size / rate >= 0.9
    freq, level = tones.dominant_frequency(x[-rate // 2:], rate)
    assert tones.frequencies_close(freq, 1000.0)
    # aiortc's Opus encoder upmixes mono to stereo with libswresample's -3 dB pan law.
    expected = 20 * np.log10(0.3 / np.sqrt(2)) - (3.01 if codec == "opus" else 0.0)
    assert level == pytest.approx(expected, abs=1.0)
    assert meter.recent_rms_dbfs(0.5) == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize("codec", ["opus", "PCMU"])
async def test_in_band_dtmf_survives_the_codec(loopback_ice, codec):
    source = DtmfToneSource("159#*0D", on_ms=80, off_ms=60)
    detector = DtmfDetector()
    await send_over_aiortc(source, [detector], codec, until=lambda: len(detector.events) >= 7)
    assert detector.digits == "159#*0D"
    assert all(e.duration == pytest.approx(0.08, abs=0.02) for e in detector.events)


class BrokenTrack:
    """A track that fails with something other than MediaStreamError after a few frames."""

    def __init__(self, frames: list[av.AudioFrame]):
        self.frames = list(frames)

    async def recv(self):
        if not self.frames:
            raise RuntimeError("decoder crashed")
        return self.frames.pop(0)


async def test_a_broken_track_still_finalises_the_file(tmp_path):
    frames = await frames_from(ToneSource([440.0], realtime=False), 5)
    recorder = Recorder(tmp_path / "broken.wav")
    await recorder.start(BrokenTrack(frames))
    await recorder.wait_closed(timeout=5)
    assert decode(recorder.path)[0].size == 5 * 960


async def test_call_recorder_as_a_handler_sink(tmp_path):
    """CallRecorder(None, local, ...).start(remote) is the sink shape the description handler uses."""
    local = ToneSource([1200.0], realtime=False)
    rec = CallRecorder(None, local, tmp_path / "sink.wav")
    await rec.start(ToneSource([400.0], duration=0.2, realtime=False, on_end=EndBehavior.STOP))
    for _ in range(10):
        await local.recv()  # the sender pulling the local track
    await asyncio.wait_for(rec.remote_port.wait_closed(), 5)
    await rec.stop()
    left, right, rate = stereo_channels(rec.path)
    assert tones.frequencies_close(tones.dominant_frequency(left, rate)[0], 400.0)
    assert tones.frequencies_close(tones.dominant_frequency(right, rate)[0], 1200.0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lost=st.lists(st.booleans(), min_size=2, max_size=40))
def test_recording_length_follows_the_timeline_whatever_is_lost(tmp_path, lost):
    """Frames 0 and n-1 always arrive; any pattern of loss in between is padded back."""
    lost = [False, *lost[1:-1], False] if len(lost) > 2 else [False, False]
    path = tmp_path / "prop.flac"
    rec = Recorder(path)
    x = tones.sine_mix([300.0], 160, 8000, 0.2)
    for i, gone in enumerate(lost):
        if not gone:
            rec.write(frame_of(x, 8000, pts=123_456 + i * 160))
    rec.close()
    assert rec.padded_samples == sum(lost) * 160
    assert decode(path)[0].size == len(lost) * 160


def test_meters_keep_stream_time_across_rate_changes():
    meter, detector = LevelMeter(), ToneDetector([1000.0])
    for rate in (8000, 48000):
        x = tones.sine_mix([1000.0], rate // 2, rate, 0.3)  # 0.5 s at each rate
        for i in range(0, x.size, rate // 50):
            meter.measure(x[i:i + rate // 50], rate)
        detector.feed(x, rate)
    detector.close()
    assert meter.history[-1].t == pytest.approx(0.98)
    assert [round(d.start, 2) for d in detector.detections] == [0.0, 0.5]


async def test_explicit_format_and_bitrate(tmp_path):
    frames = await frames_from(ToneSource([440.0], realtime=False), 100)
    small, large = Recorder(tmp_path / "call.rec", format="ogg", bitrate=12000), Recorder(
        tmp_path / "big.ogg", bitrate=96000)
    for frame in frames:
        small.write(frame)
        large.write(frame)
    small.close()
    large.close()
    assert small.codec_name == "libopus"
    assert small.path.stat().st_size < large.path.stat().st_size
    x, rate, _ = decode(small.path)
    assert x.size / rate == pytest.approx(2.0, abs=FRAME)
    assert tones.frequencies_close(tones.dominant_frequency(x[rate:], rate)[0], 440.0)


async def test_a_failing_close_is_reported_not_hung(tmp_path):
    class Fragile(Blackhole):
        def _close(self):
            raise OSError("disk full")

    sink = Fragile()
    failures = []
    sink.on("failed", failures.append)
    sink.write(frame_of(np.zeros(160), 8000, 0))
    with pytest.raises(OSError):
        sink.close()
    assert sink.state is SinkState.FAILED and isinstance(failures[0], OSError)
    await sink.wait_closed(timeout=1)  # returns at once: the sink is done, if unhappily
    sink.write(frame_of(np.zeros(960), 48000, 0))
    assert sink.seconds == pytest.approx(0.02)


async def wait_until(predicate, timeout: float = 10.0) -> None:
    async def _poll():
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_poll(), timeout)


@pytest.mark.peer
async def test_sources_and_sinks_behind_the_description_handler_through_coturn(tmp_path, coturn):
    """The handler seam (source=, sinks= through aiortc's MediaRelay) over a real TURN relay:
    a switchable source plays a tone, then in-band DTMF; the far end records, meters and decodes."""
    from media_support import negotiate, relay_config, wait_connected

    from softphone.media.description_handler import WebRtcDescriptionHandler

    source = SwitchableSource(ToneSource([700.0], amplitude=0.3))
    recorder, meter, dtmf = Recorder(tmp_path / "handler.wav"), LevelMeter(), DtmfDetector()
    config = relay_config(coturn, codecs=("PCMU",), telephone_event=False)
    a = WebRtcDescriptionHandler(config, source=source)
    b = WebRtcDescriptionHandler(config, sinks=[recorder, meter, dtmf])
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await wait_until(lambda: meter.seconds >= 0.6)
        source.switch(DtmfToneSource("42"))
        await dtmf.wait_digits(2, timeout=10)
    finally:
        await a.close()
        await b.close()
    assert dtmf.digits == "42"
    assert recorder.state is SinkState.CLOSED
    x, rate, _ = decode(recorder.path)
    assert rate == 8000 and x.size / rate >= 0.6
    assert tones.frequencies_close(tones.dominant_frequency(x[rate // 5: rate // 2], rate)[0], 700.0)
    assert "".join(d.digit for d in tones.decode_dtmf(x, rate)) == "42"  # the file holds the digits too


@pytest.mark.parametrize("name, rate", [("keys8k.wav", 8000), ("keys48k.flac", 48000), ("keys48k.ogg", 48000)])
async def test_all_digits_from_a_noisy_file(tmp_path, name, rate):
    """A file of all 16 digits with white noise 15 dB down, played by FileSource into DtmfDetector."""
    from softphone.media.sources import FileSource, write_audio

    pcm = tones.dtmf_samples(tones.DTMF_DIGITS, rate=rate).astype(np.float64) / 32768
    rng = np.random.default_rng(rate)
    x = np.concatenate([np.zeros(rate // 10), pcm])
    x += rng.normal(0, 0.25 / np.sqrt(2) * 10 ** (-15 / 20), x.size)
    path = write_audio(tmp_path / name, tones.float_to_pcm16(x), rate)
    detector = DtmfDetector()
    await detector.start(FileSource(path, sample_rate=rate, realtime=False, on_end=EndBehavior.STOP))
    await detector.wait_closed(timeout=10)
    assert detector.digits == tones.DTMF_DIGITS


async def test_level_meter_waits_for_sound_and_silence():
    meter = LevelMeter()
    sound = asyncio.ensure_future(meter.wait_sound(above_dbfs=-30.0, for_seconds=0.1, timeout=5))
    silence = asyncio.ensure_future(meter.wait_silence(below_dbfs=-50.0, for_seconds=0.2, timeout=5))
    await asyncio.sleep(0)
    blip = tones.sine_mix([500.0], 160, 8000, 0.3)
    plan = [np.zeros(160)] * 5 + [blip] * 3 + [np.zeros(160)] * 3 + [blip] * 10 + [np.zeros(160)] * 12
    for block in plan:
        meter.measure(block, 8000)
    assert await sound == pytest.approx(0.22)    # the 60 ms blip was too short, the 200 ms one counts
    assert await silence == pytest.approx(0.42)  # 100 ms and 60 ms of quiet are too short; the tail counts
    with pytest.raises(TimeoutError):
        await meter.wait_sound(above_dbfs=-5.0, timeout=0.05)
    assert meter._level_waiters == []


async def test_tone_wait_for_sees_a_beep_that_already_ended():
    detector = ToneDetector([1000.0])
    detector.feed(np.concatenate([tones.sine_mix([1000.0], 800, 8000, 0.3), np.zeros(1600)]), 8000)
    assert detector.present() == []
    event = await detector.wait_for(1000.0, timeout=1)
    assert event.duration == pytest.approx(0.1, abs=0.04)
    with pytest.raises(TimeoutError):
        await detector.wait_for(1000.0, timeout=0.05, include_past=False)


async def test_sinks_join_and_leave_a_running_fanout(tmp_path):
    source = ToneSource([440.0], duration=0.4, sample_rate=8000, realtime=False, on_end=EndBehavior.STOP)
    early, late = LevelMeter(), LevelMeter()
    fanout = SinkFanout(source, [early])
    for _ in range(5):
        fanout.feed(await source.recv())
    fanout.add(late)
    for _ in range(5):
        fanout.feed(await source.recv())
    fanout.remove(early)
    await fanout.start()
    await fanout.wait(timeout=5)
    assert (early.frames, late.frames, fanout.frames) == (10, 15, 20)
    assert late.state is SinkState.CLOSED and early.state is SinkState.RUNNING  # removed: not closed by it
    early.close()
    early.write(frame_of(np.zeros(160), 8000, 0))
    assert early.frames == 10  # a closed sink ignores frames
