"""The WebRTC SessionDescriptionHandler: one aiortc peer connection per SIP session.

The SIP layer sees only :class:`~softphone.sip.description_handler.SessionDescriptionHandler`;
this class turns its calls into aiortc offer/answer steps, adds what aiortc
lacks (RFC 4733 telephone-event in the SDP and on the wire, bounded ICE
gathering, explicit hold directions) and reports what happens as pyee events:

* ``track`` (remote audio ``MediaStreamTrack``) when the far end's audio arrives;
* ``ice_state`` / ``connection_state`` (aiortc's state strings) on every change;
* ``dtmf`` (:class:`softphone.events.DtmfEvent`: digit, duration_ms, via="rfc4733").

Seams for the other media modules: ``source`` (any audio ``MediaStreamTrack``),
``sinks`` (objects with ``async start(track)`` / ``async stop()``), ``decode``
and the exposed ``pc``, ``transceiver``, ``sender`` and ``receiver``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Iterable
from typing import Any

from aiortc import RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender
from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import AiortcCompatibilityError, DescriptionError, MediaError
from softphone.events import DtmfEvent
from softphone.log import get_logger
from softphone.media import aiortc_seam as seam
from softphone.media import sdp as sdpmod
from softphone.media.config import MediaConfig
from softphone.media.counting_receiver import install_counting_receiver
from softphone.media.lean_sender import install_lean_sender
from softphone.media.peer import (
    add_audio_transceiver,
    check_answer_setup,
    create_peer_connection,
    set_local_description,
)
from softphone.media.pre_encoded_track import PreEncodedAudioTrack
from softphone.media.rfc4733 import DtmfReceiver, DtmfSender, validate_tones
from softphone.media.sdp import Direction
from softphone.media.stats import CallQuality, collect
from softphone.sip.description_handler import Body, DescriptionOptions, SessionDescriptionHandler

log = get_logger(__name__)

SDP = "application/sdp"
CLOSE_TIMEOUT = 5.0


class NegotiationState(enum.Enum):
    """Where the handler is in the offer/answer exchange (RFC 3264)."""

    NEW = "new"
    HAVE_LOCAL_OFFER = "have-local-offer"
    HAVE_REMOTE_OFFER = "have-remote-offer"
    STABLE = "stable"
    CLOSED = "closed"


class WebRtcDescriptionHandler(SessionDescriptionHandler, AsyncIOEventEmitter):
    """Offer/answer, hold, RFC 4733 DTMF and stats over one aiortc peer connection."""

    def __init__(self, config: MediaConfig | None = None, *, source: MediaStreamTrack | None = None,
                 sinks: Iterable[Any] = (), decode: bool | None = None, session: Any = None) -> None:
        AsyncIOEventEmitter.__init__(self)
        self.config = config or MediaConfig()
        self.session = session
        self.decode = self.config.decode if decode is None else decode
        self.sinks = list(sinks)
        self.source = source
        self.state = NegotiationState.NEW
        # The fast path when the installed aiortc is the tested one (config.fast_path).
        self.fast_path = seam.fast_path_enabled(self.config.fast_path)
        options = self.config.fast_path_options
        self.pc = create_peer_connection(self.config)
        if self.fast_path:
            # SRTP straight from the datagram callback once connected (no queue/task hop).
            seam.install_fast_path(self.pc, light_parse=options.light_parse)
        else:
            seam.guard_empty_datagrams(self.pc)
        self.transceiver = add_audio_transceiver(self.pc, self.config, source)
        self.sender = self.transceiver.sender
        self.receiver = self.transceiver.receiver
        if self.fast_path:
            # Counts RTP on every call and decodes only when asked (before the RFC 4733
            # hook below, which captures the receiver's packet handler).
            install_counting_receiver(self.receiver, decode=self.decode)
        if isinstance(source, PreEncodedAudioTrack):
            source.bind(self.transceiver)  # sends in whatever codec gets negotiated
            if self.fast_path and options.lean_sender:
                install_lean_sender(self.transceiver, spread=options.spread)
        self.remote_track: MediaStreamTrack | None = None
        self.local_sdp: str | None = None
        self.remote_sdp: str | None = None
        self.hold = False
        self._hold_before_offer = False
        self.remote_direction: Direction | None = None
        self._remote_direction_forced_by_us = False
        self._offered_events: dict[int, int] = {}
        self._remote_offer_events: dict[int, int] = {}
        self.negotiated_events: dict[int, int] = {}
        self._drain_task: asyncio.Task | None = None
        self._sink_task: asyncio.Task | None = None
        self._sinks_started: list[Any] = []
        self._closing: asyncio.Future | None = None
        self._dtmf_sender: DtmfSender | None = None
        self._dtmf_receiver: DtmfReceiver | None = None
        if self.config.telephone_event:
            try:
                seam.check_rfc4733()
            except AiortcCompatibilityError as exc:
                log.warning("%s: RFC 4733 is not offered, DTMF goes by SIP INFO", exc)
            else:
                self._dtmf_sender = DtmfSender(self.sender)
                self._dtmf_receiver = DtmfReceiver(self.receiver, self._on_dtmf, self.config.dtmf_flush_timeout)
        self.pc.on("track", self._on_track)
        self.pc.on("iceconnectionstatechange", self._on_ice_state)
        self.pc.on("connectionstatechange", self._on_connection_state)

    # --- SessionDescriptionHandler ---------------------------------------------------

    def has_description(self, content_type: str) -> bool:
        return content_type.split(";", 1)[0].strip().lower() == SDP

    async def get_description(self, options: DescriptionOptions | None = None) -> Body:
        self._check_open()
        options = options or DescriptionOptions()
        if self.state is not NegotiationState.HAVE_LOCAL_OFFER:
            self._hold_before_offer = self.hold
        if options.ice_restart:
            log.warning("ICE restart requested but aiortc cannot restart ICE; keeping the current transport")
        self.hold = options.hold
        pc = self.pc
        if self.state is NegotiationState.HAVE_REMOTE_OFFER:
            self.transceiver.direction = (Direction.SENDONLY if self.hold else Direction.SENDRECV).value
            answer = await self._aiortc("create answer", pc.createAnswer())
            local = await set_local_description(pc, answer, self.config)
            text = local.sdp
            events = {}
            if self._dtmf_sender is not None:
                events = sdpmod.answer_telephone_events(self._remote_offer_events, self._audio_clock_rate())
                text = sdpmod.add_telephone_events(text, events)
            self.negotiated_events = events
            self._move(NegotiationState.STABLE)
            self._configure_dtmf()
            self._keep_codec()
        else:
            if self.state is NegotiationState.HAVE_LOCAL_OFFER:
                raise DescriptionError("get_description: an offer is already pending its answer")
            self.transceiver.direction = self._offer_direction().value
            offer = await self._aiortc("create offer", pc.createOffer())
            local = await set_local_description(pc, offer, self.config)
            text = local.sdp
            if self._dtmf_sender is not None:
                self._offered_events = {pt: rate for rate, pt in
                                        self.config.telephone_event_payload_types.items()}
                text = sdpmod.add_telephone_events(text, self._offered_events)
            self._move(NegotiationState.HAVE_LOCAL_OFFER)
        self.local_sdp = text
        log.debug("local %s, audio %s", "offer" if self.state is NegotiationState.HAVE_LOCAL_OFFER
                  else "answer", sdpmod.audio_direction(text).value)
        return Body(SDP, text)

    async def set_description(self, body: Body, options: DescriptionOptions | None = None) -> None:
        self._check_open()
        if not self.has_description(body.content_type):
            raise DescriptionError(f"set_description: unsupported content type {body.content_type!r}")
        text = body.content
        parsed = sdpmod.SessionDescription.parse(text)
        audio = parsed.audio()
        kind = "answer" if self.state is NegotiationState.HAVE_LOCAL_OFFER else "offer"
        if kind == "answer":
            check_answer_setup(sdpmod.setup_attribute(self.local_sdp or ""), sdpmod.setup_attribute(text))
        await self._aiortc(f"remote {kind}", self.pc.setRemoteDescription(RTCSessionDescription(text, kind)))
        self.remote_sdp = text
        self.remote_direction = sdpmod.audio_direction(text)
        events = audio.telephone_events()
        if kind == "answer":
            self._remote_direction_forced_by_us = self.hold
            self.negotiated_events = {pt: r for pt, r in events.items() if self._offered_events.get(pt) == r}
            self._move(NegotiationState.STABLE)
            self._configure_dtmf()
            self._keep_codec()
        else:
            self._remote_direction_forced_by_us = False
            self._remote_offer_events = events
            self._move(NegotiationState.HAVE_REMOTE_OFFER)
        if self._dtmf_sender is not None:
            self._dtmf_sender.ensure_installed()

    async def rollback_description(self) -> None:
        """Our offer was rejected: go back to the previous parameters.

        aiortc has no SDP rollback, so the far end's previous description is
        applied again as the answer to our pending offer (its ``a=setup`` set
        to keep the established DTLS roles); media continues as before.
        Before any complete exchange the handler simply returns to ``new``.
        """
        if self.closed or self.state is not NegotiationState.HAVE_LOCAL_OFFER:
            return
        self.hold = self._hold_before_offer
        previous = self.remote_sdp
        if previous is None:
            self._move(NegotiationState.NEW)
            return
        role = seam.dtls_role(self.receiver.transport)
        text = sdpmod.set_setup_attribute(previous, "passive" if role == "client" else "active")
        await self._aiortc("rollback", self.pc.setRemoteDescription(RTCSessionDescription(text, "answer")))
        self._move(NegotiationState.STABLE)
        log.debug("offer rolled back; audio %s", self.local_direction)

    async def send_dtmf(self, tones: str, duration_ms: int = 100, gap_ms: int = 70) -> bool:
        """RFC 4733 when negotiated and we are sending; False so SIP can fall back to INFO."""
        validate_tones(tones, duration_ms, gap_ms)
        sender = self._dtmf_sender
        if self.closed or sender is None or not sender.enabled:
            return False
        current = self.transceiver.currentDirection
        if current not in ("sendrecv", "sendonly"):
            return False
        await sender.send(tones, duration_ms, gap_ms,
                          on_sent=lambda event: self.emit("dtmf_sent", event))
        return True

    async def close(self) -> None:
        """Stop sinks, tracks and the peer connection; drop references. Safe to call twice."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            self._move(NegotiationState.CLOSED)
            if self._sink_task is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(self._sink_task, CLOSE_TIMEOUT)
                self._sink_task = None
            for sink in self._sinks_started:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(sink.stop(), CLOSE_TIMEOUT)
            self._sinks_started.clear()
            if self._drain_task is not None:
                self._drain_task.cancel()
                with contextlib.suppress(BaseException):
                    await self._drain_task
                self._drain_task = None
            if self._dtmf_receiver is not None:
                self._dtmf_receiver.close()
            if self._dtmf_sender is not None:
                self._dtmf_sender.close()
            try:
                await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("peer connection did not close within %s s", CLOSE_TIMEOUT)
            for track in (self.source, self.remote_track):
                if track is not None:
                    track.stop()
        finally:
            self.remove_all_listeners()
            self._dtmf_receiver = None
            self._dtmf_sender = None
            self.source = None
            self.remote_track = None
            self.sinks = []
            self.session = None
            self._closing.set_result(None)

    # --- extras -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state is NegotiationState.CLOSED

    @property
    def local_direction(self) -> Direction | None:
        """Our negotiated direction (None before the first complete exchange)."""
        current = self.transceiver.currentDirection
        return Direction(current) if current else None

    @property
    def dtmf_payload_type(self) -> int | None:
        return self._dtmf_sender.payload_type if self._dtmf_sender is not None else None

    def replace_source(self, track: MediaStreamTrack | None) -> None:
        """Switch what we send mid-call (RTCRtpSender.replaceTrack); the old track is not stopped.

        aiortc's sender stops for good when its track ends (``MediaStreamError``):
        sources should stay live (send silence when done) and be replaced, not end.
        """
        self._check_open()
        if track is not None and track.kind != "audio":
            raise MediaError(f"replace_source: track kind {track.kind!r} is not audio")
        if self.sending_stopped:
            raise MediaError("replace_source: the sender stopped when its previous source ended; "
                             "aiortc cannot restart it (use sources that stay live)")
        if isinstance(track, PreEncodedAudioTrack):
            track.bind(self.transceiver)  # a lean sender installed at the start sends it from the slot scheduler
        self.sender.replaceTrack(track)
        self.source = track

    @property
    def sending_stopped(self) -> bool:
        """True once aiortc's RTP send loop has exited (its source ended or the call closed)."""
        return seam.sender_loop_finished(self.sender)

    async def stats(self) -> CallQuality:
        self._check_open()
        return await collect(self.pc)

    # --- internals ----------------------------------------------------------------------

    def _move(self, state: NegotiationState) -> None:
        if self.state is NegotiationState.CLOSED and state is not NegotiationState.CLOSED:
            raise DescriptionError("description handler is closed")
        if state is not self.state:
            log.debug("negotiation %s -> %s", self.state.value, state.value)
            self.state = state

    def _check_open(self) -> None:
        if self.closed:
            raise DescriptionError("description handler is closed")

    async def _aiortc(self, what: str, coro):
        """Run an aiortc step; its ValueError/InvalidStateError become DescriptionError naming the step."""
        try:
            return await coro
        except MediaError:
            raise
        except Exception as exc:
            raise DescriptionError(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _offer_direction(self) -> Direction:
        """SIP.js hold semantics: sendonly, or inactive if the far end is not sending to us."""
        if not self.hold:
            return Direction.SENDRECV
        far_not_sending = (
            self.remote_direction is not None
            and not self.remote_direction.sends
            and not self._remote_direction_forced_by_us
        )
        return Direction.INACTIVE if far_not_sending else Direction.SENDONLY

    def _audio_clock_rate(self) -> int:
        codecs = seam.negotiated_codecs(self.transceiver)
        return codecs[0].clockRate if codecs else 8000

    def _configure_dtmf(self) -> None:
        events = self.negotiated_events
        audio_rate = self._audio_clock_rate()
        if self._dtmf_receiver is not None:
            self._dtmf_receiver.configure(events)
        if self._dtmf_sender is not None:
            chosen = sdpmod.answer_telephone_events(events, audio_rate)
            pt, rate = next(iter(chosen.items())) if chosen else (None, 8000)
            self._dtmf_sender.configure(payload_type=pt, event_clock_rate=rate, audio_clock_rate=audio_rate,
                                        mid=self.transceiver.mid)
            if pt is None:
                log.debug("telephone-event not negotiated: DTMF falls back to SIP INFO")

    def _keep_codec(self) -> None:
        """Offer and accept only the negotiated codec from now on.

        aiortc's sender picks its codec once and cannot change it mid-call, so
        re-offers list just that codec and a re-offer without it fails
        (DescriptionError -> 488) instead of leaving both ends on different codecs.
        """
        codecs = seam.negotiated_codecs(self.transceiver)
        if not codecs:
            return
        used = codecs[0]
        keep = [c for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == used.mimeType.lower() and c.clockRate == used.clockRate]
        if keep:
            self.transceiver.setCodecPreferences(keep)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind != "audio" or self.closed:
            return
        self.remote_track = track
        self.emit("track", track)
        if self.sinks and self.decode:
            self._sink_task = asyncio.ensure_future(self._start_sinks(track))
        elif self.decode or not self.fast_path:
            # Decoded frames queue up in the track until read: drain them when nobody listens
            # (stock aiortc always decodes).
            self._drain_task = asyncio.ensure_future(self._drain(track))

    async def _start_sinks(self, track: MediaStreamTrack) -> None:
        # Each sink reads its track itself; with several, one track would hand each
        # only some of the frames, so each gets its own copy through a MediaRelay.
        if len(self.sinks) > 1:
            relay = MediaRelay()
            tracks = [relay.subscribe(track) for _ in self.sinks]
        else:
            tracks = [track]
        for sink, sink_track in zip(self.sinks, tracks, strict=True):
            if self.closed:
                return
            try:
                await sink.start(sink_track)
                self._sinks_started.append(sink)
            except Exception:
                log.exception("audio sink %r failed to start", sink)

    @staticmethod
    async def _drain(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                await track.recv()

    def _on_ice_state(self) -> None:
        if self.pc is not None:
            state = self.pc.iceConnectionState
            log.debug("ICE %s", state)
            self.emit("ice_state", state)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("connection %s", state)
        self.emit("connection_state", state)

    def _on_dtmf(self, event: DtmfEvent) -> None:
        self.emit("dtmf", event)


SourceFactory = Callable[[Any], MediaStreamTrack | None]
SinksFactory = Callable[[Any], Iterable[Any]]


class WebRtcDescriptionHandlerFactory:
    """A :data:`~softphone.sip.description_handler.SessionDescriptionHandlerFactory` for WebRTC.

    ``source_factory(session)`` gives the track to send (or None),
    ``sinks_factory(session)`` the sinks for the remote audio.
    """

    def __init__(self, config: MediaConfig | None = None, source_factory: SourceFactory | None = None,
                 sinks_factory: SinksFactory | None = None, *, decode: bool | None = None) -> None:
        self.config = config or MediaConfig()
        self.source_factory = source_factory
        self.sinks_factory = sinks_factory
        self.decode = decode

    def __call__(self, session: Any = None, options: Any = None) -> WebRtcDescriptionHandler:
        source = self.source_factory(session) if self.source_factory else None
        sinks = list(self.sinks_factory(session)) if self.sinks_factory else []
        return WebRtcDescriptionHandler(self.config, source=source, sinks=sinks, decode=self.decode,
                                        session=session)
