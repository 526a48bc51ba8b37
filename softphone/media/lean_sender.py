"""A lean RTP sender for pre-encoded tracks: one shared timer drives every sender of a loop.

aiortc 1.16 runs a ``_run_rtp`` task per ``RTCRtpSender``: every 20 ms it wakes
the task, awaits ``track.recv()``, calls ``encoder.pack()``, converts time bases,
builds an ``RtpPacket`` and its header extensions through ``HeaderExtensionsMap``,
serialises it and awaits the transport.  At 150 peer connections that is about
a third of a core.  For a :class:`~softphone.media.lean.PreEncodedAudioTrack` none
of it is needed, so :func:`install_lean_sender` replaces the sender's ``_run_rtp``
with a task that only parks itself while :class:`LeanSendDriver` (one per event
loop, one timer per 2 ms slot shared by all senders due in it) sends each due
packet synchronously:

* the header is ``struct.pack`` of the fixed 12 bytes plus a per-sender template of
  the header extensions aiortc negotiates for audio (mid and abs-send-time; the
  template comes from aiortc's own ``HeaderExtensionsMap``, so the bytes are what
  ``RtpPacket.serialize`` produces, marker set on every packet as aiortc does);
* the packet passes the RFC 4733 tap of :mod:`softphone.media.dtmf` when DTMF was
  negotiated (it shifts sequence numbers and holds audio back while a digit
  plays), then :func:`~softphone.media.fastpath.send_rtp_now` protects it and hands
  it to the nominated socket or TURN channel without a coroutine; without the
  fast send path, the transport's ``_send_rtp`` is stepped by hand and any rest
  runs in a task;
* the sender's RTCP counters (packets, octets, last RTP/NTP timestamps) are kept
  as aiortc keeps them, so sender reports, RTT and ``getStats()`` are unchanged;
* a new stream starts in a slot of the next 20 ms with room, else the least busy
  one (:meth:`LeanSendDriver.start_phase`), so calls set up together do not all
  send, and all receive, in the same 2 ms every frame.

Unlike stock aiortc it sends nothing while the transceiver's negotiated direction
excludes sending (hold to inactive) or the sender is disabled; the timestamps keep
running like a live source.  A track replaced by a non-pre-encoded one is sent
through aiortc's encoder as ``_run_rtp`` would, in the same sequence space.  ``SOFTPHONE_LEAN_SENDER=0`` or
:func:`set_lean_sender_enabled` turns the path off for A/B measurements.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import struct
import time
import weakref
from typing import Any

import aiortc
from aiortc import RTCRtpTransceiver
from aiortc import clock as aiortc_clock
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender, random_sequence_number
from aiortc.rtp import HeaderExtensions, RtpPacket
from aiortc.utils import random32

from softphone.errors import AiortcCompatibilityError
from softphone.log import get_logger
from softphone.media.dtmf import RtpSenderTap
from softphone.media.fastpath import NTP_UNIX_OFFSET, send_rtp_now, step_awaitable

log = get_logger(__name__)

TESTED_AIORTC = ((1, 16),)
_SENDER_PRIVATE = (
    "_RTCRtpSender__track", "_RTCRtpSender__mid", "_RTCRtpSender__rtp_header_extensions_map",
    "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__encoder",
    "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp",
    "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count", "_ssrc", "_enabled",
)
_SENDING = (None, "sendonly", "sendrecv")
_HEADER = struct.Struct("!BBHII")
_ABS_PROBE = 0xA5C3E1

_enabled = os.environ.get("SOFTPHONE_LEAN_SENDER", "1").strip().lower() not in ("0", "false", "no", "off")


def lean_sender_enabled() -> bool:
    return _enabled


def set_lean_sender_enabled(enabled: bool) -> None:
    """Switch the lean sender on or off for senders installed from now on (A/B runs)."""
    global _enabled
    _enabled = bool(enabled)


def check_lean_sender_supported(sender: RTCRtpSender | None = None) -> None:
    """Raise :class:`AiortcCompatibilityError` unless the sender hook fits this aiortc."""
    version = tuple(int(x) for x in aiortc.__version__.split(".")[:2] if x.isdigit())
    missing = [m for m in ("_run_rtp", "_run_rtcp", "send", "stop") if not hasattr(RTCRtpSender, m)]
    if sender is not None:
        missing += [a for a in _SENDER_PRIVATE if not hasattr(sender, a)]
    if version not in TESTED_AIORTC or missing:
        tested = ", ".join(".".join(map(str, v)) for v in TESTED_AIORTC)
        raise AiortcCompatibilityError(
            f"aiortc {aiortc.__version__}: the lean RTP sender is written for aiortc {tested}"
            + (f"; missing {', '.join(missing)}" if missing else ""))


def header_extension_template(sender: RTCRtpSender) -> tuple[bytes, bytes, bool]:
    """The extension block aiortc would write for this sender, split around abs-send-time.

    Returns ``(head, tail, has_abs)``: the block is ``head + abs(3 bytes) + tail`` when
    ``has_abs``, else ``head`` (empty when no extension was negotiated).
    """
    ext_map = sender._RTCRtpSender__rtp_header_extensions_map
    mid = sender._RTCRtpSender__mid

    def block(abs_send_time: int) -> bytes:
        profile, value = ext_map.set(HeaderExtensions(mid=mid, abs_send_time=abs_send_time))
        return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""

    zero, probe = block(0), block(_ABS_PROBE)
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
    """The per-sender RTP state the driver needs: sequence, timestamps, header template."""

    def __init__(self, sender: RTCRtpSender, codec: RTCRtpCodecParameters,
                 transceiver: RTCRtpTransceiver | None, done: asyncio.Future) -> None:
        self.sender = sender
        self._transceiver = weakref.ref(transceiver) if transceiver is not None else None
        self.payload_type = codec.payloadType
        self.ssrc = sender._ssrc
        self.sequence_number = random_sequence_number()
        self.timestamp_origin = random32()
        self.ext_head, self.ext_tail, self.has_abs = header_extension_template(sender)
        self.byte0 = 0x90 if self.ext_head else 0x80
        self.byte1 = 0x80 | self.payload_type  # aiortc marks the last payload of every frame
        self.done = done
        self.state = LeanState.WAITING
        self.track: Any = None
        self._ts_shift = 0  # keeps timestamps continuous across replaceTrack
        self._last_rel: int | None = None
        self._preparing: asyncio.Task | None = None
        self._phased = False  # the track's clock was placed in a slot of its own choosing
        self.packets = 0
        self.paused_frames = 0
        self.slot: tuple[int, LeanSendDriver] | None = None  # where the driver holds us

    def _sending_allowed(self) -> bool:
        if not self.sender._enabled:
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

    def tick(self, driver: LeanSendDriver, now: float) -> float | None:
        """Send what is due; the loop time of the next wake-up, or None to drop out."""
        if self.done.done():
            return None
        sender = self.sender
        track = sender._RTCRtpSender__track
        if track is not self.track:
            from softphone.media.lean import PreEncodedAudioTrack  # not per packet: 3% of a core

            if track is not None and not isinstance(track, PreEncodedAudioTrack):
                self.finish(LeanState.HANDED_BACK)
                return None
            self.track = track
            self.state = LeanState.WAITING
            self._phased = False
            if self._last_rel is not None:
                self._ts_shift = None  # set from the new track's first pts
        if track is None:
            return now + driver.FRAME  # like aiortc: idle until a track is set
        if track._audio is None:
            if self._preparing is None or self._preparing.done():
                self._preparing = asyncio.ensure_future(self._prepare(driver, track))
            return None  # _prepare() schedules us again
        if not self._phased and driver.spread:
            self._phased = True
            start = driver.start_phase(now)
            if track.align_start(start) and start > now:
                return start  # the first packet goes out in the chosen slot
        try:
            payload, pts = track.take(now)
        except MediaStreamError as exc:
            self.finish(LeanState.STOPPED, exc)
            return None
        self.state = LeanState.SENDING
        if self._ts_shift is None:
            self._ts_shift = self._last_rel + driver.ticks_of(track) - pts
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
        ntp = ((sec + NTP_UNIX_OFFSET) << 32) | ((int((t - sec) * 1_000_000) << 32) // 1_000_000)
        data = self.build(payload, timestamp, ntp)
        sender = self.sender
        transport = sender.transport
        if type(transport) is RtpSenderTap:  # RFC 4733 negotiated: the tap shifts sequence numbers
            data = transport.take_audio(data)  # None: held back while a digit plays
            transport = transport.wrapped
        if data is not None:  # held-back audio is still counted below, as aiortc's sender counts it
            if type(transport) is RTCDtlsTransport:
                send_rtp_now(transport, data)
            else:  # something else standing in for the transport
                step_awaitable(transport._send_rtp(data))
        sender._RTCRtpSender__ntp_timestamp = ntp
        sender._RTCRtpSender__rtp_timestamp = timestamp
        sender._RTCRtpSender__octet_count += len(payload)
        sender._RTCRtpSender__packet_count += 1
        self.sequence_number = (self.sequence_number + 1) & 0xFFFF
        self.packets += 1

    async def _prepare(self, driver: LeanSendDriver, track: Any) -> None:
        try:
            await track.prepare()
        except Exception as exc:  # the sender ends, as aiortc's would
            self.finish(LeanState.STOPPED, exc)
            return
        if not self.done.done():
            driver.schedule(self, asyncio.get_running_loop().time())


class LeanSendDriver:
    """One timer per 2 ms slot wakes every lean sender of one event loop due in it."""

    SLOT = 0.002
    FRAME = 0.02
    #: Start new streams in a slot of the driver's choosing (False: at once, for A/B runs).
    spread = True
    #: Streams per slot before new ones open another slot.  Sharing a slot saves
    #: wake-ups (each costs about as much as a few packets on a VM); past this many,
    #: a slot's burst of sends and receives starts to show as event-loop lag.
    BATCH = 16

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[LeanRtpSender]] = {}
        self._firing: tuple[int, list[LeanRtpSender]] | None = None
        self._firing_done = 0

    def start_phase(self, now: float) -> float:
        """When a new stream should send its first packet: a slot of the next frame.

        Tracks prepared together (calls set up in a batch, every track waiting on
        the same encoding) would otherwise share one 2 ms slot for the whole call:
        at 150 peer connections up to 95 of them did, a burst of sends and receives
        every 20 ms that showed as event-loop lag.  A new stream joins the busiest
        slot with fewer than :attr:`BATCH` streams, else the least busy one, so a few
        calls share one wake-up and many are spread evenly.  Streams already
        running keep their phase; the first packet waits at most one frame.  The
        time returned is the middle of the slot, so rounding cannot push it into
        the next one.
        """
        per_frame = round(self.FRAME / self.SLOT)
        load = [0] * per_frame
        for key, senders in self._slots.items():
            load[key % per_frame] += len(senders)
        if self._firing is not None:  # the rest of the slot being fired stays in its phase
            key, senders = self._firing
            load[key % per_frame] += len(senders) - self._firing_done
        first = math.ceil(now / self.SLOT)
        phases = [(first + i) % per_frame for i in range(per_frame)]
        filling = [i for i, p in enumerate(phases) if 0 < load[p] < self.BATCH]
        if filling:  # join the busiest slot that still has room: fewer wake-ups
            best = max(filling, key=lambda i: (load[phases[i]], -i))
        else:
            best = min(range(per_frame), key=lambda i: (load[phases[i]], i))
        return (first + best) * self.SLOT - self.SLOT / 2

    @staticmethod
    def ticks_of(track: Any) -> int:
        return track._audio.codec.frame_ticks

    def schedule(self, lean: LeanRtpSender, due: float) -> None:
        key = math.ceil(due / self.SLOT)
        senders = self._slots.get(key)
        if senders is None:
            senders = self._slots[key] = []
            self._loop.call_at(key * self.SLOT, self._fire, key)
        senders.append(lean)
        lean.slot = (key, self)

    def discard(self, key: int, lean: LeanRtpSender) -> None:
        senders = self._slots.get(key)
        if senders is not None and lean in senders:
            senders.remove(lean)
        lean.slot = None

    def _fire(self, key: int) -> None:
        now = self._loop.time()
        senders = self._slots.pop(key, [])
        self._firing = (key, senders)
        try:
            for done, lean in enumerate(senders, 1):
                self._firing_done = done
                lean.slot = None
                try:
                    due = lean.tick(self, now)
                except Exception as exc:  # one broken sender must not silence the others
                    log.exception("lean RTP sender failed")
                    lean.finish(LeanState.STOPPED, exc)
                    continue
                if due is not None:
                    self.schedule(lean, due)
        finally:
            self._firing = None

    @property
    def scheduled(self) -> int:
        return sum(len(s) for s in self._slots.values())


_drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LeanSendDriver] = weakref.WeakKeyDictionary()


def send_driver(loop: asyncio.AbstractEventLoop | None = None) -> LeanSendDriver:
    loop = loop or asyncio.get_running_loop()
    driver = _drivers.get(loop)
    if driver is None:
        driver = _drivers[loop] = LeanSendDriver(loop)
    return driver


def lean_sender_of(sender: RTCRtpSender) -> LeanRtpSender | None:
    """The running :class:`LeanRtpSender` of ``sender``, if any (tests, reports)."""
    return sender.__dict__.get("_softphone_lean")


def install_lean_sender(transceiver: RTCRtpTransceiver) -> bool:
    """Make ``transceiver.sender`` send pre-encoded tracks through :class:`LeanSendDriver`.

    Must precede negotiation (aiortc starts ``_run_rtp`` when the description that
    starts media is applied); returns False when it is too late.  Idempotent.
    """
    sender = transceiver.sender
    if "_run_rtp" in sender.__dict__:
        return True
    check_lean_sender_supported(sender)
    if sender._RTCRtpSender__rtp_task is not None:
        return False
    transceiver_ref = weakref.ref(transceiver)

    async def run_rtp(codec: RTCRtpCodecParameters) -> None:
        await _run_lean(sender, codec, transceiver_ref())

    sender._run_rtp = run_rtp
    return True


async def _run_lean(sender: RTCRtpSender, codec: RTCRtpCodecParameters,
                    transceiver: RTCRtpTransceiver | None) -> None:
    """Stands in for ``RTCRtpSender._run_rtp`` (same start/exit events and track handling)."""
    sender._RTCRtpSender__rtp_started.set()
    loop = asyncio.get_running_loop()
    lean = LeanRtpSender(sender, codec, transceiver, loop.create_future())
    sender.__dict__["_softphone_lean"] = lean
    try:
        while True:
            send_driver(loop).schedule(lean, loop.time())
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
    track = sender._RTCRtpSender__track
    if track is not None:
        track.stop()
        sender._RTCRtpSender__track = None
    sender._RTCRtpSender__encoder = None
    sender._RTCRtpSender__rtp_exited.set()


async def _send_encoded_frames(lean: LeanRtpSender, codec: RTCRtpCodecParameters) -> None:
    """aiortc's own loop for a track that is not pre-encoded, in this sender's sequence space.

    Restarting aiortc's ``_run_rtp`` instead would pick a new random sequence number on
    the same SSRC, which SRTP's replay check rejects.  Returns when a pre-encoded
    track is back.
    """
    from softphone.media.lean import PreEncodedAudioTrack

    sender = lean.sender
    ext_map = sender._RTCRtpSender__rtp_header_extensions_map
    ticks = int(codec.clockRate * 0.02)
    shift: int | None = None
    while True:
        track = sender._RTCRtpSender__track
        if isinstance(track, PreEncodedAudioTrack):
            return
        if track is None:
            await asyncio.sleep(0.02)
            continue
        frame = await sender._next_encoded_frame(codec)
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
            ntp = aiortc_clock.current_ntp_time()
            packet.extensions.abs_send_time = (ntp >> 14) & 0x00FFFFFF
            packet.extensions.mid = sender._RTCRtpSender__mid
            if frame.audio_level is not None:
                packet.extensions.audio_level = (False, -frame.audio_level)
            await sender.transport._send_rtp(packet.serialize(ext_map))
            sender._RTCRtpSender__ntp_timestamp = ntp
            sender._RTCRtpSender__rtp_timestamp = timestamp
            sender._RTCRtpSender__octet_count += len(payload)
            sender._RTCRtpSender__packet_count += 1
            lean.sequence_number = (lean.sequence_number + 1) & 0xFFFF
            lean.packets += 1
