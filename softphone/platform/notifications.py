"""Receive the platform's webhooks: a loopback HTTP endpoint that collects them.

The platform POSTs ``{"type": str, "payload": {...}}`` to the URL registered
with "set notification endpoint" (user status, call, call end/CDR).  Voice API
tests and call bots need to wait for those: :class:`NotificationReceiver`
serves one path, keeps every notification in arrival order, and
:meth:`NotificationReceiver.wait_for` returns the first one matching a type
and predicate (already received or still to come), bounded by a timeout.

Payload field names are kept exactly as the platform sends them (including
the documented typos ``dispostion_code`` and ``end_time_time``); the typed
views :class:`UserStatus`, :class:`CallNotification` and :class:`CallEnd`
give them correct names.
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from softphone.errors import PlatformError, PlatformTimeoutError
from softphone.log import get_logger

log = get_logger(__name__)


class NotificationType(enum.StrEnum):
    USER_STATUS = "user_status"
    CALL = "call"
    CALL_END = "call_end"


class ReceiverState(enum.Enum):
    NEW = "new"
    LISTENING = "listening"
    CLOSED = "closed"


@dataclass(frozen=True)
class Notification:
    """One webhook as received; ``payload`` is the platform's object, untouched."""

    type: str
    payload: Mapping[str, Any]
    received_at: datetime
    sequence: int

    @property
    def kind(self) -> NotificationType | None:
        try:
            return NotificationType(self.type)
        except ValueError:
            return None

    def typed(self) -> UserStatus | CallNotification | CallEnd | None:
        """The payload as its dataclass, or None for a type the contract does not list."""
        maker = {NotificationType.USER_STATUS: UserStatus.from_payload,
                 NotificationType.CALL: CallNotification.from_payload,
                 NotificationType.CALL_END: CallEnd.from_payload}.get(self.kind)  # type: ignore[arg-type]
        return maker(self.payload) if maker else None


def _get(p: Mapping[str, Any], key: str, kind: type | None = None) -> Any:
    value = p.get(key)
    if kind is int and value is not None:
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return value


@dataclass(frozen=True)
class UserStatus:
    user_id: int | None
    campaign_id: int | None
    status_id: int | None
    status: str | None
    break_name: str | None

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> UserStatus:
        return cls(_get(p, "user_id", int), _get(p, "campaign_id", int), _get(p, "status_id", int),
                   _get(p, "status"), _get(p, "break_name"))


@dataclass(frozen=True)
class CallNotification:
    call_id: int | None
    phone_number: str | None
    dnis: str | None
    reference_id: str | None
    call_direction: str | None
    user_id: int | None
    campaign_id: int | None
    list_id: int | None
    call_type: str | None

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> CallNotification:
        return cls(_get(p, "call_id", int), _get(p, "phone_number"), _get(p, "DNIS"), _get(p, "reference_id"),
                   _get(p, "call_direction"), _get(p, "user_id", int), _get(p, "campaign_id", int),
                   _get(p, "list_id", int), _get(p, "call_type"))


@dataclass(frozen=True)
class CallEnd:
    """The call-end CDR; durations in milliseconds."""

    call_id: int | None
    phone_number: str | None
    caller_id: str | None
    reference_id: str | None
    call_direction: str | None
    disposition_code: str | None  # sent as "dispostion_code"
    sip_code: int | None
    user_id: int | None
    campaign_id: int | None
    list_id: int | None
    call_type: str | None
    recording_url: str | None
    start_date_time: str | None
    end_date_time: str | None  # sent as "end_time_time"
    durations_ms: Mapping[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, p: Mapping[str, Any]) -> CallEnd:
        durations = {k: _get(p, k, int) for k in ("ivr_time", "ring_time", "talk_time", "user_time", "hold_time",
                                                  "wrapup_time")}
        return cls(_get(p, "call_id", int), _get(p, "phone_number"), _get(p, "caller_id"), _get(p, "reference_id"),
                   _get(p, "call_direction"), p.get("dispostion_code", p.get("disposition_code")),
                   _get(p, "sip_code", int), _get(p, "user_id", int), _get(p, "campaign_id", int),
                   _get(p, "list_id", int), _get(p, "call_type"), _get(p, "recording_url"),
                   _get(p, "start_date_time"), p.get("end_time_time", p.get("end_date_time")), durations)


Predicate = Callable[[Notification], bool]


class NotificationReceiver:
    """Serves ``path`` on ``host:port`` (port 0: a free one); ``url`` is what to register."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, path: str = "/notifications", *,
                 on_notification: Callable[[Notification], Any] | None = None, max_body: int = 1024 * 1024):
        if not path.startswith("/"):
            raise PlatformError(f"path: must start with '/', got {path!r}")
        self.host, self.port, self.path = host, port, path
        self.on_notification = on_notification
        self.notifications: list[Notification] = []
        self.rejected = 0
        self.state = ReceiverState.NEW
        self._max_body = max_body
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"NotificationReceiver({self._url or self.state.value}, received={len(self.notifications)})"

    @property
    def url(self) -> str:
        if self._url is None:
            raise PlatformError("notification receiver is not listening yet (use 'async with' or start())")
        return self._url

    async def start(self) -> str:
        if self.state is not ReceiverState.NEW:
            raise PlatformError(f"notification receiver is {self.state.value}; create a new one")
        app = web.Application(client_max_size=self._max_body)
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self._url = f"http://{host}:{port}{self.path}"
        self.state = ReceiverState.LISTENING
        log.info("notification receiver listening at %s", self._url)
        return self._url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.state = ReceiverState.CLOSED

    async def __aenter__(self) -> NotificationReceiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str) \
                or not isinstance(data.get("payload", {}), dict):
            self.rejected += 1
            log.warning("notification rejected: body is not {\"type\": str, \"payload\": {...}} (%d bytes)",
                        len(raw))
            return web.json_response({"success": False, "detail": "expected {type, payload}"}, status=400)
        note = Notification(type=data["type"], payload=data.get("payload") or {},
                            received_at=datetime.now(timezone.utc), sequence=len(self.notifications))
        async with self._changed:
            self.notifications.append(note)
            self._changed.notify_all()
        log.debug("notification %d: %s", note.sequence, note.type)
        if self.on_notification is not None:
            try:
                result = self.on_notification(note)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a callback bug must not turn into a failed delivery
                log.exception("on_notification callback failed for notification %d", note.sequence)
        return web.json_response({"success": True, "detail": "received"})

    def matching(self, type: str | None = None, match: Predicate | None = None, since: int = 0) -> list[Notification]:
        """Notifications received so far (from sequence ``since``) of ``type`` passing ``match``."""
        return [n for n in self.notifications[since:]
                if (type is None or n.type == type) and (match is None or match(n))]

    async def wait_for(self, type: str | None = None, match: Predicate | None = None, *, since: int = 0,
                       timeout: float = 10.0) -> Notification:
        """The first notification from sequence ``since`` of ``type`` passing ``match``; waits up to ``timeout``."""
        async def first() -> Notification:
            async with self._changed:
                while True:
                    found = self.matching(type, match, since)
                    if found:
                        return found[0]
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(first(), timeout)
        except TimeoutError:
            what = f"type {type!r}" if type else "any type"
            raise PlatformTimeoutError(
                f"no notification of {what}{' matching the predicate' if match else ''} within {timeout:g}s "
                f"({len(self.notifications)} received)") from None
