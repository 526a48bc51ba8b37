"""Per-call quality figures from aiortc's statistics, with an E-model MOS estimate.

aiortc reports jitter in RTP timestamp units and RTT in seconds; load-test
users want milliseconds, a loss fraction and one comparable score.  The MOS
is an *estimate* from a simplified ITU-T G.107 E-model and is ``None``
whenever its inputs are missing (nothing received, no RTCP round trip yet):
a made-up default would hide a broken call in a load report.

Simplified E-model (ITU-T G.107 with default values, Cole & Rosenbluth 2001):

    R      = 93.2 - Id - Ie_eff
    Id     = 0.024 d + 0.11 (d - 177.3) H(d - 177.3)        d = one-way delay in ms
    Ie_eff = Ie + (95 - Ie) * Ppl / (Ppl / BurstR + Bpl)    Ppl = loss in %, BurstR = 1 (random loss)
    MOS    = 1 + 0.035 R + R (R - 60) (100 - R) * 7e-6      for 0 < R < 100, at least 1 (4.5 above)

One-way delay d = RTT / 2 + jitter-buffer delay, the latter assumed to be
max(``MIN_JITTER_BUFFER_MS``, 2 x measured jitter) (aiortc's audio jitter buffer
prefetches 4 packets of 20 ms).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from aiortc import RTCPeerConnection

from softphone.log import get_logger
from softphone.media.aiortc_seam import discarded_datagrams, negotiated_codecs

log = get_logger(__name__)

MIN_JITTER_BUFFER_MS = 40.0


@dataclass(frozen=True)
class CodecImpairment:
    """Equipment impairment factor Ie and packet-loss robustness Bpl."""

    ie: float
    bpl: float
    source: str


#: G.711 values from ITU-T G.113 Appendix I (Bpl 4.3: random loss, no PLC, as
#: aiortc's receive path conceals nothing).  Opus and G.722 are not in G.113's
#: narrowband table: documented assumptions, Ie 0 (transparent at the bit
#: rates aiortc uses) and Bpl 10 (Opus' decoder-side concealment is partial
#: without in-band FEC; G.722 like G.711 with a little concealment).
CODEC_IMPAIRMENTS: dict[str, CodecImpairment] = {
    "pcmu": CodecImpairment(0.0, 4.3, "G.113 App. I, G.711 without PLC"),
    "pcma": CodecImpairment(0.0, 4.3, "G.113 App. I, G.711 without PLC"),
    "g722": CodecImpairment(0.0, 4.3, "assumption: as G.711"),
    "opus": CodecImpairment(0.0, 10.0, "assumption"),
}


def r_factor(one_way_delay_ms: float, loss_percent: float, codec: str = "pcmu",
             burst_ratio: float = 1.0) -> float:
    """The simplified E-model transmission rating R (see module docstring)."""
    imp = CODEC_IMPAIRMENTS.get(codec.lower(), CODEC_IMPAIRMENTS["pcmu"])
    d = max(0.0, one_way_delay_ms)
    i_d = 0.024 * d + (0.11 * (d - 177.3) if d > 177.3 else 0.0)
    ppl = max(0.0, loss_percent)
    ie_eff = imp.ie + (95.0 - imp.ie) * ppl / (ppl / burst_ratio + imp.bpl)
    return 93.2 - i_d - ie_eff


def mos_from_r(r: float) -> float:
    """G.107 Annex B mapping from R to the MOS (conversational quality, estimated)."""
    if r <= 0:
        return 1.0
    if r >= 100:
        return 4.5
    # The cubic dips just below 1 for R < ~6.5; MOS is 1 at worst.
    return max(1.0, 1 + 0.035 * r + r * (r - 60) * (100 - r) * 7e-6)


def estimate_mos(rtt_ms: float | None, jitter_ms: float | None, loss_fraction: float | None,
                 codec: str = "pcmu") -> float | None:
    """MOS from RTT, jitter and loss; None if any input is missing."""
    if rtt_ms is None or loss_fraction is None:
        return None
    jitter_buffer = max(MIN_JITTER_BUFFER_MS, 2 * (jitter_ms or 0.0))
    return mos_from_r(r_factor(rtt_ms / 2 + jitter_buffer, loss_fraction * 100, codec))


@dataclass(frozen=True)
class CallQuality:
    """Quality figures for one call at one moment (cumulative since the start).

    ``bytes_received`` counts every byte the transport received (SRTP, RTCP,
    STUN): aiortc keeps no per-stream received-byte count.  ``remote_*`` are
    what the far end reported about our stream in RTCP receiver reports.

    ``packets_due`` is what time says the far end should have delivered: one
    packet per packet duration (what the RTP timestamps show, 20 ms until known)
    between the first and the latest packet received; ``delivered_fraction`` is the distinct packets received over that.
    Loss only counts sequence-number gaps, so a sender that falls behind and
    drops late frames without a gap (an overloaded load generator does) shows
    0% loss and less than 100% delivered.  Known with the fast path's counting
    receiver; None with stock aiortc, which keeps no arrival times.

    ``datagrams_discarded`` counts what the receive hooks dropped before aiortc:
    empty datagrams and, on the fast path, SRTP/SRTCP that failed to unprotect
    (junk or an attack at the media port); None without a hook.
    """

    codec: str | None = None
    clock_rate: int | None = None
    packets_sent: int = 0
    bytes_sent: int = 0
    packets_received: int = 0
    bytes_received: int = 0
    packets_lost: int = 0
    loss_fraction: float | None = None
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    remote_packets_lost: int | None = None
    remote_loss_fraction: float | None = None
    remote_jitter_ms: float | None = None
    mos: float | None = None
    packets_due: int | None = None
    delivered_fraction: float | None = None
    datagrams_discarded: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def delivered(pc: RTCPeerConnection, frame_seconds: float | None = None) -> tuple[int, int] | None:
    """(distinct packets received, packets due by the clock) over ``pc``'s counting receivers."""
    received = due = 0
    counted = False
    for transceiver in pc.getTransceivers():
        counters = getattr(transceiver.receiver, "counters", None)  # a CountingRtpReceiver's
        if not isinstance(counters, dict):
            continue
        counted = True
        for counter in counters.values():
            received += counter.unique_received
            due += counter.packets_due(frame_seconds)
    return (received, due) if counted else None


async def collect(pc: RTCPeerConnection, frame_seconds: float | None = None) -> CallQuality:
    """Read ``pc.getStats()`` (and the counting receiver's arrival times) into a :class:`CallQuality`."""
    codec_name, clock_rate = None, None
    for transceiver in pc.getTransceivers():
        codecs = negotiated_codecs(transceiver)
        if transceiver.kind == "audio" and codecs:
            codec = codecs[0]
            codec_name, clock_rate = codec.mimeType.split("/", 1)[1], codec.clockRate
            break
    report = await pc.getStats()
    # RFC 4733 packets go round aiortc's sender (softphone.media.rfc4733.RtpSenderTap),
    # which also holds audio back during events: count what really left.
    sent_correction = 0
    for sender in pc.getSenders():
        tap = sender.transport
        if hasattr(tap, "event_packets") and hasattr(tap, "audio_suppressed"):
            sent_correction += tap.event_packets - tap.audio_suppressed
    sent = bytes_sent = received = lost = 0
    jitter_units: int | None = None
    bytes_received = 0
    rtt: float | None = None
    remote_lost: int | None = None
    remote_received = 0
    remote_jitter_units: int | None = None
    for stats in report.values():
        kind = stats.type
        if kind == "outbound-rtp":
            sent += stats.packetsSent
            bytes_sent += stats.bytesSent
        elif kind == "inbound-rtp":
            received += stats.packetsReceived
            lost += max(0, stats.packetsLost)
            jitter_units = max(jitter_units or 0, stats.jitter)
        elif kind == "transport":
            bytes_received += stats.bytesReceived
        elif kind == "remote-inbound-rtp":
            if stats.roundTripTime is not None:
                rtt = stats.roundTripTime
            remote_lost = (remote_lost or 0) + max(0, stats.packetsLost)
            remote_received += max(0, stats.packetsReceived)
            remote_jitter_units = max(remote_jitter_units or 0, stats.jitter)
    sent = max(0, sent + sent_correction)
    expected = received + lost
    loss = lost / expected if expected else None
    jitter_ms = jitter_units * 1000 / clock_rate if jitter_units is not None and clock_rate else None
    rtt_ms = rtt * 1000 if rtt is not None else None
    remote_expected = remote_received + (remote_lost or 0)
    remote_loss = remote_lost / remote_expected if remote_lost is not None and remote_expected else None
    remote_jitter_ms = (
        remote_jitter_units * 1000 / clock_rate if remote_jitter_units is not None and clock_rate else None
    )
    mos = estimate_mos(rtt_ms, jitter_ms, loss, codec_name or "pcmu") if received else None
    packets_due = delivered_fraction = None
    counted = delivered(pc, frame_seconds)
    if counted is not None:
        distinct, packets_due = counted
        delivered_fraction = min(1.0, distinct / packets_due) if packets_due else None
    return CallQuality(
        codec=codec_name, clock_rate=clock_rate,
        packets_sent=sent, bytes_sent=bytes_sent,
        packets_received=received, bytes_received=bytes_received,
        packets_lost=lost, loss_fraction=loss, jitter_ms=jitter_ms, rtt_ms=rtt_ms,
        remote_packets_lost=remote_lost, remote_loss_fraction=remote_loss, remote_jitter_ms=remote_jitter_ms,
        mos=mos, packets_due=packets_due, delivered_fraction=delivered_fraction,
        datagrams_discarded=discarded_datagrams(pc),
    )
