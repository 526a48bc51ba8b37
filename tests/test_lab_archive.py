"""Lead archive semantics on both databases: SQLite and the real MariaDB peer.

Each test gets a freshly seeded database (50 leads, ids 1..50).  MariaDB
comes from the ``mariadb`` peer fixture (tests/peers), or from
``$SOFTPHONE_TEST_MYSQL_URL`` when that points at a server.
"""

from __future__ import annotations

import asyncio
import os

import pytest

from softphone.errors import LeadRequestError
from softphone.lab.archive import MAX_LEAD_IDS, Direction, LeadArchive, validate_request
from softphone.lab.db import Database, open_database
from softphone.lab.schema import LEAD_COLUMN_NAMES
from softphone.lab.seed import apply_seed, load_seed
from softphone.lab.testing import (
    MYSQL_URL_ENV,
    drop_mysql_database,
    fresh_mysql_url,
    table_snapshot,
)

ALL = {"insert_leads": True, "update_leads": True, "delete_leads": True}


@pytest.fixture(scope="module")
def mariadb_server(request: pytest.FixtureRequest):
    """$SOFTPHONE_TEST_MYSQL_URL (an external server) if set, else the ``mariadb`` peer fixture."""
    return os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb")


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.peer)])
async def db(request: pytest.FixtureRequest):
    if request.param == "sqlite":
        url = "sqlite:///:memory:"
    else:
        url = fresh_mysql_url(request.getfixturevalue("mariadb_server"))
    database = await open_database(url)
    await apply_seed(database, load_seed())
    yield database
    await database.close()
    if request.param == "mariadb":
        drop_mysql_database(url)


def col(name: str) -> int:
    return LEAD_COLUMN_NAMES.index(name)


def body(ids, **flags):
    return {**ALL, **flags, "lead_ids": list(ids)}


async def execute(db: Database, sql: str, params=()) -> None:
    await db.run_transaction(lambda tx: tx.execute(sql, params))


async def test_insert_then_update_then_delete(db):
    archive = LeadArchive(db)
    before = await table_snapshot(db)
    r = await archive.archive(body([1, 2, 3], update_leads=False, delete_leads=False))
    assert (r.select_count, r.insert_count, r.update_count, r.delete_count) == (3, 3, 0, 0)
    snap = await table_snapshot(db)
    assert {i: snap["vicidial_list_archive"][i] for i in (1, 2, 3)} == {i: before["vicidial_list"][i] for i in (1, 2, 3)}
    assert set(snap["vicidial_list"]) == set(range(1, 51))

    await execute(db, "UPDATE vicidial_list SET first_name = ? WHERE lead_id = ?", ("Changed", 2))
    r = await archive.archive(body([1, 2, 3], delete_leads=False))
    assert (r.select_count, r.insert_count, r.update_count, r.delete_count) == (3, 0, 3, 0)
    snap = await table_snapshot(db)
    assert snap["vicidial_list_archive"][2] == snap["vicidial_list"][2]

    r = await archive.archive(body([1, 2, 3], insert_leads=False, update_leads=False))
    assert (r.select_count, r.insert_count, r.update_count, r.delete_count) == (3, 0, 0, 3)
    snap = await table_snapshot(db)
    assert not {1, 2, 3} & set(snap["vicidial_list"])
    assert snap["vicidial_list_archive"][2][col("first_name")] == "Changed"
    assert r.as_json() == {"message": "lead_ids batch was successfully processed", "select_count": 3,
                           "insert_count": 0, "update_count": 0, "delete_count": 3}


async def test_all_steps_in_one_request_match_the_documented_example(db):
    r = await LeadArchive(db).archive(body([7]))
    assert r.as_json() == {"message": "lead_ids batch was successfully processed", "select_count": 1,
                           "insert_count": 1, "update_count": 0, "delete_count": 1}
    snap = await table_snapshot(db)
    assert 7 in snap["vicidial_list_archive"] and 7 not in snap["vicidial_list"]


async def test_insert_skips_ids_already_archived(db):
    archive = LeadArchive(db)
    await archive.archive(body([1], update_leads=False, delete_leads=False))
    r = await archive.archive(body([1, 2], update_leads=False, delete_leads=False))
    assert (r.insert_count, r.update_count) == (1, 0)


async def test_update_counts_rows_archived_before_this_request(db):
    archive = LeadArchive(db)
    await archive.archive(body([1, 2], update_leads=False, delete_leads=False))
    r = await archive.archive(body([1, 2, 3], insert_leads=False, delete_leads=False))
    assert (r.select_count, r.insert_count, r.update_count) == (3, 0, 2)
    snap = await table_snapshot(db)
    assert 3 not in snap["vicidial_list_archive"]
    # unchanged rows count as refreshed too (documented decision)
    r = await archive.archive(body([1, 2, 3], delete_leads=False))
    assert (r.insert_count, r.update_count) == (1, 2)


async def test_delete_only_removes_exact_copies_null_safe(db):
    archive = LeadArchive(db)
    snap = await table_snapshot(db)
    assert snap["vicidial_list"][1][col("address3")] is None  # NULL: the comparison must be NULL-safe
    await archive.archive(body([1, 2, 3, 4], update_leads=False, delete_leads=False))
    await execute(db, "UPDATE vicidial_list SET comments = ? WHERE lead_id = ?", ("new note", 2))
    await execute(db, "UPDATE vicidial_list SET address3 = ? WHERE lead_id = ?", ("", 3))
    await execute(db, "UPDATE vicidial_list SET email = NULL WHERE lead_id = ?", (4,))
    r = await archive.archive(body([1, 2, 3, 4], insert_leads=False, update_leads=False))
    assert r.delete_count == 1
    snap = await table_snapshot(db)
    assert 1 not in snap["vicidial_list"]
    assert {2, 3, 4} <= set(snap["vicidial_list"])


async def test_delete_without_archive_copy_deletes_nothing(db):
    r = await LeadArchive(db).archive(body([5, 6], insert_leads=False, update_leads=False))
    assert (r.select_count, r.insert_count, r.delete_count) == (2, 0, 0)
    snap = await table_snapshot(db)
    assert {5, 6} <= set(snap["vicidial_list"])


async def test_ids_not_in_vicidial_list_are_listed(db):
    archive = LeadArchive(db)
    await archive.archive(body([3]))  # archived and deleted: no longer in vicidial_list
    before = await table_snapshot(db)
    with pytest.raises(LeadRequestError) as info:
        await archive.archive(body([1, 3, 999, 2, 4294967296, 0]))
    assert info.value.as_json() == {"message": "lead_ids does not exist", "lead_errors": 4,
                                    "lead_ids": [3, 999, 4294967296, 0]}
    assert await table_snapshot(db) == before


@pytest.mark.parametrize("step", ["selected", "inserted", "updated", "deleted"])
async def test_fault_between_steps_leaves_both_tables_unchanged(db, step):
    archive = LeadArchive(db)
    await archive.archive(body([1, 2], delete_leads=False, update_leads=False))
    await execute(db, "UPDATE vicidial_list SET status = ? WHERE lead_id = ?", ("SALE", 1))
    before = await table_snapshot(db)

    def hook(name: str) -> None:
        if name == step:
            raise RuntimeError(f"injected fault after {name}")

    faulty = LeadArchive(db, fault_hook=hook)
    with pytest.raises(RuntimeError, match="injected fault"):
        await faulty.archive(body([1, 2, 3, 4]))
    assert await table_snapshot(db) == before
    with pytest.raises(RuntimeError, match="injected fault"):
        await faulty.dearchive({"insert_leads": True, "delete_leads": True, "lead_ids": [1, 2]})
    assert await table_snapshot(db) == before
    # and the database is still usable afterwards
    r = await archive.archive(body([1, 2, 3, 4]))
    assert (r.insert_count, r.update_count, r.delete_count) == (2, 2, 4)


async def test_concurrent_overlapping_archive_requests_lose_nothing(db):
    archive = LeadArchive(db)
    before = await table_snapshot(db)
    batches = [list(range(1 + k, 11 + k)) for k in range(20)]  # ids 1..29, heavy overlap

    async def one(ids):
        try:
            return await archive.archive(body(ids))
        except LeadRequestError as exc:
            assert exc.message == "lead_ids does not exist"
            return exc

    results = await asyncio.wait_for(asyncio.gather(*(one(b) for b in batches)), 120)
    done = [r for r in results if not isinstance(r, LeadRequestError)]
    assert done  # at least the first one ran
    snap = await table_snapshot(db)
    listed, archived = set(snap["vicidial_list"]), set(snap["vicidial_list_archive"])
    assert listed | archived == set(range(1, 51))
    assert not listed & archived
    assert sum(r.insert_count for r in done) == len(archived)
    assert sum(r.delete_count for r in done) == len(archived)
    for lead_id in archived:
        assert snap["vicidial_list_archive"][lead_id] == before["vicidial_list"][lead_id]


async def test_concurrent_insert_only_requests_archive_each_lead_once(db):
    archive = LeadArchive(db)
    batches = [list(range(1 + 2 * k, 21 + 2 * k)) for k in range(15)]  # ids 1..48
    results = await asyncio.wait_for(asyncio.gather(*(
        archive.archive(body(b, update_leads=False, delete_leads=False)) for b in batches)), 120)
    snap = await table_snapshot(db)
    assert set(snap["vicidial_list_archive"]) == set(range(1, 49))
    assert sum(r.insert_count for r in results) == 48
    assert set(snap["vicidial_list"]) == set(range(1, 51))


async def test_dearchive_restores_exact_rows(db):
    archive = LeadArchive(db)
    before = await table_snapshot(db)
    await archive.archive(body([1, 2, 3, 4, 5]))
    r = await archive.dearchive({"insert_leads": True, "delete_leads": True, "lead_ids": [1, 2, 3, 4, 5]})
    assert r.as_json() == {"message": "lead_ids batch was successfully processed", "select_count": 5,
                           "insert_count": 5, "delete_count": 5}
    assert await table_snapshot(db) == before


async def test_dearchive_skips_existing_and_deletes_only_matching(db):
    archive = LeadArchive(db)
    await archive.archive(body([1, 2, 3], update_leads=False, delete_leads=False))  # still listed
    await execute(db, "UPDATE vicidial_list SET called_count = ? WHERE lead_id = ?", (9, 2))
    r = await archive.dearchive({"insert_leads": True, "delete_leads": True, "lead_ids": [1, 2, 3]})
    assert (r.select_count, r.insert_count, r.delete_count) == (3, 0, 2)
    snap = await table_snapshot(db)
    assert set(snap["vicidial_list_archive"]) == {2}
    assert snap["vicidial_list"][2][col("called_count")] == 9  # as changed; the archive copy kept


async def test_dearchive_ids_not_archived_are_listed(db):
    await LeadArchive(db).archive(body([4]))
    with pytest.raises(LeadRequestError) as info:
        await LeadArchive(db).dearchive({"insert_leads": True, "delete_leads": True, "lead_ids": [4, 5, 6]})
    assert info.value.as_json() == {"message": "lead_ids does not exist", "lead_errors": 2, "lead_ids": [5, 6]}


async def test_dearchive_delete_only_keeps_rows_without_a_list_copy(db):
    archive = LeadArchive(db)
    await archive.archive(body([8, 9]))
    r = await archive.dearchive({"insert_leads": False, "delete_leads": True, "lead_ids": [8, 9]})
    assert (r.insert_count, r.delete_count) == (0, 0)
    assert set((await table_snapshot(db))["vicidial_list_archive"]) == {8, 9}


# --- validation (no database needed) ---------------------------------------------------

A = Direction.ARCHIVE
D = Direction.DEARCHIVE

VALIDATION_CASES = [
    (A, {"update_leads": True, "delete_leads": True, "lead_ids": [1]}, "insert_leads must be a boolean value", []),
    (A, {**ALL, "insert_leads": "true", "lead_ids": [1]}, "insert_leads must be a boolean value", []),
    (A, {**ALL, "insert_leads": 1, "lead_ids": [1]}, "insert_leads must be a boolean value", []),
    (A, {**ALL, "update_leads": None, "lead_ids": [1]}, "update_leads must be a boolean value", []),
    (A, {"insert_leads": True, "update_leads": True, "lead_ids": [1]}, "delete_leads must be a boolean value", []),
    # flags are checked before ids, and in documented order
    (A, {"insert_leads": 0, "update_leads": 0, "lead_ids": ["x"]}, "insert_leads must be a boolean value", []),
    (A, {"insert_leads": True, "update_leads": "no", "delete_leads": "no"}, "update_leads must be a boolean value", []),
    (A, {**ALL, "lead_ids": [1, "0", 2]}, "lead_ids must only contain integer values", ["0"]),
    (A, {**ALL, "lead_ids": [True, 1.0, 2, None, [3]]}, "lead_ids must only contain integer values",
     [True, 1.0, None, [3]]),
    (A, {**ALL, "lead_ids": "1,2"}, "lead_ids must only contain integer values", ["1,2"]),
    (A, {**ALL, "lead_ids": []}, "lead_ids must contain atleast 1 value", []),
    (A, dict(ALL), "lead_ids must contain atleast 1 value", []),
    (A, {**ALL, "lead_ids": None}, "lead_ids must contain atleast 1 value", []),
    (A, {**ALL, "lead_ids": list(range(1, MAX_LEAD_IDS + 2))}, "lead_ids cannot exceed 500 values", []),
    (A, {**ALL, "lead_ids": [1, 2, 1, 3, 2, 1]}, "lead_ids cannot contain duplicate values", [1, 2]),
    # integer check before the count checks: 501 values with a string is an integer error
    (A, {**ALL, "lead_ids": [*range(1, 501), "7"]}, "lead_ids must only contain integer values", ["7"]),
    (A, [1, 2], "insert_leads must be a boolean value", []),
    (D, {"delete_leads": True, "lead_ids": [1]}, "insert_leads must be a boolean value", []),
    (D, {"insert_leads": True, "update_leads": "ignored", "lead_ids": [1]}, "delete_leads must be a boolean value",
     []),
    (D, {"insert_leads": True, "delete_leads": True, "lead_ids": [0, 0]}, "lead_ids cannot contain duplicate values",
     [0]),
]


@pytest.mark.parametrize(("direction", "request_body", "message", "ids"), VALIDATION_CASES)
def test_validation_messages_in_documented_order(direction, request_body, message, ids):
    with pytest.raises(LeadRequestError) as info:
        validate_request(request_body, direction)
    assert info.value.as_json() == {"message": message, "lead_errors": len(ids), "lead_ids": ids}


def test_valid_requests_pass_validation():
    req = validate_request({**ALL, "lead_ids": list(range(1, 501))}, A)
    assert len(req.lead_ids) == 500 and req.flag("update_leads")
    req = validate_request({"insert_leads": False, "delete_leads": True, "lead_ids": [5]}, D)
    assert req.lead_ids == (5,) and not req.flag("insert_leads")
