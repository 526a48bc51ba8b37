"""``softphone demo`` end to end: the lab (REST, SIP over wss, coturn) and one Agent through every step."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from softphone.demo import STEPS, DemoOptions, Milestones, run_demo
from softphone.errors import AgentError

ROOT = Path(__file__).resolve().parent.parent


def _step_line(out: str, name: str) -> str:
    lines = [line for line in out.splitlines() if f"  {name}  " in line]
    assert lines, f"step {name!r} not printed:\n{out}"
    return lines[0]


@pytest.mark.peer  # coturn (the lab starts it when turnserver is installed)
def test_softphone_demo_runs_every_step_and_writes_the_report(tmp_path):
    report = tmp_path / "demo.html"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("SOFTPHONE_")}  # the demo needs no configuration
    proc = subprocess.run([sys.executable, "-m", "softphone.cli", "demo", "--report", str(report), "--debug"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr[-3000:]}"
    for name in STEPS:
        line = _step_line(out, name)
        assert line.split()[2] == "ok", line
        assert line.split()[0].replace(".", "").isdigit(), line  # each step with its time
    assert f"softphone demo: OK, {len(STEPS)} steps in" in out
    assert "TURN through coturn" in _step_line(out, "lab")  # TURN when turnserver is installed (it is on the test box)
    assert "customer heard 1000 Hz" in out and "agent heard 600 Hz" in out
    assert "REGISTER sip:" in proc.stderr and 'response="***"' in proc.stderr  # --debug: the SIP trace
    assert "lab-system-key" not in out + proc.stderr and "agent1pass" not in out + proc.stderr
    page = report.read_text()
    assert page.count("<svg") == 2  # both audio directions
    assert "agent hears" in page and "lab hears" in page and "FAILED" not in page


async def test_a_failed_step_is_named_and_the_rest_reported_not_run():
    lines: list[str] = []
    # a number the demo's customer table does not list: the lab's built-in "*486" answers busy
    status = await run_demo(DemoOptions(turn=False, echo=lines.append, customer_number="0820000486"))
    out = "\n".join(lines)
    assert status == 1
    failed = _step_line(out, "outbound call")
    assert "FAILED" in failed and "486" in failed
    assert "FAILED at step 'outbound call'" in out
    assert "not run: agent hears customer" in out
    assert "cleanup: the lab has user 1001 logged out, extension 9001 not registered" in out
    for name in STEPS[:STEPS.index("outbound call")]:
        assert _step_line(out, name).split()[2] == "ok"


async def test_milestones_fail_with_the_start_error_when_it_comes_first():
    marks = Milestones()

    async def failing_start():
        await asyncio.sleep(0)
        raise AgentError("registration refused: 403")

    start = asyncio.get_running_loop().create_task(failing_start())
    with pytest.raises(AgentError, match="403"):
        await marks.wait("registered", start)
    marks.reach("logged_in", "value")
    assert await marks.wait("logged_in", start) == "value"  # already reached: no matter how start ended
