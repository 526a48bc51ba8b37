"""Typed payloads of the events an agent session emits (pyee), one frozen dataclass each.

Every event class names the pyee event it travels on (``EVENT``), so a
listener is written once for the library and the command line::

    agent.on("dtmf", lambda ev: print(ev.digit, ev.via))   # ev: DtmfEvent
    agent.on("call_ended", lambda ev: print(ev.cause, ev.sip_code))

:meth:`Event.as_dict` gives the JSON form (``softphone run --events json``
prints one per line).  This module is at the bottom of the layers: the SIP
and media packages build their :class:`DtmfEvent` from here, so a digit has
one shape however it arrived (SIP INFO, RFC 4733 packets, in-band tones).
Payloads never hold secrets.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Literal

#: How a digit arrived: SIP INFO, RFC 4733 telephone-event packets, or tones in the audio.
DtmfVia = Literal["info", "rfc4733", "inband"]
DTMF_VIAS: tuple[str, ...] = ("info", "rfc4733", "inband")


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value


@dataclass(frozen=True)
class Event:
    """Base of all event payloads; ``at`` is the wall-clock time (``time.time()``) it happened."""

    EVENT: ClassVar[str] = "event"

    def as_dict(self) -> dict[str, Any]:
        """``{"event": name, **fields}``, JSON-ready."""
        out: dict[str, Any] = {"event": self.EVENT}
        for f in dataclasses.fields(self):
            out[f.name] = _jsonable(getattr(self, f.name))
        return out


def _now() -> float:
    return time.time()


@dataclass(frozen=True)
class StateChanged(Event):
    """The agent moved from ``previous`` to ``state`` (``AgentState`` values)."""

    EVENT: ClassVar[str] = "state"
    state: str
    previous: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Registered(Event):
    """The SIP registrar accepted the binding of ``aor`` for ``expires`` seconds."""

    EVENT: ClassVar[str] = "registered"
    extension: str
    aor: str
    expires: int | None = None
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Unregistered(Event):
    """The binding is gone: ``reason`` e.g. "expires 0", "transport lost"."""

    EVENT: ClassVar[str] = "unregistered"
    extension: str
    reason: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class LoggedIn(Event):
    """The User Login API put ``user_id`` into ``campaign_id`` on ``extension``."""

    EVENT: ClassVar[str] = "logged_in"
    user_id: int
    campaign_id: int
    extension: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class LoggedOut(Event):
    """The agent was logged out; ``stale`` when it was a session left by an earlier run."""

    EVENT: ClassVar[str] = "logged_out"
    user_id: int
    reason: str
    stale: bool = False
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class CallIncoming(Event):
    """An INVITE arrived; ``bridge`` when it is the platform's call to the logged-in agent."""

    EVENT: ClassVar[str] = "call_incoming"
    call_id: str
    remote: str
    bridge: bool = False
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class CallAnswered(Event):
    """A call is established (``direction`` "incoming" or "outgoing")."""

    EVENT: ClassVar[str] = "call_answered"
    call_id: str
    remote: str
    direction: str
    bridge: bool = False
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class CallEnded(Event):
    """A call ended: ``cause`` in words ("remote hangup", "local hangup", "rejected", ...),
    ``sip_code`` the status that ended it when there was one (e.g. 486, 487), ``duration``
    the seconds it was answered (0 if never)."""

    EVENT: ClassVar[str] = "call_ended"
    call_id: str
    cause: str
    sip_code: int | None = None
    duration: float = 0.0
    bridge: bool = False
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class DtmfEvent(Event):
    """One received digit, however it arrived (``via``: "info", "rfc4733" or "inband").

    ``duration_ms`` is how long the key was held (as the sender said, for INFO without
    a duration 100 ms, the Webphone's default).  Equality ignores ``at``.
    """

    EVENT: ClassVar[str] = "dtmf"
    digit: str
    duration_ms: int
    via: DtmfVia
    at: float = field(default_factory=_now, compare=False)

    def __post_init__(self) -> None:
        if self.via not in DTMF_VIAS:
            raise ValueError(f"DtmfEvent.via must be one of {DTMF_VIAS}, got {self.via!r}")


@dataclass(frozen=True)
class Hold(Event):
    """A call was put on hold, ``by`` "local" (we re-INVITEd) or "remote"."""

    EVENT: ClassVar[str] = "hold"
    call_id: str
    by: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Unhold(Event):
    """A call was taken off hold, ``by`` "local" or "remote"."""

    EVENT: ClassVar[str] = "unhold"
    call_id: str
    by: str
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Reconnecting(Event):
    """The SIP WebSocket dropped; attempt ``attempt`` in ``delay`` seconds (the binding is renewed)."""

    EVENT: ClassVar[str] = "reconnecting"
    attempt: int
    delay: float
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class Expiring(Event):
    """``expire_date`` is ``seconds_left`` seconds away: the session ends then."""

    EVENT: ClassVar[str] = "expiring"
    expire_date: datetime
    seconds_left: float
    at: float = field(default_factory=_now)


@dataclass(frozen=True)
class ErrorEvent(Event):
    """Something failed: ``where`` (a step such as "login", "bridge call"), ``message``
    (one line, no secret), ``kind`` (the exception class) and ``fatal`` (the session ends)."""

    EVENT: ClassVar[str] = "error"
    where: str
    message: str
    kind: str = "SoftphoneError"
    fatal: bool = False
    at: float = field(default_factory=_now)


#: Every event class by its pyee name.
EVENTS: dict[str, type[Event]] = {
    cls.EVENT: cls
    for cls in (StateChanged, Registered, Unregistered, LoggedIn, LoggedOut, CallIncoming, CallAnswered,
                CallEnded, DtmfEvent, Hold, Unhold, Reconnecting, Expiring, ErrorEvent)
}

__all__ = [
    "DTMF_VIAS",
    "EVENTS",
    "CallAnswered",
    "CallEnded",
    "CallIncoming",
    "DtmfEvent",
    "DtmfVia",
    "ErrorEvent",
    "Event",
    "Expiring",
    "Hold",
    "LoggedIn",
    "LoggedOut",
    "Reconnecting",
    "Registered",
    "StateChanged",
    "Unhold",
    "Unregistered",
]
