"""The lab's platform state in the database: users, tokens, extensions, campaigns, calls.

Queries only; rules about which moves are allowed live in
:mod:`softphone.lab.app`.  Tokens are stored as SHA-256 hashes, so the
database never holds a usable token.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass, fields
from typing import Any

from softphone.lab.db import Database, Tx
from softphone.lab.telephony import CallState
from softphone.log import get_logger

log = get_logger(__name__)

FIRST_EXTENSION = 9000


class CampaignStatus(enum.IntEnum):
    """The contract's campaign status codes."""

    NOT_RUNNING = 0
    RUNNING = 1
    PAUSED = 2

    @property
    def label(self) -> str:
        return {0: "NotRunning", 1: "Running", 2: "Paused"}[self.value]


#: The contract's allowed moves: NotRunning->Paused->Running, Paused/Running->NotRunning.
CAMPAIGN_MOVES = {
    (CampaignStatus.NOT_RUNNING, CampaignStatus.PAUSED),
    (CampaignStatus.PAUSED, CampaignStatus.RUNNING),
    (CampaignStatus.PAUSED, CampaignStatus.NOT_RUNNING),
    (CampaignStatus.RUNNING, CampaignStatus.NOT_RUNNING),
}


class AgentStatus(enum.Enum):
    LOGGED_OUT = "LOGGED_OUT"
    LOGGED_IN = "LOGGED_IN"


@dataclass
class User:
    user_id: int
    user_name: str
    password: str
    customer_id: int
    campaign_id: int | None
    extension: str | None
    status: AgentStatus

    def __repr__(self) -> str:  # never the password
        return f"User({self.user_id}, {self.user_name!r}, {self.status.value})"


@dataclass
class Campaign:
    campaign_id: int
    campaign_name: str
    status: CampaignStatus
    list_id: int


@dataclass
class CallRecord:
    call_id: int
    user_id: int
    campaign_id: int | None
    phone_number: str
    caller_id: str
    reference_id: str
    lead_id: int | None
    list_id: int | None
    direction: str
    call_type: str
    call_state: CallState
    start_time: float
    answer_time: float | None
    end_time: float | None
    hold_ms: int
    hold_since: float | None
    recording_url: str | None
    recording: bool
    disposition_code: str | None
    sip_code: int | None


_CALL_COLUMNS = [f.name for f in fields(CallRecord)]
_USER_COLUMNS = "user_id, user_name, password, customer_id, campaign_id, extension, status"


def _user(row: tuple) -> User:
    return User(int(row[0]), row[1], row[2], int(row[3]), None if row[4] is None else int(row[4]), row[5],
                AgentStatus(row[6]))


def _call(row: tuple) -> CallRecord:
    d: dict[str, Any] = dict(zip(_CALL_COLUMNS, row, strict=True))
    d["call_state"] = CallState(d["call_state"])
    d["recording"] = bool(d["recording"])
    for k in ("start_time", "answer_time", "end_time", "hold_since"):
        if d[k] is not None:
            d[k] = float(d[k])
    d["hold_ms"] = int(d["hold_ms"])
    return CallRecord(**d)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class LabStore:
    """Typed access to the lab tables."""

    def __init__(self, db: Database):
        self.db = db

    # users ------------------------------------------------------------------------
    async def user(self, user_id: int) -> User | None:
        row = await self.db.run_transaction(
            lambda tx: tx.fetchone(f"SELECT {_USER_COLUMNS} FROM lab_users WHERE user_id = ?", (user_id,)),
            readonly=True)
        return _user(row) if row else None

    async def user_by_name(self, user_name: str) -> User | None:
        row = await self.db.run_transaction(
            lambda tx: tx.fetchone(f"SELECT {_USER_COLUMNS} FROM lab_users WHERE user_name = ?", (user_name,)),
            readonly=True)
        return _user(row) if row else None

    async def set_agent_state(self, user_id: int, status: AgentStatus, campaign_id: int | None,
                              extension: str | None) -> None:
        await self.db.run_transaction(lambda tx: tx.execute(
            "UPDATE lab_users SET status = ?, campaign_id = ?, extension = ? WHERE user_id = ?",
            (status.value, campaign_id, extension, user_id)))

    # tokens -----------------------------------------------------------------------
    async def issue_token(self, user_id: int, expires_at: float, now: float) -> str:
        token = secrets.token_urlsafe(32)

        async def run(tx: Tx) -> None:
            await tx.execute("DELETE FROM lab_tokens WHERE expires_at <= ?", (now,))
            await tx.execute("INSERT INTO lab_tokens (token_hash, user_id, expires_at) VALUES (?, ?, ?)",
                             (token_hash(token), user_id, expires_at))

        await self.db.run_transaction(run)
        return token

    async def token_user(self, token: str, now: float) -> int | None:
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT user_id FROM lab_tokens WHERE token_hash = ? AND expires_at > ?", (token_hash(token), now)),
            readonly=True)
        return int(row[0]) if row else None

    # extensions -------------------------------------------------------------------
    async def provision_extension(self, user: User, expire_date: str) -> str:
        """The user's extension (9000 + last three digits of user_id, else the next free one)."""

        async def run(tx: Tx) -> str:
            row = await tx.fetchone("SELECT extension FROM lab_extensions WHERE user_id = ?", (user.user_id,))
            if row:
                await tx.execute("UPDATE lab_extensions SET expire_date = ? WHERE user_id = ?",
                                 (expire_date, user.user_id))
                return str(row[0])
            taken = {str(r[0]) for r in await tx.fetchall("SELECT extension FROM lab_extensions")}
            ext = str(FIRST_EXTENSION + user.user_id % 1000)
            n = FIRST_EXTENSION + 1
            while ext in taken:
                ext = str(n)
                n += 1
            await tx.execute(
                "INSERT INTO lab_extensions (extension, user_id, customer_id, expire_date) VALUES (?, ?, ?, ?)",
                (ext, user.user_id, user.customer_id, expire_date))
            return ext

        return await self.db.run_transaction(run)

    async def extension_owner(self, extension: str) -> tuple[int, str] | None:
        """(user_id, expire_date ISO) of a provisioned extension, or None."""
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT user_id, expire_date FROM lab_extensions WHERE extension = ?", (extension,)), readonly=True)
        return (int(row[0]), str(row[1])) if row else None

    # campaigns --------------------------------------------------------------------
    async def campaign(self, campaign_id: int) -> Campaign | None:
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT campaign_id, campaign_name, status, list_id FROM lab_campaigns WHERE campaign_id = ?",
            (campaign_id,)), readonly=True)
        if not row:
            return None
        return Campaign(int(row[0]), row[1], CampaignStatus(int(row[2])), int(row[3]))

    async def set_campaign_status(self, campaign_id: int, status: CampaignStatus) -> None:
        await self.db.run_transaction(lambda tx: tx.execute(
            "UPDATE lab_campaigns SET status = ? WHERE campaign_id = ?", (int(status), campaign_id)))

    # leads ------------------------------------------------------------------------
    async def lead_list_id(self, lead_id: int) -> int | None:
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT list_id FROM vicidial_list WHERE lead_id = ?", (lead_id,)), readonly=True)
        return int(row[0]) if row else None

    # calls ------------------------------------------------------------------------
    async def create_call(self, **values: Any) -> CallRecord:
        values = dict(values)
        values["call_state"] = values["call_state"].value
        cols = [c for c in _CALL_COLUMNS if c != "call_id" and c in values]

        async def run(tx: Tx) -> CallRecord:
            call_id = await tx.insert(
                f"INSERT INTO lab_calls ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                [values[c] for c in cols])
            row = await tx.fetchone(f"SELECT {', '.join(_CALL_COLUMNS)} FROM lab_calls WHERE call_id = ?",
                                    (call_id,))
            assert row is not None
            return _call(row)

        return await self.db.run_transaction(run)

    async def call(self, call_id: int) -> CallRecord | None:
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            f"SELECT {', '.join(_CALL_COLUMNS)} FROM lab_calls WHERE call_id = ?", (call_id,)), readonly=True)
        return _call(row) if row else None

    async def update_call(self, call_id: int, **values: Any) -> None:
        if "call_state" in values:
            values["call_state"] = values["call_state"].value
        if "recording" in values:
            values["recording"] = int(values["recording"])
        sets = ", ".join(f"{k} = ?" for k in values)
        await self.db.run_transaction(lambda tx: tx.execute(
            f"UPDATE lab_calls SET {sets} WHERE call_id = ?", [*values.values(), call_id]))

    async def live_calls(self, user_id: int) -> list[CallRecord]:
        rows = await self.db.run_transaction(lambda tx: tx.fetchall(
            f"SELECT {', '.join(_CALL_COLUMNS)} FROM lab_calls WHERE user_id = ? AND call_state <> ? "
            "ORDER BY call_id", (user_id, CallState.ENDED.value)), readonly=True)
        return [_call(r) for r in rows]

    async def reset_sessions(self, now: float) -> tuple[int, int]:
        """After a (re)start: nobody is logged in and no call is live (the telephony starts empty).

        Returns (agents logged out, calls ended).
        """

        async def run(tx: Tx) -> tuple[int, int]:
            agents = await tx.execute(
                "UPDATE lab_users SET status = ?, campaign_id = NULL, extension = NULL WHERE status <> ?",
                (AgentStatus.LOGGED_OUT.value, AgentStatus.LOGGED_OUT.value))
            calls = await tx.execute(
                "UPDATE lab_calls SET call_state = ?, end_time = ?, hold_since = NULL, recording = 0 "
                "WHERE call_state <> ?", (CallState.ENDED.value, now, CallState.ENDED.value))
            return agents, calls

        return await self.db.run_transaction(run)

    # settings ---------------------------------------------------------------------
    async def setting(self, name: str) -> str | None:
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT value FROM lab_settings WHERE name = ?", (name,)), readonly=True)
        return None if row is None else str(row[0])

    async def set_setting(self, name: str, value: str) -> None:
        sql = self.db.dialect.upsert("lab_settings", ["name"], ["value"])
        await self.db.run_transaction(lambda tx: tx.execute(sql, (name, value)))
