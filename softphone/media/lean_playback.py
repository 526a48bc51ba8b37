"""What a call plays when nothing needs live encoding: a tone, silence or a file, pre-encoded.

A :class:`LeanPlayback` is a :class:`~softphone.media.pre_encoded_track.PreEncodedAudioTrack`
whose content is encoded once per codec in the process (the shared cache) and
whose packets every call playing the same content shares.  It never ends: a
tone or silence loops, and a file played once goes on with silence afterwards
(aiortc's sender stops for good when its track ends), so a call can switch
content with ``WebRtcDescriptionHandler.replace_source`` as often as it likes.

Since nothing is decoded or encoded per call, the level of what is sent is not
measured: :attr:`LeanPlayback.level_dbfs` is the content's own level (the tone's
RMS, the file's RMS while it plays, the floor for silence).

:func:`lean_playback` turns the strings a script passes to ``call.play`` into one
(``"tone:HZ"``, a number, ``"silence"``, None, a file path) or returns None when
the content needs live encoding (in-band DTMF, several tones, a source object).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from softphone.errors import AudioFileError
from softphone.log import get_logger
from softphone.media.encoded_audio import EncodedAudio, Tone, shared_cache
from softphone.media.pre_encoded_track import PreEncodedAudioTrack
from softphone.media.tones import DB_FLOOR, to_dbfs

log = get_logger(__name__)

#: Amplitude of a single tone, as :class:`softphone.media.sources.ToneSource` sends it.
TONE_AMPLITUDE = 0.25

_silence_path: Path | None = None


def silence_file() -> Path:
    """A one-second silent 8 kHz WAV (encoded once per codec, like any content)."""
    global _silence_path
    if _silence_path is None or not _silence_path.exists():
        from softphone.media.sources import write_wav

        folder = Path(tempfile.mkdtemp(prefix="softphone-silence-"))
        atexit.register(shutil.rmtree, folder, True)
        _silence_path = write_wav(folder / "silence.wav", bytes(2 * 8000), 8000)
    return _silence_path


@functools.lru_cache(maxsize=64)
def _file_rms_dbfs(path: str, _mtime_ns: int) -> float:
    """The RMS level of a whole file (decoded once; a blocking call, run in a thread)."""
    import av

    total, count = 0.0, 0
    try:
        with av.open(path) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=8000)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    data = out.to_ndarray()
                    total += float((data.astype("float64") ** 2).sum())
                    count += data.size
    except Exception as exc:  # a level is informative only; the encoder reports real errors
        log.debug("level of %s not measured: %s", path, exc)
        return DB_FLOOR
    return to_dbfs(math.sqrt(total / count)) if count else DB_FLOOR


class LeanPlayback(PreEncodedAudioTrack):
    """A pre-encoded tone, silence or file that never ends (see the module docs).

    ``once``: play the content once, then silence (a file); else loop it.
    ``label`` says what plays (logs, reprs); ``nominal_dbfs`` is the content's level.
    """

    def __init__(self, source: Any, *, once: bool = False, label: str = "", nominal_dbfs: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(source, repeat=True, **kwargs)
        self.once = once
        self.label = label or str(source)
        self._nominal = nominal_dbfs
        self._tail: EncodedAudio | None = None
        self._content_frames: int | None = None
        self._played: asyncio.Future | None = None
        self._finished = False
        self._path = os.fspath(source) if not isinstance(source, Tone) else None
        self.error: AudioFileError | None = None
        """Why the content could not be encoded (silence was sent instead)."""

    def __repr__(self) -> str:
        return f"<LeanPlayback {self.label}{' once' if self.once else ''} {self.state.value}>"

    async def prepare(self) -> EncodedAudio:
        try:
            audio = await super().prepare()
        except AudioFileError as exc:
            # A file that cannot be encoded must not stop the call's sender for good
            # (it cannot restart): send silence instead and report it to played().
            log.error("%s: %s; sending silence instead", self.label, exc)
            self.error = exc
            self._source = silence_file()  # PreEncodedAudioTrack encodes what it was given
            self._finish(False)
            audio = await super().prepare()
        if self.once and self._tail is None:
            self._content_frames = len(audio.payloads)
            self._tail = (await shared_cache().aget(silence_file(), audio.codec)).packetized(self.ptime_ms)
        if self._nominal is None and self._path is not None and self.error is None:
            st = os.stat(self._path)
            self._nominal = await asyncio.get_running_loop().run_in_executor(
                None, _file_rms_dbfs, self._path, st.st_mtime_ns)
        return audio

    def take(self, now: float) -> tuple[bytes, int]:
        payload, pts = super().take(now)
        if self.once and self._content_frames is not None:
            index = pts // self.audio.frame_ticks
            if index >= self._content_frames:
                if not self._finished:
                    self._finish(True)
                tail = self._tail
                if tail is not None:
                    payload = tail.payloads[index % len(tail.payloads)]
        return payload, pts

    @property
    def finished(self) -> bool:
        """A file played once has been sent to its end."""
        return self._finished

    @property
    def level_dbfs(self) -> float:
        """The level of what this track sends now (the content's, not measured per call)."""
        if self._finished or self._nominal is None:
            return DB_FLOOR
        return self._nominal

    def _finish(self, played: bool) -> None:
        self._finished = self._finished or played
        fut, self._played = self._played, None
        if fut is not None and not fut.done():
            fut.set_result(played)

    def detach(self) -> None:
        """It is no longer sent (replaced): :meth:`played` waiters get False."""
        if not self._finished:
            self._finish(False)

    async def played(self, timeout: float | None = None) -> bool:
        """Until a file played once has been sent (True), or replaced or stopped first (False).

        Content that loops (a tone, silence) is never "played": this waits for its replacement.
        """
        if self.error is not None:
            raise self.error
        if self._finished:
            return True
        if self.readyState != "live":
            return False
        if self._played is None:
            self._played = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(asyncio.shield(self._played), timeout)

    def stop(self) -> None:
        self.detach()
        super().stop()


def lean_playback(what: Any) -> LeanPlayback | None:
    """A :class:`LeanPlayback` for ``what`` a script plays, or None when it needs live encoding.

    ``None``/``"silence"``: silence; ``"tone:HZ"`` or a number: a looped tone at the amplitude
    :class:`~softphone.media.sources.ToneSource` uses; a path to an existing file: the file once,
    then silence.  ``"dtmf:..."``, ``"tone:A+B"`` and source objects: None.
    """
    if what is None or (isinstance(what, str) and what == "silence"):
        return LeanPlayback(silence_file(), label="silence", nominal_dbfs=DB_FLOOR)
    freq: float | None = None
    if isinstance(what, int | float) and not isinstance(what, bool):
        freq = float(what)
    elif isinstance(what, str) and what.startswith("tone:"):
        parts = [p for p in what[5:].split("+") if p.strip()]
        if len(parts) != 1:
            return None
        try:
            freq = float(parts[0])
        except ValueError:
            return None
    if freq is not None:
        if not 0 < freq < 4000:
            return None  # out of what every codec carries: the live source reports it
        # A whole number of periods in the loop, so it joins without a click.
        seconds = 1.0 if freq == int(freq) else 2.0 if 2 * freq == int(2 * freq) else 1.0
        return LeanPlayback(Tone(freq, seconds=seconds, amplitude=TONE_AMPLITUDE), label=f"tone {freq:g} Hz",
                            nominal_dbfs=to_dbfs(TONE_AMPLITUDE / math.sqrt(2)))
    if isinstance(what, str | os.PathLike) and not os.fspath(what).startswith(("dtmf:", "tone:")):
        path = Path(what)
        if path.is_file():
            return LeanPlayback(path, once=True, label=path.name)
    return None


__all__ = ["TONE_AMPLITUDE", "LeanPlayback", "lean_playback", "silence_file"]
