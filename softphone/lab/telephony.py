"""The lab's telephony hook: what the REST API asks of the phone system.

The platform calls the agent's extension on login, dials customers, holds,
records and hangs up.  The REST layer (:mod:`softphone.lab.app`) talks only to
the :class:`Telephony` protocol; :class:`InMemoryTelephony` is the default
and only tracks state (no SIP, no media), so the REST API works on its own.
The real implementation (:mod:`softphone.lab.dialer`) dials phones found
through a :class:`PhoneDirectory` (the lab's SIP edge) and reports what
happens on its own (a customer hanging up, a call answered later) back to
the REST layer through :class:`TelephonyEvents` (``attach``).  Raising
:class:`softphone.errors.TelephonyError` turns into a 409 answer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from softphone.errors import TelephonyError
from softphone.log import get_logger

if TYPE_CHECKING:
    from softphone.sip.description_handler import SessionDescriptionHandlerFactory
    from softphone.sip.inviter import Inviter

log = get_logger(__name__)


class CallState(enum.Enum):
    """``call_state`` values of the contract."""

    DIALING = "dialing"
    RINGING = "ringing"
    ANSWERED = "answered"
    CONNECTED = "connected"  # the two external parties joined, agent dropped
    HOLD = "hold"
    ENDED = "ended"

    @property
    def live(self) -> bool:
        return self is not CallState.ENDED

    def can_move_to(self, new: CallState) -> bool:
        """Whether :data:`CALL_MOVES` allows ``self -> new``."""
        return new in CALL_MOVES[self]


#: The one table of call state moves; the REST layer answers 409 for any other.
CALL_MOVES: dict[CallState, frozenset[CallState]] = {
    CallState.DIALING: frozenset({CallState.RINGING, CallState.ANSWERED, CallState.ENDED}),
    CallState.RINGING: frozenset({CallState.ANSWERED, CallState.ENDED}),
    CallState.ANSWERED: frozenset({CallState.HOLD, CallState.CONNECTED, CallState.ENDED}),
    CallState.HOLD: frozenset({CallState.ANSWERED, CallState.CONNECTED, CallState.ENDED}),
    CallState.CONNECTED: frozenset({CallState.ENDED}),
    CallState.ENDED: frozenset(),
}


@dataclass(frozen=True)
class CallInfo:
    """What the telephony needs to know about one call."""

    call_id: int
    user_id: int
    phone_number: str
    outbound_cli: str
    extension: str | None
    campaign_id: int | None
    #: shotgun: the other numbers dialled at once (first answer wins, the others are cancelled)
    alternatives: tuple[str, ...] = ()
    #: "outbound" or "inbound" (a customer calling in, injected through the lab-only endpoint)
    direction: str = "outbound"


class PhoneDirectory(Protocol):
    """Where the lab finds registered phones (the SIP edge implements it)."""

    def is_registered(self, extension: str) -> bool: ...

    def registered_extensions(self) -> list[str]: ...

    def inviter(self, extension: str, handler_factory: SessionDescriptionHandlerFactory, *,
                caller_id: str, display_name: str | None = None,
                extra_headers: list[tuple[str, str]] | None = None) -> Inviter:
        """An Inviter (softphone.sip.inviter) on the WebSocket where `extension` is registered,
        targeting its registered Contact; From = sip:{caller_id}@{lab domain}.
        Raises TelephonyError("extension 9001 is not registered") when there is no live binding."""

    def on(self, event: str, callback: Callable[..., Any]) -> None:
        """events: "registered"(extension: str), "unregistered"(extension: str, reason: str)
        (reason e.g. "expires 0", "binding expired", "websocket closed", "provisioning expired").

        An incoming INVITE from a phone (an agent dialling out through SIP): the edge emits
        "invite"(extension: str, invitation: softphone.sip.invitation.Invitation) if a listener
        exists, else answers 403 "calls from phones are not routed in the lab"."""


class TelephonyEvents(Protocol):
    """What the telephony reports on its own to the REST layer (``softphone.lab.app.Lab``).

    Called from tasks of the telephony, never from inside a Telephony method the REST
    layer is awaiting (the REST layer holds the agent's lock then).
    """

    async def call_state_changed(self, call_id: int, state: CallState, sip_code: int | None = None,
                                 phone_number: str | None = None) -> None:
        """A call moved without being asked: answered later (RINGING -> ANSWERED; ``phone_number``
        names the shotgun winner), ended by the far end or the network (ENDED with its SIP code)."""

    async def bridge_ended(self, user_id: int, reason: str) -> None:
        """The agent's bridge call ended without a logout (the phone hung up or went away)."""


@runtime_checkable
class Telephony(Protocol):
    """The phone system behind the lab's REST API."""

    async def on_login(self, user_id: int, extension: str, campaign_id: int) -> None:
        """Bridge a call to ``extension``; raise TelephonyError if it is not reachable."""

    async def on_logout(self, user_id: int) -> None:
        """Hang up the agent's bridge call."""

    async def place_call(self, call: CallInfo) -> CallState:
        """Dial ``call.phone_number``; the state the call is in when this returns."""

    async def hangup(self, call: CallInfo) -> int:
        """End the call; the SIP status code that ended it (200 for a normal BYE)."""

    async def hold(self, call: CallInfo) -> None: ...

    async def retrieve(self, call: CallInfo) -> None: ...

    async def start_recording(self, call: CallInfo) -> str | None:
        """Start recording; the recording's URL if there is one."""

    async def stop_recording(self, call: CallInfo) -> None: ...

    async def connect(self, first: CallInfo, second: CallInfo) -> None:
        """Join two external parties and drop the agent."""

    async def place_inbound(self, call: CallInfo) -> CallState:
        """A customer calls the agent (``call.direction == "inbound"``); the state when this returns."""

    def attach(self, sink: TelephonyEvents) -> None:
        """Where to report what happens without being asked (see :class:`TelephonyEvents`)."""

    async def close(self) -> None: ...


class InMemoryTelephony:
    """State only: agents on which extension, which calls are up. Every call answers at once."""

    def __init__(self, recording_base_url: str = "http://127.0.0.1/recordings"):
        self.recording_base_url = recording_base_url.rstrip("/")
        self.bridges: dict[int, tuple[str, int]] = {}  # user_id -> (extension, campaign)
        self.calls: dict[int, CallState] = {}
        self.recording: set[int] = set()

    async def on_login(self, user_id: int, extension: str, campaign_id: int) -> None:
        self.bridges[user_id] = (extension, campaign_id)
        log.debug("bridge call to extension %s for user %d", extension, user_id)

    async def on_logout(self, user_id: int) -> None:
        self.bridges.pop(user_id, None)

    async def place_call(self, call: CallInfo) -> CallState:
        if call.user_id not in self.bridges:
            raise TelephonyError(f"user {call.user_id} has no bridge call")
        self.calls[call.call_id] = CallState.ANSWERED
        return CallState.ANSWERED

    async def hangup(self, call: CallInfo) -> int:
        self.calls[call.call_id] = CallState.ENDED
        self.recording.discard(call.call_id)
        return 200

    async def hold(self, call: CallInfo) -> None:
        self.calls[call.call_id] = CallState.HOLD

    async def retrieve(self, call: CallInfo) -> None:
        self.calls[call.call_id] = CallState.ANSWERED

    async def start_recording(self, call: CallInfo) -> str | None:
        self.recording.add(call.call_id)
        return f"{self.recording_base_url}/call-{call.call_id}.wav"

    async def stop_recording(self, call: CallInfo) -> None:
        self.recording.discard(call.call_id)

    async def connect(self, first: CallInfo, second: CallInfo) -> None:
        self.calls[first.call_id] = CallState.CONNECTED
        self.calls[second.call_id] = CallState.CONNECTED

    async def place_inbound(self, call: CallInfo) -> CallState:
        return await self.place_call(call)

    def attach(self, sink: TelephonyEvents) -> None:
        """Nothing happens here without being asked: no events to report."""

    async def close(self) -> None:
        self.bridges.clear()
