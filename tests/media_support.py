"""Helpers shared by the tests/test_media_*.py files (media engineer A).

A sine source, a receiver that measures the dominant frequency, a builder
for two connected WebRtcDescriptionHandlers through the real coturn, and a
lossy UDP relay placed between one peer and coturn.
"""

from __future__ import annotations

import asyncio
import fractions
import random

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.media.config import IceConfig, MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.sip.description_handler import DescriptionOptions

FRAME_MS = 20


class SineTrack(MediaStreamTrack):
    """20 ms mono s16 frames of a sine, paced by the event loop clock."""

    kind = "audio"

    def __init__(self, frequency: float, sample_rate: int = 48000, amplitude: int = 8000) -> None:
        super().__init__()
        self.frequency = frequency
        self.sample_rate = sample_rate
        self.amplitude = amplitude
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        delay = self._start + self._samples / self.sample_rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        n = self.sample_rate * FRAME_MS // 1000
        t = (np.arange(n) + self._samples) / self.sample_rate
        data = (np.sin(2 * np.pi * self.frequency * t) * self.amplitude).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        self._samples += n
        return frame


def frame_samples(frame: av.AudioFrame) -> np.ndarray:
    """First channel of a packed s16 frame as float."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    return data.reshape(-1, channels)[:, 0].astype(np.float64) if data.ndim == 2 and data.shape[0] == 1 \
        else data[0].astype(np.float64)


class ToneMeter:
    """A sink: reads the remote track and keeps the most recent audio for analysis."""

    def __init__(self) -> None:
        self.chunks: list[np.ndarray] = []
        self.sample_rate: int | None = None
        self.frames = 0
        self.pts: list[int] = []
        self._task: asyncio.Task | None = None

    async def start(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                self.sample_rate = frame.sample_rate
                self.chunks.append(frame_samples(frame))
                self.pts.append(frame.pts)
                self.frames += 1
                if len(self.chunks) > 200:
                    del self.chunks[:100]
                    del self.pts[:100]
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def reset(self) -> None:
        self.chunks.clear()

    async def wait_frames(self, count: int, timeout: float = 10.0) -> None:
        async def _wait():
            start = self.frames
            while self.frames - start < count:
                await asyncio.sleep(0.02)
        await asyncio.wait_for(_wait(), timeout)

    def dominant_frequency(self, last_frames: int = 25) -> float:
        data = np.concatenate(self.chunks[-last_frames:])
        window = np.hanning(len(data))
        spectrum = np.abs(np.fft.rfft(data * window))
        spectrum[0] = 0
        peak = int(np.argmax(spectrum))
        # parabolic interpolation around the peak bin
        if 0 < peak < len(spectrum) - 1:
            a, b, c = spectrum[peak - 1], spectrum[peak], spectrum[peak + 1]
            peak = peak + 0.5 * (a - c) / (a - 2 * b + c)
        return peak * self.sample_rate / len(data)

    def rms(self, last_frames: int = 10) -> float:
        data = np.concatenate(self.chunks[-last_frames:])
        return float(np.sqrt(np.mean(data**2)))


#: What :func:`relay_config` gives ``MediaConfig.fast_path`` (set by the ``fast_path`` fixture in conftest).
fast_path_mode = "auto"

#: Run a test with the media fast path on and with stock aiortc (the fallback must work too).
FAST_PATH_ON_AND_OFF = pytest.mark.parametrize("fast_path", ["on", "off"], indirect=True)


def relay_config(coturn, *, codecs=("opus",), url: str | None = None, **kwargs) -> MediaConfig:
    ice = IceConfig(turn_urls=(url or coturn.url,), username=coturn.username, credential=coturn.password,
                    relay_only=True, gathering_timeout=5.0)
    kwargs.setdefault("fast_path", fast_path_mode)
    return MediaConfig(ice=ice, codecs=tuple(codecs), **kwargs)


async def negotiate(offerer: WebRtcDescriptionHandler, answerer: WebRtcDescriptionHandler,
                    offer_options: DescriptionOptions | None = None,
                    answer_options: DescriptionOptions | None = None) -> tuple[str, str]:
    """One offer/answer exchange as the SIP layer does it; returns both SDPs."""
    offer = await offerer.get_description(offer_options)
    await answerer.set_description(offer)
    answer = await answerer.get_description(answer_options)
    await offerer.set_description(answer)
    return offer.content, answer.content


async def wait_connected(*handlers: WebRtcDescriptionHandler, timeout: float = 10.0) -> None:
    async def _wait():
        while not all(h.pc.connectionState == "connected" for h in handlers):
            states = [h.pc.connectionState for h in handlers]
            if "failed" in states:
                raise AssertionError(f"connection failed: {states}")
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_wait(), timeout)


async def received_packets(handler: WebRtcDescriptionHandler) -> int:
    return (await handler.stats()).packets_received


async def settle(handler: WebRtcDescriptionHandler, quiet: float = 0.2, timeout: float = 5.0) -> None:
    """Wait until no packet arrived for ``quiet`` seconds (packets in flight are through)."""
    async def _wait():
        while await packets_during(handler, quiet):
            pass
    await asyncio.wait_for(_wait(), timeout)


async def packets_during(handler: WebRtcDescriptionHandler, seconds: float) -> int:
    """Packets received in the next ``seconds``: for checking that none arrive (after ``settle``);
    to see packets flow, wait for them with :func:`packets_arrive` instead."""
    before = await received_packets(handler)
    await asyncio.sleep(seconds)
    return await received_packets(handler) - before


async def packets_arrive(handler: WebRtcDescriptionHandler, more_than: int = 5, timeout: float = 10.0) -> int:
    """Wait until more than ``more_than`` packets arrived from now on (a generous deadline, no fixed
    sleep); returns how many came.  Fails the test naming the count after ``timeout``."""
    before = await received_packets(handler)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        got = await received_packets(handler) - before
        if got > more_than:
            return got
        if loop.time() > end:
            raise AssertionError(f"only {got} packet(s) arrived in {timeout:g} s, expected more than {more_than}")
        await asyncio.sleep(0.02)


class LossyUdpRelay:
    """A UDP forwarder between TURN clients and coturn that drops a fixed share of media.

    Only TURN ChannelData messages (first byte 0x40-0x4F: relayed RTP, RTCP
    and DTLS once channels are bound) from the client towards coturn are
    dropped, and only while ``dropping`` is set, so allocation and ICE stay
    reliable.  Exactly one packet in every block of ``1/loss`` is dropped, at a
    position drawn from a seeded RNG: the share is exact, the pattern random.
    """

    def __init__(self, target: tuple[str, int], loss: float = 0.05, seed: int = 4733) -> None:
        self.target = target
        self.block = round(1 / loss)
        self.rng = random.Random(seed)
        self.dropping = False
        self.forwarded = 0
        self.dropped = 0
        self._count = 0
        self._victim = self.rng.randrange(self.block)
        self._front: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple, asyncio.Future] = {}
        self.port: int | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        relay = self

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                relay._from_client(data, addr)

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=("127.0.0.1", 0))
        self.port = self._front.get_extra_info("sockname")[1]
        return self.port

    def _drop(self, data: bytes) -> bool:
        if not self.dropping or not data or not 0x40 <= data[0] <= 0x4F:
            return False
        index = self._count % self.block
        self._count += 1
        drop = index == self._victim
        if index == self.block - 1:
            self._victim = self.rng.randrange(self.block)
        return drop

    def _from_client(self, data: bytes, addr) -> None:
        pending = self._upstreams.get(addr)
        if pending is None:
            pending = self._upstreams[addr] = asyncio.ensure_future(self._connect(addr))
        if not pending.done():  # rare: packets before the upstream socket exists
            pending.add_done_callback(lambda fut: fut.exception() or self._forward(fut.result(), data))
            return
        self._forward(pending.result(), data)

    def _forward(self, up: asyncio.DatagramTransport, data: bytes) -> None:
        if self._drop(data):
            self.dropped += 1
            return
        self.forwarded += 1
        up.sendto(data)

    async def _connect(self, addr) -> asyncio.DatagramTransport:
        front = self._front

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, reply, _addr):
                front.sendto(reply, addr)

        up, _ = await asyncio.get_running_loop().create_datagram_endpoint(Back, remote_addr=self.target)
        return up

    def close(self) -> None:
        for pending in self._upstreams.values():
            if pending.done() and not pending.exception():
                pending.result().close()
            else:
                pending.cancel()
        if self._front is not None:
            self._front.close()


async def wait_until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 20 ms; fail the test naming ``what`` after ``timeout``."""
    async def poll():
        while not predicate():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
