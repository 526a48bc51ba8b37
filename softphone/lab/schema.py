"""The lab's tables: VICIdial's lead tables as VICIdial defines them, plus the lab's own.

``vicidial_list`` follows VICIdial's ``extras/MySQL_AST_CREATE_tables.sql``
column for column (names, types, defaults); ``vicidial_list_archive`` is
created ``LIKE vicidial_list`` with ``lead_id`` no longer auto-increment, as
VICIdial's upgrade script does.  One deliberate difference: the engine is
InnoDB, not MyISAM, because the archive API must be transactional.

Each column is declared once with its MariaDB type and its SQLite
equivalent; :func:`schema_statements` renders the DDL for a dialect.  Every
statement is idempotent (``IF NOT EXISTS``), so the schema is created on
every start.
"""

from __future__ import annotations

from dataclasses import dataclass

_ENUM_CSLR = "'Y','N','Y1','Y2','Y3','Y4','Y5','Y6','Y7','Y8','Y9','Y10'"


@dataclass(frozen=True)
class Column:
    """One column of ``vicidial_list``: MariaDB type, SQLite type and default."""

    name: str
    mysql: str
    sqlite: str


LEAD_COLUMNS: tuple[Column, ...] = (
    Column("lead_id", "INT(9) UNSIGNED NOT NULL", "INTEGER NOT NULL"),
    Column("entry_date", "DATETIME", "DATETIME"),
    Column("modify_date", "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP",
           "TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP"),
    Column("status", "VARCHAR(6)", "VARCHAR(6)"),
    Column("user", "VARCHAR(20)", "VARCHAR(20)"),
    Column("vendor_lead_code", "VARCHAR(20)", "VARCHAR(20)"),
    Column("source_id", "VARCHAR(50)", "VARCHAR(50)"),
    Column("list_id", "BIGINT(14) UNSIGNED NOT NULL DEFAULT '0'", "BIGINT NOT NULL DEFAULT 0"),
    Column("gmt_offset_now", "DECIMAL(4,2) DEFAULT '0.00'", "DECIMAL(4,2) DEFAULT 0.00"),
    Column("called_since_last_reset", f"ENUM({_ENUM_CSLR}) DEFAULT 'N'",
           f"VARCHAR(3) DEFAULT 'N' CHECK (called_since_last_reset IN ({_ENUM_CSLR}))"),
    Column("phone_code", "VARCHAR(10)", "VARCHAR(10)"),
    Column("phone_number", "VARCHAR(18) NOT NULL", "VARCHAR(18) NOT NULL"),
    Column("title", "VARCHAR(4)", "VARCHAR(4)"),
    Column("first_name", "VARCHAR(30)", "VARCHAR(30)"),
    Column("middle_initial", "VARCHAR(1)", "VARCHAR(1)"),
    Column("last_name", "VARCHAR(30)", "VARCHAR(30)"),
    Column("address1", "VARCHAR(100)", "VARCHAR(100)"),
    Column("address2", "VARCHAR(100)", "VARCHAR(100)"),
    Column("address3", "VARCHAR(100)", "VARCHAR(100)"),
    Column("city", "VARCHAR(50)", "VARCHAR(50)"),
    Column("state", "VARCHAR(2)", "VARCHAR(2)"),
    Column("province", "VARCHAR(50)", "VARCHAR(50)"),
    Column("postal_code", "VARCHAR(10)", "VARCHAR(10)"),
    Column("country_code", "VARCHAR(3)", "VARCHAR(3)"),
    Column("gender", "ENUM('M','F','U') DEFAULT 'U'", "VARCHAR(1) DEFAULT 'U' CHECK (gender IN ('M','F','U'))"),
    Column("date_of_birth", "DATE", "DATE"),
    Column("alt_phone", "VARCHAR(12)", "VARCHAR(12)"),
    Column("email", "VARCHAR(70)", "VARCHAR(70)"),
    Column("security_phrase", "VARCHAR(100)", "VARCHAR(100)"),
    Column("comments", "VARCHAR(255)", "VARCHAR(255)"),
    Column("called_count", "SMALLINT(5) UNSIGNED DEFAULT '0'", "SMALLINT DEFAULT 0"),
    Column("last_local_call_time", "DATETIME", "DATETIME"),
    Column("rank", "SMALLINT(5) NOT NULL DEFAULT '0'", "SMALLINT NOT NULL DEFAULT 0"),
    Column("owner", "VARCHAR(20) DEFAULT ''", "VARCHAR(20) DEFAULT ''"),
    Column("entry_list_id", "BIGINT(14) UNSIGNED NOT NULL DEFAULT '0'", "BIGINT NOT NULL DEFAULT 0"),
)

LEAD_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in LEAD_COLUMNS)

#: VICIdial's secondary indexes on vicidial_list (the archive copies them via LIKE).
_LEAD_INDEXES = ("phone_number", "list_id", "called_since_last_reset", "status", "gmt_offset_now",
                 "postal_code", "last_local_call_time", "rank", "owner")


def quoted(name: str) -> str:
    """A column name quoted for both dialects (``user`` and ``rank`` are keywords)."""
    return f"`{name}`"


def lead_column_list(prefix: str = "") -> str:
    return ", ".join(prefix + quoted(n) for n in LEAD_COLUMN_NAMES)


_LAB_TABLES_MYSQL = (
    """CREATE TABLE IF NOT EXISTS lab_customers (
        customer_id INT UNSIGNED PRIMARY KEY NOT NULL,
        name VARCHAR(100) NOT NULL DEFAULT ''
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_users (
        user_id INT UNSIGNED PRIMARY KEY NOT NULL,
        user_name VARCHAR(50) NOT NULL UNIQUE,
        password VARCHAR(100) NOT NULL,
        customer_id INT UNSIGNED NOT NULL,
        campaign_id INT UNSIGNED NULL,
        extension VARCHAR(20) NULL,
        status VARCHAR(20) NOT NULL DEFAULT 'LOGGED_OUT'
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_extensions (
        extension VARCHAR(20) PRIMARY KEY NOT NULL,
        user_id INT UNSIGNED NOT NULL UNIQUE,
        customer_id INT UNSIGNED NOT NULL,
        expire_date VARCHAR(40) NOT NULL
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_campaigns (
        campaign_id INT UNSIGNED PRIMARY KEY NOT NULL,
        campaign_name VARCHAR(40) NOT NULL,
        status TINYINT NOT NULL DEFAULT 0,
        list_id BIGINT UNSIGNED NOT NULL DEFAULT 0
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_tokens (
        token_hash CHAR(64) PRIMARY KEY NOT NULL,
        user_id INT UNSIGNED NOT NULL,
        expires_at DOUBLE NOT NULL,
        INDEX (user_id)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_calls (
        call_id INT UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
        user_id INT UNSIGNED NOT NULL,
        campaign_id INT UNSIGNED NULL,
        phone_number VARCHAR(18) NOT NULL,
        caller_id VARCHAR(20) NOT NULL DEFAULT '',
        reference_id VARCHAR(64) NOT NULL DEFAULT '',
        lead_id INT UNSIGNED NULL,
        list_id BIGINT UNSIGNED NULL,
        direction VARCHAR(10) NOT NULL DEFAULT 'outbound',
        call_type VARCHAR(20) NOT NULL DEFAULT 'manual',
        call_state VARCHAR(10) NOT NULL,
        start_time DOUBLE NOT NULL,
        answer_time DOUBLE NULL,
        end_time DOUBLE NULL,
        hold_ms BIGINT NOT NULL DEFAULT 0,
        hold_since DOUBLE NULL,
        recording_url VARCHAR(255) NULL,
        recording TINYINT NOT NULL DEFAULT 0,
        disposition_code VARCHAR(20) NULL,
        sip_code INT NULL,
        INDEX (user_id, call_state)
    ) ENGINE=InnoDB""",
    """CREATE TABLE IF NOT EXISTS lab_settings (
        name VARCHAR(50) PRIMARY KEY NOT NULL,
        value VARCHAR(1000) NOT NULL
    ) ENGINE=InnoDB""",
)


def _sqlite_lab_table(stmt: str) -> str:
    """The MariaDB DDL of a lab table rewritten for SQLite (types are advisory there)."""
    out = stmt.replace(") ENGINE=InnoDB", ")")
    out = out.replace("INT UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL", "INTEGER PRIMARY KEY AUTOINCREMENT")
    out = out.replace(" UNSIGNED", "")
    out = out.replace(",\n        INDEX (user_id, call_state)", "").replace(",\n        INDEX (user_id)", "")
    return out


def schema_statements(dialect_name: str) -> list[str]:
    """Every CREATE statement, in order, for ``"mysql"`` or ``"sqlite"``."""
    if dialect_name == "mysql":
        cols = [f"{quoted(c.name)} {c.mysql}" for c in LEAD_COLUMNS]
        cols[0] = "`lead_id` INT(9) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL"
        idx = [f"INDEX ({quoted(i)})" for i in _LEAD_INDEXES]
        body = ",\n  ".join(cols + idx)
        return [
            f"CREATE TABLE IF NOT EXISTS vicidial_list (\n  {body}\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
            "CREATE TABLE IF NOT EXISTS vicidial_list_archive LIKE vicidial_list",
            "ALTER TABLE vicidial_list_archive MODIFY `lead_id` INT(9) UNSIGNED NOT NULL",
            *_LAB_TABLES_MYSQL,
        ]
    if dialect_name == "sqlite":
        stmts = []
        for table, pk in (("vicidial_list", "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL"),
                          ("vicidial_list_archive", "INTEGER PRIMARY KEY NOT NULL")):
            cols = [f"{quoted(c.name)} {c.sqlite}" for c in LEAD_COLUMNS]
            cols[0] = f"`lead_id` {pk}"
            stmts.append(f"CREATE TABLE IF NOT EXISTS {table} (\n  " + ",\n  ".join(cols) + "\n)")
            for i in _LEAD_INDEXES:
                stmts.append(f"CREATE INDEX IF NOT EXISTS {table}_{i} ON {table} ({quoted(i)})")
        stmts.extend(_sqlite_lab_table(s) for s in _LAB_TABLES_MYSQL)
        stmts.append("CREATE INDEX IF NOT EXISTS lab_calls_user ON lab_calls (user_id, call_state)")
        stmts.append("CREATE INDEX IF NOT EXISTS lab_tokens_user ON lab_tokens (user_id)")
        return stmts
    raise ValueError(f"unknown dialect {dialect_name!r}")
