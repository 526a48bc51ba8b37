"""The lab's one async data layer: SQLite (embedded default) or MariaDB/MySQL by URL.

Callers write SQL once, with ``?`` placeholders and backtick-quoted names, and
run it inside :meth:`Database.run_transaction`.  Every dialect difference
lives in :class:`Dialect` and the two backends below:

* placeholders: ``?`` for SQLite, ``%s`` for aiomysql (translated here);
* NULL-safe equality: ``IS`` (SQLite) versus ``<=>`` (MariaDB);
* upsert: ``ON CONFLICT ... DO UPDATE`` versus ``ON DUPLICATE KEY UPDATE``;
* locking: ``BEGIN IMMEDIATE`` takes SQLite's write lock up front; MariaDB
  runs READ COMMITTED transactions and callers lock rows with
  :attr:`Dialect.for_update` (``SELECT ... FOR UPDATE``);
* retries: MariaDB deadlocks and lock-wait timeouts re-run the whole
  transaction function (it must therefore be safe to repeat).

URLs: ``sqlite:///path/lab.db``, ``sqlite:///:memory:`` (or ``sqlite://:memory:``),
``mysql://user:pass@host:port/db`` (``mariadb://`` is accepted too).
"""

from __future__ import annotations

import abc
import asyncio
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from softphone.errors import ConfigurationError, LabError
from softphone.lab.schema import schema_statements
from softphone.log import Secret, get_logger

log = get_logger(__name__)

T = TypeVar("T")

#: MariaDB errors after which a transaction is simply run again.
_MYSQL_RETRYABLE = {1213, 1205}  # deadlock, lock wait timeout
MAX_ATTEMPTS = 8


@dataclass(frozen=True)
class Dialect:
    """The SQL spelled differently by each backend."""

    name: str
    null_safe_eq: str
    for_update: str

    def same(self, left: str, right: str) -> str:
        """A NULL-safe "left equals right" predicate."""
        return f"{left} {self.null_safe_eq} {right}"

    def upsert(self, table: str, keys: Sequence[str], columns: Sequence[str]) -> str:
        """INSERT of ``keys + columns`` that updates ``columns`` when the key exists."""
        names = [*keys, *columns]
        head = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        if self.name == "mysql":
            return head + " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in columns)
        return (head + f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in columns))


SQLITE = Dialect(name="sqlite", null_safe_eq="IS", for_update="")
MYSQL = Dialect(name="mysql", null_safe_eq="<=>", for_update=" FOR UPDATE")


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL; the password is a :class:`Secret`."""

    dialect: Dialect
    path: str = ""
    host: str = ""
    port: int = 3306
    user: str = ""
    password: Secret | None = None
    database: str = ""

    @property
    def display(self) -> str:
        """The URL without its password, for logs and banners."""
        if self.dialect is SQLITE:
            return f"sqlite:///{self.path}"
        return f"mysql://{self.user}:***@{self.host}:{self.port}/{self.database}"


def parse_database_url(url: str) -> DatabaseUrl:
    """Parse ``url`` or raise :class:`ConfigurationError` saying what is wrong."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError("database url: empty; use sqlite:///FILE, sqlite:///:memory: or "
                                 "mysql://USER:PASS@HOST:PORT/DB")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigurationError("database url: missing scheme; use sqlite:///FILE or mysql://USER:PASS@HOST:PORT/DB")
    if scheme == "sqlite":
        if rest in (":memory:", "/:memory:"):
            return DatabaseUrl(dialect=SQLITE, path=":memory:")
        if not rest.startswith("/") or rest == "/":
            raise ConfigurationError("database url: sqlite needs a file path: sqlite:///relative/lab.db, "
                                     "sqlite:////absolute/lab.db or sqlite:///:memory:")
        return DatabaseUrl(dialect=SQLITE, path=unquote(rest[1:]))
    if scheme in ("mysql", "mariadb"):
        parts = urlsplit("mysql://" + rest)
        try:
            port = parts.port or 3306
        except ValueError:
            raise ConfigurationError("database url: port is not a number") from None
        database = parts.path.lstrip("/")
        if not parts.hostname:
            raise ConfigurationError("database url: mysql url has no host")
        if not database or "/" in database:
            raise ConfigurationError("database url: mysql url needs exactly one database name after the host")
        if not parts.username:
            raise ConfigurationError("database url: mysql url has no user")
        password = Secret(unquote(parts.password)) if parts.password else None
        return DatabaseUrl(dialect=MYSQL, host=parts.hostname, port=port, user=unquote(parts.username),
                           password=password, database=unquote(database))
    raise ConfigurationError(f"database url: unsupported scheme {scheme!r}; use sqlite or mysql")


class Tx(abc.ABC):
    """One open transaction; SQL uses ``?`` placeholders."""

    dialect: Dialect

    @abc.abstractmethod
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement per row of parameters."""

    @abc.abstractmethod
    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run an INSERT; the auto-increment id it created."""

    @abc.abstractmethod
    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """All rows of a query."""

    async def fetchone(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None


class Database(abc.ABC):
    """A connected database; schema created by :meth:`connect`."""

    def __init__(self, url: DatabaseUrl):
        self.url = url
        self.dialect = url.dialect

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.display})"

    @abc.abstractmethod
    async def connect(self) -> None:
        """Open connections and create the schema (idempotent)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close every connection."""

    @abc.abstractmethod
    async def run_transaction(self, fn: Callable[[Tx], Awaitable[T]], *, readonly: bool = False) -> T:
        """Run ``fn(tx)`` in one transaction: committed if it returns, rolled back if it raises."""

    async def create_schema(self) -> None:
        async def create(tx: Tx) -> None:
            for stmt in schema_statements(self.dialect.name):
                await tx.execute(stmt)

        with warnings.catch_warnings():
            # MariaDB warns "table already exists" for every IF NOT EXISTS on a restart
            warnings.simplefilter("ignore")
            await self.run_transaction(create)


def placeholders(n: int) -> str:
    """``?, ?, ...`` for an ``IN (...)`` list of ``n`` values."""
    return ", ".join("?" * n)


# --- SQLite -------------------------------------------------------------------------


class _SqliteTx(Tx):
    dialect = SQLITE

    def __init__(self, conn: Any):
        self._conn = conn

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(sql, tuple(params))
        try:
            return cur.rowcount
        finally:
            await cur.close()

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, [tuple(r) for r in rows])

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        cur = await self._conn.execute(sql, tuple(params))
        try:
            return int(cur.lastrowid)
        finally:
            await cur.close()

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        cur = await self._conn.execute(sql, tuple(params))
        try:
            return [tuple(r) for r in await cur.fetchall()]
        finally:
            await cur.close()


class SqliteDatabase(Database):
    """One aiosqlite connection; transactions are serialized and start with BEGIN IMMEDIATE.

    One connection because ``:memory:`` databases are per connection; the
    asyncio lock keeps two coroutines from interleaving statements of two
    transactions on it, and BEGIN IMMEDIATE guards against other processes
    sharing the file.
    """

    def __init__(self, url: DatabaseUrl):
        super().__init__(url)
        self._conn: Any = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        import aiosqlite

        try:
            self._conn = await aiosqlite.connect(self.url.path, isolation_level=None)
        except Exception as exc:
            raise LabError(f"database {self.url.display}: cannot open: {exc}") from None
        await self._conn.execute("PRAGMA busy_timeout = 10000")
        if self.url.path != ":memory:":
            await self._conn.execute("PRAGMA journal_mode = WAL")
        await self.create_schema()
        log.info("database %s ready", self.url.display)

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    async def run_transaction(self, fn: Callable[[Tx], Awaitable[T]], *, readonly: bool = False) -> T:
        if self._conn is None:
            raise LabError("database is not connected")
        async with self._lock:
            await self._conn.execute("BEGIN" if readonly else "BEGIN IMMEDIATE")
            try:
                result = await fn(_SqliteTx(self._conn))
            except BaseException:
                await self._conn.execute("ROLLBACK")
                raise
            await self._conn.execute("COMMIT")
            return result


# --- MariaDB / MySQL ---------------------------------------------------------------


def _mysql_sql(sql: str) -> str:
    """``?`` placeholders to aiomysql's ``%s`` (literal ``%`` doubled first)."""
    return sql.replace("%", "%%").replace("?", "%s")


class _MysqlTx(Tx):
    dialect = MYSQL

    def __init__(self, cur: Any):
        self._cur = cur

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(await self._cur.execute(_mysql_sql(sql), tuple(params)))

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            await self._cur.executemany(_mysql_sql(sql), [tuple(r) for r in rows])

    async def insert(self, sql: str, params: Sequence[Any] = ()) -> int:
        await self._cur.execute(_mysql_sql(sql), tuple(params))
        return int(self._cur.lastrowid)

    async def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        await self._cur.execute(_mysql_sql(sql), tuple(params))
        return [tuple(r) for r in await self._cur.fetchall()]


class MysqlDatabase(Database):
    """An aiomysql pool; READ COMMITTED transactions re-run on deadlock."""

    def __init__(self, url: DatabaseUrl, pool_size: int = 10):
        super().__init__(url)
        self._pool: Any = None
        self.pool_size = pool_size

    async def connect(self) -> None:
        import aiomysql

        u = self.url
        try:
            self._pool = await aiomysql.create_pool(
                host=u.host, port=u.port, user=u.user, password=u.password.reveal() if u.password else "",
                db=u.database, autocommit=False, charset="utf8mb4", minsize=1, maxsize=self.pool_size,
                connect_timeout=10,
            )
        except Exception as exc:
            # pymysql messages name user and host, never the password
            raise LabError(f"database {u.display}: cannot connect: {exc}") from None
        await self.create_schema()
        log.info("database %s ready", u.display)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.close()
            await pool.wait_closed()

    async def run_transaction(self, fn: Callable[[Tx], Awaitable[T]], *, readonly: bool = False) -> T:
        import pymysql

        if self._pool is None:
            raise LabError("database is not connected")
        for attempt in range(1, MAX_ATTEMPTS + 1):
            async with self._pool.acquire() as conn:
                async with conn.cursor() as cur:
                    await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                    await conn.begin()
                    try:
                        result = await fn(_MysqlTx(cur))
                        await conn.commit()
                        return result
                    except pymysql.err.OperationalError as exc:
                        await _rollback(conn)
                        code = exc.args[0] if exc.args else None
                        if code in _MYSQL_RETRYABLE and attempt < MAX_ATTEMPTS:
                            log.info("transaction attempt %d hit MariaDB error %s; retrying", attempt, code)
                            await asyncio.sleep(0.01 * attempt)
                            continue
                        raise
                    except BaseException:
                        await _rollback(conn)
                        raise
        raise AssertionError("unreachable")  # pragma: no cover


async def _rollback(conn: Any) -> None:
    try:
        await conn.rollback()
    except Exception:  # the connection is broken: the pool drops it
        conn.close()


def make_database(url: str | DatabaseUrl) -> Database:
    """A :class:`Database` for ``url`` (not yet connected)."""
    parsed = url if isinstance(url, DatabaseUrl) else parse_database_url(url)
    if parsed.dialect is SQLITE:
        return SqliteDatabase(parsed)
    return MysqlDatabase(parsed)


async def open_database(url: str | DatabaseUrl) -> Database:
    """Connect to ``url`` and create the schema."""
    db = make_database(url)
    await db.connect()
    return db
