"""The pytest plugin (softphone.pytest_plugin) and the call expectations (softphone.agent.expect).

examples/test_voice_api.py is run as a user runs it (a pytest subprocess, the
plugin loaded by its entry point) on the embedded lab, and again against a
"real platform" (a lab started here, reached only through its launch URL and
the plugin's --softphone-* options).  A failing expectation must say what was
heard, which digits came and the call's SIP ladder.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from softphone.agent.expect import ReceivedAudio, envelope_match, load_reference
from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.pytest_plugin import write_prompt
from softphone.sip.ladder import Ladder

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "test_voice_api.py"
RUN_TIMEOUT = 240


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOFTPHONE_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


async def _pytest(*args: str, cwd: Path = ROOT) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=_env())
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode("utf-8", "replace")


# --- the plugin, end to end ------------------------------------------------------------


@pytest.mark.peer
@pytest.mark.slow
async def test_the_examples_pass_on_the_embedded_lab():
    code, out = await _pytest(str(EXAMPLES))
    assert code == 0, out
    assert "5 passed" in out, out


@pytest.mark.peer
@pytest.mark.slow
async def test_the_same_examples_run_unchanged_against_a_platform_url(tmp_path):
    """--softphone-url/--softphone-campaign/--softphone-customer-number/--softphone-prompt: no lab is
    started by the plugin; what only the lab can observe (the customer's side, webhooks) skips."""
    prompt = write_prompt(tmp_path / "prompt.wav")
    number = "0827770001"
    table = CustomerTable().with_numbers({number: Behaviour(
        answer_after=0.2, play="tone:600", dtmf="1#", dtmf_after=0.5, listen=(1000.0,))})
    async with await start_lab(prompt=str(prompt), customers=table, turn=True) as server:
        code, out = await _pytest(str(EXAMPLES), "--softphone-url", server.launch_url(1001),
                                  "--softphone-campaign", "1", "--softphone-customer-number", number,
                                  "--softphone-prompt", str(prompt))
    assert code == 0, out
    assert "2 passed, 3 skipped" in out, out
    assert "only observable on the embedded lab" in out and "only on the embedded lab" in out, out


@pytest.mark.peer
@pytest.mark.slow
async def test_a_failed_expectation_says_what_was_heard(tmp_path):
    (tmp_path / "test_failing.py").write_text(
        "async def test_tone(agent):\n"
        "    call = await agent.expect_call(timeout=10)\n"
        "    await call.expect_tone(700, within=1)\n"
        "\n"
        "async def test_dtmf(agent):\n"
        "    await agent.expect_dtmf('12', timeout=1)\n"
        "\n"
        "async def test_customer_not_answering(agent, customer):\n"
        "    await agent.expect_call(timeout=10)\n"
        "    number = customer(outcome='busy', answer_after=0.1)\n"
        "    await agent.dial(number)\n"
        "    await number.expect_answered(timeout=1)\n"
        "\n"
        "def test_the_lab_fixture(softphone_lab):\n"
        "    assert softphone_lab.url.startswith('http://127.0.0.1:')\n"
        "\n"
        "async def test_two_agents(agent_factory, platform):\n"
        "    a, b = await agent_factory(), await agent_factory(play='tone:700')\n"
        "    assert a.extension != b.extension\n"
        "    for agent in (a, b):\n"
        "        await (await agent.expect_call(timeout=10)).expect_state('answered')\n"
        "    assert (await platform.campaign_status(1)).campaign_id == 1\n")
    code, out = await _pytest("-o", "asyncio_mode=auto", "test_failing.py", cwd=tmp_path)
    assert code == 1, out
    assert "3 failed, 2 passed" in out, out
    assert "ExpectationError" in out and "expected a 700 Hz tone within 1 s" in out, out
    # what was heard instead: the lab's prompt, dominant frequency and level over time
    assert "heard: -" in out and " Hz -" in out and "dBFS" in out, out
    # the call's SIP ladder: the bridge INVITE and our 200 OK
    assert "SIP ladder:" in out and "<- INVITE sip:" in out and "-> 200 OK (CSeq" in out, out
    assert "expected DTMF '12'" in out and "digits received: none" in out, out
    assert "customer 0829" in out and "expected an answered call within 1 s" in out, out


def test_loading_the_plugin_starts_and_imports_nothing_heavy():
    """The plugin is loaded by every pytest run of an environment with softphone installed."""
    code = ("import sys, softphone.pytest_plugin\n"
            "heavy = [m for m in ('aiortc', 'av', 'softphone.lab.server', 'softphone.agent') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr


# --- the pieces ------------------------------------------------------------------------


def _frames(freq: float, seconds: float, rate: int = 48000, amplitude: float = 0.3) -> list[av.AudioFrame]:
    n = 960 if rate == 48000 else 160
    frames = []
    for i in range(int(seconds * rate) // n):
        t = (np.arange(n) + i * n) / rate
        x = (amplitude * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
        stereo = np.repeat(x, 2).reshape(1, -1)  # packed s16 stereo, as aiortc's Opus decoder gives
        frame = av.AudioFrame.from_ndarray(stereo, format="s16", layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = rate, i * n, Fraction(1, rate)
        frames.append(frame)
    return frames


def test_received_audio_keeps_the_last_seconds_and_describes_them():
    rec = ReceivedAudio(seconds=1.0)
    for frame in _frames(600.0, 0.6) + _frames(1000.0, 0.6):
        rec.write(frame)
    assert rec.rate == 16000
    assert 0.99 <= rec.received_seconds <= 1.03  # bounded: the oldest audio went
    assert abs(rec.dominant_frequency(0.2) - 1000.0) < 5
    assert rec.level_dbfs(0.2) == pytest.approx(20 * np.log10(0.3 / np.sqrt(2)), abs=0.5)
    described = rec.describe(seconds=1.0, step=0.25)
    assert "600 Hz" in described and "1000 Hz" in described


def test_prompt_matching_tells_the_prompt_from_other_audio(tmp_path):
    prompt = write_prompt(tmp_path / "prompt.wav")
    ref = load_reference(prompt, 16000)
    assert ref.size == 2 * 16000
    rng = np.random.default_rng(1)
    # a looped prompt heard from the middle, 15 dB down, with a little noise: it matches
    heard = np.concatenate([ref[int(0.7 * 16000):], ref[: int(0.4 * 16000)]]) * 0.18
    heard += rng.normal(0, 0.002, heard.size)
    assert envelope_match(heard[: 24000], ref, 16000) > 0.8
    t = np.arange(24000) / 16000
    assert envelope_match(0.3 * np.sin(2 * np.pi * 600 * t), ref, 16000) < 0.6  # a tone
    assert envelope_match(rng.normal(0, 0.1, 24000), ref, 16000) < 0.6          # noise
    assert envelope_match(np.zeros(24000), ref, 16000) == 0.0                    # silence


def test_the_sip_ladder_keeps_start_lines_of_one_call_only():
    ladder = Ladder(size=3)
    invite = ("INVITE sip:9001@lab SIP/2.0\r\nCall-ID: abc\r\nCSeq: 1 INVITE\r\n"
              "Authorization: Digest username=\"a\", response=\"deadbeef\"\r\n\r\nv=0\r\n")
    ladder.add_text(invite, outgoing=True)
    ladder.add_text("SIP/2.0 200 OK\r\ni: abc\r\nCSeq: 1 INVITE\r\n\r\n", outgoing=False)
    ladder.add_text("SIP/2.0 200 OK\r\nCall-ID: other\r\nCSeq: 5 REGISTER\r\n\r\n", outgoing=False)
    text = ladder.render("abc")
    assert "-> INVITE sip:9001@lab (CSeq 1 INVITE)" in text and "<- 200 OK (CSeq 1 INVITE)" in text
    assert "REGISTER" not in text and "deadbeef" not in text and "v=0" not in text
    ladder.add_text("BYE sip:9001@lab SIP/2.0\r\nCall-ID: abc\r\nCSeq: 2 BYE\r\n\r\n", outgoing=True)
    assert len(ladder.entries) == 3 and "INVITE sip" not in ladder.render("abc")  # bounded
