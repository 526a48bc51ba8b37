"""RFC 4733 DTMF (telephone-event) over aiortc, which has none of its own.

Sending: events must share the audio sender's SSRC, sequence numbers and
timestamp space, but aiortc keeps the sequence number in a local variable of
``RTCRtpSender._run_rtp``.  :class:`RtpSenderTap` therefore stands in for the
sender's ``RTCDtlsTransport`` (``RTCRtpSender.setTransport``), slots event
packets into the sequence space and shifts later audio sequence numbers to
make room; audio packets are held back while an event plays, as browsers
do, and RTCP passes through untouched.  The first digit waits for aiortc's
first audio packet, whose timestamp reveals the stream's random origin.

Receiving: aiortc's RTP router drops payload types it did not negotiate and
``RTCRtpReceiver`` drops unknown ones, so :class:`DtmfReceiver` registers the
telephone-event payload types with the router for the audio receiver and
wraps that receiver's ``_handle_rtp_packet`` to take those packets first.

Both hooks touch aiortc internals, through :mod:`softphone.media.aiortc_seam`;
:func:`check_aiortc_supported` verifies the attributes they rely on and fails
with :class:`AiortcCompatibilityError` rather than silently losing digits.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import RtpPacket

from softphone.errors import MediaError
from softphone.events import DtmfEvent  # the one digit shape (via="rfc4733" here)
from softphone.log import get_logger
from softphone.media import aiortc_seam as seam

log = get_logger(__name__)

#: RFC 4733 section 3.2 event codes for DTMF.
EVENT_CODES: dict[str, int] = {
    **{str(d): d for d in range(10)},
    "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15,
}
DIGITS: dict[int, str] = {v: k for k, v in EVENT_CODES.items()}
DIGITS[16] = "!"  # hook flash

#: ``,`` in a tone string is a pause, as in SIP.js.
PAUSE_MS = 2000
MIN_DURATION_MS = 40
MAX_DURATION_MS = 6000
MIN_GAP_MS = 30
DEFAULT_VOLUME = 10  # -10 dBm0
MAX_EVENT_DURATION = 0xFFFF
END_PACKETS = 3
FIRST_AUDIO_TIMEOUT = 1.0


class DtmfError(MediaError, ValueError):
    """A DTMF request is invalid (unknown digit, duration out of range)."""


def check_aiortc_supported() -> None:
    """Raise :class:`AiortcCompatibilityError` unless the hooks fit this aiortc (see the seam)."""
    seam.check_rfc4733()


def validate_tones(tones: str, duration_ms: int, gap_ms: int) -> str:
    """Upper-cased tones; :class:`DtmfError` naming the bad value otherwise."""
    if not isinstance(tones, str) or not tones:
        raise DtmfError("tones: must be a non-empty string of 0-9, *, #, A-D or ','")
    upper = tones.upper()
    bad = sorted({c for c in upper if c not in EVENT_CODES and c != ","})
    if bad:
        raise DtmfError(f"tones: {''.join(bad)!r} not allowed (0-9, *, #, A-D, ',' for a pause)")
    if not MIN_DURATION_MS <= duration_ms <= MAX_DURATION_MS:
        raise DtmfError(f"duration_ms: {duration_ms} not in {MIN_DURATION_MS}..{MAX_DURATION_MS}")
    if gap_ms < MIN_GAP_MS:
        raise DtmfError(f"gap_ms: {gap_ms} below {MIN_GAP_MS}")
    return upper


@dataclass(frozen=True)
class TelephoneEvent:
    """The 4-byte RFC 4733 payload (section 2.3)."""

    event: int
    end: bool
    volume: int
    duration: int

    def pack(self) -> bytes:
        return struct.pack(
            "!BBH", self.event, (0x80 if self.end else 0) | (self.volume & 0x3F), self.duration & 0xFFFF
        )

    @classmethod
    def parse(cls, payload: bytes) -> TelephoneEvent:
        if len(payload) < 4:
            raise DtmfError(f"telephone-event payload: {len(payload)} bytes, need 4")
        event, flags, duration = struct.unpack("!BBH", payload[:4])
        return cls(event=event, end=bool(flags & 0x80), volume=flags & 0x3F, duration=duration)


# --- receiving ------------------------------------------------------------------------


class _EventState(enum.Enum):
    IDLE = "idle"
    ACTIVE = "active"


class TelephoneEventDecoder:
    """Turns a stream of telephone-event packets into digits with durations.

    One event is one RTP timestamp; the three end packets and any other
    retransmission of an ended timestamp are ignored.  An event whose end
    packets were all lost ends when a new event starts or :meth:`flush` is
    called after a quiet period.  Long events (RFC 4733 2.5.1.3) continue in a
    new segment whose timestamp is the old one plus 0xFFFF.
    """

    def __init__(self) -> None:
        self.state = _EventState.IDLE
        self._event = 0
        self._segment_ts = 0
        self._duration = 0
        self._accumulated = 0
        self._clock_rate = 8000
        self._ended: deque[int] = deque(maxlen=32)

    def _move(self, state: _EventState) -> None:
        self.state = state

    def _finish(self) -> DtmfEvent | None:
        if self.state is not _EventState.ACTIVE:
            return None
        self._ended.append(self._segment_ts)
        total = self._accumulated + self._duration
        self._move(_EventState.IDLE)
        digit = DIGITS.get(self._event)
        if digit is None:
            return None
        return DtmfEvent(digit=digit, duration_ms=round(total * 1000 / self._clock_rate), via="rfc4733")

    def feed(self, timestamp: int, payload: bytes, clock_rate: int) -> list[DtmfEvent]:
        """Digits that ended with this packet (usually none or one)."""
        try:
            ev = TelephoneEvent.parse(payload)
        except DtmfError as exc:
            log.debug("ignoring telephone-event packet: %s", exc)
            return []
        if timestamp in self._ended:
            return []  # end retransmission or a late packet of a finished event
        out: list[DtmfEvent] = []
        if self.state is _EventState.ACTIVE:
            if timestamp == self._segment_ts:
                self._duration = max(self._duration, ev.duration)
                if ev.end:
                    done = self._finish()
                    return [done] if done else []
                return []
            step = (timestamp - self._segment_ts) & 0xFFFFFFFF
            near_full = self._duration >= MAX_EVENT_DURATION - clock_rate // 5
            if ev.event == self._event and 0 < step <= MAX_EVENT_DURATION and near_full:
                self._ended.append(self._segment_ts)
                self._accumulated += step
                self._segment_ts = timestamp
                self._duration = ev.duration
                if ev.end:
                    done = self._finish()
                    return [done] if done else []
                return []
            done = self._finish()  # a new event: the previous one lost its end packets
            if done:
                out.append(done)
        self._event = ev.event
        self._segment_ts = timestamp
        self._duration = ev.duration
        self._accumulated = 0
        self._clock_rate = clock_rate
        self._move(_EventState.ACTIVE)
        if ev.end:
            done = self._finish()
            if done:
                out.append(done)
        return out

    def flush(self) -> list[DtmfEvent]:
        """End an event that stopped without end packets."""
        done = self._finish()
        return [done] if done else []


class DtmfReceiver:
    """Takes telephone-event packets off an aiortc audio receiver.

    ``on_event`` is called with each :class:`DtmfEvent`.  Packets are counted
    in the receiver's RTP statistics (they share the audio sequence space, so
    leaving them out would show up as loss).
    """

    def __init__(self, receiver: RTCRtpReceiver, on_event: Callable[[DtmfEvent], None],
                 flush_timeout: float = 0.5) -> None:
        check_aiortc_supported()
        self._receiver: RTCRtpReceiver | None = receiver
        self._on_event = on_event
        self._flush_timeout = flush_timeout
        self._payload_types: dict[int, int] = {}
        self._decoders: dict[int, TelephoneEventDecoder] = {}
        self._timer: asyncio.TimerHandle | None = None
        self.packets = 0
        seam.hook_rtp_packets(receiver, self._on_rtp_packet)

    @property
    def payload_types(self) -> dict[int, int]:
        return dict(self._payload_types)

    def configure(self, payload_types: dict[int, int]) -> None:
        """Accept these telephone-event payload types (pt -> clock rate)."""
        self._payload_types = dict(payload_types)
        self.ensure_routed()

    def ensure_routed(self) -> None:
        """Register the payload types with the receiver's current transport's RTP router."""
        receiver = self._receiver
        if receiver is None or not self._payload_types:
            return
        seam.route_payload_types(receiver, list(self._payload_types))

    def passes_through(self, payload_type: int) -> bool:
        """True when a packet of this type goes on to the receiver untouched (audio).

        Lets the media fast path count audio without this hook's coroutine.
        """
        return payload_type not in self._payload_types

    async def _on_rtp_packet(self, packet: RtpPacket, arrival_time_ms: int) -> None:
        rate = self._payload_types.get(packet.payload_type)
        receiver = self._receiver
        if receiver is None:
            return
        if rate is None:
            # Looked up on the class at call time, so a receiver whose class is
            # swapped later (the lean path's counting receiver) keeps working.
            await seam.handle_rtp_packet_unhooked(receiver, packet, arrival_time_ms)
            return
        if not seam.receiver_enabled(receiver):
            return  # on hold: the receiver is disabled, digits too
        self.packets += 1
        stream = seam.receiver_stream_statistics(receiver, packet.ssrc, rate)
        if stream is not None:
            stream.add(packet)
        decoder = self._decoders.setdefault(packet.ssrc, TelephoneEventDecoder())
        for event in decoder.feed(packet.timestamp, packet.payload, rate):
            self._emit(event)
        self._arm_flush()

    def _arm_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._flush_timeout, self._flush)

    def _flush(self) -> None:
        self._timer = None
        for decoder in self._decoders.values():
            for event in decoder.flush():
                self._emit(event)

    def _emit(self, event: DtmfEvent) -> None:
        log.debug("received DTMF %s (%d ms)", event.digit, event.duration_ms)
        try:
            self._on_event(event)
        except Exception:  # a listener's bug must not stop RTP handling
            log.exception("DTMF listener failed")

    def close(self) -> None:
        """Restore the receiver and drop references."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._receiver is not None:
            seam.unhook_rtp_packets(self._receiver)
            self._receiver = None
        self._on_event = lambda event: None


# --- sending --------------------------------------------------------------------------


class _Done:
    """An awaitable that is already complete (a dropped packet)."""

    def __await__(self):
        return iter(())


_DONE = _Done()


class RtpSenderTap:
    """Stands in for an ``RTCDtlsTransport`` in one ``RTCRtpSender``.

    It shares the sender's sequence space with telephone-event packets,
    remembers the last audio packet so events start at "now" in the audio
    timestamp space, and drops audio while an event is being sent.
    Everything else is forwarded to the real transport.

    Audio keeps aiortc's sequence numbers shifted by ``offset`` (+1 per event
    packet inserted, -1 per audio packet held back), so until the first digit
    the packet bytes pass through untouched: no copy on the hot path.
    """

    def __init__(self, transport: RTCDtlsTransport, audio_clock_rate: int = 48000) -> None:
        self._transport = transport
        self.audio_clock_rate = audio_clock_rate
        self._loop = asyncio.get_event_loop()
        self._offset = 0
        self._last_seq: int | None = None  # last sequence number sent
        self._audio_seen = False
        self._last_audio: bytes | None = None
        self._last_audio_time = 0.0
        self._origin = (random.getrandbits(32), self._loop.time())
        self.suppress_audio = False
        self.audio_packets = 0
        self.audio_suppressed = 0
        self.event_packets = 0
        self.first_audio = asyncio.Event()

    @property
    def wrapped(self) -> RTCDtlsTransport:
        return self._transport

    def __getattr__(self, name: str):
        return getattr(self._transport, name)

    def _send_rtp(self, data: bytes) -> Awaitable[None]:
        # Not a coroutine: returning the transport's own awaitable saves a frame per packet.
        if 192 <= data[1] <= 208:  # RTCP (aiortc.rtp.is_rtcp)
            return seam.send_rtp(self._transport, data)
        data = self.take_audio(data)
        return _DONE if data is None else seam.send_rtp(self._transport, data)

    def take_audio(self, data: bytes) -> bytes | None:
        """Account for one outgoing audio packet: the bytes to send (sequence shifted), or None.

        The synchronous half of :meth:`_send_rtp`, for senders that hand the result
        to the transport themselves (the lean RTP sender).
        """
        if not self._audio_seen:
            self._audio_seen = True
            self.first_audio.set()
            if self._last_seq is not None:  # events went first: continue after them
                self._offset = (self._last_seq + 1 - int.from_bytes(data[2:4], "big")) & 0xFFFF
        if self.suppress_audio:
            self.audio_suppressed += 1
            self._offset -= 1
            return None
        self._last_audio = data
        self._last_audio_time = self._loop.time()
        self.audio_packets += 1
        offset = self._offset
        if offset:
            seq = (int.from_bytes(data[2:4], "big") + offset) & 0xFFFF
            data = data[:2] + seq.to_bytes(2, "big") + data[4:]
            self._last_seq = seq
        else:
            self._last_seq = (data[2] << 8) | data[3]
        return data

    @property
    def audio_seen(self) -> bool:
        return self._audio_seen

    def timestamp_now(self) -> int:
        """The audio RTP timestamp corresponding to the present moment."""
        now = self._loop.time()
        if self._last_audio is not None:
            base_ts, base_time = int.from_bytes(self._last_audio[4:8], "big"), self._last_audio_time
        else:
            base_ts, base_time = self._origin
        return (base_ts + int((now - base_time) * self.audio_clock_rate)) & 0xFFFFFFFF

    async def send_event(self, *, ssrc: int, payload_type: int, timestamp: int, marker: bool,
                         event: TelephoneEvent, mid: str | None) -> None:
        seq = random.getrandbits(15) if self._last_seq is None else (self._last_seq + 1) & 0xFFFF
        packet = RtpPacket(payload_type=payload_type, marker=1 if marker else 0,
                           sequence_number=seq, timestamp=timestamp, ssrc=ssrc)
        packet.payload = event.pack()
        packet.extensions.mid = mid
        data = packet.serialize(seam.transport_header_extensions_map(self._transport))
        self._last_seq = seq
        if self._audio_seen:
            self._offset += 1
        self.event_packets += 1
        await seam.send_rtp(self._transport, data)


class DtmfSender:
    """Sends RFC 4733 events on one aiortc audio sender (section 2.5 timing).

    Each digit: packets every ``packet_interval`` with the same timestamp and a
    growing duration, the marker on the first, then three end packets with the
    final duration; long digits are split into 0xFFFF segments.
    """

    def __init__(self, sender: RTCRtpSender, *, packet_interval: float = 0.02,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        check_aiortc_supported()
        self._sender: RTCRtpSender | None = sender
        self.packet_interval = packet_interval
        self._sleep = sleep or asyncio.sleep  # injectable so tests need not wait in real time
        self.payload_type: int | None = None
        self.event_clock_rate = 8000
        self.mid: str | None = None
        self._lock = asyncio.Lock()
        self._next_ts: int | None = None  # a new event never starts inside the previous one
        self.tap = RtpSenderTap(sender.transport)
        sender.setTransport(self.tap)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return self.payload_type is not None and self._sender is not None

    def configure(self, *, payload_type: int | None, event_clock_rate: int, audio_clock_rate: int,
                  mid: str | None) -> None:
        self.payload_type = payload_type
        self.event_clock_rate = event_clock_rate
        self.tap.audio_clock_rate = audio_clock_rate
        self.mid = mid
        self.ensure_installed()

    def ensure_installed(self) -> None:
        """Re-wrap if the peer connection gave the sender a new transport (BUNDLE)."""
        sender = self._sender
        if sender is not None and sender.transport is not self.tap:
            self.tap._transport = sender.transport
            sender.setTransport(self.tap)  # type: ignore[arg-type]

    async def send(self, tones: str, duration_ms: int = 100, gap_ms: int = 70,
                   on_sent: Callable[[DtmfEvent], None] | None = None) -> None:
        tones = validate_tones(tones, duration_ms, gap_ms)
        if not self.enabled:
            raise DtmfError("telephone-event was not negotiated")
        async with self._lock:
            await self._wait_for_audio()
            for i, tone in enumerate(tones):
                if tone == ",":
                    await self._sleep(PAUSE_MS / 1000)
                    continue
                await self._send_digit(EVENT_CODES[tone], duration_ms)
                if on_sent is not None:
                    on_sent(DtmfEvent(tone, duration_ms, "rfc4733"))
                if i < len(tones) - 1:
                    await self._sleep(gap_ms / 1000)

    async def _wait_for_audio(self) -> None:
        """Events take their timestamps from the audio stream, whose random origin
        aiortc keeps to itself until its first packet: right after the call is
        connected, wait (bounded) for that packet.  Without a source there is no
        audio stream and any origin will do."""
        sender = self._sender
        if self.tap.audio_seen or sender is None or sender.track is None:
            return
        try:
            await asyncio.wait_for(self.tap.first_audio.wait(), FIRST_AUDIO_TIMEOUT)
        except TimeoutError:
            log.debug("no audio sent yet: telephone-events start their own timestamps")

    async def _send_digit(self, code: int, duration_ms: int) -> None:
        sender, pt = self._sender, self.payload_type
        if sender is None or pt is None:
            raise DtmfError("DTMF sender is closed")
        loop = asyncio.get_running_loop()
        tap = self.tap
        rate = self.event_clock_rate
        scale = tap.audio_clock_rate / rate  # event units -> timestamp units
        total = round(duration_ms * rate / 1000)
        step = max(1, round(self.packet_interval * rate))
        count = max(1, math.ceil(total / step))
        segment_ts = tap.timestamp_now()
        if self._next_ts is not None and 0 < (self._next_ts - segment_ts) & 0xFFFFFFFF < 1 << 31:
            segment_ts = self._next_ts
        first_ts = segment_ts
        segment_start = 0
        start = loop.time()
        tap.suppress_audio = True
        try:
            for k in range(1, count + 1):
                elapsed = min(k * step, total)
                while elapsed - segment_start > MAX_EVENT_DURATION:
                    await self._packet(pt, segment_ts, code, MAX_EVENT_DURATION, False, k == 1)
                    segment_start += MAX_EVENT_DURATION
                    segment_ts = (segment_ts + round(MAX_EVENT_DURATION * scale)) & 0xFFFFFFFF
                await self._packet(pt, segment_ts, code, elapsed - segment_start, False, k == 1)
                delay = start + k * self.packet_interval - loop.time()
                if delay > 0:
                    await self._sleep(delay)
            for _ in range(END_PACKETS):
                await self._packet(pt, segment_ts, code, total - segment_start, True, False)
            self._next_ts = (first_ts + round(total * scale) + 1) & 0xFFFFFFFF
        finally:
            tap.suppress_audio = False

    async def _packet(self, pt: int, ts: int, code: int, duration: int, end: bool, marker: bool) -> None:
        sender = self._sender
        if sender is None:
            raise DtmfError("DTMF sender is closed")
        event = TelephoneEvent(event=code, end=end, volume=DEFAULT_VOLUME, duration=duration)
        try:
            await self.tap.send_event(ssrc=seam.sender_ssrc(sender), payload_type=pt, timestamp=ts, marker=marker,
                                      event=event, mid=self.mid)
        except ConnectionError as exc:
            raise DtmfError(f"telephone-event not sent: {exc}") from exc

    def close(self) -> None:
        """Give the sender its real transport back and drop references."""
        sender = self._sender
        if sender is not None and sender.transport is self.tap:
            sender.setTransport(self.tap.wrapped)
        self._sender = None
        self.payload_type = None
