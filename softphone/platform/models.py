"""Typed results of the OmniSense REST API.

The server answers JSON; these dataclasses give callers names and types
instead of dict lookups, and turn a missing or mistyped field into a
:class:`~softphone.errors.PlatformServerError` naming the field, at the one
place the answer is read.  Unknown extra fields are kept in ``raw``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from softphone.errors import PlatformServerError
from softphone.log import Secret


class CallState(enum.StrEnum):
    """``call_state`` values of the contract ("connected" is a synonym of answered)."""

    DIALING = "dialing"
    RINGING = "ringing"
    ANSWERED = "answered"
    CONNECTED = "connected"
    HOLD = "hold"
    ENDED = "ended"


class CampaignState(enum.IntEnum):
    """Campaign status codes of the contract."""

    NOT_RUNNING = 0
    RUNNING = 1
    PAUSED = 2


def _need(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data:
        raise PlatformServerError(f"{what}: answer has no field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int,))):
        raise PlatformServerError(f"{what}: field {key!r} is {type(value).__name__}, expected "
                                  f"{getattr(kind, '__name__', kind)}")
    return value


def parse_datetime(value: Any, key: str, what: str, *, required: bool = True) -> datetime | None:
    """An ISO-8601 datetime; naive values are taken as UTC (the platform's clock)."""
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise PlatformServerError(f"{what}: field {key!r} is not an ISO-8601 string")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise PlatformServerError(f"{what}: field {key!r} is not an ISO-8601 datetime: {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Token:
    """The user token from authorize; ``repr`` hides ``token_key``."""

    user_id: int
    user_name: str
    token_key: Secret
    expiry_date: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Token:
        what = "authorize"
        key = _need(data, "token_key", str, what)
        if not key:
            raise PlatformServerError(f"{what}: field 'token_key' is empty")
        expiry = data.get("expiry_date")
        return cls(
            user_id=int(_need(data, "user_id", (int, str), what)),
            user_name=str(data.get("user_name", "")),
            token_key=Secret(key),
            expiry_date=parse_datetime(expiry, "expiry_date", what, required=False),
        )

    def seconds_left(self, now: datetime) -> float | None:
        if self.expiry_date is None:
            return None
        return (self.expiry_date - now).total_seconds()


@dataclass(frozen=True)
class ActionResult:
    """``{"success", "detail"}``: the answer of most state-changing calls."""

    success: bool
    detail: str
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "answer") -> ActionResult:
        success = data.get("success", True)
        if not isinstance(success, bool):
            raise PlatformServerError(f"{what}: field 'success' is not a boolean")
        return cls(success=success, detail=str(data.get("detail", "")), raw=dict(data))


class LoginResult(ActionResult):
    """Answer of the User Login API."""


@dataclass(frozen=True)
class RecordingResult(ActionResult):
    """Answer of recording start/stop; ``recording_url`` when the server gives one."""

    recording_url: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "recording") -> RecordingResult:
        base = ActionResult.from_json(data, what)
        url = data.get("recording_url")
        return cls(success=base.success, detail=base.detail, raw=base.raw,
                   recording_url=str(url) if url else None)


@dataclass(frozen=True)
class Extension:
    """A provisioned WebRTC extension (the SIP user to register)."""

    extension: str
    expire_date: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Extension:
        what = "provision_extension"
        ext = _need(data, "extension", (str, int), what)
        return cls(extension=str(ext),
                   expire_date=parse_datetime(data.get("expire_date"), "expire_date", what, required=False))


@dataclass(frozen=True)
class Call:
    """One call as the voice API describes it."""

    call_id: int
    phone_number: str
    call_state: str
    call_start_time: datetime | None
    direction: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def state(self) -> CallState | None:
        """``call_state`` as a :class:`CallState`, or None for a value the contract does not list."""
        try:
            return CallState(self.call_state)
        except ValueError:
            return None

    @property
    def is_answered(self) -> bool:
        return self.state in (CallState.ANSWERED, CallState.CONNECTED)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "call") -> Call:
        call_id = _need(data, "call_id", (int, str), what)
        try:
            call_id = int(call_id)
        except ValueError:
            raise PlatformServerError(f"{what}: field 'call_id' is not an integer: {call_id!r}") from None
        return cls(
            call_id=call_id,
            phone_number=str(_need(data, "phone_number", (str, int), what)),
            call_state=str(_need(data, "call_state", str, what)),
            call_start_time=parse_datetime(data.get("call_start_time"), "call_start_time", what,
                                           required=False),
            direction=data.get("direction"),
            raw=dict(data),
        )


@dataclass(frozen=True)
class CampaignStatus:
    """A campaign's status; ``state`` is None for a code the contract does not list."""

    campaign_id: int
    status: int
    status_name: str

    @property
    def state(self) -> CampaignState | None:
        try:
            return CampaignState(self.status)
        except ValueError:
            return None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CampaignStatus:
        what = "campaign_status"
        return cls(campaign_id=int(_need(data, "campaign_id", (int, str), what)),
                   status=_need(data, "status", int, what),
                   status_name=str(data.get("status_name", "")))


@dataclass(frozen=True)
class ArchiveResult:
    """Counts of one lead archive/dearchive batch.

    ``attempts`` > 1 means the request was sent again after a transport
    failure; the operation is idempotent, but then the counts describe the
    last attempt only (rows handled by a lost first attempt count as skipped).
    """

    select_count: int
    insert_count: int
    update_count: int
    delete_count: int
    message: str
    attempts: int = 1

    @classmethod
    def from_json(cls, data: Mapping[str, Any], what: str = "lead_archive", attempts: int = 1) -> ArchiveResult:
        counts = {}
        for key in ("select_count", "insert_count", "update_count", "delete_count"):
            # dearchive has no update step; a server may leave the count out
            if key == "update_count" and key not in data:
                counts[key] = 0
                continue
            counts[key] = _need(data, key, int, what)
        return cls(message=str(data.get("message", "")), attempts=attempts, **counts)

    def as_dict(self) -> dict[str, Any]:
        return {"select_count": self.select_count, "insert_count": self.insert_count,
                "update_count": self.update_count, "delete_count": self.delete_count,
                "message": self.message, "attempts": self.attempts}
