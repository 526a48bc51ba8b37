"""bench/floor.py keeps working (figures only: nothing here asserts a timing)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "floor.py"


def test_a_tiny_run_prints_the_table_and_writes_every_row(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--agents", "2", "--seconds", "0.5", "--warmup", "0.2",
         "--variants", "srtp,plain,srtp+turn,srtp 256K recv", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if line.lstrip().startswith("agents"))
    for column in ("variant", "cores", "CPU-s/agent-s", "vs srtp", "received %", "lag p99 ms", "load"):
        assert column in header
    (report,) = tmp_path.glob("floor-*.json")
    data = json.loads(report.read_text())
    assert [(r["agents"], r["variant"]) for r in data["results"]] == [
        (2, "srtp"), (2, "plain"), (2, "srtp+turn"), (2, "srtp 256K recv")]
    for r in data["results"]:
        assert r["cpu_seconds"] >= 0 and r["seconds"] > 0 and r["ratio_to_srtp"] is not None
        assert r["received_fraction"] >= 0 and r["far_end_got_fraction"] >= 0
    assert data["meta"]["recv_size"] == 2048


def test_an_unknown_variant_is_refused():
    proc = subprocess.run([sys.executable, str(BENCH), "--variants", "srtp,webrtc"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown variants: webrtc" in proc.stderr
