"""A private mariadbd: its own data dir, socket and loopback port, a password user, database `softphone`.

Tuned for a shared 2-core test machine: small InnoDB buffers and log, no
binlog, no performance schema, no fsync per commit (test data need not
survive a crash). Root logs in only over the private socket; tests use the
created user over TCP, as the lab does in production.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

from .process import PeerProcess, PeerStartError, free_port

NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
SERVER_OPTIONS = (
    "--skip-name-resolve", "--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=4M", "--innodb-doublewrite=0", "--innodb-flush-log-at-trx-commit=0",
    "--performance-schema=OFF", "--key-buffer-size=1M", "--max-connections=300", "--skip-log-bin",
    "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
)


def _binary(*names: str) -> str:
    for name in names:
        found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}")
                                            if Path(p).exists()), None)
        if found:
            return found
    raise PeerStartError(f"none of {', '.join(names)} found (Debian package: mariadb-server)")


class MariaDB:
    """mariadbd on a free port; `url` is mysql://USER:PASS@127.0.0.1:PORT/softphone."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, user: str = "softphone", database: str = "softphone") -> None:
        self.workdir = workdir
        self.user = user
        self.password = "pw-" + secrets.token_hex(10)
        self.database = database
        self.port = 0
        self.datadir = workdir / "data"
        self.socket = workdir / "mysqld.sock"
        self.log_path = workdir / "mariadbd.log"
        self._process: PeerProcess | None = None

    def __repr__(self) -> str:
        return (f"MariaDB(host={self.host!r}, port={self.port}, user={self.user!r}, "
                f"database={self.database!r}, pid={self.pid}, log={self.log_path})")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def url_for(self, database: str) -> str:
        return f"mysql://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._install()
        self.port = free_port()
        argv = [_binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}",
                f"--socket={self.socket}", f"--port={self.port}", "--bind-address=127.0.0.1",
                f"--pid-file={self.workdir / 'mariadbd.pid'}", "--user=root", f"--log-error={self.log_path}",
                *SERVER_OPTIONS]
        self._process = PeerProcess("mariadb", argv, self.workdir / "mariadbd.stdout.log")
        self._process.start()
        try:
            self._process.wait_ready(self._root_answers, f"a root login on {self.socket}", timeout=30.0)
            self._root_sql(
                f"CREATE USER IF NOT EXISTS '{self.user}'@'%' IDENTIFIED BY '{self.password}';"
                f"GRANT ALL PRIVILEGES ON *.* TO '{self.user}'@'%' WITH GRANT OPTION;"
                f"CREATE DATABASE IF NOT EXISTS `{self.database}`;"
            )
            # Ready means: the test's own user gets in over TCP.
            self._client(["-h", self.host, "-P", str(self.port), "-u", self.user, "--protocol=tcp",
                          "-e", "SELECT 1"], password=self.password)
        except PeerStartError:
            self.stop()
            raise

    def _install(self) -> None:
        if (self.datadir / "mysql").is_dir():
            return
        install_log = self.workdir / "install-db.log"
        with open(install_log, "wb") as log:
            result = subprocess.run(
                [_binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", "--user=root",
                 f"--datadir={self.datadir}", "--auth-root-authentication-method=normal", "--skip-test-db",
                 *SERVER_OPTIONS],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            tail = "\n".join(install_log.read_text(errors="replace").splitlines()[-20:])
            raise PeerStartError(f"mariadb-install-db failed (exit {result.returncode}), log {install_log}:\n{tail}")

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=10.0)
            self._process = None

    # --- SQL through the client binary ----------------------------------------------------------

    def _client(self, args: list[str], password: str = "") -> str:
        env = {**os.environ, "MYSQL_PWD": password}  # keeps the password off the command line
        result = subprocess.run([_binary("mariadb", "mysql"), "--no-defaults", "--batch", "--skip-column-names",
                                 *args], capture_output=True, text=True, env=env, timeout=30,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            error = result.stderr.strip()
            raise PeerStartError(f"mariadb client failed: {error.replace(password, '***') if password else error}")
        return result.stdout

    def _root_sql(self, sql: str) -> str:
        return self._client(["-S", str(self.socket), "-u", "root", "-e", sql])

    def _root_answers(self) -> bool:
        try:
            self._root_sql("SELECT 1")
            return True
        except (PeerStartError, subprocess.TimeoutExpired):
            return False

    def create_database(self, name: str) -> str:
        """A fresh, empty database `name` (dropped first if it exists); returns its URL."""
        if not NAME_RE.match(name):
            raise ValueError(f"database name {name!r} must match {NAME_RE.pattern}")
        self._root_sql(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`;")
        return self.url_for(name)
