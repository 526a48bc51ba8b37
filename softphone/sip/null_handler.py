"""A signalling-only SessionDescriptionHandler: valid SDP, no media.

It is the fake that session tests use, and what a load run uses when only
SIP is under test: offers and answers carry one static audio stream whose
direction follows the offer/answer rules (RFC 3264 section 6.1), so hold and
unhold are visible in the SDP exactly as with real media.
"""

from __future__ import annotations

import enum
import itertools
import random
import re
import secrets

from softphone.errors import SessionError
from softphone.log import get_logger
from softphone.sip.description_handler import Body, DescriptionOptions, SessionDescriptionHandler
from softphone.sip.direction import Direction, sdp_direction

log = get_logger(__name__)

SDP = "application/sdp"
_ports = itertools.count(40000, 2)


class _Offer(enum.Enum):
    """Where this handler is in the offer/answer exchange."""

    STABLE = "stable"
    HAVE_LOCAL_OFFER = "have-local-offer"
    HAVE_REMOTE_OFFER = "have-remote-offer"


class NullDescriptionHandler(SessionDescriptionHandler):
    """Writes a PCMU/PCMA/telephone-event SDP; ``send_dtmf`` returns False.

    First offers are plain RTP/AVP, or WebRTC-shaped (UDP/TLS/RTP/SAVPF with
    ICE credentials, a fingerprint, rtcp-mux) with ``webrtc=True`` so that a
    browser accepts them; answers mirror the offer's profile and keep only the
    offered G.711 and telephone-event/8000 payload types; later offers
    (re-INVITEs) reuse what was negotiated.  No packet is ever sent or received.
    """

    def __init__(self, session=None, options=None, *, address: str = "127.0.0.1", webrtc: bool = False) -> None:
        self.session = session
        self.webrtc = webrtc
        self._negotiated: _OfferedMedia | None = None
        self.address = address
        self.port = next(_ports)
        self._session_id = random.randint(10**9, 2**31)
        self._version = 0
        self._state = _Offer.STABLE
        self.hold = False
        self.local_direction: Direction | None = None
        self.remote_direction: Direction | None = None
        self.remote_sdp: str | None = None
        self.closed = False
        self.descriptions_made = 0
        self._ice = (secrets.token_hex(4), secrets.token_hex(12))
        self._fingerprint = ":".join(f"{b:02X}" for b in secrets.token_bytes(32))

    def has_description(self, content_type: str) -> bool:
        return content_type.split(";", 1)[0].strip().lower() == SDP

    async def get_description(self, options: DescriptionOptions | None = None) -> Body:
        if self.closed:
            raise SessionError("description handler is closed")
        options = options or DescriptionOptions()
        self.hold = options.hold
        if self._state is _Offer.HAVE_REMOTE_OFFER:
            remote = self.remote_direction or Direction.SENDRECV
            # Answer: send only if the offerer receives, receive only if it sends;
            # holding (SIP.js's hold modifier) means we stop receiving: sendonly/inactive.
            direction = Direction.of(remote.receives, remote.sends and not self.hold)
            self._state = _Offer.STABLE
            media = self._negotiated = _answer_media(self.remote_sdp or "")
        else:
            direction = Direction.SENDONLY if self.hold else Direction.SENDRECV
            self._state = _Offer.HAVE_LOCAL_OFFER
            if self._negotiated is not None:
                media = self._negotiated
            elif self.webrtc:
                media = _OfferedMedia("UDP/TLS/RTP/SAVPF", mid="0")
            else:
                media = _OfferedMedia()
        self.local_direction = direction
        self.descriptions_made += 1
        return Body(SDP, self._sdp(direction, media))

    async def set_description(self, body: Body, options: DescriptionOptions | None = None) -> None:
        if self.closed:
            raise SessionError("description handler is closed")
        if not self.has_description(body.content_type):
            raise SessionError(f"unsupported session description type {body.content_type!r}")
        if not body.content.lstrip().startswith("v=0"):
            raise SessionError("session description does not start with v=0")
        if "\nm=" not in body.content.replace("\r\n", "\n"):
            raise SessionError("session description has no media section (m=)")
        self.remote_sdp = body.content
        self.remote_direction = sdp_direction(body.content)
        if self._state is _Offer.HAVE_LOCAL_OFFER:
            self._state = _Offer.STABLE
            if self._negotiated is None:
                try:
                    self._negotiated = _answer_media(body.content)
                except SessionError:
                    self._negotiated = None
        else:
            self._state = _Offer.HAVE_REMOTE_OFFER

    async def rollback_description(self) -> None:
        if self._state is _Offer.HAVE_LOCAL_OFFER:
            self._state = _Offer.STABLE

    async def send_dtmf(self, tones: str, duration_ms: int = 100, gap_ms: int = 70) -> bool:
        return False

    async def close(self) -> None:
        self.closed = True

    def _sdp(self, direction: Direction, media: _OfferedMedia) -> str:
        self._version += 1
        payloads = " ".join(str(pt) for pt, _ in media.codecs)
        lines = [
            "v=0",
            f"o=- {self._session_id} {self._version} IN IP4 {self.address}",
            "s=softphone",
            f"c=IN IP4 {self.address}",
            "t=0 0",
            f"m=audio {self.port} {media.proto} {payloads}",
        ]
        if media.mid is not None:
            lines.insert(5, f"a=group:BUNDLE {media.mid}")
            lines.append(f"a=mid:{media.mid}")
        if "TLS" in media.proto:
            # Shaped like WebRTC so a browser's SDP checks pass; no ICE or DTLS ever happens.
            setup = "actpass" if self._state is _Offer.HAVE_LOCAL_OFFER else "active"
            lines += [f"a=ice-ufrag:{self._ice[0]}", f"a=ice-pwd:{self._ice[1]}",
                      f"a=fingerprint:sha-256 {self._fingerprint}", f"a=setup:{setup}", "a=rtcp-mux"]
        for pt, name in media.codecs:
            lines.append(f"a=rtpmap:{pt} {name}")
            if name.startswith("telephone-event"):
                lines.append(f"a=fmtp:{pt} 0-16")
        lines += ["a=ptime:20", f"a={direction.value}"]
        return "\r\n".join(lines) + "\r\n"


class _OfferedMedia:
    """What our audio m= line carries: RTP/AVP PCMU/PCMA/telephone-event unless answering."""

    def __init__(self, proto: str = "RTP/AVP", codecs: list[tuple[int, str]] | None = None,
                 mid: str | None = None) -> None:
        self.proto = proto
        self.codecs = codecs or [(0, "PCMU/8000"), (8, "PCMA/8000"), (101, "telephone-event/8000")]
        self.mid = mid


_RTPMAP_RE = re.compile(r"^a=rtpmap:(\d+)\s+([^\s/]+)/(\d+)", re.MULTILINE)


def _answer_media(offer: str) -> _OfferedMedia:
    """Mirror the offer's transport profile and keep the codecs we claim (RFC 3264 6.1)."""
    text = offer.replace("\r\n", "\n")
    m_line = next((line for line in text.split("\n") if line.startswith("m=audio ")), None)
    if m_line is None:
        return _OfferedMedia()
    parts = m_line.split()
    proto = parts[2] if len(parts) > 2 else "RTP/AVP"
    offered = parts[3:]
    names = {pt: (name, int(rate)) for pt, name, rate in _RTPMAP_RE.findall(text)}
    static = {"0": ("PCMU", 8000), "8": ("PCMA", 8000)}
    codecs: list[tuple[int, str]] = []
    for pt in offered:
        name, rate = names.get(pt) or static.get(pt, ("", 0))
        if name.upper() in ("PCMU", "PCMA") and rate == 8000:
            codecs.append((int(pt), f"{name.upper()}/8000"))
    events = [pt for pt in offered if names.get(pt, ("", 0))[0].lower() == "telephone-event"
              and names[pt][1] == 8000]
    if events:
        codecs.append((int(events[0]), "telephone-event/8000"))
    if not codecs:
        raise SessionError("offer has no PCMU or PCMA audio codec (signalling-only handler)")
    mid = next((line[6:].strip() for line in text.split("\n") if line.startswith("a=mid:")), None)
    return _OfferedMedia(proto, codecs, mid)


def null_handler_factory(session=None, options=None) -> NullDescriptionHandler:
    """A :data:`SessionDescriptionHandlerFactory` for signalling-only sessions."""
    return NullDescriptionHandler(session, options)


def webrtc_null_handler_factory(session=None, options=None) -> NullDescriptionHandler:
    """Signalling-only sessions whose offers a browser (SIP.js in Chromium) accepts."""
    return NullDescriptionHandler(session, options, webrtc=True)
