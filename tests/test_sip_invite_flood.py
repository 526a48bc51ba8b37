"""An INVITE flood at a registered user agent through a real Kamailio.

The agent (``max_calls=1``, as a phone) has a live call with audio (a tone
through the real coturn); hundreds of INVITEs a second arrive from another
registered user: every one is answered 486 Busy Here without a description
handler (so no media) being created, the agent stays registered, and its live
call keeps its audio and ends cleanly.
"""

from __future__ import annotations

import asyncio

import pytest
from media_support import SineTrack, ToneMeter, relay_config

from softphone.errors import ConfigurationError, SessionError
from softphone.media.description_handler import WebRtcDescriptionHandlerFactory
from softphone.sip.invitation import AnswerPolicy
from softphone.sip.session import SessionState
from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode
from softphone.sip.user_agent import AGENT_MAX_CALLS, UserAgent, UserAgentConfig

BOUND = 30.0
FLOOD = 300
TONE = 440.0


def close_enough(freq: float, expected: float) -> bool:
    return abs(freq - expected) / expected < 0.02


def config(kam, ext: str, **kw) -> UserAgentConfig:
    return UserAgentConfig(ws_url=kam.ws_url, aor=f"sip:{ext}@{kam.domain}", password=kam.users[ext],
                           timers=Timers.scaled(0.2), keep_alive=KeepAlive(KeepAliveMode.NONE), **kw)


async def until(predicate, timeout=BOUND):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_max_calls_is_validated_and_agents_default_to_one():
    with pytest.raises(ConfigurationError, match="max_calls"):
        UserAgentConfig(ws_url="ws://127.0.0.1:1/ws", aor="sip:1@x", max_calls=0)
    assert UserAgentConfig(ws_url="ws://127.0.0.1:1/ws", aor="sip:1@x").max_calls is None  # a trunk, a hub
    assert AGENT_MAX_CALLS == 1


@pytest.mark.peer
async def test_invite_flood_gets_486_without_media_and_the_live_call_keeps_audio(kamailio, coturn):
    meters: dict[str, ToneMeter] = {}
    media = WebRtcDescriptionHandlerFactory(
        relay_config(coturn, codecs=("PCMU",)), source_factory=lambda session: SineTrack(1000.0),
        sinks_factory=lambda session: [meters.setdefault("agent", ToneMeter())])
    handlers_made = []

    def counting_factory(session, options=None):
        handlers_made.append(session)
        return media(session, options)

    ext_agent, ext_caller, ext_flooder = kamailio.allocate(3)
    agent = UserAgent(config(kamailio, ext_agent, max_calls=AGENT_MAX_CALLS,
                             description_handler_factory=counting_factory, answer_policy=AnswerPolicy.answer()))
    caller = UserAgent(config(kamailio, ext_caller, description_handler_factory=WebRtcDescriptionHandlerFactory(
        relay_config(coturn, codecs=("PCMU",)), source_factory=lambda session: SineTrack(TONE))))
    flooder = UserAgent(config(kamailio, ext_flooder))  # null handler: signalling only
    async with agent, caller, flooder:
        live = await asyncio.wait_for(caller.call(f"sip:{ext_agent}@{kamailio.domain}"), BOUND)
        await until(lambda: live.state is SessionState.ESTABLISHED)
        meter = meters["agent"]
        await meter.wait_frames(25, timeout=BOUND)
        assert close_enough(meter.dominant_frequency(), TONE)
        assert len(handlers_made) == 1 and agent.registered

        target = f"sip:{ext_agent}@{kamailio.domain}"
        inviters = [flooder.invite(target) for _ in range(FLOOD)]
        results = await asyncio.wait_for(
            asyncio.gather(*(i.invite() for i in inviters), return_exceptions=True), BOUND * 4)
        statuses = [getattr(r, "status_code", None) for r in results]
        assert all(isinstance(r, SessionError) for r in results), [r for r in results
                                                                   if not isinstance(r, SessionError)][:3]
        assert statuses.count(486) == FLOOD, {s: statuses.count(s) for s in set(statuses)}
        assert agent.busy_rejected == FLOOD
        assert len(handlers_made) == 1  # no description handler (no media) for any rejected INVITE

        # still registered, still the same call, still hearing the caller's tone
        assert agent.registered and live.state is SessionState.ESTABLISHED
        agent_side = next(iter(agent.sessions))
        assert agent_side.state is SessionState.ESTABLISHED
        meter.reset()
        await meter.wait_frames(25, timeout=BOUND)
        assert close_enough(meter.dominant_frequency(), TONE)
        await live.bye()
        await until(lambda: not agent.sessions)
        # the line is free again: the next call is answered
        again = await asyncio.wait_for(caller.call(target), BOUND)
        await until(lambda: again.state is SessionState.ESTABLISHED)
        assert len(handlers_made) == 2
        await again.bye()
