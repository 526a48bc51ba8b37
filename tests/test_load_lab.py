"""``softphone load --lab`` with the embedded lab set up by the run's options: who answers which
number (--lab-customers) and what agents hear on the bridge call (--lab-prompt).

Real process trees (the CLI with the lab inside it, a spawned worker); no timing asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.peer, pytest.mark.slow]

CLI = [sys.executable, "-c", "from softphone.cli import main; main()", "load"]


def test_a_busy_customer_and_the_bridge_prompt_the_audio_check_expects(tmp_path):
    customers = tmp_path / "customers.yaml"
    customers.write_text('default: {answer_after: 0.2, play: "tone:660"}\n'
                         'numbers:\n  "+15550001": {outcome: busy}\n')
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(
        "name: lab-options\ncodec: opus\naudio: {check: true, expect: tone:660}\niterations: 1\nloop:\n"
        "  - wait_bridge: {timeout: 20s}\n  - talk: {seconds: 2}\n"
        "  - dial: {number: \"+1555{agent:04d}\", timeout: 20s}\n  - talk: {seconds: 1}\n  - hangup\n")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "--lab", "-n", "2", "--duration", "10", "-k", "1", "--scenario", str(scenario),
                           "--lab-customers", str(customers), "--lab-prompt", "tone:660", "--out", str(out),
                           "--quiet"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    # agent 1 dialled the busy number: the failure says so (the lab's call-end record, SIP 486)
    assert doc["failures_by_cause"] == {"not answered: SIP 486": 1}, doc["failures"]
    (failure,) = doc["failures"]
    assert failure["agent"] == 1 and failure["step"] == "dial" and "busy" in failure["detail"]
    assert doc["latency"]["outbound_answered"]["count"] == 1  # agent 2's customer answered
    # the bridge call played the prompt the scenario expects
    legs = [leg for leg in doc["legs"] if leg["kind"] == "bridge"]
    assert len(legs) == 2
    assert all(leg["audio"]["status"] == "heard" and leg["audio"]["prompt"] is True for leg in legs), \
        [leg["audio"] for leg in legs]
    assert "not answered: SIP 486" in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--url-template", "https://h/p?user_id={n}", "--lab-prompt", "tone:440"], "--lab-prompt: only with --lab"),
    (["--lab", "--lab-prompt", "tone:99999"], "--lab-prompt: tone frequency must be 20 to 4000 Hz"),
    (["--lab", "--lab-prompt", "missing.wav"], "--lab-prompt: audio file 'missing.wav' does not exist"),
    (["--lab", "--lab-customers", "{customers}"], "--lab-customers: customers file"),
    (["--lab", "--lab-recordings", "{customers}"], "--lab-recordings"),  # click: a file, not a directory
])
def test_lab_options_reject_bad_input_naming_the_option(tmp_path, args, message):
    customers = tmp_path / "customers.yaml"
    customers.write_text('numbers:\n  "+1555": {outcome: sleepy}\n')
    args = [a.replace("{customers}", str(customers)) for a in args]
    proc = subprocess.run([*CLI, "-n", "1", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
