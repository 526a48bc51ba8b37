"""The softphone command: help, version, params."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from softphone import __version__
from softphone.cli import main

URL = (
    "https://pbx.example/TForge-OmniSense-Webphone.html?auth_key=KEY-abc-123&server=pbx.example"
    "&turn_port=3478&customer_id=3&user_id=1001&username=agent1&password=p%40ss-w0rd"
    "&expire_date=2099-01-01T00:00:00Z&debug_html=false"
)


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env or {}, catch_exceptions=False)


def test_version_and_help():
    assert __version__ in run("--version").output
    out = run("--help").output
    assert "params" in out
    out = run("params", "--help").output
    for flag in ("--auth-key", "--turn-port", "--expire-date", "--debug-console", "--sip-ws-url", "--extension"):
        assert flag in out


def test_params_prints_json_with_secrets_redacted():
    result = run("params", URL)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["parameters"]["user_id"] == 1001
    assert data["parameters"]["password"] == "***"
    assert data["parameters"]["auth_key"] == "***"
    assert data["parameters"]["expire_date"] == "2099-01-01T00:00:00+00:00"
    assert data["derived"]["sip_ws_url"] == "wss://pbx.example:8089/ws"
    assert "p@ss-w0rd" not in result.output and "KEY-abc-123" not in result.output


def test_flag_overrides_url_and_env_fills_gaps():
    result = run("params", URL.replace("&username=agent1", ""), "--user-id", "77",
                 env={"SOFTPHONE_USERNAME": "env-agent", "SOFTPHONE_USER_ID": "5"})
    data = json.loads(result.stdout)
    assert data["parameters"]["user_id"] == 77
    assert data["parameters"]["username"] == "env-agent"


def test_bad_params_exit_2_listing_every_field():
    result = run("params", "turn_port=0&debug_console=maybe&customer_id=x")
    assert result.exit_code == 2
    for field in ("auth_key", "server", "turn_port", "customer_id", "debug_console", "expire_date"):
        assert f"- {field}:" in result.stderr


def test_console_script_runs():
    proc = subprocess.run([sys.executable, "-m", "softphone.cli", "params", URL],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["parameters"]["server"] == "pbx.example"


def test_debug_flags_give_console_trace_and_html_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = URL.replace("debug_html=false", "debug_html=true") + "&debug_console=true"
    proc = subprocess.run([sys.executable, "-m", "softphone.cli", "params", url],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "DEBUG" in proc.stderr and "parameters validated" in proc.stderr
    page = (tmp_path / "softphone-debug.html").read_text()
    assert "parameters validated" in page
    for secret in ("KEY-abc-123", "p@ss-w0rd"):
        assert secret not in proc.stderr and secret not in page and secret not in proc.stdout
