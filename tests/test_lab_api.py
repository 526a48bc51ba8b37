"""Every /omni endpoint of the lab over real HTTP: happy paths, status codes and messages."""

from __future__ import annotations

import base64
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from softphone.errors import TelephonyError
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.lab.testing import MYSQL_URL_ENV, drop_mysql_database, fresh_mysql_url
from softphone.platform.paths import DEFAULT_PATHS

KEY = "lab-system-key"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class Api:
    """A raw HTTP client of the lab (the real client lives in softphone.platform)."""

    def __init__(self, session: aiohttp.ClientSession):
        self.session = session
        self.token: str | None = None

    async def req(self, method: str, path: str, body: Any = None, *, key: str | None = KEY,
                  token: str | bool | None = True, raw: bytes | None = None) -> tuple[int, Any]:
        headers = {}
        if key is not None:
            headers["Authorization"] = f"Key={key}"
        if token is True:
            token = self.token
        if token:
            headers["tokenKey"] = token
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
            headers["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, path, **kwargs) as resp:
            assert resp.content_type == "application/json", await resp.text()
            return resp.status, await resp.json()

    async def authorize(self, user: str = "agent1", password: str = "agent1pass") -> dict:
        status, data = await self.req("POST", "/omni/user/authorize",
                                      {"user_name": user, "password": base64.b64encode(password.encode()).decode()},
                                      token=None)
        assert status == 200, data
        self.token = data["token_key"]
        return data

    async def login(self, user_id: int = 1001, campaign_id: int = 1, extension: str = "9001") -> None:
        status, data = await self.req("POST", f"/omni/users/{user_id}/login",
                                      {"campaign_id": campaign_id, "extension": extension})
        assert (status, data["success"]) == (200, True), data

    async def call(self, number: str = "0821234567", user_id: int = 1001, **extra: Any) -> dict:
        status, data = await self.req("POST", f"/omni/voice/{user_id}/call",
                                      {"phone_number": number, "outbound_cli": "27110001111",
                                       "unique_id": "ref-1", **extra})
        assert status == 200, data
        return data


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def lab(clock):
    async with await start_lab(clock=clock, token_ttl=600, telephony=InMemoryTelephony()) as server:
        yield server


@pytest.fixture
async def api(lab):
    async with aiohttp.ClientSession(lab.url) as session:
        yield Api(session)


def error(detail: str) -> dict:
    return {"success": False, "detail": detail}


# --- credentials -------------------------------------------------------------------------


async def test_authorize_returns_token_and_expiry_with_offset(api, clock):
    data = await api.authorize()
    assert data["user_id"] == 1001 and data["user_name"] == "agent1"
    assert len(data["token_key"]) >= 32
    expiry = datetime.fromisoformat(data["expiry_date"])
    assert expiry.utcoffset() == timedelta(0)
    assert int(expiry.timestamp()) == int(clock.t + 600)


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"user_name": "agent1", "password": base64.b64encode(b"wrong").decode()}, 401, "invalid user_name or password"),
    ({"user_name": "nobody", "password": base64.b64encode(b"agent1pass").decode()}, 401,
     "invalid user_name or password"),
    ({"user_name": "agent1", "password": "agent1pass!"}, 400, "password must be a base64 string"),
    ({"user_name": "agent1"}, 400, "password is required"),
    ({"password": "YQ=="}, 400, "user_name is required"),
    ({"user_name": 5, "password": "YQ=="}, 400, "user_name must be a non-empty string (at most 50 characters)"),
])
async def test_authorize_errors(api, body, status, detail):
    assert await api.req("POST", "/omni/user/authorize", body, token=None) == (status, error(detail))


async def test_system_key_is_required_on_every_omni_call(api):
    await api.authorize()
    for key in (None, "wrong-key", KEY + "x"):
        assert await api.req("POST", "/omni/user/authorize", {}, key=key, token=None) == (
            401, error("invalid system key"))
        assert await api.req("GET", "/omni/voice/1001/calls", key=key) == (401, error("invalid system key"))


async def test_token_missing_unknown_expired_or_of_another_user(api, clock):
    await api.authorize()
    assert await api.req("GET", "/omni/voice/1001/calls", token=None) == (401, error("invalid or expired token"))
    assert await api.req("GET", "/omni/voice/1001/calls", token="not-a-token") == (
        401, error("invalid or expired token"))
    assert await api.req("GET", "/omni/voice/1002/calls") == (403, error("token does not belong to user_id 1002"))
    assert (await api.req("GET", "/omni/voice/1001/calls"))[0] == 200
    clock.t += 601
    assert await api.req("GET", "/omni/voice/1001/calls") == (401, error("invalid or expired token"))
    await api.authorize()
    assert (await api.req("GET", "/omni/voice/1001/calls"))[0] == 200


async def test_unknown_user_and_bad_path_values(api):
    await api.authorize()
    assert await api.req("POST", "/omni/users/4242/login", {"campaign_id": 1, "extension": "9001"}) == (
        404, error("unknown user_id 4242"))
    assert await api.req("POST", "/omni/users/abc/login", {}) == (
        400, error("user_id must be an integer from 0 to 4294967295"))
    status, data = await api.req("POST", "/omni/no/such/path", {})
    assert (status, data["success"]) == (404, False)


# --- users -----------------------------------------------------------------------------


async def test_provision_extension(api, clock):
    await api.authorize()
    future = datetime.fromtimestamp(clock.t + 3600, UTC).replace(microsecond=0)
    status, data = await api.req("POST", "/omni/users/1001/webrtc",
                                 {"customer_id": 1, "expire_date": future.isoformat()})
    assert status == 200
    assert data == {"extension": "9001", "expire_date": future.isoformat()}
    # naive means UTC; same user keeps its extension
    status, data = await api.req("POST", "/omni/users/1001/webrtc",
                                 {"customer_id": 1, "expire_date": future.replace(tzinfo=None).isoformat()})
    assert data["extension"] == "9001" and data["expire_date"].endswith("+00:00")
    await api.authorize("agent2", "agent2pass")
    status, data = await api.req("POST", "/omni/users/1002/webrtc",
                                 {"customer_id": 1, "expire_date": future.isoformat()})
    assert data["extension"] == "9002"


@pytest.mark.parametrize(("body", "detail"), [
    ({"expire_date": "2099-01-01T00:00:00Z"}, "customer_id is required"),
    ({"customer_id": "1", "expire_date": "2099-01-01T00:00:00Z"}, "customer_id must be an integer from 0 to 4294967295"),
    ({"customer_id": 1}, "expire_date is required"),
    ({"customer_id": 1, "expire_date": "tomorrow"}, "expire_date must be an ISO-8601 date-time string"),
    ({"customer_id": 1, "expire_date": "2001-01-01T00:00:00Z"}, "expire_date must be in the future"),
    ({"customer_id": 7, "expire_date": "2099-01-01T00:00:00Z"}, "customer_id 7 is not the customer of user_id 1001"),
])
async def test_provision_extension_errors(api, body, detail):
    await api.authorize()
    assert await api.req("POST", "/omni/users/1001/webrtc", body) == (400, error(detail))


async def test_login_logout_cycle_and_conflicts(api):
    await api.authorize()
    assert await api.req("POST", "/omni/users/1001/logout", {}) == (409, error("user_id 1001 is not logged in"))
    assert await api.req("POST", "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"}) == (
        200, {"success": True, "detail": "user_id 1001 logged in to campaign_id 1"})
    assert await api.req("POST", "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"}) == (
        409, error("user_id 1001 is already logged in"))
    assert await api.req("POST", "/omni/users/1001/logout") == (
        200, {"success": True, "detail": "user_id 1001 logged out"})
    await api.login()


@pytest.mark.parametrize(("body", "status", "detail"), [
    ({"extension": "9001"}, 400, "campaign_id is required"),
    ({"campaign_id": True, "extension": "9001"}, 400, "campaign_id must be an integer from 0 to 4294967295"),
    ({"campaign_id": 1}, 400, "extension is required"),
    ({"campaign_id": 1, "extension": "90 01"}, 400,
     "extension must be an extension of letters, digits, _ . -"),
    ({"campaign_id": 77, "extension": "9001"}, 404, "unknown campaign_id 77"),
    ({"campaign_id": 2, "extension": "9001"}, 409, "campaign_id 2 is not running"),
])
async def test_login_errors(api, body, status, detail):
    await api.authorize()
    assert await api.req("POST", "/omni/users/1001/login", body) == (status, error(detail))


async def test_login_with_another_users_extension_is_refused(api):
    await api.authorize("agent2", "agent2pass")
    assert (await api.req("POST", "/omni/users/1002/webrtc",
                          {"customer_id": 1, "expire_date": "2099-01-01T00:00:00Z"}))[1]["extension"] == "9002"
    await api.authorize()
    assert await api.req("POST", "/omni/users/1001/login", {"campaign_id": 1, "extension": "9002"}) == (
        409, error("extension 9002 belongs to another user"))


async def test_invalid_json_body_names_the_problem(api):
    await api.authorize()
    assert await api.req("POST", "/omni/users/1001/login", raw=b"{not json") == (
        400, error("request body is not valid JSON"))
    assert await api.req("POST", "/omni/users/1001/login", raw=b"[1, 2]") == (
        400, error("request body must be a JSON object"))


class RefusingTelephony(InMemoryTelephony):
    """Stands for a telephony whose extension is not registered."""

    async def on_login(self, user_id: int, extension: str, campaign_id: int) -> None:
        raise TelephonyError(f"extension {extension} is not registered")


async def test_telephony_refusal_is_409_and_changes_nothing():
    async with await start_lab(telephony=RefusingTelephony()) as server, \
            aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        assert await api.req("POST", "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"}) == (
            409, error("extension 9001 is not registered"))
        assert await api.req("POST", "/omni/users/1001/logout") == (409, error("user_id 1001 is not logged in"))


class BusyTelephony(InMemoryTelephony):
    """Stands for a carrier that refuses every dial."""

    async def place_call(self, call):
        raise TelephonyError(f"{call.phone_number} is busy")


async def test_refused_dial_is_409_and_no_live_call_remains():
    async with await start_lab(telephony=BusyTelephony()) as server, aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        await api.login()
        body = {"phone_number": "0821234567", "outbound_cli": "2711", "unique_id": "u"}
        assert await api.req("POST", "/omni/voice/1001/call", body) == (409, error("0821234567 is busy"))
        assert await api.req("GET", "/omni/voice/1001/calls") == (200, {"calls": []})
        refused = await server.lab.store.call(1)
        assert refused is not None and (refused.call_state.value, refused.sip_code) == ("ended", 480)


# --- voice --------------------------------------------------------------------------------


async def test_call_requires_login_then_answers(api, clock):
    await api.authorize()
    body = {"phone_number": "0821234567", "outbound_cli": "27110001111", "unique_id": "u-1"}
    assert await api.req("POST", "/omni/voice/1001/call", body) == (409, error("user_id 1001 is not logged in"))
    await api.login()
    status, data = await api.req("POST", "/omni/voice/1001/call", {**body, "lead_id": 5})
    assert status == 200
    assert data["phone_number"] == "0821234567" and data["call_state"] == "answered"
    assert isinstance(data["call_id"], int)
    assert datetime.fromisoformat(data["call_start_time"]).timestamp() == int(clock.t)


@pytest.mark.parametrize(("change", "status", "detail"), [
    ({"phone_number": None}, 400, "phone_number is required"),
    ({"phone_number": "12ab"}, 400, "phone_number must be a phone number of 3 to 18 digits (optional +)"),
    ({"outbound_cli": 271}, 400, "outbound_cli must be a caller id of 1 to 20 digits (optional +) (at most 64 characters)"),
    ({"unique_id": ""}, 400, "unique_id must be a non-empty string (at most 64 characters)"),
    ({"lead_id": "5"}, 400, "lead_id must be an integer from 0 to 4294967295"),
    ({"lead_id": 9999}, 404, "unknown lead_id 9999"),
])
async def test_call_errors(api, change, status, detail):
    await api.authorize()
    await api.login()
    body = {"phone_number": "0821234567", "outbound_cli": "27110001111", "unique_id": "u-1", **change}
    body = {k: v for k, v in body.items() if v is not None}
    assert await api.req("POST", "/omni/voice/1001/call", body) == (status, error(detail))


async def test_hold_retrieve_record_dispose_hangup(api):
    await api.authorize()
    await api.login()
    call_id = (await api.call())["call_id"]
    base = f"/omni/voice/1001/calls/{call_id}"
    assert await api.req("POST", base + "/retrieve") == (409, error(f"call_id {call_id} is answered, not on hold"))
    assert (await api.req("POST", base + "/hold"))[0] == 200
    assert await api.req("POST", base + "/hold") == (409, error(f"call_id {call_id} is hold, not answered"))
    status, data = await api.req("GET", "/omni/voice/1001/calls")
    assert data["calls"][0]["call_state"] == "hold" and data["calls"][0]["direction"] == "outbound"
    assert (await api.req("POST", base + "/retrieve"))[0] == 200
    assert await api.req("POST", base + "/recording/stop") == (409, error(f"call_id {call_id} is not being recorded"))
    status, data = await api.req("POST", base + "/recording/start")
    assert status == 200 and data["recording_url"].endswith(f"/recordings/call-{call_id}.wav")
    assert await api.req("POST", base + "/recording/start") == (
        409, error(f"call_id {call_id} is already being recorded"))
    status, data = await api.req("POST", base + "/recording/stop")
    assert status == 200 and data["success"] is True
    assert await api.req("POST", base + "/dispose", {"disposition_code": "bad code"}) == (
        400, error("disposition_code must be a code of 1 to 20 letters, digits or _"))
    assert await api.req("POST", base + "/dispose", {"disposition_code": "SALE"}) == (
        200, {"success": True, "detail": f"call_id {call_id} disposed as SALE"})
    assert await api.req("POST", base + "/hangup") == (200, {"success": True, "detail": f"call_id {call_id} hung up"})
    assert await api.req("POST", base + "/hangup") == (409, error(f"call_id {call_id} has already ended"))
    assert await api.req("POST", base + "/recording/start") == (409, error(f"call_id {call_id} has already ended"))
    assert await api.req("GET", "/omni/voice/1001/calls") == (200, {"calls": []})


async def test_calls_of_other_users_and_unknown_calls_are_404(api):
    await api.authorize()
    await api.login()
    call_id = (await api.call())["call_id"]
    await api.authorize("agent2", "agent2pass")
    assert await api.req("POST", f"/omni/voice/1002/calls/{call_id}/hangup") == (
        404, error(f"unknown call_id {call_id} for user_id 1002"))
    assert await api.req("POST", "/omni/voice/1002/calls/777/hold") == (404, error("unknown call_id 777 for user_id 1002"))


async def test_second_call_is_a_conference_and_logout_ends_all(api):
    await api.authorize()
    await api.login()
    first = await api.call("0821111111")
    second = await api.call("0822222222")
    _status, data = await api.req("GET", "/omni/voice/1001/calls")
    assert [c["call_id"] for c in data["calls"]] == [first["call_id"], second["call_id"]]
    assert (await api.req("POST", "/omni/users/1001/logout"))[0] == 200
    await api.login()
    assert await api.req("GET", "/omni/voice/1001/calls") == (200, {"calls": []})


async def test_connect_calls_drops_the_agent(api):
    await api.authorize()
    await api.login()
    a, b = (await api.call("0821111111"))["call_id"], (await api.call("0822222222"))["call_id"]
    for body, detail in [({}, "call_ids is required"),
                         ({"call_ids": [a]}, "call_ids must be a list of exactly 2 call ids (integers)"),
                         ({"call_ids": [a, "b"]}, "call_ids must be a list of exactly 2 call ids (integers)"),
                         ({"call_ids": [a, a]}, "call_ids must name two different calls")]:
        assert await api.req("POST", "/omni/voice/1001/calls/connect", body) == (400, error(detail))
    assert await api.req("POST", "/omni/voice/1001/calls/connect", {"call_ids": [a, 999]}) == (
        404, error("unknown call_id 999 for user_id 1001"))
    status, data = await api.req("POST", "/omni/voice/1001/calls/connect", {"call_ids": [a, b]})
    assert (status, data["success"]) == (200, True)
    assert await api.req("GET", "/omni/voice/1001/calls") == (200, {"calls": []})
    assert await api.req("POST", "/omni/voice/1001/calls/connect", {"call_ids": [a, b]}) == (
        409, error(f"call_id {a} is ended, not answered or on hold"))


async def test_shotgun(api):
    await api.authorize()
    await api.login()
    body = {"phone_numbers": ["0821111111", "0822222222", "0823333333"], "outbound_cli": "2711", "unique_id": "s1"}
    status, data = await api.req("POST", "/omni/voice/1001/shotgun", body)
    assert status == 200 and data["phone_number"] == "0821111111" and data["call_state"] == "answered"
    for numbers, detail in [([], "phone_numbers must be a list of 1 to 5 phone numbers"),
                            (["0821111111"] * 2, "phone_numbers cannot contain duplicate values"),
                            ([f"082111111{i}" for i in range(6)], "phone_numbers must be a list of 1 to 5 phone numbers"),
                            (["x"], "phone_numbers must only contain phone numbers of 3 to 18 digits (optional +)")]:
        assert await api.req("POST", "/omni/voice/1001/shotgun", {**body, "phone_numbers": numbers}) == (
            400, error(detail))


# --- platform -----------------------------------------------------------------------------


async def test_notification_endpoint_validation(api):
    await api.authorize("supervisor1", "supervisor1pass")  # platform-wide settings
    assert await api.req("POST", "/omni/notifications/endpoint", {"url": "ftp://x"}) == (
        400, error("url must be an http or https URL"))
    assert await api.req("POST", "/omni/notifications/endpoint", {"url": "http://127.0.0.1:9/hook"}) == (
        200, {"success": True, "detail": "notification endpoint set"})
    assert await api.req("POST", "/omni/notifications/endpoint", {"url": "http://127.0.0.1:9/hook"}, token=None) == (
        401, error("invalid or expired token"))


async def test_campaign_status_moves(api):
    await api.authorize("supervisor1", "supervisor1pass")  # platform-wide settings
    assert await api.req("GET", "/omni/campaigns/2/status") == (
        200, {"campaign_id": 2, "status": 0, "status_name": "NotRunning"})
    moves = [(1, 409), (0, 409), (2, 200), (2, 409), (1, 200), (2, 409), (0, 200), (2, 200), (0, 200)]
    names = {0: "NotRunning", 1: "Running", 2: "Paused"}
    current = 0
    for target, status in moves:
        got = await api.req("POST", "/omni/campaigns/2/status", {"status": target})
        if status == 200:
            assert got == (200, {"campaign_id": 2, "status": target, "status_name": names[target]})
            current = target
        else:
            assert got == (409, error(f"campaign_id 2 cannot move from {names[current]} to {names[target]}"))
    assert await api.req("POST", "/omni/campaigns/2/status", {"status": 3}) == (
        400, error("status must be 0 (NotRunning), 1 (Running) or 2 (Paused)"))
    assert await api.req("POST", "/omni/campaigns/2/status", {}) == (400, error("status is required"))
    assert await api.req("GET", "/omni/campaigns/99/status") == (404, error("unknown campaign_id 99"))


async def test_openapi_documents_are_served(lab):
    async with aiohttp.ClientSession(lab.url) as session:
        async with session.get("/openapi.yaml") as resp:
            assert resp.status == 200 and "openapi: 3" in await resp.text()
        async with session.get("/openapi.json") as resp:
            doc = await resp.json()
    assert "/vicidial/leads/archive" in doc["paths"] and "/omni/voice/{user_id}/call" in doc["paths"]
    assert set(doc["components"]["securitySchemes"]) == {"systemKey", "userToken"}


async def test_logs_never_show_key_passwords_or_tokens(api, caplog):
    caplog.set_level(logging.DEBUG, logger="softphone")
    data = await api.authorize()
    await api.login()
    await api.call()
    await api.req("POST", "/omni/user/authorize", {"user_name": "agent1", "password": "d3Jvbmc="}, token=None)
    for secret in (data["token_key"], KEY, "agent1pass", base64.b64encode(b"agent1pass").decode()):
        assert secret not in caplog.text
    assert "logged in" in caplog.text  # the log is not simply empty


async def test_reprs_never_show_secrets(lab):
    text = repr(lab) + repr(lab.lab) + repr(lab.seed) + repr(lab.db) + repr(await lab.lab.store.user(1001))
    for secret in (KEY, "agent1pass", "agent2pass"):
        assert secret not in text


@pytest.fixture(scope="module")
def mariadb_server(request: pytest.FixtureRequest):
    """$SOFTPHONE_TEST_MYSQL_URL (an external server) if set, else the ``mariadb`` peer fixture."""
    return os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb")


@pytest.mark.peer
async def test_api_flow_on_mariadb(mariadb_server):
    """The same state machine on the real database (calls, tokens, campaigns in InnoDB)."""
    url = fresh_mysql_url(mariadb_server)
    try:
        async with await start_lab(db_url=url, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
            api = Api(session)
            await api.authorize()
            await api.login()
            call_id = (await api.call(lead_id=4))["call_id"]
            assert (await api.req("POST", f"/omni/voice/1001/calls/{call_id}/hold"))[0] == 200
            _status, data = await api.req("GET", "/omni/voice/1001/calls")
            assert data["calls"][0]["call_state"] == "hold"
            assert (await api.req("POST", "/omni/users/1001/logout"))[0] == 200
            await api.authorize("supervisor1", "supervisor1pass")  # platform-wide settings
            assert (await api.req("POST", "/omni/campaigns/2/status", {"status": 2}))[0] == 200
            for hook in ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"):  # upsert, twice
                assert (await api.req("POST", "/omni/notifications/endpoint", {"url": hook}))[0] == 200
            assert await server.lab.store.setting("notification_url") == "http://127.0.0.1:9/b"
        # state survives a restart on the same database; seeding again changes nothing
        async with await start_lab(db_url=url, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
            api = Api(session)
            await api.authorize()
            assert await api.req("GET", "/omni/campaigns/2/status") == (
                200, {"campaign_id": 2, "status": 2, "status_name": "Paused"})
    finally:
        drop_mysql_database(url)


async def test_restart_on_a_file_database_starts_with_nobody_logged_in(tmp_path):
    url = f"sqlite:///{tmp_path}/lab.db"
    async with await start_lab(db_url=url, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        await api.login()
        await api.call()
    async with await start_lab(db_url=url, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        assert await api.req("GET", "/omni/voice/1001/calls") == (200, {"calls": []})
        assert await api.req("POST", "/omni/users/1001/logout") == (409, error("user_id 1001 is not logged in"))
        await api.login()
        assert (await api.call())["call_id"] == 2


async def test_overridden_paths_keep_credentials_and_error_shapes():
    """A deployment's own paths (softphone.platform.paths overrides) are served the same way."""
    paths = DEFAULT_PATHS.override(call="/api/v2/voice/{user_id}/dial", lead_archive="/api/v2/leads/archive")
    async with await start_lab(paths=paths, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        body = {"phone_number": "0821234567", "outbound_cli": "2711", "unique_id": "x"}
        assert await api.req("POST", "/api/v2/voice/1001/dial", body, token=None) == (
            401, error("invalid or expired token"))
        assert await api.req("POST", "/api/v2/voice/1001/dial", body) == (409, error("user_id 1001 is not logged in"))
        assert await api.req("POST", "/api/v2/leads/archive", {}, key="bad") == (
            401, {"message": "unable to validate api user"})
        status, data = await api.req("POST", "/api/v2/leads/archive", {"insert_leads": "x"})
        assert (status, data["message"]) == (400, "insert_leads must be a boolean value")


async def test_seed_may_preprovision_extensions(tmp_path):
    import json

    from softphone.lab.seed import load_seed

    seed = load_seed()
    data = {"api_key": seed.api_key, "customers": seed.customers, "campaigns": seed.campaigns,
            "users": [{**seed.users[0], "extension": "7001"}, seed.users[1]]}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(data))
    async with await start_lab(seed=path, telephony=InMemoryTelephony()) as server, aiohttp.ClientSession(server.url) as session:
        api = Api(session)
        await api.authorize()
        status, data = await api.req("POST", "/omni/users/1001/webrtc",
                                     {"customer_id": 1, "expire_date": "2030-01-01T00:00:00Z"})
        assert (status, data["extension"]) == (200, "7001")
        await api.authorize("agent2", "agent2pass")
        assert await api.req("POST", "/omni/users/1002/login", {"campaign_id": 1, "extension": "7001"}) == (
            409, error("extension 7001 belongs to another user"))


async def test_login_with_an_expired_extension_is_refused(api, clock):
    await api.authorize()
    until = datetime.fromtimestamp(clock.t + 120, UTC).replace(microsecond=0).isoformat()
    status, data = await api.req("POST", "/omni/users/1001/webrtc", {"customer_id": 1, "expire_date": until})
    assert status == 200
    clock.t += 121
    assert await api.req("POST", "/omni/users/1001/login", {"campaign_id": 1, "extension": data["extension"]}) == (
        409, error(f"extension {data['extension']} expired at {until}"))
