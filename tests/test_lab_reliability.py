"""The lab's REST API under hostile input: nested bodies and what a user token may do."""

from __future__ import annotations

import base64
import logging
import socket

import aiohttp
import pytest

from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.lab.webhooks import USER_STATUS, Notifier, url_for_log

KEY = {"Authorization": "Key=lab-system-key"}


@pytest.fixture
async def lab():
    async with await start_lab(telephony=InMemoryTelephony()) as server:
        yield server


@pytest.fixture
async def session(lab):
    async with aiohttp.ClientSession(lab.url) as s:
        yield s


async def post(session, path, *, raw: bytes | None = None, body=None, headers=KEY) -> tuple[int, object]:
    kwargs = ({"data": raw, "headers": {**headers, "Content-Type": "application/json"}} if raw is not None
              else {"json": body, "headers": headers})
    async with session.post(path, **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


def assert_one_access_line(caplog) -> None:
    """The request left one log line: the access line with its 400 (no traceback, no second line)."""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("softphone")]
    assert len(lines) == 1 and " 400 " in lines[0], lines
    assert "Traceback" not in caplog.text


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


@pytest.mark.parametrize("depth", [40, 972, 973, 5000, 200_000])
async def test_deeply_nested_omni_body_is_400_with_one_log_line(session, caplog, depth):
    caplog.set_level(logging.DEBUG, logger="softphone")
    caplog.clear()
    status, data = await post(session, "/omni/user/authorize", raw=nested(depth))
    assert status == 400
    assert data["success"] is False
    assert data["detail"] in ("request body must be a JSON object",
                              "request body nests deeper than 32 levels")
    assert_one_access_line(caplog)


@pytest.mark.parametrize("depth", [100, 488, 973, 5000])
async def test_deeply_nested_lead_ids_are_400_in_the_archive_shape(session, caplog, depth):
    caplog.set_level(logging.DEBUG, logger="softphone")
    caplog.clear()
    inner = "[" * depth + "]" * depth
    raw = ('{"insert_leads": true, "update_leads": true, "delete_leads": true, "lead_ids": '
           + inner + "}").encode()
    status, data = await post(session, "/vicidial/leads/archive", raw=raw)
    assert status == 400
    assert data == {"message": "request body nests deeper than 32 levels", "lead_errors": 0, "lead_ids": []}
    assert_one_access_line(caplog)


async def test_nested_object_bodies_are_400_too(session):
    raw = ('{"a":' * 3000 + "1" + "}" * 3000).encode()
    status, data = await post(session, "/omni/user/authorize", raw=raw)
    assert (status, data) == (400, {"success": False, "detail": "request body nests deeper than 32 levels"})
    status, data = await post(session, "/vicidial/leads/dearchive", raw=raw)
    assert status == 400 and data["message"] == "request body nests deeper than 32 levels"


async def test_shallow_nesting_still_gets_the_contracts_messages(session):
    status, data = await post(session, "/vicidial/leads/archive",
                              body={"insert_leads": True, "update_leads": True, "delete_leads": True,
                                    "lead_ids": [[[1]]]})
    assert (status, data) == (400, {"message": "lead_ids must only contain integer values", "lead_errors": 1,
                                    "lead_ids": [[[1]]]})


# --- what a user token may do (item: scoping) ---------------------------------------------


async def token_of(session, user_name: str) -> dict[str, str]:
    password = base64.b64encode(f"{user_name}pass".encode()).decode()
    status, data = await post(session, "/omni/user/authorize", body={"user_name": user_name, "password": password})
    assert status == 200, data
    return {**KEY, "tokenKey": data["token_key"]}


async def test_an_agent_token_cannot_change_campaigns_or_the_notification_url(lab, session):
    agent = await token_of(session, "agent1")
    assert await post(session, "/omni/campaigns/2/status", body={"status": 2}, headers=agent) == (
        403, {"success": False, "detail": "user_id 1001 is not a supervisor: cannot change campaign status"})
    assert await post(session, "/omni/notifications/endpoint", body={"url": "http://127.0.0.1:9/hook"},
                      headers=agent) == (
        403, {"success": False, "detail": "user_id 1001 is not a supervisor: cannot set the notification endpoint"})
    assert (await lab.lab.store.campaign(2)).status == 0  # nothing changed
    assert lab.lab.notifier.url is None
    async with session.get("/omni/campaigns/2/status", headers=agent) as resp:  # reading stays open
        assert resp.status == 200


async def test_a_supervisor_token_may_change_them(lab, session):
    supervisor = await token_of(session, "supervisor1")
    assert await post(session, "/omni/campaigns/2/status", body={"status": 2}, headers=supervisor) == (
        200, {"campaign_id": 2, "status": 2, "status_name": "Paused"})
    assert (await post(session, "/omni/notifications/endpoint", body={"url": "http://127.0.0.1:9/hook"},
                       headers=supervisor))[0] == 200
    # a supervisor is still only itself on user paths
    status, data = await post(session, "/omni/users/1001/logout", headers=supervisor)
    assert (status, data["detail"]) == (403, "token does not belong to user_id 1001")


# --- webhook URLs in the log -------------------------------------------------------------------


async def test_webhook_failure_log_never_shows_the_query_or_credentials(caplog):
    caplog.set_level(logging.DEBUG, logger="softphone")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    notifier = Notifier(timeout=2)
    notifier.url = f"http://hookuser:HOOKPASS@127.0.0.1:{dead_port}/hook?t=SECRET#frag"
    try:
        notifier.notify(USER_STATUS, {"user_id": 1})
        await notifier.drain()
    finally:
        await notifier.close()
    assert notifier.failed == 1
    assert f"127.0.0.1:{dead_port}/hook" in caplog.text  # still says where it went
    for secret in ("SECRET", "HOOKPASS", "hookuser", "frag"):
        assert secret not in caplog.text


def test_url_for_log():
    assert url_for_log("https://u:p@example.test:8443/a/b?t=1#x") == "https://example.test:8443/a/b"
    assert url_for_log("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"
    assert url_for_log("not a url?secret=1") == "not a url"
