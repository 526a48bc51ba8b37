"""A load worker process: its share of the agents on one asyncio loop, status and results.

The runner spawns K of them (``multiprocessing`` *spawn*: no loop or socket is
inherited).  Each starts its agents on the ramp (:class:`~softphone.load.agent_run.AgentRun`
each), drives one :class:`~softphone.load.verdict.VerdictTicker` for all their legs,
sends a status (active, registered, in call, failures, CPU seconds, PSS, loop lag)
once a second and, at the end, its :class:`~softphone.load.results.Results` as JSON.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from softphone.gc_freezer import GcFreezer, GcPauseMeter
from softphone.load.agent_run import AgentRun
from softphone.load.credentials import AgentSpec
from softphone.load.results import Leg, Resource, Results
from softphone.load.scenario import Scenario
from softphone.load.verdict import VerdictTicker
from softphone.log import get_logger

log = get_logger(__name__)

STATUS_INTERVAL = 1.0
STOP_GRACE = 30.0  # seconds a worker may take to log everyone out after the stop
SETUP_GRACE = 20.0  # after its last agent's start, a worker counts as growing at most this long


@dataclass(frozen=True)
class WorkerConfig:
    worker: int
    agents: tuple[tuple[AgentSpec, float], ...]  # (spec, start offset in seconds)
    scenario: Scenario
    duration: float
    started_at: float  # time.time() of the run's start (shared clock for all workers)
    campaign_id: int | None = 1
    relay_only: bool = False
    clip_dir: str | None = None
    inject_url: str | None = None  # the lab's POST /lab/inbound, for wait_call {inject: true}
    seed: int = 0
    recording_dir: str | None = None  # where sampled talk steps (talk: {record: F}) are saved


def _pss_bytes() -> int | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Worker:
    """One process's agents, status reporting and results."""

    def __init__(self, cfg: WorkerConfig, out: Any, stop: Any) -> None:
        self.cfg = cfg
        self.out = out
        self.stop_event = stop
        self.results = Results(cfg.scenario.name, started_at=cfg.started_at, agents=len(cfg.agents))
        self.runs = [AgentRun(self, spec) for spec, _ in cfg.agents]
        self.ticker = VerdictTicker()
        self.stopping = False
        self.active = 0
        self.calls = 0
        self.loop_lag_ms = 0.0
        self.gc_pauses: GcPauseMeter | None = None  # the collector's pauses, per status interval (while running)
        self._tasks: set[asyncio.Task] = set()
        self._end_at = cfg.started_at + cfg.duration

    def stopping_at_end(self, leg: Leg) -> bool:
        """A leg cut by the run's own end is not an audio failure (its last seconds are teardown)."""
        return self.stopping and leg.kind == "bridge" and (leg.audio or {}).get("status") == "silent_gaps" \
            and all(g["start"] + g["seconds"] >= (leg.ended or 0) - leg.started - 1.5
                    for g in (leg.audio or {}).get("gaps", []))

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def status(self) -> dict[str, Any]:
        failures = Counter(f.cause for f in self.results.failures)
        return {
            "worker": self.cfg.worker, "at": time.time() - self.cfg.started_at, "active": self.active,
            "registered": sum(r.registered for r in self.runs), "in_call": sum(r.in_call for r in self.runs),
            "calls": self.calls, "failures": dict(failures), "cpu_s": time.process_time(),
            "pss_bytes": _pss_bytes(), "loop_lag_ms": self.loop_lag_ms,
            "gc_pause_ms": self.gc_pauses.worst * 1000.0 if self.gc_pauses is not None else 0.0,
        }

    def growing(self) -> bool:
        """Agents are still starting or setting up (the ramp): what they build lives for the run."""
        elapsed = time.time() - self.cfg.started_at
        last_start = max((offset for _, offset in self.cfg.agents), default=0.0)
        if self.stopping or elapsed > last_start + SETUP_GRACE:
            return False
        return elapsed <= last_start or not all(r.in_call for r in self.runs)

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            lag = (loop.time() - t - 0.1) * 1000.0
            self.loop_lag_ms = max(self.loop_lag_ms, lag)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            s = self.status()
            self.results.resources.append(Resource(s["at"], self.cfg.worker, s["cpu_s"], s["pss_bytes"],
                                                   s["loop_lag_ms"], s["active"], s["gc_pause_ms"]))
            self.loop_lag_ms = 0.0
            if self.gc_pauses is not None:
                self.gc_pauses.take()
            self.out.put(("status", self.cfg.worker, s))

    async def run(self) -> None:
        # The idle baseline (imports done, no agent yet): what an agent costs is measured above it.
        self.results.resources.append(Resource(time.time() - self.cfg.started_at, self.cfg.worker,
                                               time.process_time(), _pss_bytes(), 0.0, 0))
        self.gc_pauses = GcPauseMeter()
        # Full collections over the agents' growing heap stalled the loop 30-130 ms each during the
        # ramp: what survives is frozen out of the collector's reach while the worker grows.
        probes = [self.spawn(self._lag_probe()), self.spawn(self._report()),
                  self.spawn(GcFreezer(self.growing).run())]
        sessions = [asyncio.create_task(run.run(offset)) for run, (_, offset) in zip(self.runs, self.cfg.agents,
                                                                                       strict=True)]
        try:
            while time.time() < self._end_at and not self.stop_event.is_set():
                if all(t.done() for t in sessions):
                    break
                await asyncio.sleep(0.2)
            self.stopping = True
            for run in self.runs:
                if run.agent is not None:
                    run.agent.request_stop("load run ended")
            done, pending = await asyncio.wait(sessions, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("agent session ended with %r", task.exception())
        finally:
            self.results.duration = time.time() - self.cfg.started_at
            self.results.interrupted = self.stop_event.is_set()
            s = self.status()
            self.results.resources.append(Resource(s["at"], self.cfg.worker, s["cpu_s"], s["pss_bytes"],
                                                   s["loop_lag_ms"], 0, s["gc_pause_ms"]))
            for task in probes:
                task.cancel()
            self.ticker.close()
            self.gc_pauses.close()
            self.gc_pauses = None


def worker_main(cfg: WorkerConfig, out: Any, stop: Any) -> None:
    """Entry point of a worker process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a second Ctrl-C terminates us
    # A worker the parent finds stuck is asked where it is: every thread's stack on stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # Import the agent stack before the loop starts, so the import is not counted as loop lag.
    import softphone.agent.agent
    import softphone.media.description_handler  # noqa: F401
    worker = Worker(cfg, out, stop)
    try:
        asyncio.run(worker.run())
    except Exception as exc:  # report, never hang the parent
        log.exception("worker %d failed", cfg.worker)
        out.put(("error", cfg.worker, f"{type(exc).__name__}: {exc}"))
    out.put(("results", cfg.worker, json.dumps(worker.results.to_dict(), default=str)))
