"""Helpers for tests and benchmarks of the lab (no pytest import here).

* :func:`fresh_mysql_url` makes an empty database on a MariaDB server, either
  through the ``mariadb`` peer fixture (``create_database``) or, given a
  server URL (``$SOFTPHONE_TEST_MYSQL_URL``, ``bench --mysql-url``), by
  connecting to it;
* :func:`table_snapshot` reads both lead tables whole, to compare states.
"""

from __future__ import annotations

import uuid
from typing import Any

from softphone.lab.db import Database, Tx, parse_database_url
from softphone.lab.schema import lead_column_list

MYSQL_URL_ENV = "SOFTPHONE_TEST_MYSQL_URL"


def fresh_database_name(prefix: str = "lab") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def fresh_mysql_url(server: Any, name: str | None = None) -> str:
    """A URL of a new, empty database: ``server`` is the mariadb fixture or a mysql:// URL."""
    name = name or fresh_database_name()
    if hasattr(server, "create_database"):
        return server.create_database(name)
    import pymysql

    url = parse_database_url(str(server))
    conn = pymysql.connect(host=url.host, port=url.port, user=url.user,
                           password=url.password.reveal() if url.password else "")
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
    finally:
        conn.close()
    password = url.password.reveal() if url.password else ""
    return f"mysql://{url.user}:{password}@{url.host}:{url.port}/{name}"


def drop_mysql_database(url_text: str) -> None:
    """Drop the database of ``url_text`` (best effort, for test teardown)."""
    import pymysql

    url = parse_database_url(url_text)
    try:
        conn = pymysql.connect(host=url.host, port=url.port, user=url.user,
                               password=url.password.reveal() if url.password else "")
    except pymysql.MySQLError:
        return
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{url.database}`")
    finally:
        conn.close()


async def table_snapshot(db: Database) -> dict[str, dict[int, tuple]]:
    """``{"vicidial_list": {lead_id: row}, "vicidial_list_archive": {...}}``."""

    async def read(tx: Tx) -> dict[str, dict[int, tuple]]:
        out = {}
        for table in ("vicidial_list", "vicidial_list_archive"):
            rows = await tx.fetchall(f"SELECT {lead_column_list()} FROM {table} ORDER BY lead_id")
            out[table] = {int(r[0]): tuple(r) for r in rows}
        return out

    return await db.run_transaction(read, readonly=True)

