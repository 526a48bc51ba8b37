"""Recording audio tracks to files through PyAV, one direction or both.

:class:`Recorder` writes any format PyAV can encode, chosen by the file's
extension (``.wav`` PCM, ``.ogg``/``.opus`` Opus, ``.mp3`` LAME, ``.flac``,
``.m4a`` AAC) or explicitly with ``format``/``codec``.  The recording rate is
the first frame's rate unless given, moved to the nearest rate the encoder
supports (Opus: 8/12/16/24/48 kHz).

Duration: a recording is as long as the stream it received.  Frames carry
``pts``; when frames are missing (packet loss, a receiver that skipped
ahead) the gap is filled with silence, up to ``max_gap`` seconds, so the
file stays aligned with the call's timeline.  Bigger jumps (RTP timestamp
resets, a restarted source) are treated as discontinuities and not padded.
``pad_gaps=False`` writes only what arrived.  A recording that received
nothing is an empty WAV/FLAC file, or one frame of silence for codecs with
fixed frames (Opus, MP3, AAC), whose files cannot be read without a packet.

:class:`CallRecorder` records both directions: one stereo file (left =
remote, right = local) or two files.  The local direction is tapped from our
own source (``AudioSource.add_tap``) instead of being read, so the sender is
not robbed of frames.

Encoding runs on the event loop.  Measured per 20 ms frame (8 kHz mono /
48 kHz stereo input, shared machine): WAV 30/70 us, FLAC 50/110 us,
Ogg/Opus 150/200 us, MP3 150/430 us; for hundreds of calls prefer WAV.
"""

from __future__ import annotations

import fractions
import os
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
from aiortc.mediastreams import MediaStreamTrack

from softphone.errors import AudioFileError, ConfigurationError
from softphone.log import get_logger
from softphone.media.sinks import AudioSink, FrameConverter, SinkFanout, SinkState

log = get_logger(__name__)

#: Encoder per file extension (FFmpeg picks the container from the extension).
CODEC_BY_SUFFIX: dict[str, str] = {
    ".wav": "pcm_s16le", ".ogg": "libopus", ".opus": "libopus", ".oga": "libopus",
    ".mka": "libopus", ".webm": "libopus", ".mp3": "libmp3lame", ".flac": "flac",
    ".m4a": "aac", ".aac": "aac",
}
#: Encoder per explicit container format name.
CODEC_BY_FORMAT: dict[str, str] = {
    "wav": "pcm_s16le", "ogg": "libopus", "opus": "libopus", "matroska": "libopus", "webm": "libopus",
    "mp3": "libmp3lame", "flac": "flac", "ipod": "aac", "mp4": "aac", "adts": "aac",
}
_LAYOUTS = {1: "mono", 2: "stereo"}
DEFAULT_RATE = 48000


def _reason(exc: BaseException) -> str:
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).replace("\n", " ")


def codec_for(path: Path, format: str | None = None) -> str:
    """The encoder a recording at ``path`` (or in container ``format``) uses."""
    if format:
        if format in CODEC_BY_FORMAT:
            return CODEC_BY_FORMAT[format]
        raise AudioFileError(f"{path}: no default audio codec known for format {format!r}; pass codec=")
    suffix = path.suffix.lower()
    if suffix in CODEC_BY_SUFFIX:
        return CODEC_BY_SUFFIX[suffix]
    raise AudioFileError(
        f"{path}: unknown audio file extension {suffix!r} (known: {', '.join(sorted(CODEC_BY_SUFFIX))});"
        " pass format= or codec="
    )


class Recorder(AudioSink):
    """Writes the frames it is given to one audio file; ``close``/``stop`` finalises it."""

    def __init__(self, path: str | os.PathLike, format: str | None = None, *, codec: str | None = None,
                 rate: int | None = None, channels: int = 1, bitrate: int | None = None,
                 pad_gaps: bool = True, max_gap: float = 10.0):
        super().__init__()
        self.path = Path(path)
        if channels not in _LAYOUTS:
            raise ConfigurationError(f"channels: must be 1 or 2, got {channels!r}")
        if not self.path.parent.is_dir():
            raise AudioFileError(f"{self.path}: directory {self.path.parent} does not exist")
        self.codec_name = codec or codec_for(self.path, format)
        try:
            self._codec = av.codec.Codec(self.codec_name, "w")
        except Exception as exc:  # UnknownCodecError, or a decoder-only codec
            raise AudioFileError(
                f"{self.path}: encoder {self.codec_name!r} is not available in this FFmpeg build ({_reason(exc)})"
            ) from exc
        self.channels = channels
        self.requested_rate = rate
        self.bitrate = bitrate
        self.pad_gaps = pad_gaps
        self.max_gap = max_gap
        self.rate: int | None = None
        self.written = 0
        self.padded_samples = 0
        self.discontinuities = 0
        self._expected: fractions.Fraction | None = None
        self._stream = None
        self._converter: FrameConverter | None = None
        try:
            self._container = av.open(str(self.path), mode="w", format=format)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise AudioFileError(f"{self.path}: cannot create ({_reason(exc)})") from exc

    @property
    def duration(self) -> float:
        """Seconds written to the file (including padding)."""
        return self.written / self.rate if self.rate else 0.0

    @property
    def sample_format(self) -> str:
        names = [f.name for f in (self._codec.audio_formats or ())]
        for preferred in ("s16", "s16p", "flt", "fltp"):
            if preferred in names:
                return preferred
        return names[0] if names else "s16"

    def _pick_rate(self, rate: int) -> int:
        rates = sorted(self._codec.audio_rates or ())
        if not rates or rate in rates:
            return rate
        higher = [r for r in rates if r >= rate]
        return higher[0] if higher else rates[-1]

    def _open_stream(self, rate: int) -> None:
        self.rate = self._pick_rate(self.requested_rate or rate)
        fmt = self.sample_format
        try:
            stream = self._container.add_stream(self.codec_name, rate=self.rate)
            stream.codec_context.layout = _LAYOUTS[self.channels]
            stream.codec_context.format = fmt
            if self.bitrate:
                stream.codec_context.bit_rate = self.bitrate
        except (av.FFmpegError, ValueError) as exc:
            raise AudioFileError(f"{self.path}: cannot add a {self.codec_name} stream ({_reason(exc)})") from exc
        self._stream = stream
        self._converter = FrameConverter(fmt, _LAYOUTS[self.channels], self.rate)
        log.debug("recording %s: %s %d Hz x%d", self.path, self.codec_name, self.rate, self.channels)

    # --- writing ------------------------------------------------------------------

    def _write(self, frame: av.AudioFrame) -> None:
        if self._stream is None:
            self._open_stream(frame.sample_rate)
        self._handle_gap(frame)
        assert self._converter is not None
        for out in self._converter.convert(frame):
            self._encode(out)

    def _handle_gap(self, frame: av.AudioFrame) -> None:
        if frame.pts is None or frame.time_base is None:
            return
        tb = fractions.Fraction(frame.time_base.numerator, frame.time_base.denominator)
        start = frame.pts * tb
        end = start + fractions.Fraction(frame.samples, frame.sample_rate)
        if self._expected is not None and self.pad_gaps:
            gap = start - self._expected
            if gap < 0 or gap > self.max_gap:
                if abs(gap) * frame.sample_rate >= 1:
                    self.discontinuities += 1
                    log.debug("%s: pts jumped %.3f s; not padded", self.path.name, float(gap))
            else:
                missing = round(gap * self.rate)  # type: ignore[operator]
                if missing > 0:
                    self._pad(missing)
        self._expected = end

    def _pad(self, samples: int) -> None:
        silence = av.AudioFrame(format=self.sample_format, layout=_LAYOUTS[self.channels], samples=samples)
        for plane in silence.planes:
            plane.update(bytes(plane.buffer_size))
        silence.sample_rate = self.rate
        self.padded_samples += samples
        self._encode(silence)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        assert self._stream is not None
        saved = None
        if frame is not None:
            # The resampler hands back the caller's own frame when no conversion is
            # needed; other sinks share it, so its timestamps are restored afterwards.
            saved = (frame.pts, frame.time_base)
            frame.pts = self.written
            frame.time_base = fractions.Fraction(1, self.rate)
            self.written += frame.samples
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise AudioFileError(f"{self.path}: encoding/writing failed ({_reason(exc)})") from exc
        finally:
            if frame is not None and saved is not None:
                frame.pts = saved[0]
                if saved[1] is not None:
                    frame.time_base = saved[1]

    def _close(self) -> None:
        try:
            if self._stream is None:
                # Nothing arrived: still leave a valid audio file behind.
                self._open_stream(self.requested_rate or DEFAULT_RATE)
            elif self._converter is not None:
                for out in self._converter.flush():
                    self._encode(out)
            if self.written == 0:
                if not (self.codec_name == "flac" or self.codec_name.startswith("pcm_")):
                    # Ogg, MP3 and MP4 files without a packet cannot be read back: one frame of silence.
                    self._pad(round(self.rate * 0.02))
            self._encode(None)
            if self.written == 0:
                self._container.start_encoding()  # WAV/FLAC: the header alone is a valid empty file
        finally:
            try:
                self._container.close()
            except (av.FFmpegError, OSError) as exc:
                if self.state is not SinkState.FAILED:
                    raise AudioFileError(f"{self.path}: closing failed ({_reason(exc)})") from exc
        log.info("recorded %s: %.2f s (%d samples padded)", self.path, self.duration, self.padded_samples)

    def __repr__(self) -> str:
        return f"<Recorder {self.path.name} {self.state.value} {self.duration:.2f}s>"


# --- both directions ----------------------------------------------------------------


class _Port(AudioSink):
    """One direction's input into a :class:`CallRecorder`."""

    def __init__(self, owner: CallRecorder, side: int):
        super().__init__()
        self._owner, self._side = owner, side

    def _write(self, frame: av.AudioFrame) -> None:
        self._owner._take(self._side, frame)

    def _close(self) -> None:
        self._owner._port_closed(self._side)


class _Channel:
    """Pending mono s16 samples of one direction, index 0 = the file's write position."""

    def __init__(self, rate: int):
        self.pending = np.zeros(0, dtype="<i2")
        self.converter = FrameConverter("s16", "mono", rate)
        self.expected: fractions.Fraction | None = None
        self.started = False


class CallRecorder:
    """Records a call's two directions: ``mode="stereo"`` (left remote, right local) or ``"separate"``.

    Either track may be None and frames fed through :attr:`remote_port` /
    :attr:`local_port` instead (to share a :class:`SinkFanout`).  In stereo
    mode the directions are aligned by arrival: a direction that starts later
    starts later in the file, and one that stops sending is filled with
    silence once it lags ``max_lag`` seconds behind the clock.  The stereo
    file is finalised when the remote track ends or on :meth:`stop`.
    Separate mode writes ``<stem>-remote<ext>`` and ``<stem>-local<ext>``.
    """

    def __init__(self, remote_track: MediaStreamTrack | None, local_track: MediaStreamTrack | None,
                 path: str | os.PathLike, mode: str = "stereo", format: str | None = None,
                 rate: int = DEFAULT_RATE, max_lag: float = 0.5, max_gap: float = 10.0,
                 clock: Callable[[], float] = time.monotonic):
        if mode not in ("stereo", "separate"):
            raise ConfigurationError(f"mode: must be 'stereo' or 'separate', got {mode!r}")
        self.mode = mode
        self.path = Path(path)
        self.remote_track, self.local_track = remote_track, local_track
        self.rate = rate
        self.max_lag = max_lag
        self.max_gap = max_gap
        self._clock = clock
        self._t0: float | None = None
        self._fanouts: list[SinkFanout] = []
        self._tapped = None
        self.closed = False
        if mode == "separate":
            self.remote_path = self.path.with_name(f"{self.path.stem}-remote{self.path.suffix}")
            self.local_path = self.path.with_name(f"{self.path.stem}-local{self.path.suffix}")
            self.remote_port: AudioSink = Recorder(self.remote_path, format, max_gap=max_gap)
            self.local_port: AudioSink = Recorder(self.local_path, format, max_gap=max_gap)
            self.recorders = [self.remote_port, self.local_port]
        else:
            self.recorder = Recorder(self.path, format, rate=rate, channels=2, pad_gaps=False)
            self.recorders = [self.recorder]
            self.remote_port = _Port(self, 0)
            self.local_port = _Port(self, 1)
            self._channels = (_Channel(rate), _Channel(rate))

    @property
    def paths(self) -> list[Path]:
        return [r.path for r in self.recorders]

    async def start(self, track: MediaStreamTrack | None = None) -> None:
        """Read the remote track and tap (or read) the local one.

        ``track`` (if given) is the remote track: so a CallRecorder built with
        only the local source can be handed to the description handler as a sink.
        """
        if track is not None:
            self.remote_track = track
        if self.remote_track is not None:
            fanout = SinkFanout(self.remote_track, [self.remote_port])
            self._fanouts.append(fanout)
            await fanout.start()
        local = self.local_track
        if local is not None:
            if hasattr(local, "add_tap"):
                local.add_tap(self.local_port.write)
                self._tapped = local
            else:
                # Not ours: reading it means nobody else may (use aiortc's MediaRelay to share it).
                fanout = SinkFanout(local, [self.local_port])
                self._fanouts.append(fanout)
                await fanout.start()

    async def stop(self) -> None:
        for fanout in self._fanouts:
            await fanout.stop()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._tapped is not None:
            self._tapped.remove_tap(self.local_port.write)
        if self.mode == "separate":
            for r in self.recorders:
                r.close()
            return
        left, right = self._channels
        n = max(left.pending.size, right.pending.size)
        for ch in self._channels:
            for out in ch.converter.flush():
                ch.pending = np.concatenate((ch.pending, _s16_mono(out)))
            n = max(n, ch.pending.size)
        for ch in self._channels:
            ch.pending = np.concatenate((ch.pending, np.zeros(n - ch.pending.size, dtype="<i2")))
        self._flush()
        self.recorder.close()

    # --- stereo mixing ------------------------------------------------------------

    def _port_closed(self, side: int) -> None:
        if side == 0 and self.mode == "stereo":
            self.close()

    def _now_index(self) -> int:
        assert self._t0 is not None
        return round((self._clock() - self._t0) * self.rate)

    def _take(self, side: int, frame: av.AudioFrame) -> None:
        if self.closed:
            return
        now = self._clock()
        if self._t0 is None:
            self._t0 = now
        ch = self._channels[side]
        written = self.recorder.written
        if not ch.started:
            ch.started = True
            lead = self._now_index() - written - ch.pending.size - round(frame.samples * self.rate / frame.sample_rate)
            if lead > 0:
                ch.pending = np.concatenate((ch.pending, np.zeros(lead, dtype="<i2")))
        elif frame.pts is not None and frame.time_base is not None and ch.expected is not None:
            tb = fractions.Fraction(frame.time_base.numerator, frame.time_base.denominator)
            gap = frame.pts * tb - ch.expected
            if 0 < gap <= self.max_gap:
                ch.pending = np.concatenate((ch.pending, np.zeros(round(gap * self.rate), dtype="<i2")))
        if frame.pts is not None and frame.time_base is not None:
            tb = fractions.Fraction(frame.time_base.numerator, frame.time_base.denominator)
            ch.expected = frame.pts * tb + fractions.Fraction(frame.samples, frame.sample_rate)
        for out in ch.converter.convert(frame):
            ch.pending = np.concatenate((ch.pending, _s16_mono(out)))
        self._fill_lagging()
        self._flush()

    def _fill_lagging(self) -> None:
        """A direction that went quiet (no frames) becomes silence once it lags too far."""
        limit = self._now_index() - self.recorder.written - round(self.max_lag * self.rate)
        left, right = self._channels
        for ch, other in ((left, right), (right, left)):
            target = min(other.pending.size, limit)
            if ch.pending.size < target:
                ch.pending = np.concatenate((ch.pending, np.zeros(target - ch.pending.size, dtype="<i2")))

    def _flush(self) -> None:
        left, right = self._channels
        n = min(left.pending.size, right.pending.size)
        if n == 0:
            return
        stereo = np.empty(2 * n, dtype="<i2")
        stereo[0::2], stereo[1::2] = left.pending[:n], right.pending[:n]
        left.pending, right.pending = left.pending[n:], right.pending[n:]
        frame = av.AudioFrame(format="s16", layout="stereo", samples=n)
        frame.planes[0].update(stereo.tobytes())
        frame.sample_rate = self.rate
        self.recorder.write(frame)


def _s16_mono(frame: av.AudioFrame) -> np.ndarray:
    return np.frombuffer(bytes(frame.planes[0]), dtype="<i2")[: frame.samples].copy()
