"""`softphone run` and `softphone phone` as processes: real lab REST, Kamailio, coturn; signals and exit codes."""

from __future__ import annotations

import asyncio
import signal
import socket

import numpy as np
import pytest
from agent_support import KAMAILIO_USERS, Proc, start_agent_lab

from softphone.lab.store import AgentStatus
from softphone.media import tones
from softphone.media.sources import decode_file

pytestmark = pytest.mark.peer
BOUND = 30.0
PHONE_USERS = {"2041": "pw-2041-cli", "2042": "pw-2042-cli"}


@pytest.fixture
async def lab(kamailio_factory, coturn):
    kam = kamailio_factory(users=KAMAILIO_USERS)
    lab = await start_agent_lab(kam, coturn)
    try:
        yield lab
    finally:
        await lab.server.close()


def run_args(lab, *extra: str, launch: dict | None = None, user_id: int = 1001, events: str = "json",
             **url_kwargs) -> list[str]:
    from urllib.parse import quote, urlencode

    params = {**lab.launch(user_id, **url_kwargs), **(launch or {})}
    url = "https://127.0.0.1/TForge-OmniSense-Webphone.html?" + urlencode(params, quote_via=quote)
    return ["run", url, "--campaign", "1", "--relay-only", "--events", events, *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_signal_during_a_call_logs_out_and_unregisters(lab, sig):
    proc = await Proc.start(*run_args(lab, "--tone", "1000"))
    await proc.wait_event("call_answered")
    await proc.wait_event("logged_in")  # (the bridge call may be answered before the login returns)
    assert await lab.agent_status() is AgentStatus.LOGGED_IN
    proc.proc.send_signal(sig)
    code, err = await proc.finish()
    assert code == 130, err
    names = [e["event"] for e in proc.events()]
    assert names.index("logged_out") < names.index("unregistered") < names.index("exit")
    assert proc.events()[-1] == {"event": "exit", "code": 130, "reason": f"interrupted by {sig.name}"}
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT
    assert not await lab.registered("9001")
    assert "agent1pass" not in err and "agent1pass" not in "\n".join(proc.lines)


async def test_sigkill_then_a_new_run_logs_the_stale_session_out_first(lab):
    first = await Proc.start(*run_args(lab))
    await first.wait_event("call_answered")
    await first.wait_event("logged_in")
    first.proc.kill()
    await first.finish()
    assert await lab.agent_status() is AgentStatus.LOGGED_IN  # the crashed run never logged out
    second = await Proc.start(*run_args(lab, "--duration", "1", events="text"))
    code, err = await second.finish()
    assert code == 0, (err, second.lines)
    text = "\n".join(second.lines)
    assert "logged out a stale session of user 1001 left by an earlier run" in text
    assert text.index("stale session") < text.index("logged in: user 1001")
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


async def test_run_plays_records_sends_dtmf_and_ends_after_duration(lab, tmp_path):
    record = tmp_path / "bridge.wav"
    proc = await Proc.start(*run_args(lab, "--tone", "1000", "--record", str(record), "--dtmf", "5#",
                                      "--dtmf-method", "rfc4733", "--duration", "3"))
    await proc.wait_event("call_answered")
    platform_side = None
    for _ in range(100):
        platform_side = lab.telephony.bridge_calls.get(1001)
        if platform_side:
            break
        await asyncio.sleep(0.05)
    assert platform_side is not None
    assert await platform_side.wait_for_dtmf(2, timeout=BOUND) == "5#"
    await platform_side.wait_for_tone(1000, timeout=BOUND)
    await platform_side.send_dtmf("3", method="info")
    code, err = await proc.finish()
    assert code == 0, err
    events = proc.events()
    assert any(e["event"] == "dtmf" and e["digit"] == "3" and e["via"] == "info" for e in events)
    assert events[-1]["reason"] == "--duration 3s reached"
    assert_tone(record, 440.0)
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


def assert_tone(path, hz: float) -> None:
    pcm = np.frombuffer(decode_file(path, rate=8000), dtype=np.int16).astype(float) / 32768
    assert pcm.size > 8000, f"{path}: only {pcm.size} samples"
    freq, level = tones.dominant_frequency(pcm[-8000:], 8000)
    assert tones.frequencies_close(freq, hz, 0.03) and level > -40, (freq, level)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case, code, words", [
    ("wrong password", 3, "401"),
    ("wrong auth_key", 3, "401"),
    ("unreachable server", 4, "cannot connect"),
    ("plain http as https", 4, "ssl"),
    ("TURN unreachable", 4, "media (TURN/ICE)"),
])
async def test_failures_are_one_line_with_the_documented_exit_code(lab, case, code, words):
    launch = {
        "wrong password": {"password": "not-the-password"},
        "wrong auth_key": {"auth_key": "not-the-system-key"},
        "unreachable server": {"api_url": f"http://127.0.0.1:{_closed_port()}"},
        "plain http as https": {"api_url": lab.server.url.replace("http://", "https://")},
        "TURN unreachable": {"turn_urls": "turn:127.0.0.1:9?transport=udp"},
    }[case]
    proc = await Proc.start(*run_args(lab, launch=launch))
    got, err = await proc.finish()
    errors = [line for line in err.splitlines() if line.startswith("softphone: error:")]
    assert got == code, (err, proc.lines)
    assert len(errors) == 1 and words.lower() in errors[0].lower(), err
    for secret in ("not-the-password", "not-the-system-key", "agent1pass"):
        assert secret not in err
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT
    assert not await lab.registered("9001")


async def test_two_phone_processes_call_each_other_through_kamailio(kamailio_factory, coturn, tmp_path):
    kam = kamailio_factory(users=PHONE_USERS)
    common = ["--turn", coturn.url, "--turn-user", coturn.username, "--relay-only", "--events", "json"]
    env = {"SOFTPHONE_TURN_PASSWORD": coturn.password}
    callee = await Proc.start("phone", "--ws", kam.ws_url, "--user", "2042", "--domain", kam.domain,
                              "--tone", "440", *common, env={**env, "SOFTPHONE_PASSWORD": PHONE_USERS["2042"]})
    await callee.wait_event("registered")
    record = tmp_path / "caller.wav"
    caller = await Proc.start("phone", "--ws", kam.ws_url, "--user", "2041", "--domain", kam.domain,
                              "--call", "2042", "--record", str(record), "--duration", "3", *common,
                              env={**env, "SOFTPHONE_PASSWORD": PHONE_USERS["2041"]})
    code, err = await caller.finish()
    assert code == 0, (err, caller.lines)
    callee_code, callee_err = await callee.finish()
    assert callee_code == 0, (callee_err, callee.lines)
    assert any(e["event"] == "call_ended" and e["cause"] == "remote hangup" for e in callee.events())
    assert_tone(record, 440.0)


async def test_debug_flags_trace_sip_ice_and_api_on_stderr_and_write_the_live_page(lab, tmp_path):
    page = tmp_path / "debug.html"
    proc = await Proc.start(*run_args(lab, "--duration", "1", launch={"debug_console": "true", "debug_html": "true"}),
                            env={"SOFTPHONE_DEBUG_HTML": str(page)})
    code, err = await proc.finish()
    assert code == 0, err
    assert "SIP out:\nREGISTER sip:" in err and "SIP in:\nSIP/2.0 200 OK" in err  # the SIP trace
    assert "ICE " in err  # ICE states of the bridge call's peer connection
    assert "POST /omni/users/1001/login -> 200" in err  # the API trace
    html = page.read_text()
    assert '"state": "ready"' in html and '"state": "stopped"' in html and '"logged_in": true' in html
    for secret in ("agent1pass", lab.server.api_key.reveal(), lab.coturn.password):
        assert secret not in err and secret not in html


async def test_expire_date_ends_the_run_cleanly_with_expiring_first(lab):
    proc = await Proc.start(*run_args(lab, expire_in=8.0))
    code, err = await proc.finish()
    assert code == 0, (err, proc.lines)
    names = [e["event"] for e in proc.events()]
    assert names.index("call_answered") < names.index("expiring") < names.index("logged_out") \
        < names.index("unregistered")
    assert proc.events()[-1]["reason"].startswith("session expired")
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT


async def test_phone_whose_turn_is_unreachable_fails_the_call_with_exit_4(kamailio_factory, coturn):
    kam = kamailio_factory(users=PHONE_USERS)
    callee = await Proc.start("phone", "--ws", kam.ws_url, "--user", "2042", "--domain", kam.domain,
                              "--turn", "turn:127.0.0.1:9?transport=udp", "--relay-only", "--events", "json",
                              env={"SOFTPHONE_PASSWORD": PHONE_USERS["2042"], "SOFTPHONE_TURN_PASSWORD": "x-pw-1"})
    await callee.wait_event("registered")
    caller = await Proc.start("phone", "--ws", kam.ws_url, "--user", "2041", "--domain", kam.domain, "--call", "2042",
                              "--turn", coturn.url, "--turn-user", coturn.username, "--relay-only",
                              env={"SOFTPHONE_PASSWORD": PHONE_USERS["2041"],
                                   "SOFTPHONE_TURN_PASSWORD": coturn.password})
    code, err = await callee.finish()
    assert code == 4, (err, callee.lines)
    errors = [line for line in err.splitlines() if line.startswith("softphone: error:")]
    assert len(errors) == 1 and "media (TURN/ICE)" in errors[0], err
    names = [e["event"] for e in callee.events()]
    assert names.index("error") < names.index("unregistered")
    caller_code, caller_err = await caller.finish()
    assert caller_code == 1 and "softphone: error:" in caller_err, caller_err


async def test_no_bridge_call_within_wait_call_is_a_failed_session(lab):
    lab.telephony.bridge = False
    proc = await Proc.start(*run_args(lab, "--wait-call", "1"))
    code, err = await proc.finish()
    assert code == 1, (err, proc.lines)
    assert "no call arrived in time (--wait-call)" in err
    assert await lab.agent_status() is AgentStatus.LOGGED_OUT
