"""Test expectations on a live call: ``await call.expect_tone(440, within=2.0)`` and friends.

Each ``expect_*`` waits for its condition with a deadline and returns what it
found (a tone event, the digits, a score); when the deadline passes it raises
:class:`~softphone.errors.ExpectationError` (an ``AssertionError``) whose
message says what was heard instead: the dominant frequency and level over
the last seconds, the digits received and how, and the call's SIP ladder.

Audio checks are model-free: Goertzel / FFT for tones and silence, and a
cross-correlation of spectral envelopes against the file we expect to hear
(:meth:`ReceivedAudio.prompt_score`: "is it my prompt").  Nothing here needs
a download.

What the call received is kept in :class:`ReceivedAudio` (``call.recording``):
the last ``seconds`` of the far end's audio, mono, at 16 kHz (8 kHz codecs
stay at 8 kHz).  A :class:`~softphone.agent.phone.Phone` keeps it from the
start of every call when ``keep_audio_seconds`` is set (the pytest plugin
sets it); otherwise ``call.recording`` starts it on first use.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from softphone.errors import AgentError, ConfigurationError, ExpectationError
from softphone.events import DtmfEvent
from softphone.log import get_logger
from softphone.media import tones
from softphone.media.sinks import AudioSink, ToneEvent, frame_to_mono

if TYPE_CHECKING:
    from softphone.agent.call import Call

log = get_logger(__name__)

#: Seconds of received audio a call keeps when nobody said otherwise (``call.recording`` on first use).
DEFAULT_KEEP_SECONDS = 20.0
#: RMS level (dBFS) below which received audio counts as silence.
SILENCE_DBFS = -50.0
#: Minimum :meth:`ReceivedAudio.prompt_score` for ``expect_prompt``.
PROMPT_SCORE = 0.6
_POLL = 0.05


class ReceivedAudio(AudioSink):
    """The last ``seconds`` of what the far end sent, with the analyses a test asks for.

    (``samples``/``seconds`` are the sink's running counts; the audio is :meth:`audio`.)"""

    def __init__(self, seconds: float = DEFAULT_KEEP_SECONDS) -> None:
        super().__init__()
        if seconds <= 0:
            raise ConfigurationError(f"seconds: must be > 0, got {seconds!r}")
        self.keep_seconds = float(seconds)
        self.rate: int | None = None
        self.created_at = time.monotonic()
        self._blocks: deque[tuple[float, np.ndarray]] = deque()
        self._kept = 0

    def _write(self, frame: Any) -> None:
        x = frame_to_mono(frame)
        rate = frame.sample_rate
        if rate % 16000 == 0 and rate > 16000:  # 48 kHz Opus: a block mean is a cheap low-pass
            step = rate // 16000
            x = x[: x.size - x.size % step].reshape(-1, step).mean(axis=1)
            rate = 16000
        if self.rate != rate:
            self._blocks.clear()
            self._kept = 0
            self.rate = rate
        block = x.astype(np.float32)
        self._blocks.append((time.monotonic(), block))
        self._kept += block.size
        limit = int(self.keep_seconds * rate)
        while self._blocks and self._kept - self._blocks[0][1].size >= limit:
            self._kept -= self._blocks.popleft()[1].size

    # --- reading -----------------------------------------------------------------------

    @property
    def received_seconds(self) -> float:
        """Seconds of audio held now (at most ``seconds``)."""
        return self._kept / self.rate if self.rate else 0.0

    def last_frame_age(self) -> float | None:
        """Seconds since the last frame arrived (None: none yet)."""
        return time.monotonic() - self._blocks[-1][0] if self._blocks else None

    def audio(self, seconds: float | None = None) -> np.ndarray:
        """The last ``seconds`` of audio (all kept if None), mono float32 at :attr:`rate`."""
        if not self._blocks or self.rate is None:
            return np.zeros(0, dtype=np.float32)
        x = np.concatenate([b for _, b in self._blocks])
        if seconds is not None:
            x = x[-max(1, int(seconds * self.rate)):]
        return x

    def since(self, at: float) -> np.ndarray:
        """Audio of the frames that arrived after ``time.monotonic()`` value ``at``."""
        blocks = [b for t, b in self._blocks if t > at]
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    def dominant_frequency(self, seconds: float = 1.0) -> float:
        """Hz of the strongest spectral peak in the last ``seconds`` (0.0 for silence)."""
        x = self.audio(seconds)
        return tones.dominant_frequency(x.astype(np.float64), self.rate or 16000)[0] if x.size else 0.0

    def level_dbfs(self, seconds: float = 1.0) -> float:
        """RMS level of the last ``seconds`` (``tones.DB_FLOOR`` when nothing was received)."""
        x = self.audio(seconds)
        return tones.rms_dbfs(x.astype(np.float64)) if x.size else tones.DB_FLOOR

    def timeline(self, seconds: float = 4.0, step: float = 0.5) -> list[tuple[float, float, float]]:
        """(seconds before now, dominant Hz, dBFS) per ``step`` over the last ``seconds``."""
        if self.rate is None:
            return []
        x = self.audio(seconds).astype(np.float64)
        n = max(1, int(step * self.rate))
        out = []
        for start in range(0, x.size - n + 1, n):
            chunk = x[start:start + n]
            level = tones.rms_dbfs(chunk)
            hz = tones.dominant_frequency(chunk, self.rate)[0] if level > SILENCE_DBFS else 0.0
            out.append((round((x.size - start) / self.rate, 2), hz, level))
        return out

    def describe(self, seconds: float = 3.0, step: float = 0.25) -> str:
        """What was heard, for an error message: ``-2.0s 440 Hz -12 dBFS | -1.5s silence ...``."""
        age = self.last_frame_age()
        if age is None:
            return "no audio received at all"
        parts = []
        for ago, hz, level in self.timeline(seconds, step):
            parts.append(f"-{ago:.1f}s " + (f"{hz:.0f} Hz {level:.0f} dBFS" if level > SILENCE_DBFS
                                            else f"silence ({level:.0f} dBFS)"))
        late = f"; last frame {age:.1f} s ago" if age > 0.5 else ""
        return " | ".join(parts) + late

    def prompt_score(self, reference: str | os.PathLike | np.ndarray, seconds: float = 1.5,
                     reference_rate: int | None = None) -> float:
        """How well the last ``seconds`` heard match some part of ``reference`` (a file, or
        samples at ``reference_rate``): the best Pearson correlation of log band energies
        (20 ms frames) over every alignment, the reference taken as looping.  Near 1: it is
        that audio; a different tone, speech or silence scores far lower.  Robust to the codec's
        phase changes, level and a constant delay."""
        if self.rate is None:
            return 0.0
        heard = self.audio(seconds).astype(np.float64)
        ref = load_reference(reference, self.rate, reference_rate)
        return envelope_match(heard, ref, self.rate)


# --- prompt matching -------------------------------------------------------------------

_reference_cache: dict[tuple[str, float, int], np.ndarray] = {}


def load_reference(reference: str | os.PathLike | np.ndarray, rate: int,
                   reference_rate: int | None = None) -> np.ndarray:
    """Mono float64 samples of ``reference`` at ``rate`` (a file is decoded with PyAV, cached)."""
    if isinstance(reference, np.ndarray):
        x = reference.astype(np.float64)
        src = reference_rate or rate
        return _resample(x, src, rate)
    path = Path(reference)
    try:
        key = (str(path.resolve()), path.stat().st_mtime, rate)
    except OSError as exc:
        raise ConfigurationError(f"reference {path}: {exc.strerror or exc}") from None
    cached = _reference_cache.get(key)
    if cached is not None:
        return cached
    import av

    chunks = []
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    x = np.concatenate(chunks).astype(np.float64) if chunks else np.zeros(0)
    if len(_reference_cache) > 16:
        _reference_cache.clear()
    _reference_cache[key] = x
    return x


def _resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    if src == dst or x.size == 0:
        return x
    n = round(x.size * dst / src)
    return np.interp(np.linspace(0, x.size - 1, n), np.arange(x.size), x)


def band_envelopes(x: np.ndarray, rate: int, frame_s: float = 0.02, bands: int = 16) -> np.ndarray:
    """log energies (frames x bands) on a mel-like band split from 100 Hz to rate/2."""
    n = int(frame_s * rate)
    frames = x.size // n
    if frames == 0:
        return np.zeros((0, bands))
    spectrum = np.abs(np.fft.rfft(x[: frames * n].reshape(frames, n) * np.hanning(n), axis=1)) ** 2
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    edges = np.geomspace(100.0, rate / 2, bands + 1)
    out = np.empty((frames, bands))
    for b in range(bands):
        mask = (freqs >= edges[b]) & (freqs < edges[b + 1])
        out[:, b] = spectrum[:, mask].sum(axis=1) if mask.any() else 0.0
    return np.log10(out + 1e-10)


def envelope_match(heard: np.ndarray, reference: np.ndarray, rate: int) -> float:
    """Best Pearson correlation of ``heard``'s band envelopes against every (cyclic) position in
    ``reference``'s; 0.0 when either is too short or silent."""
    probe = band_envelopes(heard, rate)
    ref = band_envelopes(reference, rate)
    if probe.shape[0] < 5 or ref.shape[0] == 0 or tones.rms_dbfs(heard) < SILENCE_DBFS:
        return 0.0
    m = probe.shape[0]
    if ref.shape[0] < m:
        ref = np.concatenate([ref] * (m // ref.shape[0] + 1))
    ring = np.concatenate([ref, ref[: m - 1]])  # the reference loops (a prompt repeats)
    p = probe.reshape(-1) - probe.mean()
    pn = np.linalg.norm(p)
    if pn == 0:
        return 0.0
    best = -1.0
    for start in range(ref.shape[0]):
        window = ring[start:start + m].reshape(-1)
        w = window - window.mean()
        wn = np.linalg.norm(w)
        if wn:
            best = max(best, float(p @ w) / (pn * wn))
    return best


# --- the expectations --------------------------------------------------------------------


def _describe_digits(events: list[DtmfEvent]) -> str:
    return ", ".join(f"{e.digit} ({e.via})" for e in events) or "none"


class CallExpectations:
    """``expect_*`` methods of :class:`~softphone.agent.call.Call` (a mixin; see the module docs)."""

    _recording: ReceivedAudio | None

    @property
    def recording(self: Call) -> ReceivedAudio:
        """The far end's recent audio (:class:`ReceivedAudio`); kept from now on if it was not yet."""
        if self._recording is None:
            check = getattr(self, "_check_decoding", None)
            if check is not None:  # a call that only counts packets has no audio to analyse
                check("call.recording")
            self._recording = ReceivedAudio()
            self.audio.add(self._recording)
        return self._recording

    def ladder(self: Call, limit: int = 40) -> str:
        """The SIP messages of this call, one a line (from the transport's bounded log)."""
        transport = getattr(getattr(self.session, "core", None), "transport", None)
        ladder = getattr(transport, "ladder", None)
        if ladder is None:
            return "    (no SIP ladder: the transport keeps none)"
        return ladder.render(self.session.call_id, limit)

    def _failure(self: Call, what: str, *, audio: bool = True) -> ExpectationError:
        lines = [f"call {self.call_id} ({self.direction}, {self.state.value}, remote {self.remote}): {what}"]
        if audio:
            try:
                lines.append(f"  heard: {self.recording.describe()}")
            except AgentError as exc:
                lines.append(f"  heard: unknown ({exc})")
        lines.append(f"  digits received: {_describe_digits(self.digits)}")
        lines.append("  SIP ladder:\n" + self.ladder())
        return ExpectationError("\n".join(lines))

    async def expect_tone(self: Call, hz: float, within: float = 5.0, *,
                          min_level_dbfs: float = -40.0, window: float = 0.1) -> ToneEvent:
        """A tone of ``hz`` in what we receive within ``within`` seconds; returns its event.

        Heard means: over ``window`` seconds, the Goertzel level at ``hz`` is at least
        ``min_level_dbfs`` and carries at least a quarter of the audio's power (so a dual tone
        passes for either frequency, while another tone nearby or speech does not)."""
        rec = self.recording
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        since = time.monotonic() - window  # a tone already playing counts
        while True:
            x = rec.since(since)
            rate = rec.rate
            if rate and x.size >= int(window * rate):
                step = int(window * rate)
                hop = max(1, step // 2)
                for start in range(max(0, x.size - 4 * step), x.size - step + 1, hop):
                    chunk = x[start:start + step].astype(np.float64)
                    total = tones.rms_dbfs(chunk)
                    level = tones.tone_levels(chunk, [hz], rate)[0]
                    if level >= min_level_dbfs and level >= total - 6.0:
                        return ToneEvent(float(hz), level, round(time.monotonic() - rec.created_at, 3), None)
                since = time.monotonic() - 2 * window
            if loop.time() > deadline:
                raise self._failure(f"expected a {hz:g} Hz tone within {within:g} s")
            await asyncio.sleep(_POLL)

    async def expect_silence(self: Call, duration: float = 0.5, within: float = 5.0, *,
                             max_dbfs: float = SILENCE_DBFS) -> float:
        """``duration`` seconds in a row with nothing above ``max_dbfs`` received (no packets
        at all counts as silence), within ``within`` seconds; returns the level heard (dBFS)."""
        rec = self.recording
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            now = time.monotonic()
            window = rec.since(now - duration)
            level = tones.rms_dbfs(window.astype(np.float64)) if window.size else tones.DB_FLOOR
            if now - rec.created_at >= duration and level <= max_dbfs:
                return level
            if loop.time() > deadline:
                raise self._failure(f"expected {duration:g} s of silence (below {max_dbfs:g} dBFS) "
                                    f"within {within:g} s")
            await asyncio.sleep(_POLL)

    async def expect_audio(self: Call, within: float = 5.0, *, min_dbfs: float = -40.0) -> float:
        """Any audio above ``min_dbfs`` over 0.2 s within ``within`` seconds; returns its level."""
        rec = self.recording
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        start = time.monotonic()
        while True:
            window = rec.since(max(start, time.monotonic() - 0.2))
            if window.size and tones.rms_dbfs(window.astype(np.float64)) >= min_dbfs:
                return tones.rms_dbfs(window.astype(np.float64))
            if loop.time() > deadline:
                raise self._failure(f"expected audio above {min_dbfs:g} dBFS within {within:g} s")
            await asyncio.sleep(_POLL)

    async def expect_prompt(self: Call, reference: str | os.PathLike, within: float = 5.0, *,
                            min_score: float = PROMPT_SCORE, seconds: float = 1.5) -> float:
        """What we hear is (part of) the audio file ``reference``; returns the match score."""
        rec = self.recording
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        score = 0.0
        while True:
            if rec.received_seconds >= seconds:
                score = rec.prompt_score(reference, seconds)
                if score >= min_score:
                    return score
            if loop.time() > deadline:
                raise self._failure(f"expected to hear {os.fspath(reference)} within {within:g} s "
                                    f"(match score {score:.2f}, need {min_score:g})")
            await asyncio.sleep(0.2)

    async def expect_dtmf(self: Call, digits: str, timeout: float = 5.0) -> list[DtmfEvent]:
        """The next ``len(digits)`` digits received are ``digits``; returns their events."""
        if not digits:
            raise ConfigurationError("digits: expected at least one digit")
        first = self._digits_taken
        try:
            got = await self.wait_for_dtmf(len(digits), timeout=timeout)
        except TimeoutError:
            raise self._failure(f"expected DTMF {digits!r} within {timeout:.1f} s; got "
                                f"{_describe_digits(self.digits[first:])!s}", audio=False) from None
        except Exception as exc:
            raise self._failure(f"expected DTMF {digits!r}: {exc}", audio=False) from None
        events = self.digits[first:first + len(digits)]
        if got != digits.upper():
            raise self._failure(f"expected DTMF {digits!r}, got {got!r}", audio=False)
        return events

    async def expect_state(self: Call, state: Any, timeout: float = 5.0) -> None:
        """The call reaches ``state`` ("answered", "held", "ended" or a CallState) in time."""
        from softphone.agent.call import CallState

        try:
            want = state if isinstance(state, CallState) else CallState(str(state))
        except ValueError:
            raise ConfigurationError(f"state: one of {[s.value for s in CallState]}, got {state!r}") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.state is not want:
            if loop.time() > deadline:
                ended = f" (ended: {self.end_cause}, {self.end_sip_code})" if self.end_cause else ""
                raise self._failure(f"expected state {want.value} within {timeout:.1f} s, "
                                    f"still {self.state.value}{ended}", audio=False)
            await asyncio.sleep(0.02)


class PhoneExpectations:
    """``expect_call`` and ``expect_dtmf`` of a :class:`~softphone.agent.phone.Phone` / ``Agent``."""

    async def expect_call(self, timeout: float = 10.0) -> Call:
        """A call answered (the bridge call, or the next incoming) within ``timeout``; returns it."""
        try:
            return await self.wait_for_call(timeout=timeout)  # type: ignore[attr-defined]
        except TimeoutError:
            calls = getattr(self, "calls", [])
            seen = "; ".join(f"{c!r} ended {c.end_cause}" if c.end_cause else repr(c) for c in calls) or "none"
            raise ExpectationError(f"{self!r}: expected a call within {timeout:g} s; calls seen: {seen}") from None

    async def expect_dtmf(self, digits: str, timeout: float = 5.0) -> list[DtmfEvent]:
        """The live call receives ``digits`` next (waits for a call first, within ``timeout``)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        call = await self.expect_call(timeout)
        return await call.expect_dtmf(digits, timeout=max(0.1, timeout - (loop.time() - start)))


__all__ = ["DEFAULT_KEEP_SECONDS", "PROMPT_SCORE", "SILENCE_DBFS", "CallExpectations", "PhoneExpectations",
           "ReceivedAudio", "band_envelopes", "envelope_match", "load_reference"]
