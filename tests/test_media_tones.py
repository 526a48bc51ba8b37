"""Signal processing in softphone.media.tones: levels, Goertzel, pitch, DTMF."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.errors import ConfigurationError
from softphone.media import tones


def noisy(x: np.ndarray, snr_db: float, seed: int = 7) -> np.ndarray:
    """``x`` plus white noise ``snr_db`` below the RMS of its non-silent part."""
    rng = np.random.default_rng(seed)
    signal_rms = tones.rms(x[x != 0])
    return x + rng.normal(0.0, signal_rms * 10 ** (-snr_db / 20), x.size)


def test_levels_of_a_sine_and_of_silence():
    x = tones.sine_mix([1000.0], 4800, 48000, amplitude=0.5)
    assert tones.rms_dbfs(x) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=0.01)
    assert tones.peak_dbfs(x) == pytest.approx(20 * math.log10(0.5), abs=0.01)
    assert tones.rms_dbfs(np.zeros(100)) == tones.DB_FLOOR
    assert tones.peak_dbfs(np.zeros(0)) == tones.DB_FLOOR


def test_pcm16_round_trip_and_clipping():
    x = np.array([0.0, 0.5, -0.5, 1.5, -1.5])
    pcm = tones.float_to_pcm16(x)
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32768]
    back = tones.pcm16_to_float(pcm.tobytes())
    assert back[1] == pytest.approx(0.5)
    stereo = np.array([1000, 3000, -1000, -3000], dtype="<i2").tobytes()
    assert tones.pcm16_to_float(stereo, channels=2).tolist() == pytest.approx([2000 / 32768, -2000 / 32768])


def test_sine_mix_continues_without_phase_jump():
    whole = tones.sine_mix([440.0, 1000.0], 1000, 8000)
    parts = np.concatenate([tones.sine_mix([440.0, 1000.0], 300, 8000),
                            tones.sine_mix([440.0, 1000.0], 700, 8000, start=300)])
    assert np.allclose(whole, parts)


def test_goertzel_reads_amplitude_of_each_tone():
    x = tones.sine_mix([697.0], 205, 8000, 0.3) + tones.sine_mix([1209.0], 205, 8000, 0.1)
    amps = tones.goertzel(x, [697.0, 1209.0, 941.0], 8000)
    assert amps[0] == pytest.approx(0.3, rel=0.05)
    assert amps[1] == pytest.approx(0.1, rel=0.1)
    assert amps[2] < 0.03


@settings(max_examples=40, deadline=None)
@given(freq=st.floats(100.0, 3800.0), rate=st.sampled_from([8000, 16000, 48000]),
       ms=st.sampled_from([20, 40, 100]))
def test_dominant_frequency_within_two_percent(freq, rate, ms):
    x = tones.sine_mix([freq], rate * ms // 1000, rate, 0.4)
    found, level = tones.dominant_frequency(x, rate)
    assert tones.frequencies_close(found, freq, 0.02), (found, freq)
    assert level == pytest.approx(tones.rms_dbfs(x), abs=1.0)


def test_dominant_frequency_with_noise_and_silence():
    x = noisy(tones.sine_mix([1234.0], 4800, 48000, 0.2), snr_db=10)
    found, _ = tones.dominant_frequency(x, 48000)
    assert tones.frequencies_close(found, 1234.0)
    assert tones.dominant_frequency(np.zeros(960), 48000) == (0.0, tones.DB_FLOOR)


def test_dtmf_frequencies_cover_the_keypad():
    assert tones.dtmf_frequencies("1") == (697.0, 1209.0)
    assert tones.dtmf_frequencies("#") == (941.0, 1477.0)
    assert tones.dtmf_frequencies("d") == (941.0, 1633.0)
    with pytest.raises(ConfigurationError, match="digits"):
        tones.dtmf_frequencies("x")
    with pytest.raises(ConfigurationError, match="digits"):
        tones.dtmf_samples("12x4")


def test_dtmf_samples_layout():
    pcm = tones.dtmf_samples("12", on_ms=100, off_ms=50, rate=8000)
    assert pcm.dtype == np.int16
    assert pcm.size == 2 * (800 + 400)
    assert not pcm[800:1200].any()
    assert pcm[:800].any()


@pytest.mark.parametrize("rate", [8000, 48000])
def test_all_sixteen_digits_with_noise(rate):
    pcm = tones.dtmf_samples(tones.DTMF_DIGITS, rate=rate).astype(np.float64) / 32768
    x = noisy(np.concatenate([np.zeros(rate // 10), pcm]), snr_db=15, seed=rate)
    digits = tones.decode_dtmf(x, rate)
    assert "".join(d.digit for d in digits) == tones.DTMF_DIGITS
    for i, d in enumerate(digits):
        assert d.start == pytest.approx(0.1 + i * 0.170, abs=0.015)
        assert d.duration == pytest.approx(0.100, abs=0.015)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_shortest_itu_digits_are_found(rate):
    pcm = tones.dtmf_samples("159D*#", on_ms=40, off_ms=40, rate=rate).astype(np.float64) / 32768
    assert "".join(d.digit for d in tones.decode_dtmf(pcm, rate)) == "159D*#"


def test_streaming_decoder_matches_offline_whatever_the_chunking():
    rate = 8000
    x = tones.dtmf_samples("0A7", rate=rate).astype(np.float64) / 32768
    decoder = tones.DtmfDecoder(rate)
    found = []
    for i in range(0, x.size, 37):  # odd chunk size: windows straddle chunks
        found += decoder.feed(x[i:i + 37])
    found += decoder.flush()
    assert found == tones.decode_dtmf(x, rate)
    assert decoder.position == pytest.approx(x.size / rate)


def test_held_digit_reported_at_start_and_on_flush():
    rate = 8000
    decoder = tones.DtmfDecoder(rate)
    tone = tones.sine_mix(tones.dtmf_frequencies("5"), rate, rate, 0.25)
    assert decoder.feed(tone) == []
    assert decoder.current == "5"
    assert decoder.state is tones.DtmfState.TONE
    assert [d for d, _ in decoder.take_started()] == ["5"]
    (held,) = decoder.flush()
    assert held.digit == "5" and held.duration == pytest.approx(1.0, abs=0.02)


def test_back_to_back_digits_without_gap_are_split():
    rate = 8000
    x = np.concatenate([tones.sine_mix(tones.dtmf_frequencies(d), 800, rate, 0.25) for d in "123"])
    assert "".join(d.digit for d in tones.decode_dtmf(x, rate)) == "123"


def test_twist_beyond_limit_is_rejected():
    rate = 8000
    low, high = tones.dtmf_frequencies("5")
    ok = tones.sine_mix([low], 205, rate, 0.25) + tones.sine_mix([high], 205, rate, 0.25 * 10 ** (-3 / 20))
    assert tones.classify_dtmf(ok, rate) == "5"
    twisted = tones.sine_mix([low], 205, rate, 0.25) + tones.sine_mix([high], 205, rate, 0.25 * 10 ** (-12 / 20))
    assert tones.classify_dtmf(twisted, rate) is None
    lenient = tones.DtmfThresholds(max_reverse_twist_db=15.0)
    assert tones.classify_dtmf(twisted, rate, lenient) == "5"


def test_weak_single_and_noisy_signals_are_rejected():
    rate = 8000
    low, high = tones.dtmf_frequencies("9")
    quiet = tones.sine_mix([low, high], 205, rate, 10 ** (-60 / 20))
    assert tones.classify_dtmf(quiet, rate) is None
    assert tones.classify_dtmf(tones.sine_mix([low], 205, rate, 0.3), rate) is None
    buried = noisy(tones.sine_mix([low, high], 205, rate, 0.1), snr_db=-6)
    assert tones.classify_dtmf(buried, rate) is None
    assert tones.classify_dtmf(np.zeros(205), rate) is None


def test_decoder_rejects_too_low_rate():
    with pytest.raises(ConfigurationError, match="rate"):
        tones.DtmfDecoder(2000)


def test_speech_is_not_taken_for_dtmf(tmp_path):
    """Talk-off: synthetic speech (espeak-ng) decodes to no digits."""
    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Press one for sales, two for support, "
                    "or hold the line. Nine four seven, star, pound."], check=True, timeout=60)
    import wave
    with wave.open(str(wav)) as w:
        rate = w.getframerate()
        x = tones.pcm16_to_float(w.readframes(w.getnframes()), w.getnchannels())
    assert x.size > rate  # really speech, more than a second of it
    assert tones.decode_dtmf(x, rate) == []


def test_mean_level_is_an_energy_mean():
    assert tones.mean_level([-10.0, -10.0]) == pytest.approx(-10.0)
    assert tones.mean_level([0.0, tones.DB_FLOOR]) == pytest.approx(-3.01, abs=0.01)
    assert tones.mean_level([]) == tones.DB_FLOOR


@settings(max_examples=25, deadline=None)
@given(digits=st.text(alphabet=tones.DTMF_DIGITS, min_size=1, max_size=8),
       on_ms=st.integers(45, 200), off_ms=st.integers(45, 200),
       rate=st.sampled_from([8000, 16000, 48000]), snr_db=st.floats(12.0, 40.0),
       amplitude=st.floats(0.02, 0.45), seed=st.integers(0, 2**16))
def test_any_digit_string_round_trips(digits, on_ms, off_ms, rate, snr_db, amplitude, seed):
    pcm = tones.dtmf_samples(digits, on_ms=on_ms, off_ms=off_ms, rate=rate, amplitude=amplitude)
    x = noisy(np.concatenate([np.zeros(rate // 20), pcm.astype(np.float64) / 32768]), snr_db, seed)
    found = tones.decode_dtmf(x, rate)
    assert "".join(d.digit for d in found) == digits
    for d in found:
        assert d.duration == pytest.approx(on_ms / 1000, abs=0.02)


def test_debounce_rejects_blips_unless_configured_to_accept_them():
    rate = 8000
    blips = np.concatenate([np.zeros(400), tones.dtmf_samples("73", on_ms=18, off_ms=60, rate=rate) / 32768])
    assert tones.decode_dtmf(blips, rate) == []  # under ~23 ms: not a key press (ITU-T Q.24)
    eager = tones.decode_dtmf(blips, rate, min_duration=0.0)
    assert "".join(d.digit for d in eager) == "73"
    decoder = tones.DtmfDecoder(rate)
    decoder.feed(blips)
    assert decoder.take_started() == []  # no digit_start for a rejected blip either
