"""Audio sinks: consumers of a remote audio track (meters, detectors, a black hole).

A sink is fed frame by frame with :meth:`AudioSink.write`, so several sinks
can share one reader (:class:`SinkFanout`): an aiortc track can only be read
by one consumer, and a call usually wants a recorder, a level meter and a
DTMF detector at once.  ``await sink.start(track)`` is the one-sink shortcut
(a private fan-out); ``await sink.stop()`` ends the reader and finalises the
sink.  When the track ends (``MediaStreamError``) the reader finishes and
closes its sinks, so files are complete without anyone calling ``stop``.

Sinks accept any frame PyAV produces (s16/flt, packed or planar, mono or
stereo, any rate): aiortc's Opus decoder gives 48 kHz stereo s16, its PCMU
decoder 8 kHz mono.  Analysis is done on a mono float mix.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import ConfigurationError, MediaError
from softphone.events import DtmfEvent
from softphone.log import get_logger
from softphone.media import tones

log = get_logger(__name__)

#: How long stop() waits for a reader task to wind down.
STOP_TIMEOUT = 5.0

_SCALE = {"s16": 32768.0, "s16p": 32768.0, "s32": 2147483648.0, "s32p": 2147483648.0,
          "flt": 1.0, "fltp": 1.0, "dbl": 1.0, "dblp": 1.0}


def frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Mono float64 samples in [-1, 1) of any PyAV audio frame (channels averaged)."""
    name = frame.format.name
    channels = len(frame.layout.channels)
    if name == "s16":
        # The common case (aiortc's decoders): read the packed plane directly, no copy via to_ndarray.
        raw = np.frombuffer(frame.planes[0], dtype="<i2", count=frame.samples * channels)
        if channels == 2:
            return (raw[0::2].astype(np.float64) + raw[1::2]) * (0.5 / 32768.0)
        if channels == 1:
            return raw * (1.0 / 32768.0)
    if name in ("u8", "u8p"):
        data = (frame.to_ndarray().astype(np.float64) - 128.0) / 128.0
    elif name in _SCALE:
        data = frame.to_ndarray().astype(np.float64)
        if _SCALE[name] != 1.0:
            data /= _SCALE[name]
    else:
        raise MediaError(f"frame.format: unsupported sample format {name!r}")
    if frame.format.is_planar:
        mono = data.mean(axis=0) if channels > 1 else data[0]
    else:
        flat = data.reshape(-1)
        mono = flat.reshape(-1, channels).mean(axis=1) if channels > 1 else flat
    return mono[: frame.samples]


class FrameConverter:
    """``av.AudioResampler`` that survives input format changes.

    PyAV's resampler switches to pass-through when the first frame already
    has the output format and then hands back *any* later frame unchanged,
    even one of another rate or layout; it raises on a change otherwise.
    Either way a stream whose format changes (a switched source, another
    codec after a re-INVITE) needs a fresh resampler, which this does.
    """

    def __init__(self, format: str, layout: str, rate: int):
        self.format, self.layout, self.rate = format, layout, rate
        self._resampler = av.AudioResampler(format=format, layout=layout, rate=rate)
        self._input: tuple | None = None

    def convert(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out: list[av.AudioFrame] = []
        if self._input is not None and key != self._input:
            out += self.flush()
            self._resampler = av.AudioResampler(format=self.format, layout=self.layout, rate=self.rate)
        self._input = key
        return out + list(self._resampler.resample(frame))

    def flush(self) -> list[av.AudioFrame]:
        return list(self._resampler.resample(None))


class SinkState(enum.Enum):
    IDLE = "idle"          # nothing written yet
    RUNNING = "running"    # frames are arriving
    CLOSED = "closed"      # finalised; further frames are ignored
    FAILED = "failed"      # a write failed; ``error`` says why


class AudioSink(AsyncIOEventEmitter):
    """Base of all sinks: state, counters, and the reader shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SinkState.IDLE
        self.frames = 0
        self.samples = 0
        self.sample_rate: int | None = None
        self.seconds = 0.0
        """Audio received so far, in seconds of stream time (whatever the rates)."""
        self.error: BaseException | None = None
        self._fanout: SinkFanout | None = None

    def write(self, frame: av.AudioFrame) -> None:
        """Consume one frame (ignored once the sink is closed or failed)."""
        if self.state in (SinkState.CLOSED, SinkState.FAILED):
            return
        self.state = SinkState.RUNNING
        self.frames += 1
        self.samples += frame.samples
        self.sample_rate = frame.sample_rate
        if frame.sample_rate:
            self.seconds += frame.samples / frame.sample_rate
        try:
            self._write(frame)
        except Exception as exc:
            self.fail(exc)
            raise

    def _write(self, frame: av.AudioFrame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finalise (idempotent): flush detectors, close files."""
        if self.state in (SinkState.CLOSED, SinkState.FAILED):
            return
        try:
            self._close()
        except Exception as exc:
            self.error = exc
            self.state = SinkState.FAILED
            log.error("%s failed while closing: %s", type(self).__name__, exc)
            self.emit("failed", exc)
            raise
        self.state = SinkState.CLOSED
        self.emit("closed")

    def _close(self) -> None:
        """Hook for subclasses."""

    def fail(self, error: BaseException) -> None:
        if self.state is SinkState.FAILED:
            return
        self.error = error
        try:
            self._close()
        except Exception:
            log.debug("%s: close after failure failed too", type(self).__name__, exc_info=True)
        self.state = SinkState.FAILED
        log.error("%s failed: %s", type(self).__name__, error)
        self.emit("failed", error)

    async def start(self, track: MediaStreamTrack) -> None:
        """Read ``track`` in a task of its own until it ends or :meth:`stop`."""
        if self._fanout is not None:
            raise MediaError(f"{type(self).__name__}: already reading a track")
        self._fanout = SinkFanout(track, [self])
        await self._fanout.start()

    async def stop(self) -> None:
        """Stop reading (if started) and finalise."""
        if self._fanout is not None:
            await self._fanout.stop()
        self.close()

    async def wait_closed(self, timeout: float | None = None) -> None:
        """Until the track ended and the sink was finalised."""
        if self.state in (SinkState.CLOSED, SinkState.FAILED):
            return
        fut = asyncio.get_running_loop().create_future()
        for event in ("closed", "failed"):
            self.once(event, lambda *_: fut.done() or fut.set_result(None))
        await asyncio.wait_for(fut, timeout)


class FanoutState(enum.Enum):
    IDLE = "idle"
    READING = "reading"
    DONE = "done"          # track ended or stop() was called


class SinkFanout:
    """Reads one track and hands every frame to several sinks.

    A sink whose ``write`` raises is marked failed and dropped; the others go
    on.  When the track ends the sinks are closed (files finalised).
    """

    def __init__(self, track: MediaStreamTrack, sinks: Iterable[AudioSink] = (), close_sinks: bool = True):
        self.track = track
        self.sinks: list[AudioSink] = list(sinks)
        self.close_sinks = close_sinks
        self.state = FanoutState.IDLE
        self.frames = 0
        self._task: asyncio.Task | None = None
        self._done = asyncio.Event()

    def add(self, sink: AudioSink) -> None:
        self.sinks.append(sink)

    def remove(self, sink: AudioSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    async def start(self) -> None:
        if self.state is not FanoutState.IDLE:
            raise MediaError("SinkFanout: start() called twice")
        self.state = FanoutState.READING
        self._task = asyncio.ensure_future(self._run())

    def feed(self, frame: av.AudioFrame) -> None:
        """Hand one frame to every sink (also usable without a track)."""
        self.frames += 1
        for sink in list(self.sinks):
            try:
                sink.write(frame)
            except Exception:
                log.exception("sink %s failed; dropping it from the fan-out", type(sink).__name__)
                self.remove(sink)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    frame = await self.track.recv()
                except MediaStreamError:
                    log.debug("track %s ended after %d frames", getattr(self.track, "id", "?"), self.frames)
                    break
                except Exception:
                    # A broken track must not leave files unfinalised: end as if it had ended.
                    log.exception("reading track %s failed; closing its sinks", getattr(self.track, "id", "?"))
                    break
                self.feed(frame)
        finally:
            self._finish()

    def _finish(self) -> None:
        self.state = FanoutState.DONE
        if self.close_sinks:
            for sink in self.sinks:
                try:
                    sink.close()
                except Exception:
                    log.exception("closing sink %s failed", type(sink).__name__)
        self._done.set()

    async def wait(self, timeout: float | None = None) -> None:
        """Until the track has ended (and the sinks are closed)."""
        await asyncio.wait_for(self._done.wait(), timeout)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT)
        if self.state is not FanoutState.DONE:
            self._finish()


# --- simple sinks -------------------------------------------------------------------


class Blackhole(AudioSink):
    """Consumes and drops (keeps the receiver draining), counting frames and samples."""

    def _write(self, frame: av.AudioFrame) -> None:
        return None


class LevelSample(NamedTuple):
    """Level of one frame; ``t`` is the frame's start in seconds of stream time (a tuple: cheap per frame)."""

    t: float
    rms_dbfs: float
    peak_dbfs: float


@dataclass
class _LevelWaiter:
    test: Callable[[float], bool]
    for_seconds: float
    future: asyncio.Future
    since: float | None = None


class LevelMeter(AudioSink):
    """RMS and peak dBFS per frame and running, with a history for plots.

    ``history_max`` bounds memory (default two hours of 20 ms frames);
    ``silence_dbfs`` is the threshold below which a frame counts as silent.
    """

    def __init__(self, history_max: int | None = 360_000, silence_dbfs: float = -60.0, name: str = ""):
        super().__init__()
        self.name = name
        self.silence_dbfs = silence_dbfs
        self.history: collections.deque[LevelSample] = collections.deque(maxlen=history_max)
        self._energy = 0.0
        self._count = 0
        self._time = 0.0  # seconds measured so far (the rate may change mid-stream)
        self._peak = 0.0
        self._silent_frames = 0
        self._blocks = 0
        self.last: LevelSample | None = None
        self._level_waiters: list[_LevelWaiter] = []

    def _write(self, frame: av.AudioFrame) -> None:
        x = frame_to_mono(frame)
        self.measure(x, frame.sample_rate)

    async def wait_sound(self, above_dbfs: float = -40.0, for_seconds: float = 0.0,
                         timeout: float | None = None) -> float:
        """Until the RMS stays above ``above_dbfs`` for ``for_seconds``; returns when it began (s).

        A bot waits for the far end to speak, a test for the prompt to start.
        """
        return await self._wait_level(lambda db: db >= above_dbfs, for_seconds, timeout)

    async def wait_silence(self, below_dbfs: float = -50.0, for_seconds: float = 0.5,
                           timeout: float | None = None) -> float:
        """Until the RMS stays below ``below_dbfs`` for ``for_seconds`` (the caller stopped talking)."""
        return await self._wait_level(lambda db: db < below_dbfs, for_seconds, timeout)

    async def _wait_level(self, test: Callable[[float], bool], for_seconds: float,
                          timeout: float | None) -> float:
        waiter = _LevelWaiter(test, for_seconds, asyncio.get_running_loop().create_future())
        self._level_waiters.append(waiter)
        try:
            return await asyncio.wait_for(waiter.future, timeout)
        finally:
            if waiter in self._level_waiters:
                self._level_waiters.remove(waiter)

    def _check_waiters(self, sample: LevelSample) -> None:
        for waiter in list(self._level_waiters):
            if waiter.test(sample.rms_dbfs):
                if waiter.since is None:
                    waiter.since = sample.t
                if self._time - waiter.since >= waiter.for_seconds - 1e-9 and not waiter.future.done():
                    waiter.future.set_result(waiter.since)
                    self._level_waiters.remove(waiter)
            else:
                waiter.since = None

    def measure(self, x: np.ndarray, rate: int) -> LevelSample:
        """Account for one block of mono samples (for callers without frames)."""
        t = self._time
        self._time += x.size / rate if rate else 0.0
        energy = float(np.dot(x, x))
        peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
        self._energy += energy
        self._count += x.size
        self._peak = max(self._peak, peak)
        sample = LevelSample(t, tones.to_dbfs(math.sqrt(energy / x.size)) if x.size else tones.DB_FLOOR,
                             tones.to_dbfs(peak))
        self._blocks += 1
        if sample.rms_dbfs < self.silence_dbfs:
            self._silent_frames += 1
        self.history.append(sample)
        self.last = sample
        if self._level_waiters:
            self._check_waiters(sample)
        return sample

    @property
    def rms_dbfs(self) -> float:
        """RMS over everything measured."""
        return tones.to_dbfs(math.sqrt(self._energy / self._count)) if self._count else tones.DB_FLOOR

    @property
    def peak_dbfs(self) -> float:
        return tones.to_dbfs(self._peak)

    @property
    def silent_fraction(self) -> float:
        """Share of frames quieter than ``silence_dbfs``."""
        return self._silent_frames / self._blocks if self._blocks else 0.0

    def recent_rms_dbfs(self, seconds: float = 1.0) -> float:
        """Energy-mean RMS over the last ``seconds`` of history."""
        if not self.history:
            return tones.DB_FLOOR
        cutoff = self.history[-1].t - seconds
        return tones.mean_level(s.rms_dbfs for s in self.history if s.t > cutoff)

    def summary(self) -> dict:
        return {
            "name": self.name, "seconds": round(self._time, 3), "frames": self._blocks,
            "rms_dbfs": round(self.rms_dbfs, 2), "peak_dbfs": round(self.peak_dbfs, 2),
            "silent_fraction": round(self.silent_fraction, 4),
        }


# --- tone detection -----------------------------------------------------------------


@dataclass(frozen=True)
class ToneEvent:
    """A configured frequency that was present; ``duration`` is None while it lasts."""

    freq: float
    level_dbfs: float
    start: float
    duration: float | None = None


class ToneDetector(AudioSink):
    """Goertzel detection of configured frequencies, plus dominant-frequency estimation.

    Audio is analysed in blocks of ``block_ms`` (40 ms: 25 Hz resolution, so
    configured frequencies should be 50 Hz or more apart).  A frequency is
    present in a block when its level is at least ``min_level_dbfs`` and it
    carries at least ``min_fraction`` of the block's energy; it is reported
    (event ``tone``) after ``min_blocks`` such blocks and ends (``tone_end``)
    after as many blocks without it.  :meth:`dominant_frequency` estimates
    the strongest frequency of the last ``analysis_seconds`` (within 2 % for
    a pure tone; see :func:`tones.dominant_frequency`).
    """

    def __init__(self, freqs: Sequence[float] = (), min_level_dbfs: float = -40.0,
                 min_fraction: float = 0.25, block_ms: float = 40.0, min_blocks: int = 2,
                 analysis_seconds: float = 1.0):
        super().__init__()
        self.freqs = tuple(float(f) for f in freqs)
        if any(f <= 0 for f in self.freqs):
            raise ConfigurationError(f"freqs: frequencies must be positive, got {self.freqs}")
        if not 5.0 <= block_ms <= 1000.0:
            raise ConfigurationError(f"block_ms: must be 5..1000 ms, got {block_ms!r}")
        self.min_level_dbfs = min_level_dbfs
        self.min_fraction = min_fraction
        self.block_ms = block_ms
        self.min_blocks = max(1, min_blocks)
        self.analysis_seconds = analysis_seconds
        self.detections: list[ToneEvent] = []
        self.max_level: dict[float, float] = dict.fromkeys(self.freqs, tones.DB_FLOOR)
        self._rate: int | None = None
        self._block = np.zeros(0)
        self._block_start = 0
        self._recent: collections.deque[np.ndarray] = collections.deque()
        self._recent_len = 0
        self._run = dict.fromkeys(self.freqs, 0)
        self._miss = dict.fromkeys(self.freqs, 0)
        self._active: dict[float, ToneEvent] = {}
        self._waiters: list[tuple[float | None, asyncio.Future]] = []
        self._pos = 0
        self._offset = 0.0  # seconds analysed at earlier rates

    def _write(self, frame: av.AudioFrame) -> None:
        self.feed(frame_to_mono(frame), frame.sample_rate)

    def feed(self, x: np.ndarray, rate: int) -> None:
        """Analyse mono samples (frames go through :meth:`write`)."""
        if rate != self._rate:
            self._end_all()
            if self._rate:
                self._offset += self._pos / self._rate
            self._rate, self._block, self._recent, self._recent_len = rate, np.zeros(0), collections.deque(), 0
            self._block_start = self._pos = 0
            self._run = dict.fromkeys(self.freqs, 0)
            self._miss = dict.fromkeys(self.freqs, 0)
        self._remember(x)
        block_n = max(1, round(rate * self.block_ms / 1000.0))
        self._block = np.concatenate((self._block, x)) if self._block.size else np.asarray(x, dtype=np.float64)
        while self._block.size >= block_n:
            block, self._block = self._block[:block_n], self._block[block_n:]
            self._analyse(block, rate, self._block_start)
            self._block_start += block_n
        self._pos += x.size

    def _remember(self, x: np.ndarray) -> None:
        self._recent.append(x)
        self._recent_len += x.size
        limit = int(self.analysis_seconds * (self._rate or 8000))
        while self._recent and self._recent_len - self._recent[0].size >= limit:
            self._recent_len -= self._recent.popleft().size

    def _analyse(self, block: np.ndarray, rate: int, start: int) -> None:
        if not self.freqs:
            return
        mean_square = float(np.dot(block, block)) / block.size
        amps = tones.goertzel(block, self.freqs, rate)
        t = self._offset + start / rate
        for f, a in zip(self.freqs, amps, strict=True):
            level = tones.to_dbfs(float(a) / math.sqrt(2.0))
            self.max_level[f] = max(self.max_level[f], level)
            present = (level >= self.min_level_dbfs and mean_square > 0
                       and (a * a / 2.0) >= self.min_fraction * mean_square)
            if present:
                self._miss[f] = 0
                self._run[f] += 1
                if f not in self._active and self._run[f] >= self.min_blocks:
                    began = t - (self.min_blocks - 1) * block.size / rate
                    event = ToneEvent(f, level, began)
                    self._active[f] = event
                    log.debug("tone %.1f Hz at %.1f dBFS from %.3f s", f, level, began)
                    self.emit("tone", event)
                    self._wake(f)
            else:
                self._run[f] = 0
                if f in self._active:
                    self._miss[f] += 1
                    if self._miss[f] >= self.min_blocks:
                        ended = t - (self.min_blocks - 1) * block.size / rate
                        self._end(f, ended)

    def _end(self, f: float, at: float) -> None:
        event = self._active.pop(f)
        done = ToneEvent(event.freq, event.level_dbfs, event.start, max(0.0, at - event.start))
        self.detections.append(done)
        self.emit("tone_end", done)

    def _end_all(self) -> None:
        if self._rate:
            for f in list(self._active):
                self._end(f, self._offset + self._pos / self._rate)

    def _wake(self, f: float) -> None:
        for want, fut in list(self._waiters):
            if not fut.done() and (want is None or want == f):
                fut.set_result(self._active[f])
                self._waiters.remove((want, fut))

    def present(self) -> list[float]:
        """Configured frequencies detected right now."""
        return sorted(self._active)

    def heard(self, freq: float) -> bool:
        """Whether ``freq`` was detected at any time."""
        return freq in self._active or any(d.freq == freq for d in self.detections)

    async def wait_for(self, freq: float | None = None, timeout: float | None = None,
                       include_past: bool = True) -> ToneEvent:
        """Until ``freq`` (any configured one if None) is detected.

        With ``include_past`` a tone that was already heard (even if it has
        ended) answers at once, so a test cannot miss a short beep.
        """
        for f, event in self._active.items():
            if freq is None or f == freq:
                return event
        if include_past:
            for event in self.detections:
                if freq is None or event.freq == freq:
                    return event
        if freq is not None and freq not in self.freqs:
            raise ConfigurationError(f"freq: {freq} Hz is not among the detector's freqs {self.freqs}")
        fut = asyncio.get_running_loop().create_future()
        entry = (freq, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def dominant_frequency(self, fmin: float = 50.0, fmax: float | None = None) -> tuple[float, float]:
        """(Hz, dBFS) of the strongest frequency in the last ``analysis_seconds``."""
        if not self._recent or not self._rate:
            return 0.0, tones.DB_FLOOR
        return tones.dominant_frequency(np.concatenate(list(self._recent)), self._rate, fmin, fmax)

    def _close(self) -> None:
        self._end_all()


class DtmfDetector(AudioSink):
    """In-band DTMF detection (Goertzel, twist/energy checks, debounce) on a track.

    Emits ``digit_start`` (digit, seconds) when a key goes down and ``dtmf``
    (:class:`softphone.events.DtmfEvent`, via="inband", the same shape as
    digits from SIP INFO and RFC 4733) when it is released; ``events`` keeps
    each :class:`tones.DtmfDigit` (start and duration in seconds of audio) for
    analysis.  Works at any rate >= 8 kHz; thresholds are :class:`tones.DtmfThresholds`.
    """

    def __init__(self, thresholds: tones.DtmfThresholds | None = None, min_on: int = 2, min_off: int = 2,
                 min_duration: float = 0.025):
        super().__init__()
        self.thresholds = thresholds or tones.DtmfThresholds()
        self.min_on, self.min_off, self.min_duration = min_on, min_off, min_duration
        self.events: list[tones.DtmfDigit] = []
        self._decoder: tones.DtmfDecoder | None = None
        self._offset = 0.0
        self._waiters: list[tuple[int, asyncio.Future]] = []

    @property
    def digits(self) -> str:
        return "".join(e.digit for e in self.events)

    def _write(self, frame: av.AudioFrame) -> None:
        self.feed(frame_to_mono(frame), frame.sample_rate)

    def feed(self, x: np.ndarray, rate: int) -> None:
        if self._decoder is None or self._decoder.rate != rate:
            if self._decoder is not None:
                self._emit_done(self._decoder.flush())
                self._offset += self._decoder.position
            self._decoder = tones.DtmfDecoder(rate, self.thresholds, self.min_on, self.min_off, self.min_duration)
        done = self._decoder.feed(x)
        for digit, start in self._decoder.take_started():
            self.emit("digit_start", digit, start + self._offset)
        self._emit_done(done)

    def _emit_done(self, done: list[tones.DtmfDigit]) -> None:
        for d in done:
            d = tones.DtmfDigit(d.digit, d.start + self._offset, d.duration)
            self.events.append(d)
            log.info("DTMF digit %s (%.0f ms)", d.digit, d.duration * 1000)
            self.emit("dtmf", DtmfEvent(d.digit, round(d.duration * 1000), "inband"))
        for want, fut in list(self._waiters):
            if len(self.events) >= want and not fut.done():
                fut.set_result(self.digits)
                self._waiters.remove((want, fut))

    async def wait_digits(self, count: int, timeout: float | None = None) -> str:
        """Until at least ``count`` digits were received; returns all digits so far."""
        if len(self.events) >= count:
            return self.digits
        fut = asyncio.get_running_loop().create_future()
        entry = (count, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _close(self) -> None:
        if self._decoder is not None:
            self._emit_done(self._decoder.flush())
