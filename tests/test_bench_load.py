"""bench/load.py keeps working: one tiny softphone load step and the Chromium side-by-side at K=1 (no timings)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "load.py"
pytestmark = [pytest.mark.peer, pytest.mark.slow]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tiny_step_reports_agents_and_lab_apart(tmp_path):
    bench = bench_module()
    row = bench.run_step(2, argparse.Namespace(ramp=10.0, duration=8.0, workers=1), tmp_path)
    assert row["setup_success"] == 1.0 and row["heard"] == 2, row
    roles = row["cpu_by_process_s"]
    assert roles.get("worker", 0) > 0 and roles.get("lab", 0) > 0, roles
    if shutil.which("turnserver"):
        assert roles.get("coturn", 0) > 0, roles
    assert row["pss"].get("workers_pss_mb", 0) > 0 and row["agent_seconds"] > 0, row


@pytest.mark.browser
async def test_chromium_side_by_side_at_one_agent(tmp_path):
    if not shutil.which("chromium") or not shutil.which("turnserver"):
        pytest.skip("needs chromium and coturn")
    bench = bench_module()
    result = await bench._chromium_step(1, "browsers", argparse.Namespace(chromium_seconds=2.0), tmp_path)
    assert (result["registered"], result["answered"], result["heard_at_lab"]) == (1, 1, 1), result
    assert result["cpu_per_agent_second"] > 0 and result["pss_per_agent_mb"] > 0, result
