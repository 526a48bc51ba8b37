"""`softphone lab` with its SIP edge, as a user runs it: launch URLs, ws/wss, CA file, TURN with the users' credentials."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from lab_cli_support import CLI, relay_candidates, start

from softphone.errors import TransportError
from softphone.params import load_params
from softphone.sip.user_agent import UserAgent, UserAgentConfig


async def stop(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, err.decode()


async def test_lab_prints_launch_urls_and_serves_sip_over_ws_and_wss_with_turn_for_the_users():
    proc, banner, _lines = await start("--port", "0")
    try:
        assert banner["system key"] == "lab-system-key"
        assert banner["sip ws"].startswith("ws://127.0.0.1:") and banner["sip ws"].endswith("/ws")
        assert banner["sip wss"].startswith("wss://127.0.0.1:")
        ca_file = banner["ca file"]
        assert os.path.isfile(ca_file)
        assert banner["chromium"].startswith("--ignore-certificate-errors-spki-list=")
        url = next(v for k, v in banner.items() if k.startswith("webphone agent1"))
        params = load_params(url)
        assert params.username == "agent1" and params.user_id == 1001
        assert params.derived.sip_ws_url == banner["sip wss"] and params.derived.ca_file == ca_file
        assert params.derived.api_url == banner["rest api"]
        for ws_url, ca in ((banner["sip ws"], None), (banner["sip wss"], ca_file)):
            # a seeded user with a pre-provisioned extension would do; the REST flow provisions 9001
            ua = UserAgent(UserAgentConfig(ws_url=ws_url, aor=f"sip:9999@{params.derived.sip_domain}",
                                           password="x", ca_file=ca))
            with pytest.raises(Exception, match="404 Not Found"):
                await ua.start()
        ua = UserAgent(UserAgentConfig(ws_url=banner["sip wss"], aor="sip:9999@127.0.0.1", password="x"))
        with pytest.raises(TransportError, match="certificate verification failed"):
            await ua.start()
        if banner["turn"].startswith("turn:"):
            assert banner["turn"].startswith(f"turn:127.0.0.1:{params.turn_port} ")
            assert await relay_candidates(params.turn_port, params.username, params.password.reveal())
            assert not await relay_candidates(params.turn_port, params.username, "wrong-password")
        else:
            assert "host candidates only" in banner["turn"]
    finally:
        code, err = await stop(proc)
    assert code == 0
    assert "GET /ws 101" in err  # each request logged, one line each
    assert "agent1pass" not in err and "lab-system-key" not in err


async def test_no_sip_serves_the_rest_api_only():
    proc, banner, _ = await start("--port", "0", "--no-sip")
    try:
        assert "sip ws" not in banner and banner["telephony"] == "InMemoryTelephony"
    finally:
        code, _ = await stop(proc)
    assert code == 0


async def test_cert_without_key_is_refused(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("not a cert")
    proc = await asyncio.create_subprocess_exec(*CLI, "--port", "0", "--cert", str(cert),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2 and "--cert and --key go together" in err.decode()


async def test_coturn_does_not_outlive_a_killed_lab():
    proc, banner, _ = await start("--port", "0")
    if not banner["turn"].startswith("turn:"):
        proc.kill()
        await proc.wait()
        pytest.fail(f"coturn is installed here, the lab must start it: {banner['turn']}")
    coturn_pid = int(banner["turn"].split("coturn pid ")[1].split(",")[0])
    proc.kill()  # SIGKILL: no cleanup of its own runs
    await proc.wait()

    def gone() -> bool:
        try:
            os.kill(coturn_pid, 0)
        except ProcessLookupError:
            return True
        return False

    for _ in range(500):
        if gone():
            break
        await asyncio.sleep(0.02)
    assert gone(), f"coturn (pid {coturn_pid}) still runs after its lab was killed"
