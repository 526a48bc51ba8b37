"""End to end through the lab: REST + its SIP edge (wss://) + its dialer + TURN relay only through coturn.

The flow of a Webphone session from its launch URL: the bridge call with the
prompt heard, a call to a simulated customer with audio checked both ways by
tone detection, DTMF both ways, hold/retrieve through the voice API, hang-up,
dispose, and the stop order (logout, hang-up, unregister) seen by the lab.
"""

from __future__ import annotations

import asyncio

import pytest

from softphone import Agent, AgentState, CallState
from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.lab.store import AgentStatus

pytestmark = [pytest.mark.peer, pytest.mark.slow]
BOUND = 20.0
PROMPT_HZ, CUSTOMER_HZ, AGENT_HZ = 440.0, 600.0, 1000.0
NUMBER = "0829990001"


async def wait_until(predicate, timeout: float = BOUND, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what} not reached in time")
        await asyncio.sleep(0.05)


async def test_webphone_session_through_the_lab(tmp_path):
    customers = CustomerTable().with_numbers({NUMBER: Behaviour(
        answer_after=0.3, play=f"tone:{CUSTOMER_HZ:g}", listen=(AGENT_HZ,), dtmf="12#", dtmf_after=1.0)})
    async with await start_lab(turn=True, relay_only=True, prompt=f"tone:{PROMPT_HZ:g}",
                               customers=customers) as server:
        assert server.turn is not None, "coturn must run for the relay-only flow"
        agent = Agent.from_url(server.launch_url(1001), campaign_id=1, relay_only=True,
                               play=f"tone:{AGENT_HZ:g}")
        registrar_events: list[tuple[str, str]] = []
        server.endpoint.on("unregistered", lambda ext, reason: registrar_events.append(("unregistered", ext)))
        async with agent:
            assert agent.state is AgentState.READY and agent.params.derived.sip_ws_url.startswith("wss://")
            assert server.endpoint.is_registered(agent.extension)
            bridge = await agent.wait_for_call(timeout=BOUND)
            assert bridge.bridge and bridge.state is CallState.ANSWERED
            await bridge.wait_for_tone(PROMPT_HZ, timeout=BOUND)  # the platform's prompt
            # a customer through the voice API: audio both ways on the bridge call
            placed = await agent.dial(NUMBER)
            gateway = server.lab.telephony.gateway
            await wait_until(lambda: gateway.customers, what="the customer's leg")
            customer = next(iter(gateway.customers.values()))
            await asyncio.wait_for(customer.answered.wait(), BOUND)
            await bridge.wait_for_tone(CUSTOMER_HZ, timeout=BOUND)
            await asyncio.wait_for(customer.tones.wait_for(AGENT_HZ), BOUND)
            # DTMF both ways: the customer's INFO digits reach the agent (relayed as RFC 4733) ...
            assert await bridge.wait_for_dtmf(3, timeout=BOUND) == "12#"
            # ... and the agent's digits reach the lab: RFC 4733 and INFO on the bridge call, and
            # in-band tones through the lab's mix to the customer's ear
            lab_bridge = server.lab.telephony.bridges[1001]
            at_lab: list = []
            lab_bridge.session.on("dtmf", at_lab.append)
            lab_bridge.handler.on("dtmf", at_lab.append)
            await bridge.send_dtmf("5", method="rfc4733")
            await bridge.send_dtmf("9", method="info")
            await wait_until(lambda: len(at_lab) >= 2, what="the agent's digits at the lab")
            assert sorted((e.digit, e.via) for e in at_lab) == [("5", "rfc4733"), ("9", "info")]
            bridge.play("dtmf:7")
            await asyncio.wait_for(customer.dtmf.wait_digits(1), BOUND)
            assert customer.dtmf.digits.endswith("7")
            bridge.play(f"tone:{AGENT_HZ:g}")
            # hold / retrieve through the voice API
            await agent.hold_call(placed.call_id)
            await wait_until(lambda: customer.on_hold, what="the customer held")
            await agent.retrieve_call(placed.call_id)
            await wait_until(lambda: not customer.on_hold, what="the customer retrieved")
            assert [c.call_id for c in await agent.active_calls()] == [placed.call_id]
            await agent.hangup_call(placed.call_id)
            await asyncio.wait_for(customer.ended.wait(), BOUND)
            await agent.dispose(placed.call_id, "SALE")
            assert bridge.is_live  # the bridge call stays up between customers
        assert agent.state is AgentState.STOPPED
        assert (await server.lab.store.user(1001)).status is AgentStatus.LOGGED_OUT
        await wait_until(lambda: not server.endpoint.is_registered(agent.extension), what="unregistered")
        assert ("unregistered", agent.extension) in registrar_events
        assert bridge.state is CallState.ENDED


async def test_softphone_run_with_the_labs_launch_url_and_ctrl_c():
    """What a user types: `softphone run URL --campaign 1`; Ctrl-C leaves the lab with nobody logged in."""
    import signal

    from agent_support import Proc

    async with await start_lab(turn=True, relay_only=True, prompt=f"tone:{PROMPT_HZ:g}") as server:
        proc = await Proc.start("run", server.launch_url(1002), "--campaign", "1", "--relay-only",
                                "--tone", f"{AGENT_HZ:g}", "--events", "json")
        answered = await proc.wait_event("call_answered")
        assert answered["bridge"] is True
        await proc.wait_event("logged_in")
        registered = next(e for e in proc.events() if e["event"] == "registered")
        assert server.endpoint.is_registered(registered["extension"])
        proc.proc.send_signal(signal.SIGINT)
        code, err = await proc.finish()
        assert code == 130, err
        assert (await server.lab.store.user(1002)).status is AgentStatus.LOGGED_OUT
        await wait_until(lambda: not server.endpoint.is_registered(registered["extension"]), what="unregistered")
        names = [e["event"] for e in proc.events()]
        assert "logged_out" in names and "unregistered" in names, " | ".join(proc.lines[5:]) + err
        assert names.index("logged_out") < names.index("unregistered")
