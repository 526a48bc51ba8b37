"""Live progress of a load run on the terminal: agents, calls, failures by cause, workers.

On a terminal, a `rich <https://github.com/Textualize/rich>`_ live panel (a progress bar
for the run's time, a table of the counts and rates, one row per worker with its CPU,
memory and event-loop lag) redrawn twice a second.  When the output is not a terminal
(CI logs, a pipe), one plain line every ``interval`` seconds, so logs stay greppable.
``quiet`` prints nothing (the final summary is the caller's).

rich is the natural choice: well kept, already common in Python tooling, and it
degrades by itself (it knows when it is not talking to a terminal).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from softphone.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class WorkerStatus:
    worker: int
    agents: int = 0
    cpu_percent: float = 0.0   # of one core
    memory_mb: float = 0.0     # PSS when known, else RSS
    loop_lag_ms: float = 0.0   # worst in the last interval


@dataclass(frozen=True)
class RunStatus:
    """One moment of the run, as the runner sees it (all counts are current or cumulative)."""

    elapsed: float
    duration: float
    target_agents: int
    active: int = 0
    registered: int = 0
    in_call: int = 0
    calls: int = 0                 # cumulative calls started
    failures: dict[str, int] = field(default_factory=dict)  # cumulative, by cause
    workers: tuple[WorkerStatus, ...] = ()
    stopping: bool = False

    @property
    def failures_total(self) -> int:
        return sum(self.failures.values())


class LiveProgress:
    """Shows :class:`RunStatus` updates; use as a context manager around the run."""

    def __init__(self, *, quiet: bool = False, file: IO[str] | None = None, interval: float = 5.0,
                 force_terminal: bool | None = None, title: str = "softphone load") -> None:
        self.quiet = quiet
        self.interval = interval
        self.title = title
        self.console = Console(file=file or sys.stderr, force_terminal=force_terminal, highlight=False)
        self.mode = "quiet" if quiet else "live" if self.console.is_terminal else "plain"
        self._live: Live | None = None
        self._bar: Progress | None = None
        self._task: Any = None
        self._last: RunStatus | None = None
        self._last_time: float | None = None
        self._rates = (0.0, 0.0)
        self._last_line = -1e9
        self._last_printed = False

    def __enter__(self) -> LiveProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self.mode != "live":
            return
        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(),
                             TextColumn("of {task.total:.0f}s"), console=self.console)
        self._task = self._bar.add_task(self.title, total=1.0)
        self._live = Live(self._render(None), console=self.console, refresh_per_second=2, transient=False)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            if self._last is not None:
                self._live.update(self._render(self._last))
            self._live.stop()
            self._live = None
        elif self.mode == "plain" and self._last is not None and not self._last_printed:
            self.console.print(self.line(self._last), soft_wrap=True, markup=False)

    def update(self, status: RunStatus, now: float | None = None) -> None:
        """Record a new status; redraws (live) or prints a line every ``interval`` (plain)."""
        now = time.monotonic() if now is None else now
        if self._last is not None and self._last_time is not None and now > self._last_time:
            dt = now - self._last_time
            self._rates = ((status.calls - self._last.calls) / dt,
                           (status.failures_total - self._last.failures_total) / dt)
        self._last, self._last_time = status, now
        if self.mode == "live" and self._live is not None:
            assert self._bar is not None
            self._bar.update(self._task, total=max(status.duration, 1e-9), completed=min(status.elapsed, status.duration),
                             description=self.title + (" (stopping)" if status.stopping else ""))
            self._live.update(self._render(status))
        elif self.mode == "plain" and now - self._last_line >= self.interval:
            self._last_line = now
            self.console.print(self.line(status), soft_wrap=True, markup=False)
            self._last_printed = True
            return
        self._last_printed = False

    @property
    def rates(self) -> tuple[float, float]:
        """(calls per second, failures per second) between the last two updates."""
        return self._rates

    def line(self, s: RunStatus) -> str:
        """The plain one-line form."""
        causes = ", ".join(f"{c}: {n}" for c, n in sorted(s.failures.items(), key=lambda kv: -kv[1]))
        workers = " ".join(f"w{w.worker}[{w.agents}a {w.cpu_percent:.0f}% {w.memory_mb:.0f}MB lag {w.loop_lag_ms:.0f}ms]"
                           for w in s.workers)
        calls_rate, fail_rate = self._rates
        return (f"t={s.elapsed:.0f}/{s.duration:.0f}s agents {s.active}/{s.target_agents} registered {s.registered} "
                f"in call {s.in_call} calls {s.calls} ({calls_rate:.1f}/s) failures {s.failures_total} "
                f"({fail_rate:.1f}/s){' [' + causes + ']' if causes else ''}"
                f"{' ' + workers if workers else ''}{' STOPPING' if s.stopping else ''}")

    def _render(self, s: RunStatus | None) -> Group:
        counts = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("agents", "registered", "in call", "calls", "calls/s", "failures", "failures/s"):
            counts.add_column(col, justify="right")
        if s is not None:
            calls_rate, fail_rate = self._rates
            counts.add_row(f"{s.active}/{s.target_agents}", str(s.registered), str(s.in_call), str(s.calls),
                           f"{calls_rate:.1f}", f"[red]{s.failures_total}[/]" if s.failures_total else "0",
                           f"{fail_rate:.1f}")
        parts: list[Any] = [self._bar] if self._bar is not None else []
        parts.append(counts)
        if s is not None and s.failures:
            causes = Table(show_header=True, header_style="bold red", box=None, pad_edge=False)
            causes.add_column("failure cause")
            causes.add_column("count", justify="right")
            for cause, n in sorted(s.failures.items(), key=lambda kv: -kv[1]):
                causes.add_row(cause, str(n))
            parts.append(causes)
        if s is not None and s.workers:
            workers = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
            for col in ("worker", "agents", "CPU %", "memory MB", "loop lag ms"):
                workers.add_column(col, justify="right")
            for w in s.workers:
                lag = f"[red]{w.loop_lag_ms:.0f}[/]" if w.loop_lag_ms >= 50 else f"{w.loop_lag_ms:.0f}"
                workers.add_row(str(w.worker), str(w.agents), f"{w.cpu_percent:.0f}", f"{w.memory_mb:.0f}", lag)
            parts.append(workers)
        return Group(*parts)
