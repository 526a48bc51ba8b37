"""The async OmniSense REST client: one aiohttp session, typed results and errors.

Credentials: the system key goes in ``Authorization: Key=...`` on every call;
the user token (``tokenKey``) on every ``/omni`` call except authorize, cached
until shortly before its ``expiry_date`` and refreshed once when the server
answers 401 (a second 401 surfaces as :class:`PlatformAuthError`).

Retries (exponential backoff, ``retries`` extra attempts at most) only where
repeating cannot do harm:

* a connection that failed before the request was sent: any endpoint;
* timeouts, dropped connections and 502/503/504: only endpoints in
  :data:`RETRY_SAFE` (the reads, setting the notification URL, and the lead
  archive/dearchive API).  Archive is retried on purpose: the contract makes
  it idempotent (insert skips archived ids, update refreshes, delete only
  removes rows whose archive copy matches), so repeating a batch whose answer
  was lost converges to the same tables; :attr:`ArchiveResult.attempts` tells
  the caller that the counts describe the last attempt only.
* never for placing calls (``call``, ``shotgun``) or other state changes:
  the first attempt may have reached the server.

TLS is verified by default; ``ca_file`` trusts a private CA (the documented
examples use self-signed certificates); ``insecure=True`` turns verification
off explicitly and warns.  Secrets never reach logs, reprs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import ipaddress
import os
import ssl as ssl_module
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from softphone.errors import (
    ConfigurationError,
    OfficeHoursError,
    PlatformAuthError,
    PlatformConflictError,
    PlatformConnectionError,
    PlatformError,
    PlatformNotFoundError,
    PlatformServerError,
    PlatformTimeoutError,
    PlatformValidationError,
)
from softphone.log import Secret, get_logger, redact
from softphone.platform.auth import TokenCache, utc_now
from softphone.platform.models import (
    ActionResult,
    ArchiveResult,
    Call,
    CampaignState,
    CampaignStatus,
    Extension,
    LoginResult,
    RecordingResult,
    Token,
)
from softphone.platform.paths import Endpoint, PlatformPaths

log = get_logger(__name__)

#: Endpoints that may be sent again after a timeout, a dropped connection or 502/503/504.
RETRY_SAFE = frozenset({"active_calls", "campaign_status", "set_notification_endpoint",
                        "lead_archive", "lead_dearchive"})
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_ARCHIVE_IDS = 500
MAX_SHOTGUN_NUMBERS = 5


class ClientState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


def _check_base_url(base_url: str) -> str:
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base_url: expected http(s)://host[:port][/prefix], got {base_url!r}")
    if parts.username or parts.password:
        raise ConfigurationError("base_url: credentials in the URL are not allowed; pass auth_key")
    if parts.query or parts.fragment:
        raise ConfigurationError(f"base_url: no query or fragment allowed in {base_url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_clear_text(base_url: str, allow_http: bool) -> None:
    """Warn when ``base_url`` sends the system key unencrypted to another machine.

    Plain HTTP is fine on loopback (the lab); anywhere else the key and tokens
    can be read on the wire, so it must be a visible choice (``allow_http``).
    """
    parts = urlsplit(base_url)
    if parts.scheme != "http" or allow_http or _is_loopback(parts.hostname or ""):
        return
    msg = (f"base_url {base_url} is plain HTTP to a non-loopback host: the system key and tokens "
           "travel in clear text; use https:// (allow_http=True / --allow-http accepts the risk)")
    warnings.warn(msg, stacklevel=3)
    log.warning(msg)


def make_ssl(ca_file: str | os.PathLike[str] | None, insecure: bool) -> ssl_module.SSLContext | bool:
    """The ``ssl`` argument for aiohttp: verify (default), a CA bundle, or explicitly nothing."""
    if insecure and ca_file:
        raise ConfigurationError("ca_file and insecure are exclusive: give one or the other")
    if insecure:
        msg = "TLS certificate verification is OFF (insecure=True): the server is not authenticated"
        warnings.warn(msg, stacklevel=3)
        log.warning(msg)
        return False
    if ca_file:
        try:
            return ssl_module.create_default_context(cafile=os.fspath(ca_file))
        except (OSError, ssl_module.SSLError) as exc:
            raise ConfigurationError(f"ca_file {os.fspath(ca_file)!r}: cannot load CA bundle: {exc}") from None
    return True


def _message(body: Any) -> str:
    if isinstance(body, Mapping):
        for key in ("detail", "message", "error"):
            if body.get(key):
                return str(body[key])
    return ""


class PlatformClient:
    """Async client of the OmniSense REST API; use as ``async with PlatformClient(...)``.

    ``username``/``password`` are needed for ``/omni`` calls (the token);
    ``user_id`` defaults to the one authorize returns.
    """

    def __init__(
        self,
        base_url: str,
        auth_key: Secret | str,
        *,
        username: str | None = None,
        password: Secret | str | None = None,
        user_id: int | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.25,
        paths: PlatformPaths | None = None,
        clock: Callable[[], datetime] = utc_now,
        allow_http: bool = False,
    ):
        self.base_url = _check_base_url(base_url)
        if not auth_key:
            raise ConfigurationError("auth_key: the system key is required")
        self._auth_key = auth_key if isinstance(auth_key, Secret) else Secret(auth_key)
        self.username = username
        self._password = None if password is None else (
            password if isinstance(password, Secret) else Secret(password))
        self.user_id = user_id
        if timeout <= 0:
            raise ConfigurationError(f"timeout: must be > 0, got {timeout}")
        if retries < 0:
            raise ConfigurationError(f"retries: must be >= 0, got {retries}")
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.paths = paths if paths is not None else PlatformPaths.load()
        self._ssl = make_ssl(ca_file, insecure)
        warn_clear_text(self.base_url, allow_http)  # once the configuration is known to be valid
        self._tokens = TokenCache(self._authorize_request, clock=clock)
        self._session: aiohttp.ClientSession | None = None
        self.state = ClientState.NEW
        #: requests sent per endpoint name (retries included): for tests and reports
        self.sent: dict[str, int] = {}

    @classmethod
    def from_params(cls, params: Any, **kwargs: Any) -> PlatformClient:
        """A client for the Webphone's launch parameters (:class:`softphone.params.LaunchParams`)."""
        return cls(params.derived.api_url, params.auth_key, username=params.username,
                   password=params.password, user_id=params.user_id, **kwargs)

    def __repr__(self) -> str:
        return f"PlatformClient({self.base_url!r})"

    # --- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> PlatformClient:
        self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _open(self) -> aiohttp.ClientSession:
        if self.state is ClientState.CLOSED:
            raise PlatformError("client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl),
            )
            self.state = ClientState.OPEN
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.state = ClientState.CLOSED

    @property
    def token(self) -> Token | None:
        """The cached token (its key is a :class:`Secret`)."""
        return self._tokens.token

    @property
    def authorizations(self) -> int:
        """How many times the token cache authorized (for tests and diagnostics)."""
        return self._tokens.authorizations

    # --- the request core -----------------------------------------------------------

    async def request(
        self,
        name: str,
        body: Any = None,
        *,
        retry_safe: bool | None = None,
        **path_values: Any,
    ) -> Any:
        """Call endpoint ``name``; the decoded JSON answer, or a typed :class:`PlatformError`.

        Public so API tests can send what the typed methods would refuse.
        """
        body, _attempts = await self._request(name, body, retry_safe=retry_safe, **path_values)
        return body

    async def _request(self, name: str, body: Any = None, *, retry_safe: bool | None = None,
                       **path_values: Any) -> tuple[Any, int]:
        """(decoded answer, attempts the last send took)."""
        endpoint = self.paths[name]
        path = endpoint.path(**path_values)
        safe = (name in RETRY_SAFE or endpoint.method == "GET") if retry_safe is None else retry_safe
        token: Token | None = None
        if endpoint.is_omni:
            token = await self._tokens.get()
        try:
            return await self._send_with_retries(endpoint, path, body, token, safe)
        except PlatformAuthError as exc:
            if token is None or exc.status != 401:
                raise
        # 401 with a token: the token may have expired early or been revoked.
        token = await self._tokens.refresh_after_rejection(token)
        return await self._send_with_retries(endpoint, path, body, token, safe)

    async def _send_with_retries(self, endpoint: Endpoint, path: str, body: Any, token: Token | None,
                                 safe: bool) -> tuple[Any, int]:
        attempt = 0
        maybe_sent = False  # an attempt may have reached the server: a later failure is not a "no"
        while True:
            attempt += 1
            try:
                return await self._send(endpoint, path, body, token), attempt
            except _Retryable as exc:
                maybe_sent = maybe_sent or not exc.before_send
                may_retry = exc.before_send or safe
                if not may_retry or attempt > self.retries:
                    exc.error.maybe_processed = maybe_sent
                    raise exc.error from None
                delay = self.backoff * (2 ** (attempt - 1))
                log.info("%s; retry %d/%d in %.2fs", exc.error.message, attempt, self.retries, delay)
                await asyncio.sleep(delay)

    async def _send(self, endpoint: Endpoint, path: str, body: Any, token: Token | None) -> Any:
        session = self._open()
        headers = {"Authorization": f"Key={self._auth_key.reveal()}", "Accept": "application/json"}
        if token is not None:
            headers["tokenKey"] = token.token_key.reveal()
        url = self.base_url + path
        where = f"{endpoint.name} ({endpoint.method} {path})"
        kwargs: dict[str, Any] = {"headers": headers}
        if endpoint.method != "GET" or body is not None:
            kwargs["json"] = {} if body is None else body
        self.sent[endpoint.name] = self.sent.get(endpoint.name, 0) + 1
        started = time.perf_counter()
        try:
            async with session.request(endpoint.method, url, **kwargs) as response:
                status = response.status
                raw = await response.read()
        except aiohttp.ClientConnectorCertificateError as exc:
            raise PlatformConnectionError(
                f"{where}: TLS certificate of {self.base_url} not trusted ({exc.certificate_error}); "
                "pass a CA bundle (ca_file / --ca-file) or, knowingly, insecure=True / --insecure"
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise PlatformConnectionError(f"{where}: TLS handshake with {self.base_url} failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            # connecting failed: nothing was sent, so any request may be repeated
            raise _Retryable(PlatformConnectionError(
                f"{where}: cannot connect to {self.base_url}: {exc.os_error or exc}"), before_send=True) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise _Retryable(PlatformTimeoutError(f"{where}: no answer within {self.timeout:g}s"),
                             before_send=False) from None
        except aiohttp.ClientError as exc:
            raise _Retryable(PlatformConnectionError(f"{where}: connection failed: {redact(exc)}"),
                             before_send=False) from None
        latency_ms = (time.perf_counter() - started) * 1000
        log.debug("%s %s -> %d in %.1f ms", endpoint.method, path, status, latency_ms)
        return self._decode(endpoint, where, status, raw)

    def _decode(self, endpoint: Endpoint, where: str, status: int, raw: bytes) -> Any:
        import json

        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, ValueError):
            body = None
            if 200 <= status < 300:
                raise PlatformServerError(f"{where}: unreadable answer (not JSON): {raw[:80]!r}", status) from None
        message = redact(_message(body) or (raw[:200].decode("utf-8", "replace").strip() if body is None else ""))
        if 200 <= status < 300:
            if body is None:
                raise PlatformServerError(f"{where}: empty answer", status)
            if isinstance(body, dict) and body.get("success") is False:
                raise PlatformError(f"{where}: server answered success=false: {message}", status, body)
            return body
        text = f"{where}: {message or 'no message'}"
        if status == 400:
            ids = body.get("lead_ids") if isinstance(body, dict) else None
            raise PlatformValidationError(text, status, body, ids=ids if isinstance(ids, list) else None)
        if status == 401:
            raise PlatformAuthError(text, status, body)
        if status == 403:
            # the contract's only 403 is the archive's office-hours refusal; elsewhere it is a
            # credential that is valid but not allowed (e.g. a token of another user)
            if endpoint.name in ("lead_archive", "lead_dearchive"):
                raise OfficeHoursError(text, status, body)
            raise PlatformAuthError(text, status, body)
        if status == 404:
            raise PlatformNotFoundError(text, status, body)
        if status == 409:
            raise PlatformConflictError(text, status, body)
        if status in RETRY_STATUSES:
            raise _Retryable(PlatformServerError(text, status, body), before_send=False)
        if status >= 500:
            raise PlatformServerError(text, status, body)
        raise PlatformError(text, status, body)

    # --- authorization --------------------------------------------------------------

    async def _authorize_request(self) -> Token:
        if not self.username or self._password is None:
            raise ConfigurationError("username and password are needed to authorize (/omni calls)")
        body = {"user_name": self.username,
                "password": base64.b64encode(self._password.reveal().encode("utf-8")).decode("ascii")}
        data = await self.request("authorize", body)
        if not isinstance(data, dict):
            raise PlatformServerError("authorize: answer is not a JSON object")
        token = Token.from_json(data)
        if self.user_id is None:
            self.user_id = token.user_id
        log.debug("authorized as %s (user_id %s), token until %s", token.user_name, token.user_id,
                  token.expiry_date)
        return token

    async def authorize(self) -> Token:
        """Authorize now (even if a token is cached) and cache the new token."""
        token = await self._authorize_request()
        self._tokens.put(token)
        return token

    async def _uid(self, user_id: int | None) -> int:
        if user_id is not None:
            return user_id
        if self.user_id is None:
            await self._tokens.get()  # authorize tells us our user_id
        assert self.user_id is not None
        return self.user_id

    async def _obj(self, name: str, body: Any = None, **path_values: Any) -> dict[str, Any]:
        return self._dict(await self.request(name, body, **path_values), name)

    @staticmethod
    def _dict(data: Any, name: str) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise PlatformServerError(f"{name}: answer is not a JSON object")
        return data

    # --- agent session ----------------------------------------------------------------

    async def provision_extension(self, customer_id: int, expire_date: datetime | str, *,
                                  user_id: int | None = None) -> Extension:
        """Obtain the WebRTC extension to register (path configurable, see paths)."""
        exp = expire_date.isoformat() if isinstance(expire_date, datetime) else str(expire_date)
        data = await self._obj("provision_extension", {"customer_id": customer_id, "expire_date": exp},
                               user_id=await self._uid(user_id))
        return Extension.from_json(data)

    async def login(self, campaign_id: int, extension: str, *, user_id: int | None = None) -> LoginResult:
        """User Login API: the platform then calls ``extension`` (it must be registered)."""
        data = await self._obj("login", {"campaign_id": campaign_id, "extension": str(extension)},
                               user_id=await self._uid(user_id))
        return LoginResult.from_json(data, "login")

    async def logout(self, *, user_id: int | None = None) -> ActionResult:
        data = await self._obj("logout", {}, user_id=await self._uid(user_id))
        return ActionResult.from_json(data, "logout")

    # --- voice ------------------------------------------------------------------------

    async def call(self, phone_number: str, *, outbound_cli: str, unique_id: str,
                   lead_id: int | None = None, user_id: int | None = None) -> Call:
        """Place an outbound call (a conference if a call is live). Never retried."""
        body: dict[str, Any] = {"phone_number": str(phone_number), "outbound_cli": str(outbound_cli),
                                "unique_id": str(unique_id)}
        if lead_id is not None:
            body["lead_id"] = lead_id
        data = await self._obj("call", body, user_id=await self._uid(user_id))
        return Call.from_json(data, "call")

    async def shotgun(self, phone_numbers: Sequence[str], *, outbound_cli: str, unique_id: str,
                      lead_id: int | None = None, user_id: int | None = None) -> Call:
        """Dial up to 5 numbers at once; the first to answer is bridged. Never retried."""
        if isinstance(phone_numbers, str):
            raise PlatformValidationError("phone_numbers: expected a list of numbers, got one string",
                                          status=None)
        numbers = [str(n).strip() for n in phone_numbers]
        if not 1 <= len(numbers) <= MAX_SHOTGUN_NUMBERS:
            raise PlatformValidationError(
                f"phone_numbers: shotgun takes 1 to {MAX_SHOTGUN_NUMBERS} numbers, got {len(numbers)}",
                status=None)
        empty = [i for i, n in enumerate(numbers) if not n]
        if empty:
            raise PlatformValidationError(f"phone_numbers: empty number at position {empty[0]}", status=None)
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        if dupes:
            raise PlatformValidationError(f"phone_numbers: duplicate number(s) {', '.join(dupes)}",
                                          status=None)
        body: dict[str, Any] = {"phone_numbers": numbers, "outbound_cli": str(outbound_cli),
                                "unique_id": str(unique_id)}
        if lead_id is not None:
            body["lead_id"] = lead_id
        data = await self._obj("shotgun", body, user_id=await self._uid(user_id))
        return Call.from_json(data, "shotgun")

    async def _call_action(self, name: str, call_id: int, user_id: int | None, body: Any = None) -> dict:
        return await self._obj(name, {} if body is None else body, user_id=await self._uid(user_id),
                               call_id=call_id)

    async def hangup(self, call_id: int, *, user_id: int | None = None) -> ActionResult:
        return ActionResult.from_json(await self._call_action("hangup", call_id, user_id), "hangup")

    async def hold(self, call_id: int, *, user_id: int | None = None) -> ActionResult:
        return ActionResult.from_json(await self._call_action("hold", call_id, user_id), "hold")

    async def retrieve(self, call_id: int, *, user_id: int | None = None) -> ActionResult:
        return ActionResult.from_json(await self._call_action("retrieve", call_id, user_id), "retrieve")

    async def start_recording(self, call_id: int, *, user_id: int | None = None) -> RecordingResult:
        return RecordingResult.from_json(await self._call_action("recording_start", call_id, user_id),
                                         "recording_start")

    async def stop_recording(self, call_id: int, *, user_id: int | None = None) -> RecordingResult:
        return RecordingResult.from_json(await self._call_action("recording_stop", call_id, user_id),
                                         "recording_stop")

    async def dispose(self, call_id: int, disposition_code: str, *, user_id: int | None = None) -> ActionResult:
        if not str(disposition_code).strip():
            raise PlatformValidationError("disposition_code: must not be empty", status=None)
        data = await self._call_action("dispose", call_id, user_id,
                                       {"disposition_code": str(disposition_code)})
        return ActionResult.from_json(data, "dispose")

    async def connect_calls(self, call_id_a: int, call_id_b: int, *, user_id: int | None = None) -> ActionResult:
        """Join two external parties and drop the agent."""
        if call_id_a == call_id_b:
            raise PlatformValidationError(f"call_ids: cannot connect call {call_id_a} to itself", status=None)
        data = await self._obj("connect_calls", {"call_ids": [int(call_id_a), int(call_id_b)]},
                               user_id=await self._uid(user_id))
        return ActionResult.from_json(data, "connect_calls")

    async def active_calls(self, *, user_id: int | None = None) -> list[Call]:
        data = await self._obj("active_calls", user_id=await self._uid(user_id))
        calls = data.get("calls")
        if not isinstance(calls, list):
            raise PlatformServerError("active_calls: answer has no list 'calls'")
        return [Call.from_json(c, "active_calls") for c in calls]

    async def set_notification_endpoint(self, url: str) -> ActionResult:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PlatformValidationError(f"url: expected an http(s) URL, got {url!r}", status=None)
        data = await self._obj("set_notification_endpoint", {"url": url})
        return ActionResult.from_json(data, "set_notification_endpoint")

    # --- campaigns --------------------------------------------------------------------

    async def campaign_status(self, campaign_id: int) -> CampaignStatus:
        return CampaignStatus.from_json(await self._obj("campaign_status", campaign_id=campaign_id))

    async def set_campaign_status(self, campaign_id: int, status: CampaignState | int) -> CampaignStatus:
        """Move a campaign (NotRunning->Paused->Running, Paused/Running->NotRunning; else 409)."""
        try:
            code = int(CampaignState(int(status)))
        except ValueError:
            raise PlatformValidationError(f"status: {status!r} is not 0, 1 or 2", status=None) from None
        data = await self._obj("set_campaign_status", {"status": code}, campaign_id=campaign_id)
        return CampaignStatus.from_json(data)

    # --- lead archive -----------------------------------------------------------------

    async def archive_leads(self, lead_ids: Iterable[int], *, insert_leads: Any = True,
                            update_leads: Any = True, delete_leads: Any = True,
                            validate: bool = True) -> ArchiveResult:
        """One archive batch (<= 500 ids). ``validate=False`` sends the values as given,
        for testing the server's own validation."""
        ids = self._check_ids(lead_ids, validate)
        body = {"insert_leads": insert_leads, "update_leads": update_leads,
                "delete_leads": delete_leads, "lead_ids": ids}
        if validate:
            self._check_flags(body)
        data, attempts = await self._request("lead_archive", body)
        return ArchiveResult.from_json(self._dict(data, "lead_archive"), "lead_archive", attempts=attempts)

    async def dearchive_leads(self, lead_ids: Iterable[int], *, insert_leads: Any = True,
                              delete_leads: Any = True, validate: bool = True) -> ArchiveResult:
        """One dearchive batch: back into ``vicidial_list``, then safe-delete from the archive."""
        ids = self._check_ids(lead_ids, validate)
        body = {"insert_leads": insert_leads, "delete_leads": delete_leads, "lead_ids": ids}
        if validate:
            self._check_flags(body)
        data, attempts = await self._request("lead_dearchive", body)
        return ArchiveResult.from_json(self._dict(data, "lead_dearchive"), "lead_dearchive", attempts=attempts)

    @staticmethod
    def _check_flags(body: Mapping[str, Any]) -> None:
        for key in ("insert_leads", "update_leads", "delete_leads"):
            if key in body and not isinstance(body[key], bool):
                raise PlatformValidationError(f"{key} must be a boolean value", status=None)

    @staticmethod
    def _check_ids(lead_ids: Iterable[Any], validate: bool) -> list[Any]:
        ids = list(lead_ids)
        if not validate:
            return ids
        bad = [v for v in ids if not isinstance(v, int) or isinstance(v, bool)]
        if bad:
            raise PlatformValidationError("lead_ids must only contain integer values", status=None, ids=bad)
        if not ids:
            raise PlatformValidationError("lead_ids must contain atleast 1 value", status=None)
        if len(ids) > MAX_ARCHIVE_IDS:
            raise PlatformValidationError(f"lead_ids cannot exceed {MAX_ARCHIVE_IDS} values", status=None)
        seen: set[int] = set()
        dupes: dict[int, None] = {}  # in order of first repetition, as the server lists them
        for v in ids:
            if v in seen:
                dupes[v] = None
            seen.add(v)
        if dupes:
            raise PlatformValidationError("lead_ids cannot contain duplicate values", status=None,
                                          ids=list(dupes))
        return ids


class _Retryable(Exception):
    """Internal: a failure that may be retried; ``before_send`` if nothing reached the server."""

    def __init__(self, error: PlatformError, before_send: bool):
        super().__init__(str(error))
        self.error = error
        self.before_send = before_send
