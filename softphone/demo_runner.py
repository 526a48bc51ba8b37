"""The bookkeeping of ``softphone demo``: steps with their times, the summary, the HTML report.

The demo runs one agent through the whole Webphone flow; a person reading its
output wants to see each step as it finishes (when, how long, what it found),
and when something breaks, which step and why, in one line.  This module knows
nothing about agents or the lab: :class:`StepRunner` runs awaitables as named
steps (with a timeout each), prints one line per step, keeps
:class:`StepRecord` s and facts for :func:`format_summary`, and stops the run
at the first failure with :class:`DemoFailed` naming the step.
:func:`demo_report_html` puts the steps and the level charts of both audio
directions on one self-contained page.
"""

from __future__ import annotations

import asyncio
import enum
import html
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from softphone.errors import SoftphoneError
from softphone.log import get_logger, redact

log = get_logger(__name__)

T = TypeVar("T")

#: The width of the step-name column: the longest name of the demo's flow fits.
NAME_WIDTH = 22


class DemoFailed(SoftphoneError):
    """A step of the demo failed: ``step`` names it, ``reason`` says why (one line, no secret)."""

    def __init__(self, step: str, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"step {step!r} failed: {reason}")


class StepStatus(enum.Enum):
    OK = "ok"
    FAILED = "FAILED"
    NOT_RUN = "not run"


@dataclass
class StepRecord:
    """One step: when it started and ended (seconds since the run began) and what it found."""

    name: str
    status: StepStatus
    started: float = 0.0
    ended: float = 0.0
    detail: str = ""

    @property
    def elapsed(self) -> float:
        return max(0.0, self.ended - self.started)


def format_step(record: StepRecord) -> str:
    """``  3.21 s  ok      register                  extension 9001 (40 ms)`` for one step."""
    mark = {StepStatus.OK: "ok", StepStatus.FAILED: "FAILED", StepStatus.NOT_RUN: "-"}[record.status]
    when = f"{record.ended:6.2f} s" if record.status is not StepStatus.NOT_RUN else " " * 8
    took = f" ({record.elapsed * 1000:.0f} ms)" if record.status is not StepStatus.NOT_RUN else ""
    return f"{when}  {mark:<6}  {record.name:<{NAME_WIDTH}}  {record.detail}{took}".rstrip()


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, SoftphoneError):
        text = f"{type(exc).__name__}: {text}"
    return redact(text)


@dataclass
class StepRunner:
    """Runs the demo's steps in order, prints each as it ends, stops at the first failure.

    ``echo`` receives each printed line; ``clock`` gives seconds (monotonic);
    ``default_timeout`` bounds a step given no timeout of its own.  ``planned``
    lists the step names in order, so the summary can show what did not run.
    """

    echo: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    default_timeout: float = 10.0
    planned: tuple[str, ...] = ()
    records: list[StepRecord] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    t0: float | None = None

    def now(self) -> float:
        """Seconds since the first step began (0 before)."""
        if self.t0 is None:
            return 0.0
        return self.clock() - self.t0

    def fact(self, key: str, value: Any) -> None:
        """A line for the summary (``key: value``); a later fact of the same key replaces it."""
        self.facts[key] = redact(str(value))

    async def step(self, name: str, action: Callable[[], Awaitable[T]] | Awaitable[T], *,
                   timeout: float | None = None,
                   detail: str | Callable[[T], str] | None = None) -> T:
        """Await ``action`` as the step ``name``; print and record it; its result.

        ``detail`` is the text shown after the name: a string, or a function of the
        result.  Any exception (or the timeout) ends the run: the step is printed as
        FAILED with the reason and :class:`DemoFailed` is raised.
        """
        if self.t0 is None:
            self.t0 = self.clock()
        record = StepRecord(name, StepStatus.FAILED, started=self.now())
        self.records.append(record)
        limit = self.default_timeout if timeout is None else timeout
        awaitable = action() if callable(action) else action
        try:
            result = await asyncio.wait_for(awaitable, limit)
        except TimeoutError as exc:  # ours (wait_for) says nothing; a step's own timeout says why
            record.ended = self.now()
            record.detail = _one_line(exc) if str(exc) else f"no result within {limit:g} s"
            self.echo(format_step(record))
            raise DemoFailed(name, record.detail) from None
        except (asyncio.CancelledError, KeyboardInterrupt):
            record.ended = self.now()
            record.detail = "interrupted"
            self.echo(format_step(record))
            raise
        except Exception as exc:
            record.ended = self.now()
            record.detail = _one_line(exc)
            self.echo(format_step(record))
            log.debug("demo step %s failed", name, exc_info=True)
            raise DemoFailed(name, record.detail) from exc
        record.ended = self.now()
        record.status = StepStatus.OK
        try:
            text = detail(result) if callable(detail) else (detail or "")
        except Exception as exc:  # a detail that cannot be rendered must not fail a good step
            text = f"(detail unavailable: {type(exc).__name__})"
        record.detail = redact(" ".join(str(text).split()))
        self.echo(format_step(record))
        return result

    def not_run(self) -> list[str]:
        """Planned steps that never started (after a failure)."""
        done = {r.name for r in self.records}
        return [name for name in self.planned if name not in done]

    @property
    def failed(self) -> StepRecord | None:
        return next((r for r in self.records if r.status is StepStatus.FAILED), None)

    @property
    def ok(self) -> bool:
        return self.failed is None and not self.not_run() and bool(self.records)


def format_summary(runner: StepRunner, *, title: str = "softphone demo", width: int = 78) -> str:
    """The one-screen summary: the verdict, the facts, and what did not run."""
    total = runner.records[-1].ended if runner.records else 0.0
    failed = runner.failed
    if failed is not None:
        verdict = f"{title}: FAILED at step {failed.name!r} after {total:.1f} s: {failed.detail}"
    elif runner.not_run():
        verdict = f"{title}: INCOMPLETE after {total:.1f} s"
    else:
        verdict = f"{title}: OK, {len(runner.records)} steps in {total:.1f} s"
    rule = "-" * width
    lines = [rule, verdict]
    key_width = max((len(k) for k in runner.facts), default=0)
    for key, value in runner.facts.items():
        lines.append(f"  {key:<{key_width}}  {value}")
    missing = runner.not_run()
    if missing:
        lines.append(f"  not run: {', '.join(missing)}")
    lines.append(rule)
    return "\n".join(lines)


def demo_report_html(runner: StepRunner, meters: Mapping[str, Any],
                     events: Mapping[str, Iterable[tuple[float, str]]] | None = None,
                     title: str = "softphone demo") -> str:
    """A self-contained page: verdict, step table, facts and one level chart per audio direction.

    ``meters`` maps a direction ("agent hears", "customer hears", ...) to a
    :class:`~softphone.media.sinks.LevelMeter` (or its history); ``events`` to
    chart markers (time in the meter's seconds, label).
    """
    from softphone.media.report import level_chart_svg

    events = events or {}
    summary = format_summary(runner, title=title).splitlines()[1]
    rows = []
    for record in runner.records + [StepRecord(n, StepStatus.NOT_RUN) for n in runner.not_run()]:
        status = record.status.value
        css = {"ok": "ok", "FAILED": "failed"}.get(status, "notrun")
        cells = (f"{record.ended:.2f}" if record.status is not StepStatus.NOT_RUN else "",
                 status, record.name, record.detail,
                 f"{record.elapsed * 1000:.0f}" if record.status is not StepStatus.NOT_RUN else "")
        rows.append(f'<tr class="{css}">' + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    facts = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in runner.facts.items())
    charts = "".join(
        f"<section><h2>{html.escape(name)}</h2>"
        f"{level_chart_svg(meter, title=name, events=events.get(name, ()))}</section>"
        for name, meter in meters.items()
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        "tr.ok td:nth-child(2){color:#3d8b3d}tr.failed td{color:#c9302c;font-weight:bold}"
        "tr.notrun td{color:#999}</style>"
        f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"
        "<table><tr><th>time (s)</th><th>status</th><th>step</th><th>detail</th><th>ms</th></tr>"
        + "".join(rows) + "</table>"
        + (f"<table>{facts}</table>" if facts else "")
        + charts + "</body></html>\n"
    )


def write_demo_report(path: str | os.PathLike[str], runner: StepRunner, meters: Mapping[str, Any],
                      events: Mapping[str, Iterable[tuple[float, str]]] | None = None) -> Path:
    """Write :func:`demo_report_html` to ``path``; a :class:`SoftphoneError` naming it if that fails."""
    p = Path(path)
    try:
        p.write_text(demo_report_html(runner, meters, events), encoding="utf-8")
    except OSError as exc:
        raise SoftphoneError(f"{p}: cannot write the demo report ({exc.strerror or exc})") from exc
    log.info("demo report written to %s", p)
    return p
