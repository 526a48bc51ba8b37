"""Host candidates on loopback only when every server is on this machine (IceConfig.host_addresses).

Without TURN, aioice gathers every interface address but 127.0.0.1, so media between a
lab and an agent on one machine went over the machine's network interface.  The lab
listening on 127.0.0.1 and an agent whose SIP (and TURN) server is local both set
``host_addresses=("127.0.0.1",)``, applied per peer connection while it gathers.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import aioice.ice
import pytest

from softphone import Agent
from softphone.errors import ConfigurationError
from softphone.lab.server import start_lab
from softphone.media import aiortc_seam as seam
from softphone.media.config import LOOPBACK_HOSTS, IceConfig, MediaConfig, is_loopback_host
from softphone.media.peer import selected_candidate_pair

BOUND = 20.0


def test_loopback_only_when_every_server_is_local():
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.3.2.1", "localhost", "::1", "[::1]"))
    assert not any(is_loopback_host(h) for h in ("10.0.0.1", "pbx.example.com", "", None))
    local = IceConfig(turn_urls=("turn:127.0.0.1:3478",), username="u", credential="p")
    assert local.loopback_only_for("127.0.0.1").host_addresses == LOOPBACK_HOSTS
    assert IceConfig().loopback_only_for("localhost").host_addresses == LOOPBACK_HOSTS
    assert IceConfig().loopback_only_for().host_addresses is None  # no server known: unchanged
    assert local.loopback_only_for("pbx.example.com").host_addresses is None
    remote_turn = IceConfig(turn_urls=("turn:10.1.2.3:3478",), username="u", credential="p")
    assert remote_turn.loopback_only_for("127.0.0.1").host_addresses is None
    explicit = IceConfig(host_addresses=("10.0.0.5",))
    assert explicit.loopback_only_for("127.0.0.1") is explicit
    assert "hosts=127.0.0.1" in IceConfig(host_addresses="127.0.0.1").describe()
    with pytest.raises(ConfigurationError, match="host_addresses"):
        IceConfig(host_addresses=("eth0",))


async def test_host_addresses_apply_to_the_gathering_task_only_and_are_restored():
    original = aioice.ice.get_host_addresses
    inside = asyncio.Event()
    release = asyncio.Event()
    seen: dict[str, list[str]] = {}

    async def gathering() -> None:
        with seam.host_addresses(LOOPBACK_HOSTS):
            async def child() -> list[str]:  # aioice gathers in tasks aiortc spawns: they inherit it
                return aioice.ice.get_host_addresses(True, False)

            seen["child"] = await asyncio.ensure_future(child())
            inside.set()
            await release.wait()

    task = asyncio.ensure_future(gathering())
    await inside.wait()
    seen["other"] = aioice.ice.get_host_addresses(True, False)  # another connection, meanwhile
    release.set()
    await task
    assert seen["child"] == ["127.0.0.1"]
    assert seen["other"] == original(True, False) and "127.0.0.1" not in seen["other"]
    assert aioice.ice.get_host_addresses is original
    with seam.host_addresses(None):
        assert aioice.ice.get_host_addresses is original


@pytest.mark.peer
async def test_lab_call_without_turn_flows_on_loopback_on_both_sides():
    async with await start_lab(turn=False, prompt="tone:440") as server:
        url = server.launch_url(1001)
        # the lab's SIP and TURN URLs are on 127.0.0.1: an agent set up from them stays on loopback
        assert Agent.from_url(url, campaign_id=1).media.ice.host_addresses == LOOPBACK_HOSTS
        # this lab runs no TURN server: no TURN URL, host candidates of the agent's own choosing
        agent = Agent.from_url(url, campaign_id=1, media=MediaConfig(ice=IceConfig().loopback_only_for(
            urlsplit(server.sip_ws_url).hostname)))
        assert agent.media.ice.host_addresses == LOOPBACK_HOSTS
        async with agent:
            bridge = await agent.wait_for_call(timeout=BOUND)
            await bridge.wait_for_tone(440, timeout=BOUND)
            lab_bridge = server.lab.telephony.bridges[1001]
            assert lab_bridge.handler.config.ice.host_addresses == LOOPBACK_HOSTS
            for handler in (bridge.handler, lab_bridge.handler):
                pair = selected_candidate_pair(handler.pc)
                assert pair is not None and not pair.relayed, pair
                assert pair.local_address[0] == "127.0.0.1" and pair.remote_address[0] == "127.0.0.1", pair
                candidates = [line for line in handler.local_sdp.splitlines() if line.startswith("a=candidate")]
                assert candidates and all(" 127.0.0.1 " in line for line in candidates), candidates
