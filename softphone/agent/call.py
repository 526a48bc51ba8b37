"""The live call as a script sees it: play, record, DTMF both ways, tones, hold, hang-up, stats.

A :class:`Call` wraps one SIP session (:class:`~softphone.sip.invitation.Invitation`
or :class:`~softphone.sip.inviter.Inviter`) and its WebRTC description handler.
What it sends (``call.track``) never ends (aiortc's sender cannot restart once
its track ends), so :meth:`Call.play` swaps content mid-call.  A tone, silence
or a file goes on the lean path: a :class:`~softphone.media.lean_playback.LeanPlayback`
encoded once per codec in the process and shared by every call, sent without
encoding (by the lean RTP sender when the fast path is on).  What needs live
encoding (in-band DTMF ``"dtmf:..."``, several tones, any source object) plays
through one :class:`~softphone.media.sources.SwitchableSource` (``call.source``);
``replace_source`` moves between the two.  What it receives goes through one
:class:`~softphone.media.sinks.SinkFanout` to a level meter, the in-band DTMF
detector and whatever :meth:`record` and :meth:`wait_for_tone` add.

Digits arrive three ways (SIP INFO on the session, RFC 4733 on the handler,
tones in the audio) and leave as one stream of
:class:`softphone.events.DtmfEvent` (event ``dtmf``).

Events (pyee, payloads from :mod:`softphone.events`): ``call_answered``,
``call_ended``, ``dtmf``, ``hold``, ``unhold``, ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.agent.expect import CallExpectations, ReceivedAudio
from softphone.errors import AgentError, ConfigurationError, MediaError, SessionError, SipError
from softphone.events import CallAnswered, CallEnded, DtmfEvent, ErrorEvent, Hold, Unhold
from softphone.log import get_logger
from softphone.media.lean_playback import LeanPlayback, lean_playback
from softphone.media.recorder import Recorder
from softphone.media.sinks import AudioSink, DtmfDetector, LevelMeter, SinkFanout, ToneDetector, ToneEvent
from softphone.media.sources import (
    AudioSource,
    DtmfToneSource,
    FileSource,
    SilenceSource,
    SwitchableSource,
    ToneSource,
)
from softphone.media.stats import CallQuality
from softphone.sip.invitation import Invitation
from softphone.sip.session import Session, SessionState

if TYPE_CHECKING:
    from softphone.media.description_handler import WebRtcDescriptionHandler

log = get_logger(__name__)

HANGUP_TIMEOUT = 10.0
DTMF_METHODS = {"rfc4733": "rtp", "info": "info", "auto": "auto"}


class CallState(enum.Enum):
    DIALING = "dialing"
    """Outgoing, not answered yet."""
    RINGING = "ringing"
    """Incoming, not answered yet."""
    ANSWERED = "answered"
    HELD = "held"
    """Answered and on hold (either side)."""
    ENDED = "ended"


#: The one table of call state moves.
CALL_MOVES: dict[CallState, frozenset[CallState]] = {
    CallState.DIALING: frozenset({CallState.ANSWERED, CallState.ENDED}),
    CallState.RINGING: frozenset({CallState.ANSWERED, CallState.ENDED}),
    CallState.ANSWERED: frozenset({CallState.HELD, CallState.ENDED}),
    CallState.HELD: frozenset({CallState.ANSWERED, CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


def make_source(what: AudioSource | str | os.PathLike | float | None) -> AudioSource | None:
    """``"tone:440"``, ``"tone:350+440"``, ``"dtmf:123#"`` (in-band digits, then silence),
    ``"silence"``, a number (Hz), a file path or a source."""
    if what is None or isinstance(what, AudioSource):
        return what
    if isinstance(what, int | float):
        return ToneSource(float(what))
    text = os.fspath(what)
    if text == "silence":
        return SilenceSource()
    if text.startswith("dtmf:"):
        digits = text[5:].upper()
        if not digits or any(d not in "0123456789*#ABCD" for d in digits):
            raise ConfigurationError(f"play: {text!r}: dtmf: takes digits 0-9 * # A-D")
        return DtmfToneSource(digits)
    if text.startswith("tone:"):
        try:
            freqs = [float(f) for f in text[5:].split("+") if f.strip()]
        except ValueError:
            raise ConfigurationError(f"play: {text!r} is not tone:HZ or tone:HZ+HZ") from None
        if not freqs:
            raise ConfigurationError(f"play: {text!r} names no frequency")
        return ToneSource(freqs, amplitude=0.25 if len(freqs) == 1 else 0.2)
    return FileSource(Path(text))


class CallAudio:
    """The one sink the description handler starts: fans the far end's audio out.

    Sinks added before the audio arrives wait in ``pending`` and start with it.
    """

    def __init__(self, on_dtmf, inband_dtmf: bool = True) -> None:
        self.meter = LevelMeter(history_max=3000, name="received")
        self.detector: DtmfDetector | None = None
        sinks: list[AudioSink] = [self.meter]
        if inband_dtmf:
            self.detector = DtmfDetector()
            self.detector.on("dtmf", on_dtmf)
            sinks.append(self.detector)
        self.pending: list[AudioSink] = sinks
        self.fanout: SinkFanout | None = None
        self.track_arrived = asyncio.Event()

    async def start(self, track: Any) -> None:
        self.fanout = SinkFanout(track, self.pending)
        self.pending = []
        await self.fanout.start()
        self.track_arrived.set()

    async def stop(self) -> None:
        if self.fanout is not None:
            await self.fanout.stop()
        for sink in self.pending:
            with contextlib.suppress(Exception):
                sink.close()

    def add(self, sink: AudioSink) -> None:
        (self.fanout.sinks if self.fanout is not None else self.pending).append(sink)

    def remove(self, sink: AudioSink) -> None:
        for sinks in (self.pending, self.fanout.sinks if self.fanout else []):
            if sink in sinks:
                sinks.remove(sink)


class Call(CallExpectations, AsyncIOEventEmitter):
    """One live call; made by :class:`~softphone.agent.phone.Phone` (and so by ``Agent``).

    ``bridge`` marks the platform's call to a logged-in agent.  ``state`` is a
    :class:`CallState`; ``duration`` counts answered seconds.
    """

    def __init__(self, session: Session, *, bridge: bool = False, play: Any = None,
                 inband_dtmf: bool = True, keep_audio: float = 0.0, lean: bool = True) -> None:
        super().__init__()
        self.session = session
        self.direction = session.direction
        self.bridge = bridge
        self.state = CallState.RINGING if isinstance(session, Invitation) else CallState.DIALING
        self.created_at = time.monotonic()
        self.answered_at: float | None = None
        self.ended_at: float | None = None
        self.end_cause: str | None = None
        self.end_sip_code: int | None = None
        self.error: BaseException | None = None
        """Why the call could not be answered or set up, if it could not."""
        self.lean = lean
        """Send tones, silence and files pre-encoded (False: everything through the live source)."""
        first = lean_playback(play) if lean else None
        self.source = SwitchableSource(None if first is not None else make_source(play))
        """The live source: what needs encoding per call plays through it."""
        self.track: LeanPlayback | SwitchableSource = first if first is not None else self.source
        """What the call sends now: a pre-encoded :class:`LeanPlayback` or the live ``source``."""
        self.sent_meter = LevelMeter(history_max=3000, name="sent")
        self.source.add_tap(self._measure_sent)
        self.audio = CallAudio(self._on_dtmf, inband_dtmf)
        self._recording: ReceivedAudio | None = None
        if keep_audio > 0:  # ``call.recording``: the far end's last seconds, for expectations
            self._recording = ReceivedAudio(keep_audio)
            self.audio.add(self._recording)
        self.handler: WebRtcDescriptionHandler | None = None
        self.digits: list[DtmfEvent] = []
        self._digits_taken = 0
        self._digit_changed = asyncio.Event()
        self.recorders: list[Recorder] = []
        self.last_stats: CallQuality | None = None
        self.ended = asyncio.Event()
        self.answered = asyncio.Event()
        session.on("established", self._on_established)
        session.on("terminated", self._on_terminated)
        session.on("dtmf", self._on_dtmf)
        session.on("hold", lambda _direction: self._on_hold(True, "remote"))
        session.on("unhold", lambda _direction: self._on_hold(False, "remote"))

    def __repr__(self) -> str:
        return (f"Call({self.call_id!r}, {self.direction}, state={self.state.value}, "
                f"remote={self.remote!r}{', bridge' if self.bridge else ''})")

    # --- facts -------------------------------------------------------------------------

    @property
    def call_id(self) -> str:
        return self.session.call_id or "?"

    @property
    def remote(self) -> str:
        """Who is on the other end (From of an incoming call, the target of an outgoing one)."""
        if isinstance(self.session, Invitation):
            return self.session.remote_identity
        return str(getattr(self.session, "target", "?"))

    @property
    def duration(self) -> float:
        """Seconds since the answer (frozen when the call ended); 0 before it."""
        if self.answered_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.answered_at

    @property
    def is_live(self) -> bool:
        return self.state is not CallState.ENDED

    @property
    def on_hold(self) -> bool:
        return self.session.local_hold or self.session.remote_hold

    def received_level_dbfs(self, seconds: float = 1.0) -> float:
        """RMS level of the far end's audio over the last ``seconds`` (dBFS; very low when silent)."""
        return self.audio.meter.recent_rms_dbfs(seconds)

    def sent_level_dbfs(self, seconds: float = 1.0) -> float:
        """RMS level of what we send over the last ``seconds`` (dBFS); on the lean path the
        level of the content itself (a pre-encoded track is not measured per call)."""
        if isinstance(self.track, LeanPlayback):
            return self.track.level_dbfs
        return self.sent_meter.recent_rms_dbfs(seconds)

    def _measure_sent(self, frame: Any) -> None:
        try:
            self.sent_meter.write(frame)
        except Exception:  # a meter must never stop the audio
            self.source.remove_tap(self._measure_sent)

    # --- the state machine -------------------------------------------------------------

    def _move(self, new: CallState) -> bool:
        if new is self.state:
            return False
        if new not in CALL_MOVES[self.state]:
            log.debug("call %s: ignoring %s -> %s", self.call_id, self.state.value, new.value)
            return False
        log.debug("call %s: %s -> %s", self.call_id, self.state.value, new.value)
        self.state = new
        return True

    def _attach(self, handler: WebRtcDescriptionHandler) -> None:
        """The description handler for this call was made: listen to its RFC 4733 digits."""
        self.handler = handler
        handler.on("dtmf", self._on_dtmf)

    def _on_established(self) -> None:
        if self._move(CallState.ANSWERED):
            self.answered_at = time.monotonic()
            self.answered.set()
            self.emit("call_answered", CallAnswered(self.call_id, self.remote, self.direction, self.bridge))

    def _on_terminated(self, reason: str, status: int | None) -> None:
        if not self._move(CallState.ENDED):
            return
        self.ended_at = time.monotonic()
        self.end_cause, self.end_sip_code = reason, status
        self.answered.set()  # wake waiters; they check the state
        self.ended.set()
        self._digit_changed.set()
        self._close_recorders()
        self.source.stop()
        if isinstance(self.track, LeanPlayback):
            self.track.stop()
        self.emit("call_ended", CallEnded(self.call_id, reason, status, round(self.duration, 3), self.bridge))

    def _on_dtmf(self, event: DtmfEvent) -> None:
        log.info("call %s: DTMF %s (%d ms, %s)", self.call_id, event.digit, event.duration_ms, event.via)
        self.digits.append(event)
        self._digit_changed.set()
        self.emit("dtmf", event)

    def _on_hold(self, held: bool, by: str) -> None:
        if held:
            if self._move(CallState.HELD) or by == "remote":
                self.emit("hold", Hold(self.call_id, by))
        else:
            if not self.on_hold and self._move(CallState.ANSWERED):
                pass
            self.emit("unhold", Unhold(self.call_id, by))

    def _fail(self, where: str, error: BaseException) -> None:
        self.error = error
        cause = error.__cause__ or error
        self.emit("error", ErrorEvent(where, str(error), type(cause).__name__, fatal=self.bridge))

    # --- answering ---------------------------------------------------------------------

    async def answer(self) -> None:
        """Accept a ringing incoming call (``answer="manual"``); raises if it cannot be set up."""
        if not isinstance(self.session, Invitation):
            raise AgentError("answer: only an incoming call can be answered")
        try:
            await self.session.accept()
        except SipError as exc:
            self._fail("answer", exc)
            raise

    async def _auto_answer(self) -> None:
        with contextlib.suppress(SipError):
            await self.answer()

    async def reject(self, status: int = 486, reason: str | None = None) -> None:
        """Refuse a ringing incoming call with a final status (486 Busy Here by default)."""
        if not isinstance(self.session, Invitation):
            raise AgentError("reject: only an incoming call can be rejected")
        await self.session.reject(status, reason)

    async def wait_answered(self, timeout: float | None = None) -> None:
        """Until the call is answered; :class:`AgentError` if it ended first."""
        await asyncio.wait_for(self.answered.wait(), timeout)
        if self.answered_at is None:
            raise AgentError(f"call {self.call_id} ended before it was answered: {self.end_cause}"
                             + (f" ({self.end_sip_code})" if self.end_sip_code else ""))

    async def wait_ended(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.ended.wait(), timeout)

    # --- audio out -----------------------------------------------------------------------

    def play(self, what: AudioSource | str | os.PathLike | float | None) -> AudioSource | None:
        """Send ``what`` from now on: a file, ``"tone:440"``, ``"tone:350+440"``, ``"dtmf:12#"``, ``"silence"``,
        a frequency in Hz or any :class:`AudioSource`; None for silence.  Returns the source
        (``await source.played()`` waits for a file's end); the call stays up after it.

        A tone, silence or a file is sent pre-encoded (a :class:`LeanPlayback` is returned);
        in-band DTMF, several tones and source objects are encoded live."""
        lean = lean_playback(what) if self.lean else None
        if lean is not None:
            self._send(lean)
            self.source.switch(None, stop_previous=True)  # the live source idles in silence
            return lean
        source = make_source(what)
        self.source.switch(source, stop_previous=True)
        self._send(self.source)
        return source

    def _send(self, track: LeanPlayback | SwitchableSource) -> None:
        """Make ``track`` what the call sends (through the handler once there is one)."""
        old, self.track = self.track, track
        if old is track:
            return
        handler = self.handler
        if handler is not None and not handler.closed:
            try:
                handler.replace_source(track)
            except (MediaError, SipError) as exc:
                log.warning("call %s: cannot switch what it sends: %s", self.call_id, exc)
        if isinstance(old, LeanPlayback):
            # Not stopped: a stock aiortc sender loop may still be waiting on its next packet,
            # and a track ending under it stops the sender for good.  Waiters learn it ended.
            old.detach()

    async def send_dtmf(self, digits: str, method: str = "rfc4733", *, duration_ms: int = 100,
                        gap_ms: int = 70) -> str:
        """Send digits as RFC 4733 events (``"rfc4733"``), SIP INFO (``"info"``) or RFC 4733
        when negotiated else INFO (``"auto"``); returns the method used."""
        if method not in DTMF_METHODS:
            raise ConfigurationError(f"method: must be one of {sorted(DTMF_METHODS)}, got {method!r}")
        used = await self.session.send_dtmf(digits, duration_ms, gap_ms, DTMF_METHODS[method])
        return "rfc4733" if used == "rtp" else used

    # --- audio in ------------------------------------------------------------------------

    def record(self, path: str | os.PathLike, **recorder_options: Any) -> Recorder:
        """Record the far end's audio to ``path`` (format from the suffix: .wav, .ogg, .mp3, ...)
        until :meth:`stop_recording` or the end of the call."""
        self._check_decoding("record")
        recorder = Recorder(path, **recorder_options)
        self.recorders.append(recorder)
        self.audio.add(recorder)
        log.info("call %s: recording to %s", self.call_id, recorder.path)
        return recorder

    def _check_decoding(self, what: str) -> None:
        """Listening needs decoded audio: say so rather than wait for audio that never comes."""
        handler = self.handler
        if handler is not None and not handler.decode:
            raise AgentError(f"{what}: this call does not decode received audio (MediaConfig.decode=False)")

    async def stop_recording(self) -> list[Path]:
        """Finalise every recording of this call; returns their paths."""
        return self._close_recorders()

    def _close_recorders(self) -> list[Path]:
        paths = []
        for recorder in self.recorders:
            self.audio.remove(recorder)
            try:
                recorder.close()
            except Exception as exc:
                log.error("call %s: finalising %s failed: %s", self.call_id, recorder.path, exc)
            paths.append(recorder.path)
        self.recorders.clear()
        return paths

    async def wait_for_dtmf(self, n: int = 1, timeout: float | None = None) -> str:
        """The next ``n`` digits received (however they came) that no earlier call returned.

        Raises :class:`TimeoutError` if they do not arrive in ``timeout`` seconds, and
        :class:`AgentError` if the call ends first.
        """
        if n < 1:
            raise ConfigurationError(f"n: must be >= 1, got {n}")

        async def enough() -> None:
            while len(self.digits) - self._digits_taken < n:
                if not self.is_live:
                    raise AgentError(f"call {self.call_id} ended while waiting for {n} digit(s)")
                self._digit_changed.clear()
                await self._digit_changed.wait()

        await asyncio.wait_for(enough(), timeout)
        taken = self.digits[self._digits_taken:self._digits_taken + n]
        self._digits_taken += n
        return "".join(e.digit for e in taken)

    async def wait_for_tone(self, hz: float, timeout: float | None = None, *,
                            min_level_dbfs: float = -40.0) -> ToneEvent:
        """Until a tone of ``hz`` is heard in the far end's audio (from now on)."""
        self._check_decoding("wait_for_tone")
        detector = ToneDetector([hz], min_level_dbfs=min_level_dbfs)
        self.audio.add(detector)
        try:
            return await asyncio.wait_for(detector.wait_for(float(hz), include_past=True), timeout)
        finally:
            self.audio.remove(detector)
            detector.close()

    # --- call control --------------------------------------------------------------------

    async def hold(self) -> None:
        """Put the far end on hold (re-INVITE sendonly, as SIP.js does)."""
        await self.session.hold()
        self._on_hold(True, "local")

    async def unhold(self) -> None:
        await self.session.unhold()
        self._on_hold(False, "local")

    async def hangup(self) -> None:
        """End the call whatever its state (BYE, CANCEL, or 480 while ours rings); waits, bounded."""
        session = self.session
        if session.state is SessionState.TERMINATED:
            return
        try:
            if isinstance(session, Invitation) and session.state is SessionState.ESTABLISHING:
                await session.reject(480, "Temporarily Unavailable")
            elif session.state is SessionState.ESTABLISHED:
                await session.bye("local hangup")
            else:
                hangup = getattr(session, "hangup", None)
                if hangup is not None:
                    await hangup()
            await session.wait_terminated(HANGUP_TIMEOUT)
        except (SessionError, TimeoutError) as exc:
            log.warning("call %s: hangup: %s", self.call_id, exc)

    async def stats(self) -> CallQuality:
        """Loss, jitter (ms), RTT (ms) and an estimated MOS (None when not measurable yet).

        After the call ended: the last figures read while it was up."""
        handler = self.handler
        if handler is None or handler.closed or not self.is_live:
            return self.last_stats or CallQuality()
        with contextlib.suppress(SipError):
            self.last_stats = await handler.stats()
        return self.last_stats or CallQuality()


__all__ = ["CALL_MOVES", "Call", "CallAudio", "CallState", "make_source"]
