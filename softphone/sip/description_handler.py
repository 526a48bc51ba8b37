"""The seam between SIP sessions and media, as SIP.js's SessionDescriptionHandler.

The SIP layer never touches RTP.  A session asks its handler for a local
description (offer or answer), hands it the remote one, and asks it to send
DTMF; :mod:`softphone.media` implements this with aiortc, tests and
signalling-only load runs use a handler that only writes SDP.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Body:
    """A message body with its content type (``application/sdp`` for SDP)."""

    content_type: str
    content: str


@dataclass(frozen=True)
class DescriptionOptions:
    """What the session wants from the next description.

    ``hold``: we put the call on hold; our side becomes ``sendonly`` (or
    ``inactive`` if the far end is not sending), as SIP.js's hold modifier.
    ``ice_restart``: gather fresh ICE credentials (re-INVITE after a network change).
    """

    hold: bool = False
    ice_restart: bool = False


class SessionDescriptionHandler(abc.ABC):
    """One per session; created by a factory when the session needs media."""

    @abc.abstractmethod
    async def get_description(self, options: DescriptionOptions | None = None) -> Body:
        """Create our offer, or our answer if a remote offer was set first."""

    @abc.abstractmethod
    async def set_description(self, body: Body, options: DescriptionOptions | None = None) -> None:
        """Apply the remote offer or answer (directions honoured: hold/unhold)."""

    @abc.abstractmethod
    def has_description(self, content_type: str) -> bool:
        """True if this handler understands bodies of ``content_type``."""

    @abc.abstractmethod
    async def send_dtmf(self, tones: str, duration_ms: int = 100, gap_ms: int = 70) -> bool:
        """Send DTMF in the media path (RFC 4733); False if it cannot, so the
        session falls back to SIP INFO."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release all media resources; safe to call twice."""

    async def rollback_description(self) -> None:
        """Forget our last offer: the far end rejected it (a failed or 491 re-INVITE),
        so the previous session parameters stay in force (RFC 3261 14.1)."""
        return None


#: Builds a handler for a session; receives the session object and options.
SessionDescriptionHandlerFactory = Callable[[Any], SessionDescriptionHandler]
