"""examples/survey_bot.py (a call bot on softphone.Agent) against the lab: REST, SIP over wss, coturn, real media."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from media_support import wait_until

from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.lab.store import AgentStatus
from softphone.media.report import analyze_recording

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "survey_bot.py"
NUMBER = "0825550123"
QUESTION_HZ = 520.0
CUSTOMER_HZ = 600.0

pytestmark = pytest.mark.peer  # coturn, started by the lab


def _load_example():
    spec = importlib.util.spec_from_file_location("survey_bot", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_is_under_40_lines_and_uses_the_front_door():
    text = EXAMPLE.read_text()
    assert len(text.splitlines()) < 40
    assert "from softphone import Agent" in text


async def test_survey_bot_calls_plays_collects_digits_records_and_disposes(tmp_path):
    survey_bot = _load_example()
    customers = CustomerTable().with_numbers({NUMBER: Behaviour(
        answer_after=0.2, play=f"tone:{CUSTOMER_HZ:g}", dtmf="42#", dtmf_after=1.0, listen=(QUESTION_HZ,))})
    async with await start_lab(turn=True, relay_only=True, customers=customers) as server:
        assert server.turn is not None, "coturn did not start (is turnserver installed?)"
        gateway = server.lab.telephony.gateway
        heard: list = []

        async def watch_customer() -> None:
            await wait_until(lambda: gateway.customers, 20, "the customer's leg")
            heard.append(next(iter(gateway.customers.values())))

        watcher = asyncio.get_running_loop().create_task(watch_customer())
        recording = tmp_path / "answer.wav"
        answer = await asyncio.wait_for(survey_bot.survey(
            server.launch_url(1001), NUMBER, question=f"tone:{QUESTION_HZ:g}", record=str(recording),
            ca_file=server.ca_file, relay_only=True), 60)
        await asyncio.wait_for(watcher, 5)

        assert answer == "42"
        customer = heard[0]
        assert any(d.freq == QUESTION_HZ for d in customer.tones.detections), "the customer heard the question"
        analysis = analyze_recording(recording, tone_freqs=(CUSTOMER_HZ,))
        assert analysis.seconds > 0.5
        assert any(d.freq == CUSTOMER_HZ for d in analysis.tones.detections), "the customer is in the recording"
        record = await server.lab.store.call(1)
        assert record.phone_number == NUMBER and record.disposition_code == "SURVEYED"
        assert record.call_state.value == "ended"
        user = await server.lab.store.user(1001)
        assert user.status is AgentStatus.LOGGED_OUT  # the block's exit logged the agent out
        assert not server.endpoint.is_registered("9001")
