"""Audio encoded once per codec and shared by every call that plays it.

A load test only needs realistic RTP on the wire, so a file or tone is run
through aiortc's own encoder once per codec (:class:`EncodedAudioCache`, shared
process-wide): the bitstream is what aiortc would have sent, and hundreds of
calls playing the same prompt share one tuple of payloads.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import os
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
from aiortc.codecs import get_encoder

from softphone.errors import AudioFileError, CodecError
from softphone.log import get_logger
from softphone.media.codecs import FRAME_SECONDS, CodecSpec, codec_spec

log = get_logger(__name__)


@dataclass(frozen=True)
class Tone:
    """A synthetic sine source, so benchmarks and tests need no audio file."""

    frequency: float = 440.0
    seconds: float = 1.0
    amplitude: float = 0.5  # of full scale
    sample_rate: int = 48000

    def __post_init__(self) -> None:
        if not 0 < self.frequency < self.sample_rate / 2:
            raise ValueError(f"frequency: {self.frequency} Hz is outside (0, Nyquist)")
        if not self.seconds > 0:
            raise ValueError(f"seconds: must be > 0, got {self.seconds}")
        if not 0 < self.amplitude <= 1:
            raise ValueError(f"amplitude: must be in (0, 1], got {self.amplitude}")

    def frames(self) -> Iterator[av.AudioFrame]:
        """20 ms s16 mono frames of the tone."""
        per_frame = int(self.sample_rate * FRAME_SECONDS)
        total = int(self.sample_rate * self.seconds)
        step = 2 * math.pi * self.frequency / self.sample_rate
        peak = 32767 * self.amplitude
        for start in range(0, total - per_frame + 1, per_frame):
            samples = [int(peak * math.sin(step * n)) for n in range(start, start + per_frame)]
            frame = av.AudioFrame(format="s16", layout="mono", samples=per_frame)
            frame.planes[0].update(struct.pack(f"<{per_frame}h", *samples))
            frame.sample_rate = self.sample_rate
            frame.pts = start
            frame.time_base = fractions.Fraction(1, self.sample_rate)
            yield frame


AudioSource = str | os.PathLike | Tone


#: Packet durations a pre-encoded track can send (``ptime``), in milliseconds.
PTIMES_MS = (20, 40, 60)
#: Codecs whose payloads can simply be joined into longer packets (sample-based, RFC 3551).
_JOINABLE = {"pcmu", "pcma", "g722"}


@dataclass(frozen=True, eq=False)
class EncodedAudio:
    """One source encoded once for one codec: a tuple of RTP payloads of ``frame_seconds`` each."""

    source: str
    codec: CodecSpec
    payloads: tuple[bytes, ...]
    frame_seconds: float = FRAME_SECONDS
    _packetized: dict = field(default_factory=dict, repr=False)

    @property
    def frames(self) -> int:
        return len(self.payloads)

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp increment of one packet."""
        return round(self.codec.clock_rate * self.frame_seconds)

    @property
    def seconds(self) -> float:
        return len(self.payloads) * self.frame_seconds

    @property
    def nbytes(self) -> int:
        """Payload bytes held (what the cache costs, give or take object headers)."""
        return sum(len(p) for p in self.payloads)

    def packetized(self, ptime_ms: int) -> EncodedAudio:
        """The same audio in ``ptime_ms`` packets (20 ms packets joined), made once and kept.

        A load-test lever: 40 or 60 ms packets halve or third the packets per second
        (and the CPU they cost) at the price of realism: browsers send 20 ms.  Only
        sample-based codecs (G.711, G.722) can be joined this way; Opus packets would
        need repacketizing (RFC 6716 code 3), which is not done here.
        """
        if ptime_ms not in PTIMES_MS:
            raise CodecError(f"ptime: {ptime_ms} ms is not one of {PTIMES_MS}")
        if ptime_ms == round(self.frame_seconds * 1000):
            return self
        if self.frame_seconds != FRAME_SECONDS or self.codec.name.lower() not in _JOINABLE:
            raise CodecError(f"ptime: {ptime_ms} ms packets need a sample-based codec (PCMU, PCMA, G722), "
                             f"not {self.codec.name}")
        done = self._packetized.get(ptime_ms)
        if done is None:
            k = ptime_ms // 20
            whole = len(self.payloads) - len(self.payloads) % k or len(self.payloads)
            joined = tuple(b"".join(self.payloads[i:i + k]) for i in range(0, whole, k))
            done = self._packetized[ptime_ms] = EncodedAudio(self.source, self.codec, joined, ptime_ms / 1000)
        return done

    def __repr__(self) -> str:
        return f"EncodedAudio({self.source!r}, {self.codec.name}, {self.frames} frames, {self.nbytes} B)"


def _source_key(source: AudioSource) -> tuple:
    if isinstance(source, Tone):
        return ("tone", source)
    path = Path(source)
    try:
        st = path.stat()
    except OSError as exc:
        raise AudioFileError(f"audio file {str(path)!r}: {exc.strerror or exc}") from exc
    # A file rewritten in place gets a new entry rather than stale audio.
    return ("file", str(path.resolve()), st.st_mtime_ns, st.st_size)


def _file_frames(path: str) -> Iterator[av.AudioFrame]:
    """The file's audio as s16 mono frames at its own sample rate."""
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as exc:
        raise AudioFileError(f"audio file {path!r}: cannot open ({exc})") from exc
    try:
        if not container.streams.audio:
            raise AudioFileError(f"audio file {path!r}: has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=stream.codec_context.sample_rate)
        try:
            for frame in container.decode(stream):
                yield from resampler.resample(frame)
        except av.FFmpegError as exc:
            raise AudioFileError(f"audio file {path!r}: cannot decode ({exc})") from exc
        yield from resampler.resample(None)
    finally:
        container.close()


def encode_source(source: AudioSource, codec: CodecSpec) -> EncodedAudio:
    """Run ``source`` through aiortc's own encoder for ``codec`` (the expensive part, done once)."""
    encoder = get_encoder(codec.parameters())
    frames: Iterable[av.AudioFrame] = source.frames() if isinstance(source, Tone) else _file_frames(
        os.fspath(source))
    payloads: list[bytes] = []
    for frame in frames:
        encoded, _timestamp = encoder.encode(frame)
        payloads.extend(encoded)
    label = f"tone {source.frequency:g} Hz {source.seconds:g} s" if isinstance(source, Tone) else os.fspath(source)
    if not payloads:
        raise AudioFileError(f"audio source {label!r}: shorter than one 20 ms frame")
    return EncodedAudio(source=label, codec=codec, payloads=tuple(payloads))


class EncodedAudioCache:
    """Process-wide store of :class:`EncodedAudio`, one encoding per (source, codec).

    Hundreds of calls playing the same prompt share one tuple of payloads; the
    encoded bytes are immutable so sharing across calls, tasks and event loops is
    safe.  ``encodes`` counts actual encoder runs (tests and reports use it).
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, EncodedAudio] = {}
        self._lock = threading.Lock()
        self._encoding: dict[tuple, threading.Event] = {}
        self.encodes = 0

    def get(self, source: AudioSource, codec: str | CodecSpec) -> EncodedAudio:
        """The encoded audio, encoding it on first use (blocking; see :meth:`aget`)."""
        spec = codec if isinstance(codec, CodecSpec) else codec_spec(codec)
        key = (_source_key(source), spec.name)
        while True:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None:
                    return entry
                pending = self._encoding.get(key)
                if pending is None:
                    pending = self._encoding[key] = threading.Event()
                    owner = True
                else:
                    owner = False
            if not owner:
                pending.wait(60)
                continue
            try:
                entry = encode_source(source, spec)
                with self._lock:
                    self._entries[key] = entry
                    self.encodes += 1
                log.info("encoded %r (%d B)", entry, entry.nbytes)
                return entry
            finally:
                with self._lock:
                    self._encoding.pop(key, None)
                pending.set()

    async def aget(self, source: AudioSource, codec: str | CodecSpec) -> EncodedAudio:
        """Like :meth:`get`, encoding in a worker thread so the event loop keeps running."""
        spec = codec if isinstance(codec, CodecSpec) else codec_spec(codec)
        with self._lock:
            entry = self._entries.get((_source_key(source), spec.name))
        if entry is not None:
            return entry
        return await asyncio.get_running_loop().run_in_executor(None, self.get, source, spec)

    @property
    def memory_bytes(self) -> int:
        """Payload bytes held by all entries."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def entries(self) -> list[EncodedAudio]:
        with self._lock:
            return list(self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_shared_cache = EncodedAudioCache()


def shared_cache() -> EncodedAudioCache:
    """The process-wide cache every call uses unless given another."""
    return _shared_cache
