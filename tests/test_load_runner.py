"""``softphone load`` end to end against the embedded lab (its SIP edge, dialer and coturn).

Each run is a real process tree: the CLI's parent (with the lab inside it) and spawned
worker processes of agents.  Conditions are waited for with generous deadlines; no
timing is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from softphone.load.credentials import AgentSpec, specs_from_csv, specs_from_template
from softphone.load.results import EXIT_THRESHOLD_FAILED
from softphone.load.runner import _plan
from softphone.load.scenario import ScenarioError

pytestmark = [pytest.mark.peer, pytest.mark.slow]

CLI = [sys.executable, "-c", "from softphone.cli import main; main()", "load"]


def _scenario(tmp_path: Path, thresholds: list[str], talk: int = 3600) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(
        "name: lab-steady\ncodec: opus\nplay: tone:440\naudio: {check: true, gap: 1s}\niterations: 1\n"
        f"loop:\n  - wait_bridge: {{timeout: 20s}}\n  - talk: {{seconds: {talk}}}\n"
        "thresholds:\n" + "".join(f"  - {t}\n" for t in thresholds))
    return path


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_three_agents_on_the_lab_in_two_workers(tmp_path):
    out = tmp_path / "out"
    scenario = _scenario(tmp_path, ["setup_success >= 100%", "audio_heard >= 100%", "p95(login_to_bridge) < 30s"])
    proc = subprocess.run([*CLI, "--lab", "-n", "3", "--ramp", "5/s", "--duration", "10s", "-k", "2",
                           "--scenario", str(scenario), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = _results(out)
    assert doc["agents"] == 3 and doc["workers"] == 2 and not doc["interrupted"]
    assert [s["ok"] for s in doc["sessions"]] == [True] * 3
    assert [(s["logged_out"], s["unregistered"]) for s in doc["sessions"]] == [(True, True)] * 3
    assert doc["failures_by_cause"] == {}
    legs = [leg for leg in doc["legs"] if leg["kind"] == "bridge"]
    assert len(legs) == 3
    for leg in legs:
        assert leg["audio"]["status"] == "heard" and leg["audio"]["packets"] > 100
        if shutil.which("turnserver"):  # agents through TURN, the lab's media server on its host address
            assert leg["ice_pair"].startswith("relay ") and " <-> host " in leg["ice_pair"], leg["ice_pair"]
        ladder = [(line["direction"], line["summary"]) for line in leg["sip"]]
        assert ladder[0] == ("<-", "INVITE")
        assert ("->", "200 OK (INVITE)") in ladder and ("<-", "ACK") in ladder
        assert ("<-", "BYE") in ladder or ("->", "BYE") in ladder
        assert ladder[-1][1].startswith("ended: ")
    for metric in ("authorize", "register", "login_to_bridge", "ice_connected", "first_audio", "login_to_audio"):
        assert doc["latency"][metric]["count"] == 3, metric
    assert {r["worker"] for r in doc["resources"]} == {0, 1}
    assert all(r["gc_pause_ms"] >= 0 for r in doc["resources"]) and all("gc_pause_ms" in s for s in doc["snapshots"])
    assert doc["summary"]["cpu_per_agent_second"] is not None and doc["snapshots"]
    assert all(t["passed"] for t in doc["thresholds"])
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("failures") == "0" and suite.get("tests") == "4"
    assert "uPlot" in (out / "report.html").read_text()
    assert (out / "csv" / "legs.csv").is_file()


def test_outbound_steps_against_the_lab(tmp_path):
    """dial (voice API) -> talk -> hold/retrieve -> hangup -> dispose -> think, twice per agent.

    The hold (2 s) is longer than the silent-gap bar (1 s): the verdict pauses on hold."""
    out = tmp_path / "out"
    scenario = tmp_path / "outbound.yaml"
    scenario.write_text(
        "name: lab-outbound\ncodec: opus\naudio: {check: true}\niterations: 2\nloop:\n"
        "  - wait_bridge: {timeout: 20s}\n  - dial: {number: \"+1555{agent:04d}\", timeout: 20s}\n"
        "  - talk: {seconds: 1.5, record: 1}\n  - hold: {seconds: 2}\n  - hangup\n"
        "  - dispose: {code: SALE}\n  - think: {seconds: 0.5}\n"
        "thresholds:\n  - call_success >= 100%\n  - p95(outbound_answered) < 30s\n")
    proc = subprocess.run([*CLI, "--lab", "-n", "2", "--duration", "20", "-k", "1", "--scenario", str(scenario),
                           "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=180)
    doc = _results(out)
    assert proc.returncode == 0, (doc["failures"], proc.stderr[-3000:])
    assert doc["failures_by_cause"] == {}
    assert doc["latency"]["outbound_answered"]["count"] == 4  # 2 agents x 2 passes
    assert all(t["passed"] for t in doc["thresholds"])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_line(proc: subprocess.Popen, needle: str, deadline: float) -> list[str]:
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"no {needle!r} in the progress lines:\n{''.join(lines)[-3000:]}")


def test_ctrl_c_logs_everyone_out_writes_the_report_and_a_failed_threshold_sets_the_exit_status(tmp_path):
    out = tmp_path / "out"
    scenario = _scenario(tmp_path, ["setup_success >= 100%", "p95(login_to_bridge) < 0.001ms"])
    port = _free_port()
    proc = subprocess.Popen([*CLI, "--lab", "-n", "2", "--ramp", "10", "--duration", "120", "-k", "1",
                             "--scenario", str(scenario), "--out", str(out), "--prometheus", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, "in call 2", time.monotonic() + 90)
        # the live counters, as Prometheus scrapes them
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert "softphone_load_agents_in_call 2" in metrics and "softphone_load_agents_target 2" in metrics
        assert 'softphone_load_worker_agents{worker="0"} 2' in metrics
        os.kill(proc.pid, signal.SIGINT)  # the first Ctrl-C: graceful
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_THRESHOLD_FAILED, stderr[-3000:]
    assert "p95(login_to_bridge) < 0.001ms: FAILED" in stdout + stderr
    doc = _results(out)
    assert doc["interrupted"] is True and doc["duration"] < 100
    assert [s["ok"] for s in doc["sessions"]] == [True, True]
    # every agent logged out and unregistered on the way out
    assert [(s["logged_out"], s["unregistered"]) for s in doc["sessions"]] == [(True, True)] * 2
    assert len(doc["legs"]) == 2 and all(leg["ended"] is not None and leg["failure"] is None for leg in doc["legs"])
    assert [t["passed"] for t in doc["thresholds"]] == [True, False]
    assert (out / "report.html").is_file()


def test_second_ctrl_c_aborts_and_still_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "--lab", "-n", "1", "--duration", "120", "-k", "1", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(proc, "in call 1", time.monotonic() + 90)
        os.kill(proc.pid, signal.SIGINT)
        # the second press once the first has been taken (two signals pending at once are one)
        _wait_for_line(proc, "Ctrl-C again to abort", time.monotonic() + 30)
        os.kill(proc.pid, signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    doc = _results(out)
    assert doc["interrupted"] is True
    assert (out / "report.html").is_file()


# --- pure parts -----------------------------------------------------------------------


def test_credentials_from_template_and_csv(tmp_path):
    specs = specs_from_template("https://h/p.html?user_id=10{n:02d}&username=agent{n}", 3)
    assert [s.url for s in specs][-1] == "https://h/p.html?user_id=1003&username=agent3"
    with pytest.raises(Exception, match="needs \\{n\\}"):
        specs_from_template("https://h/p.html", 2)
    path = tmp_path / "agents.csv"
    path.write_text("username,password,user_id\nagent1,pw1,1001\nagent2,pw2,1002\n")
    specs = specs_from_csv(path, 2)
    assert specs[1] == AgentSpec(2, None, {"username": "agent2", "password": "pw2", "user_id": "1002"})
    with pytest.raises(Exception, match="2 row\\(s\\) for 3 agents"):
        specs_from_csv(path, 3)


def test_plan_spreads_agents_over_workers_on_the_ramp():
    specs = [AgentSpec(n) for n in range(1, 6)]
    plan = _plan(specs, 2, ramp=2.0)
    assert [[s.n for s, _ in part] for part in plan] == [[1, 3, 5], [2, 4]]
    assert [t for _, t in plan[0]] == [0.0, 1.0, 2.0]


def test_cli_rejects_bad_input(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nloop:\n  - talk: {seconds: forever}\n")
    proc = subprocess.run([*CLI, "--lab", "-n", "1", "--scenario", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "bad.yaml:3: loop[0].talk.seconds" in proc.stderr
    proc = subprocess.run([*CLI, "-n", "1"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "exactly one of" in proc.stderr
    proc = subprocess.run([*CLI, "--lab", "-n", "1", "--ramp", "fast"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "agents per second" in proc.stderr
    assert ScenarioError  # the type the CLI reports as bad input


def test_nothing_below_the_load_package_imports_it():
    import ast

    root = Path(__file__).resolve().parent.parent / "softphone"
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if rel.parts[0] == "load" or str(rel) in ("cli.py", "locust.py"):  # the layers above it
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{rel}: {n}" for n in names if n.startswith("softphone.load")]
    assert offenders == []


async def test_credentials_csv_against_a_running_lab(tmp_path):
    """--credentials: one CSV row of launch parameters per agent, the lab started by the test."""
    import asyncio
    import csv

    from softphone.lab.server import start_lab

    server = await start_lab(db_url="sqlite:///:memory:", turn=True, relay_only=True)
    try:
        rows = [server.launch_params(uid, secure=False) for uid in (1001, 1002)]
        path = tmp_path / "agents.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for row in rows for k in row}))
            writer.writeheader()
            writer.writerows(rows)
        out = tmp_path / "out"
        proc = await asyncio.create_subprocess_exec(
            *CLI, "--credentials", str(path), "-n", "2", "--duration", "8", "-k", "1", "--relay-only",
            "--out", str(out), "--quiet", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _stdout, stderr = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        await server.close()
    assert proc.returncode == 0, stderr.decode()[-3000:]
    doc = _results(out)
    assert [s["ok"] for s in doc["sessions"]] == [True, True]
    assert all(leg["audio"]["status"] == "heard" and leg["ice_pair"] and leg["ice_pair"].startswith("relay")
               for leg in doc["legs"])


def test_snapshot_cpu_between_a_workers_last_two_statuses():
    from softphone.load.runner import _snapshot

    base = {"active": 2, "registered": 2, "in_call": 1, "calls": 3, "failures": {"SIP 503": 1},
            "pss_bytes": 50 * 1024 ** 2, "loop_lag_ms": 4.0, "gc_pause_ms": 1.5}
    last: dict = {}
    statuses = {0: {**base, "at": 1.0, "cpu_s": 1.0}, 1: {**base, "at": 1.0, "cpu_s": 2.0}}
    snap, workers = _snapshot(1.0, statuses, last)
    assert snap.active_agents == 4 and snap.failures == 2 and snap.pss_mb == 100 and snap.cpu_cores == 0
    assert snap.loop_lag_ms == 4.0 and snap.gc_pause_ms == 1.5
    statuses[0] = {**base, "at": 2.0, "cpu_s": 1.25}
    snap, workers = _snapshot(2.0, statuses, last)
    assert [w["cpu_percent"] for w in workers] == [25.0, 0.0]
    snap, workers = _snapshot(2.4, statuses, last)  # no newer status from worker 0: its figure stands
    assert workers[0]["cpu_percent"] == 25.0 and snap.cpu_cores == 0.25


def test_expected_prompt_from_a_tone_or_a_file(tmp_path):
    import wave as _wave

    import numpy as np

    from softphone.load.agent_run import expected_prompt
    from softphone.media.tones import float_to_pcm16, sine_mix

    assert expected_prompt("tone:600", "opus").tone_hz == 600
    path = tmp_path / "menu.wav"
    with _wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(float_to_pcm16(np.concatenate([sine_mix([700], 8000, 8000, 0.4),
                                                      sine_mix([900], 8000, 8000, 0.4)])).tobytes())
    prompt = expected_prompt(str(path), "pcmu")
    assert prompt.fingerprints and prompt.label == "menu.wav"
    assert expected_prompt(str(path), "pcmu") is prompt  # built once per process


def _silent_worker(cfg, out, stop) -> None:
    """A worker that neither reports nor ends (spawned by the test below)."""
    import time as _time

    while True:
        _time.sleep(1)


def test_a_worker_that_never_reports_is_stopped_and_the_report_still_written(tmp_path, monkeypatch, caplog):
    from softphone.load import runner

    monkeypatch.setattr(runner, "worker_main", _silent_worker)
    monkeypatch.setattr(runner, "STOP_GRACE", 0.5)
    monkeypatch.setattr(runner, "RESULTS_GRACE", 0.5)
    options = runner.LoadOptions(agents=1, duration=0.5, specs=[AgentSpec(1, url="https://h/p")],
                                 out_dir=tmp_path / "out", quiet=True)
    assert runner.run_load(options) == EXIT_THRESHOLD_FAILED  # setup_success: nothing measured
    assert "worker(s) [0] sent no results" in caplog.text
    doc = _results(tmp_path / "out")
    assert doc["sessions"] == [] and (tmp_path / "out" / "report.html").is_file()
