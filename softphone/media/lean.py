"""The lean media path for load tests: pre-encoded sending, counting-only receiving.

Stock aiortc 1.16 spends most of a call's CPU on thread hand-offs (each frame is
encoded in an executor and decoded in a per-receiver thread that hands frames
back with ``run_coroutine_threadsafe``), on Opus encoding and on a pure-Python
audio-level loop.  A load test only needs realistic RTP on the wire and an
honest account of what came back, so this module:

* encodes an audio file or tone once per codec with aiortc's own encoders
  (:class:`EncodedAudioCache`, shared process-wide), so the bitstream is what
  aiortc would have sent;
* sends those payloads through ``RTCRtpSender``'s supported pre-encoded path
  (a non-``Frame`` object from ``track.recv()`` goes to ``encoder.pack()``, no
  executor, no audio-level loop) paced by the event loop clock
  (:class:`PreEncodedAudioTrack`);
* receives without a decoder thread (:class:`CountingRtpReceiver`): RTP headers
  are counted by :class:`~softphone.media.rtp_counter.RtpStreamCounter`, which
  also feeds aiortc's RTCP receiver reports and ``getStats()``.  Decoding is
  switched on per receiver when something (a recorder, a detector) needs audio;
* releases everything a call holds on hang-up (:func:`release_peer_connection`).

The receiver hook relies on aiortc internals; :func:`check_aiortc_supported`
verifies the version and attributes and raises
:class:`~softphone.errors.AiortcCompatibilityError` otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fractions
import functools
import math
import os
import struct
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiortc
import av
from aiortc import RTCPeerConnection, RTCRtpTransceiver
from aiortc import clock as aiortc_clock
from aiortc.codecs import get_encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpReceiveParameters
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver

from softphone.errors import AiortcCompatibilityError, AudioFileError, CodecError, MediaError
from softphone.log import get_logger
from softphone.media.rtp_counter import RtpStreamCounter, RtpStreamReport

log = get_logger(__name__)

#: aiortc versions whose private receiver attributes the hook below was written against.
TESTED_AIORTC = ((1, 16),)
_RECEIVER_PRIVATE = (
    "_RTCRtpReceiver__codecs",
    "_RTCRtpReceiver__rtx_ssrc",
    "_RTCRtpReceiver__transport",
    "_RTCRtpReceiver__rtcp_task",
    "_RTCRtpReceiver__started",
    "_RTCRtpReceiver__remote_streams",
    "_RTCRtpReceiver__active_ssrc",
)
_RECEIVER_METHODS = ("receive", "stop", "_handle_rtp_packet", "_run_rtcp")

FRAME_SECONDS = 0.02  # every codec here is sent in 20 ms packets, as browsers do
ACTIVE_SSRC_EVERY = 50  # packets between refreshes of the receiver's active-SSRC time


# --- codecs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CodecSpec:
    """What the lean path needs to know about one aiortc audio codec."""

    name: str  # as in SDP: "PCMU", "opus"
    clock_rate: int  # RTP clock (G.722 samples at 16 kHz but clocks at 8 kHz, RFC 3551)
    channels: int

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp increment of one 20 ms packet."""
        return int(self.clock_rate * FRAME_SECONDS)

    @functools.cached_property
    def time_base(self) -> fractions.Fraction:
        # Read for every packet sent: one Fraction per codec, not one per packet.
        return fractions.Fraction(1, self.clock_rate)

    def parameters(self) -> RTCRtpCodecParameters:
        return RTCRtpCodecParameters(mimeType=f"audio/{self.name}", clockRate=self.clock_rate,
                                     channels=self.channels)


CODECS: dict[str, CodecSpec] = {
    spec.name.lower(): spec
    for spec in (
        CodecSpec("PCMU", 8000, 1),
        CodecSpec("PCMA", 8000, 1),
        CodecSpec("G722", 8000, 1),
        CodecSpec("opus", 48000, 2),
    )
}


def codec_spec(name: str) -> CodecSpec:
    """The :class:`CodecSpec` for an SDP codec name or MIME type ("PCMU", "audio/opus")."""
    key = str(name).lower().removeprefix("audio/")
    try:
        return CODECS[key]
    except KeyError:
        raise CodecError(f"codec: {name!r} is not one of {sorted(s.name for s in CODECS.values())}") from None


# --- the encoded-audio cache ----------------------------------------------------------


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


@dataclass(frozen=True, eq=False)
class EncodedAudio:
    """One source encoded once for one codec: a tuple of 20 ms RTP payloads."""

    source: str
    codec: CodecSpec
    payloads: tuple[bytes, ...]

    @property
    def frames(self) -> int:
        return len(self.payloads)

    @property
    def seconds(self) -> float:
        return len(self.payloads) * FRAME_SECONDS

    @property
    def nbytes(self) -> int:
        """Payload bytes held (what the cache costs, give or take object headers)."""
        return sum(len(p) for p in self.payloads)

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


# --- sending --------------------------------------------------------------------------


class EncodedPacket:
    """What ``RTCRtpSender`` hands to ``encoder.pack()``: bytes, ``pts`` and ``time_base``.

    aiortc's encoders only read those three, so this stands in for ``av.Packet``
    without allocating an FFmpeg packet per frame.
    """

    __slots__ = ("payload", "pts", "time_base")

    def __init__(self, payload: bytes, pts: int, time_base: fractions.Fraction) -> None:
        self.payload = payload
        self.pts = pts
        self.time_base = time_base

    def __bytes__(self) -> bytes:
        return self.payload


class FramePacer:
    """Wakes every track of one event loop from one timer per 2 ms slot.

    ``asyncio.sleep`` per packet costs a timer-heap entry and a callback per
    track (about 14 us per wake here); sharing one timer per slot among all
    tracks due in it costs about 6 us.  Tracks wake up to one slot late, a
    constant offset for each track (20 ms is a whole number of slots), so it adds
    no jitter.  Each waiter gets its own future, so cancelling one task never
    wakes or cancels another.
    """

    SLOT = 0.002

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[asyncio.Future]] = {}

    def sleep_until(self, deadline: float) -> asyncio.Future:
        """A future done at the first slot boundary at or after ``deadline`` (loop time)."""
        key = math.ceil(deadline / self.SLOT)
        waiters = self._slots.get(key)
        if waiters is None:
            waiters = self._slots[key] = []
            self._loop.call_at(key * self.SLOT, self._fire, key)
        future = self._loop.create_future()
        waiters.append(future)
        return future

    def _fire(self, key: int) -> None:
        for future in self._slots.pop(key, ()):
            if not future.done():
                future.set_result(None)

    @property
    def pending(self) -> int:
        return sum(len(w) for w in self._slots.values())


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FramePacer] = weakref.WeakKeyDictionary()


def frame_pacer(loop: asyncio.AbstractEventLoop | None = None) -> FramePacer:
    """The running loop's shared :class:`FramePacer`."""
    loop = loop or asyncio.get_running_loop()
    pacer = _pacers.get(loop)
    if pacer is None:
        pacer = _pacers[loop] = FramePacer(loop)
    return pacer


class PlaybackState(enum.Enum):
    WAITING = "waiting"  # no packet asked for yet (codec may still be unknown)
    PLAYING = "playing"
    ENDED = "ended"


class PreEncodedAudioTrack(MediaStreamTrack):
    """An audio track that yields pre-encoded 20 ms packets paced by the loop clock.

    The codec is taken from ``codec`` or, when the track is :meth:`bind`-ed to a
    transceiver, from the codec negotiated for it (known by the time the sender
    asks for the first packet).  ``repeat`` loops the source; otherwise the track
    ends after the last packet and the sender stops.
    """

    kind = "audio"

    #: When the loop falls this far behind, skip the missed frames rather than send a burst.
    MAX_LAG = 0.2

    def __init__(self, source: AudioSource, *, codec: str | None = None, repeat: bool = True,
                 cache: EncodedAudioCache | None = None) -> None:
        super().__init__()
        self._source = source
        self._cache = cache or shared_cache()
        self._codec = codec_spec(codec) if codec else None
        self._repeat = repeat
        self._transceiver: weakref.ref[RTCRtpTransceiver] | None = None
        self._audio: EncodedAudio | None = None
        self._index = 0
        self._start = 0.0
        self.state = PlaybackState.WAITING
        self.packets_sent = 0
        self.frames_skipped = 0

    def bind(self, transceiver: RTCRtpTransceiver) -> PreEncodedAudioTrack:
        """Follow ``transceiver``'s negotiated codec (weakly: no reference cycle)."""
        self._transceiver = weakref.ref(transceiver)
        from softphone.media.lean_sender import install_lean_sender, lean_sender_enabled

        if lean_sender_enabled():
            install_lean_sender(transceiver)
        return self

    @property
    def audio(self) -> EncodedAudio | None:
        return self._audio

    def _negotiated_codec(self) -> CodecSpec:
        if self._codec is not None:
            return self._codec
        transceiver = self._transceiver() if self._transceiver else None
        codecs = getattr(transceiver, "_codecs", None) if transceiver is not None else None
        if not codecs:
            raise MediaError("PreEncodedAudioTrack: no codec given and none negotiated yet "
                             "(pass codec= or bind() the track to its transceiver)")
        return codec_spec(codecs[0].mimeType)

    async def prepare(self) -> EncodedAudio:
        """Fetch (or encode) the audio and start the playback clock; idempotent."""
        audio = self._audio
        if audio is None:
            audio = await self._cache.aget(self._source, self._negotiated_codec())
            if self._audio is None:
                self._audio = audio
                self._start = asyncio.get_running_loop().time()
                self.state = PlaybackState.PLAYING
        return self._audio

    def align_start(self, at: float) -> bool:
        """Start the playback clock at loop time ``at`` instead, if no packet was taken yet.

        The lean sender uses it to spread calls over the 20 ms frame (see
        :meth:`~softphone.media.lean_sender.LeanSendDriver.start_phase`).
        """
        if self._audio is None or self._index or self.packets_sent:
            return False
        self._start = at
        return True

    @property
    def due(self) -> float:
        """Loop time at which the next packet is due (valid once prepared)."""
        return self._start + self._index * FRAME_SECONDS

    def take(self, now: float) -> tuple[bytes, int]:
        """The next payload and its pts (RTP ticks from the start), skipping frames if ``now``
        is far past due; raises ``MediaStreamError`` once a non-repeating source is done.

        The lean RTP sender calls this from its shared timer; :meth:`recv` after waiting.
        """
        audio = self._audio
        if audio is None or self.readyState != "live":
            raise MediaStreamError
        wait = self._start + self._index * FRAME_SECONDS - now
        if wait < -self.MAX_LAG:
            # Starved loop: drop the frames whose time has passed, as a live source
            # would, instead of flooding the far end; RTP timestamps keep real time.
            skipped = int(-wait / FRAME_SECONDS)
            self._index += skipped
            self.frames_skipped += skipped
        index = self._index
        payloads = audio.payloads
        if index >= len(payloads) and not self._repeat:
            self.stop()
            raise MediaStreamError
        self._index = index + 1
        self.packets_sent += 1
        return payloads[index % len(payloads)], index * audio.codec.frame_ticks

    async def recv(self) -> EncodedPacket:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._audio is None:
            await self.prepare()
        else:
            due = self._start + self._index * FRAME_SECONDS
            if due > loop.time():
                await frame_pacer(loop).sleep_until(due)
        payload, pts = self.take(loop.time())
        return EncodedPacket(payload, pts, self._audio.codec.time_base)

    def stop(self) -> None:
        self.state = PlaybackState.ENDED
        self._transceiver = None
        super().stop()


# --- receiving ------------------------------------------------------------------------


def check_aiortc_supported(receiver: RTCRtpReceiver | None = None) -> None:
    """Raise :class:`AiortcCompatibilityError` unless the receiver hook fits this aiortc."""
    version = tuple(int(x) for x in aiortc.__version__.split(".")[:2] if x.isdigit())
    missing = [m for m in _RECEIVER_METHODS if not hasattr(RTCRtpReceiver, m)]
    if receiver is not None:
        missing += [a for a in _RECEIVER_PRIVATE if not hasattr(receiver, a)]
    if version not in TESTED_AIORTC or missing:
        tested = ", ".join(".".join(map(str, v)) for v in TESTED_AIORTC)
        raise AiortcCompatibilityError(
            f"aiortc {aiortc.__version__}: the counting receiver is written for aiortc {tested}"
            + (f"; missing {', '.join(missing)}" if missing else "")
        )


class CountingRtpReceiver(RTCRtpReceiver):
    """An ``RTCRtpReceiver`` that counts RTP and, unless asked to, never decodes.

    Installed on an existing receiver by :func:`install_counting_receiver`
    (aiortc creates receivers itself).  In both modes the per-SSRC statistics
    are :class:`RtpStreamCounter` objects placed where aiortc keeps its own, so
    RTCP receiver reports (and thus the far end's RTT and loss) and
    ``getStats()`` keep working.  Without decoding there is no decoder thread,
    no jitter buffer and the remote track never yields frames; it ends when the
    receiver stops.
    """

    _lean_decode: bool
    unknown_payload_type: int

    #: Decoded frames kept for a slow or absent reader (1 s): older ones are dropped.
    DECODED_BACKLOG = 50

    # Private aiortc state is reached by its mangled names; check_aiortc_supported()
    # has verified they exist before any instance gets this class.

    @property
    def decoding(self) -> bool:
        return self._lean_decode

    @property
    def frames_dropped(self) -> int:
        """Decoded frames dropped because nobody read them in time."""
        queue = getattr(self._track, "_queue", None)
        return queue.dropped if isinstance(queue, DroppingFrameQueue) else 0

    @property
    def counters(self) -> dict[int, RtpStreamCounter]:
        """Per-SSRC counters (a copy of the mapping)."""
        return dict(self._RTCRtpReceiver__remote_streams)

    def report(self) -> RtpStreamReport:
        """Summed figures over every SSRC this receiver has seen."""
        total = RtpStreamReport()  # unknown payload types are in the counters too
        for counter in self._RTCRtpReceiver__remote_streams.values():
            if isinstance(counter, RtpStreamCounter):
                total = total + counter.report()
        return total

    def _counter(self, ssrc: int, codec: RTCRtpCodecParameters | None) -> RtpStreamCounter:
        streams = self._RTCRtpReceiver__remote_streams
        counter = streams.get(ssrc)
        if counter is None:
            if codec is None:
                codecs = self._RTCRtpReceiver__codecs
                codec = next(iter(codecs.values())) if codecs else None
            counter = streams[ssrc] = RtpStreamCounter(codec.clockRate if codec else 8000)
        return counter

    async def receive(self, parameters: RTCRtpReceiveParameters) -> None:
        if self._lean_decode:
            track = self._track
            if isinstance(track, RemoteStreamTrack):
                # In place: a reader may already be waiting on this very queue.
                DroppingFrameQueue.bound(track._queue, self.DECODED_BACKLOG)
            await super().receive(parameters)
            return
        if self._RTCRtpReceiver__started:
            return
        codecs = self._RTCRtpReceiver__codecs
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._RTCRtpReceiver__rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        # Same as RTCRtpReceiver.receive() minus the decoder thread.
        self._RTCRtpReceiver__transport._register_rtp_receiver(self, parameters)
        self._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(self._run_rtcp())
        self._RTCRtpReceiver__started = True

    def _count_rtp(self, packet) -> bool:
        """Account for one packet; True when it goes on to aiortc's decoding path.

        Synchronous so that the fast receive path can count without a coroutine.
        """
        if not self._enabled:
            return False
        codec = self._RTCRtpReceiver__codecs.get(packet.payload_type)
        counter = self._counter(packet.ssrc, codec)
        if codec is None:
            # aiortc drops these before its statistics, yet they used sequence numbers.
            self.unknown_payload_type += 1
            counter.unexpected_payload_type += 1
            counter.add(packet)
            return False
        if self._lean_decode:
            return True  # aiortc's path counts it via the counter
        counter.add(packet)
        if counter.packets_received % ACTIVE_SSRC_EVERY == 1:
            # getSynchronizationSources() looks 10 s back: once a second is plenty.
            self._RTCRtpReceiver__active_ssrc[packet.ssrc] = aiortc_clock.current_datetime()
        return False

    async def _handle_rtp_packet(self, packet, arrival_time_ms: int) -> None:
        if self._count_rtp(packet):
            await super()._handle_rtp_packet(packet, arrival_time_ms)

    async def stop(self) -> None:
        await super().stop()
        if not self._lean_decode:
            _end_remote_track(self._track)


class DroppingFrameQueue(asyncio.Queue):
    """The remote track's frame queue, bounded: when full the oldest frame goes.

    aiortc's decoder thread puts every decoded frame into an unbounded queue;
    when the reader (a recorder, a detector) stops or falls behind, memory grows
    by the call's whole decoded audio (190 KB/s for Opus).  The end-of-stream
    ``None`` is always kept.
    """

    maxframes: int
    dropped: int

    def __init__(self, maxframes: int) -> None:
        super().__init__()
        self.maxframes = maxframes
        self.dropped = 0

    @classmethod
    def bound(cls, queue: asyncio.Queue, maxframes: int) -> DroppingFrameQueue:
        """Bound an existing ``asyncio.Queue`` in place (readers already waiting keep waiting on it)."""
        if not isinstance(queue, cls):
            if type(queue) is not asyncio.Queue:
                raise AiortcCompatibilityError(
                    f"remote track queue: expected asyncio.Queue, got {type(queue).__name__}")
            queue.__class__ = cls
            queue.dropped = 0
        queue.maxframes = maxframes
        return queue  # type: ignore[return-value]

    def put_nowait(self, item) -> None:
        if item is not None:
            while self.qsize() >= self.maxframes:
                super().get_nowait()
                self.dropped += 1
        super().put_nowait(item)

    async def put(self, item) -> None:
        self.put_nowait(item)


def _end_remote_track(track: MediaStreamTrack | None) -> None:
    """Drop queued frames and end a remote track so nothing waits on it forever."""
    if not isinstance(track, RemoteStreamTrack):
        return
    queue = track._queue
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)  # a consumer blocked in recv() gets MediaStreamError
    track.stop()


def install_counting_receiver(receiver: RTCRtpReceiver, *, decode: bool = False) -> CountingRtpReceiver:
    """Turn aiortc's receiver into a :class:`CountingRtpReceiver`; must precede negotiation.

    Install it before other hooks that capture ``receiver._handle_rtp_packet``
    (the RFC 4733 receiver does), so they call the counting version.
    """
    if isinstance(receiver, CountingRtpReceiver):
        receiver._lean_decode = decode
        return receiver
    if type(receiver) is not RTCRtpReceiver:
        raise AiortcCompatibilityError(
            f"receiver: expected aiortc's RTCRtpReceiver, got {type(receiver).__name__}")
    check_aiortc_supported(receiver)
    if receiver._RTCRtpReceiver__started:
        raise MediaError("receiver: already receiving; install the counting receiver before "
                         "the description that starts media is applied")
    receiver.__class__ = CountingRtpReceiver
    receiver._lean_decode = decode
    receiver.unknown_payload_type = 0
    return receiver  # type: ignore[return-value]


# --- per-call cleanup -----------------------------------------------------------------


async def release_peer_connection(pc: RTCPeerConnection, *, timeout: float = 5.0) -> None:
    """Close ``pc`` and let go of everything the call allocated.

    ``pc.close()`` stops transceivers and transports and removes its own
    listeners, but leaves frames a decoding receiver queued for a remote track
    nobody read (unbounded: the biggest leak in practice), and our tracks bound.
    Safe to call twice.
    """
    transceivers = pc.getTransceivers()
    for transceiver in transceivers:
        track = transceiver.sender.track
        if track is not None:
            track.stop()
    try:
        await asyncio.wait_for(pc.close(), timeout)
    except TimeoutError:
        log.warning("peer connection did not close within %.1f s; dropping it anyway", timeout)
    for transceiver in transceivers:
        _end_remote_track(transceiver.receiver.track)
        with contextlib.suppress(Exception):
            transceiver.sender.replaceTrack(None)


# --- loopback-only ICE ----------------------------------------------------------------


@contextlib.contextmanager
def loopback_host_candidates() -> Iterator[None]:
    """Gather host candidates on 127.0.0.1 only, for single-machine tests and benchmarks.

    aioice skips 127.0.0.1 and uses every other interface address; on a shared
    test box calls must stay on loopback.  Patches ``aioice.ice.get_host_addresses``
    for the duration (process-wide: use it in test/bench processes, not in agents).
    """
    import aioice.ice

    original = aioice.ice.get_host_addresses

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


# --- a call between two peer connections in one process --------------------------------


@dataclass
class CallLeg:
    """One side of a :class:`LoopbackCall`."""

    pc: RTCPeerConnection
    transceiver: RTCRtpTransceiver
    track: MediaStreamTrack | None

    @property
    def receiver(self) -> RTCRtpReceiver:
        return self.transceiver.receiver

    def report(self) -> RtpStreamReport:
        receiver = self.transceiver.receiver
        if not isinstance(receiver, CountingRtpReceiver):
            raise MediaError("report: this leg's receiver is stock aiortc (open the call with counting=True)")
        return receiver.report()


@dataclass
class LoopbackCall:
    """Two peer connections in one process talking over loopback: tests and benchmarks.

    Load tests of the media path need many calls without a SIP server; this is
    exactly the offer/answer a SIP call performs, minus the signalling transport.
    """

    caller: CallLeg
    callee: CallLeg

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.gather(release_peer_connection(self.caller.pc, timeout=timeout),
                             release_peer_connection(self.callee.pc, timeout=timeout))


def _codec_preferences(codec: str) -> list:
    from aiortc import RTCRtpSender

    spec = codec_spec(codec)
    caps = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() == spec.name.lower()]
    if not caps:
        raise CodecError(f"codec: aiortc {aiortc.__version__} cannot send {spec.name}")
    return caps


async def open_loopback_call(codec: str, caller_track: MediaStreamTrack | None,
                             callee_track: MediaStreamTrack | None, *, counting: bool = True,
                             caller_decode: bool = False, callee_decode: bool = False,
                             configuration=None, connect_timeout: float = 10.0,
                             fastpath: bool = True) -> LoopbackCall:
    """Negotiate ``codec`` between two new peer connections and wait until both are connected.

    ``counting`` installs :class:`CountingRtpReceiver` on both sides (decoding
    only where ``*_decode``); ``counting=False`` leaves aiortc's stock receivers.
    ``configuration`` defaults to no ICE servers at all (never a public STUN).
    ``fastpath`` installs :func:`softphone.media.fastpath.enable_fastpath` on both.
    Wrap in :func:`loopback_host_candidates` to keep the candidates on 127.0.0.1.
    """
    from aiortc import RTCConfiguration

    if configuration is None:
        configuration = RTCConfiguration(iceServers=[])
    caps = _codec_preferences(codec)
    a = RTCPeerConnection(configuration)
    b = RTCPeerConnection(configuration)
    if fastpath:
        from softphone.media.fastpath import enable_fastpath

        enable_fastpath(a)
        enable_fastpath(b)
    try:
        ta = a.addTransceiver(caller_track or "audio", direction="sendrecv" if caller_track else "recvonly")
        ta.setCodecPreferences(caps)
        if counting:
            install_counting_receiver(ta.receiver, decode=caller_decode)
        if isinstance(caller_track, PreEncodedAudioTrack):
            caller_track.bind(ta)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        tb = b.getTransceivers()[0]
        if counting:
            install_counting_receiver(tb.receiver, decode=callee_decode)
        if callee_track is not None:
            tb.sender.replaceTrack(callee_track)
            tb.direction = "sendrecv"
            if isinstance(callee_track, PreEncodedAudioTrack):
                callee_track.bind(tb)
        else:
            tb.direction = "recvonly"
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(_connected(a, b), connect_timeout)
    except BaseException:
        await asyncio.gather(release_peer_connection(a), release_peer_connection(b),
                             return_exceptions=True)
        raise
    return LoopbackCall(CallLeg(a, ta, caller_track), CallLeg(b, tb, callee_track))


async def _connected(*pcs: RTCPeerConnection) -> None:
    while True:
        states = [pc.connectionState for pc in pcs]
        if all(s == "connected" for s in states):
            return
        if any(s in ("failed", "closed") for s in states):
            raise MediaError(f"loopback call: connection state {states}")
        await asyncio.sleep(0.01)
