"""Small, text-level SDP edits that aiortc does not do itself.

aiortc writes and parses SDP for what it supports; two things the softphone
needs are outside that: RFC 4733 ``telephone-event`` (aiortc has no codec
for it, so it never offers or answers it) and reading a remote section's
direction and codecs for hold logic and tests.  These helpers work on the
text, keep every other line untouched and always write CRLF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from softphone.errors import DescriptionError
from softphone.log import get_logger
from softphone.sip.direction import Direction

log = get_logger(__name__)

_RTPMAP_RE = re.compile(r"^a=rtpmap:(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?\s*$")


class SdpError(DescriptionError, ValueError):
    """An SDP body is not usable (no media section, bad m= line)."""




@dataclass(frozen=True)
class Codec:
    """One ``a=rtpmap`` entry of a media section."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None


@dataclass
class MediaSection:
    """The lines of one ``m=`` section; ``lines[0]`` is the m-line itself."""

    lines: list[str]

    @property
    def kind(self) -> str:
        return self.lines[0][2:].split(" ", 1)[0]

    @property
    def formats(self) -> list[str]:
        parts = self.lines[0].split()
        if len(parts) < 4:
            raise SdpError(f"m= line {self.lines[0]!r} has no formats")
        return parts[3:]

    def set_formats(self, formats: list[str]) -> None:
        parts = self.lines[0].split()[:3]
        self.lines[0] = " ".join(parts + formats)

    @property
    def direction(self) -> Direction | None:
        for line in self.lines:
            value = line[2:].strip() if line.startswith("a=") else None
            if value in {d.value for d in Direction}:
                return Direction(value)
        return None

    def set_direction(self, direction: Direction) -> None:
        values = {d.value for d in Direction}
        kept = [ln for ln in self.lines if not (ln.startswith("a=") and ln[2:].strip() in values)]
        self.lines[:] = [*kept, f"a={direction.value}"]

    @property
    def codecs(self) -> list[Codec]:
        """rtpmap entries in m-line order (static PTs without rtpmap included for PCMU/PCMA/G722)."""
        by_pt: dict[int, Codec] = {}
        for line in self.lines:
            m = _RTPMAP_RE.match(line)
            if m:
                pt = int(m[1])
                by_pt[pt] = Codec(pt, m[2], int(m[3]), int(m[4]) if m[4] else None)
        static = {0: Codec(0, "PCMU", 8000), 8: Codec(8, "PCMA", 8000), 9: Codec(9, "G722", 8000)}
        out = []
        for fmt in self.formats:
            if fmt.isdigit():
                pt = int(fmt)
                codec = by_pt.get(pt) or static.get(pt)
                if codec:
                    out.append(codec)
        return out

    def attribute(self, name: str) -> str | None:
        prefix = f"a={name}:"
        for line in self.lines:
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        return None

    def telephone_events(self) -> dict[int, int]:
        """payload type -> clock rate of every ``telephone-event`` in this section."""
        return {c.payload_type: c.clock_rate for c in self.codecs if c.name.lower() == "telephone-event"}

    def add_telephone_events(self, events: dict[int, int]) -> None:
        """Append ``telephone-event`` payload types (pt -> rate) with ``fmtp 0-16``."""
        existing = {int(f) for f in self.formats if f.isdigit()}
        new = {pt: rate for pt, rate in events.items() if pt not in existing}
        if not new:
            return
        self.set_formats(self.formats + [str(pt) for pt in new])
        # rtpmap/fmtp go after the last rtpmap/fmtp/rtcp-fb line so codecs stay grouped.
        last = 0
        for i, line in enumerate(self.lines):
            if line.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
                last = i
        insert_at = last + 1 if last else len(self.lines)
        added = []
        for pt, rate in new.items():
            added += [f"a=rtpmap:{pt} telephone-event/{rate}", f"a=fmtp:{pt} 0-16"]
        self.lines[insert_at:insert_at] = added


@dataclass
class SessionDescription:
    """An SDP split into its session part and media sections."""

    session: list[str]
    media: list[MediaSection] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> SessionDescription:
        if not text or not text.lstrip().startswith("v=0"):
            raise SdpError("SDP does not start with v=0")
        lines = [ln for ln in text.replace("\r\n", "\n").split("\n") if ln.strip()]
        session: list[str] = []
        media: list[MediaSection] = []
        for line in lines:
            if line.startswith("m="):
                media.append(MediaSection([line]))
            elif media:
                media[-1].lines.append(line)
            else:
                session.append(line)
        return cls(session, media)

    def audio(self) -> MediaSection:
        """The first audio section (the softphone negotiates one)."""
        for section in self.media:
            if section.kind == "audio":
                return section
        raise SdpError("SDP has no m=audio section")

    def __str__(self) -> str:
        lines = list(self.session)
        for section in self.media:
            lines += section.lines
        return "\r\n".join(lines) + "\r\n"


def audio_direction(text: str) -> Direction:
    """Direction of the audio section; a session-level attribute or ``sendrecv`` by default."""
    sd = SessionDescription.parse(text)
    direction = sd.audio().direction
    if direction is not None:
        return direction
    for line in sd.session:
        if line.startswith("a=") and line[2:].strip() in {d.value for d in Direction}:
            return Direction(line[2:].strip())
    return Direction.SENDRECV


def set_audio_direction(text: str, direction: Direction) -> str:
    sd = SessionDescription.parse(text)
    sd.audio().set_direction(direction)
    return str(sd)


def audio_codecs(text: str) -> list[Codec]:
    return SessionDescription.parse(text).audio().codecs


def telephone_events(text: str) -> dict[int, int]:
    """payload type -> clock rate of the audio section's telephone-events."""
    return SessionDescription.parse(text).audio().telephone_events()


def add_telephone_events(text: str, events: dict[int, int]) -> str:
    sd = SessionDescription.parse(text)
    sd.audio().add_telephone_events(events)
    return str(sd)


def answer_telephone_events(offered: dict[int, int], audio_clock_rate: int) -> dict[int, int]:
    """Which offered telephone-events an answer keeps: the one matching the audio clock rate.

    RFC 4733 section 7.1.1: events share the audio stream's timestamp space, so
    the rate should match the codec's.  If the offer has no match (e.g. only
    /8000 next to Opus), keep /8000 or whatever is there: interworking with
    PBXs that only know /8000 matters more than purity.
    """
    if not offered:
        return {}
    for pt, rate in sorted(offered.items()):
        if rate == audio_clock_rate:
            return {pt: rate}
    for pt, rate in sorted(offered.items()):
        if rate == 8000:
            return {pt: rate}
    pt = min(offered)
    return {pt: offered[pt]}


def setup_attribute(text: str) -> str | None:
    """The DTLS ``a=setup`` value of the audio section (or the session)."""
    sd = SessionDescription.parse(text)
    value = sd.audio().attribute("setup")
    if value is None:
        for line in sd.session:
            if line.startswith("a=setup:"):
                return line[len("a=setup:"):].strip()
    return value


def set_setup_attribute(text: str, value: str) -> str:
    """Replace (or add) the audio section's DTLS ``a=setup`` value."""
    if value not in ("actpass", "active", "passive", "holdconn"):
        raise SdpError(f"a=setup: {value!r} is not actpass/active/passive/holdconn")
    sd = SessionDescription.parse(text)
    sd.session = [ln for ln in sd.session if not ln.startswith("a=setup:")]
    audio = sd.audio()
    audio.lines[:] = [ln for ln in audio.lines if not ln.startswith("a=setup:")] + [f"a=setup:{value}"]
    return str(sd)


def candidate_types(text: str) -> list[str]:
    """``typ`` of every ``a=candidate`` line (host, srflx, relay...)."""
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=candidate:"):
            parts = line.split()
            if "typ" in parts:
                out.append(parts[parts.index("typ") + 1])
    return out


_EXTMAP_RE = re.compile(r"^a=extmap:(\d+)((?:/\w+)?\s+)(\S+)(.*)$")


def keep_extension_ids(offer: str, previous: str) -> str:
    """Renumber a re-offer's ``a=extmap`` lines to the IDs ``previous`` negotiated.

    RFC 8285 section 6: an extension keeps its ID for the whole session, and
    Chromium rejects a re-offer that moves one ("RTP extension ID reassignment
    not supported").  aiortc re-offers with its own default IDs, which differ
    from the ones a browser's offer chose and we answered with.  Extensions
    new to the session get IDs nothing else uses.
    """
    known: dict[str, int] = {}
    for line in previous.replace("\r\n", "\n").split("\n"):
        match = _EXTMAP_RE.match(line)
        if match:
            known.setdefault(match[3], int(match[1]))
    lines = offer.replace("\r\n", "\n").split("\n")
    used = set(known.values())
    out = []
    for line in lines:
        match = _EXTMAP_RE.match(line)
        if match:
            uri = match[3]
            if uri not in known:
                known[uri] = next(i for i in range(1, 256) if i != 15 and i not in used)
                used.add(known[uri])
            line = f"a=extmap:{known[uri]}{match[2]}{uri}{match[4]}"
        out.append(line)
    return "\r\n".join(out)
