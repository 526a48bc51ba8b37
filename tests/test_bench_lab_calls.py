"""bench/lab_calls.py keeps working: a tiny run bridges its calls and verifies audio both ways (no timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "lab_calls.py"


def test_a_tiny_run_verifies_every_call():
    proc = subprocess.run([sys.executable, str(BENCH), "--n", "2", "--seconds", "1", "--warmup", "0.2", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout[proc.stdout.index("["):])
    assert len(results) == 1 and results[0]["error"] is None, results
    r = results[0]
    assert (r["n"], r["registered"], r["bridged"], r["answered"], r["verified_both"]) == (2, 2, 2, 2, 2)
    assert r["lab_rx_packets"] > 0 and r["phone_rx_packets"] > 0 and r["lab_cpu_seconds"] >= 0
