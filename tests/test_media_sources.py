"""Audio sources: frame format, pacing, files of every kind, end handling, composition."""

from __future__ import annotations

import fractions
import subprocess
import wave

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from softphone.errors import AudioFileError, ConfigurationError
from softphone.media import sources, tones
from softphone.media.sources import (
    DtmfToneSource,
    EndBehavior,
    FileSource,
    PcmSource,
    PlaylistSource,
    SilenceSource,
    SourceState,
    SwitchableSource,
    ToneSource,
    generate_tone_file,
    write_wav,
)


class FakeClock:
    """Time that only moves when the source sleeps (or the test says so)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def mono(frame: av.AudioFrame) -> np.ndarray:
    return tones.pcm16_to_float(bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)],
                                len(frame.layout.channels))


def read_all(source: sources.AudioSource, chunk: int = 160, limit: int = 10_000_000) -> np.ndarray:
    pcm = bytearray()
    while not source.finished and len(pcm) < limit:
        pcm += source.read(chunk)
    return tones.pcm16_to_float(bytes(pcm), source.channels)


async def test_tone_frames_are_20ms_s16_mono_48k_with_pts():
    src = ToneSource([440.0], realtime=False)
    frames = [await src.recv() for _ in range(5)]
    for i, f in enumerate(frames):
        assert f.format.name == "s16" and f.layout.name == "mono"
        assert f.sample_rate == 48000 and f.samples == 960
        assert f.pts == i * 960
        assert f.time_base == fractions.Fraction(1, 48000)
    x = np.concatenate([mono(f) for f in frames])
    freq, level = tones.dominant_frequency(x, 48000)
    assert tones.frequencies_close(freq, 440.0)
    assert level == pytest.approx(20 * np.log10(0.25 / np.sqrt(2)), abs=0.2)
    assert src.frames_sent == 5 and src.kind == "audio"


async def test_pacing_follows_the_start_time_like_aiortc():
    clock = FakeClock()
    src = SilenceSource(clock=clock, sleep=clock.sleep, sample_rate=8000)
    await src.recv()
    await src.recv()
    await src.recv()
    assert clock.sleeps == pytest.approx([0.02, 0.02])
    clock.now += 0.05  # the consumer was late by 2.5 frames
    await src.recv()   # due at +0.06, now is +0.09: no sleep
    await src.recv()   # due at +0.08: still late, no sleep
    await src.recv()   # due at +0.10: sleeps the remaining 0.01
    assert clock.sleeps == pytest.approx([0.02, 0.02, 0.01])
    assert src.frames_sent == 6


async def test_realtime_false_never_sleeps():
    clock = FakeClock()
    src = ToneSource(clock=clock, sleep=clock.sleep, realtime=False)
    for _ in range(10):
        await src.recv()
    assert clock.sleeps == []


async def test_stereo_and_other_rates():
    src = ToneSource([1000.0], sample_rate=16000, channels=2, ptime=0.010, realtime=False)
    frame = await src.recv()
    assert frame.layout.name == "stereo" and frame.samples == 160 and frame.sample_rate == 16000
    raw = np.frombuffer(bytes(frame.planes[0]), dtype="<i2").reshape(-1, 2)
    assert (raw[:, 0] == raw[:, 1]).all() and raw.any()


@pytest.mark.parametrize("kwargs, field", [
    ({"channels": 3}, "channels"),
    ({"sample_rate": 4000}, "sample_rate"),
    ({"ptime": 0.5}, "ptime"),
    ({"freqs": [30000.0]}, "freqs"),
    ({"freqs": [440.0, 880.0], "amplitude": 0.6}, "amplitude"),
    ({"duration": -1}, "duration"),
])
def test_bad_parameters_name_the_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=field):
        ToneSource(**kwargs)


@pytest.mark.parametrize("ext", ["wav", "ogg", "opus", "mp3", "flac", "m4a"])
@pytest.mark.parametrize("rate", [8000, 48000])
def test_file_source_plays_every_format_resampled(tmp_path, ext, rate):
    path = generate_tone_file(tmp_path / f"tone.{ext}", [700.0], duration=0.5, rate=44100)
    src = FileSource(path, sample_rate=rate, realtime=False)
    x = read_all(src)
    assert abs(x.size - rate // 2) <= rate * 0.02 + 1, x.size / rate  # within one frame
    freq, _ = tones.dominant_frequency(x[rate // 10: rate * 4 // 10], rate)
    assert tones.frequencies_close(freq, 700.0)
    assert src.state is SourceState.FINISHED


async def test_once_file_goes_silent_and_reports_played(tmp_path):
    path = generate_tone_file(tmp_path / "beep.wav", [1000.0], duration=0.1, rate=48000)
    src = FileSource(path, realtime=False)
    played = []
    src.on("played", played.append)
    frames = [await src.recv() for _ in range(8)]
    assert await src.played(timeout=1) is True
    assert played == [None]
    assert all(mono(f).any() for f in frames[:5])
    assert not any(mono(f).any() for f in frames[5:])
    assert src.readyState == "live"


async def test_once_file_can_end_the_track(tmp_path):
    path = generate_tone_file(tmp_path / "beep.flac", [1000.0], duration=0.1, rate=48000)
    src = FileSource(path, realtime=False, on_end=EndBehavior.STOP)
    frames = []
    with pytest.raises(MediaStreamError):
        while True:
            frames.append(await src.recv())
    assert len(frames) == 5
    assert src.readyState == "ended"
    with pytest.raises(MediaStreamError):
        await src.recv()
    assert await src.played(timeout=1) is True


async def test_played_is_false_when_stopped_early(tmp_path):
    src = ToneSource(duration=10.0, realtime=False)
    await src.recv()
    src.stop()
    assert await src.played(timeout=1) is False
    assert src.state is SourceState.ENDED


@pytest.mark.parametrize("preload", [False, True])
def test_looping_file_repeats_without_gaps(tmp_path, preload):
    path = generate_tone_file(tmp_path / "loop.ogg", [500.0], duration=0.1, rate=48000)
    src = FileSource(path, loop=True, preload=preload, realtime=False)
    pcm = b"".join(src.read(960) for _ in range(25))  # 0.5 s from a 0.1 s file
    assert len(pcm) == 25 * 960 * 2
    assert not src.finished
    x = tones.pcm16_to_float(pcm)
    for k in range(5):
        segment = x[k * 4800 + 1200: k * 4800 + 3600]
        assert tones.frequencies_close(tones.dominant_frequency(segment, 48000)[0], 500.0)
    if not preload:
        assert src.loops >= 4


def test_preload_matches_streaming_and_is_cached(tmp_path):
    path = generate_tone_file(tmp_path / "p.mp3", [900.0], duration=2.5, rate=48000)
    streamed = read_all(FileSource(path, realtime=False, sample_rate=8000))
    a = FileSource(path, preload=True, realtime=False, sample_rate=8000)
    preloaded = read_all(a)
    assert preloaded.size == streamed.size == pytest.approx(20000, abs=160)
    assert np.allclose(preloaded, streamed, atol=2 / 32768)
    assert sources.decode_file(path, 8000, 1) is sources.decode_file(path, 8000, 1)
    with pytest.raises(AudioFileError, match=r"p\.mp3: longer than"):
        sources.decode_file(path, 16000, 1, max_seconds=1.0)


def test_bad_files_raise_audio_file_error_naming_the_path(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioFileError, match=r"missing\.wav.*no such file"):
        FileSource(missing)
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(AudioFileError, match=r"garbage\.mp3"):
        FileSource(garbage)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"empty\.wav"):
        FileSource(empty)
    text = tmp_path / "notes.ogg"
    text.write_text("this is not audio\n" * 50)
    with pytest.raises(AudioFileError, match=r"notes\.ogg"):
        FileSource(text)
    with pytest.raises(AudioFileError, match=r"missing\.wav"):
        sources.decode_file(missing)


def test_file_without_audio_stream(tmp_path):
    path = tmp_path / "video.mkv"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("ffv1", rate=5)
        stream.width, stream.height = 16, 16
        stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame(16, 16, "yuv420p")
        for packet in stream.encode(frame):
            c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    with pytest.raises(AudioFileError, match=r"video\.mkv.*no audio stream"):
        FileSource(path)


def test_speech_file_from_espeak_and_sox(tmp_path):
    raw = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "Welcome to the test line."], check=True, timeout=60)
    flac = tmp_path / "speech.flac"
    subprocess.run(["sox", str(raw), "-r", "16000", str(flac)], check=True, timeout=60)
    with wave.open(str(raw)) as w:
        expected = w.getnframes() / w.getframerate()
    x = read_all(FileSource(flac, realtime=False, sample_rate=48000), chunk=960)
    assert x.size / 48000 == pytest.approx(expected, abs=0.03)
    assert tones.rms_dbfs(x) > -40.0


def test_playlist_plays_items_in_order(tmp_path):
    path = generate_tone_file(tmp_path / "third.wav", [1200.0], duration=0.1, rate=8000)
    playlist = PlaylistSource([ToneSource([400.0], duration=0.1), ToneSource([800.0], duration=0.1), path],
                              realtime=False)
    started = []
    playlist.on("item", started.append)
    x = read_all(playlist, chunk=960)
    assert x.size == pytest.approx(14400, abs=960)
    found = [tones.dominant_frequency(x[i * 4800 + 1000: i * 4800 + 3800], 48000)[0] for i in range(3)]
    for f, want in zip(found, [400.0, 800.0, 1200.0], strict=True):
        assert tones.frequencies_close(f, want)
    assert started == [0, 1, 2]
    assert playlist.finished


def test_playlist_loop_and_bad_items():
    playlist = PlaylistSource([ToneSource([300.0], duration=0.02), SilenceSource(duration=0.02)], loop=True,
                              realtime=False, sample_rate=8000)
    x = tones.pcm16_to_float(playlist.read(160 * 6))
    assert x.size == 960 and not playlist.finished
    for k in range(3):
        assert x[k * 320: k * 320 + 160].any()
        assert not x[k * 320 + 160: k * 320 + 320].any()
    with pytest.raises(ConfigurationError, match="items"):
        PlaylistSource([])
    with pytest.raises(ConfigurationError, match="items"):
        PlaylistSource([42])


def test_playlist_of_empty_items_does_not_spin_forever():
    playlist = PlaylistSource([ToneSource(duration=0.0)], loop=True, realtime=False)
    assert playlist.read(960) == b""
    assert playlist.finished


async def test_switching_mid_stream_keeps_the_track_and_pts():
    first = ToneSource([500.0])
    switch = SwitchableSource(first, realtime=False)
    frames = [await switch.recv() for _ in range(5)]
    old = switch.switch(ToneSource([1500.0]))
    assert old is first
    frames += [await switch.recv() for _ in range(5)]
    switch.switch(None, stop_previous=True)
    frames += [await switch.recv() for _ in range(2)]
    assert [f.pts for f in frames] == [i * 960 for i in range(12)]
    assert tones.frequencies_close(tones.dominant_frequency(mono(frames[2]), 48000)[0], 500.0)
    assert tones.frequencies_close(tones.dominant_frequency(mono(frames[7]), 48000)[0], 1500.0)
    assert not mono(frames[11]).any()
    assert switch.switches == 3
    assert switch.readyState == "live"


async def test_switch_to_a_file_at_another_rate(tmp_path):
    path = generate_tone_file(tmp_path / "p.wav", [600.0], duration=0.2, rate=16000)
    switch = SwitchableSource(sample_rate=8000, realtime=False)
    assert not mono(await switch.recv()).any()
    switch.switch(str(path))
    frames = [await switch.recv() for _ in range(12)]
    x = np.concatenate([mono(f) for f in frames])
    assert tones.frequencies_close(tones.dominant_frequency(x[:1600], 8000)[0], 600.0)
    assert not x[1700:].any()  # the 0.2 s file ended: silence, track still live
    assert switch.current is not None and switch.current.finished


@pytest.mark.parametrize("rate", [8000, 48000])
async def test_dtmf_tone_source_is_decodable(rate):
    src = DtmfToneSource("147*", sample_rate=rate, realtime=False)
    frames = []
    while not src.finished:
        frames.append(await src.recv())
    assert await src.played(timeout=1) is True
    src.add("0#")
    assert not src.finished
    while not src.finished:
        frames.append(await src.recv())
    x = np.concatenate([mono(f) for f in frames])
    assert "".join(d.digit for d in tones.decode_dtmf(x, rate)) == "147*0#"
    assert src.digits_sent == "147*0#"


def test_silence_and_pcm_sources():
    s = SilenceSource(duration=0.05, sample_rate=8000, realtime=False)
    assert s.read(400) == bytes(800)
    assert s.finished
    pcm = tones.float_to_pcm16(tones.sine_mix([1000.0], 8000, 8000, 0.5))
    p = PcmSource(pcm, 8000, sample_rate=48000, realtime=False)
    assert p.duration == pytest.approx(1.0, abs=0.001)
    x = read_all(p, chunk=960)
    assert tones.frequencies_close(tones.dominant_frequency(x, 48000)[0], 1000.0)


async def test_taps_see_every_sent_frame():
    src = ToneSource(realtime=False)
    seen = []
    src.add_tap(seen.append)

    def broken(frame):
        raise RuntimeError("tap bug")

    src.add_tap(broken)
    frames = [await src.recv() for _ in range(3)]
    assert seen == frames
    src.remove_tap(seen.append)
    await src.recv()
    assert len(seen) == 3


def test_reset_replays_and_stopped_tracks_refuse(tmp_path):
    src = ToneSource([440.0], duration=0.02, realtime=False)
    first = src.read(960)
    assert src.read(960) == b"" and src.finished
    src.reset()
    assert src.read(960) == first
    src.stop()
    with pytest.raises(ConfigurationError):
        src.reset()


def test_write_wav_accepts_floats_ints_and_bytes(tmp_path):
    x = tones.sine_mix([440.0], 800, 8000, 0.5)
    for i, samples in enumerate([x, tones.float_to_pcm16(x), tones.float_to_pcm16(x).tobytes()]):
        path = write_wav(tmp_path / f"w{i}.wav", samples, 8000)
        with wave.open(str(path)) as w:
            assert (w.getnframes(), w.getframerate(), w.getsampwidth()) == (800, 8000, 2)
    with pytest.raises(AudioFileError, match="nodir"):
        write_wav(tmp_path / "nodir" / "x.wav", x, 8000)


def test_composites_convert_every_item_to_their_format(tmp_path):
    """Items made at other rates (DTMF at 48 kHz, silence at 16 kHz, a 22.05 kHz file) play at 8 kHz."""
    speechlike = generate_tone_file(tmp_path / "p.wav", [350.0, 440.0], duration=0.3, rate=22050)
    items = [speechlike, SilenceSource(duration=0.1, sample_rate=16000), DtmfToneSource("1234#"),
             ToneSource([1000.0], duration=0.2)]
    playlist = PlaylistSource(items, realtime=False, sample_rate=8000)
    x = read_all(playlist)
    expected = 0.3 + 0.1 + 5 * 0.170 + 0.2
    assert x.size / 8000 == pytest.approx(expected, abs=0.02)
    assert "".join(d.digit for d in tones.decode_dtmf(x, 8000)) == "1234#"
    tail = x[-1200:]
    assert tones.frequencies_close(tones.dominant_frequency(tail, 8000)[0], 1000.0)


@pytest.mark.parametrize("make", [
    lambda: ToneSource([500.0], duration=0.4),
    lambda: SilenceSource(duration=0.4),
    lambda: DtmfToneSource("12", on_ms=130, off_ms=70),
    lambda: PcmSource(np.full(19200, 1000, dtype="<i2"), 48000),
])
def test_format_change_mid_stream_keeps_the_remaining_time(make):
    src = make()
    first = len(src.read(4800)) // 2 / 48000          # 0.1 s at 48 kHz
    src.set_format(8000, 2)
    rest = 0
    while not src.finished:
        rest += len(src.read(160)) // 4
    assert first + rest / 8000 == pytest.approx(0.4, abs=0.005)


async def test_a_file_failing_mid_way_finishes_with_the_error(tmp_path, monkeypatch):
    path = generate_tone_file(tmp_path / "ok.wav", [440.0], duration=1.0, rate=48000)
    src = FileSource(path, realtime=False)
    await src.recv()

    def broken():
        raise AudioFileError(f"{path}: decoding failed (simulated)")

    monkeypatch.setattr(src._decoder, "_decode_more", broken)
    frames = [await src.recv() for _ in range(60)]  # runs past the buffered part
    assert src.state is SourceState.FINISHED and src.readyState == "live"
    assert not mono(frames[-1]).any()
    with pytest.raises(AudioFileError, match="simulated"):
        await src.played(timeout=1)


async def test_pacing_survives_a_rate_change_of_the_sent_track():
    clock = FakeClock()
    src = ToneSource(clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await src.recv()
    src.set_format(8000, 1)
    frames = [await src.recv() for _ in range(2)]
    assert clock.sleeps == pytest.approx([0.02] * 4)
    assert [f.sample_rate for f in frames] == [8000, 8000]
    assert [f.pts for f in frames] == [480, 640]  # 60 ms and 80 ms at 8 kHz


def test_a_played_file_is_released_and_reopened_on_reset(tmp_path):
    path = generate_tone_file(tmp_path / "once.wav", [440.0], duration=0.1, rate=8000)
    src = FileSource(path, sample_rate=8000, realtime=False)
    first = read_all(src)
    assert src._decoder._container is None
    src.reset()
    assert np.array_equal(read_all(src), first)


def test_bad_paths_in_composites_fail_early_and_change_nothing(tmp_path):
    with pytest.raises(AudioFileError, match=r"gone\.mp3"):
        PlaylistSource([ToneSource(), tmp_path / "gone.mp3"])
    tone = ToneSource([440.0])
    switch = SwitchableSource(tone, realtime=False)
    with pytest.raises(AudioFileError, match=r"gone\.wav"):
        switch.switch(tmp_path / "gone.wav")
    assert switch.current is tone and switch.switches == 1


def test_stereo_files_are_mixed_down_and_mono_files_spread(tmp_path):
    left = tones.float_to_pcm16(tones.sine_mix([500.0], 8000, 8000, 0.3))
    right = tones.float_to_pcm16(tones.sine_mix([1500.0], 8000, 8000, 0.3))
    interleaved = np.empty(16000, dtype="<i2")
    interleaved[0::2], interleaved[1::2] = left, right
    path = write_wav(tmp_path / "lr.wav", interleaved, 8000, channels=2)
    x = read_all(FileSource(path, sample_rate=8000, realtime=False))
    levels = tones.tone_levels(x, [500.0, 1500.0], 8000)
    assert abs(levels[0] - levels[1]) < 0.5 and min(levels) > -30  # both sides are heard
    spread = FileSource(generate_tone_file(tmp_path / "m.wav", [700.0], 0.2, rate=8000), channels=2,
                        sample_rate=8000, realtime=False)
    raw = np.frombuffer(spread.read(800), dtype="<i2").reshape(-1, 2)
    assert (raw[:, 0] == raw[:, 1]).all() and raw.any()
