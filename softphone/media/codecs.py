"""The audio codecs: what aiortc can send, what we offer by default, and their RTP clocks.

One table for everything that needs to know about a codec: configuration
(:data:`SUPPORTED_CODECS`, :data:`DEFAULT_CODECS`), offer preferences
(:func:`codec_capabilities`) and the pre-encoded send path (:class:`CodecSpec`).
"""

from __future__ import annotations

import fractions
import functools
from dataclasses import dataclass

from aiortc.codecs import CODECS as AIORTC_CODECS
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCRtpSender

from softphone.errors import CodecError

FRAME_SECONDS = 0.02  # every codec here is sent in 20 ms packets, as browsers do


@dataclass(frozen=True)
class CodecSpec:
    """One audio codec: SDP name, RTP clock rate and channels."""

    name: str  # as in SDP: "PCMU", "opus"
    clock_rate: int  # RTP clock (G.722 samples at 16 kHz but clocks at 8 kHz, RFC 3551)
    channels: int

    @property
    def frame_ticks(self) -> int:
        """RTP timestamp increment of one 20 ms packet."""
        return int(self.clock_rate * FRAME_SECONDS)

    @functools.cached_property
    def time_base(self) -> fractions.Fraction:
        # Read for every packet sent: one Fraction per codec, not one per packet.
        return fractions.Fraction(1, self.clock_rate)

    def parameters(self) -> RTCRtpCodecParameters:
        return RTCRtpCodecParameters(mimeType=f"audio/{self.name}", clockRate=self.clock_rate,
                                     channels=self.channels)


#: Every audio codec aiortc can send, by lower-case name.
CODECS: dict[str, CodecSpec] = {
    spec.name.lower(): spec
    for spec in (CodecSpec(c.mimeType.split("/", 1)[1], c.clockRate, c.channels or 1)
                 for c in AIORTC_CODECS["audio"])
}

#: aiortc's audio codec names, case as in SDP.
SUPPORTED_CODECS: tuple[str, ...] = tuple(spec.name for spec in CODECS.values())
#: What we offer, in order, when nothing else is configured.
DEFAULT_CODECS: tuple[str, ...] = tuple(
    CODECS[name].name for name in ("opus", "pcmu", "pcma", "g722") if name in CODECS
)


def codec_spec(name: str) -> CodecSpec:
    """The :class:`CodecSpec` for an SDP codec name or MIME type ("PCMU", "audio/opus")."""
    key = str(name).lower().removeprefix("audio/")
    try:
        return CODECS[key]
    except KeyError:
        raise CodecError(f"codec: {name!r} is not one of {sorted(s.name for s in CODECS.values())}") from None


def codec_capabilities(names: tuple[str, ...] | list[str]) -> list[RTCRtpCodecCapability]:
    """aiortc capabilities for codec names, in the given order (for ``setCodecPreferences``)."""
    available = RTCRtpSender.getCapabilities("audio").codecs
    out = []
    for name in names:
        match = [c for c in available if c.mimeType.split("/", 1)[1].lower() == str(name).lower()]
        if not match:
            raise CodecError(f"codecs: {name!r} is not an aiortc audio codec")
        out.extend(match)
    return out
