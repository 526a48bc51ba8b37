"""RFC 3264 media directions, and reading one from an SDP body.

The SIP layer needs directions for hold and unhold without parsing SDP
properly (that is the description handler's work); media handlers share the
same enum.
"""

from __future__ import annotations

import enum
import re

_DIRECTION_RE = re.compile(r"^a=(sendrecv|sendonly|recvonly|inactive)\s*$", re.MULTILINE)


class Direction(enum.Enum):
    """RFC 3264 media direction, from the point of view of the SDP's writer."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (Direction.SENDRECV, Direction.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (Direction.SENDRECV, Direction.RECVONLY)

    @classmethod
    def of(cls, sends: bool, receives: bool) -> Direction:
        if sends and receives:
            return cls.SENDRECV
        if sends:
            return cls.SENDONLY
        if receives:
            return cls.RECVONLY
        return cls.INACTIVE

    def reversed(self) -> Direction:
        """The direction seen from the other side."""
        return Direction.of(self.receives, self.sends)


def sdp_direction(sdp: str) -> Direction:
    """The direction attribute of the (first) media section, ``sendrecv`` by default."""
    media = sdp.split("\nm=", 1)
    search_in = "m=" + media[1] if len(media) > 1 else sdp
    match = _DIRECTION_RE.search(search_in.replace("\r\n", "\n")) or _DIRECTION_RE.search(
        sdp.replace("\r\n", "\n")
    )
    return Direction(match.group(1)) if match else Direction.SENDRECV
