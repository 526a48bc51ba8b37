"""Load benchmark: ``softphone load --lab`` at growing N, the largest N that holds every quality bar.

Each step is one ``softphone load`` run (its own process tree: the lab, with its media and
coturn, in the parent; the agents in worker processes, so their CPU is reported apart
from the lab's), the steady bridge scenario with the audio verdict on every leg.  The
bars (issue 13): setup success > 99.5 %, mean loss < 0.5 %, audio heard on every checked
leg, event-loop lag p99 < 50 ms.  Printed per N: setup success, heard, loss, loop lag
p99, p95 login -> bridge answered, agent CPU-s per agent-second and PSS per agent.  No
asserts: this measures.  (The side-by-side with SIP.js pages in Chromium is still to do.)

    python bench/load.py --n 10,20,40 --duration 30 --ramp 10 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """\
name: bench-steady-bridge
codec: opus
play: tone:440
audio: {check: true, expect: tone:440, gap: 1s}
iterations: 1
loop:
  - wait_bridge: {timeout: 30s}
  - talk: {seconds: 86400}
thresholds:
  - setup_success > 99.5%
  - mean(loss) < 0.5%
  - audio_heard >= 100%
  - p99(loop_lag) < 50ms
"""


def run_step(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / f"n{n}"
    scenario = workdir / "scenario.yaml"
    scenario.write_text(SCENARIO)
    cmd = [sys.executable, "-c", "from softphone.cli import main; main()", "load", "--lab", "-n", str(n),
           "--ramp", str(args.ramp), "--duration", str(args.duration), "--scenario", str(scenario),
           "--out", str(out), "--quiet"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 300, cwd=ROOT)
    wall = time.monotonic() - started
    doc = json.loads((out / "results.json").read_text())
    lat = doc["latency"]["login_to_bridge"]
    summary = doc["summary"]
    return {
        "n": n, "exit": proc.returncode, "wall_s": round(wall, 1),
        "setup_success": summary["setup_success"], "heard": doc["audio"]["statuses"].get("heard", 0),
        "legs": doc["audio"]["legs"], "loss_mean": doc["audio"]["loss_mean"],
        "loop_lag_p99_ms": summary["loop_lag_p99_ms"], "login_to_bridge_p95_ms": lat["p95"] and lat["p95"] * 1000,
        "cpu_per_agent_second": summary["cpu_per_agent_second"],
        "pss_per_agent_mb": summary["pss_per_agent"] and summary["pss_per_agent"] / 1024 ** 2,
        "passed": all(t["passed"] for t in doc["thresholds"]),
        "failed": [t["threshold"] for t in doc["thresholds"] if not t["passed"]],
    }


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10,20,40", help="agent counts to try, in order")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--ramp", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="keep each run's results here")
    args = ap.parse_args(argv)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"softphone load --lab, steady bridge, {args.duration:g} s per step, ramp {args.ramp:g}/s, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'N':>5} {'setup':>7} {'heard':>9} {'loss %':>7} {'lag p99':>8} {'login->bridge p95':>18} "
          f"{'CPU-s/agent-s':>14} {'PSS/agent MB':>13}  bars")
    for n in [int(x) for x in args.n.split(",") if x.strip()]:
        r = run_step(n, args, workdir)
        rows.append(r)
        print(f"{r['n']:>5} {_f(r['setup_success'] and r['setup_success'] * 100, '.1f'):>7} "
              f"{r['heard']:>4}/{r['legs']:<4} {_f(r['loss_mean'] and r['loss_mean'] * 100, '.2f'):>7} "
              f"{_f(r['loop_lag_p99_ms'], '.0f'):>8} {_f(r['login_to_bridge_p95_ms'], '.0f'):>15} ms "
              f"{_f(r['cpu_per_agent_second'], '.4f'):>14} {_f(r['pss_per_agent_mb'], '.1f'):>13}  "
              f"{'ok' if r['passed'] else 'missed: ' + ', '.join(r['failed'])}", flush=True)
    held = [r["n"] for r in rows if r["passed"]]
    print(f"largest N holding every bar: {max(held) if held else 'none'}")
    (workdir / "bench-load.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
