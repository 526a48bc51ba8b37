"""Audio sources: aiortc audio tracks that play files, tones, DTMF and silence.

Every source is a :class:`aiortc.MediaStreamTrack` (kind ``audio``) whose
``recv()`` returns 20 ms ``av.AudioFrame``s in ``s16`` (mono by default, 48 kHz
by default as aiortc's Opus path wants; aiortc resamples for PCMU) with
``pts`` counted in samples and ``time_base = 1/rate``.  Pacing copies aiortc's
``AudioStreamTrack``: frame *k* is due at ``start + k * ptime`` and ``recv``
sleeps until then, so a late frame does not shift the ones after it.  The
clock is monotonic (aiortc uses wall-clock time, which would stall or burst
when the system clock is stepped).
``realtime=False`` skips the sleeping (tests, offline rendering).

Content is pulled with :meth:`AudioSource.read`, which is not paced; that is
how :class:`PlaylistSource` and :class:`SwitchableSource` compose other
sources without stealing their frames, and what fast tests call directly.

When finite content ends (a file played once, a tone with a duration) the
source becomes ``FINISHED``: ``await source.played()`` returns, the ``played``
event fires, and the track either stays live with silence
(``on_end=EndBehavior.SILENCE``, the default, so the call keeps its RTP
stream) or ends (``EndBehavior.STOP``: the next ``recv`` raises
``MediaStreamError`` as aiortc expects).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import fractions
import os
import time
import wave
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.errors import AudioFileError, ConfigurationError
from softphone.log import get_logger
from softphone.media import tones
from softphone.media.sinks import FrameConverter

log = get_logger(__name__)

DEFAULT_RATE = 48000
DEFAULT_PTIME = 0.020
_LAYOUTS = {1: "mono", 2: "stereo"}

FrameTap = Callable[[av.AudioFrame], None]

#: In-band DTMF samples (the generator lives with the other signal functions in ``tones``).
dtmf_samples = tones.dtmf_samples


class EndBehavior(enum.Enum):
    """What the track does once finite content has been played."""

    SILENCE = "silence"   # stay live, send silence (the call keeps its media)
    STOP = "stop"         # end the track (MediaStreamError on the next recv)


class SourceState(enum.Enum):
    IDLE = "idle"            # no frame produced yet
    PLAYING = "playing"      # content is being produced
    FINISHED = "finished"    # content done (or failed); silence if still live
    ENDED = "ended"          # the track was stopped


class AudioSource(MediaStreamTrack):
    """Base of all sources: format, pacing, end handling, taps.

    Subclasses implement :meth:`_produce` (and :meth:`_rewind` if they can
    restart).  ``clock``/``sleep`` are injectable so pacing can be tested
    without waiting.
    """

    kind = "audio"

    def __init__(self, *, sample_rate: int = DEFAULT_RATE, channels: int = 1,
                 ptime: float = DEFAULT_PTIME, realtime: bool = True,
                 on_end: EndBehavior | str = EndBehavior.SILENCE,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep):
        super().__init__()
        self._check_format(sample_rate, channels)
        if not 0.005 <= ptime <= 0.12:
            raise ConfigurationError(f"ptime: must be between 0.005 and 0.12 s, got {ptime!r}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.ptime = float(ptime)
        self.realtime = realtime
        self.on_end = EndBehavior(on_end)
        self._clock = clock
        self._sleep = sleep
        self.state = SourceState.IDLE
        self.frames_sent = 0
        self.error: BaseException | None = None
        self._start: float | None = None
        self._timestamp = 0
        self._taps: list[FrameTap] = []
        self._played_result: bool | None = None
        self._played_waiters: list[asyncio.Future] = []

    # --- format -----------------------------------------------------------------

    @staticmethod
    def _check_format(sample_rate: int, channels: int) -> None:
        if not 8000 <= int(sample_rate) <= 192000:
            raise ConfigurationError(f"sample_rate: must be 8000..192000 Hz, got {sample_rate!r}")
        if channels not in _LAYOUTS:
            raise ConfigurationError(f"channels: must be 1 or 2, got {channels!r}")

    @property
    def samples_per_frame(self) -> int:
        return round(self.sample_rate * self.ptime)

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one sample on all channels (s16 interleaved)."""
        return 2 * self.channels

    @property
    def layout(self) -> str:
        return _LAYOUTS[self.channels]

    def set_format(self, sample_rate: int, channels: int) -> None:
        """Change the PCM format :meth:`read` produces (composites align their parts)."""
        self._check_format(sample_rate, channels)
        if (sample_rate, channels) != (self.sample_rate, self.channels):
            old_rate, old_channels = self.sample_rate, self.channels
            self.sample_rate, self.channels = int(sample_rate), int(channels)
            # Keep pacing on the same wall-clock schedule: the timestamp counts samples.
            self._timestamp = round(self._timestamp * self.sample_rate / old_rate)
            self._format_changed(old_rate, old_channels)

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        """Hook: convert buffered content and positions to the new format."""

    # --- content ----------------------------------------------------------------

    def _produce(self, n: int) -> bytes:
        """Up to ``n`` samples of s16 PCM in the current format; fewer means the end."""
        raise NotImplementedError

    def _rewind(self) -> None:
        """Hook: restart content from the beginning."""
        raise ConfigurationError(f"{type(self).__name__} cannot be restarted")

    def read(self, n: int) -> bytes:
        """Up to ``n`` samples (unpaced).  Fewer than ``n`` means the content ended."""
        if self.state in (SourceState.FINISHED, SourceState.ENDED) or n <= 0:
            return b""
        self.state = SourceState.PLAYING
        try:
            data = self._produce(n)
        except AudioFileError as exc:
            log.error("%s: %s; continuing as finished", type(self).__name__, exc)
            self._finish(exc)
            return b""
        if len(data) < n * self.bytes_per_sample or self._at_end():
            self._finish(None)
        return data

    def _at_end(self) -> bool:
        """Hook: True when the content is known to be exhausted (so ``played`` fires on time)."""
        return False

    def reset(self) -> None:
        """Play the content again from the start (pacing and pts continue)."""
        if self.state is SourceState.ENDED:
            raise ConfigurationError(f"{type(self).__name__}: a stopped track cannot be reset")
        self._rewind()
        self.error = None
        self.state = SourceState.IDLE
        self._played_result = None

    @property
    def finished(self) -> bool:
        return self.state in (SourceState.FINISHED, SourceState.ENDED)

    def _finish(self, error: BaseException | None) -> None:
        if self.state in (SourceState.FINISHED, SourceState.ENDED):
            return
        self.state = SourceState.FINISHED
        self.error = error
        self._played_result = error is None
        log.debug("%s finished (%s)", type(self).__name__, "error" if error else "complete")
        self.emit("played", error)
        self._wake_played()

    def _wake_played(self) -> None:
        waiters, self._played_waiters = self._played_waiters, []
        for fut in waiters:
            if fut.done():
                continue
            if self.error is not None:
                fut.set_exception(self.error)
            else:
                fut.set_result(bool(self._played_result))

    async def played(self, timeout: float | None = None) -> bool:
        """Wait until the content has been played (True) or the track stopped first (False).

        Raises the :class:`AudioFileError` if the content failed to decode.
        """
        if self._played_result is not None:
            if self.error is not None:
                raise self.error
            return self._played_result
        fut = asyncio.get_running_loop().create_future()
        self._played_waiters.append(fut)
        return await asyncio.wait_for(fut, timeout)

    # --- taps -------------------------------------------------------------------

    def add_tap(self, tap: FrameTap) -> None:
        """Call ``tap(frame)`` with every frame this track sends (local recording, meters)."""
        self._taps.append(tap)

    def remove_tap(self, tap: FrameTap) -> None:
        if tap in self._taps:
            self._taps.remove(tap)

    # --- the track --------------------------------------------------------------

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        n = self.samples_per_frame
        if self._start is None:
            self._start = self._clock()
            self._timestamp = 0
        else:
            self._timestamp += n
            if self.realtime:
                wait = self._start + self._timestamp / self.sample_rate - self._clock()
                if wait > 0:
                    await self._sleep(wait)
            if self.readyState != "live":
                raise MediaStreamError
        if self.finished and self.on_end is EndBehavior.STOP:
            self.stop()
            raise MediaStreamError
        data = self.read(n)
        if not data and self.finished and self.on_end is EndBehavior.STOP:
            self.stop()
            raise MediaStreamError
        frame = self._make_frame(data, n)
        self.frames_sent += 1
        for tap in list(self._taps):
            try:
                tap(frame)
            except Exception:
                log.exception("%s: frame tap %r failed; removing it", type(self).__name__, tap)
                self.remove_tap(tap)
        return frame

    def _make_frame(self, data: bytes, n: int) -> av.AudioFrame:
        need = n * self.bytes_per_sample
        if len(data) < need:
            data = data + bytes(need - len(data))
        frame = av.AudioFrame(format="s16", layout=self.layout, samples=n)
        frame.planes[0].update(data)
        frame.pts = self._timestamp
        frame.sample_rate = self.sample_rate
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            was_playing = self._played_result is None
            self.state = SourceState.ENDED
            if was_playing:
                self._played_result = False
                self._wake_played()
            self._close()
        super().stop()

    def _close(self) -> None:
        """Hook: release files."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.state.value} {self.sample_rate} Hz x{self.channels}>"


# --- PCM helpers --------------------------------------------------------------------


def _to_pcm16_bytes(samples: bytes | np.ndarray | Sequence[float]) -> bytes:
    if isinstance(samples, bytes | bytearray | memoryview):
        return bytes(samples)
    arr = np.asarray(samples)
    if arr.dtype.kind == "f":
        arr = tones.float_to_pcm16(arr)
    return arr.astype("<i2").tobytes()


def resample_pcm(pcm: bytes, from_rate: int, from_channels: int, to_rate: int, to_channels: int) -> bytes:
    """Convert a whole s16 buffer between rates/channel counts with libswresample."""
    if (from_rate, from_channels) == (to_rate, to_channels) or not pcm:
        return pcm
    samples = len(pcm) // (2 * from_channels)
    frame = av.AudioFrame(format="s16", layout=_LAYOUTS[from_channels], samples=samples)
    frame.planes[0].update(pcm[: samples * 2 * from_channels])
    frame.sample_rate = from_rate
    frame.pts = 0
    frame.time_base = fractions.Fraction(1, from_rate)
    resampler = av.AudioResampler(format="s16", layout=_LAYOUTS[to_channels], rate=to_rate)
    out = bytearray()
    for f in list(resampler.resample(frame)) + list(resampler.resample(None)):
        out += bytes(f.planes[0])[: f.samples * 2 * to_channels]
    return bytes(out)


class PcmSource(AudioSource):
    """Plays s16 PCM held in memory (converted once to the track's format)."""

    def __init__(self, pcm: bytes | np.ndarray, rate: int, *, pcm_channels: int = 1, loop: bool = False,
                 **kwargs):
        super().__init__(**kwargs)
        self._pcm_in = _to_pcm16_bytes(pcm)
        self._in_rate, self._in_channels = int(rate), int(pcm_channels)
        self.loop = loop
        self._pos = 0
        self._pcm = resample_pcm(self._pcm_in, self._in_rate, self._in_channels, self.sample_rate,
                                 self.channels)

    @property
    def duration(self) -> float:
        return len(self._pcm) / self.bytes_per_sample / self.sample_rate

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        fraction = self._pos / max(1, len(self._pcm))
        self._pcm = resample_pcm(self._pcm_in, self._in_rate, self._in_channels, self.sample_rate,
                                 self.channels)
        self._pos = int(fraction * len(self._pcm)) // self.bytes_per_sample * self.bytes_per_sample

    def _produce(self, n: int) -> bytes:
        want = n * self.bytes_per_sample
        out = bytearray()
        while len(out) < want:
            chunk = self._pcm[self._pos:self._pos + want - len(out)]
            self._pos += len(chunk)
            out += chunk
            if self._pos >= len(self._pcm):
                if not self.loop or not self._pcm:
                    break
                self._pos = 0
        return bytes(out)

    def _at_end(self) -> bool:
        return not self.loop and self._pos >= len(self._pcm)

    def _rewind(self) -> None:
        self._pos = 0


# --- files --------------------------------------------------------------------------


class _Decoder:
    """Streams one audio file through PyAV into s16 PCM of a given format."""

    def __init__(self, path: Path, rate: int, channels: int):
        self.path = path
        self.rate, self.channels = rate, channels
        self._container = None
        self._frames = None
        self._buf = bytearray()
        self.eof = False
        self.open()

    def open(self) -> None:
        self.close()
        try:
            self._container = av.open(str(self.path), mode="r")
        except FileNotFoundError as exc:
            raise AudioFileError(f"{self.path}: no such file") from exc
        except (av.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise AudioFileError(f"{self.path}: cannot open as audio ({_reason(exc)})") from exc
        streams = self._container.streams.audio
        if not streams:
            self.close()
            raise AudioFileError(f"{self.path}: contains no audio stream")
        self.stream = streams[0]
        self._frames = self._container.decode(self.stream)
        self._converter = FrameConverter("s16", _LAYOUTS[self.channels], self.rate)
        self._buf = bytearray()
        self.eof = False

    def set_format(self, rate: int, channels: int) -> None:
        """New output format; already decoded PCM is converted, decoding continues."""
        self._buf = bytearray(resample_pcm(bytes(self._buf), self.rate, self.channels, rate, channels))
        self.rate, self.channels = rate, channels
        self._converter = FrameConverter("s16", _LAYOUTS[channels], rate)

    def read(self, n: int) -> bytes:
        want = n * 2 * self.channels
        while len(self._buf) < want and not self.eof:
            self._decode_more()
        out = bytes(self._buf[:want])
        del self._buf[:want]
        return out

    @property
    def exhausted(self) -> bool:
        """Everything decoded and handed out."""
        return self.eof and not self._buf

    def _decode_more(self) -> None:
        assert self._frames is not None
        try:
            frame = next(self._frames)
        except StopIteration:
            frame = None
        except av.FFmpegError as exc:
            self.eof = True
            raise AudioFileError(f"{self.path}: decoding failed ({_reason(exc)})") from exc
        if frame is None:
            self.eof = True
            out = self._converter.flush()
        else:
            out = self._converter.convert(frame)  # copes with chained streams changing format
        for f in out:
            self._buf += bytes(f.planes[0])[: f.samples * 2 * self.channels]

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # pragma: no cover - closing a reader does not fail in practice
                log.debug("closing %s failed", self.path, exc_info=True)
        self._container = None
        self._frames = None


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text.replace("\n", " ")


#: Decoded files, keyed by (path, mtime, size, rate, channels): a prompt played by
#: hundreds of calls in a load test is decoded once.
_PRELOAD_CACHE: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
_PRELOAD_CACHE_MAX = 32


def decode_file(path: str | os.PathLike, rate: int = DEFAULT_RATE, channels: int = 1,
                max_seconds: float = 600.0) -> bytes:
    """A whole audio file as s16 PCM in the given format (cached)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError as exc:
        raise AudioFileError(f"{p}: no such file") from exc
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, rate, channels)
    if key in _PRELOAD_CACHE:
        _PRELOAD_CACHE.move_to_end(key)
        return _PRELOAD_CACHE[key]
    decoder = _Decoder(p, rate, channels)
    try:
        chunks = []
        limit = int(max_seconds * rate)
        total = 0
        while chunk := decoder.read(rate):
            chunks.append(chunk)
            total += len(chunk) // (2 * channels)
            if total > limit:
                raise AudioFileError(f"{p}: longer than {max_seconds:.0f} s; play it with preload=False")
    finally:
        decoder.close()
    pcm = b"".join(chunks)
    _PRELOAD_CACHE[key] = pcm
    while len(_PRELOAD_CACHE) > _PRELOAD_CACHE_MAX:
        _PRELOAD_CACHE.popitem(last=False)
    return pcm


class FileSource(AudioSource):
    """Plays any file PyAV can decode (wav, mp3, ogg/opus, flac, ...), once or looped.

    Streaming by default (the file is decoded 20 ms at a time); with
    ``preload=True`` it is decoded up front into a shared cache, which costs
    memory once and no decoding per call (load tests).  A file that cannot be
    opened raises :class:`AudioFileError` here, naming the path and why; one
    that breaks mid-way finishes the source with that error (``played()``
    raises it) while the track continues per ``on_end``.
    """

    def __init__(self, path: str | os.PathLike, loop: bool = False, *, preload: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.path = Path(path)
        self.loop = loop
        self.preload = preload
        self._pcm: PcmSource | None = None
        self._decoder: _Decoder | None = None
        if preload:
            self._pcm = PcmSource(decode_file(self.path, self.sample_rate, self.channels), self.sample_rate,
                                  pcm_channels=self.channels, loop=loop, sample_rate=self.sample_rate,
                                  channels=self.channels, realtime=False)
        else:
            self._decoder = _Decoder(self.path, self.sample_rate, self.channels)
        self.loops = 0

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        if self._pcm is not None:
            self._pcm.set_format(self.sample_rate, self.channels)
        if self._decoder is not None:
            self._decoder.set_format(self.sample_rate, self.channels)

    def _produce(self, n: int) -> bytes:
        if self._pcm is not None:
            return self._pcm.read(n)
        assert self._decoder is not None
        want = n * self.bytes_per_sample
        out = bytearray(self._decoder.read(n))
        reopened_empty = False  # an empty file would loop forever
        while len(out) < want and self.loop and not reopened_empty:
            self._decoder.open()
            self.loops += 1
            more = self._decoder.read(n - len(out) // self.bytes_per_sample)
            reopened_empty = not more
            out += more
        if not self.loop and self._decoder.exhausted:
            self._decoder.close()  # played once: release the file now (reset() reopens it)
        return bytes(out)

    def _at_end(self) -> bool:
        if self.loop:
            return False
        if self._pcm is not None:
            return self._pcm.finished
        return self._decoder is not None and self._decoder.exhausted

    def _rewind(self) -> None:
        if self._pcm is not None:
            self._pcm.reset()
        if self._decoder is not None:
            self._decoder.open()

    def _close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()

    def __repr__(self) -> str:
        return f"<FileSource {self.path.name} {self.state.value}{' loop' if self.loop else ''}>"


# --- synthetic ----------------------------------------------------------------------


class ToneSource(AudioSource):
    """Sum of sines (one frequency, or two for DTMF/call-progress tones).

    ``amplitude`` is the peak of *each* sine as a fraction of full scale; the
    sum must stay within full scale.  ``duration`` None plays forever.
    """

    def __init__(self, freqs: Iterable[float] | float = (440.0,), amplitude: float = 0.25,
                 duration: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.freqs = tuple(float(f) for f in ([freqs] if isinstance(freqs, int | float) else freqs))
        if not self.freqs or any(not 0 < f < self.sample_rate / 2 for f in self.freqs):
            raise ConfigurationError(f"freqs: need 1+ frequencies below {self.sample_rate / 2} Hz, got {self.freqs}")
        if not 0 < amplitude * len(self.freqs) <= 1.0:
            raise ConfigurationError(
                f"amplitude: {amplitude} x {len(self.freqs)} tones must be within (0, 1] of full scale"
            )
        if duration is not None and duration < 0:
            raise ConfigurationError(f"duration: must be >= 0 seconds, got {duration!r}")
        self.amplitude = float(amplitude)
        self.duration = duration
        self._pos = 0

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        self._pos = round(self._pos * self.sample_rate / old_rate)

    def _produce(self, n: int) -> bytes:
        if self.duration is not None:
            n = max(0, min(n, round(self.duration * self.sample_rate) - self._pos))
        x = tones.sine_mix(self.freqs, n, self.sample_rate, self.amplitude, start=self._pos)
        self._pos += n
        pcm = tones.float_to_pcm16(x)
        if self.channels == 2:
            pcm = np.repeat(pcm, 2)
        return pcm.tobytes()

    def _at_end(self) -> bool:
        return self.duration is not None and self._pos >= round(self.duration * self.sample_rate)

    def _rewind(self) -> None:
        self._pos = 0


class SilenceSource(AudioSource):
    """Digital silence, forever or for ``duration`` seconds."""

    def __init__(self, duration: float | None = None, **kwargs):
        super().__init__(**kwargs)
        self.duration = duration
        self._pos = 0

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        self._pos = round(self._pos * self.sample_rate / old_rate)

    def _produce(self, n: int) -> bytes:
        if self.duration is not None:
            n = max(0, min(n, round(self.duration * self.sample_rate) - self._pos))
        self._pos += n
        return bytes(n * self.bytes_per_sample)

    def _at_end(self) -> bool:
        return self.duration is not None and self._pos >= round(self.duration * self.sample_rate)

    def _rewind(self) -> None:
        self._pos = 0


class DtmfToneSource(AudioSource):
    """In-band DTMF: plays queued digits as dual tones, then silence.

    :meth:`add` queues more digits at any time (a bot sending a PIN mid-call);
    ``played()`` resolves whenever the queue has been played out.
    """

    def __init__(self, digits: str = "", on_ms: float = 100.0, off_ms: float = 70.0,
                 amplitude: float = 0.25, **kwargs):
        super().__init__(**kwargs)
        self.on_ms, self.off_ms, self.amplitude = on_ms, off_ms, amplitude
        self._queue = bytearray()
        self.digits_sent = ""
        self.add(digits)

    def add(self, digits: str) -> None:
        if not digits:
            return
        mono = tones.dtmf_samples(digits, self.on_ms, self.off_ms, self.sample_rate, self.amplitude)
        if self.channels == 2:
            mono = np.repeat(mono, 2)
        self._queue += mono.tobytes()
        self.digits_sent += digits
        if self.state is SourceState.FINISHED:
            self.reset()

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        self._queue = bytearray(resample_pcm(bytes(self._queue), old_rate, old_channels, self.sample_rate,
                                             self.channels))

    def _produce(self, n: int) -> bytes:
        want = n * self.bytes_per_sample
        out = bytes(self._queue[:want])
        del self._queue[:want]
        return out

    def _rewind(self) -> None:
        """Nothing to restart: played digits are gone; queued ones stay."""


# --- composition --------------------------------------------------------------------


def as_source(item: AudioSource | str | os.PathLike, **file_kwargs) -> AudioSource:
    """A source as given, or a :class:`FileSource` for a path."""
    if isinstance(item, AudioSource):
        return item
    if isinstance(item, str | os.PathLike):
        return FileSource(item, **file_kwargs)
    raise ConfigurationError(f"items: {item!r} is neither an AudioSource nor a path")


class PlaylistSource(AudioSource):
    """Plays sources (or paths) one after another; ``loop=True`` starts over.

    Emits ``item`` with the index of each item as it starts playing.
    """

    def __init__(self, items: Iterable[AudioSource | str | os.PathLike], loop: bool = False,
                 file_kwargs: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.items = [as_source(i, **(file_kwargs or {})) for i in items]
        if not self.items:
            raise ConfigurationError("items: a playlist needs at least one item")
        for item in self.items:
            item.set_format(self.sample_rate, self.channels)
        self.loop = loop
        self.index = 0
        self._announced = -1

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        for item in self.items:
            item.set_format(self.sample_rate, self.channels)

    def _produce(self, n: int) -> bytes:
        want = n * self.bytes_per_sample
        out = bytearray()
        restarted_empty = False  # guards against looping a playlist of empty items forever
        while len(out) < want:
            if self.index >= len(self.items):
                if not self.loop or restarted_empty:
                    break
                for item in self.items:
                    item.reset()
                self.index = 0
                self._announced = -1
                restarted_empty = True
            if self._announced != self.index:
                self._announced = self.index
                self.emit("item", self.index)
            item = self.items[self.index]
            chunk = item.read(n - len(out) // self.bytes_per_sample)
            if chunk:
                restarted_empty = False
            out += chunk
            if item.finished:
                self.index += 1
        return bytes(out)

    def _rewind(self) -> None:
        for item in self.items:
            item.reset()
        self.index = 0
        self._announced = -1

    def _close(self) -> None:
        for item in self.items:
            item.stop()


class SwitchableSource(AudioSource):
    """One sender track whose content can be replaced mid-call.

    ``switch(new)`` swaps the inner source at the next frame boundary, with
    no gap in pts and without ``RTCRtpSender.replaceTrack``.  An inner source
    that finishes leaves silence; this track itself never finishes on its own.
    """

    def __init__(self, source: AudioSource | str | os.PathLike | None = None, **kwargs):
        super().__init__(**kwargs)
        self.current: AudioSource | None = None
        self.switches = 0
        if source is not None:
            self.switch(source)

    def switch(self, source: AudioSource | str | os.PathLike | None,
               stop_previous: bool = False) -> AudioSource | None:
        """Play ``source`` from now on (None: silence); returns the previous one."""
        new = as_source(source) if source is not None else None
        if new is not None:
            new.set_format(self.sample_rate, self.channels)
        old, self.current = self.current, new
        self.switches += 1
        log.debug("switched %r -> %r", old, new)
        self.emit("switch", new)
        if stop_previous and old is not None and old is not new:
            old.stop()
        return old

    def _format_changed(self, old_rate: int, old_channels: int) -> None:
        if self.current is not None:
            self.current.set_format(self.sample_rate, self.channels)

    def _produce(self, n: int) -> bytes:
        want = n * self.bytes_per_sample
        data = self.current.read(n) if self.current is not None else b""
        return data + bytes(want - len(data))

    def _rewind(self) -> None:
        if self.current is not None:
            self.current.reset()

    def _close(self) -> None:
        if self.current is not None:
            self.current.stop()


# --- files for tests and bots -------------------------------------------------------


def write_wav(path: str | os.PathLike, samples: bytes | np.ndarray | Sequence[float], rate: int,
              channels: int = 1) -> Path:
    """Write s16 PCM (int16 array, float array in [-1, 1) or bytes) as a WAV file."""
    p = Path(path)
    try:
        with open(p, "wb") as fh, wave.open(fh, "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(2)
            w.setframerate(int(rate))
            w.writeframes(_to_pcm16_bytes(samples))
    except OSError as exc:
        raise AudioFileError(f"{p}: cannot write ({_reason(exc)})") from exc
    return p


def generate_tone_file(path: str | os.PathLike, freqs: Iterable[float] | float = (440.0,),
                       duration: float = 1.0, rate: int = DEFAULT_RATE, amplitude: float = 0.25,
                       format: str | None = None) -> Path:
    """A file of a tone in any format PyAV writes (by extension, or ``format``)."""
    freq_list = [float(freqs)] if isinstance(freqs, int | float) else [float(f) for f in freqs]
    x = tones.sine_mix(freq_list, round(duration * rate), rate, amplitude)
    return write_audio(path, tones.float_to_pcm16(x), rate, format=format)


def write_audio(path: str | os.PathLike, samples: bytes | np.ndarray, rate: int, channels: int = 1,
                format: str | None = None) -> Path:
    """Encode s16 samples to ``path`` in any format PyAV writes (WAV via :func:`write_wav`)."""
    p = Path(path)
    if format is None and p.suffix.lower() == ".wav":
        return write_wav(p, samples, rate, channels)
    from softphone.media.recorder import Recorder

    pcm = _to_pcm16_bytes(samples)
    recorder = Recorder(p, format=format, channels=channels)
    step = rate // 50
    bps = 2 * channels
    for i, offset in enumerate(range(0, len(pcm), step * bps)):
        chunk = pcm[offset:offset + step * bps]
        frame = av.AudioFrame(format="s16", layout=_LAYOUTS[channels], samples=len(chunk) // bps)
        frame.planes[0].update(chunk)
        frame.sample_rate = rate
        frame.pts = i * step
        frame.time_base = fractions.Fraction(1, rate)
        recorder.write(frame)
    recorder.close()
    return p
