"""Start and stop a lab: database, seed, REST API, SIP edge, TURN, on loopback ports.

``async with await start_lab(...) as lab:`` (or ``lab = await start_lab(...)``
and ``await lab.close()``) is what ``softphone lab``, the tests and the demo
use.  Port 0 picks a free port; :attr:`LabServer.url` says which.

With ``sip=True`` (the default) the same aiohttp app also serves SIP over
WebSocket at ``/ws`` (:mod:`softphone.lab.sip_endpoint`) on the HTTP site
(``ws://``) and on a second, TLS site (``wss://``, ``wss_port``, 0 = free)
with the operator's certificate or one generated at start
(:mod:`softphone.lab.certificates`); ``GET /`` is the status page.  The
telephony is :class:`softphone.lab.dialer.SipTelephony` on that edge when the
dialer module is present, else :class:`InMemoryTelephony`; ``telephony=``
overrides both.  ``turn=True`` starts coturn (:mod:`softphone.lab.turn`) when
``turnserver`` is installed.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import importlib.util
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from softphone.errors import ConfigurationError, LabError
from softphone.lab.app import DEFAULT_TOKEN_TTL, NOTIFICATION_SETTING, Lab, RedactedAccessLogger, build_app
from softphone.lab.certificates import LabCertificate, lab_certificate
from softphone.lab.db import Database, open_database
from softphone.lab.office_hours import OfficeHours
from softphone.lab.registrar import Registrar, RegistrarOptions
from softphone.lab.seed import Seed, apply_seed, load_seed
from softphone.lab.sip_endpoint import WS_PATH, EdgeLimits, SipEndpoint
from softphone.lab.status_page import STATUS_PATH, ObservedNotifier, StatusBoard
from softphone.lab.telephony import InMemoryTelephony, Telephony
from softphone.lab.turn import LabTurn, start_turn
from softphone.log import Secret, get_logger, register_secret
from softphone.platform.paths import DEFAULT_PATHS, PlatformPaths

log = get_logger(__name__)

DEFAULT_DB_URL = "sqlite:///:memory:"


class ServerState(enum.Enum):
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass
class LabServer:
    """A running lab: ``url``, the aiohttp ``app``, the ``db``, the :class:`Lab` state and its SIP edge."""

    url: str
    app: web.Application
    db: Database
    lab: Lab
    seed: Seed
    api_key_source: str
    _runner: web.AppRunner
    state: ServerState = ServerState.RUNNING
    endpoint: SipEndpoint | None = None
    """The SIP edge (None with ``sip=False``)."""
    sip_ws_url: str | None = None
    sip_wss_url: str | None = None
    certificate: LabCertificate | None = None
    turn: LabTurn | None = None
    """The coturn this lab started (None: no TURN, host candidates only)."""
    domain: str = "127.0.0.1"
    """SIP domain and digest realm (the Webphone's ``server`` host)."""
    status: StatusBoard | None = None
    started_in: float = 0.0
    """Seconds from start_lab being called to ready."""
    external_turn_port: int | None = None
    """With no coturn of its own: the TURN port put in launch URLs (a TURN server run elsewhere)."""
    external_turn_user: tuple[str, Secret] | None = None
    """That TURN server's static credential: launch URLs carry it as turn_username/turn_password."""
    _closers: list[Callable[[], Any]] = field(default_factory=list, repr=False)

    @property
    def api_key(self) -> Secret:
        return self.lab.api_key

    @property
    def ca_file(self) -> str | None:
        """The file a client trusts for ``sip_wss_url`` (the self-signed certificate itself)."""
        return str(self.certificate.ca_file) if self.certificate is not None else None

    @property
    def turn_port(self) -> int:
        """The Webphone's ``turn_port``: our coturn's, else the one given, else 3478."""
        if self.turn is not None:
            return self.turn.port
        return self.external_turn_port or 3478

    @property
    def registrar(self) -> Registrar | None:
        return self.endpoint.registrar if self.endpoint is not None else None

    def launch_params(self, user_id: int, *, expire_date: datetime | None = None,
                      secure: bool = True) -> dict[str, str]:
        """Every Webphone launch parameter for seeded user ``user_id``, plus the overrides that
        point a client at this lab (api_url, sip_ws_url, sip_domain, ca_file; turn_urls when
        TURN is not on ``server``'s host).  Secrets are included: it is the user's own URL."""
        user = self.seed.user(user_id)
        if user is None:
            raise LabError(f"user_id {user_id} is not in the lab's seed")
        expire = expire_date or (datetime.now(UTC) + timedelta(hours=8)).replace(microsecond=0)
        turn_port = self.turn_port
        params: dict[str, str] = {
            "auth_key": self.api_key.reveal(),
            "server": self.domain,
            "turn_port": str(turn_port),
            "customer_id": str(user["customer_id"]),
            "user_id": str(user_id),
            "username": user["user_name"],
            "password": user["password"],
            "expire_date": expire.isoformat(),
            "api_url": self.url,
            "sip_domain": self.domain,
        }
        ws = self.sip_wss_url if secure and self.sip_wss_url else self.sip_ws_url
        if ws:
            params["sip_ws_url"] = ws
        if ws and ws.startswith("wss://") and self.ca_file:
            params["ca_file"] = self.ca_file
        if user.get("extension"):
            params["extension"] = user["extension"]
        if self.turn is None and self.external_turn_user is not None:
            params["turn_username"] = self.external_turn_user[0]
            params["turn_password"] = self.external_turn_user[1].reveal()
        return params

    def launch_url(self, user_id: int, *, expire_date: datetime | None = None, secure: bool = True,
                   page: str = "TForge-OmniSense-Webphone.html") -> str:
        """A ready Webphone launch URL for a seeded user (``softphone run URL`` takes it too)."""
        query = urlencode(self.launch_params(user_id, expire_date=expire_date, secure=secure), quote_via=quote)
        return f"{self.url}/{page}?{query}"

    async def close(self) -> None:
        """Stop serving, wait for webhooks in flight, close telephony, SIP edge, TURN, database (idempotent)."""
        if self.state is not ServerState.RUNNING:
            return
        self.state = ServerState.CLOSING
        try:
            # Calls end first (their BYEs go out over the phones' WebSockets), then the
            # WebSockets close (aiohttp would otherwise wait for them), then HTTP stops.
            await self.lab.telephony.close()
            if self.endpoint is not None:
                await self.endpoint.close()
            await self._runner.cleanup()
            await self.lab.notifier.close()
        finally:
            for closer in reversed(self._closers):
                try:
                    result = closer()
                    if hasattr(result, "__await__"):
                        await result
                except Exception as exc:
                    log.warning("lab close: %s", exc)
            await self.db.close()
            self.state = ServerState.CLOSED
            log.info("lab at %s closed", self.url)

    async def __aenter__(self) -> LabServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LabAccessLogger(RedactedAccessLogger):
    """The redacted access log, without the status page's once-a-second poll (kept at debug)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if request.path == STATUS_PATH and response.status == 200:
            if self.logger.isEnabledFor(logging.DEBUG):
                self.logger.debug("%s %s %d", request.method, request.path, response.status)
            return
        super().log(request, response, time)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _dialer_module() -> Any | None:
    """softphone.lab.dialer when it is there (the SIP telephony), else None."""
    if importlib.util.find_spec("softphone.lab.dialer") is None:
        return None
    module = importlib.import_module("softphone.lab.dialer")
    return module if hasattr(module, "SipTelephony") else None


def _build_sip_telephony(module: Any, endpoint: SipEndpoint, options: dict[str, Any]) -> Telephony:
    """SipTelephony(endpoint, TelephonyOptions(...)) from start_lab's dialer keywords (None: default)."""
    option_class = module.TelephonyOptions
    names = {f.name for f in dataclasses.fields(option_class)}
    values = {k: v for k, v in options.items() if v is not None and k in names}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in names)
    if unknown:
        log.warning("telephony options not known to this dialer, ignored: %s", ", ".join(unknown))
    return module.SipTelephony(endpoint, option_class(**values))


def _media_config(turn: LabTurn | None, relay_only: bool,
                  external: tuple[str, str, Secret] | None = None) -> Any:
    """The lab side's media: TURN through our coturn (or the external one given), relay only if asked."""
    from softphone.media.config import IceConfig, MediaConfig

    if turn is not None:
        return MediaConfig(ice=IceConfig(turn_urls=(turn.url,), username=turn.lab_username,
                                         credential=turn.lab_password, relay_only=relay_only))
    if external is not None:
        url, username, credential = external
        return MediaConfig(ice=IceConfig(turn_urls=(url,), username=username, credential=credential,
                                         relay_only=relay_only))
    if relay_only:
        raise LabError("--relay-only needs TURN: coturn is not running (install coturn, drop --no-turn, "
                       "or give --turn-user for a TURN server run elsewhere)")
    return MediaConfig(ice=IceConfig())


def _on_loopback(media: Any, host: str) -> Any:
    """A lab listening on loopback (and its TURN server there too) keeps its media on loopback."""
    import dataclasses

    return dataclasses.replace(media, ice=media.ice.loopback_only_for(host))


async def start_lab(
    host: str = "127.0.0.1",
    port: int = 0,
    db_url: str = DEFAULT_DB_URL,
    api_key: str | Secret | None = None,
    office_hours: str | list[str] | OfficeHours | None = None,
    seed: str | Path | Seed | None = None,
    *,
    telephony: Telephony | None = None,
    token_ttl: float = DEFAULT_TOKEN_TTL,
    clock: Callable[[], float] | None = None,
    paths: PlatformPaths = DEFAULT_PATHS,
    notification_timeout: float = 5.0,
    api_key_source: str | None = None,
    sip: bool = True,
    wss_port: int | None = 0,
    cert: str | Path | None = None,
    key: str | Path | None = None,
    domain: str | None = None,
    edge_limits: EdgeLimits | None = None,
    registrar_options: RegistrarOptions | None = None,
    turn: bool = False,
    turn_port: int = 0,
    turn_user: str | None = None,
    relay_only: bool = False,
    media_turn: bool = True,
    prompt: str | None = None,
    recordings_dir: str | Path | None = None,
    customers: Any = None,
    telephony_options: dict[str, Any] | None = None,
    **lab_options: Any,
) -> LabServer:
    """Open ``db_url``, apply the seed, serve the API on ``host:port`` (and SIP over WebSocket).

    ``api_key`` defaults to the seed's; ``office_hours`` to none (the archive
    API runs at any hour).  SIP edge: ``sip``, ``wss_port`` (None: no TLS
    site), ``cert``/``key`` (default: self-signed, generated now), ``domain``
    (SIP domain and digest realm; default the host), ``edge_limits``,
    ``registrar_options``.  ``turn`` starts coturn on ``turn_port`` (0: free);
    without it, ``turn_port`` and ``turn_user`` ("NAME:PASS") describe a TURN
    server run elsewhere on the lab's host (docker-compose's ``turn``);
    ``relay_only`` makes the lab's media use relay candidates only; ``media_turn=False`` keeps
    the lab's own media off TURN (host candidates), as a platform's media server with a public
    address: the TURN server then relays the agents' side only.  Dialer
    keywords (passed to ``TelephonyOptions``; None keeps its default):
    ``prompt``, ``recordings_dir``, ``customers``, plus ``telephony_options``.
    """
    started = time.monotonic()
    seed_obj = seed if isinstance(seed, Seed) else load_seed(seed)
    if api_key is None:
        key_value, key_source = Secret(seed_obj.api_key), f"seed {seed_obj.path}"
    else:
        key_value, key_source = Secret(api_key), api_key_source or "given"
    for user in seed_obj.users:
        register_secret(user["password"])
    hours = office_hours if isinstance(office_hours, OfficeHours) else OfficeHours.parse(office_hours)
    lab_domain = domain or (host if host not in ("0.0.0.0", "::", "") else "127.0.0.1")
    certificate = lab_certificate(cert, key, [host, lab_domain]) if sip and wss_port is not None else None
    db = await open_database(db_url)
    runner: web.AppRunner | None = None
    turn_server: LabTurn | None = None
    external_user: tuple[str, Secret] | None = None
    if turn_user is not None and not turn:
        name, sep, secret = turn_user.partition(":")
        if not sep or not name or not secret:
            raise ConfigurationError("--turn-user must be NAME:PASS")
        if not turn_port:
            raise ConfigurationError("--turn-user needs --turn-port (the TURN server's port)")
        external_user = (name, Secret(secret))
    closers: list[Callable[[], Any]] = []
    if certificate is not None:
        closers.append(certificate.cleanup)
    try:
        await apply_seed(db, seed_obj)
        clock_fn = clock or time.time
        endpoint: SipEndpoint | None = None
        if sip:
            options = registrar_options or RegistrarOptions(realm=lab_domain)
            endpoint = SipEndpoint(Registrar(db, options, clock=clock_fn), domain=lab_domain, limits=edge_limits)
        if turn:
            turn_server = await start_turn(db, port=turn_port, listen=host)
            if turn_server is not None:
                closers.append(turn_server.stop)
        if telephony is None and endpoint is not None:
            module = _dialer_module()
            if module is not None:
                if isinstance(customers, str | Path):
                    from softphone.lab.customers import CustomerTable

                    customers = CustomerTable.load(customers)
                dialer_options = {"prompt": prompt, "recordings_dir": Path(recordings_dir) if recordings_dir else None,
                                  "customers": customers,
                                  "media": _on_loopback(_media_config(
                                      turn_server if media_turn else None, relay_only,
                                      None if external_user is None or not media_turn
                                      else (f"turn:{_url_host(lab_domain)}:{turn_port}", *external_user)), host),
                                  **(telephony_options or {})}
                telephony = _build_sip_telephony(module, endpoint, dialer_options)
        elif relay_only and turn_server is None and turn:
            raise LabError("--relay-only needs TURN: coturn is not running")
        options_kw: dict[str, Any] = {}
        if clock is not None:
            options_kw["clock"] = clock
        events: deque = deque(maxlen=200)
        if "notifier" not in lab_options:
            options_kw["notifier"] = ObservedNotifier(events, timeout=notification_timeout)
        if "supervisor_ids" not in lab_options:  # the seed's users with "role": "supervisor"
            options_kw["supervisor_ids"] = seed_obj.supervisor_ids
        lab = Lab(db=db, api_key=key_value, telephony=telephony or InMemoryTelephony(), office_hours=hours,
                  token_ttl=token_ttl, paths=paths, **options_kw, **lab_options)
        lab.notifier.timeout = notification_timeout
        agents, calls = await lab.store.reset_sessions(lab.clock())
        if agents or calls:
            log.info("start: %d agent(s) logged out and %d call(s) ended from a previous run", agents, calls)
        lab.notifier.url = await lab.store.setting(NOTIFICATION_SETTING)
        app = build_app(lab)
        board = StatusBoard(lab, endpoint, events)
        board.add_routes(app)
        if endpoint is not None:
            endpoint.add_routes(app)
        runner = web.AppRunner(app, access_log_class=LabAccessLogger,
                               access_log=get_logger("softphone.lab.access"))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise LabError(f"lab: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0]
        # Listening on every interface: URLs name the lab's domain, which clients can reach.
        reach = lab_domain if bound[0] in ("0.0.0.0", "::") else bound[0]
        url = f"http://{_url_host(reach)}:{bound[1]}"
        ws_url = wss_url = None
        if endpoint is not None:
            ws_url = f"ws://{_url_host(reach)}:{bound[1]}{WS_PATH}"
            if certificate is not None:
                tls_site = web.TCPSite(runner, host, wss_port or 0, ssl_context=certificate.server_context())
                try:
                    await tls_site.start()
                except OSError as exc:
                    raise LabError(f"lab: cannot listen on {host}:{wss_port} (wss): {exc.strerror or exc}") from None
                tls_bound = runner.addresses[-1]
                wss_url = f"wss://{_url_host(reach)}:{tls_bound[1]}{WS_PATH}"
            endpoint.registrar.start()
        if hasattr(lab.telephony, "recording_base_url"):
            lab.telephony.recording_base_url = f"{url}/recordings"
        elif hasattr(getattr(lab.telephony, "options", None), "recording_base_url"):
            lab.telephony.options.recording_base_url = f"{url}/recordings"
        log.info("lab serving at %s (database %s, office hours %s)%s", url, db.url.display, hours.describe(),
                 f"; SIP at {ws_url} and {wss_url}" if endpoint is not None else "")
        return LabServer(url=url, app=app, db=db, lab=lab, seed=seed_obj, api_key_source=key_source,
                         _runner=runner, endpoint=endpoint, sip_ws_url=ws_url, sip_wss_url=wss_url,
                         certificate=certificate, turn=turn_server, domain=lab_domain, status=board,
                         started_in=time.monotonic() - started, _closers=closers,
                         external_turn_port=None if turn else (turn_port or None),
                         external_turn_user=external_user)
    except BaseException:
        if runner is not None:
            await runner.cleanup()
        for closer in reversed(closers):
            try:
                result = closer()
                if hasattr(result, "__await__"):
                    await result
            except Exception as exc:
                log.warning("lab start cleanup: %s", exc)
        await db.close()
        raise


async def serve_until_stopped(announce: Callable[[LabServer], None] | None = None, **options: Any) -> None:
    """Run a lab until SIGINT/SIGTERM, then close it cleanly (``softphone lab``)."""
    import asyncio
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass
    try:
        async with await start_lab(**options) as server:
            if announce is not None:
                announce(server)
            await stop.wait()
            log.info("lab stopping")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
