"""Memory churn: 200 short calls one after another on the lean path must not grow memory.

Load tests run for hours, placing and hanging up calls; anything a call leaves
behind (peer connections kept alive by a cycle or a listener, threads, frames
queued for a track nobody reads) adds up.  Resident memory is sampled after
every call; after a warm-up it must settle, and the last sample must be within
10% of the plateau.  No timing is asserted.
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import threading
import weakref

import pytest
from aiortc import RTCPeerConnection

from softphone.media.lean import (
    EncodedAudioCache,
    PreEncodedAudioTrack,
    Tone,
)
from softphone.media.testing import loopback_host_candidates, open_loopback_call

CALLS = 200
WARMUP = 50
MEDIA_SECONDS = 0.3

pytestmark = pytest.mark.slow


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def live_peer_connections() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, RTCPeerConnection))


async def one_call(cache: EncodedAudioCache, n: int, refs: list) -> int:
    # Every 10th call decodes on the callee, as a recording call would.
    decode = n % 10 == 0
    call = await open_loopback_call(
        "PCMU",
        PreEncodedAudioTrack(Tone(440, 1.0), cache=cache),
        PreEncodedAudioTrack(Tone(880, 1.0), cache=cache),
        callee_decode=decode,
    )
    try:
        await asyncio.sleep(MEDIA_SECONDS)
        received = call.callee.report().received
    finally:
        await call.close()
    if n % 20 == 0:
        refs.append(weakref.ref(call.caller.pc))
    return received


async def test_two_hundred_calls_do_not_grow_memory():
    cache = EncodedAudioCache()
    samples: list[int] = []
    received: list[int] = []
    refs: list[weakref.ref] = []
    objects: dict[int, int] = {}
    threads_before = threading.active_count()
    gc.collect()
    pcs_before = live_peer_connections()  # other tests' objects this process may still hold
    with loopback_host_candidates():
        for n in range(CALLS):
            received.append(await asyncio.wait_for(one_call(cache, n, refs), 30))
            if n % 10 == 9:
                gc.collect()
            samples.append(rss_bytes())
            if n + 1 in (WARMUP, CALLS):
                gc.collect()
                objects[n + 1] = len(gc.get_objects())
    gc.collect()
    final = rss_bytes()
    plateau = statistics.median(samples[WARMUP:WARMUP + 50])
    growth = final / plateau - 1
    print(f"\nRSS start {samples[0] / 2**20:.1f} MiB, plateau {plateau / 2**20:.1f} MiB, "
          f"end {final / 2**20:.1f} MiB ({growth:+.1%}); packets per call median {statistics.median(received)}; "
          f"Python objects after {WARMUP} calls {objects[WARMUP]}, after {CALLS} {objects[CALLS]}")

    assert all(r > 0 for r in received), "a call carried no media"
    assert cache.encodes == 2  # two tones, encoded once for all 200 calls
    assert [r() for r in refs] == [None] * len(refs), "closed peer connections are still referenced"
    assert live_peer_connections() <= pcs_before
    # 150 more calls leave (almost) nothing behind: a per-call leak of even a few
    # objects would show here long before it shows in RSS.
    assert objects[CALLS] - objects[WARMUP] < 150, objects
    assert threading.active_count() <= threads_before + 2  # executor workers may linger, not per call
    assert final <= plateau * 1.10, f"RSS grew {growth:+.1%} past its plateau"
