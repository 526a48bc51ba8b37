"""A pre-encoded audio track: 20 ms payloads from :mod:`softphone.media.encoded_audio`.

Sent either through aiortc's own sender loop (``track.recv()`` hands a non-``Frame``
object to ``encoder.pack()``: no executor, no audio-level loop), paced by the
loop's :class:`~softphone.media.slot_scheduler.SlotScheduler`, or, with the fast
path, by the lean sender (:mod:`softphone.media.lean_sender`) calling
:meth:`PreEncodedAudioTrack.take` from the scheduler's timer.
"""

from __future__ import annotations

import asyncio
import enum
import fractions
import weakref

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from softphone.errors import CodecError, MediaError
from softphone.log import get_logger
from softphone.media.aiortc_seam import negotiated_codecs
from softphone.media.codecs import CodecSpec, codec_spec
from softphone.media.encoded_audio import (
    PTIMES_MS,
    AudioSource,
    EncodedAudio,
    EncodedAudioCache,
    shared_cache,
)
from softphone.media.slot_scheduler import slot_scheduler

log = get_logger(__name__)


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


class PlaybackState(enum.Enum):
    WAITING = "waiting"  # no packet asked for yet (codec may still be unknown)
    PLAYING = "playing"
    ENDED = "ended"


class PreEncodedAudioTrack(MediaStreamTrack):
    """An audio track that yields pre-encoded 20 ms packets paced by the loop clock.

    The codec is taken from ``codec`` or, when the track is :meth:`bind`-ed to a
    transceiver, from the codec negotiated for it (known by the time the sender
    asks for the first packet).  ``repeat`` loops the source; otherwise the track
    ends after the last packet and the sender stops.  ``ptime_ms`` 40 or 60 sends
    longer packets (G.711/G.722 only: see :meth:`EncodedAudio.packetized`), a
    load-test lever that trades realism (browsers send 20 ms) for fewer packets;
    the SDP does not announce it, so use it only with a far end that takes any
    packet size (G.711 receivers do).
    """

    kind = "audio"

    #: When the loop falls this far behind, skip the missed frames rather than send a burst.
    MAX_LAG = 0.2

    def __init__(self, source: AudioSource, *, codec: str | None = None, repeat: bool = True,
                 cache: EncodedAudioCache | None = None, ptime_ms: int = 20) -> None:
        super().__init__()
        if ptime_ms not in PTIMES_MS:
            raise CodecError(f"ptime_ms: {ptime_ms} is not one of {PTIMES_MS}")
        self.ptime_ms = ptime_ms
        self._frame_seconds = ptime_ms / 1000
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
        """Follow ``transceiver``'s negotiated codec (weakly: no reference cycle).

        Sending it through the lean sender is the caller's choice
        (:func:`softphone.media.lean_sender.install_lean_sender`).
        """
        self._transceiver = weakref.ref(transceiver)
        return self

    @property
    def audio(self) -> EncodedAudio | None:
        return self._audio

    def _negotiated_codec(self) -> CodecSpec:
        if self._codec is not None:
            return self._codec
        transceiver = self._transceiver() if self._transceiver else None
        codecs = negotiated_codecs(transceiver) if transceiver is not None else None
        if not codecs:
            raise MediaError("PreEncodedAudioTrack: no codec given and none negotiated yet "
                             "(pass codec= or bind() the track to its transceiver)")
        return codec_spec(codecs[0].mimeType)

    async def prepare(self) -> EncodedAudio:
        """Fetch (or encode) the audio and start the playback clock; idempotent."""
        audio = self._audio
        if audio is None:
            audio = (await self._cache.aget(self._source, self._negotiated_codec())).packetized(self.ptime_ms)
            if self._audio is None:
                self._audio = audio
                self._start = asyncio.get_running_loop().time()
                self.state = PlaybackState.PLAYING
        return self._audio

    def align_start(self, at: float) -> bool:
        """Start the playback clock at loop time ``at`` instead, if no packet was taken yet.

        The lean sender uses it to spread calls over the 20 ms frame (see
        :meth:`~softphone.media.slot_scheduler.SlotScheduler.start_phase`).
        """
        if self._audio is None or self._index or self.packets_sent:
            return False
        self._start = at
        return True

    @property
    def due(self) -> float:
        """Loop time at which the next packet is due (valid once prepared)."""
        return self._start + self._index * self._frame_seconds

    def take(self, now: float) -> tuple[bytes, int]:
        """The next payload and its pts (RTP ticks from the start), skipping frames if ``now``
        is far past due; raises ``MediaStreamError`` once a non-repeating source is done.

        The lean RTP sender calls this from its shared timer; :meth:`recv` after waiting.
        """
        audio = self._audio
        if audio is None or self.readyState != "live":
            raise MediaStreamError
        wait = self._start + self._index * self._frame_seconds - now
        if wait < -self.MAX_LAG:
            # Starved loop: drop the frames whose time has passed, as a live source
            # would, instead of flooding the far end; RTP timestamps keep real time.
            skipped = int(-wait / self._frame_seconds)
            self._index += skipped
            self.frames_skipped += skipped
        index = self._index
        payloads = audio.payloads
        if index >= len(payloads) and not self._repeat:
            self.stop()
            raise MediaStreamError
        self._index = index + 1
        self.packets_sent += 1
        return payloads[index % len(payloads)], index * audio.frame_ticks

    async def recv(self) -> EncodedPacket:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._audio is None:
            await self.prepare()
        else:
            due = self._start + self._index * self._frame_seconds
            if due > loop.time():
                await slot_scheduler(loop).sleep_until(due)
        payload, pts = self.take(loop.time())
        return EncodedPacket(payload, pts, self._audio.codec.time_base)

    def stop(self) -> None:
        self.state = PlaybackState.ENDED
        self._transceiver = None
        super().stop()
