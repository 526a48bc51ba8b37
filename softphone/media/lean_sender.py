"""The lean RTP sender for pre-encoded tracks, driven by the loop's 2 ms slot scheduler.

aiortc 1.16 runs a ``_run_rtp`` task per ``RTCRtpSender``: every 20 ms it wakes
the task, awaits ``track.recv()``, calls ``encoder.pack()``, converts time bases,
builds an ``RtpPacket`` and its header extensions through ``HeaderExtensionsMap``,
serialises it and awaits the transport.  At 150 peer connections that is about
a third of a core.  For a :class:`~softphone.media.pre_encoded_track.PreEncodedAudioTrack`
none of it is needed, so :func:`install_lean_sender` replaces the sender's loop
(through :mod:`softphone.media.aiortc_seam`) with a task that only parks itself
while :class:`~softphone.media.slot_scheduler.SlotScheduler` calls
:meth:`LeanRtpSender.tick` for each due packet:

* the header is ``struct.pack`` of the fixed 12 bytes plus a per-sender template of
  the header extensions aiortc negotiates for audio (mid and abs-send-time; the
  template comes from aiortc's own ``HeaderExtensionsMap``, so the bytes are what
  ``RtpPacket.serialize`` produces, marker set on every packet as aiortc does);
* the packet passes the RFC 4733 tap of :mod:`softphone.media.rfc4733` when DTMF was
  negotiated (it shifts sequence numbers and holds audio back while a digit
  plays), then is protected and handed to the nominated socket or TURN channel
  without a coroutine (:func:`~softphone.media.aiortc_seam.send_rtp_packet`);
* the last :attr:`LeanRtpSender.HISTORY` packets sent are kept (as they went on
  the wire, after the tap) and an RTCP NACK from the far end is answered by
  sending them again, as aiortc's ``_retransmit`` does from its ``__rtp_history``;
* the sender's RTCP counters (packets, octets, last RTP/NTP timestamps) are kept
  as aiortc keeps them, so sender reports, RTT and ``getStats()`` are unchanged;
* a new stream starts in a slot of the next 20 ms with room, else the least busy
  one (:meth:`~softphone.media.slot_scheduler.SlotScheduler.start_phase`), so calls
  set up together do not all send, and all receive, in the same 2 ms every frame.

Compared line by line with aiortc 1.16's ``RTCRtpSender._run_rtp`` (and
``_retransmit``), what this copy does differently or lacks:

* it sends nothing while the transceiver's negotiated direction excludes sending
  (hold to inactive/recvonly) as well as while aiortc has the sender disabled;
  timestamps keep running like a live source (aiortc sends while enabled);
* late frames: frames more than ``PreEncodedAudioTrack.MAX_LAG`` behind are
  skipped (timestamps jump, no sequence gap), a packet goes out up to one 2 ms
  slot after its due time; aiortc sends every frame its track yields;
* the NTP time of the last packet (sender reports) is read once, before the send,
  for both abs-send-time and the report; aiortc reads the clock again after the send;
* no audio-level header extension (aiortc writes none for pre-encoded data either);
* no RTX: a NACKed packet is resent as it was (aiortc wraps it in RTX only when
  RTX was negotiated, which aiortc never does for audio); telephone-event packets
  are not kept for retransmission (aiortc's loop never sees them either), nor
  are packets of a non-pre-encoded track sent through aiortc's encoder below;
* REMB is not applied (there is no encoder whose bitrate it could set);
* no per-packet debug log line.

A track replaced by a non-pre-encoded one is sent through aiortc's encoder as
``_run_rtp`` would, in the same sequence space.  Whether the lean sender is used
at all is ``MediaConfig.fast_path`` and ``FastPathOptions.lean_sender``.
"""

from __future__ import annotations

import asyncio
import enum
import struct
import time
import weakref
from typing import Any

from aiortc import RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import RtpPacket
from aiortc.utils import random32

from softphone.log import get_logger
from softphone.media import aiortc_seam as seam
from softphone.media.pre_encoded_track import PreEncodedAudioTrack
from softphone.media.rfc4733 import RtpSenderTap
from softphone.media.slot_scheduler import SlotScheduler, slot_scheduler

log = get_logger(__name__)

_SENDING = (None, "sendonly", "sendrecv")
_HEADER = struct.Struct("!BBHII")
_ABS_PROBE = 0xA5C3E1


def header_extension_template(sender: RTCRtpSender) -> tuple[bytes, bytes, bool]:
    """The extension block aiortc would write for this sender, split around abs-send-time.

    Returns ``(head, tail, has_abs)``: the block is ``head + abs(3 bytes) + tail`` when
    ``has_abs``, else ``head`` (empty when no extension was negotiated).
    """
    zero, probe = seam.header_extension_block(sender, 0), seam.header_extension_block(sender, _ABS_PROBE)
    if zero == probe:
        return zero, b"", False
    at = next(i for i in range(len(zero)) if zero[i] != probe[i])
    at = probe.index(_ABS_PROBE.to_bytes(3, "big"), max(0, at - 2))
    return zero[:at], zero[at + 3:], True


class LeanState(enum.Enum):
    WAITING = "waiting"  # track not prepared yet (encoding or fetching the audio)
    SENDING = "sending"
    HANDED_BACK = "handed-back"  # the track is no longer pre-encoded: aiortc's loop sends
    STOPPED = "stopped"


class LeanRtpSender:
    """The per-sender RTP state: sequence, timestamps, header template, NACK history."""

    #: Packets kept for NACK retransmission (aiortc keeps 128 too: RTP_HISTORY_SIZE).
    HISTORY = 128

    def __init__(self, sender: RTCRtpSender, codec: RTCRtpCodecParameters,
                 transceiver: RTCRtpTransceiver | None, done: asyncio.Future, *, spread: bool = True) -> None:
        self.sender = sender
        self._transceiver = weakref.ref(transceiver) if transceiver is not None else None
        self.payload_type = codec.payloadType
        self.ssrc = seam.sender_ssrc(sender)
        self.sequence_number = random_sequence_number()
        self.timestamp_origin = random32()
        self.ext_head, self.ext_tail, self.has_abs = header_extension_template(sender)
        self.byte0 = 0x90 if self.ext_head else 0x80
        self.byte1 = 0x80 | self.payload_type  # aiortc marks the last payload of every frame
        self.done = done
        self.spread = spread
        self.state = LeanState.WAITING
        self.track: Any = None
        self._ts_shift: int | None = 0  # keeps timestamps continuous across replaceTrack
        self._last_rel: int | None = None
        self._preparing: asyncio.Task | None = None
        self._phased = False  # the track's clock was placed in a slot of its own choosing
        self._history: list[bytes | None] = [None] * self.HISTORY
        self.packets = 0
        self.paused_frames = 0
        self.retransmitted = 0
        self.slot: tuple[int, SlotScheduler] | None = None  # where the scheduler holds us

    def _sending_allowed(self) -> bool:
        if not seam.sender_enabled(self.sender):
            return False
        transceiver = self._transceiver() if self._transceiver is not None else None
        return transceiver is None or transceiver.currentDirection in _SENDING

    def finish(self, state: LeanState, exc: BaseException | None = None) -> None:
        self.state = state
        if self.slot is not None:
            self.slot[1].discard(self.slot[0], self)  # nothing keeps a stopped call alive
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(state)

    def fail(self, exc: BaseException) -> None:
        self.finish(LeanState.STOPPED, exc)

    def tick(self, scheduler: SlotScheduler, now: float) -> float | None:
        """Send what is due; the loop time of the next wake-up, or None to drop out."""
        if self.done.done():
            return None
        track = seam.sender_track(self.sender)
        if track is not self.track:
            if track is not None and not isinstance(track, PreEncodedAudioTrack):
                self.finish(LeanState.HANDED_BACK)
                return None
            self.track = track
            self.state = LeanState.WAITING
            self._phased = False
            if self._last_rel is not None:
                self._ts_shift = None  # set from the new track's first pts
        if track is None:
            return now + scheduler.FRAME  # like aiortc: idle until a track is set
        if track.audio is None:
            if self._preparing is None or self._preparing.done():
                self._preparing = asyncio.ensure_future(self._prepare(scheduler, track))
            return None  # _prepare() schedules us again
        if not self._phased and self.spread:
            self._phased = True
            start = scheduler.start_phase(now)
            if track.align_start(start) and start > now:
                return start  # the first packet goes out in the chosen slot
        try:
            payload, pts = track.take(now)
        except MediaStreamError as exc:
            self.finish(LeanState.STOPPED, exc)
            return None
        self.state = LeanState.SENDING
        if self._ts_shift is None:
            self._ts_shift = self._last_rel + track.audio.frame_ticks - pts
        rel = (pts + self._ts_shift) & 0xFFFFFFFF
        self._last_rel = rel
        if self._sending_allowed():
            try:
                self._send(payload, (self.timestamp_origin + rel) & 0xFFFFFFFF)
            except (ConnectionError, MediaStreamError) as exc:
                self.finish(LeanState.STOPPED, exc)
                return None
        else:
            self.paused_frames += 1
        return track.due

    def build(self, payload: bytes, timestamp: int, ntp: int) -> bytes:
        """The RTP packet aiortc's ``RtpPacket.serialize`` would produce for this sender."""
        header = _HEADER.pack(self.byte0, self.byte1, self.sequence_number, timestamp, self.ssrc)
        if self.has_abs:
            return b"".join((header, self.ext_head, ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big"),
                             self.ext_tail, payload))
        return b"".join((header, self.ext_head, payload))

    def _send(self, payload: bytes, timestamp: int) -> None:
        t = time.time()
        sec = int(t)
        ntp = ((sec + seam.NTP_UNIX_OFFSET) << 32) | ((int((t - sec) * 1_000_000) << 32) // 1_000_000)
        data = self.build(payload, timestamp, ntp)
        sender = self.sender
        transport = sender.transport
        if type(transport) is RtpSenderTap:  # RFC 4733 negotiated: the tap shifts sequence numbers
            data = transport.take_audio(data)  # None: held back while a digit plays
            transport = transport.wrapped
        if data is not None:  # held-back audio is still counted below, as aiortc's sender counts it
            self._history[((data[2] << 8) | data[3]) % self.HISTORY] = data
            seam.send_rtp_packet(transport, data)
        seam.record_sent(sender, ntp, timestamp, len(payload))
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets += 1

    async def retransmit(self, sequence_number: int) -> None:
        """Send again the packet with this (wire) sequence number, if still kept (RTCP NACK)."""
        data = self._history[sequence_number % self.HISTORY]
        if data is None or ((data[2] << 8) | data[3]) != sequence_number:
            return
        transport = self.sender.transport
        if type(transport) is RtpSenderTap:
            transport = transport.wrapped  # already shifted: not through the tap again
        try:
            seam.send_rtp_packet(transport, data)
        except ConnectionError as exc:
            log.debug("x retransmission of %d not sent: %s", sequence_number, exc)
            return
        self.retransmitted += 1

    async def _prepare(self, scheduler: SlotScheduler, track: PreEncodedAudioTrack) -> None:
        try:
            await track.prepare()
        except Exception as exc:  # the sender ends, as aiortc's would
            self.finish(LeanState.STOPPED, exc)
            return
        if not self.done.done():
            scheduler.schedule(self, asyncio.get_running_loop().time())


def lean_sender_of(sender: RTCRtpSender) -> LeanRtpSender | None:
    """The running :class:`LeanRtpSender` of ``sender``, if any (tests, reports)."""
    return sender.__dict__.get("_softphone_lean")


def install_lean_sender(transceiver: RTCRtpTransceiver, *, spread: bool = True) -> bool:
    """Make ``transceiver.sender`` send pre-encoded tracks from the slot scheduler.

    Must precede negotiation (aiortc starts its loop when the description that
    starts media is applied); returns False when it is too late.  Idempotent.
    The caller has decided the fast path is on (``aiortc_seam.fast_path_enabled``).
    """
    sender = transceiver.sender
    transceiver_ref = weakref.ref(transceiver)

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        await _run_lean(sender, codec, transceiver_ref(), spread)

    async def retransmit(sequence_number: int) -> None:
        lean = lean_sender_of(sender)
        if lean is not None:
            await lean.retransmit(sequence_number)

    return seam.replace_sender_loop(sender, run_rtp, retransmit)


async def _run_lean(sender: RTCRtpSender, codec: RTCRtpCodecParameters,
                    transceiver: RTCRtpTransceiver | None, spread: bool) -> None:
    """Stands in for ``RTCRtpSender._run_rtp`` (same start/exit events and track handling)."""
    seam.sender_loop_started_event(sender)
    loop = asyncio.get_running_loop()
    lean = LeanRtpSender(sender, codec, transceiver, loop.create_future(), spread=spread)
    sender.__dict__["_softphone_lean"] = lean
    try:
        while True:
            slot_scheduler(loop).schedule(lean, loop.time())
            if await lean.done is not LeanState.HANDED_BACK:
                break
            log.debug("track is not pre-encoded: frames go through aiortc's encoder")
            await _send_encoded_frames(lean, codec)
            lean.done = loop.create_future()
            lean.state = LeanState.WAITING
    except (asyncio.CancelledError, ConnectionError, MediaStreamError):
        pass
    except Exception:
        log.exception("lean RTP sender stopped")
    finally:
        lean.finish(LeanState.STOPPED)
        if lean._preparing is not None:
            lean._preparing.cancel()
        sender.__dict__.pop("_softphone_lean", None)
    seam.sender_loop_exited(sender)


async def _send_encoded_frames(lean: LeanRtpSender, codec: RTCRtpCodecParameters) -> None:
    """aiortc's own loop for a track that is not pre-encoded, in this sender's sequence space.

    Restarting aiortc's ``_run_rtp`` instead would pick a new random sequence number on
    the same SSRC, which SRTP's replay check rejects.  Returns when a pre-encoded
    track is back.
    """
    sender = lean.sender
    ext_map = seam.sender_header_extensions_map(sender)
    mid = seam.sender_mid(sender)
    ticks = int(codec.clockRate * 0.02)
    shift: int | None = None
    while True:
        track = seam.sender_track(sender)
        if isinstance(track, PreEncodedAudioTrack):
            return
        if track is None:
            await asyncio.sleep(0.02)
            continue
        frame = await seam.next_encoded_frame(sender, codec)
        if frame is None:
            continue
        if shift is None:
            shift = 0 if lean._last_rel is None else lean._last_rel + ticks - frame.timestamp
        rel = (frame.timestamp + shift) & 0xFFFFFFFF
        lean._last_rel = rel
        lean.track = track
        if not lean._sending_allowed():
            lean.paused_frames += 1
            continue
        timestamp = (lean.timestamp_origin + rel) & 0xFFFFFFFF
        for i, payload in enumerate(frame.payloads):
            packet = RtpPacket(payload_type=codec.payloadType, sequence_number=lean.sequence_number,
                               timestamp=timestamp, ssrc=lean.ssrc)
            packet.payload = payload
            packet.marker = 1 if i == len(frame.payloads) - 1 else 0
            ntp = seam.current_ntp_time()
            packet.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
            packet.extensions.mid = mid
            if frame.audio_level is not None:
                packet.extensions.audio_level = (False, -frame.audio_level)
            await seam.send_rtp(sender.transport, packet.serialize(ext_map))
            seam.record_sent(sender, ntp, timestamp, len(payload))
            lean.sequence_number = (lean.sequence_number + 1) & 0xFFFF
            lean.packets += 1
