"""Local recordings of a sample of talk steps: what the agent heard, saved still encoded
(Opus into Ogg, G.711 into WAV) from the audio verdict's packet tap, listed in the results
and linked from the report."""

from __future__ import annotations

import fractions
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import av
import numpy as np
import pytest

from softphone.load.verdict import G711_TABLES, LegAudioCheck, write_recording
from softphone.media import tones

CLI = [sys.executable, "-c", "from softphone.cli import main; main()", "load"]


def _decoded(path: Path) -> tuple[np.ndarray, int, float]:
    """The file decoded by PyAV: mono float samples, their rate and where the timeline ends (s)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks, end = [], 0.0
        for frame in container.decode(stream):
            x = frame.to_ndarray().astype(np.float64)
            if np.abs(x).max(initial=0) > 1.5:  # integer samples
                x = x / 32768.0
            chunks.append(x[0] if frame.format.is_planar else x.reshape(-1)[::len(frame.layout.channels)])
            end = float((frame.pts + frame.samples) * frame.time_base)
        return np.concatenate(chunks), stream.rate, end


def _assert_tone(path: Path, hz: float) -> None:
    x, rate, _ = _decoded(path)
    middle = x[x.size // 4: 3 * x.size // 4]
    freq, level = tones.dominant_frequency(middle, rate)
    assert tones.frequencies_close(freq, hz, 0.03) and level > -40, (path.name, freq, level)


def _opus_payloads(hz: float, seconds: float) -> list[bytes]:
    enc = av.CodecContext.create("libopus", "w")
    enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, "mono", "s16", 32000
    enc.time_base = fractions.Fraction(1, 48000)
    pcm = tones.float_to_pcm16(tones.sine_mix([hz], int(48000 * seconds), 48000, 0.4))
    out = []
    for i in range(0, pcm.size - 959, 960):
        frame = av.AudioFrame.from_ndarray(pcm[None, i:i + 960].copy(), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, i
        out += [bytes(p) for p in enc.encode(frame)]
    return out


def _pcmu_payloads(hz: float, seconds: float) -> list[bytes]:
    """G.711 mu-law of a tone, 160 bytes per 20 ms: each sample's nearest code in the verdict's table."""
    x = tones.sine_mix([hz], int(8000 * seconds), 8000, 0.4)
    raw = np.abs(G711_TABLES["pcmu"][None, :] - x[:, None]).argmin(axis=1).astype(np.uint8).tobytes()
    return [raw[i:i + 160] for i in range(0, len(raw), 160)]


@pytest.mark.parametrize(("codec", "payloads", "suffix"), [("opus", _opus_payloads, ".ogg"),
                                                            ("pcmu", _pcmu_payloads, ".wav")])
def test_payloads_are_saved_without_decoding_and_play_back_as_the_tone(tmp_path, codec, payloads, suffix):
    sent = payloads(700, 2.0)
    seqs = [s & 0xFFFF for s in range(65500, 65500 + len(sent))]
    del sent[30:40], seqs[30:40]  # 200 ms lost, across the sequence number wrap
    path = write_recording(tmp_path / f"leg{suffix}", sent, seqs, codec)
    assert path.suffix == suffix
    _assert_tone(path, 700)
    assert _decoded(path)[2] == pytest.approx(2.0, abs=0.05)  # the lost packets kept their time


def test_the_verdicts_tap_records_only_between_start_and_take():
    clock = [0.0]
    check = LegAudioCheck("pcmu", clock=lambda: clock[0], start=0.0)

    class Receiver:
        def count_rtp(self, packet):
            return True

    receiver = Receiver()
    check.attach(receiver)
    payloads = _pcmu_payloads(700, 3.0)

    def feed(first: int, n: int) -> None:
        for seq in range(first, first + n):
            receiver.count_rtp(SimpleNamespace(payload_type=0, payload=payloads[seq], sequence_number=seq))
        clock[0] += n * 0.02

    feed(0, 30)
    check.tick()
    feed(30, 10)                    # before the start, in the same second as the start: not recorded
    check.start_recording()
    feed(40, 60)
    check.tick()
    feed(100, 20)                   # after the last tick: take_recording ticks for them
    got, seqs = check.take_recording()
    assert seqs == list(range(40, 120)) and got == payloads[40:120]
    feed(120, 10)
    check.tick()
    assert check.take_recording() == ([], []) and not check.recording


@pytest.mark.peer
@pytest.mark.slow
def test_record_one_in_one_saves_every_talk_step_on_the_lab(tmp_path):
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text("name: recorded\ncodec: opus\naudio: {check: true}\niterations: 1\nloop:\n"
                        "  - wait_bridge: {timeout: 20s}\n  - talk: {seconds: 2, record: 1.0}\n")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "--lab", "-n", "2", "--duration", "8", "-k", "1", "--scenario", str(scenario),
                           "--lab-prompt", "tone:660", "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    recordings = doc["recordings"]
    assert [(r["agent"], r["iteration"], r["step"]) for r in recordings] == [(1, 1, "talk"), (2, 1, "talk")]
    for rec in recordings:
        path = Path(rec["path"])
        assert path.parent == out / "recordings" and path.name == f"agent-{rec['agent']}-1.ogg"
        assert rec["packets"] > 50 and rec["leg"].startswith(f"a{rec['agent']}-")
        _assert_tone(path, 660)  # what the platform played on the bridge call
    report = (out / "report.html").read_text()
    assert 'href="recordings/agent-1-1.ogg"' in report and 'href="recordings/agent-2-1.ogg"' in report
    assert "agent-1-1.ogg" in (out / "csv" / "recordings.csv").read_text()
