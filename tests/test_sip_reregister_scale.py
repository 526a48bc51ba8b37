"""Re-registration at scale: 200 user agents on a real Kamailio that is killed with SIGKILL.

Kamailio keeps registrations in memory, so after the crash and a restart every
user agent must notice the lost WebSocket, reconnect (with back-off and jitter,
so they do not all hit the registrar at once) and register again, unattended.
How long the last one takes is a figure for ``bench/sip.py --restart``, not asserted here.
"""

from __future__ import annotations

import asyncio

import pytest

from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
from softphone.sip.user_agent import UserAgent, UserAgentConfig

pytestmark = pytest.mark.peer
N = 200
DEADLINE = 180.0


async def until(predicate, what: str, timeout: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.05)


async def test_200_user_agents_register_again_after_kamailio_is_killed(kamailio_factory):
    kam = kamailio_factory(n_users=N)
    agents = [UserAgent(UserAgentConfig(
        ws_url=kam.ws_url, aor=f"sip:{ext}@{kam.domain}", password=password, timers=Timers.scaled(0.5),
        keep_alive=KeepAlive(KeepAliveMode.NONE), reconnect=Reconnect(min_delay=0.2, max_delay=3.0),
        connect_timeout=30.0)) for ext, password in sorted(kam.users.items())]
    assert len(agents) == N
    gate = asyncio.Semaphore(50)

    async def start(ua: UserAgent) -> None:
        async with gate:
            await ua.start()

    try:
        await asyncio.wait_for(asyncio.gather(*(start(ua) for ua in agents)), DEADLINE)
        await until(lambda: all(ua.registered for ua in agents), "all registered")
        registered_events = {id(ua): 0 for ua in agents}
        for ua in agents:
            ua.on("registered", lambda *_, _ua=ua: registered_events.__setitem__(id(_ua), 1))

        before = kam.pid
        kam.kill()
        assert not kam.running()
        await until(lambda: not any(ua.registered for ua in agents), "every agent noticed the crash")
        kam.start()
        assert kam.pid != before  # a new Kamailio, with an empty location table
        await until(lambda: all(ua.registered for ua in agents),
                    "all registered again: " + str(sum(ua.registered for ua in agents)))
        assert sum(registered_events.values()) == N  # each one registered anew, unattended
        assert all(ua.transport.connected for ua in agents)
    finally:
        await asyncio.gather(*(ua.stop() for ua in agents), return_exceptions=True)
