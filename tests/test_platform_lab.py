"""PlatformClient and `softphone leads` against the real lab, over real HTTP.

Every endpoint and every documented error is exercised on a lab started on a
free loopback port with its real database (SQLite in memory or in a file;
the lab's MariaDB path is the lab engineer's to test).  The CLI tests run the
lab in a thread with its own event loop, so click's runner can call
``asyncio.run`` as the real command does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import threading
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from softphone.cli import main
from softphone.errors import (
    OfficeHoursError,
    PlatformAuthError,
    PlatformConflictError,
    PlatformError,
    PlatformNotFoundError,
    PlatformServerError,
    PlatformValidationError,
)
from softphone.lab.office_hours import OfficeHours
from softphone.lab.schema import LEAD_COLUMN_NAMES, lead_column_list
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.platform.client import PlatformClient
from softphone.platform.models import CallState, CampaignState

KEY = "lab-system-key"
OPEN_ALL_DAY = "daily 00:00-24:00 UTC"


@pytest.fixture
async def lab():
    server = await start_lab(db_url="sqlite:///:memory:", telephony=InMemoryTelephony())
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.peer)])
def lab_db_url(request, tmp_path):
    """A fresh lab database: a SQLite file, or a new database on the MariaDB peer."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lab.db'}"
        return
    import os

    from softphone.lab.testing import MYSQL_URL_ENV, drop_mysql_database, fresh_mysql_url

    url = fresh_mysql_url(os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb"))
    yield url
    drop_mysql_database(url)


@pytest.fixture
async def archive_lab(lab_db_url):
    """A lab on each database backend, for the archive tests where the database matters."""
    server = await start_lab(db_url=lab_db_url, telephony=InMemoryTelephony())
    try:
        yield server
    finally:
        await server.close()


def agent(lab, **kw) -> PlatformClient:
    kw.setdefault("backoff", 0.01)
    return PlatformClient(lab.url, KEY, username="agent1", password="agent1pass", **kw)


def supervisor(lab, **kw) -> PlatformClient:
    """The seed's supervisor: only its token may change campaign statuses and the notification URL."""
    kw.setdefault("backoff", 0.01)
    return PlatformClient(lab.url, KEY, username="supervisor1", password="supervisor1pass", **kw)


async def count(lab, sql: str, params=()) -> int:
    async def q(tx):
        return (await tx.fetchone(sql, params))[0]

    return await lab.db.run_transaction(q, readonly=True)


# --- agent session and voice endpoints --------------------------------------------------


async def test_authorize_returns_a_token_with_expiry(lab):
    async with agent(lab) as c:
        token = await c.authorize()
    assert token.user_id == 1001 and token.user_name == "agent1"
    assert token.expiry_date is not None
    left = (token.expiry_date - dt.datetime.now(dt.timezone.utc)).total_seconds()
    assert 3000 < left <= 3600  # the lab's default lifetime is one hour
    assert "agent1pass" not in repr(token) and token.token_key.reveal() not in repr(token)


async def test_full_agent_session_through_every_voice_endpoint(lab):
    expire = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
    async with agent(lab) as c:
        ext = await c.provision_extension(1, expire)
        assert ext.extension and ext.expire_date is not None
        login = await c.login(1, ext.extension)
        assert login.success and "logged in" in login.detail
        first = await c.call("0821234567", outbound_cli="0110001111", unique_id="u-1", lead_id=3)
        assert first.phone_number == "0821234567" and first.call_id > 0
        assert first.state in (CallState.ANSWERED, CallState.DIALING, CallState.RINGING)
        active = await c.active_calls()
        assert [x.call_id for x in active] == [first.call_id] and active[0].direction == "outbound"
        assert (await c.hold(first.call_id)).success
        assert (await c.active_calls())[0].state is CallState.HOLD
        assert (await c.retrieve(first.call_id)).success
        rec = await c.start_recording(first.call_id)
        assert rec.success and rec.recording_url and rec.recording_url.endswith(".wav")
        assert (await c.stop_recording(first.call_id)).recording_url == rec.recording_url
        assert (await c.dispose(first.call_id, "SALE")).success
        second = await c.call("0829999999", outbound_cli="0110001111", unique_id="u-2")
        joined = await c.connect_calls(first.call_id, second.call_id)
        assert joined.success and await c.active_calls() == []
        shot = await c.shotgun(["0831111111", "0832222222", "0833333333"], outbound_cli="0110001111",
                               unique_id="u-3")
        assert shot.phone_number == "0831111111"  # the lab's winner is the first number
        assert (await c.hangup(shot.call_id)).success
        assert (await c.logout()).success
    assert await count(lab, "SELECT COUNT(*) FROM lab_calls WHERE user_id = 1001") == 3


async def test_campaign_status_moves_and_409(lab):
    async with supervisor(lab) as c:
        assert (await c.campaign_status(1)).state is CampaignState.RUNNING
        two = await c.campaign_status(2)
        assert two.state is CampaignState.NOT_RUNNING and two.status_name
        with pytest.raises(PlatformConflictError, match="cannot move") as info:
            await c.set_campaign_status(2, CampaignState.RUNNING)  # NotRunning -> Running is not allowed
        assert info.value.status == 409
        assert (await c.set_campaign_status(2, CampaignState.PAUSED)).state is CampaignState.PAUSED
        assert (await c.set_campaign_status(2, CampaignState.RUNNING)).state is CampaignState.RUNNING
        assert (await c.set_campaign_status(2, CampaignState.NOT_RUNNING)).status == 0
        with pytest.raises(PlatformNotFoundError, match="campaign_id 99"):
            await c.campaign_status(99)


async def test_notification_endpoint_receives_webhooks(lab):
    received: list[dict] = []
    got = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        got.set()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with supervisor(lab) as s:
            assert (await s.set_notification_endpoint(f"http://127.0.0.1:{port}/hook")).success
        async with agent(lab) as c:
            await c.login(1, "9001")
            await asyncio.wait_for(got.wait(), 10)
            await c.logout()
    finally:
        await lab.lab.notifier.drain()
        await runner.cleanup()
    first = received[0]
    assert first["type"] == "user_status"
    assert first["payload"]["user_id"] == 1001 and first["payload"]["campaign_id"] == 1


# --- documented errors on /omni ---------------------------------------------------------


async def test_401_bad_system_key_on_omni_and_vicidial(lab):
    async with PlatformClient(lab.url, "not-the-key", username="agent1", password="agent1pass") as c:
        with pytest.raises(PlatformAuthError, match="invalid system key") as info:
            await c.authorize()
        assert info.value.status == 401
        with pytest.raises(PlatformAuthError, match="unable to validate api user"):
            await c.archive_leads([1])


async def test_401_wrong_password(lab):
    async with PlatformClient(lab.url, KEY, username="agent1", password="wrong-password") as c:
        with pytest.raises(PlatformAuthError, match="invalid user_name or password"):
            await c.login(1, "9001")


async def test_expired_token_is_refreshed_once(lab):
    """The lab's clock jumps past the token's lifetime: the next call gets 401, re-authorizes, succeeds."""
    now = [dt.datetime.now(dt.timezone.utc).timestamp()]
    server = await start_lab(db_url="sqlite:///:memory:", clock=lambda: now[0], telephony=InMemoryTelephony())
    try:
        async with agent(server) as c:
            await c.campaign_status(1)
            await c.campaign_status(1)
            assert c.authorizations == 1
            first = c.token.token_key
            now[0] += 2 * 3600  # the lab now considers the token expired; the client does not know
            assert (await c.campaign_status(1)).campaign_id == 1
            assert c.authorizations == 2 and c.token.token_key != first
            await c.campaign_status(1)
            assert c.authorizations == 2  # the new token is cached again
    finally:
        await server.close()


async def test_concurrent_401s_cause_one_refresh():
    now = [dt.datetime.now(dt.timezone.utc).timestamp()]
    server = await start_lab(db_url="sqlite:///:memory:", clock=lambda: now[0], telephony=InMemoryTelephony())
    try:
        async with agent(server) as c:
            await c.campaign_status(1)
            now[0] += 2 * 3600
            results = await asyncio.gather(*(c.campaign_status(1) for _ in range(15)))
        assert all(r.campaign_id == 1 for r in results)
        assert c.authorizations == 2  # fifteen rejected requests, one re-authorization
    finally:
        await server.close()


async def test_token_reused_for_many_calls(lab):
    async with agent(lab) as c:
        await asyncio.gather(*(c.campaign_status(1) for _ in range(10)))
        for _ in range(10):
            await c.active_calls()
    assert c.authorizations == 1
    assert await count(lab, "SELECT COUNT(*) FROM lab_tokens") == 1  # the lab issued one token


async def test_400_validation_names_the_field(lab):
    async with agent(lab) as c:
        await c.login(1, "9001")
        with pytest.raises(PlatformValidationError, match="phone_number") as info:
            await c.call("abc", outbound_cli="1", unique_id="u")
        assert info.value.status == 400
        with pytest.raises(PlatformValidationError, match="expire_date must be in the future"):
            await c.provision_extension(1, dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc))
        with pytest.raises(PlatformValidationError, match="call_ids"):
            await c.request("connect_calls", {"call_ids": [1]}, user_id=1001)


async def test_404_unknown_user_call_campaign(lab):
    async with agent(lab) as c:
        await c.login(1, "9001")
        with pytest.raises(PlatformNotFoundError, match="call_id 424242") as info:
            await c.hangup(424242)
        assert info.value.status == 404
        with pytest.raises(PlatformNotFoundError, match="user_id 9999"):
            await c.logout(user_id=9999)
        await c.logout()
        with pytest.raises(PlatformNotFoundError, match="campaign_id 77"):
            await c.login(77, "9001")


async def test_403_token_of_another_user_is_an_auth_error(lab):
    async with agent(lab) as c:
        with pytest.raises(PlatformAuthError, match="does not belong") as info:
            await c.active_calls(user_id=1002)
    assert info.value.status == 403 and not isinstance(info.value, OfficeHoursError)
    assert c.authorizations == 1  # a 403 does not trigger a token refresh


async def test_409_wrong_state(lab):
    async with agent(lab) as c:
        with pytest.raises(PlatformConflictError, match="not logged in"):
            await c.call("0821234567", outbound_cli="1", unique_id="u")
        await c.login(1, "9001")
        with pytest.raises(PlatformConflictError, match="already logged in") as info:
            await c.login(1, "9001")
        assert info.value.status == 409
        call = await c.call("0821234567", outbound_cli="1", unique_id="u")
        await c.hangup(call.call_id)
        with pytest.raises(PlatformConflictError, match="already ended"):
            await c.hangup(call.call_id)
        await c.logout()
        with pytest.raises(PlatformConflictError, match="not logged in"):
            await c.logout()


class ExplodingTelephony(InMemoryTelephony):
    """Fault injection: the phone system fails unexpectedly when a call is placed."""

    def __init__(self):
        super().__init__()
        self.placed = 0

    async def place_call(self, call):
        self.placed += 1
        raise RuntimeError("switch on fire")


async def test_500_on_call_is_not_retried():
    telephony = ExplodingTelephony()
    server = await start_lab(db_url="sqlite:///:memory:", telephony=telephony)
    try:
        async with agent(server, retries=3) as c:
            await c.login(1, "9001")
            with pytest.raises(PlatformServerError, match="internal server error") as info:
                await c.call("0821234567", outbound_cli="1", unique_id="u")
        assert info.value.status == 500 and "switch on fire" not in str(info.value)
        assert telephony.placed == 1 and c.sent["call"] == 1
    finally:
        await server.close()


# --- lead archive on the lab ------------------------------------------------------------------


async def test_archive_then_dearchive_round_trip(archive_lab):
    lab = archive_lab
    before = await lab.db.run_transaction(
        lambda tx: tx.fetchall(f"SELECT {lead_column_list()} FROM vicidial_list WHERE lead_id <= 10 "
                               "ORDER BY lead_id"), readonly=True)
    async with PlatformClient(lab.url, KEY) as c:
        copied = await c.archive_leads(list(range(1, 11)), delete_leads=False)
        assert (copied.select_count, copied.insert_count, copied.delete_count) == (10, 10, 0)
        assert await count(lab, "SELECT COUNT(*) FROM vicidial_list_archive") == 10
        result = await c.archive_leads(list(range(1, 11)))
        assert result.insert_count == 0  # already archived: not inserted twice
        assert (result.select_count, result.delete_count) == (10, 10)
        assert result.message == "lead_ids batch was successfully processed"
        assert await count(lab, "SELECT COUNT(*) FROM vicidial_list WHERE lead_id <= 10") == 0
        with pytest.raises(PlatformValidationError, match="does not exist"):
            await c.archive_leads([1])  # no longer in vicidial_list
        back = await c.dearchive_leads(list(range(1, 11)))
        assert (back.insert_count, back.delete_count) == (10, 10)
    after = await lab.db.run_transaction(
        lambda tx: tx.fetchall(f"SELECT {lead_column_list()} FROM vicidial_list WHERE lead_id <= 10 "
                               "ORDER BY lead_id"), readonly=True)
    assert after == before
    assert await count(lab, "SELECT COUNT(*) FROM vicidial_list_archive") == 0


@pytest.mark.parametrize(
    ("body", "message", "ids"),
    [
        ({"update_leads": True, "delete_leads": True, "lead_ids": [1]}, "insert_leads must be a boolean value", []),
        ({"insert_leads": "true", "update_leads": True, "delete_leads": True, "lead_ids": [1]},
         "insert_leads must be a boolean value", []),
        ({"insert_leads": True, "update_leads": 1, "delete_leads": True, "lead_ids": [1]},
         "update_leads must be a boolean value", []),
        ({"insert_leads": True, "update_leads": True, "lead_ids": [1]}, "delete_leads must be a boolean value", []),
        ({"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": [1, "0", 2.5]},
         "lead_ids must only contain integer values", ["0", 2.5]),
        ({"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": []},
         "lead_ids must contain atleast 1 value", []),
        ({"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": list(range(1, 502))},
         "lead_ids cannot exceed 500 values", []),
        ({"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": [1, 2, 1, 2, 3]},
         "lead_ids cannot contain duplicate values", [1, 2]),
        ({"insert_leads": True, "update_leads": True, "delete_leads": True, "lead_ids": [1, 70000, 70001]},
         "lead_ids does not exist", [70000, 70001]),
    ],
)
async def test_archive_400_messages_carry_offending_ids(lab, body, message, ids):
    async with PlatformClient(lab.url, KEY) as c:
        with pytest.raises(PlatformValidationError) as info:
            await c.request("lead_archive", body)
    err = info.value
    assert err.status == 400 and err.message.endswith(message)
    assert err.ids == ids
    assert err.detail["lead_errors"] == len(ids) or not ids
    assert await count(lab, "SELECT COUNT(*) FROM vicidial_list_archive") == 0


async def test_archive_400_through_the_typed_method(lab):
    async with PlatformClient(lab.url, KEY) as c:
        with pytest.raises(PlatformValidationError, match="does not exist") as info:
            await c.archive_leads([5, 99999])
        assert info.value.ids == [99999]
        with pytest.raises(PlatformValidationError, match="integer values") as info:
            await c.dearchive_leads(["0"], validate=False)
        assert info.value.ids == ["0"] and info.value.status == 400


async def test_403_office_hours_blocks_archive_not_dearchive():
    server = await start_lab(db_url="sqlite:///:memory:", office_hours=OPEN_ALL_DAY, telephony=InMemoryTelephony())
    try:
        async with PlatformClient(server.url, KEY) as c:
            with pytest.raises(OfficeHoursError) as info:
                await c.archive_leads([1, 2])
            assert info.value.status == 403
            assert "api cannot be executed during office hours time condition" in str(info.value)
            assert c.sent["lead_archive"] == 1  # a 403 is not retried by the client
            with pytest.raises(PlatformValidationError, match="does not exist"):
                await c.dearchive_leads([1])  # dearchive runs during office hours (nothing archived yet)
        assert await count(server, "SELECT COUNT(*) FROM vicidial_list") == 50
    finally:
        await server.close()


async def test_500_during_archive_rolls_back_and_loses_nothing(archive_lab):
    lab = archive_lab
    def fault(step: str) -> None:
        if step == "updated":  # after insert and update, before delete
            raise RuntimeError("disk full")

    lab.lab.archive_fault_hook = fault
    async with PlatformClient(lab.url, KEY) as c:
        with pytest.raises(PlatformServerError) as info:
            await c.archive_leads([1, 2, 3])
    assert info.value.status == 500 and "disk full" not in str(info.value)
    assert await count(lab, "SELECT COUNT(*) FROM vicidial_list WHERE lead_id IN (1, 2, 3)") == 3
    assert await count(lab, "SELECT COUNT(*) FROM vicidial_list_archive") == 0


async def test_paths_overridden_on_both_sides(lab):
    from softphone.platform.paths import DEFAULT_PATHS

    paths = DEFAULT_PATHS.override(lead_archive="/api/archive-leads", campaign_status="/api/c/{campaign_id}")
    server = await start_lab(db_url="sqlite:///:memory:", paths=paths, telephony=InMemoryTelephony())
    try:
        async with agent(server, paths=paths) as c:
            assert (await c.archive_leads([1])).insert_count == 1
            assert (await c.campaign_status(1)).campaign_id == 1
        async with agent(server) as c:  # default paths no longer exist there
            with pytest.raises(PlatformError) as info:
                await c.archive_leads([2])
            assert info.value.status in (404, 405)
    finally:
        await server.close()


# --- the CLI end to end, lab in a thread ---------------------------------------------------------


class LabThread:
    """A lab served from its own thread and event loop, for synchronous CLI tests."""

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.server = None

    def __enter__(self) -> LabThread:
        self.thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self.thread.start()
        if not self.ready.wait(30):
            raise RuntimeError("lab thread did not start")
        if self.error:
            raise self.error
        return self

    async def _serve(self) -> None:
        try:
            self.server = await start_lab(**self.kwargs)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()
            return
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self.ready.set()
        try:
            await self.stop.wait()
        finally:
            await self.server.close()

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    @property
    def url(self) -> str:
        return self.server.url


def seed_file(tmp_path, leads: int) -> str:
    from importlib import resources

    data = json.loads(resources.files("softphone.lab").joinpath("seed.json").read_text("utf-8"))
    data["leads"] = {"generate": {"first_lead_id": 1, "count": leads, "list_id": 101}}
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(data))
    return str(path)


def table(db_file, name: str) -> dict[int, tuple]:
    cols = ", ".join(f"`{c}`" for c in LEAD_COLUMN_NAMES)
    with contextlib.closing(sqlite3.connect(db_file)) as conn:
        return {row[0]: row for row in conn.execute(f"SELECT {cols} FROM {name}")}


def leads_cli(*args: str, input: str | None = None):
    return CliRunner().invoke(main, ["leads", *args], input=input, env={"SOFTPHONE_AUTH_KEY": KEY},
                              catch_exceptions=False)


def snapshot(db_url: str) -> dict[str, dict[int, tuple]]:
    """Both lead tables, read through the lab's own data layer (any backend)."""
    from softphone.lab.db import open_database
    from softphone.lab.testing import table_snapshot

    async def read():
        db = await open_database(db_url)
        try:
            return await table_snapshot(db)
        finally:
            await db.close()

    return asyncio.run(read())


def test_cli_archives_1234_leads_and_loses_none(tmp_path, lab_db_url):
    ids_file = tmp_path / "ids.txt"
    # commas, spaces and newlines mixed, plus three duplicates
    chunks = [",".join(map(str, range(i, min(i + 37, 1235)))) for i in range(1, 1235, 37)]
    ids_file.write_text("\n".join(chunks) + "\n5 6\n1234\n")
    report = tmp_path / "report.json"
    with LabThread(db_url=lab_db_url, seed=seed_file(tmp_path, 1300)) as lab:
        before = snapshot(lab_db_url)["vicidial_list"]
        res = leads_cli("archive", "--ids-file", str(ids_file), "--server", lab.url, "--report", str(report))
    assert res.exit_code == 0, res.output
    assert "3 duplicate lead id(s) removed: 5, 6, 1234" in res.stderr
    batch_lines = [ln for ln in res.stdout.splitlines() if ln.startswith("batch")]
    assert batch_lines == [
        "batch 1/3 ids 1..500 (500): ok select=500 insert=500 update=0 delete=500",
        "batch 2/3 ids 501..1000 (500): ok select=500 insert=500 update=0 delete=500",
        "batch 3/3 ids 1001..1234 (234): ok select=234 insert=234 update=0 delete=234",
    ]
    assert "total: 1234 ids in 3 batches: ok=3 failed=0 skipped=0; select=1234 insert=1234" in res.stdout
    after = snapshot(lab_db_url)
    after_list, after_archive = after["vicidial_list"], after["vicidial_list_archive"]
    assert set(after_archive) == set(range(1, 1235))
    assert set(after_list) == set(range(1235, 1301))  # the leads not asked for stay
    assert all(after_archive[i] == before[i] for i in range(1, 1235))  # every column copied exactly
    data = json.loads(report.read_text())
    assert data["ok"] and data["state"] == "done" and data["totals"]["delete_count"] == 1234
    assert [(b["first_id"], b["last_id"], b["status"]) for b in data["batches"]] == [
        (1, 500, "ok"), (501, 1000, "ok"), (1001, 1234, "ok")]


def test_cli_dearchive_from_stdin_and_failed_batch_exit_status(tmp_path):
    db_file = tmp_path / "lab.db"
    with LabThread(db_url=f"sqlite:///{db_file}", seed=seed_file(tmp_path, 20)) as lab:
        res = leads_cli("archive", "--ids", "1,2,3,4,5", "--server", lab.url)
        assert res.exit_code == 0, res.output
        res = leads_cli("dearchive", "-", "--batch-size", "3", "--server", lab.url, input="1\n2\n3\n4\n5\n")
        assert res.exit_code == 0, res.output
        assert "batch 2/2 ids 4..5 (2): ok select=2 insert=2 update=0 delete=2" in res.stdout
        # one batch of unknown ids fails with the server's message and ids; the other still runs
        res = leads_cli("archive", "--ids", "6 7 900 901", "--batch-size", "2", "--server", lab.url)
    assert res.exit_code == 1
    assert "batch 1/2 ids 6..7 (2): ok" in res.stdout
    assert "batch 2/2 ids 900..901 (2): FAILED HTTP 400: " in res.stdout
    assert "lead_ids does not exist [ids: 900, 901]" in res.stdout
    assert "lead_ids does not exist" in res.stderr
    assert set(table(db_file, "vicidial_list_archive")) == {6, 7}


def test_cli_skip_missing_and_remaining_ids(tmp_path):
    db_file = tmp_path / "lab.db"
    left = tmp_path / "left.txt"
    report = tmp_path / "r.json"
    with LabThread(db_url=f"sqlite:///{db_file}", seed=seed_file(tmp_path, 30)) as lab:
        res = leads_cli("archive", "--ids", "1,2,3,900,4,901", "--server", lab.url, "--skip-missing",
                        "--remaining", str(left), "--report", str(report))
        assert res.exit_code == 0, res.output
        assert "batch 1/1 ids 1..901 (6): ok select=4 insert=4 update=0 delete=4 (2 missing id(s) left out)" \
            in res.stdout
        assert "missing=2" in res.stdout and left.read_text() == ""
        assert json.loads(report.read_text())["batches"][0]["missing_ids"] == [900, 901]
        # re-running the same ids: the archived ones are gone from vicidial_list and in the archive,
        # the expected outcome of a rerun: it finishes without --skip-missing
        res = leads_cli("archive", "--ids", "1,2,3,4,5", "--server", lab.url, "--remaining", str(left))
        assert res.exit_code == 0, res.output
        assert "ok select=1 insert=1 update=0 delete=1 (4 id(s) already done by an earlier run)" in res.stdout
        assert "already_done=4" in res.stdout and left.read_text() == ""
        # an id in neither table is still an error without --skip-missing, and nothing is lost
        res = leads_cli("archive", "--ids", "6,900", "--server", lab.url, "--remaining", str(left))
        assert res.exit_code == 1 and "[ids: 900]" in res.stdout
        assert left.read_text() == "6\n900\n"
    assert set(snapshot(f"sqlite:///{db_file}")["vicidial_list_archive"]) == {1, 2, 3, 4, 5}


def test_cli_bad_key_stops_with_server_message(tmp_path):
    with LabThread(db_url="sqlite:///:memory:") as lab:
        res = CliRunner().invoke(main, ["leads", "archive", "--ids", "1", "--server", lab.url,
                                        "--auth-key", "wrong-key-value"], catch_exceptions=False)
    assert res.exit_code == 1
    assert "unable to validate api user" in res.output and "wrong-key-value" not in res.output


def test_cli_office_hours_stop(tmp_path):
    report = tmp_path / "r.json"
    with LabThread(db_url="sqlite:///:memory:", office_hours=OPEN_ALL_DAY) as lab:
        res = leads_cli("archive", "--ids", "1,2,3", "--server", lab.url, "--report", str(report))
    assert res.exit_code == 1
    assert "office hours" in res.stderr and "--wait-outside-office-hours" in res.stderr
    data = json.loads(report.read_text())
    assert data["state"] == "stopped" and data["batches"][0]["http_status"] == 403


class ClosingOfficeHours(OfficeHours):
    """Clock hook: office hours are open for the first ``open_for`` archive requests, then closed."""

    def __init__(self, open_for: int):
        super().__init__(OfficeHours.parse(OPEN_ALL_DAY).ranges)
        self.open_for = open_for
        self.asked = 0

    def is_open(self, now=None) -> bool:
        self.asked += 1
        return self.asked <= self.open_for


def test_cli_waits_outside_office_hours_then_archives(tmp_path):
    hours = ClosingOfficeHours(open_for=3)
    with LabThread(db_url="sqlite:///:memory:", office_hours=hours) as lab:
        res = leads_cli("archive", "--ids", "1,2,3", "--server", lab.url, "--wait-outside-office-hours",
                        "--poll-interval", "0.01", "--max-wait", "60")
    assert res.exit_code == 0, res.output
    assert res.stderr.count("outside office hours only") == 3
    assert "batch 1/1 ids 1..3 (3): ok select=3 insert=3" in res.stdout
    assert hours.asked == 4


def test_cli_wait_gives_up_after_max_wait(tmp_path):
    with LabThread(db_url="sqlite:///:memory:", office_hours=OPEN_ALL_DAY) as lab:
        res = leads_cli("archive", "--ids", "1", "--server", lab.url, "--wait-outside-office-hours",
                        "--poll-interval", "0.01", "--max-wait", "0.05")
    assert res.exit_code == 1
    assert "max-wait" in res.stderr


def test_cli_debug_trace_shows_requests_not_secrets(tmp_path):
    with LabThread(db_url="sqlite:///:memory:") as lab:
        res = leads_cli("archive", "--ids", "1,2", "--server", lab.url, "--debug")
    assert res.exit_code == 0, res.output
    assert "POST /vicidial/leads/archive -> 200 in" in res.stderr
    assert KEY not in res.output
