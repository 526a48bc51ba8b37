"""Keep CPython's full garbage collections off a growing process's event loop.

A process that builds hundreds of long-lived sessions (a load worker ramping up its agents,
the lab answering them) grows its heap by a quarter again and again, and each time CPython
runs a full collection: one pass over every tracked object, with the event loop stopped.
With 75 agents' peer connections, SIP stacks and HTTP sessions that pass walks ~100k objects
and took 30-130 ms on this project's 2-core test machine, the largest event-loop stalls of a
load run.  :class:`GcFreezer` moves what has survived the young collections into the
permanent generation once a second while the process grows (``gc.freeze``, a list splice),
so full collections only ever walk what is newer; :class:`GcPauseMeter` measures the pauses
that remain, for the run's resource figures.

The price, stated: the collector never looks at frozen objects again, so a reference cycle
among them that becomes garbage later (a call set up during the ramp and ended after it) is
not freed until the process ends.  That is why the freezer runs only while a process grows
toward a steady state (a load run's ramp, whose sessions last the run) and not in a
long-running server where calls come and go (``softphone lab`` on its own); the leak is
bounded by what was alive during the ramp, and PSS per agent in the results would show it.
A young collection runs before each freeze, so cycles that are already garbage are freed.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable

from softphone.log import get_logger

log = get_logger(__name__)

__all__ = ["GcFreezer", "GcPauseMeter", "freeze_survivors"]


def freeze_survivors() -> float:
    """Collect the young generations, then freeze everything still alive.

    Returns the seconds it took (the young collection; the freeze itself is constant time).
    """
    started = time.perf_counter()
    gc.collect(1)
    gc.freeze()
    return time.perf_counter() - started


class GcFreezer:
    """Freezes the survivors every ``interval`` seconds while ``growing()`` says so, then once more.

    Use as a task beside the work: ``asyncio.create_task(GcFreezer(lambda: ramping).run())``.
    """

    def __init__(self, growing: Callable[[], bool], interval: float = 1.0) -> None:
        self.growing = growing
        self.interval = interval
        self.freezes = 0
        self.worst_seconds = 0.0

    def freeze_now(self) -> None:
        seconds = freeze_survivors()
        self.freezes += 1
        self.worst_seconds = max(self.worst_seconds, seconds)

    async def run(self) -> None:
        self.freeze_now()
        while self.growing():
            await asyncio.sleep(self.interval)
            self.freeze_now()
        self.freeze_now()
        log.debug("froze survivors %d times (worst %.1f ms); %d objects frozen",
                  self.freezes, self.worst_seconds * 1000.0, gc.get_freeze_count())


class GcPauseMeter:
    """The cyclic collector's pauses, through ``gc.callbacks``: worst and total per window.

    ``take()`` returns the window's (worst pause s, total s, full collections) and starts a new
    window.  ``close()`` removes the callback (a meter must not outlive its process's run).
    """

    def __init__(self) -> None:
        self._started: float | None = None
        self.worst = 0.0
        self.total = 0.0
        self.full_collections = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:
            return
        pause = time.perf_counter() - self._started
        self._started = None
        self.worst = max(self.worst, pause)
        self.total += pause
        if info.get("generation") == 2:
            self.full_collections += 1

    def take(self) -> tuple[float, float, int]:
        window = (self.worst, self.total, self.full_collections)
        self.worst, self.total, self.full_collections = 0.0, 0.0, 0
        return window

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
