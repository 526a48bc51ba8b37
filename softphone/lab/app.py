"""The lab's REST API: every OmniSense endpoint of :mod:`softphone.platform.paths` plus the lead archive.

Answers follow the platform contract exactly where it speaks, and the
project's defaults where it does not (see ``openapi.yaml``, served at
``/openapi.yaml`` and ``/openapi.json``):

* every call needs ``Authorization: Key=<system key>``: 401
  ``{"success": false, "detail": "invalid system key"}`` on ``/omni``,
  ``{"message": "unable to validate api user"}`` on ``/vicidial``;
* every ``/omni`` call but authorize needs ``tokenKey``: 401
  ``{"success": false, "detail": "invalid or expired token"}``; a token
  used on another user's path: 403;
* what a token may do (the lab's rules, as the platform scopes users): an
  agent's token acts on its own user's paths and reads campaign statuses;
  changing a campaign's status or the notification endpoint (settings of the
  whole platform) needs a supervisor's token (``"role": "supervisor"`` in the
  seed): 403 otherwise;
* ``/omni`` errors: status + ``{"success": false, "detail": str}``: 400 (the
  detail names the field), 404 unknown user/call/campaign/lead, 409 wrong
  state, 500 (no traceback ever leaves the server);
* state changes of one agent are serialized by a per-user lock, and the
  telephony hook (:mod:`softphone.lab.telephony`) is asked before the
  database records a change, so a refusal (409) leaves the agent as it was
  (a refused dial is kept as an ended call with SIP code 480).

Webhooks (:mod:`softphone.lab.webhooks`) go out in the background:
``user_status`` on login/logout, ``call`` when a call is placed,
``call_end`` (CDR, durations in ms) when it ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hmac
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from aiohttp import web

from softphone.errors import LabApiError, LeadRequestError, TelephonyError
from softphone.lab.archive import LeadArchive
from softphone.lab.db import Database
from softphone.lab.office_hours import OfficeHours
from softphone.lab.store import (
    CAMPAIGN_MOVES,
    AgentStatus,
    CallRecord,
    CampaignStatus,
    LabStore,
    User,
)
from softphone.lab.telephony import CallInfo, CallState, InMemoryTelephony, Telephony
from softphone.lab.webhooks import CALL, CALL_END, USER_STATUS, Notifier, url_for_log
from softphone.log import Secret, get_logger
from softphone.platform.paths import DEFAULT_PATHS, PlatformPaths

log = get_logger(__name__)

DEFAULT_TOKEN_TTL = 3600.0
MAX_SHOTGUN = 5
NOTIFICATION_SETTING = "notification_url"
_PHONE_RE = re.compile(r"^\+?[0-9]{3,18}$")
_CLI_RE = re.compile(r"^\+?[0-9]{1,20}$")
_EXTENSION_RE = re.compile(r"^[0-9A-Za-z_.-]{1,20}$")
_MAX_TEXT = 64
#: ids are INT UNSIGNED columns
MAX_ID = 2**32 - 1

LAB_KEY: web.AppKey[Lab] = web.AppKey("lab")
TOKEN_USER: web.RequestKey[int] = web.RequestKey("token_user_id", int)


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 with offset (UTC), second precision."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _bad(detail: str) -> LabApiError:
    return LabApiError(400, detail)


def _int_field(body: dict[str, Any], name: str, *, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise _bad(f"{name} is required")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_ID:
        raise _bad(f"{name} must be an integer from 0 to {MAX_ID}")
    return value


def _str_field(body: dict[str, Any], name: str, pattern: re.Pattern[str] | None = None,
               what: str = "a non-empty string", max_len: int = _MAX_TEXT) -> str:
    value = body.get(name)
    if value is None:
        raise _bad(f"{name} is required")
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _bad(f"{name} must be {what} (at most {max_len} characters)")
    if pattern is not None and not pattern.match(value):
        raise _bad(f"{name} must be {what}")
    return value


@dataclass
class Lab:
    """Everything a request handler needs; one per running lab."""

    db: Database
    api_key: Secret
    telephony: Telephony = field(default_factory=InMemoryTelephony)
    office_hours: OfficeHours = field(default_factory=OfficeHours)
    token_ttl: float = DEFAULT_TOKEN_TTL
    clock: Callable[[], float] = time.time
    paths: PlatformPaths = field(default_factory=lambda: DEFAULT_PATHS)
    notifier: Notifier = field(default_factory=Notifier)
    archive_fault_hook: Callable[[str], Any] | None = None
    #: users whose token may change campaign statuses and the notification endpoint
    supervisor_ids: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        self.store = LabStore(self.db)
        self.archive = LeadArchive(self.db, fault_hook=self._fault)
        self._user_locks: dict[int, asyncio.Lock] = {}
        attach = getattr(self.telephony, "attach", None)
        if attach is not None:
            attach(self)  # the telephony reports far-end hang-ups and late answers (TelephonyEvents)

    # --- TelephonyEvents: what the phone system reports on its own ------------------------

    async def call_state_changed(self, call_id: int, state: CallState, sip_code: int | None = None,
                                 phone_number: str | None = None) -> None:
        """A call answered later (ring time ends now) or ended by the far end (CDR with ``sip_code``)."""
        found = await self.store.call(call_id)
        if found is None:
            return
        async with self.user_lock(found.user_id):
            current = await self.store.call(call_id)
            user = await self.store.user(found.user_id)
            if current is None or user is None:
                return
            if state is current.call_state and state.live and phone_number:
                # answered while the dial request waited: only the shotgun winner is news
                await self.store.update_call(call_id, phone_number=phone_number)
                return
            if not current.call_state.can_move_to(state):
                return  # already ended (hung up through the API) or a move the table does not allow
            if state is CallState.ENDED:
                await _end_call(self, current, user, sip_code=sip_code or 200)
                log.info("call %d ended by the phone system (SIP %s)", call_id, sip_code)
                return
            values: dict[str, Any] = {"call_state": state}
            if state is CallState.ANSWERED and current.answer_time is None:
                values["answer_time"] = self.clock()
            if phone_number:
                values["phone_number"] = phone_number
            await self.store.update_call(call_id, **values)
        log.info("call %d %s%s", call_id, state.value, f" by {phone_number}" if phone_number else "")

    async def bridge_ended(self, user_id: int, reason: str) -> None:
        """The agent's phone left the bridge call: its calls end and the agent is logged out."""
        async with self.user_lock(user_id):
            user = await self.store.user(user_id)
            if user is None or user.status is not AgentStatus.LOGGED_IN:
                return
            for live in await self.store.live_calls(user_id):
                await _end_call(self, live, user)
            campaign_id = user.campaign_id
            await self.store.set_agent_state(user_id, AgentStatus.LOGGED_OUT, None, None)
        log.info("user_id %d logged out: bridge call ended (%s)", user_id, reason)
        self.notifier.notify(USER_STATUS, {"user_id": user_id, "campaign_id": campaign_id, "status_id": 0,
                                           "status": "Logged Out", "break_name": None})

    async def _fault(self, step: str) -> Any:
        # read at call time, so tests can set the hook on a running lab
        if self.archive_fault_hook is not None:
            result = self.archive_fault_hook(step)
            if asyncio.iscoroutine(result):
                await result

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC)

    def user_lock(self, user_id: int) -> asyncio.Lock:
        return self._user_locks.setdefault(user_id, asyncio.Lock())

    def key_ok(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        expected = "Key=" + self.api_key.reveal()
        return hmac.compare_digest(header.encode(), expected.encode())


# --- middlewares ---------------------------------------------------------------------


def strict_json(value: Any) -> Any:
    """``value`` with non-finite floats (``1e400``, ``NaN`` sent by a client) as strings.

    Echoing them back as numbers would produce ``Infinity``/``NaN``, which is not JSON.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [strict_json(v) for v in value]
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    return value


def _omni_error(status: int, detail: str) -> web.Response:
    return web.json_response({"success": False, "detail": detail}, status=status)


LEAD_ROUTES = ("lead_archive", "lead_dearchive")


def api_family(request: web.Request) -> str | None:
    """``"vicidial"``, ``"omni"`` or None: which error shapes and credentials apply.

    Decided by the matched route (paths are configurable), else by the path prefix.
    """
    name = request.match_info.route.name or ""
    if name in LEAD_ROUTES:
        return "vicidial"
    if name in HANDLERS:
        return "omni"
    if request.path.startswith("/vicidial/"):
        return "vicidial"
    if request.path.startswith("/omni/"):
        return "omni"
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Known errors to the contract's shapes; anything else to a 500 without a traceback."""
    family = api_family(request)
    vicidial = family == "vicidial"
    try:
        return await handler(request)
    except LabApiError as exc:
        if vicidial:
            return web.json_response({"message": exc.detail}, status=exc.status)
        return _omni_error(exc.status, exc.detail)
    except LeadRequestError as exc:
        return web.json_response(strict_json(exc.as_json()), status=400)
    except web.HTTPException as exc:
        # unknown paths and methods under the API answer JSON like every other error
        if exc.status >= 400 and family is not None:
            if vicidial:
                return web.json_response({"message": exc.reason.lower()}, status=exc.status)
            return _omni_error(exc.status, exc.reason.lower())
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        if vicidial:
            return web.json_response({"message": "internal server error"}, status=500)
        return _omni_error(500, "internal server error")


@web.middleware
async def auth_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """System key on /omni and /vicidial; user token on /omni except authorize."""
    lab: Lab = request.app[LAB_KEY]
    route_name = request.match_info.route.name or ""
    family = api_family(request)
    if family == "vicidial":
        if not lab.key_ok(request):
            return web.json_response({"message": "unable to validate api user"}, status=401)
    elif family == "omni":
        if not lab.key_ok(request):
            return _omni_error(401, "invalid system key")
        if route_name != "authorize":
            token = request.headers.get("tokenKey", "")
            user_id = await lab.store.token_user(token, lab.clock()) if token else None
            if user_id is None:
                return _omni_error(401, "invalid or expired token")
            request[TOKEN_USER] = user_id
    return await handler(request)


class RedactedAccessLogger(web.AbstractAccessLogger):
    """Access log without query strings (a ``?auth-key=`` must never reach a log)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.1fms", request.method, request.path, response.status, time * 1000)


# --- helpers -----------------------------------------------------------------------


#: deepest nesting a request body may have; the API's bodies need 2 levels
MAX_BODY_DEPTH = 32
_TOO_DEEP = f"request body nests deeper than {MAX_BODY_DEPTH} levels"


class BodyTooDeep(ValueError):
    """A request body nested deeper than :data:`MAX_BODY_DEPTH` (a 400, never a RecursionError)."""


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests deeper than ``limit`` lists/objects; iterative, so any depth is safe."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_body(raw: bytes) -> Any:
    """``raw`` parsed as JSON; :class:`BodyTooDeep` past :data:`MAX_BODY_DEPTH`, ValueError if not JSON.

    The C decoder recurses per level: a few thousand brackets would raise RecursionError (a
    500 with a traceback per request), and a few hundred would later break anything that
    walks the value recursively (the error handler's :func:`strict_json`).
    """
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BodyTooDeep(_TOO_DEEP) from None
    if _depth_exceeds(data, MAX_BODY_DEPTH):
        raise BodyTooDeep(_TOO_DEEP)
    return data


async def json_body(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The JSON object of the request (an empty body is ``{}`` when not required)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise _bad("request body must be a JSON object")
        return {}
    try:
        data = parse_body(raw)
    except BodyTooDeep as exc:
        raise _bad(str(exc)) from None
    except (ValueError, UnicodeDecodeError):
        raise _bad("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _bad("request body must be a JSON object")
    return data


def _path_int(request: web.Request, name: str) -> int:
    raw = request.match_info.get(name, "")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 10 or int(raw) > MAX_ID:
        raise _bad(f"{name} must be an integer from 0 to {MAX_ID}")
    return int(raw)


async def path_user(request: web.Request) -> User:
    """The user of the path, known, and the owner of the request's token."""
    lab: Lab = request.app[LAB_KEY]
    user_id = _path_int(request, "user_id")
    user = await lab.store.user(user_id)
    if user is None:
        raise LabApiError(404, f"unknown user_id {user_id}")
    if request.get(TOKEN_USER) != user_id:
        raise LabApiError(403, f"token does not belong to user_id {user_id}")
    return user


async def path_call(request: web.Request, user: User) -> CallRecord:
    lab: Lab = request.app[LAB_KEY]
    call_id = _path_int(request, "call_id")
    call = await lab.store.call(call_id)
    if call is None or call.user_id != user.user_id:
        raise LabApiError(404, f"unknown call_id {call_id} for user_id {user.user_id}")
    return call


def call_info(call: CallRecord, user: User) -> CallInfo:
    return CallInfo(call_id=call.call_id, user_id=call.user_id, phone_number=call.phone_number,
                    outbound_cli=call.caller_id, extension=user.extension, campaign_id=call.campaign_id)


def call_json(call: CallRecord) -> dict[str, Any]:
    return {"call_id": call.call_id, "phone_number": call.phone_number, "call_state": call.call_state.value,
            "call_start_time": iso(call.start_time)}


def ok(detail: str, **extra: Any) -> web.Response:
    return web.json_response({"success": True, "detail": detail, **extra})


def _require_logged_in(user: User) -> None:
    if user.status is not AgentStatus.LOGGED_IN:
        raise LabApiError(409, f"user_id {user.user_id} is not logged in")


def _require_live(call: CallRecord) -> None:
    if not call.call_state.live:
        raise LabApiError(409, f"call_id {call.call_id} has already ended")


def _require_move(call: CallRecord, new: CallState, needed: str) -> None:
    """409 unless the call may move to ``new`` (telephony.CALL_MOVES); ``needed`` says from where."""
    if not call.call_state.can_move_to(new):
        raise LabApiError(409, f"call_id {call.call_id} is {call.call_state.value}, not {needed}")


def _telephony_refused(exc: TelephonyError) -> LabApiError:
    return LabApiError(409, str(exc))


# --- /omni: users --------------------------------------------------------------------


async def authorize(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    body = await json_body(request)
    user_name = _str_field(body, "user_name", max_len=50)
    encoded = body.get("password")
    if encoded is None:
        raise _bad("password is required")
    if not isinstance(encoded, str):
        raise _bad("password must be a base64 string")
    try:
        password = base64.b64decode(encoded.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        raise _bad("password must be a base64 string") from None
    user = await lab.store.user_by_name(user_name)
    if user is None or not hmac.compare_digest(password.encode(), user.password.encode()):
        log.info("authorize refused for user_name %r", user_name)
        raise LabApiError(401, "invalid user_name or password")
    now = lab.clock()
    expires = now + lab.token_ttl
    token = await lab.store.issue_token(user.user_id, expires, now)
    log.info("authorized user_id %d until %s", user.user_id, iso(expires))
    return web.json_response({"user_id": user.user_id, "user_name": user.user_name, "token_key": token,
                              "expiry_date": iso(expires)})


def _parse_expire_date(value: Any, now: datetime) -> datetime:
    if not isinstance(value, str):
        raise _bad("expire_date must be an ISO-8601 date-time string")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise _bad("expire_date must be an ISO-8601 date-time string") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise _bad("expire_date must be in the future")
    return when


async def provision_extension(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    customer_id = _int_field(body, "customer_id")
    if "expire_date" not in body:
        raise _bad("expire_date is required")
    expire = _parse_expire_date(body.get("expire_date"), lab.now())
    if customer_id != user.customer_id:
        raise _bad(f"customer_id {customer_id} is not the customer of user_id {user.user_id}")
    expire_iso = expire.isoformat(timespec="seconds")
    extension = await lab.store.provision_extension(user, expire_iso)
    log.info("extension %s provisioned for user_id %d until %s", extension, user.user_id, expire_iso)
    return web.json_response({"extension": extension, "expire_date": expire_iso})


async def login(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    campaign_id = _int_field(body, "campaign_id")
    extension = _str_field(body, "extension", _EXTENSION_RE, "an extension of letters, digits, _ . -",
                           max_len=20)
    assert campaign_id is not None
    campaign = await lab.store.campaign(campaign_id)
    if campaign is None:
        raise LabApiError(404, f"unknown campaign_id {campaign_id}")
    async with lab.user_lock(user.user_id):
        user = await lab.store.user(user.user_id) or user
        if user.status is AgentStatus.LOGGED_IN:
            raise LabApiError(409, f"user_id {user.user_id} is already logged in")
        if campaign.status is CampaignStatus.NOT_RUNNING:
            raise LabApiError(409, f"campaign_id {campaign_id} is not running")
        owner = await lab.store.extension_owner(extension)
        if owner is not None:
            if owner[0] != user.user_id:
                raise LabApiError(409, f"extension {extension} belongs to another user")
            if datetime.fromisoformat(owner[1]) <= lab.now():
                raise LabApiError(409, f"extension {extension} expired at {owner[1]}")
        try:
            await lab.telephony.on_login(user.user_id, extension, campaign_id)
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        await lab.store.set_agent_state(user.user_id, AgentStatus.LOGGED_IN, campaign_id, extension)
    log.info("user_id %d logged in to campaign %d on extension %s", user.user_id, campaign_id, extension)
    lab.notifier.notify(USER_STATUS, {"user_id": user.user_id, "campaign_id": campaign_id, "status_id": 1,
                                      "status": "Available", "break_name": None})
    return ok(f"user_id {user.user_id} logged in to campaign_id {campaign_id}")


async def _end_call(lab: Lab, call: CallRecord, user: User, *, call_type: str | None = None,
                    sip_code: int | None = None) -> CallRecord:
    """Hang the call up in the telephony, record the end and send the CDR.

    ``sip_code`` given: the phone system ended it already (far-end hang-up, busy...).
    """
    if sip_code is None and call.call_state.live:
        sip_code = 200
        try:
            sip_code = await lab.telephony.hangup(call_info(call, user))
        except TelephonyError as exc:
            log.info("telephony hangup of call %d: %s", call.call_id, exc)
    sip_code = 200 if sip_code is None else sip_code
    now = lab.clock()
    hold_ms = call.hold_ms + (int((now - call.hold_since) * 1000) if call.hold_since else 0)
    values: dict[str, Any] = {"call_state": CallState.ENDED, "end_time": now, "hold_ms": hold_ms,
                              "hold_since": None, "recording": False, "sip_code": sip_code}
    if call_type:
        values["call_type"] = call_type
    await lab.store.update_call(call.call_id, **values)
    ended = await lab.store.call(call.call_id)
    assert ended is not None
    lab.notifier.notify(CALL_END, cdr(ended))
    return ended


def cdr(call: CallRecord) -> dict[str, Any]:
    """The contract's call-end payload (field names as documented, typos included)."""
    end = call.end_time or call.start_time
    answer = call.answer_time
    ring_ms = int(((answer or end) - call.start_time) * 1000)
    talk_ms = int((end - answer) * 1000) - call.hold_ms if answer else 0
    return {
        "call_id": call.call_id, "phone_number": call.phone_number, "caller_id": call.caller_id,
        "reference_id": call.reference_id, "call_direction": call.direction,
        "dispostion_code": call.disposition_code, "sip_code": call.sip_code, "user_id": call.user_id,
        "campaign_id": call.campaign_id, "list_id": call.list_id, "call_type": call.call_type,
        "recording_url": call.recording_url, "start_date_time": iso(call.start_time),
        "end_time_time": iso(call.end_time), "ivr_time": 0, "ring_time": max(ring_ms, 0),
        "talk_time": max(talk_ms, 0), "user_time": int((end - call.start_time) * 1000),
        "hold_time": call.hold_ms, "wrapup_time": 0,
    }


async def logout(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    await json_body(request, required=False)
    async with lab.user_lock(user.user_id):
        user = await lab.store.user(user.user_id) or user
        if user.status is not AgentStatus.LOGGED_IN:
            raise LabApiError(409, f"user_id {user.user_id} is not logged in")
        for call in await lab.store.live_calls(user.user_id):
            await _end_call(lab, call, user)
        try:
            await lab.telephony.on_logout(user.user_id)
        except TelephonyError as exc:
            log.info("telephony logout of user %d: %s", user.user_id, exc)
        campaign_id = user.campaign_id
        await lab.store.set_agent_state(user.user_id, AgentStatus.LOGGED_OUT, None, None)
    log.info("user_id %d logged out", user.user_id)
    lab.notifier.notify(USER_STATUS, {"user_id": user.user_id, "campaign_id": campaign_id, "status_id": 0,
                                      "status": "Logged Out", "break_name": None})
    return ok(f"user_id {user.user_id} logged out")


# --- /omni: voice --------------------------------------------------------------------


async def _place(lab: Lab, user: User, phone_number: str, outbound_cli: str, unique_id: str,
                 lead_id: int | None, call_type: str, alternatives: tuple[str, ...] = (),
                 direction: str = "outbound") -> CallRecord:
    list_id: int | None = None
    if lead_id is not None:
        list_id = await lab.store.lead_list_id(lead_id)
        if list_id is None:
            raise LabApiError(404, f"unknown lead_id {lead_id}")
    async with lab.user_lock(user.user_id):
        user = await lab.store.user(user.user_id) or user
        _require_logged_in(user)
        if list_id is None and user.campaign_id is not None:
            campaign = await lab.store.campaign(user.campaign_id)
            list_id = campaign.list_id if campaign else None
        call = await lab.store.create_call(
            user_id=user.user_id, campaign_id=user.campaign_id, phone_number=phone_number,
            caller_id=outbound_cli, reference_id=unique_id, lead_id=lead_id, list_id=list_id,
            direction=direction, call_type=call_type, call_state=CallState.DIALING, start_time=lab.clock())
        info = dataclasses.replace(call_info(call, user), alternatives=alternatives, direction=direction)
        try:
            if direction == "inbound":
                state = await lab.telephony.place_inbound(info)
            else:
                state = await lab.telephony.place_call(info)
        except TelephonyError as exc:
            await lab.store.update_call(call.call_id, call_state=CallState.ENDED, end_time=lab.clock(),
                                        sip_code=480)
            raise _telephony_refused(exc) from None
        values: dict[str, Any] = {"call_state": state}
        if state in (CallState.ANSWERED, CallState.CONNECTED):
            values["answer_time"] = lab.clock()
        await lab.store.update_call(call.call_id, **values)
        placed = await lab.store.call(call.call_id)
        assert placed is not None
    dnis = {"DNIS": placed.caller_id} if placed.direction == "inbound" else {}
    lab.notifier.notify(CALL, {"call_id": placed.call_id, "phone_number": placed.phone_number, **dnis,
                               "reference_id": placed.reference_id, "call_direction": placed.direction,
                               "user_id": placed.user_id, "campaign_id": placed.campaign_id,
                               "list_id": placed.list_id, "call_type": placed.call_type})
    log.info("user_id %d call %d to %s: %s", user.user_id, placed.call_id, placed.phone_number,
             placed.call_state.value)
    return placed


async def call(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    phone = _str_field(body, "phone_number", _PHONE_RE, "a phone number of 3 to 18 digits (optional +)")
    cli = _str_field(body, "outbound_cli", _CLI_RE, "a caller id of 1 to 20 digits (optional +)")
    unique_id = _str_field(body, "unique_id")
    lead_id = _int_field(body, "lead_id", required=False)
    placed = await _place(lab, user, phone, cli, unique_id, lead_id, "manual")
    return web.json_response(call_json(placed))


async def shotgun(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    numbers = body.get("phone_numbers")
    if numbers is None:
        raise _bad("phone_numbers is required")
    if not isinstance(numbers, list) or not 1 <= len(numbers) <= MAX_SHOTGUN:
        raise _bad(f"phone_numbers must be a list of 1 to {MAX_SHOTGUN} phone numbers")
    for n in numbers:
        if not isinstance(n, str) or not _PHONE_RE.match(n):
            raise _bad("phone_numbers must only contain phone numbers of 3 to 18 digits (optional +)")
    if len(set(numbers)) != len(numbers):
        raise _bad("phone_numbers cannot contain duplicate values")
    cli = _str_field(body, "outbound_cli", _CLI_RE, "a caller id of 1 to 20 digits (optional +)")
    unique_id = _str_field(body, "unique_id")
    lead_id = _int_field(body, "lead_id", required=False)
    # every number is dialled; the first to answer wins (the record then names it), the others are cancelled
    placed = await _place(lab, user, numbers[0], cli, unique_id, lead_id, "shotgun", tuple(numbers[1:]))
    return web.json_response(call_json(placed))


async def hangup(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        _require_live(c)
        await _end_call(lab, c, user)
    return ok(f"call_id {c.call_id} hung up")


async def hold(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        _require_move(c, CallState.HOLD, "answered")
        try:
            await lab.telephony.hold(call_info(c, user))
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        await lab.store.update_call(c.call_id, call_state=CallState.HOLD, hold_since=lab.clock())
    return ok(f"call_id {c.call_id} on hold")


async def retrieve(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        _require_move(c, CallState.ANSWERED, "on hold")
        try:
            await lab.telephony.retrieve(call_info(c, user))
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        held = int((lab.clock() - (c.hold_since or lab.clock())) * 1000)
        await lab.store.update_call(c.call_id, call_state=CallState.ANSWERED, hold_since=None,
                                    hold_ms=c.hold_ms + held)
    return ok(f"call_id {c.call_id} retrieved")


async def recording_start(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        _require_live(c)
        if c.recording:
            raise LabApiError(409, f"call_id {c.call_id} is already being recorded")
        try:
            url = await lab.telephony.start_recording(call_info(c, user))
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        await lab.store.update_call(c.call_id, recording=True, recording_url=url or c.recording_url)
    extra = {"recording_url": url} if url else {}
    return ok(f"call_id {c.call_id} recording started", **extra)


async def recording_stop(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        if not c.recording:
            raise LabApiError(409, f"call_id {c.call_id} is not being recorded")
        try:
            await lab.telephony.stop_recording(call_info(c, user))
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        await lab.store.update_call(c.call_id, recording=False)
    extra = {"recording_url": c.recording_url} if c.recording_url else {}
    return ok(f"call_id {c.call_id} recording stopped", **extra)


async def dispose(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    code = _str_field(body, "disposition_code", re.compile(r"^[A-Za-z0-9_]{1,20}$"),
                      "a code of 1 to 20 letters, digits or _", max_len=20)
    async with lab.user_lock(user.user_id):
        c = await path_call(request, user)
        await lab.store.update_call(c.call_id, disposition_code=code)
    return ok(f"call_id {c.call_id} disposed as {code}")


async def connect_calls(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    body = await json_body(request)
    ids = body.get("call_ids")
    if ids is None:
        raise _bad("call_ids is required")
    if (not isinstance(ids, list) or len(ids) != 2
            or any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i <= MAX_ID for i in ids)):
        raise _bad("call_ids must be a list of exactly 2 call ids (integers)")
    if ids[0] == ids[1]:
        raise _bad("call_ids must name two different calls")
    async with lab.user_lock(user.user_id):
        calls = []
        for call_id in ids:
            c = await lab.store.call(call_id)
            if c is None or c.user_id != user.user_id:
                raise LabApiError(404, f"unknown call_id {call_id} for user_id {user.user_id}")
            _require_move(c, CallState.CONNECTED, "answered or on hold")
            calls.append(c)
        try:
            await lab.telephony.connect(call_info(calls[0], user), call_info(calls[1], user))
        except TelephonyError as exc:
            raise _telephony_refused(exc) from None
        # the agent leaves both calls: from the agent's side they have ended
        for c in calls:
            await _end_call(lab, c, user, call_type="connected")
    return ok(f"call_ids {ids[0]} and {ids[1]} connected; user_id {user.user_id} dropped")


async def active_calls(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    user = await path_user(request)
    calls = await lab.store.live_calls(user.user_id)
    return web.json_response({"calls": [{**call_json(c), "direction": c.direction} for c in calls]})


# --- /omni: platform -------------------------------------------------------------------


async def set_notification_endpoint(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    require_supervisor(request, "set the notification endpoint")
    body = await json_body(request)
    url = _str_field(body, "url", re.compile(r"^https?://[^\s/?#]+[^\s]*$"), "an http or https URL",
                     max_len=1000)
    await lab.store.set_setting(NOTIFICATION_SETTING, url)
    lab.notifier.url = url
    log.info("notification endpoint set to %s", url_for_log(url))
    return ok("notification endpoint set")


def require_supervisor(request: web.Request, action: str) -> None:
    """403 unless the request's token is a supervisor's (platform-wide settings are not an agent's)."""
    lab: Lab = request.app[LAB_KEY]
    user_id = request.get(TOKEN_USER)
    if user_id not in lab.supervisor_ids:
        log.info("user_id %s refused: %s needs a supervisor", user_id, action)
        raise LabApiError(403, f"user_id {user_id} is not a supervisor: cannot {action}")


async def _campaign_from_path(request: web.Request) -> Any:
    lab: Lab = request.app[LAB_KEY]
    campaign_id = _path_int(request, "campaign_id")
    campaign = await lab.store.campaign(campaign_id)
    if campaign is None:
        raise LabApiError(404, f"unknown campaign_id {campaign_id}")
    return campaign


def _campaign_json(campaign_id: int, status: CampaignStatus) -> dict[str, Any]:
    return {"campaign_id": campaign_id, "status": int(status), "status_name": status.label}


async def campaign_status(request: web.Request) -> web.Response:
    campaign = await _campaign_from_path(request)
    return web.json_response(_campaign_json(campaign.campaign_id, campaign.status))


async def set_campaign_status(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    require_supervisor(request, "change campaign status")
    campaign = await _campaign_from_path(request)
    body = await json_body(request)
    value = body.get("status")
    if value is None:
        raise _bad("status is required")
    if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1, 2):
        raise _bad("status must be 0 (NotRunning), 1 (Running) or 2 (Paused)")
    new = CampaignStatus(value)
    if (campaign.status, new) not in CAMPAIGN_MOVES:
        raise LabApiError(409, f"campaign_id {campaign.campaign_id} cannot move from {campaign.status.label} "
                               f"to {new.label}")
    await lab.store.set_campaign_status(campaign.campaign_id, new)
    log.info("campaign %d: %s -> %s", campaign.campaign_id, campaign.status.label, new.label)
    return web.json_response(_campaign_json(campaign.campaign_id, new))


# --- /vicidial ---------------------------------------------------------------------------


async def _lead_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return parse_body(raw) if raw.strip() else {}
    except BodyTooDeep as exc:
        raise LeadRequestError(str(exc)) from None
    except (ValueError, UnicodeDecodeError):
        return {}  # validated as "no fields": insert_leads must be a boolean value


async def lead_archive(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    if lab.office_hours.is_open(lab.now()):
        return web.json_response({"message": "api cannot be executed during office hours time condition"},
                                 status=403)
    result = await lab.archive.archive(await _lead_body(request))
    return web.json_response(result.as_json())


async def lead_dearchive(request: web.Request) -> web.Response:
    lab: Lab = request.app[LAB_KEY]
    result = await lab.archive.dearchive(await _lead_body(request))
    return web.json_response(result.as_json())


# --- documents -----------------------------------------------------------------------------


def openapi_text() -> str:
    return resources.files("softphone.lab").joinpath("openapi.yaml").read_text("utf-8")


async def openapi_yaml(request: web.Request) -> web.Response:
    return web.Response(text=openapi_text(), content_type="application/yaml")


async def openapi_json(request: web.Request) -> web.Response:
    import yaml

    return web.json_response(yaml.safe_load(openapi_text()))


HANDLERS: dict[str, Callable] = {
    "authorize": authorize, "provision_extension": provision_extension, "login": login, "logout": logout,
    "call": call, "hangup": hangup, "hold": hold, "retrieve": retrieve,
    "recording_start": recording_start, "recording_stop": recording_stop, "dispose": dispose,
    "connect_calls": connect_calls, "shotgun": shotgun, "active_calls": active_calls,
    "set_notification_endpoint": set_notification_endpoint, "campaign_status": campaign_status,
    "set_campaign_status": set_campaign_status, "lead_archive": lead_archive, "lead_dearchive": lead_dearchive,
}


def build_app(lab: Lab) -> web.Application:
    """The aiohttp application of ``lab``; routes from ``lab.paths``."""
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=4 * 1024 * 1024)
    app[LAB_KEY] = lab
    # fixed paths (connect, shotgun) first, so {call_id} does not swallow "connect"
    order = sorted(HANDLERS, key=lambda n: ("{call_id}" in lab.paths[n].template, n))
    for name in order:
        endpoint = lab.paths[name]
        app.router.add_route(endpoint.method, endpoint.template, HANDLERS[name], name=name)
    app.router.add_get("/openapi.yaml", openapi_yaml, name="openapi_yaml")
    app.router.add_get("/openapi.json", openapi_json, name="openapi_json")
    app.router.add_post("/lab/inbound", lab_inbound, name="lab_inbound")
    app.router.add_get("/recordings/{name}", recording_file, name="recording_file")
    return app


# --- lab-only ---------------------------------------------------------------------------------


async def lab_inbound(request: web.Request) -> web.Response:
    """``POST /lab/inbound {"user_id", "phone_number", "dnis"?, "unique_id"?}`` (system key):
    a customer calls in and is bridged to the logged-in agent (call_direction "inbound")."""
    lab: Lab = request.app[LAB_KEY]
    if not lab.key_ok(request):
        return _omni_error(401, "invalid system key")
    body = await json_body(request)
    user_id = _int_field(body, "user_id")
    phone = _str_field(body, "phone_number", _PHONE_RE, "a phone number of 3 to 18 digits (optional +)")
    dnis = _str_field(body, "dnis", _CLI_RE, "a number of 1 to 20 digits (optional +)") \
        if body.get("dnis") is not None else "0800000000"
    unique_id = _str_field(body, "unique_id") if body.get("unique_id") is not None else f"inbound-{phone}"
    user = await lab.store.user(user_id or 0)
    if user is None:
        raise LabApiError(404, f"unknown user_id {user_id}")
    placed = await _place(lab, user, phone, dnis, unique_id, None, "inbound", direction="inbound")
    return web.json_response({**call_json(placed), "call_direction": "inbound", "DNIS": placed.caller_id})


async def recording_file(request: web.Request) -> web.StreamResponse:
    """A recording the telephony wrote (``recording_url`` of the CDR)."""
    lab: Lab = request.app[LAB_KEY]
    folder = getattr(lab.telephony, "recordings_dir", None)
    name = request.match_info["name"]
    if folder is None or not re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", name) or name.startswith("."):
        raise web.HTTPNotFound()
    path = folder / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path)
