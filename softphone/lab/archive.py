"""VICIdial's lead archive API, as the platform contract describes it.

``POST /vicidial/leads/archive`` copies leads into ``vicidial_list_archive``
and safely deletes them from ``vicidial_list``; ``/dearchive`` is the mirror.
This module is the semantics only (validation, the three steps, counts); the
HTTP layer (system key, office hours, JSON) is in :mod:`softphone.lab.app`.

Validation, in this order, first failure wins (messages are the contract's):

1. each flag must be a JSON boolean (missing counts as not boolean):
   ``insert_leads``, ``update_leads``, ``delete_leads`` (dearchive: no update);
2. ``lead_ids`` values must be integers (``"0"``, ``1.0`` and ``true`` are
   not); every offending value is listed.  A non-list value is listed alone;
3. at least 1 id (missing or ``null`` counts as empty); 4. at most 500;
5. no duplicates (each duplicated value listed once);
6. every id must exist in ``vicidial_list`` (dearchive: in the archive),
   checked inside the transaction under lock, so concurrent requests see
   each other's results; missing ids are listed.

Then, in ONE transaction, insert -> update -> delete:

* ``select_count``: ids found (all of them, once validation passed);
* ``insert_count``: rows copied that were not in the target table before;
* ``update_count``: archived rows of the given ids that this request did not
  insert, refreshed from ``vicidial_list``; they count whether or not a value
  actually changed (the refresh happened; the API cannot tell "unchanged");
* ``delete_count``: rows deleted because their copy matches in EVERY column
  (NULL-safe), so a lead is never deleted without an exact archive copy.

Dearchive has no update step and answers ``select_count``, ``insert_count``,
``delete_count``.  A fault between steps (``fault_hook``) rolls everything
back, leaving both tables as they were.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from softphone.errors import LeadRequestError
from softphone.lab.db import Database, Tx, placeholders
from softphone.lab.schema import LEAD_COLUMN_NAMES, lead_column_list, quoted
from softphone.log import get_logger

log = get_logger(__name__)

MAX_LEAD_IDS = 500
#: lead_id is INT(9) UNSIGNED in VICIdial
MAX_LEAD_ID = 4294967295
SUCCESS_MESSAGE = "lead_ids batch was successfully processed"
LIST = "vicidial_list"
ARCHIVE = "vicidial_list_archive"

FaultHook = Callable[[str], Awaitable[None] | None]


class Direction(enum.Enum):
    """Which way leads move: into the archive, or back out of it."""

    ARCHIVE = "archive"
    DEARCHIVE = "dearchive"

    @property
    def flags(self) -> tuple[str, ...]:
        if self is Direction.ARCHIVE:
            return ("insert_leads", "update_leads", "delete_leads")
        return ("insert_leads", "delete_leads")

    @property
    def source(self) -> str:
        return LIST if self is Direction.ARCHIVE else ARCHIVE

    @property
    def target(self) -> str:
        return ARCHIVE if self is Direction.ARCHIVE else LIST


@dataclass
class ArchiveResult:
    """The counts of one processed batch."""

    direction: Direction
    select_count: int = 0
    insert_count: int = 0
    update_count: int = 0
    delete_count: int = 0
    lead_ids: list[int] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": SUCCESS_MESSAGE, "select_count": self.select_count,
                               "insert_count": self.insert_count}
        if self.direction is Direction.ARCHIVE:
            out["update_count"] = self.update_count
        out["delete_count"] = self.delete_count
        return out


@dataclass(frozen=True)
class LeadRequest:
    """A validated request body."""

    flags: Mapping[str, bool]
    lead_ids: tuple[int, ...]

    def flag(self, name: str) -> bool:
        return bool(self.flags.get(name, False))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_request(body: Any, direction: Direction) -> LeadRequest:
    """Steps 1-5 of the validation (existence is checked in the transaction)."""
    if not isinstance(body, Mapping):
        body = {}
    flags: dict[str, bool] = {}
    for name in direction.flags:
        value = body.get(name)
        if not isinstance(value, bool):
            raise LeadRequestError(f"{name} must be a boolean value")
        flags[name] = value
    raw = body.get("lead_ids")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise LeadRequestError("lead_ids must only contain integer values", [raw])
    bad = [v for v in raw if not _is_int(v)]
    if bad:
        raise LeadRequestError("lead_ids must only contain integer values", bad)
    if not raw:
        raise LeadRequestError("lead_ids must contain atleast 1 value")
    if len(raw) > MAX_LEAD_IDS:
        raise LeadRequestError(f"lead_ids cannot exceed {MAX_LEAD_IDS} values")
    seen: set[int] = set()
    dups: list[int] = []
    for v in raw:
        if v in seen and v not in dups:
            dups.append(v)
        seen.add(v)
    if dups:
        raise LeadRequestError("lead_ids cannot contain duplicate values", dups)
    return LeadRequest(flags=flags, lead_ids=tuple(raw))


def _all_columns_match(tx: Tx, left: str, right: str) -> str:
    return " AND ".join(tx.dialect.same(f"{left}.{quoted(c)}", f"{right}.{quoted(c)}")
                        for c in LEAD_COLUMN_NAMES)


class LeadArchive:
    """Runs archive and dearchive requests against a :class:`Database`."""

    def __init__(self, db: Database, fault_hook: FaultHook | None = None):
        self.db = db
        self.fault_hook = fault_hook

    async def _step(self, name: str) -> None:
        if self.fault_hook is not None:
            result = self.fault_hook(name)
            if inspect.isawaitable(result):
                await result

    async def process(self, body: Any, direction: Direction) -> ArchiveResult:
        """Validate ``body`` and run it; raises :class:`LeadRequestError` for a 400."""
        request = validate_request(body, direction)
        result = await self.db.run_transaction(lambda tx: self._run(tx, request, direction))
        log.info("%s of %d lead(s): select %d insert %d update %d delete %d", direction.value,
                 len(request.lead_ids), result.select_count, result.insert_count, result.update_count,
                 result.delete_count)
        return result

    async def archive(self, body: Any) -> ArchiveResult:
        return await self.process(body, Direction.ARCHIVE)

    async def dearchive(self, body: Any) -> ArchiveResult:
        return await self.process(body, Direction.DEARCHIVE)

    async def _locked_ids(self, tx: Tx, table: str, ids: tuple[int, ...]) -> set[int]:
        # ids outside lead_id's column range cannot exist (and would overflow the driver)
        ids = tuple(i for i in ids if 0 <= i <= MAX_LEAD_ID)
        if not ids:
            return set()
        rows = await tx.fetchall(
            f"SELECT lead_id FROM {table} WHERE lead_id IN ({placeholders(len(ids))}) ORDER BY lead_id"
            + tx.dialect.for_update, ids)
        return {int(r[0]) for r in rows}

    async def _run(self, tx: Tx, request: LeadRequest, direction: Direction) -> ArchiveResult:
        ids = request.lead_ids
        ph = placeholders(len(ids))
        # Lock order is always list then archive, for both directions (no deadlock cycles).
        in_list = await self._locked_ids(tx, LIST, ids)
        in_archive = await self._locked_ids(tx, ARCHIVE, ids)
        found = in_list if direction is Direction.ARCHIVE else in_archive
        missing = [i for i in ids if i not in found]
        if missing:
            raise LeadRequestError("lead_ids does not exist", missing)
        result = ArchiveResult(direction=direction, select_count=len(found), lead_ids=list(ids))
        ids = tuple(i for i in ids if i in found)  # all of them; now known to fit the column
        ph = placeholders(len(ids))
        src, dst = direction.source, direction.target
        cols = lead_column_list()
        await self._step("selected")

        if request.flag("insert_leads"):
            result.insert_count = await tx.execute(
                f"INSERT INTO {dst} ({cols}) SELECT {lead_column_list('s.')} FROM {src} s "
                f"WHERE s.lead_id IN ({ph}) AND NOT EXISTS "
                f"(SELECT 1 FROM {dst} d WHERE d.lead_id = s.lead_id)", ids)
        await self._step("inserted")

        if direction is Direction.ARCHIVE and request.flag("update_leads"):
            # rows archived before this request (so not inserted by it) that are still in the list
            refresh = sorted(in_archive & in_list)
            if refresh:
                rph = placeholders(len(refresh))
                await tx.execute(f"DELETE FROM {ARCHIVE} WHERE lead_id IN ({rph})", refresh)
                await tx.execute(
                    f"INSERT INTO {ARCHIVE} ({cols}) SELECT {cols} FROM {LIST} WHERE lead_id IN ({rph})",
                    refresh)
            result.update_count = len(refresh)
        await self._step("updated")

        if request.flag("delete_leads"):
            result.delete_count = await tx.execute(
                f"DELETE FROM {src} WHERE lead_id IN ({ph}) AND EXISTS "
                f"(SELECT 1 FROM {dst} d WHERE d.lead_id = {src}.lead_id AND "
                f"{_all_columns_match(tx, 'd', src)})", ids)
        await self._step("deleted")
        return result
