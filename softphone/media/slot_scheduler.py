"""One timer per 2 ms slot wakes everything of one event loop that is due in it.

``asyncio.sleep`` per packet costs a timer-heap entry and a callback per stream
(about 14 us per wake here); sharing one timer per slot among all streams due in
it costs about 6 us.  A stream wakes up to one slot late, a constant offset for
each stream (20 ms is a whole number of slots), so it adds no jitter.

Two kinds of waiters share the slots: a coroutine awaiting :meth:`SlotScheduler.sleep_until`
(a pre-encoded track's ``recv()`` under aiortc's own sender loop) and a
:class:`Ticking` object (the lean RTP sender) whose ``tick`` is called in the
timer callback and says when it is due next.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from typing import Protocol

from softphone.log import get_logger

log = get_logger(__name__)


class Ticking(Protocol):
    """What the scheduler calls: send what is due, return the next due time (loop time) or None."""

    slot: tuple[int, SlotScheduler] | None

    def tick(self, scheduler: SlotScheduler, now: float) -> float | None: ...

    def fail(self, exc: BaseException) -> None: ...


class SlotScheduler:
    """The 2 ms slots of one event loop (see the module docstring)."""

    SLOT = 0.002
    FRAME = 0.02
    #: Streams per slot before new ones open another slot.  Sharing a slot saves
    #: wake-ups (each costs about as much as a few packets on a VM); past this many,
    #: a slot's burst of sends and receives starts to show as event-loop lag.
    BATCH = 16

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[Ticking | asyncio.Future]] = {}
        self._firing: tuple[int, list] | None = None
        self._firing_done = 0

    def _key(self, due: float) -> int:
        return math.ceil(due / self.SLOT)

    def _entries(self, key: int) -> list:
        entries = self._slots.get(key)
        if entries is None:
            entries = self._slots[key] = []
            self._loop.call_at(key * self.SLOT, self._fire, key)
        return entries

    def sleep_until(self, deadline: float) -> asyncio.Future:
        """A future done at the first slot boundary at or after ``deadline`` (loop time).

        Each waiter gets its own future, so cancelling one task never wakes or
        cancels another.
        """
        future = self._loop.create_future()
        self._entries(self._key(deadline)).append(future)
        return future

    def schedule(self, client: Ticking, due: float) -> None:
        """Call ``client.tick`` in the slot of ``due``."""
        key = self._key(due)
        self._entries(key).append(client)
        client.slot = (key, self)

    def discard(self, key: int, client: Ticking) -> None:
        entries = self._slots.get(key)
        if entries is not None and client in entries:
            entries.remove(client)
        client.slot = None

    def start_phase(self, now: float) -> float:
        """When a new stream should send its first packet: a slot of the next frame.

        Streams prepared together (calls set up in a batch) would otherwise share
        one slot for the whole call: at 150 peer connections up to 95 of them did,
        a burst of sends and receives every 20 ms that showed as event-loop lag.  A
        new stream joins the busiest slot with fewer than :attr:`BATCH` streams,
        else the least busy one.  The time returned is the middle of the slot, so
        rounding cannot push it into the next one.
        """
        per_frame = round(self.FRAME / self.SLOT)
        load = [0] * per_frame
        for key, entries in self._slots.items():
            load[key % per_frame] += len(entries)
        if self._firing is not None:  # the rest of the slot being fired stays in its phase
            key, entries = self._firing
            load[key % per_frame] += len(entries) - self._firing_done
        first = math.ceil(now / self.SLOT)
        phases = [(first + i) % per_frame for i in range(per_frame)]
        filling = [i for i, p in enumerate(phases) if 0 < load[p] < self.BATCH]
        if filling:  # join the busiest slot that still has room: fewer wake-ups
            best = max(filling, key=lambda i: (load[phases[i]], -i))
        else:
            best = min(range(per_frame), key=lambda i: (load[phases[i]], i))
        return (first + best) * self.SLOT - self.SLOT / 2

    def _fire(self, key: int) -> None:
        now = self._loop.time()
        entries = self._slots.pop(key, [])
        self._firing = (key, entries)
        try:
            for done, entry in enumerate(entries, 1):
                self._firing_done = done
                if isinstance(entry, asyncio.Future):
                    if not entry.done():
                        entry.set_result(None)
                    continue
                entry.slot = None
                try:
                    due = entry.tick(self, now)
                except Exception as exc:  # one broken stream must not silence the others
                    log.exception("slot client failed")
                    entry.fail(exc)
                    continue
                if due is not None:
                    self.schedule(entry, due)
        finally:
            self._firing = None

    @property
    def scheduled(self) -> int:
        """Waiters of either kind in all slots."""
        return sum(len(e) for e in self._slots.values())


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SlotScheduler] = weakref.WeakKeyDictionary()


def slot_scheduler(loop: asyncio.AbstractEventLoop | None = None) -> SlotScheduler:
    """The running loop's shared :class:`SlotScheduler`."""
    loop = loop or asyncio.get_running_loop()
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        scheduler = _schedulers[loop] = SlotScheduler(loop)
    return scheduler
