"""Audio verdict microbenchmark: CPU per leg-second of the live check (budget 0.3 ms).

Each simulated leg receives 50 packets a second of real encoded audio (a 440 Hz tone
with a pause, encoded by the lean path's encoders) through the same hook the receive
path uses (``count_rtp`` wrapped on the instance, here around a no-op counter), and is
ticked once per simulated second, as :class:`softphone.load.verdict.VerdictTicker` does.
CPU is this process's (``time.process_time``): hook + ticks, nothing else.  Reported
per method: G.711 tables (PCMU), the Opus probe, fingerprints of a pre-encoded far end
(Opus), and the bare per-packet hook.  No asserts: this measures.

    python bench/verdict.py --legs 200 --seconds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from softphone.load.verdict import ExpectedPrompt, LegAudioCheck  # noqa: E402
from softphone.media.lean import codec_spec, encode_source  # noqa: E402
from softphone.media.tones import float_to_pcm16, sine_mix  # noqa: E402

BUDGET_MS = 0.3


class Packet:
    __slots__ = ("payload", "payload_type", "sequence_number")

    def __init__(self, payload_type: int, sequence_number: int, payload: bytes) -> None:
        self.payload_type = payload_type
        self.sequence_number = sequence_number
        self.payload = payload


class CountingStub:
    """Stands in for the counting receiver: a class-level ``count_rtp`` the check wraps."""

    def count_rtp(self, packet) -> bool:
        return False


def source_payloads(codec: str, workdir: Path) -> list[bytes]:
    rate = 48000
    x = np.concatenate([sine_mix([440], rate * 3, rate, 0.4), np.zeros(rate // 2)])
    path = workdir / "src.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(float_to_pcm16(x).tobytes())
    return list(encode_source(path, codec_spec(codec)).payloads)


def run(method: str, codec: str, payloads: list[bytes], legs: int, seconds: int,
        expect: ExpectedPrompt | None, hook_only: bool = False) -> dict:
    checks = []
    receivers = []
    for k in range(legs):
        check = LegAudioCheck(codec, leg=f"{method}-{k}", expect=expect, start=0.0)
        stub = CountingStub()
        check.attach(stub)
        checks.append(check)
        receivers.append(stub)
    packets = [[Packet(0, (k * 50 + j) & 0xFFFF, payloads[(k * 50 + j) % len(payloads)]) for j in range(50)]
               for k in range(seconds)]
    start = time.process_time()
    for second in range(seconds):
        block = packets[second]
        for receiver in receivers:
            count = receiver.count_rtp
            for packet in block:
                count(packet)
        if not hook_only:
            now = float(second + 1)
            for check in checks:
                check.tick(now)
    cpu = time.process_time() - start
    verdicts = [c.finish(float(seconds)) for c in checks] if not hook_only else []
    per_leg_second_ms = cpu / (legs * seconds) * 1000.0
    return {"method": method, "codec": codec, "legs": legs, "seconds": seconds, "cpu_s": round(cpu, 3),
            "ms_per_leg_second": round(per_leg_second_ms, 4),
            "within_budget": per_leg_second_ms <= BUDGET_MS,
            "statuses": sorted({v.status.value for v in verdicts})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--legs", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=20)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        pcmu = source_payloads("pcmu", Path(tmp))
        opus = source_payloads("opus", Path(tmp))
    rows = [
        run("hook only", "pcmu", pcmu, args.legs, args.seconds, None, hook_only=True),
        run("g711 tables", "pcmu", pcmu, args.legs, args.seconds, ExpectedPrompt.tone(440)),
        run("opus probe", "opus", opus, args.legs, args.seconds, ExpectedPrompt.tone(440)),
        run("fingerprint", "opus", opus, args.legs, args.seconds, ExpectedPrompt.encoded(opus, "opus")),
    ]
    load = os.getloadavg()[0]
    print(f"audio verdict, {args.legs} legs x {args.seconds} s each, load average {load:.2f}, "
          f"budget {BUDGET_MS} ms CPU per leg-second")
    print(f"{'method':<14} {'codec':<6} {'CPU s':>7} {'ms/leg-s':>9}  budget  verdicts")
    for r in rows:
        print(f"{r['method']:<14} {r['codec']:<6} {r['cpu_s']:>7.3f} {r['ms_per_leg_second']:>9.4f}  "
              f"{'ok' if r['within_budget'] else 'OVER':<6}  {','.join(r['statuses']) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
