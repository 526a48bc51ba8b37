"""bench/lab.py runs end to end at a tiny size and writes its figures (nothing about their values)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "lab.py"

pytestmark = pytest.mark.slow


async def test_tiny_lab_bench_writes_its_figures(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_lab", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = await module.main(["--starts", "1", "--n", "20", "--concurrency", "10", "--hold", "0",
                                 "--out", str(tmp_path)])
    assert results["registrations"]["registered"] == 20 and results["registrations"]["lab_holds"] == 20
    assert results["start"]["no TURN"]["runs"] == 1
    written = json.loads(next(tmp_path.glob("lab-*.json")).read_text())
    assert set(written) >= {"meta", "start", "registrations"}
