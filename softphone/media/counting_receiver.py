"""A receiver that counts RTP and, unless asked to, never decodes (the lean receive path).

Stock aiortc decodes every received packet in a per-receiver thread that hands
frames back with ``run_coroutine_threadsafe``.  A load test only needs an honest
account of what came back, so :class:`CountingRtpReceiver` counts headers with
:class:`~softphone.media.rtp_counter.RtpStreamCounter` (placed where aiortc keeps
its own statistics, so RTCP receiver reports and ``getStats()`` keep working)
and decodes only when something (a recorder, a detector) needs audio.  The class
is swapped onto aiortc's receiver through :mod:`softphone.media.aiortc_seam`.
"""

from __future__ import annotations

from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from softphone.log import get_logger
from softphone.media.aiortc_seam import (
    DroppingFrameQueue,
    HookedRtpReceiver,
    dropped_frames,
    swap_receiver_class,
)
from softphone.media.rtp_counter import RtpStreamCounter, RtpStreamReport

log = get_logger(__name__)

ACTIVE_SSRC_EVERY = 50  # packets between refreshes of the receiver's active-SSRC time

__all__ = ["CountingRtpReceiver", "DroppingFrameQueue", "install_counting_receiver"]


class CountingRtpReceiver(HookedRtpReceiver):
    """An ``RTCRtpReceiver`` that counts RTP and, unless asked to, never decodes.

    Installed on an existing receiver by :func:`install_counting_receiver`.
    Without decoding there is no decoder thread, no jitter buffer and the remote
    track never yields frames; it ends when the receiver stops.
    """

    _lean_decode: bool
    unknown_payload_type: int

    @property
    def decoding(self) -> bool:
        return self._lean_decode

    @property
    def frames_dropped(self) -> int:
        """Decoded frames dropped because nobody read them in time."""
        return dropped_frames(self.remote_track)

    @property
    def counters(self) -> dict[int, RtpStreamCounter]:
        """Per-SSRC counters (a copy of the mapping)."""
        return dict(self.remote_streams)

    def report(self) -> RtpStreamReport:
        """Summed figures over every SSRC this receiver has seen."""
        total = RtpStreamReport()  # unknown payload types are in the counters too
        for counter in self.remote_streams.values():
            if isinstance(counter, RtpStreamCounter):
                total = total + counter.report()
        return total

    def counter_for(self, ssrc: int, codec: RTCRtpCodecParameters | None) -> RtpStreamCounter:
        """The counter of ``ssrc``, created on its first packet."""
        streams = self.remote_streams
        counter = streams.get(ssrc)
        if counter is None:
            if codec is None:
                codecs = self.codecs_by_payload_type
                codec = next(iter(codecs.values())) if codecs else None
            counter = streams[ssrc] = RtpStreamCounter(codec.clockRate if codec else 8000)
        return counter

    def count_rtp(self, packet) -> bool:
        """Account for one packet; True when it goes on to aiortc's decoding path.

        Synchronous so that the fast receive path can count without a coroutine.
        """
        if not self.receiving_enabled:
            return False
        codec = self.codecs_by_payload_type.get(packet.payload_type)
        counter = self.counter_for(packet.ssrc, codec)
        if codec is None:
            # aiortc drops these before its statistics, yet they used sequence numbers.
            self.unknown_payload_type += 1
            counter.unexpected_payload_type += 1
            counter.add(packet)
            return False
        if self._lean_decode:
            return True  # aiortc's path counts it via the counter
        counter.add(packet)
        if counter.packets_received % ACTIVE_SSRC_EVERY == 1:
            self.mark_active(packet.ssrc)  # getSynchronizationSources() looks 10 s back: once a second is plenty
        return False


def install_counting_receiver(receiver: RTCRtpReceiver, *, decode: bool = False) -> CountingRtpReceiver:
    """Turn aiortc's receiver into a :class:`CountingRtpReceiver`; must precede negotiation.

    Install it before other hooks that capture the receiver's packet handler (the
    RFC 4733 receiver does), so they call the counting version.
    """
    if isinstance(receiver, CountingRtpReceiver):
        receiver._lean_decode = decode
        return receiver
    swap_receiver_class(receiver, CountingRtpReceiver)
    receiver._lean_decode = decode  # type: ignore[attr-defined]
    receiver.unknown_payload_type = 0  # type: ignore[attr-defined]
    return receiver  # type: ignore[return-value]
