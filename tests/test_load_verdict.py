"""The live audio verdict on real encoded audio (aiortc's PCMU and Opus encoders via the lean path).

Signals come from softphone.media.tones generators, written to WAV files and encoded
by the lean path's encoder cache (the same payloads a far end sends); packets are fed
as the receive path does, with explicit tick times (no sleeping).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from softphone.load.verdict import (
    G711_TABLES,
    AudioStatus,
    ExpectedPrompt,
    LegAudioCheck,
    VerdictTicker,
    clip_wav,
    summarize,
)
from softphone.media.lean import codec_spec, encode_source
from softphone.media.tones import dominant_frequency, float_to_pcm16, sine_mix

RATE = 48000


class LightRtpPacket:
    """The header fields and payload the receive path hands on (as its fixed-header parse does)."""

    __slots__ = ("marker", "payload", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(self, payload_type, marker, sequence_number, timestamp, ssrc, payload):
        self.payload_type, self.marker, self.sequence_number = payload_type, marker, sequence_number
        self.timestamp, self.ssrc, self.payload = timestamp, ssrc, payload


def _wav(path: Path, pieces: list[tuple[float, float]]) -> Path:
    """A mono 48 kHz WAV of (frequency or 0 for silence, seconds) pieces."""
    parts = []
    for freq, seconds in pieces:
        n = int(RATE * seconds)
        parts.append(sine_mix([freq], n, RATE, amplitude=0.4) if freq else np.zeros(n))
    pcm = float_to_pcm16(np.concatenate(parts))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    return path


def _payloads(tmp_path: Path, codec: str, pieces: list[tuple[float, float]], name: str = "src") -> list[bytes]:
    return list(encode_source(_wav(tmp_path / f"{name}.wav", pieces), codec_spec(codec)).payloads)


def _play(check: LegAudioCheck, payloads: list[bytes], *, t0: float = 0.0, pt: int = 0,
          drop: range | None = None) -> float:
    """Feed payloads as 20 ms packets, ticking once per simulated second; returns the end time."""
    t = t0
    for k, payload in enumerate(payloads):
        if drop is None or k not in drop:
            check.on_packet(LightRtpPacket(pt, 0, k & 0xFFFF, k * 160, 1234, payload))
        t = t0 + (k + 1) * 0.02
        if (k + 1) % 50 == 0:
            check.tick(t)
    return t


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_heard_and_expected_tone(tmp_path, codec):
    payloads = _payloads(tmp_path, codec, [(440, 5.0)])
    check = LegAudioCheck(codec, leg="a", expect=ExpectedPrompt.tone(440), clip_dir=tmp_path / "clips", start=0.0)
    end = _play(check, payloads)
    v = check.finish(end)
    assert v.status is AudioStatus.HEARD, v.reason
    assert v.prompt is True and v.prompt_score >= 0.9
    assert v.packets == len(payloads) and v.audible_seconds > 4.0
    assert not v.failed and v.clip is None and not (tmp_path / "clips").exists()


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_wrong_prompt_fails_and_keeps_audio(tmp_path, codec):
    payloads = _payloads(tmp_path, codec, [(440, 4.0)])
    check = LegAudioCheck(codec, leg="b", expect=ExpectedPrompt.tone(660), clip_dir=tmp_path, start=0.0)
    v = check.finish(_play(check, payloads))
    assert v.status is AudioStatus.HEARD and v.prompt is False and v.failed
    assert v.clip is not None and v.clip.is_file()
    with wave.open(str(v.clip)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    x = np.frombuffer(frames, dtype="<i2").astype(np.float64) / 32768.0
    assert x.size > rate  # seconds of the failed leg's audio
    freq, _ = dominant_frequency(x[-rate // 2:], rate)
    assert abs(freq - 440) < 10  # the clip is what was heard


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_silent_gap_in_the_audio(tmp_path, codec):
    payloads = _payloads(tmp_path, codec, [(440, 2.0), (0, 2.0), (440, 2.0)])
    check = LegAudioCheck(codec, leg="c", gap=1.0, clip_dir=tmp_path, start=0.0)
    v = check.finish(_play(check, payloads))
    assert v.status is AudioStatus.GAPS, v.reason
    (gap,) = v.gaps
    # Opus probes judge whole seconds; G.711 is exact to the packet (20 ms, plus codec delay).
    tolerance = 1.01 if codec == "opus" else 0.1
    assert abs(gap.seconds - 2.0) <= tolerance and abs(gap.start - 2.0) <= tolerance
    assert v.clip is not None and v.clip.is_file() and v.failed


def test_gap_of_missing_packets(tmp_path):
    payloads = _payloads(tmp_path, "pcmu", [(440, 6.0)])
    check = LegAudioCheck("pcmu", leg="d", gap=1.0, start=0.0)
    v = check.finish(_play(check, payloads, drop=range(110, 190)))  # 1.6 s of packets lost
    assert v.status is AudioStatus.GAPS
    assert abs(v.gaps[0].seconds - 1.6) < 0.05


def test_short_silences_are_not_gaps(tmp_path):
    payloads = _payloads(tmp_path, "pcmu", [(440, 1.5), (0, 0.5), (440, 2.0)])
    check = LegAudioCheck("pcmu", leg="e", gap=1.0, start=0.0)
    assert check.finish(_play(check, payloads)).status is AudioStatus.HEARD


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_one_way_silent_rtp(tmp_path, codec):
    payloads = _payloads(tmp_path, codec, [(0, 4.0)])
    check = LegAudioCheck(codec, leg="f", clip_dir=tmp_path, start=0.0)
    v = check.finish(_play(check, payloads))
    assert v.status is AudioStatus.ONE_WAY and "silent" in v.reason
    assert v.packets == len(payloads) and v.clip is not None


def test_one_way_no_rtp_at_all():
    check = LegAudioCheck("opus", leg="g", start=0.0)
    for t in (1.0, 2.0, 3.0):
        check.tick(t)
    assert check.failure == "nothing heard from the far end"
    v = check.finish(4.0)
    assert v.status is AudioStatus.ONE_WAY and v.reason == "no RTP from the far end" and v.packets == 0


def test_hold_is_not_a_silent_gap(tmp_path):
    payloads = _payloads(tmp_path, "pcmu", [(440, 2.0), (0, 3.0), (440, 2.0)])
    check = LegAudioCheck("pcmu", leg="held", gap=1.0, start=0.0)
    for k, payload in enumerate(payloads):
        t = (k + 1) * 0.02
        if k == 100:
            check.pause(t - 0.02)   # on hold: the far end goes quiet
        if k == 250:
            check.resume(t - 0.02)  # retrieved
        check.on_packet(LightRtpPacket(0, 0, k, k * 160, 1, payload))
        if (k + 1) % 50 == 0:
            check.tick(t)
    v = check.finish(len(payloads) * 0.02)
    assert v.status is AudioStatus.HEARD and v.gaps == (), v.reason
    # the same audio without the hold is a gap
    again = LegAudioCheck("pcmu", leg="not-held", gap=1.0, start=0.0)
    assert again.finish(_play(again, payloads)).status is AudioStatus.GAPS


def test_late_audio_after_the_grace_period_is_a_gap(tmp_path):
    payloads = _payloads(tmp_path, "pcmu", [(0, 3.5), (440, 2.5)])
    check = LegAudioCheck("pcmu", leg="h", grace=2.0, gap=1.0, start=0.0)
    v = check.finish(_play(check, payloads))
    assert v.status is AudioStatus.GAPS and abs(v.first_audible - 3.5) < 0.1
    assert v.gaps[0].start == pytest.approx(2.0) and v.gaps[0].seconds == pytest.approx(1.5, abs=0.1)


def test_too_short_is_unchecked():
    check = LegAudioCheck("pcmu", leg="i", start=0.0)
    assert check.finish(0.5).status is AudioStatus.UNCHECKED


@pytest.mark.parametrize("codec", ["pcmu", "opus"])
def test_fingerprints_of_a_pre_encoded_far_end(tmp_path, codec):
    menu = _payloads(tmp_path, codec, [(660, 0.3), (0, 0.1), (880, 0.4), (520, 0.5)], name="menu")
    other = _payloads(tmp_path, codec, [(700, 0.3), (0, 0.1), (900, 0.4), (500, 0.5)], name="other")
    expect = ExpectedPrompt.encoded(menu, codec, label="menu.wav")
    assert menu[17] not in expect.fingerprints  # silence says nothing about which stream it is
    assert len(expect.fingerprints) >= 0.6 * len(set(menu))

    yes = LegAudioCheck(codec, leg="yes", expect=expect, start=0.0)
    v = yes.finish(_play(yes, menu * 4))  # the far end loops its prompt
    assert v.method == "fingerprint" and v.prompt is True and v.prompt_score > 0.8
    assert v.status is AudioStatus.HEARD

    no = LegAudioCheck(codec, leg="no", expect=expect, clip_dir=tmp_path, start=0.0)
    v = no.finish(_play(no, other * 4))
    assert v.prompt is False and v.prompt_score < 0.1 and v.failed and v.clip is not None
    assert v.status is AudioStatus.HEARD  # audible, just not the expected prompt


def test_dtmf_event_packets_are_not_audio(tmp_path):
    payloads = _payloads(tmp_path, "pcmu", [(440, 3.0)])
    check = LegAudioCheck("pcmu", leg="j", start=0.0)
    check.on_packet(LightRtpPacket(0, 0, 0, 0, 1, payloads[0]))
    for k in range(20):
        check.on_packet(LightRtpPacket(101, 0, k, 0, 1, b"\x01\x0a\x00\xa0"))
    v = check.finish(_play(check, payloads[1:], t0=0.02))
    assert v.packets == len(payloads) and v.status is AudioStatus.HEARD


def test_g711_tables_match_ffmpeg(tmp_path):
    import av

    for codec, name in (("pcmu", "pcm_mulaw"), ("pcma", "pcm_alaw")):
        ctx = av.CodecContext.create(name, "r")
        ctx.sample_rate = 8000
        ctx.layout = "mono"
        data = bytes(range(256))
        (frame,) = ctx.decode(av.Packet(data))
        expected = frame.to_ndarray().reshape(-1).astype(np.float64) / 32768.0
        assert np.allclose(G711_TABLES[codec].astype(np.float64), expected), codec


def test_clip_wav_is_a_wav():
    data = clip_wav([b"\xff" * 160] * 10, "pcmu")
    assert data[:4] == b"RIFF" and len(data) > 3200


def test_summarize_counts():
    checks = [LegAudioCheck("pcmu", leg=str(k), start=0.0) for k in range(3)]
    verdicts = [c.finish(t) for c, t in zip(checks, (0.2, 3.0, 3.0), strict=True)]
    counts = summarize(verdicts)
    assert counts["unchecked"] == 1 and counts["one_way"] == 2 and counts["heard"] == 0


async def test_hooked_on_a_lean_call_through_the_description_handler():
    """On the real receive path: a lean (counting, non-decoding) receiver feeds the verdict."""
    from media_support import negotiate, wait_connected, wait_until

    from softphone.media.config import MediaConfig
    from softphone.media.description_handler import WebRtcDescriptionHandler
    from softphone.media.lean import CountingRtpReceiver, PreEncodedAudioTrack, Tone

    far = PreEncodedAudioTrack(Tone(440, 0.5))
    a = WebRtcDescriptionHandler(MediaConfig(codecs=("PCMU",), decode=False),
                                 source=PreEncodedAudioTrack(Tone(880, 0.5)))
    b = WebRtcDescriptionHandler(MediaConfig(codecs=("PCMU",), decode=False), source=far)
    ticker = VerdictTicker(interval=0.25)
    try:
        assert isinstance(a.receiver, CountingRtpReceiver) and not a.receiver.decoding
        check = LegAudioCheck("pcmu", leg="live", expect=ExpectedPrompt.tone(440)).attach(a.receiver)
        ticker.add(check)
        await negotiate(a, b)
        await wait_connected(a, b)
        await wait_until(lambda: check._count >= 100, timeout=10, what="100 packets through the tap")
        v = ticker.finish(check)
        assert v.status is AudioStatus.HEARD, v.reason
        assert v.prompt is True and v.packets >= 100
        assert "count_rtp" not in a.receiver.__dict__  # detached on finish
        assert ticker.tick_seconds > 0
    finally:
        ticker.close()
        await a.close()
        await b.close()


def test_bench_verdict_runs_small(capsys):
    import importlib.util
    from pathlib import Path as _P

    path = _P(__file__).resolve().parent.parent / "bench" / "verdict.py"
    spec = importlib.util.spec_from_file_location("bench_verdict", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--legs", "2", "--seconds", "2"]) == 0
    out = capsys.readouterr().out
    for method in ("hook only", "g711 tables", "opus probe", "fingerprint"):
        assert method in out


async def test_ticker_spreads_legs_over_the_interval_and_ticks_each_once():
    """Each callback ticks one slice of the legs; over an interval every leg is ticked once."""
    from media_support import wait_until

    class Leg:
        def __init__(self, n: int) -> None:
            self.leg, self.ticks = f"leg{n}", []

        def tick(self, now: float) -> None:
            self.ticks.append(now)

    ticker = VerdictTicker(interval=0.2, slices=4)
    legs = [ticker.add(Leg(n)) for n in range(10)]
    try:
        assert len(ticker) == 10
        assert sorted(len(g) for g in ticker._slices) == [2, 2, 3, 3]  # least full slice first
        await wait_until(lambda: all(len(leg.ticks) >= 3 for leg in legs), timeout=10, what="3 ticks per leg")
        times = sorted({t for leg in legs for t in leg.ticks})
        assert len(times) >= 4                           # several callbacks, not one for all legs
        for leg in legs:
            gaps = [b - a for a, b in zip(leg.ticks, leg.ticks[1:], strict=False)]
            assert all(g > 0.1 for g in gaps), gaps      # once per interval, not once per slice
        ticker.remove(legs[0])
        assert len(ticker) == 9 and sum(len(g) for g in ticker._slices) == 9
    finally:
        ticker.close()
    assert len(ticker) == 0
