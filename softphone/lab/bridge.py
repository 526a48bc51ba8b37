"""The agent's bridge call and the audio the lab moves between it and the customers.

One :class:`AgentBridge` per logged-in agent: the lab's aiortc leg to the
agent's phone (offer with complete ICE candidates, DTLS-SRTP, Opus and PCMU,
rtcp-mux, RFC 4733) and two directions of audio:

* to the agent: the prompt while no customer is on the line, the customer's
  voice while one is, silence while every customer is on hold, and a mix when
  several are up (conference).  A prompt, tone or file is sent pre-encoded in
  the negotiated codec (:class:`~softphone.media.lean.PreEncodedAudioTrack`):
  no encoding per call.  Only echo and mixes go through aiortc's encoder.
* from the agent: received RTP is decoded only when ``decode`` is on (the lab
  default; a load run turns it off and the receiver only counts packets);
  decoded frames go to whoever listens: the bridge recording, call recordings,
  and the customers on the line (their tone/DTMF detectors, echo).

Hold: the customer's leg gets a re-INVITE (``a=sendonly`` from the lab) and
hears silence, or the hold music (``TelephonyOptions.hold_music``: a tone or a
file); the agent's bridge call is *not* re-INVITEd (as Asterisk
parks a customer while the agent's WebRTC leg stays up) and hears silence.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.errors import MediaError
from softphone.log import get_logger
from softphone.media.config import MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler, WebRtcDescriptionHandlerFactory
from softphone.media.lean import PreEncodedAudioTrack, Tone
from softphone.media.sources import AudioSource, FileSource, SilenceSource, ToneSource, write_wav

log = get_logger(__name__)

Listener = Callable[[av.AudioFrame], None]
_silence_file: Path | None = None


def silence_file() -> Path:
    """A one-second silent WAV (encoded once per codec by the shared cache, like any prompt)."""
    global _silence_file
    if _silence_file is None or not _silence_file.exists():
        folder = Path(tempfile.mkdtemp(prefix="softphone-lab-"))
        atexit.register(shutil.rmtree, folder, True)
        _silence_file = write_wav(folder / "silence.wav", bytes(2 * 8000), 8000)
    return _silence_file


def lean_track(spec: str) -> MediaStreamTrack:
    """A pre-encoded looping track for ``tone:HZ``, ``silence`` or an audio file."""
    if spec.startswith("tone:"):
        return PreEncodedAudioTrack(Tone(float(spec[5:]), seconds=1.0, amplitude=0.3))
    if spec == "silence":
        return PreEncodedAudioTrack(silence_file())
    return PreEncodedAudioTrack(spec)


def pcm_source(spec: str) -> AudioSource:
    """The same content as PCM (for mixing): ``tone:HZ``, ``silence`` or a file (looped)."""
    if spec.startswith("tone:"):
        return ToneSource(float(spec[5:]), amplitude=0.3, realtime=False)
    if spec in ("silence", "echo"):
        return SilenceSource(realtime=False)
    return FileSource(spec, loop=True, realtime=False)


class EchoSource(AudioSource):
    """Plays back what it is fed (``write(frame)``), about 60 ms later; silence when starved."""

    MAX_SECONDS = 1.0

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._buffer = bytearray()
        self._resampler: av.AudioResampler | None = None
        self._primed = False

    def write(self, frame: av.AudioFrame) -> None:
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout=self.layout, rate=self.sample_rate)
        for out in self._resampler.resample(frame):
            self._buffer += bytes(out.planes[0])[: out.samples * self.bytes_per_sample]
        limit = int(self.MAX_SECONDS * self.sample_rate) * self.bytes_per_sample
        if len(self._buffer) > limit:
            del self._buffer[: len(self._buffer) - limit]

    def close(self) -> None:
        self._buffer.clear()

    def _produce(self, n: int) -> bytes:
        want = n * self.bytes_per_sample
        if not self._primed:
            # keep ~3 frames of slack so jitter in what arrives does not cut the echo up
            if len(self._buffer) < 3 * want:
                return bytes(want)
            self._primed = True
        data = bytes(self._buffer[:want])
        del self._buffer[:want]
        return data + bytes(want - len(data))


class MixSource(AudioSource):
    """The sum of several PCM sources (the agent hears every customer of a conference)."""

    def __init__(self, sources: list[AudioSource], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sources = sources
        for s in sources:
            s.set_format(self.sample_rate, self.channels)

    def _produce(self, n: int) -> bytes:
        total = np.zeros(n * self.channels, dtype=np.int32)
        for s in self.sources:
            data = s.read(n)
            if data:
                pcm = np.frombuffer(data, dtype="<i2").astype(np.int32)
                total[: len(pcm)] += pcm
        return np.clip(total, -32768, 32767).astype("<i2").tobytes()

    def _close(self) -> None:
        for s in self.sources:
            s.stop()


class _Ear:
    """The handler's sink for the agent's decoded audio: one reader, many listeners."""

    def __init__(self, bridge: AgentBridge) -> None:
        self.bridge = bridge
        self._task: asyncio.Task | None = None
        self.frames = 0

    async def start(self, track: MediaStreamTrack) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.frames += 1
                for listener in list(self.bridge.listeners.values()):
                    try:
                        listener(frame)
                    except Exception:
                        log.exception("bridge listener failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None


class AgentBridge:
    """The lab's side of one agent's bridge call (see the module docstring)."""

    def __init__(self, user_id: int, extension: str, *, prompt: str, media: MediaConfig,
                 decode: bool = True, hold_music: str = "silence") -> None:
        self.user_id = user_id
        self.hold_music = hold_music
        self.extension = extension
        self.prompt = prompt
        self.decode = decode
        self.media = media
        self.listeners: dict[Any, Listener] = {}
        self.voices: dict[Any, str] = {}  # key -> what that party plays to the agent
        self.held: set[Any] = set()
        self.session: Any = None
        self.handler: WebRtcDescriptionHandler | None = None
        self.closing = False
        self._ear = _Ear(self)
        self._playing: str | None = None
        self._echo: dict[Any, EchoSource] = {}
        self._parties: dict[Any, Listener] = {}
        self._mix_sources: dict[tuple[Any, Any], AudioSource] = {}

    def handler_factory(self) -> WebRtcDescriptionHandlerFactory:
        def source(_session: Any) -> MediaStreamTrack:
            self._playing = f"prompt {self.prompt}"
            return lean_track(self.prompt)

        def sinks(_session: Any) -> list[Any]:
            return [self._ear] if self.decode else []

        return WebRtcDescriptionHandlerFactory(self.media, source, sinks, decode=self.decode)

    def bind(self, session: Any) -> None:
        """The bridge call's session (an Inviter); its handler is ours."""
        self.session = session
        self.handler = session.handler

    @property
    def frames_heard(self) -> int:
        """Decoded frames received from the agent so far."""
        return self._ear.frames

    # --- what the agent hears -------------------------------------------------------------

    def add_party(self, key: Any, voice: str, listener: Listener | None) -> None:
        """A customer joins: the agent hears ``voice``; ``listener`` gets what the customer hears.

        That is the agent's audio, plus, in a conference, the other customers' voices
        (mixed in at the pace of the agent's frames).
        """
        if voice == "echo":
            self._echo[key] = EchoSource()
        self.voices[key] = voice
        if listener is not None:
            self._parties[key] = listener
            self.listeners[key] = lambda frame, k=key: self._to_party(k, frame)
        self.update()

    def remove_party(self, key: Any) -> None:
        self.voices.pop(key, None)
        self.listeners.pop(key, None)
        self._parties.pop(key, None)
        self.held.discard(key)
        for pair in [p for p in self._mix_sources if key in p]:
            self._mix_sources.pop(pair).stop()
        echo = self._echo.pop(key, None)
        if echo is not None:
            echo.close()
        self.update()

    def _to_party(self, key: Any, frame: av.AudioFrame) -> None:
        echo = self._echo.get(key)
        if echo is not None and key not in self.held:
            echo.write(frame)
        listener = self._parties.get(key)
        if listener is None:
            return
        if key in self.held:
            listener(self._hold_frame(key, frame))
            return
        others = [k for k in self.voices if k != key and k not in self.held and self.voices[k] != "echo"]
        listener(self.mixed(frame, others, key) if others and key not in self.held else frame)

    def _hold_frame(self, key: Any, frame: av.AudioFrame) -> av.AudioFrame:
        """What a held customer hears instead of the agent: the hold music, or silence."""
        n, rate = frame.samples, frame.sample_rate
        data = b""
        if self.hold_music != "silence":
            source = self._mix_sources.get(("hold", key))
            if source is None:
                source = self._mix_sources[("hold", key)] = pcm_source(self.hold_music)
            if source.sample_rate != rate or source.channels != 1:
                source.set_format(rate, 1)
            data = source.read(n)
        out = av.AudioFrame(format="s16", layout="mono", samples=n)
        out.planes[0].update(data.ljust(2 * n, b"\0")[: 2 * n])
        out.sample_rate, out.pts, out.time_base = rate, frame.pts, frame.time_base
        return out

    def mixed(self, frame: av.AudioFrame, keys: list[Any], consumer: Any) -> av.AudioFrame:
        """``frame`` (the agent) plus the voices of ``keys``, as one s16 mono frame."""
        from softphone.media.sinks import frame_to_mono

        n, rate = frame.samples, frame.sample_rate
        total = frame_to_mono(frame) * 32768.0
        for k in keys:
            source = self._mix_sources.get((consumer, k))
            if source is None:
                source = self._mix_sources[(consumer, k)] = pcm_source(self.voices[k])
            if source.sample_rate != rate or source.channels != 1:
                source.set_format(rate, 1)
            data = source.read(n)
            if data:
                pcm = np.frombuffer(data, dtype="<i2")
                total[: len(pcm)] += pcm
        out = av.AudioFrame(format="s16", layout="mono", samples=n)
        out.planes[0].update(np.clip(total, -32768, 32767).astype("<i2").tobytes())
        out.sample_rate, out.pts, out.time_base = rate, frame.pts, frame.time_base
        return out

    def set_held(self, key: Any, held: bool) -> None:
        (self.held.add if held else self.held.discard)(key)
        self.update()

    def add_listener(self, key: Any, listener: Listener) -> None:
        self.listeners[key] = listener

    def remove_listener(self, key: Any) -> None:
        self.listeners.pop(key, None)

    def update(self) -> None:
        """Send the agent what the parties on the line say now."""
        if self.handler is None or self.handler.closed or self.closing or self.handler.sending_stopped:
            return  # nothing more goes to this phone (its call is ending)
        live = [k for k in self.voices if k not in self.held]
        if not self.voices:
            want = f"prompt {self.prompt}"
        elif not live:
            want = "silence"
        elif len(live) == 1:
            want = f"voice {live[0]!r} {self.voices[live[0]]}"
        else:
            want = "mix " + ",".join(f"{k!r}:{self.voices[k]}" for k in live)
        if want == self._playing:
            return
        if not self.voices:
            track: MediaStreamTrack = lean_track(self.prompt)
        elif not live:
            track = lean_track("silence")
        elif len(live) == 1:
            voice = self.voices[live[0]]
            track = self._echo[live[0]] if voice == "echo" else lean_track(voice)
        else:
            track = MixSource([self._echo[k] if self.voices[k] == "echo" else pcm_source(self.voices[k])
                               for k in live])
        old = self.handler.source
        try:
            self.handler.replace_source(track)
        except MediaError as exc:
            log.warning("bridge of extension %s: cannot switch audio: %s", self.extension, exc)
            return
        self._playing = want
        log.debug("bridge of extension %s now plays %s", self.extension, want)
        if isinstance(old, PreEncodedAudioTrack) and old is not track:
            # A PCM track is left alone: aiortc's encoder loop may be awaiting its next
            # frame, and a track ending under it stops the sender for good.
            old.stop()

    async def send_dtmf(self, digits: str) -> bool:
        """RFC 4733 to the agent (what a gateway relays from the customer)."""
        if self.handler is None or self.handler.closed:
            return False
        return await self.handler.send_dtmf(digits)

    # --- life cycle -------------------------------------------------------------------

    async def hangup(self) -> None:
        """BYE the bridge call (or CANCEL it while it still rings)."""
        self.closing = True
        session = self.session
        if session is not None:
            await session.hangup()
        self.listeners.clear()
        await self._ear.stop()
