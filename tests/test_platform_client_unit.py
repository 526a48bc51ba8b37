"""PlatformClient against small loopback aiohttp servers (real HTTP, scripted answers).

These pin what the lab cannot easily provoke: headers, token caching and
refresh, retry rules (flaky server), timeouts, unreadable answers, TLS
verification, secrets kept out of reprs, logs and errors.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import ssl
from collections import Counter

import pytest
from aiohttp import web
from tls_support import make_self_signed

from softphone.errors import (
    ConfigurationError,
    OfficeHoursError,
    PlatformAuthError,
    PlatformConflictError,
    PlatformConnectionError,
    PlatformError,
    PlatformNotFoundError,
    PlatformServerError,
    PlatformTimeoutError,
    PlatformValidationError,
)
from softphone.platform.client import PlatformClient
from softphone.platform.models import CallState, CampaignState

KEY = "unit-system-key-123"
PASSWORD = "s3cret-agent-pw"


@contextlib.asynccontextmanager
async def serve(app: web.Application, ssl_context: ssl.SSLContext | None = None):
    """Run ``app`` on a free loopback port; yield its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


class FakeOmni:
    """A scripted OmniSense: counts requests, checks credentials, issues tokens."""

    def __init__(self, token_lifetime: float = 3600.0):
        self.hits: Counter[str] = Counter()
        self.headers: list[tuple[str, dict]] = []
        self.token_lifetime = token_lifetime
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.script: dict[str, list] = {}  # path -> list of (status, body) to answer first
        self.release = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def revoke_tokens(self):
        self.valid_tokens.clear()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[f"{request.method} {path}"] += 1
        self.headers.append((path, dict(request.headers)))
        if request.headers.get("Authorization") != f"Key={KEY}":
            if path.startswith("/vicidial"):
                return web.json_response({"message": "unable to validate api user"}, status=401)
            return web.json_response({"success": False, "detail": "invalid system key"}, status=401)
        scripted = self.script.get(path)
        if scripted:
            action = scripted.pop(0)
            if action == "hang":
                await asyncio.wait_for(self.release.wait(), 10)
            elif action == "drop":  # the request arrived, then the connection dies without an answer
                request.transport.close()
                return web.Response(status=200)
            elif action == "html500":
                return web.Response(status=500, text="<html>boom</html>", content_type="text/html")
            elif action == "text200":
                return web.Response(status=200, text="OK")
            else:
                status, body = action
                return web.json_response(body, status=status)
        if path == "/omni/user/authorize":
            body = await request.json()
            if body.get("user_name") != "agent1" or base64.b64decode(body["password"]).decode() != PASSWORD:
                return web.json_response({"success": False, "detail": "invalid credentials"}, status=401)
            self.tokens_issued += 1
            token = f"tok-{self.tokens_issued}-abcdef"
            self.valid_tokens.add(token)
            expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.token_lifetime)
            return web.json_response({"user_id": 1001, "user_name": "agent1", "token_key": token,
                                      "expiry_date": expiry.isoformat()})
        if path.startswith("/omni"):
            if request.headers.get("tokenKey") not in self.valid_tokens:
                return web.json_response({"success": False, "detail": "invalid or expired token"}, status=401)
        if path == "/omni/voice/1001/calls" and request.method == "GET":
            return web.json_response({"calls": [{"call_id": 5, "phone_number": "555", "call_state": "answered",
                                                 "call_start_time": "2026-01-01T00:00:00+00:00",
                                                 "direction": "outbound"}]})
        if path == "/omni/voice/1001/call":
            body = await request.json()
            return web.json_response({"call_id": 9, "phone_number": body["phone_number"],
                                      "call_state": "dialing", "call_start_time": "2026-01-01T00:00:00Z"})
        if path.startswith("/vicidial/leads/"):
            body = await request.json()
            n = len(body["lead_ids"])
            return web.json_response({"message": "lead_ids batch was successfully processed",
                                      "select_count": n, "insert_count": n, "update_count": 0,
                                      "delete_count": n})
        return web.json_response({"success": True, "detail": f"{request.method} {path}"})


@pytest.fixture
async def fake():
    omni = FakeOmni()
    async with serve(omni.app) as url:
        omni.url = url
        yield omni
        omni.release.set()  # let handlers still hanging finish before the server stops


def client_for(fake, **kw) -> PlatformClient:
    kw.setdefault("backoff", 0.01)
    return PlatformClient(fake.url, KEY, username="agent1", password=PASSWORD, **kw)


async def test_headers_token_and_base64_password(fake):
    async with client_for(fake) as c:
        await c.login(1, "9001")
        await c.archive_leads([1, 2])
    by_path = {p: h for p, h in fake.headers}
    auth = by_path["/omni/user/authorize"]
    assert auth["Authorization"] == f"Key={KEY}" and "tokenKey" not in auth
    assert by_path["/omni/users/1001/login"]["tokenKey"].startswith("tok-")
    assert by_path["/omni/users/1001/login"]["Authorization"] == f"Key={KEY}"
    archive = by_path["/vicidial/leads/archive"]
    assert "tokenKey" not in archive and archive["Authorization"] == f"Key={KEY}"


async def test_token_cached_across_many_and_concurrent_calls(fake):
    async with client_for(fake) as c:
        await asyncio.gather(*(c.hold(i) for i in range(20)))
        for i in range(5):
            await c.retrieve(i)
        assert c.user_id == 1001
    assert fake.hits["POST /omni/user/authorize"] == 1
    assert c.authorizations == 1


async def test_token_refreshed_when_near_expiry():
    omni = FakeOmni(token_lifetime=3600)
    now = [dt.datetime.now(dt.timezone.utc)]
    async with serve(omni.app) as url:
        omni.url = url
        async with client_for(omni, clock=lambda: now[0]) as c:
            await c.hold(1)
            await c.hold(2)
            assert omni.hits["POST /omni/user/authorize"] == 1
            now[0] += dt.timedelta(seconds=3590)  # inside the refresh margin
            await c.hold(3)
            assert omni.hits["POST /omni/user/authorize"] == 2


async def test_401_refreshes_token_once_then_succeeds(fake):
    async with client_for(fake) as c:
        await c.hold(1)
        fake.revoke_tokens()  # the server forgets the token (expired early, restarted)
        result = await c.hold(2)
    assert result.success
    assert fake.hits["POST /omni/user/authorize"] == 2
    assert fake.hits["POST /omni/voice/1001/calls/2/hold"] == 2


async def test_401_twice_surfaces_auth_error(fake):
    fake.script["/omni/voice/1001/calls/3/hold"] = [
        (401, {"success": False, "detail": "invalid or expired token"})] * 2
    async with client_for(fake) as c:
        with pytest.raises(PlatformAuthError) as info:
            await c.hold(3)
    assert info.value.status == 401 and "invalid or expired token" in str(info.value)
    assert fake.hits["POST /omni/voice/1001/calls/3/hold"] == 2
    assert fake.hits["POST /omni/user/authorize"] == 2


async def test_bad_system_key_is_not_retried_with_a_new_token(fake):
    async with PlatformClient(fake.url, "wrong-key-xyz", username="agent1", password=PASSWORD) as c:
        with pytest.raises(PlatformAuthError, match="invalid system key"):
            await c.hold(1)
        with pytest.raises(PlatformAuthError, match="unable to validate api user"):
            await c.archive_leads([1])
    assert fake.hits["POST /omni/user/authorize"] == 1
    assert fake.hits["POST /vicidial/leads/archive"] == 1


async def test_get_retried_on_503(fake):
    fake.script["/omni/voice/1001/calls"] = [(503, {"success": False, "detail": "busy"})] * 2
    async with client_for(fake, retries=2) as c:
        calls = await c.active_calls()
    assert [x.call_id for x in calls] == [5] and calls[0].state is CallState.ANSWERED and calls[0].is_answered
    assert fake.hits["GET /omni/voice/1001/calls"] == 3


async def test_get_gives_up_after_retries(fake):
    fake.script["/omni/voice/1001/calls"] = [(502, {"success": False, "detail": "bad gateway"})] * 5
    async with client_for(fake, retries=1) as c:
        with pytest.raises(PlatformServerError, match="bad gateway") as info:
            await c.active_calls()
    assert info.value.status == 502
    assert fake.hits["GET /omni/voice/1001/calls"] == 2


async def test_call_never_replaced_after_503(fake):
    fake.script["/omni/voice/1001/call"] = [(503, {"success": False, "detail": "busy"})]
    async with client_for(fake, retries=3) as c:
        with pytest.raises(PlatformServerError):
            await c.call("5551234", outbound_cli="100", unique_id="u1")
        with_shotgun = fake.script.setdefault("/omni/voice/1001/shotgun", [])
        with_shotgun.append((504, {"success": False, "detail": "timeout"}))
        with pytest.raises(PlatformServerError):
            await c.shotgun(["1", "2"], outbound_cli="100", unique_id="u2")
    assert fake.hits["POST /omni/voice/1001/call"] == 1
    assert fake.hits["POST /omni/voice/1001/shotgun"] == 1


async def test_retry_safe_override_for_raw_requests(fake):
    fake.script["/omni/voice/1001/calls/8/hold"] = [(503, {"success": False, "detail": "busy"})] * 2
    async with client_for(fake, retries=2) as c:
        answer = await c.request("hold", {}, retry_safe=True, user_id=1001, call_id=8)
    assert answer["success"] is True
    assert fake.hits["POST /omni/voice/1001/calls/8/hold"] == 3


async def test_archive_retried_and_attempts_reported(fake):
    fake.script["/vicidial/leads/archive"] = [(503, {"message": "busy"})]
    async with client_for(fake, retries=2) as c:
        result = await c.archive_leads([1, 2, 3])
    assert result.attempts == 2 and result.insert_count == 3
    assert fake.hits["POST /vicidial/leads/archive"] == 2


async def test_timeout_retries_get_but_not_call(fake):
    fake.script["/omni/voice/1001/call"] = ["hang"]
    fake.script["/omni/voice/1001/calls"] = ["hang", "hang"]
    async with client_for(fake, timeout=0.3, retries=2) as c:
        await c.authorize()
        with pytest.raises(PlatformTimeoutError, match="no answer"):
            await c.call("555", outbound_cli="1", unique_id="u")
        calls = await c.active_calls()  # two timeouts, then the third attempt answers
    assert len(calls) == 1
    assert fake.hits["POST /omni/voice/1001/call"] == 1
    assert fake.hits["GET /omni/voice/1001/calls"] == 3


async def test_dropped_connection_retries_get_but_not_call(fake):
    fake.script["/omni/voice/1001/call"] = ["drop"]
    fake.script["/omni/voice/1001/calls"] = ["drop"]
    async with client_for(fake, retries=2) as c:
        await c.authorize()
        with pytest.raises(PlatformConnectionError, match="connection failed"):
            await c.call("555", outbound_cli="1", unique_id="u")
        assert len(await c.active_calls()) == 1
    assert fake.hits["POST /omni/voice/1001/call"] == 1
    assert fake.hits["GET /omni/voice/1001/calls"] == 2


async def test_connection_refused_is_retried_even_for_call_then_fails():
    # a port nobody listens on: nothing was ever sent, so repeating is safe
    sock = __import__("socket").socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    async with PlatformClient(f"http://127.0.0.1:{port}", KEY, user_id=1, backoff=0.01, retries=2) as c:
        with pytest.raises(PlatformConnectionError, match="cannot connect"):
            await c.archive_leads([1])
    assert c.sent["lead_archive"] == 3


@pytest.mark.parametrize(
    ("status", "body", "exc"),
    [
        (400, {"success": False, "detail": "phone_number is required"}, PlatformValidationError),
        (403, {"success": False, "detail": "token does not belong to user_id 1001"}, PlatformAuthError),
        (404, {"success": False, "detail": "unknown call 77"}, PlatformNotFoundError),
        (409, {"success": False, "detail": "user is logged out"}, PlatformConflictError),
        (500, {"success": False, "detail": "database down"}, PlatformServerError),
        (418, {"success": False, "detail": "teapot"}, PlatformError),
    ],
)
async def test_status_maps_to_typed_error(fake, status, body, exc):
    fake.script["/omni/voice/1001/calls/77/hangup"] = [(status, body)]
    async with client_for(fake) as c:
        with pytest.raises(exc) as info:
            await c.hangup(77)
    assert info.value.status == status
    assert (body.get("detail") or body.get("message")) in str(info.value)
    assert "hangup" in str(info.value) and info.value.detail == body


async def test_403_on_archive_is_office_hours(fake):
    fake.script["/vicidial/leads/archive"] = [
        (403, {"message": "api cannot be executed during office hours time condition"})]
    async with client_for(fake) as c:
        with pytest.raises(OfficeHoursError, match="office hours") as info:
            await c.archive_leads([1])
    assert info.value.status == 403


async def test_unreadable_answers(fake):
    fake.script["/omni/voice/1001/calls/1/hold"] = ["html500", "text200"]
    async with client_for(fake) as c:
        with pytest.raises(PlatformServerError, match="boom") as info:
            await c.hold(1)
        assert info.value.status == 500
        with pytest.raises(PlatformServerError, match="not JSON"):
            await c.hold(1)


async def test_success_false_with_200_is_an_error(fake):
    fake.script["/omni/users/1001/logout"] = [(200, {"success": False, "detail": "not logged in"})]
    async with client_for(fake) as c:
        with pytest.raises(PlatformError, match="not logged in"):
            await c.logout()


async def test_answer_missing_a_field_names_it(fake):
    fake.script["/omni/voice/1001/call"] = [(200, {"call_id": 1, "phone_number": "5"})]
    async with client_for(fake) as c:
        with pytest.raises(PlatformServerError, match="call_state"):
            await c.call("5", outbound_cli="1", unique_id="u")


async def test_all_methods_hit_their_paths(fake):
    fake.script["/omni/campaigns/1/status"] = [
        (200, {"campaign_id": 1, "status": 1, "status_name": "Running"}),
        (200, {"campaign_id": 1, "status": 2, "status_name": "Paused"})]
    fake.script["/omni/users/1001/webrtc"] = [(200, {"extension": "9001", "expire_date": "2030-01-01T00:00:00+00:00"})]
    fake.script["/omni/voice/1001/calls/4/recording/start"] = [
        (200, {"success": True, "detail": "ok", "recording_url": "http://x/rec.wav"})]
    async with client_for(fake) as c:
        ext = await c.provision_extension(1, dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc))
        assert ext.extension == "9001"
        assert (await c.login(1, ext.extension)).success
        call = await c.call("5551", outbound_cli="100", unique_id="u", lead_id=3)
        assert call.call_id == 9 and call.state is CallState.DIALING
        await c.hold(4)
        await c.retrieve(4)
        rec = await c.start_recording(4)
        assert rec.recording_url == "http://x/rec.wav"
        assert (await c.stop_recording(4)).recording_url is None
        await c.dispose(4, "SALE")
        await c.connect_calls(4, 5)
        await c.hangup(4)
        await c.set_notification_endpoint("http://127.0.0.1:1/hook")
        status = await c.campaign_status(1)
        assert status.state is CampaignState.RUNNING
        assert (await c.set_campaign_status(1, CampaignState.PAUSED)).status == 2
        await c.dearchive_leads([1])
        await c.logout()
    expected = ["POST /omni/users/1001/webrtc", "POST /omni/users/1001/login", "POST /omni/voice/1001/call",
                "POST /omni/voice/1001/calls/4/hold", "POST /omni/voice/1001/calls/4/retrieve",
                "POST /omni/voice/1001/calls/4/recording/start", "POST /omni/voice/1001/calls/4/recording/stop",
                "POST /omni/voice/1001/calls/4/dispose", "POST /omni/voice/1001/calls/connect",
                "POST /omni/voice/1001/calls/4/hangup", "POST /omni/notifications/endpoint",
                "GET /omni/campaigns/1/status", "POST /omni/campaigns/1/status",
                "POST /vicidial/leads/dearchive", "POST /omni/users/1001/logout"]
    for e in expected:
        assert fake.hits[e] == 1, e


async def test_paths_override_reaches_the_wire(fake):
    from softphone.platform.paths import DEFAULT_PATHS

    paths = DEFAULT_PATHS.override(hold="/custom/{call_id}/park")
    async with client_for(fake, paths=paths) as c:
        await c.hold(12)
    assert fake.hits["POST /custom/12/park"] == 1


async def test_local_validation_sends_nothing(fake):
    async with client_for(fake) as c:
        for numbers in ([], ["1", "2", "3", "4", "5", "6"], ["1", "1"], ["1", " "]):
            with pytest.raises(PlatformValidationError, match="phone_numbers"):
                await c.shotgun(numbers, outbound_cli="1", unique_id="u")
        with pytest.raises(PlatformValidationError, match="phone_numbers"):
            await c.shotgun("555", outbound_cli="1", unique_id="u")
        with pytest.raises(PlatformValidationError, match="integer values") as info:
            await c.archive_leads([1, "2", True])
        assert info.value.ids == ["2", True] and info.value.status is None
        with pytest.raises(PlatformValidationError, match="atleast 1"):
            await c.archive_leads([])
        with pytest.raises(PlatformValidationError, match="exceed 500"):
            await c.archive_leads(range(1, 502))
        with pytest.raises(PlatformValidationError, match="duplicate") as info:
            await c.dearchive_leads([1, 2, 1])
        assert info.value.ids == [1]
        with pytest.raises(PlatformValidationError, match="insert_leads must be a boolean"):
            await c.archive_leads([1], insert_leads="yes")
        with pytest.raises(PlatformValidationError, match="status"):
            await c.set_campaign_status(1, 7)
        with pytest.raises(PlatformValidationError, match="disposition_code"):
            await c.dispose(1, " ")
        with pytest.raises(PlatformValidationError, match="call_ids"):
            await c.connect_calls(3, 3)
        with pytest.raises(PlatformValidationError, match="url"):
            await c.set_notification_endpoint("ftp://x")
    assert not any(k.startswith("POST /vicidial") or "shotgun" in k for k in fake.hits)


async def test_validate_false_sends_raw_values(fake):
    fake.script["/vicidial/leads/archive"] = [(400, {"message": "lead_ids must only contain integer values",
                                                     "lead_errors": 1, "lead_ids": ["0"]})]
    async with client_for(fake) as c:
        with pytest.raises(PlatformValidationError) as info:
            await c.archive_leads(["0"], validate=False)
    assert info.value.ids == ["0"] and info.value.status == 400


def test_configuration_errors():
    with pytest.raises(ConfigurationError, match="base_url"):
        PlatformClient("ftp://x", KEY)
    with pytest.raises(ConfigurationError, match="credentials"):
        PlatformClient("http://u:p@host", KEY)
    with pytest.raises(ConfigurationError, match="auth_key"):
        PlatformClient("http://host", "")
    with pytest.raises(ConfigurationError, match="exclusive"):
        PlatformClient("https://host", KEY, ca_file="x.pem", insecure=True)
    with pytest.raises(ConfigurationError, match="ca_file"):
        PlatformClient("https://host", KEY, ca_file="/nonexistent/ca.pem")
    with pytest.raises(ConfigurationError, match="timeout"):
        PlatformClient("https://host", KEY, timeout=0)


async def test_omni_call_without_credentials_says_so(fake):
    async with PlatformClient(fake.url, KEY, user_id=1001) as c:
        with pytest.raises(ConfigurationError, match="username and password"):
            await c.hold(1)


async def test_secrets_never_in_repr_logs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG, logger="softphone")
    fake.script["/omni/voice/1001/calls/1/hold"] = [(401, {"success": False, "detail": "nope"})] * 2
    async with client_for(fake) as c:
        text = repr(c)
        with pytest.raises(PlatformAuthError) as info:
            await c.hold(1)
        token = c.token.token_key.reveal()
        text += repr(c.token) + str(info.value) + repr(info.value)
    text += caplog.text
    assert fake.url in repr(c)
    for secret in (KEY, PASSWORD, base64.b64encode(PASSWORD.encode()).decode(), token):
        assert secret not in text
    assert "hold" in caplog.text and "-> 401" in caplog.text  # debug lines: method, path, status


# --- TLS ----------------------------------------------------------------------------


def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1: (server SSL context, PEM file)."""
    tls = make_self_signed(tmp_path)
    return tls.server_context(), tls.cert_file


async def test_tls_verified_by_default_ca_file_or_insecure(tmp_path):
    ctx, cert_file = _self_signed(tmp_path)
    omni = FakeOmni()
    async with serve(omni.app, ssl_context=ctx) as url:
        async with PlatformClient(url, KEY, retries=3) as c:
            with pytest.raises(PlatformConnectionError, match=r"not trusted.*ca_file") as info:
                await c.archive_leads([1])
            assert KEY not in str(info.value)
        assert c.sent["lead_archive"] == 1  # a certificate problem is not retried
        async with PlatformClient(url, KEY, ca_file=cert_file) as c:
            assert (await c.archive_leads([1, 2])).select_count == 2
        with pytest.warns(UserWarning, match="verification is OFF"):
            insecure = PlatformClient(url, KEY, insecure=True)
        async with insecure as c:
            assert (await c.archive_leads([1])).select_count == 1
    assert omni.hits["POST /vicidial/leads/archive"] == 2


async def test_closed_client_refuses(fake):
    c = client_for(fake)
    async with c:
        await c.archive_leads([1])
    with pytest.raises(PlatformError, match="closed"):
        await c.archive_leads([1])



async def test_from_launch_params(fake):
    from softphone.params import load_params

    params = load_params(None, flags={
        "auth_key": KEY, "server": "pbx.invalid", "turn_port": "3478", "customer_id": "1", "user_id": "1001",
        "username": "agent1", "password": PASSWORD, "expire_date": "2099-01-01T00:00:00+00:00",
        "api_url": fake.url})
    async with PlatformClient.from_params(params, backoff=0.01) as c:
        assert c.user_id == 1001 and c.base_url == fake.url
        assert (await c.hold(3)).success
    assert fake.hits["POST /omni/voice/1001/calls/3/hold"] == 1


# --- the token cache on its own -----------------------------------------------------------


async def test_token_cache_single_flight_and_stale_rejection():
    from softphone.log import Secret
    from softphone.platform.auth import TokenCache, TokenState
    from softphone.platform.models import Token

    issued = []

    async def authorize():
        await asyncio.sleep(0)
        issued.append(Token(1, "a", Secret(f"tok-{len(issued)}-xyz"),
                            dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)))
        return issued[-1]

    cache = TokenCache(authorize)
    assert cache.state is TokenState.EMPTY
    tokens = await asyncio.gather(*(cache.get() for _ in range(10)))
    assert len(issued) == 1 and all(t is issued[0] for t in tokens)
    assert cache.state is TokenState.VALID
    # two requests fail with the same token at once: one refresh, both get the new token
    fresh = await asyncio.gather(cache.refresh_after_rejection(issued[0]), cache.refresh_after_rejection(issued[0]))
    assert len(issued) == 2 and fresh[0] is fresh[1] is issued[1]
    assert "tok-" not in repr(cache)


async def test_token_without_expiry_is_used_until_rejected():
    from softphone.log import Secret
    from softphone.platform.auth import TokenCache, TokenState
    from softphone.platform.models import Token

    count = 0

    async def authorize():
        nonlocal count
        count += 1
        return Token(1, "a", Secret("tok-no-expiry"), None)

    cache = TokenCache(authorize)
    await cache.get()
    await cache.get()
    assert count == 1 and cache.state is TokenState.VALID


async def test_short_lived_token_margin_is_a_tenth_of_its_life():
    from softphone.log import Secret
    from softphone.platform.auth import TokenCache, TokenState
    from softphone.platform.models import Token

    now = [dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)]

    async def authorize():
        return Token(1, "a", Secret("tok-short-1"), now[0] + dt.timedelta(seconds=100))

    cache = TokenCache(authorize, clock=lambda: now[0])
    await cache.get()
    now[0] += dt.timedelta(seconds=89)
    assert cache.state is TokenState.VALID  # a 60 s margin would already have expired it
    now[0] += dt.timedelta(seconds=2)
    assert cache.state is TokenState.EXPIRED
