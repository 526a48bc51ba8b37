"""The collector's pacing for growing processes: survivors frozen, pauses measured."""

from __future__ import annotations

import asyncio
import gc

import pytest

from softphone.gc_freezer import GcFreezer, GcPauseMeter, freeze_survivors


@pytest.fixture
def unfrozen():
    """Freezing is process-wide: every test here leaves nothing frozen."""
    assert gc.get_freeze_count() == 0
    yield
    gc.unfreeze()


def _long_lived(n: int) -> list:
    keep = []
    for _ in range(n):
        pair: list = []
        pair.append(pair)  # a cycle: tracked, and only the cyclic collector could free it
        keep.append(pair)
    return keep


def test_frozen_survivors_are_out_of_the_full_collections_reach(unfrozen) -> None:
    keep = _long_lived(20_000)
    gc.collect()
    assert len(gc.get_objects(generation=2)) >= 20_000
    freeze_survivors()
    assert gc.get_freeze_count() >= 20_000
    assert len(gc.get_objects(generation=2)) < 1_000  # what a full pass walks now
    del keep


def test_young_garbage_is_collected_before_the_freeze(unfrozen) -> None:
    import weakref

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # a garbage cycle once the names go
    probe = weakref.ref(a)
    del a, b
    freeze_survivors()
    assert probe() is None


async def test_freezer_runs_while_growing_and_once_more_after(unfrozen) -> None:
    checks = iter([True, True, False])
    freezer = GcFreezer(lambda: next(checks), interval=0.0)
    await asyncio.wait_for(freezer.run(), 10)
    assert freezer.freezes == 4  # at start, twice while growing, once at the end
    assert gc.get_freeze_count() > 0


def test_pause_meter_measures_and_windows(unfrozen) -> None:
    meter = GcPauseMeter()
    try:
        keep = _long_lived(5_000)
        gc.collect()
        worst, total, full = meter.take()
        assert full == 1 and worst > 0 and total >= worst
        assert meter.take() == (0.0, 0.0, 0)  # a new window
        del keep
    finally:
        meter.close()
    assert meter._on_gc not in gc.callbacks
    gc.collect()
    assert meter.take() == (0.0, 0.0, 0)  # closed: no longer called
