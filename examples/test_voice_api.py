"""Voice API tests in ten lines each: run them with ``pytest examples/test_voice_api.py``.

The softphone pytest plugin gives the fixtures (``agent``, ``customer``,
``prompt``, ``webhooks``); by default they run on the embedded lab, offline.
``pytest --softphone-url URL --softphone-campaign ID --softphone-customer-number N``
runs the same tests against a real platform.
"""

from __future__ import annotations

import asyncio


async def test_bridge_call_on_login_hears_the_prompt(agent, prompt):
    call = await agent.expect_call(timeout=10)
    await call.expect_state("answered")
    await call.expect_prompt(prompt, within=5)


async def test_outbound_call_carries_audio_both_ways(agent, customer):
    number = customer(answer_after=0.3, play="tone:600", listen=[1000])
    call = await agent.expect_call(timeout=10)
    await agent.dial(number)
    await number.expect_answered(timeout=10)
    await call.expect_tone(600, within=5)       # the customer, heard by the agent
    await number.expect_tone(1000, within=5)    # the agent (play="tone:1000"), heard by the customer
    assert abs(call.recording.dominant_frequency(0.1) - 600) < 15  # the last 100 ms


async def test_dtmf_menu_navigation_rfc4733_and_info(agent, customer):
    number = customer(answer_after=0.2, play="tone:600", dtmf="1#", dtmf_after=0.5)
    call = await agent.expect_call(timeout=10)
    await agent.dial(number)
    await agent.expect_dtmf("1#", timeout=10)   # the menu's prompt digits reach the agent
    await call.send_dtmf("2", method="rfc4733")
    await call.send_dtmf("3", method="info")
    await number.expect_dtmf("23", timeout=5)   # the agent's choices reach the customer


async def test_hold_silences_the_customer_and_retrieve_restores_it(agent, customer):
    call = await agent.expect_call(timeout=10)
    placed = await agent.dial(customer(answer_after=0.2, play="tone:600"))
    await call.expect_tone(600, within=5)
    await agent.hold_call(placed.call_id)
    await call.expect_silence(0.5, within=5)
    await agent.retrieve_call(placed.call_id)
    await call.expect_tone(600, within=5)


async def test_logout_hangs_up_and_the_cdr_arrives(agent, customer, webhooks):
    call = await agent.expect_call(timeout=10)
    placed = await agent.dial(customer(answer_after=0.2, play="tone:600"))
    await call.expect_tone(600, within=5)
    await asyncio.sleep(1.0)                    # a second of talk, so the CDR has talk time
    await agent.stop()                          # logout, hang-up, unregister
    await call.expect_state("ended")
    cdr = await webhooks.expect("call_end", call_id=placed.call_id, timeout=10)
    assert cdr["talk_time"] >= 1 and cdr["ring_time"] >= 0 and cdr["end_time_time"] >= cdr["start_date_time"]
