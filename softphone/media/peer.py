"""aiortc peer connections configured for SIP: complete SDP, codecs, TURN, directions.

SIP carries one offer and one answer per exchange and no trickle ICE, so a
local description is only usable once ICE gathering is complete.  aiortc's
``setLocalDescription`` already gathers before returning; this module bounds
that with the configured gathering timeout (5 s, as SIP.js) and turns a stuck
TURN server into :class:`~softphone.errors.IceGatheringError`.

DTLS roles: aiortc offers ``a=setup:actpass`` (every offer, re-offers too,
as browsers do) and answers ``actpass``/``passive`` offers with ``active``
and ``active`` offers with ``passive``; an established role is kept in
answers to re-offers.  That is what Asterisk and browsers expect, so no
munging is needed; :func:`check_answer_setup` guards it.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from softphone.errors import DescriptionError, IceGatheringError
from softphone.log import get_logger
from softphone.media import aiortc_seam as seam
from softphone.media.codecs import codec_capabilities
from softphone.media.config import MediaConfig
from softphone.media.sdp import Direction, candidate_types, keep_extension_ids

log = get_logger(__name__)

__all__ = [
    "CandidatePair", "add_audio_transceiver", "check_answer_setup", "codec_capabilities",
    "create_peer_connection", "ice_connection_kwargs", "release_peer_connection", "selected_candidate_pair",
    "set_local_description", "transceiver_direction",
]


def create_peer_connection(config: MediaConfig) -> RTCPeerConnection:
    """A peer connection that never uses a STUN/TURN server it was not given."""
    rtc = config.ice.rtc_configuration()
    assert rtc.iceServers is not None  # None would make aiortc add a public STUN server
    log.debug("peer connection: %s", config.ice.describe())
    return RTCPeerConnection(rtc)


def add_audio_transceiver(pc: RTCPeerConnection, config: MediaConfig,
                          source: MediaStreamTrack | None = None) -> RTCRtpTransceiver:
    """One sendrecv audio transceiver with the configured codec preference."""
    with seam.no_default_stun():  # the ICE gatherer is created here: never a public STUN fallback
        transceiver = pc.addTransceiver(source if source is not None else "audio", direction="sendrecv")
    transceiver.setCodecPreferences(codec_capabilities(config.codecs))
    context = config.ice.turn_tls_context()
    if context is not None:
        seam.set_turn_tls_context(transceiver, context)
    return transceiver


async def set_local_description(pc: RTCPeerConnection, description: RTCSessionDescription,
                                config: MediaConfig) -> RTCSessionDescription:
    """Apply our offer/answer and wait for complete ICE gathering, bounded by the timeout."""
    timeout = config.ice.gathering_timeout
    try:
        with seam.host_addresses(config.ice.host_addresses), seam.turn_allocation_retry() as turn_failures:
            await asyncio.wait_for(pc.setLocalDescription(description), timeout)
    except TimeoutError:
        raise IceGatheringError(
            f"ICE gathering did not complete within {timeout:g} s "
            f"(TURN server {config.ice.selected_turn_url or 'none'})"
        ) from None
    local = pc.localDescription
    types = candidate_types(local.sdp)
    if config.ice.relay_only and "relay" not in types:
        why = turn_failures[-1] if turn_failures else "no answer: unreachable, or credentials rejected"
        raise IceGatheringError(f"no relay candidate from TURN server {config.ice.selected_turn_url}: {why}")
    if not types:
        raise IceGatheringError("ICE gathering produced no candidates (no usable interface or TURN server)")
    previous = pc.remoteDescription
    if description.type == "offer" and previous is not None:  # a re-offer: keep the session's extension IDs
        local = RTCSessionDescription(keep_extension_ids(local.sdp, previous.sdp), "offer")
    return local


def check_answer_setup(offer_setup: str | None, answer_setup: str | None) -> None:
    """RFC 5763 section 5: the answer's ``a=setup`` must complement the offer's."""
    allowed = {
        "actpass": {"active", "passive"},
        "active": {"passive"},
        "passive": {"active"},
        None: {"active", "passive"},
    }
    if answer_setup not in allowed.get(offer_setup, set()):
        raise DescriptionError(f"a=setup: answer {answer_setup!r} does not fit offer {offer_setup!r}")


def transceiver_direction(transceiver: RTCRtpTransceiver) -> Direction | None:
    """The negotiated (current) direction of our side, None before negotiation."""
    current = transceiver.currentDirection
    return Direction(current) if current else None


@dataclass(frozen=True)
class CandidatePair:
    """The ICE pair media flows on (aioice's nominated pair)."""

    local_type: str
    local_address: tuple[str, int]
    local_protocol: str
    remote_type: str
    remote_address: tuple[str, int]

    @property
    def relayed(self) -> bool:
        return self.local_type == "relay" or self.remote_type == "relay"


def selected_candidate_pair(pc: RTCPeerConnection) -> CandidatePair | None:
    """The nominated pair of the audio transport, or None before ICE completes."""
    for transceiver in pc.getTransceivers():
        pair = seam.nominated_pair(transceiver)
        if pair is not None:
            return CandidatePair(
                local_type=pair.local_candidate.type,
                local_address=(pair.local_candidate.host, pair.local_candidate.port),
                local_protocol=pair.local_candidate.transport,
                remote_type=pair.remote_candidate.type,
                remote_address=(pair.remote_candidate.host, pair.remote_candidate.port),
            )
    return None


def ice_connection_kwargs(pc: RTCPeerConnection) -> dict:
    """What aioice was configured with (for checks that no public STUN is used)."""
    for transceiver in pc.getTransceivers():
        return seam.ice_connection_settings(transceiver)
    return {}


async def release_peer_connection(pc: RTCPeerConnection, *, timeout: float = 5.0) -> None:
    """Close ``pc`` and let go of everything the call allocated.

    ``pc.close()`` stops transceivers and transports and removes its own
    listeners, but leaves frames a decoding receiver queued for a remote track
    nobody read (unbounded: the biggest leak in practice), and our tracks bound.
    Safe to call twice.
    """
    transceivers = pc.getTransceivers()
    for transceiver in transceivers:
        track = transceiver.sender.track
        if track is not None:
            track.stop()
    try:
        await asyncio.wait_for(pc.close(), timeout)
    except TimeoutError:
        log.warning("peer connection did not close within %.1f s; dropping it anyway", timeout)
    for transceiver in transceivers:
        seam.end_remote_track(transceiver.receiver.track)
        with contextlib.suppress(Exception):
            transceiver.sender.replaceTrack(None)
