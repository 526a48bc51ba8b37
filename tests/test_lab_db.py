"""Database URLs, the VICIdial schema as created, and the dialect seam."""

from __future__ import annotations

import pytest

from softphone.errors import ConfigurationError
from softphone.lab.db import MYSQL, SQLITE, make_database, open_database, parse_database_url
from softphone.lab.schema import LEAD_COLUMN_NAMES, schema_statements
from softphone.lab.seed import load_seed, make_lead
from softphone.log import redact

#: VICIdial's vicidial_list columns, in order (extras/MySQL_AST_CREATE_tables.sql).
VICIDIAL_COLUMNS = (
    "lead_id entry_date modify_date status user vendor_lead_code source_id list_id gmt_offset_now "
    "called_since_last_reset phone_code phone_number title first_name middle_initial last_name address1 "
    "address2 address3 city state province postal_code country_code gender date_of_birth alt_phone email "
    "security_phrase comments called_count last_local_call_time rank owner entry_list_id"
).split()


def test_sqlite_urls():
    assert parse_database_url("sqlite:///:memory:").path == ":memory:"
    assert parse_database_url("sqlite://:memory:").path == ":memory:"
    assert parse_database_url("sqlite:///lab.db").path == "lab.db"
    assert parse_database_url("sqlite:////tmp/x/lab.db").path == "/tmp/x/lab.db"
    assert parse_database_url("sqlite:///lab.db").dialect is SQLITE


def test_mysql_url_keeps_password_secret():
    url = parse_database_url("mysql://lab:s3cr%40t@127.0.0.1:3307/labdb")
    assert (url.dialect, url.host, url.port, url.user, url.database) == (MYSQL, "127.0.0.1", 3307, "lab", "labdb")
    assert url.password is not None and url.password.reveal() == "s3cr@t"
    assert "s3cr" not in url.display and "s3cr" not in repr(make_database(url))
    assert "s3cr@t" not in redact("password s3cr@t")
    assert parse_database_url("mariadb://u:p@localhost/db").port == 3306


@pytest.mark.parametrize(("url", "fragment"), [
    ("", "empty"),
    ("lab.db", "missing scheme"),
    ("postgres://u:p@h/db", "unsupported scheme 'postgres'"),
    ("sqlite://", "sqlite needs a file path"),
    ("sqlite:///", "sqlite needs a file path"),
    ("mysql://u:p@h:notaport/db", "port is not a number"),
    ("mysql://u:p@h:3306/", "needs exactly one database name"),
    ("mysql://u:p@h:3306/a/b", "needs exactly one database name"),
    ("mysql://h:3306/db", "has no user"),
])
def test_bad_urls_are_configuration_errors(url, fragment):
    with pytest.raises(ConfigurationError, match="database url") as info:
        parse_database_url(url)
    assert fragment in str(info.value)


def test_schema_has_vicidial_columns_for_both_dialects():
    assert list(LEAD_COLUMN_NAMES) == VICIDIAL_COLUMNS
    mysql = schema_statements("mysql")
    assert "`lead_id` INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL" in mysql[0]
    assert "ENUM('M','F','U')" in mysql[0] and "DECIMAL(4,2)" in mysql[0]
    assert mysql[1] == "CREATE TABLE IF NOT EXISTS vicidial_list_archive LIKE vicidial_list"
    assert mysql[2] == "ALTER TABLE vicidial_list_archive MODIFY `lead_id` INT(9) UNSIGNED NOT NULL"
    assert all("IF NOT EXISTS" in s for s in schema_statements("sqlite") if s.startswith("CREATE"))


async def test_sqlite_schema_is_idempotent_and_archive_has_no_autoincrement(tmp_path):
    url = f"sqlite:///{tmp_path}/lab.db"
    for _ in range(2):
        db = await open_database(url)
        await db.close()
    db = await open_database(url)
    try:
        cols = await db.run_transaction(lambda tx: tx.fetchall("PRAGMA table_info(vicidial_list_archive)"))
        assert [c[1] for c in cols] == VICIDIAL_COLUMNS
        sql = await db.run_transaction(lambda tx: tx.fetchone(
            "SELECT sql FROM sqlite_master WHERE name = 'vicidial_list_archive'"))
        assert "AUTOINCREMENT" not in sql[0]
        # CHECK constraints stand in for VICIdial's ENUMs
        with pytest.raises(Exception, match="CHECK"):
            await db.run_transaction(lambda tx: tx.execute(
                "INSERT INTO vicidial_list (lead_id, phone_number, gender) VALUES (1, '1', 'X')"))
    finally:
        await db.close()


def test_seed_and_sample_leads_are_deterministic():
    seed = load_seed()
    assert seed.api_key == "lab-system-key"
    assert [(u["user_id"], u["user_name"]) for u in seed.users] == [(1001, "agent1"), (1002, "agent2"),
                                                                   (1003, "agent3"), (1000, "supervisor1")]
    assert seed.supervisor_ids == {1000}
    assert [c["status"] for c in seed.campaigns] == [1, 0]
    assert [lead["lead_id"] for lead in seed.leads] == list(range(1, 51))
    assert {lead["list_id"] for lead in seed.leads} == {101}
    assert make_lead(17) == make_lead(17)
    assert set(make_lead(17)) == set(VICIDIAL_COLUMNS)
    assert all(len(make_lead(i)["phone_number"]) <= 18 for i in range(1, 2000))
    assert "agent1pass" not in repr(seed) and "lab-system-key" not in repr(seed)
    assert repr(seed) == "Seed('softphone/lab/seed.json', 1 customer(s), 4 user(s), 2 campaign(s), 50 lead(s))"


def test_bad_seed_files_are_configuration_errors(tmp_path):
    path = tmp_path / "seed.json"
    path.write_text('{"api_key": "k", "users": [{"user_id": "x"}], "campaigns": []}')
    with pytest.raises(ConfigurationError, match=r"users\[0\].user_id"):
        load_seed(path)
    path.write_text("not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        load_seed(path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_seed(tmp_path / "missing.json")


def test_upsert_is_spelled_per_dialect():
    assert SQLITE.upsert("t", ["k"], ["v"]) == (
        "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v")
    assert MYSQL.upsert("t", ["k"], ["v"]) == "INSERT INTO t (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)"
    assert MYSQL.same("a.x", "b.x") == "a.x <=> b.x" and SQLITE.same("a.x", "b.x") == "a.x IS b.x"


async def test_sqlite_upsert_inserts_then_updates():
    db = await open_database("sqlite:///:memory:")
    try:
        sql = db.dialect.upsert("lab_settings", ["name"], ["value"])
        for value in ("one", "two"):
            await db.run_transaction(lambda tx, value=value: tx.execute(sql, ("k", value)))
        rows = await db.run_transaction(lambda tx: tx.fetchall("SELECT name, value FROM lab_settings"))
        assert rows == [("k", "two")]
    finally:
        await db.close()


@pytest.mark.peer
async def test_mariadb_deadlock_victim_is_run_again(request):
    """Two transactions lock rows in opposite order: InnoDB kills one, run_transaction re-runs it."""
    import asyncio
    import os

    from softphone.lab.seed import apply_seed
    from softphone.lab.testing import MYSQL_URL_ENV, drop_mysql_database, fresh_mysql_url

    url = fresh_mysql_url(os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb"))
    db = await open_database(url)
    try:
        await apply_seed(db, load_seed())
        first_locked, second_locked = asyncio.Event(), asyncio.Event()
        attempts = {"one": 0, "two": 0}

        def body(name: str, mine: int, theirs: int, locked: asyncio.Event, other: asyncio.Event):
            async def run(tx):
                attempts[name] += 1
                await tx.fetchall("SELECT lead_id FROM vicidial_list WHERE lead_id = ? FOR UPDATE", (mine,))
                locked.set()
                await asyncio.wait_for(other.wait(), 30)
                await tx.execute("UPDATE vicidial_list SET comments = ? WHERE lead_id = ?", (name, theirs))
            return run

        await asyncio.wait_for(asyncio.gather(
            db.run_transaction(body("one", 1, 2, first_locked, second_locked)),
            db.run_transaction(body("two", 2, 1, second_locked, first_locked))), 60)
        assert sorted(attempts.values()) == [1, 2]
        rows = await db.run_transaction(lambda tx: tx.fetchall(
            "SELECT lead_id, comments FROM vicidial_list WHERE lead_id IN (1, 2) ORDER BY lead_id"))
        assert rows == [(1, "two"), (2, "one")]
    finally:
        await db.close()
        drop_mysql_database(url)
