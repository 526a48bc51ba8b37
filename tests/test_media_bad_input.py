"""A call's media under bad input at the agent's media port, through the real coturn.

The agent's media port, as the world sees it, is its relayed address on the
TURN server.  During a call an attacker sends there random datagrams,
truncated and malformed RTP and RTCP, SRTP packets that fail authentication,
STUN garbage and DTLS-looking junk, then a flood of all of it; coturn relays
them to the agent.  The call must keep its audio (the tone still
measures right), stay connected, let no exception escape to the event loop,
not count the junk as received media, and keep its memory flat.

An empty datagram once ended the call's audio (aiortc 1.16's
``RTCDtlsTransport._recv_next`` reads ``data[0]``): the media seam now drops it
before aiortc's queue, fast path on or off, and counts it
(``CallQuality.datagrams_discarded``).
"""

from __future__ import annotations

import asyncio
import gc
import random
import socket
import struct
import tracemalloc

import pytest
from media_support import (
    FAST_PATH_ON_AND_OFF,
    SineTrack,
    ToneMeter,
    negotiate,
    relay_config,
    wait_connected,
    wait_until,
)

from softphone.media.aiortc_seam import discarded_datagrams
from softphone.media.description_handler import WebRtcDescriptionHandler

pytestmark = pytest.mark.peer

TONE = 440.0
FLOOD = 5_000


def _close_enough(freq: float, expected: float) -> bool:
    return abs(freq - expected) / expected < 0.02


def relayed_address_of(handler: WebRtcDescriptionHandler) -> tuple[str, int]:
    """The handler's relayed transport address on coturn: the media port the world sees.

    TURN permissions are per IP address (RFC 8656 9), so on loopback any local socket may
    send there and coturn relays it to the agent.  (The agent's own UDP socket is connected
    to coturn: the kernel drops datagrams from anywhere else.)  Reached through aiortc/aioice
    objects: the only way to learn the address a real attacker would aim at.
    """
    for transceiver in handler.pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for protocol in connection._protocols:
            if getattr(protocol.transport, "_TurnTransport__inner_protocol", None) is not None:
                return protocol.transport.get_extra_info("sockname")
    raise AssertionError("no TURN allocation")


class ArrivalCounter:
    """Counts the datagrams coturn relayed to the handler as Data indications (the junk: the
    call's own media comes on a bound channel), so the test knows the input did arrive."""

    def __init__(self, handler: WebRtcDescriptionHandler):
        self.indications = 0
        self.inner = None
        for transceiver in handler.pc.getTransceivers():
            for protocol in transceiver.receiver.transport.transport._connection._protocols:
                inner = getattr(protocol.transport, "_TurnTransport__inner_protocol", None)
                if inner is not None:
                    self.inner = inner
        assert self.inner is not None
        stock = self.inner.datagram_received

        def counting(data: bytes, addr: tuple) -> None:
            if len(data) >= 2 and data[0] < 0x40:  # STUN-framed: a Data indication (or a response)
                self.indications += 1
            stock(data, addr)

        self.inner.datagram_received = counting

    def remove(self) -> None:
        self.inner.__dict__.pop("datagram_received", None)


def junk(rng: random.Random) -> bytes:
    """One datagram of bad input, of a kind drawn at random."""
    kind = rng.randrange(6)
    if kind == 0:  # random bytes of random length
        return rng.randbytes(rng.randrange(1, 1200))
    if kind == 1:  # truncated RTP (shorter than the fixed header)
        return bytes([0x80, 0x00]) + rng.randbytes(rng.randrange(0, 9))
    if kind == 2:  # an RTP-looking packet whose SRTP authentication fails
        header = struct.pack("!BBHII", 0x80, 0, rng.randrange(65536), rng.randrange(2**32), rng.randrange(2**32))
        return header + rng.randbytes(rng.randrange(0, 300))
    if kind == 3:  # malformed RTCP (SR, RR, SDES, BYE, feedback payload types; lengths that lie)
        pt = rng.choice((200, 201, 202, 203, 204, 205, 206, 207))
        return bytes([0x80 | rng.randrange(32), pt]) + rng.randbytes(rng.randrange(0, 60))
    if kind == 4:  # STUN garbage: a binding request/response header with junk attributes
        return (struct.pack("!HH", rng.choice((0x0001, 0x0101, 0x0111)), rng.randrange(0, 200))
                + b"\x21\x12\xa4\x42" + rng.randbytes(12 + rng.randrange(0, 80)))
    # DTLS-looking records (content type 20..63, DTLS 1.2)
    return bytes([rng.randrange(20, 64), 0xFE, 0xFD]) + rng.randbytes(rng.randrange(0, 200))


async def send_junk(target: tuple[str, int], count: int, seed: int) -> None:
    rng = random.Random(seed)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
        attacker.setblocking(False)
        for n in range(count):
            try:
                attacker.sendto(junk(rng), target)
            except BlockingIOError:
                await asyncio.sleep(0.001)
            if n % 50 == 49:
                # bursts of 50: a faster sender only overflows socket buffers on the way (the
                # junk would never reach the agent), and the call runs between bursts
                await asyncio.sleep(0.002)


async def test_call_keeps_its_audio_under_bad_input_and_a_flood(coturn):
    loop = asyncio.get_running_loop()
    escaped: list[dict] = []
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: escaped.append(context))
    meter = ToneMeter()
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(TONE), sinks=[])
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(1000.0), sinks=[meter])
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await meter.wait_frames(25)
        assert _close_enough(meter.dominant_frequency(), TONE)
        target = relayed_address_of(b)
        arrivals = ArrivalCounter(b)

        # every kind of bad input, a few thousand times
        await send_junk(target, 3000, seed=1)
        before = (await b.stats()).packets_received
        meter.reset()
        await meter.wait_frames(25)
        assert _close_enough(meter.dominant_frequency(), TONE)

        # a flood; memory measured across a second one of the same size must stay flat
        gc.collect()
        tracemalloc.start()
        try:
            await send_junk(target, FLOOD, seed=2)
            await meter.wait_frames(10)
            gc.collect()
            after_first = tracemalloc.get_traced_memory()[0]
            await send_junk(target, FLOOD, seed=3)
            await meter.wait_frames(10)
            gc.collect()
            after_second = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert after_second - after_first < 2 * 1024 * 1024, (after_first, after_second)

        # still a call with audio
        meter.reset()
        await meter.wait_frames(25)
        assert _close_enough(meter.dominant_frequency(), TONE)
        assert a.pc.connectionState == "connected" and b.pc.connectionState == "connected"
        received = (await b.stats()).packets_received - before
        # ~50 real packets a second arrived; none of the junk datagrams counted as media
        assert 0 < received < 5_000, received
        assert arrivals.indications > 1000, arrivals.indications  # the junk did reach the agent
        # the RTP-looking junk failed SRTP authentication and was counted as dropped
        assert (await b.stats()).datagrams_discarded > 100
        arrivals.remove()
        assert escaped == [], escaped[:3]
    finally:
        loop.set_exception_handler(previous_handler)
        await a.close()
        await b.close()


async def _call_with(coturn):
    meter = ToneMeter()
    a = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(TONE), sinks=[])
    b = WebRtcDescriptionHandler(relay_config(coturn, codecs=("PCMU",)), source=SineTrack(1000.0), sinks=[meter])
    await negotiate(a, b)
    await wait_connected(a, b)
    await meter.wait_frames(10)
    return a, b, meter


@FAST_PATH_ON_AND_OFF
async def test_an_empty_datagram_does_not_end_the_call(coturn, fast_path):
    a, b, meter = await _call_with(coturn)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            attacker.sendto(b"", relayed_address_of(b))
        await wait_until(lambda: discarded_datagrams(b.pc), timeout=10.0)
        meter.reset()
        try:
            await meter.wait_frames(25, timeout=5.0)
        except TimeoutError:
            raise AssertionError("no audio after one empty datagram") from None
        assert _close_enough(meter.dominant_frequency(), TONE)
    finally:
        await a.close()
        await b.close()
