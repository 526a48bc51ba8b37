"""Random sequences of archive, dearchive and lead edits against a plain-Python model.

The model is the contract's text, executed on dictionaries; the database
must agree with it on every answer (counts or the 400 message and ids) and on
the final contents of both tables, on SQLite and on MariaDB.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softphone.errors import LeadRequestError
from softphone.lab.archive import Direction, LeadArchive
from softphone.lab.db import Database, Tx, open_database
from softphone.lab.schema import LEAD_COLUMN_NAMES
from softphone.lab.seed import INSERT_LEAD_SQL, lead_row, make_lead
from softphone.lab.testing import (
    MYSQL_URL_ENV,
    drop_mysql_database,
    fresh_mysql_url,
    table_snapshot,
)

IDS = list(range(1, 9))  # few ids, so operations collide often
EDITABLE = ["comments", "status", "email", "called_count"]


class Model:
    """The contract, on dictionaries of rows."""

    def __init__(self, snap: dict[str, dict[int, tuple]]):
        self.list = dict(snap["vicidial_list"])
        self.archive = dict(snap["vicidial_list_archive"])

    def run(self, op: str, flags: dict[str, bool], ids: list[int]) -> dict | tuple:
        source = self.list if op == "archive" else self.archive
        target = self.archive if op == "archive" else self.list
        missing = [i for i in ids if i not in source]
        if missing:
            return ("lead_ids does not exist", missing)
        counts = {"select_count": len(ids), "insert_count": 0, "delete_count": 0}
        already = [i for i in ids if i in target]
        if flags["insert_leads"]:
            for i in ids:
                if i not in target:
                    target[i] = source[i]
                    counts["insert_count"] += 1
        if op == "archive":
            counts["update_count"] = 0
            if flags["update_leads"]:
                for i in already:
                    target[i] = source[i]
                counts["update_count"] = len(already)
        if flags["delete_leads"]:
            for i in ids:
                if i in target and target[i] == source[i]:
                    del source[i]
                    counts["delete_count"] += 1
        return counts


operation = st.one_of(
    st.tuples(st.just("archive"),
              st.fixed_dictionaries({"insert_leads": st.booleans(), "update_leads": st.booleans(),
                                     "delete_leads": st.booleans()}),
              st.lists(st.sampled_from(IDS), min_size=1, max_size=6, unique=True)),
    st.tuples(st.just("dearchive"),
              st.fixed_dictionaries({"insert_leads": st.booleans(), "delete_leads": st.booleans()}),
              st.lists(st.sampled_from(IDS), min_size=1, max_size=6, unique=True)),
    st.tuples(st.just("edit"), st.sampled_from(EDITABLE), st.sampled_from(IDS)),
)


async def reset(db: Database) -> None:
    async def run(tx: Tx) -> None:
        await tx.execute("DELETE FROM vicidial_list_archive")
        await tx.execute("DELETE FROM vicidial_list")
        await tx.executemany(INSERT_LEAD_SQL, [lead_row(make_lead(i)) for i in IDS])

    await db.run_transaction(run)


async def edit(db: Database, column: str, lead_id: int, n: int) -> None:
    value = {"comments": None if n % 2 else f"edit {n}", "status": f"S{n % 100}",
             "email": None if n % 3 == 0 else f"e{n}@example.com", "called_count": n % 1000}[column]
    await db.run_transaction(lambda tx: tx.execute(
        f"UPDATE vicidial_list SET `{column}` = ? WHERE lead_id = ?", (value, lead_id)))


async def check_sequence(db: Database, ops: list) -> None:
    await reset(db)
    model = Model(await table_snapshot(db))
    archive = LeadArchive(db)
    for n, op in enumerate(ops):
        if op[0] == "edit":
            await edit(db, op[1], op[2], n)
            # read the row back: MariaDB's modify_date may move on UPDATE, as VICIdial's does
            snap = await table_snapshot(db)
            if op[2] in snap["vicidial_list"]:
                model.list[op[2]] = snap["vicidial_list"][op[2]]
            continue
        kind, flags, ids = op
        expected = model.run(kind, flags, ids)
        try:
            direction = Direction.ARCHIVE if kind == "archive" else Direction.DEARCHIVE
            result = (await archive.process({**flags, "lead_ids": ids}, direction)).as_json()
            result.pop("message")
        except LeadRequestError as exc:
            result = (exc.message, exc.lead_ids)
        assert result == expected, (n, op)
    snap = await table_snapshot(db)
    assert snap["vicidial_list"] == model.list
    assert snap["vicidial_list_archive"] == model.archive


@pytest.fixture(scope="module")
def mariadb_server(request: pytest.FixtureRequest):
    """$SOFTPHONE_TEST_MYSQL_URL (an external server) if set, else the ``mariadb`` peer fixture."""
    return os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb")


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.peer)])
async def db(request: pytest.FixtureRequest):
    url = "sqlite:///:memory:" if request.param == "sqlite" else \
        fresh_mysql_url(request.getfixturevalue("mariadb_server"))
    database = await open_database(url)
    yield database
    await database.close()
    if request.param == "mariadb":
        drop_mysql_database(url)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=12))
async def test_database_agrees_with_the_model(db, ops):
    await check_sequence(db, ops)


async def test_model_sees_columns_in_schema_order(db):
    await reset(db)
    snap = await table_snapshot(db)
    assert len(snap["vicidial_list"][1]) == len(LEAD_COLUMN_NAMES)
    assert set(snap["vicidial_list"]) == set(IDS)
