"""The worker's own bookkeeping, without agents running: when it counts as growing."""

from __future__ import annotations

import time

from softphone.load.credentials import AgentSpec
from softphone.load.scenario import DEFAULT_SCENARIO, parse_scenario
from softphone.load.worker import SETUP_GRACE, Worker, WorkerConfig


def _worker(started_ago: float, offsets: tuple[float, ...]) -> Worker:
    cfg = WorkerConfig(worker=0, agents=tuple((AgentSpec(n + 1), o) for n, o in enumerate(offsets)),
                       scenario=parse_scenario(DEFAULT_SCENARIO), duration=600.0,
                       started_at=time.time() - started_ago)
    return Worker(cfg, out=None, stop=None)


def test_growing_while_agents_start_then_until_all_are_in_call() -> None:
    assert _worker(0.5, (0.0, 1.0)).growing()        # the second agent has not started yet
    w = _worker(3.0, (0.0, 1.0))
    assert w.growing()                                # all started, none in a call yet
    w.runs[0].in_call = True
    assert w.growing()
    w.runs[1].in_call = True
    assert not w.growing()                            # everyone set up: the heap stops growing


def test_growth_ends_after_the_grace_or_on_stop() -> None:
    assert not _worker(1.0 + SETUP_GRACE + 1, (0.0, 1.0)).growing()  # agents that never got a call
    w = _worker(0.5, (0.0, 1.0))
    w.stopping = True
    assert not w.growing()


def test_status_carries_the_collectors_pause_only_while_running() -> None:
    import gc

    w = _worker(0.5, (0.0,))
    assert w.status()["gc_pause_ms"] == 0.0 and w.gc_pauses is None  # no gc callback before run()
    callbacks = len(gc.callbacks)
    from softphone.gc_freezer import GcPauseMeter

    w.gc_pauses = GcPauseMeter()
    try:
        gc.collect()
        assert w.status()["gc_pause_ms"] > 0
    finally:
        w.gc_pauses.close()
    assert len(gc.callbacks) == callbacks
