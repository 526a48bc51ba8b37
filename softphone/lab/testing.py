"""Helpers for tests and benchmarks of the lab (no pytest import here).

* :func:`fresh_mysql_url` makes an empty database on a MariaDB server, either
  through the ``mariadb`` peer fixture (``create_database``) or, given a
  server URL (``$SOFTPHONE_TEST_MYSQL_URL``), by connecting to it;
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


class PrivateMariaDB:
    """A throw-away ``mariadbd`` on a free loopback port, in its own data directory.

    For the benchmark and as a fallback when the ``mariadb`` peer fixture is
    not available.  Started with :meth:`start`, stopped by its PID with
    :meth:`stop`; :meth:`create_database` has the peer fixture's signature.
    """

    def __init__(self, workdir: str):
        import secrets

        self.workdir = workdir
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "lab"
        self.password = secrets.token_hex(12)
        self.pid: int | None = None
        self._proc: Any = None

    def start(self, timeout: float = 60.0) -> PrivateMariaDB:
        import getpass
        import os
        import shutil
        import socket
        import subprocess
        import time

        import pymysql

        for tool in ("mariadb-install-db", "mariadbd"):
            if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
                raise RuntimeError(f"{tool} not found: install mariadb-server")
        datadir = os.path.join(self.workdir, "data")
        sock = os.path.join(self.workdir, "mysqld.sock")
        os.makedirs(datadir, exist_ok=True)
        user = getpass.getuser()
        log = open(os.path.join(self.workdir, "mariadbd.log"), "wb")
        subprocess.run(["mariadb-install-db", "--no-defaults", f"--datadir={datadir}", f"--user={user}",
                        "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        self._proc = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={datadir}", f"--socket={sock}", f"--port={self.port}",
             "--bind-address=127.0.0.1", "--skip-name-resolve", f"--user={user}",
             f"--pid-file={os.path.join(self.workdir, 'mariadbd.pid')}", "--innodb-buffer-pool-size=128M",
             "--innodb-flush-log-at-trx-commit=2", "--max-connections=200"],
            stdout=log, stderr=subprocess.STDOUT)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = pymysql.connect(unix_socket=sock, user="root")
                break
            except pymysql.MySQLError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mariadbd did not start; see {self.workdir}/mariadbd.log") from None
                time.sleep(0.1)
        try:
            with conn.cursor() as cur:
                cur.execute("CREATE USER %s@'127.0.0.1' IDENTIFIED BY %s", (self.user, self.password))
                cur.execute("GRANT ALL ON *.* TO %s@'127.0.0.1'", (self.user,))
        finally:
            conn.close()
        return self

    @property
    def server_url(self) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/mysql"

    def create_database(self, name: str) -> str:
        return fresh_mysql_url(self.server_url, name)

    def stop(self) -> None:
        import subprocess

        if self._proc is None:
            return
        proc, self._proc = self._proc, None
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
