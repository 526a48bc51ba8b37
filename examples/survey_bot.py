"""A call bot on softphone.Agent: call a customer, play a question, collect the answer keyed in, record it.

    python examples/survey_bot.py 'https://pbx.example/TForge-OmniSense-Webphone.html?auth_key=...' 0821234567
"""

from __future__ import annotations

import asyncio
import sys

from softphone import Agent


async def survey(url: str, number: str, *, question: str = "tone:440", record: str = "answer.wav",
                 campaign_id: int = 1, **options) -> str:
    """The digits the customer keys in before ``#`` (the call is then hung up and disposed)."""
    async with Agent.from_url(url, campaign_id=campaign_id, **options) as agent:
        line = await agent.wait_for_call(timeout=30)  # the platform's bridge call, auto-answered
        placed = await agent.dial(number)             # voice API: the platform calls the customer
        line.play(question)                           # a file or a tone
        line.record(record)                           # what the customer says
        answer = ""
        while not answer.endswith("#"):
            answer += await line.wait_for_dtmf(1, timeout=60)
        await line.stop_recording()
        await agent.hangup_call(placed.call_id)
        await agent.dispose(placed.call_id, "SURVEYED")
        return answer.rstrip("#")


if __name__ == "__main__":
    print("answer:", asyncio.run(survey(sys.argv[1], sys.argv[2])))
