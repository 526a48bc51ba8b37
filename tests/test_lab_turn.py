"""The lab's coturn: started through turn/launch.py with every lab user's credentials, or a clear fallback."""

from __future__ import annotations

import logging
import os

import pytest
from lab_cli_support import relay_candidates

from softphone.errors import LabError
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.lab.turn import start_turn
from softphone.params import load_params

pytestmark = pytest.mark.peer


async def test_lab_turn_takes_each_users_credentials_and_stops_with_the_lab():
    lab = await start_lab(turn=True, telephony=InMemoryTelephony())
    try:
        turn = lab.turn
        assert turn is not None, "coturn is installed on this machine: the lab must start it"
        assert lab.turn_port == turn.port and f"turn_port={turn.port}" in lab.launch_url(1002)
        assert sorted(turn.users) == sorted(u["user_name"] for u in lab.seed.users)
        assert await relay_candidates(turn.port, "agent2", "agent2pass")
        assert await relay_candidates(turn.port, turn.lab_username, turn.lab_password.reveal())
        assert not await relay_candidates(turn.port, "agent2", "agent1pass")
        pid = turn.pid
    finally:
        await lab.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not turn.state_dir.exists()  # the config with the passwords is gone


async def test_relay_only_media_for_the_lab_side_goes_to_the_telephony_options():
    lab = await start_lab(turn=True, relay_only=True)
    try:
        media = lab.lab.telephony.options.media
        assert media.ice.relay_only and media.ice.turn_urls == (lab.turn.url,)
        assert media.ice.username == lab.turn.lab_username
    finally:
        await lab.close()


async def test_without_the_launcher_the_lab_says_so_and_offers_host_candidates(tmp_path, caplog):
    from softphone.lab.db import open_database

    db = await open_database("sqlite:///:memory:")
    try:
        with caplog.at_level(logging.WARNING, logger="softphone.lab.turn"):
            assert await start_turn(db, launcher_path=tmp_path / "missing.py") is None
        assert "host candidates only" in caplog.text
    finally:
        await db.close()


async def test_relay_only_without_turn_is_refused():
    with pytest.raises(LabError, match="--relay-only needs TURN"):
        await start_lab(turn=False, relay_only=True)


async def test_a_turn_server_run_elsewhere_goes_into_launch_urls_and_the_lab_media(coturn):
    lab = await start_lab(turn=False, turn_port=coturn.port, turn_user=f"{coturn.username}:{coturn.password}")
    try:
        params = load_params(lab.launch_url(1001))
        assert params.turn_port == coturn.port and lab.turn is None
        derived = params.derived
        assert derived.turn_username == coturn.username and derived.turn_password.reveal() == coturn.password
        assert await relay_candidates(coturn.port, derived.turn_username, derived.turn_password.reveal())
        ice = lab.lab.telephony.options.media.ice
        assert ice.turn_urls == (f"turn:127.0.0.1:{coturn.port}",) and ice.username == coturn.username
    finally:
        await lab.close()
