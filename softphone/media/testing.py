"""Calls between two peer connections in one process, for tests and benchmarks.

Load tests of the media path need many calls without a SIP server; a
:class:`LoopbackCall` is exactly the offer/answer a SIP call performs, minus the
signalling transport.  Not used by the agent: production calls go through
:class:`~softphone.media.description_handler.WebRtcDescriptionHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpTransceiver
from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from softphone.errors import MediaError
from softphone.media import aiortc_seam as seam
from softphone.media.codecs import codec_capabilities, codec_spec
from softphone.media.config import FastPathOptions
from softphone.media.counting_receiver import CountingRtpReceiver, install_counting_receiver
from softphone.media.lean_sender import install_lean_sender
from softphone.media.peer import release_peer_connection
from softphone.media.pre_encoded_track import PreEncodedAudioTrack
from softphone.media.rtp_counter import RtpStreamReport


@contextlib.contextmanager
def loopback_host_candidates() -> Iterator[None]:
    """Gather host candidates on 127.0.0.1 only, for single-machine tests and benchmarks.

    aioice skips 127.0.0.1 and uses every other interface address; on a shared
    test box calls must stay on loopback.  Process-wide for the duration: use it
    in test/bench processes, not in agents.
    """
    with seam.loopback_host_addresses():
        yield


@dataclass
class CallLeg:
    """One side of a :class:`LoopbackCall`."""

    pc: RTCPeerConnection
    transceiver: RTCRtpTransceiver
    track: MediaStreamTrack | None

    @property
    def receiver(self) -> RTCRtpReceiver:
        return self.transceiver.receiver

    def report(self) -> RtpStreamReport:
        receiver = self.transceiver.receiver
        if not isinstance(receiver, CountingRtpReceiver):
            raise MediaError("report: this leg's receiver is stock aiortc (open the call with counting=True)")
        return receiver.report()


@dataclass
class LoopbackCall:
    """Two peer connections in one process talking over loopback: tests and benchmarks."""

    caller: CallLeg
    callee: CallLeg

    async def close(self, timeout: float = 5.0) -> None:
        await asyncio.gather(release_peer_connection(self.caller.pc, timeout=timeout),
                             release_peer_connection(self.callee.pc, timeout=timeout))


async def open_loopback_call(codec: str, caller_track: MediaStreamTrack | None,
                             callee_track: MediaStreamTrack | None, *, counting: bool = True,
                             caller_decode: bool = False, callee_decode: bool = False,
                             configuration: RTCConfiguration | None = None, connect_timeout: float = 10.0,
                             fast_path: bool = True, options: FastPathOptions | None = None) -> LoopbackCall:
    """Negotiate ``codec`` between two new peer connections and wait until both are connected.

    ``fast_path`` puts the seam's fast receive/send/clock on both and sends
    pre-encoded tracks with the lean sender (``options`` switches parts off);
    ``fast_path=False`` is stock aiortc throughout (``counting`` is then ignored).
    ``counting`` installs :class:`CountingRtpReceiver` on both sides (decoding
    only where ``*_decode``).  ``configuration`` defaults to no ICE servers at all
    (never a public STUN).  Wrap in :func:`loopback_host_candidates` to keep the
    candidates on 127.0.0.1.
    """
    options = options or FastPathOptions()
    counting = counting and fast_path
    if configuration is None:
        configuration = RTCConfiguration(iceServers=[])
    caps = codec_capabilities([codec_spec(codec).name])
    a = RTCPeerConnection(configuration)
    b = RTCPeerConnection(configuration)
    if fast_path:
        seam.install_fast_path(a, light_parse=options.light_parse)
        seam.install_fast_path(b, light_parse=options.light_parse)

    def bind(track: MediaStreamTrack | None, transceiver: RTCRtpTransceiver) -> None:
        if isinstance(track, PreEncodedAudioTrack):
            track.bind(transceiver)
            if fast_path and options.lean_sender:
                install_lean_sender(transceiver, spread=options.spread)

    try:
        with seam.no_default_stun():
            ta = a.addTransceiver(caller_track or "audio", direction="sendrecv" if caller_track else "recvonly")
        ta.setCodecPreferences(caps)
        if counting:
            install_counting_receiver(ta.receiver, decode=caller_decode)
        bind(caller_track, ta)
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)  # b's gatherer gets the explicit empty list
        tb = b.getTransceivers()[0]
        if counting:
            install_counting_receiver(tb.receiver, decode=callee_decode)
        if callee_track is not None:
            tb.sender.replaceTrack(callee_track)
            tb.direction = "sendrecv"
            bind(callee_track, tb)
        else:
            tb.direction = "recvonly"
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        await asyncio.wait_for(_connected(a, b), connect_timeout)
    except BaseException:
        await asyncio.gather(release_peer_connection(a), release_peer_connection(b),
                             return_exceptions=True)
        raise
    return LoopbackCall(CallLeg(a, ta, caller_track), CallLeg(b, tb, callee_track))


async def _connected(*pcs: RTCPeerConnection) -> None:
    while True:
        states = [pc.connectionState for pc in pcs]
        if all(s == "connected" for s in states):
            return
        if any(s in ("failed", "closed") for s in states):
            raise MediaError(f"loopback call: connection state {states}")
        await asyncio.sleep(0.01)
