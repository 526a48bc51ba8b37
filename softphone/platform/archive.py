"""Archive or dearchive any number of leads, 500 at a time, losing nothing.

The lead archive API takes at most 500 ids per request and refuses
duplicates, so a job reads ids from text (commas, whitespace, newlines),
rejects anything that is not a positive integer before sending (naming the
token and where it was), removes duplicates, splits into batches and sends
them in order.  Each batch's outcome is recorded for the report.

A failed batch does not stop the job when the failure concerns that batch
(400 bad ids, 404, a 5xx); it stops the job when every later batch would fail
the same way (401 credentials, 403 office hours, connection lost, timeout).
Archive is refused during office hours (403): the job then stops, or with
``wait_office_hours`` re-sends the batch every ``poll_interval`` until the
server accepts it or ``max_wait`` seconds of waiting (in total, over the whole
job) have passed.  A stop request (Ctrl-C) ends
the job after the batch in flight.

Nothing is lost, and a rerun finishes:

* a batch whose request may have reached the server before the connection
  was lost (or that got no answer in time) is UNCONFIRMED, not FAILED: the
  server may have committed it.  Its ids go to ``remaining_ids`` all the same;
* the rerun of such ids meets ``lead_ids does not exist`` for those an earlier
  run archived and deleted.  The job then asks the server whether the target
  table holds them, with a request that changes nothing (dearchive, or for a
  dearchive job archive, with every step off: it only validates that the ids
  exist there).  Ids the target table holds are done (``done_ids``); the
  batch is re-sent without them.  An id is never counted done on any other
  evidence; ids in neither table fail the batch (or, with ``skip_missing``,
  are listed as missing).
"""

from __future__ import annotations

import asyncio
import enum
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from softphone.errors import (
    OfficeHoursError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformError,
    PlatformTimeoutError,
    PlatformValidationError,
)
from softphone.log import get_logger
from softphone.platform.client import MAX_ARCHIVE_IDS, PlatformClient
from softphone.platform.models import ArchiveResult

log = get_logger(__name__)

_TOKEN_RE = re.compile(r"[^\s,]+")
_INT_RE = re.compile(r"^[0-9]+$")
COUNT_KEYS = ("select_count", "insert_count", "update_count", "delete_count")
#: The 400 message of ids absent from the source table (vicidial_list, or the archive for dearchive).
MISSING_MESSAGE = "lead_ids does not exist"


class Operation(enum.Enum):
    ARCHIVE = "archive"
    DEARCHIVE = "dearchive"


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_OFFICE_HOURS = "waiting-office-hours"
    DONE = "done"  # every batch sent (some may have failed)
    STOPPED = "stopped"  # a failure that dooms the rest, or max-wait reached
    INTERRUPTED = "interrupted"  # the user asked to stop


class BatchStatus(enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # not sent: the job stopped before it
    UNCONFIRMED = "unconfirmed"  # cancelled in flight: the server may or may not have run it
    DRY_RUN = "dry-run"


# --- reading ids ------------------------------------------------------------------


def parse_ids(text: str, source: str = "input") -> list[int]:
    """Every id in ``text`` in order; a bad token raises naming line, position and value."""
    ids: list[int] = []
    position = 0
    for line_no, line in enumerate(text.splitlines(), start=1):
        for match in _TOKEN_RE.finditer(line):
            position += 1
            token = match.group(0)
            if not _INT_RE.match(token) or int(token) <= 0:
                raise PlatformValidationError(
                    f"{source}: line {line_no}, column {match.start() + 1} (id #{position}): "
                    f"{token!r} is not a lead id (a positive integer)",
                    status=None, ids=[token])
            ids.append(int(token))
    return ids


def dedupe(ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(unique ids in first-seen order, the ids that appeared more than once)."""
    seen: set[int] = set()
    unique: list[int] = []
    dupes: dict[int, None] = {}
    for i in ids:
        if i in seen:
            dupes[i] = None
        else:
            seen.add(i)
            unique.append(i)
    return unique, list(dupes)


def split_batches(ids: Sequence[int], size: int = MAX_ARCHIVE_IDS) -> list[list[int]]:
    if not 1 <= size <= MAX_ARCHIVE_IDS:
        raise PlatformValidationError(f"batch_size: must be 1..{MAX_ARCHIVE_IDS}, got {size}", status=None)
    return [list(ids[i:i + size]) for i in range(0, len(ids), size)]


# --- the job ------------------------------------------------------------------------


@dataclass
class BatchOutcome:
    index: int  # 1-based
    ids: list[int] = field(repr=False)
    status: BatchStatus = BatchStatus.SKIPPED
    result: ArchiveResult | None = None
    message: str = ""
    http_status: int | None = None
    offending_ids: list[Any] = field(default_factory=list)
    office_hours_waits: int = 0
    missing_ids: list[int] = field(default_factory=list)  # dropped with skip_missing
    #: ids an earlier run already processed: gone from the source, confirmed in the target table
    done_ids: list[int] = field(default_factory=list)

    @property
    def sendable(self) -> list[int]:
        """The ids still to send: all of them minus those missing or confirmed already done."""
        if not self.missing_ids and not self.done_ids:
            return self.ids
        gone = set(self.missing_ids) | set(self.done_ids)
        return [i for i in self.ids if i not in gone]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batch": self.index,
            "first_id": self.ids[0] if self.ids else None,
            "last_id": self.ids[-1] if self.ids else None,
            "min_id": min(self.ids) if self.ids else None,
            "max_id": max(self.ids) if self.ids else None,
            "count": len(self.ids),
            "status": self.status.value,
            "message": self.message,
            "http_status": self.http_status,
        }
        out.update({k: getattr(self.result, k) if self.result else 0 for k in COUNT_KEYS})
        if self.result is not None and self.result.attempts > 1:
            out["attempts"] = self.result.attempts
        if self.offending_ids:
            out["offending_ids"] = self.offending_ids
        if self.office_hours_waits:
            out["office_hours_waits"] = self.office_hours_waits
        if self.missing_ids:
            out["missing_ids"] = self.missing_ids
        if self.done_ids:
            out["already_done_ids"] = self.done_ids
        return out


@dataclass
class ArchiveReport:
    operation: Operation
    flags: dict[str, bool]
    batches: list[BatchOutcome]
    duplicates: list[int] = field(default_factory=list)
    state: JobState = JobState.PENDING
    stop_reason: str = ""
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    finished: datetime | None = None

    @property
    def totals(self) -> dict[str, int]:
        totals = {k: sum(getattr(b.result, k) for b in self.batches if b.result) for k in COUNT_KEYS}
        totals["ids"] = sum(len(b.ids) for b in self.batches)
        totals["missing"] = sum(len(b.missing_ids) for b in self.batches)
        totals["already_done"] = sum(len(b.done_ids) for b in self.batches)
        for status in BatchStatus:
            totals[f"batches_{status.value.replace('-', '_')}"] = sum(
                1 for b in self.batches if b.status is status)
        return totals

    @property
    def ok(self) -> bool:
        """True when every batch was processed (or listed, in a dry run)."""
        return all(b.status in (BatchStatus.OK, BatchStatus.DRY_RUN) for b in self.batches)

    def remaining_ids(self) -> list[int]:
        """Ids not confirmed processed (failed, skipped or unconfirmed batches), in order."""
        return [i for b in self.batches if b.status not in (BatchStatus.OK, BatchStatus.DRY_RUN)
                for i in b.sendable]

    def as_dict(self) -> dict[str, Any]:
        return {
            "operation": self.operation.value,
            "flags": self.flags,
            "state": self.state.value,
            "ok": self.ok,
            "stop_reason": self.stop_reason,
            "started": self.started.isoformat(),
            "finished": self.finished.isoformat() if self.finished else None,
            "duplicates_removed": self.duplicates,
            "totals": self.totals,
            "batches": [b.as_dict() for b in self.batches],
        }

    def write(self, path: str | Path) -> None:
        """Write the JSON report atomically (a temp file renamed), so a crash leaves no half file."""
        p = Path(path)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(p)


# Failures after which every later batch would fail the same way.
_FATAL = (PlatformAuthError, PlatformConnectionError, PlatformTimeoutError)


class ArchiveJob:
    """Sends the batches of one archive/dearchive run; :attr:`state` says where it is."""

    def __init__(
        self,
        client: PlatformClient | None,
        operation: Operation,
        ids: Sequence[int],
        *,
        insert: bool = True,
        update: bool = True,
        delete: bool = True,
        batch_size: int = MAX_ARCHIVE_IDS,
        wait_office_hours: bool = False,
        skip_missing: bool = False,
        poll_interval: float = 60.0,
        max_wait: float | None = None,
        on_batch: Callable[[BatchOutcome], None] | None = None,
        on_wait: Callable[[BatchOutcome, float], None] | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        unique, dupes = dedupe(ids)
        if dupes:
            log.info("%d duplicate lead id(s) removed (first: %s)", len(dupes),
                        ", ".join(map(str, dupes[:10])))
        if not unique:
            raise PlatformValidationError("lead_ids must contain atleast 1 value", status=None)
        if poll_interval <= 0:
            raise PlatformValidationError(f"poll_interval: must be > 0, got {poll_interval}", status=None)
        self.client = client
        self.operation = operation
        self.flags = {"insert_leads": insert, "delete_leads": delete}
        if operation is Operation.ARCHIVE:
            self.flags = {"insert_leads": insert, "update_leads": update, "delete_leads": delete}
        self.wait_office_hours = wait_office_hours
        self.skip_missing = skip_missing
        self.poll_interval = poll_interval
        self.max_wait = max_wait
        self.waited = 0.0  # seconds spent waiting for office hours to end, whole job
        self.on_batch = on_batch
        self.on_wait = on_wait
        self._sleep = sleep
        self._clock = clock
        self._stop = asyncio.Event()
        self.report = ArchiveReport(operation, dict(self.flags),
                                    [BatchOutcome(i + 1, b) for i, b in enumerate(split_batches(unique, batch_size))],
                                    duplicates=dupes)

    @property
    def state(self) -> JobState:
        return self.report.state

    def _move(self, state: JobState, reason: str = "") -> None:
        log.debug("%s job: %s -> %s %s", self.operation.value, self.report.state.value, state.value, reason)
        self.report.state = state
        if reason:
            self.report.stop_reason = reason

    def request_stop(self) -> None:
        """Stop after the batch in flight (Ctrl-C)."""
        self._stop.set()

    def dry_run(self) -> ArchiveReport:
        for b in self.report.batches:
            b.status = BatchStatus.DRY_RUN
            b.message = "not sent (dry run)"
            if self.on_batch:
                self.on_batch(b)
        self._move(JobState.DONE)
        self.report.finished = datetime.now(timezone.utc)
        return self.report

    async def run(self) -> ArchiveReport:
        if self.client is None:
            raise PlatformError("archive job: no client to send with")
        self._move(JobState.RUNNING)
        try:
            for batch in self.report.batches:
                if self._stop.is_set():
                    self._move(JobState.INTERRUPTED, "stopped on request before batch "
                                                     f"{batch.index} of {len(self.report.batches)}")
                    break
                try:
                    fatal = await self._send(batch)
                except asyncio.CancelledError:
                    batch.status = BatchStatus.UNCONFIRMED
                    batch.message = ("cancelled while in flight: the server may have processed it; "
                                     "archive is idempotent, so re-running these ids is safe")
                    raise
                if self.on_batch:
                    self.on_batch(batch)
                if fatal:
                    self._move(JobState.INTERRUPTED if self._stop.is_set() else JobState.STOPPED, fatal)
                    break
            else:
                self._move(JobState.DONE)
        except asyncio.CancelledError:
            self._move(JobState.INTERRUPTED, "cancelled")
            raise
        finally:
            self.report.finished = datetime.now(timezone.utc)
        return self.report

    async def _send(self, batch: BatchOutcome) -> str:
        """Send one batch, recording its outcome; a non-empty return stops the job."""
        assert self.client is not None
        while True:
            try:
                if self.operation is Operation.ARCHIVE:
                    result = await self.client.archive_leads(batch.sendable, **self.flags)
                else:
                    result = await self.client.dearchive_leads(batch.sendable, **self.flags)
            except OfficeHoursError as exc:
                batch.http_status, batch.message = exc.status, exc.message
                if not self.wait_office_hours:
                    batch.status = BatchStatus.FAILED
                    return ("refused during office hours (403); run outside office hours or pass "
                            "--wait-outside-office-hours")
                if self.max_wait is not None and self.waited >= self.max_wait:
                    batch.status = BatchStatus.FAILED
                    return f"still office hours after waiting {self.waited:.0f}s (max-wait {self.max_wait:g}s)"
                if self._stop.is_set():
                    batch.status = BatchStatus.SKIPPED
                    return "stopped on request while waiting for office hours to end"
                batch.office_hours_waits += 1
                self._move(JobState.WAITING_OFFICE_HOURS)
                if self.on_wait:
                    self.on_wait(batch, self.poll_interval)
                started = self._clock()
                await self._wait(self.poll_interval)
                self.waited += self._clock() - started
                continue
            except PlatformValidationError as exc:
                resend, offending = await self._set_aside_missing(batch, exc)
                if resend:
                    if not batch.sendable:
                        batch.status, batch.http_status = BatchStatus.OK, exc.status
                        batch.message = self._nothing_left_message(batch)
                        return ""
                    continue
                batch.status, batch.http_status, batch.message = BatchStatus.FAILED, exc.status, exc.message
                batch.offending_ids = list(exc.ids) if offending is None else offending
                return ""
            except _FATAL as exc:
                batch.http_status, batch.message = exc.status, exc.message
                if exc.maybe_processed:
                    batch.status = BatchStatus.UNCONFIRMED
                    batch.message = (f"outcome unknown ({exc.message}): the server may have processed it; "
                                     "rerunning these ids is safe")
                else:
                    batch.status = BatchStatus.FAILED
                return f"{type(exc).__name__}: {exc.message}"
            except PlatformError as exc:
                batch.status, batch.http_status, batch.message = BatchStatus.FAILED, exc.status, exc.message
                return ""
            if self.report.state is JobState.WAITING_OFFICE_HOURS:
                self._move(JobState.RUNNING)
            batch.status, batch.result, batch.message, batch.http_status = (
                BatchStatus.OK, result, result.message, 200)
            return ""

    async def _set_aside_missing(self, batch: BatchOutcome,
                                 exc: PlatformValidationError) -> tuple[bool, list[Any] | None]:
        """On ``lead_ids does not exist``: (re-send?, the ids truly missing, for the failure).

        Ids the target table holds were processed by an earlier run (the expected
        outcome of a rerun): they are done.  The others are in neither table: with
        ``skip_missing`` they are set aside, else the batch fails naming them.
        """
        if not exc.message.endswith(MISSING_MESSAGE):
            return False, None
        pending = set(batch.sendable)
        named = [i for i in exc.ids if isinstance(i, int) and not isinstance(i, bool) and i in pending]
        if not named:
            return False, None  # nothing we can set aside: re-sending would loop
        done = await self._confirmed_in_target(named)
        if done:
            log.info("batch %d: %d id(s) already %sd (confirmed in the target table)", batch.index,
                     len(done), self.operation.value)
            batch.done_ids.extend(done)
        confirmed = set(done)
        rest = [i for i in named if i not in confirmed]
        if rest and not self.skip_missing:
            return False, rest
        if rest:
            log.info("batch %d: %d id(s) do not exist, re-sending without them", batch.index, len(rest))
            batch.missing_ids.extend(rest)
        return True, None

    async def _confirmed_in_target(self, ids: list[int]) -> list[int]:
        """Those of ``ids`` the target table holds, asked with a request that changes nothing.

        Archive's target is the archive: dearchive with insert and delete off only
        checks that the ids exist there (and lists those that do not).  A dearchive
        job asks archive with every step off.  Any other answer confirms nothing.
        """
        assert self.client is not None
        try:
            if self.operation is Operation.ARCHIVE:
                result = await self.client.dearchive_leads(ids, insert_leads=False, delete_leads=False)
            else:
                result = await self.client.archive_leads(ids, insert_leads=False, update_leads=False,
                                                         delete_leads=False)
        except PlatformValidationError as exc:
            if not exc.message.endswith(MISSING_MESSAGE):
                return []
            absent = {i for i in exc.ids if isinstance(i, int) and not isinstance(i, bool)}
            if not absent & set(ids):
                return []  # an answer about other ids confirms nothing
            return [i for i in ids if i not in absent]
        except PlatformError as exc:
            log.info("cannot check which ids are already %sd: %s", self.operation.value, exc.message)
            return []
        if result.select_count != len(ids) or result.insert_count or result.delete_count:
            return []
        return list(ids)

    def _nothing_left_message(self, batch: BatchOutcome) -> str:
        if not batch.missing_ids:
            return f"every id was already {self.operation.value}d (confirmed in the target table): nothing to do"
        if not batch.done_ids:
            return "every id is missing from the source table: nothing to do"
        return (f"{len(batch.done_ids)} id(s) already {self.operation.value}d, {len(batch.missing_ids)} "
                "missing: nothing to do")

    async def _wait(self, seconds: float) -> None:
        """Sleep, but wake early on a stop request."""
        stop = asyncio.ensure_future(self._stop.wait())
        nap = asyncio.ensure_future(self._sleep(seconds))
        try:
            await asyncio.wait({stop, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stop, nap):
                t.cancel()
