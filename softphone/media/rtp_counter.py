"""Per-SSRC RTP reception statistics computed from headers alone (RFC 3550 A.1, A.3, A.8).

Load tests need to know whether every packet arrived, in order, on time, without
paying for decoding.  :class:`RtpStreamCounter` looks only at the sequence
number, timestamp and payload type of each packet.  It also quacks like
aiortc's private ``StreamStatistics`` (``packets_received``, ``packets_lost``,
``fraction_lost``, ``max_seq``, ``jitter``) so the receiver's RTCP receiver
reports and ``getStats()`` keep working when it stands in for that class.

This module imports nothing from aiortc: packets are anything with
``sequence_number``, ``timestamp``, ``payload_type`` and ``payload``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from softphone.log import get_logger

log = get_logger(__name__)

SEQ_MOD = 1 << 16
HALF_SEQ = 1 << 15
# How far back a late packet may be recognised as a duplicate (RFC 3550 A.1 uses
# a similar bound); older stragglers are counted as out of order only.
HISTORY = 1024


class RtpLike(Protocol):
    """The header fields the counter reads."""

    sequence_number: int
    timestamp: int
    payload_type: int
    payload: bytes


@dataclass
class RtpStreamReport:
    """A snapshot of one stream's (or several streams' summed) reception figures."""

    received: int = 0
    expected: int = 0
    lost: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    unexpected_payload_type: int = 0
    payload_bytes: int = 0
    jitter_ms: float = 0.0
    payload_types: dict[int, int] = field(default_factory=dict)

    @property
    def loss_fraction(self) -> float:
        """Lost / expected, 0.0 when nothing was expected."""
        return self.lost / self.expected if self.expected else 0.0

    def __add__(self, other: RtpStreamReport) -> RtpStreamReport:
        types = dict(self.payload_types)
        for pt, n in other.payload_types.items():
            types[pt] = types.get(pt, 0) + n
        total = self.received + other.received
        # Jitter of a sum of streams: received-weighted mean, a readable summary.
        jitter = ((self.jitter_ms * self.received + other.jitter_ms * other.received) / total
                  if total else 0.0)
        return RtpStreamReport(
            received=total,
            expected=self.expected + other.expected,
            lost=self.lost + other.lost,
            duplicates=self.duplicates + other.duplicates,
            out_of_order=self.out_of_order + other.out_of_order,
            unexpected_payload_type=self.unexpected_payload_type + other.unexpected_payload_type,
            payload_bytes=self.payload_bytes + other.payload_bytes,
            jitter_ms=jitter,
            payload_types=types,
        )


class RtpStreamCounter:
    """Counts one SSRC's packets: received, expected (across wrap), loss, order, jitter.

    ``clock_rate`` converts arrival times into RTP timestamp units for the RFC 3550
    interarrival jitter.  ``allowed_payload_types`` (optional) flags packets whose
    payload type was not negotiated for this stream.  ``now`` is injectable so tests
    can craft arrival times.
    """

    __slots__ = (
        "_allowed",
        "_base_ext",
        "_clock_rate",
        "_expected_prior",
        "_history",
        "_jitter",
        "_last_arrival",
        "_last_pt",
        "_last_ts",
        "_max_ext",
        "_now",
        "_received_prior",
        "duplicates",
        "first_arrival",
        "last_arrival",
        "out_of_order",
        "packets_received",
        "payload_bytes",
        "payload_types",
        "timestamp_step",
        "unexpected_payload_type",
        "unique_received",
    )

    def __init__(self, clock_rate: int, allowed_payload_types: set[int] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        if clock_rate <= 0:
            raise ValueError(f"clock_rate must be positive, got {clock_rate}")
        self._clock_rate = clock_rate
        self._allowed = frozenset(allowed_payload_types) if allowed_payload_types else None
        self._now = now
        self._base_ext: int | None = None
        self._max_ext = 0
        self._history = [-1] * HISTORY
        self._jitter = 0.0
        self._last_arrival: float | None = None
        self._last_ts = 0
        self._last_pt = -1
        self.timestamp_step = 0  # RTP ticks between consecutive packets of one payload type (the ptime)
        self._expected_prior = 0
        self._received_prior = 0
        self.first_arrival: float | None = None  # seconds (``now()``) of the first and latest packet
        self.last_arrival: float | None = None
        self.packets_received = 0  # every packet, duplicates included (RFC 3550 semantics)
        self.unique_received = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.unexpected_payload_type = 0
        self.payload_bytes = 0
        self.payload_types: dict[int, int] = {}

    def add(self, packet: RtpLike, arrival: float | None = None) -> None:
        """Account for one packet; ``arrival`` in seconds (defaults to ``now()``)."""
        if arrival is None:
            arrival = self._now()
        if self.first_arrival is None:
            self.first_arrival = arrival
        self.last_arrival = arrival
        self.packets_received += 1
        pt = packet.payload_type
        self.payload_types[pt] = self.payload_types.get(pt, 0) + 1
        if self._allowed is not None and pt not in self._allowed:
            self.unexpected_payload_type += 1
        self.payload_bytes += len(packet.payload)

        seq = packet.sequence_number
        if self._base_ext is None:
            ext = seq
            self._base_ext = ext
            self._max_ext = ext
        else:
            max_seq = self._max_ext & 0xFFFF
            delta = (seq - max_seq) & 0xFFFF
            if delta == 0:
                self.duplicates += 1
                return
            if delta < HALF_SEQ:
                ext = self._max_ext + delta
                self._max_ext = ext
                if delta == 1 and pt == self._last_pt:
                    step = (packet.timestamp - self._last_ts) & 0xFFFFFFFF
                    if 0 < step <= self._clock_rate // 5:
                        self.timestamp_step = step
            else:
                ext = self._max_ext - (SEQ_MOD - delta)
                if ext < self._base_ext - HALF_SEQ:
                    # Far behind the stream's start: an impossible straggler.
                    self.out_of_order += 1
                    return
                slot = self._history[ext % HISTORY]
                if slot == ext:
                    self.duplicates += 1
                    return
                self.out_of_order += 1
                if ext < self._base_ext:
                    # Arrived late but older than the first packet seen: widen the window.
                    self._base_ext = ext
        self._history[ext % HISTORY] = ext
        self.unique_received += 1

        # RFC 3550 A.8: interarrival jitter over every non-duplicate packet, in arrival order.
        arrival_ts = arrival * self._clock_rate
        if self._last_arrival is not None:
            transit_delta = (arrival_ts - self._last_arrival) - _ts_diff(packet.timestamp, self._last_ts)
            self._jitter += (abs(transit_delta) - self._jitter) / 16.0
        self._last_arrival = arrival_ts
        self._last_ts = packet.timestamp
        self._last_pt = pt

    # --- figures -------------------------------------------------------------------

    @property
    def packets_expected(self) -> int:
        """Extended highest sequence number - first + 1 (RFC 3550 A.3)."""
        if self._base_ext is None:
            return 0
        return self._max_ext - self._base_ext + 1

    @property
    def lost(self) -> int:
        """Expected packets that never arrived (duplicates do not hide loss)."""
        return max(0, self.packets_expected - self.unique_received)

    @property
    def packets_lost(self) -> int:
        """Cumulative lost as RTCP carries it: 24-bit signed, clamped."""
        return max(-0x800000, min(0x7FFFFF, self.packets_expected - self.packets_received))

    @property
    def fraction_lost(self) -> int:
        """Loss since the previous call, in 1/256 (RFC 3550 A.3); called once per RTCP report."""
        expected = self.packets_expected
        expected_interval = expected - self._expected_prior
        self._expected_prior = expected
        received_interval = self.packets_received - self._received_prior
        self._received_prior = self.packets_received
        lost_interval = expected_interval - received_interval
        if expected_interval == 0 or lost_interval <= 0:
            return 0
        return (lost_interval << 8) // expected_interval

    @property
    def max_seq(self) -> int | None:
        """Highest 16-bit sequence number seen (what aiortc puts in its reports)."""
        return None if self._base_ext is None else self._max_ext & 0xFFFF

    @property
    def extended_max_seq(self) -> int | None:
        return None if self._base_ext is None else self._max_ext

    def packets_due(self, frame_seconds: float | None = None) -> int:
        """Packets the stream was due to deliver between its first and latest packet, by the clock.

        A sender that drops late frames keeps its sequence numbers gapless (no loss)
        yet delivers fewer than this.  A pause (hold) counts as due.  ``frame_seconds``
        defaults to the packet duration the RTP timestamps show (20 ms until known).
        """
        if self.first_arrival is None or self.last_arrival is None:
            return 0
        if frame_seconds is None:
            frame_seconds = self.timestamp_step / self._clock_rate if self.timestamp_step else 0.02
        return int((self.last_arrival - self.first_arrival) / frame_seconds + 0.5) + 1

    @property
    def jitter(self) -> int:
        """Interarrival jitter in RTP timestamp units, as RTCP carries it."""
        return int(self._jitter)

    @property
    def jitter_seconds(self) -> float:
        return self._jitter / self._clock_rate

    def report(self) -> RtpStreamReport:
        return RtpStreamReport(
            received=self.unique_received,
            expected=self.packets_expected,
            lost=self.lost,
            duplicates=self.duplicates,
            out_of_order=self.out_of_order,
            unexpected_payload_type=self.unexpected_payload_type,
            payload_bytes=self.payload_bytes,
            jitter_ms=self.jitter_seconds * 1000.0,
            payload_types=dict(self.payload_types),
        )

    def __repr__(self) -> str:
        return (f"RtpStreamCounter(received={self.unique_received}, expected={self.packets_expected}, "
                f"dup={self.duplicates}, ooo={self.out_of_order}, jitter={self.jitter})")


def _ts_diff(a: int, b: int) -> int:
    """Signed difference of two 32-bit RTP timestamps."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d >= (1 << 31) else d
