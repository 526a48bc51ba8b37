"""The lead archive API over HTTP: system key, office hours, error shapes, 500 without traceback."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

import aiohttp
import pytest

from softphone.lab.server import start_lab
from softphone.lab.testing import MYSQL_URL_ENV, drop_mysql_database, fresh_mysql_url, table_snapshot

KEY = {"Authorization": "Key=lab-system-key"}
ARCHIVE = "/vicidial/leads/archive"
DEARCHIVE = "/vicidial/leads/dearchive"
ALL = {"insert_leads": True, "update_leads": True, "delete_leads": True}
# Wednesday 2026-11-25 10:00 UTC
WEDNESDAY_10 = datetime(2026, 11, 25, 10, 0, tzinfo=UTC).timestamp()
SATURDAY_10 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


async def post(session, path, body=None, headers=KEY, raw=None):
    kwargs = {"data": raw, "headers": {**headers, "Content-Type": "application/json"}} if raw is not None \
        else {"json": body, "headers": headers}
    async with session.post(path, **kwargs) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@pytest.fixture
async def lab():
    async with await start_lab() as server:
        yield server


@pytest.fixture
async def session(lab):
    async with aiohttp.ClientSession(lab.url) as s:
        yield s


async def test_archive_and_dearchive_round_trip(lab, session):
    before = await table_snapshot(lab.db)
    assert await post(session, ARCHIVE, {**ALL, "lead_ids": [1, 2]}) == (200, {
        "message": "lead_ids batch was successfully processed", "select_count": 2, "insert_count": 2,
        "update_count": 0, "delete_count": 2})
    assert await post(session, DEARCHIVE, {"insert_leads": True, "delete_leads": True, "lead_ids": [1, 2]}) == (
        200, {"message": "lead_ids batch was successfully processed", "select_count": 2, "insert_count": 2,
              "delete_count": 2})
    assert await table_snapshot(lab.db) == before


@pytest.mark.parametrize("path", [ARCHIVE, DEARCHIVE])
async def test_wrong_or_missing_system_key(session, path):
    for headers in ({}, {"Authorization": "Key=nope"}, {"Authorization": "lab-system-key"}):
        assert await post(session, path, {**ALL, "lead_ids": [1]}, headers=headers) == (
            401, {"message": "unable to validate api user"})


async def test_no_token_needed_and_a_token_header_is_ignored(session):
    status, _ = await post(session, ARCHIVE, {**ALL, "lead_ids": [3]}, headers={**KEY, "tokenKey": "junk"})
    assert status == 200


async def test_error_shapes_over_http(session):
    assert await post(session, ARCHIVE, {**ALL, "lead_ids": [1, "0"]}) == (
        400, {"message": "lead_ids must only contain integer values", "lead_errors": 1, "lead_ids": ["0"]})
    assert await post(session, ARCHIVE, {**ALL, "lead_ids": [404, 1]}) == (
        400, {"message": "lead_ids does not exist", "lead_errors": 1, "lead_ids": [404]})
    # a body that is not JSON (or not an object) has no flags
    assert await post(session, ARCHIVE, raw=b"{oops") == (
        400, {"message": "insert_leads must be a boolean value", "lead_errors": 0, "lead_ids": []})
    # values JSON cannot echo as numbers come back as strings; huge integers simply do not exist
    assert await post(session, ARCHIVE, raw=b'{"insert_leads": true, "update_leads": true, "delete_leads": true,'
                                            b' "lead_ids": [1, 1e400, NaN, 2.5]}') == (
        400, {"message": "lead_ids must only contain integer values", "lead_errors": 3,
              "lead_ids": ["inf", "nan", 2.5]})
    assert await post(session, ARCHIVE, {**ALL, "lead_ids": [10**30, -1, 1]}) == (
        400, {"message": "lead_ids does not exist", "lead_errors": 2, "lead_ids": [10**30, -1]})
    assert await post(session, DEARCHIVE, raw=b"[]") == (
        400, {"message": "insert_leads must be a boolean value", "lead_errors": 0, "lead_ids": []})


async def test_office_hours_block_archive_but_not_dearchive():
    clock = Clock(WEDNESDAY_10)
    async with await start_lab(office_hours="mon-fri 08:00-17:00 UTC", clock=clock) as server, \
            aiohttp.ClientSession(server.url) as session:
        before = await table_snapshot(server.db)
        assert await post(session, ARCHIVE, {**ALL, "lead_ids": [1]}) == (
            403, {"message": "api cannot be executed during office hours time condition"})
        # the system key is checked first
        assert await post(session, ARCHIVE, {**ALL, "lead_ids": [1]}, headers={}) == (
            401, {"message": "unable to validate api user"})
        assert await table_snapshot(server.db) == before
        clock.t = SATURDAY_10
        assert (await post(session, ARCHIVE, {**ALL, "lead_ids": [1]}))[0] == 200
        clock.t = WEDNESDAY_10
        status, data = await post(session, DEARCHIVE, {"insert_leads": True, "delete_leads": True, "lead_ids": [1]})
        assert (status, data["insert_count"], data["delete_count"]) == (200, 1, 1)


async def test_failure_is_500_with_message_and_no_traceback(lab, session, caplog):
    before = await table_snapshot(lab.db)

    def fault(step: str) -> None:
        if step == "updated":
            raise RuntimeError("disk on fire")

    lab.lab.archive_fault_hook = fault
    status, data = await post(session, ARCHIVE, {**ALL, "lead_ids": [1, 2, 3]})
    assert (status, data) == (500, {"message": "internal server error"})
    assert await table_snapshot(lab.db) == before
    assert "disk on fire" in caplog.text  # the server log has the cause; the client does not
    lab.lab.archive_fault_hook = None
    assert (await post(session, ARCHIVE, {**ALL, "lead_ids": [1, 2, 3]}))[0] == 200


async def test_many_batches_through_http(lab, session):
    """50 leads in batches of 7: every lead archived exactly once, none left behind."""
    ids = list(range(1, 51))
    totals = {"select_count": 0, "insert_count": 0, "update_count": 0, "delete_count": 0}
    for start in range(0, len(ids), 7):
        status, data = await post(session, ARCHIVE, {**ALL, "lead_ids": ids[start:start + 7]})
        assert status == 200
        for k in totals:
            totals[k] += data[k]
    assert totals == {"select_count": 50, "insert_count": 50, "update_count": 0, "delete_count": 50}
    snap = await table_snapshot(lab.db)
    assert not snap["vicidial_list"] and set(snap["vicidial_list_archive"]) == set(ids)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.peer)])
def backend_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/lab.db"
        return
    url = fresh_mysql_url(os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb"))
    yield url
    drop_mysql_database(url)


async def test_twenty_concurrent_http_requests_on_overlapping_ids(backend_url):
    async with await start_lab(db_url=backend_url) as server, aiohttp.ClientSession(server.url) as session:
        before = await table_snapshot(server.db)
        answers = await asyncio.wait_for(asyncio.gather(*(
            post(session, ARCHIVE, {**ALL, "lead_ids": list(range(1 + k, 16 + k))}) for k in range(20))), 120)
        ok = [data for status, data in answers if status == 200]
        refused = [data for status, data in answers if status != 200]
        assert all(d["message"] == "lead_ids does not exist" for d in refused)
        snap = await table_snapshot(server.db)
        archived = set(snap["vicidial_list_archive"])
        assert archived | set(snap["vicidial_list"]) == set(range(1, 51))
        assert not archived & set(snap["vicidial_list"])
        assert sum(d["insert_count"] for d in ok) == sum(d["delete_count"] for d in ok) == len(archived)
        assert all(snap["vicidial_list_archive"][i] == before["vicidial_list"][i] for i in archived)
