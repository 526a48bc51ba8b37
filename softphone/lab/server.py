"""Start and stop a lab: database, seed, REST API on a loopback port.

``async with await start_lab(...) as lab:`` (or ``lab = await start_lab(...)``
and ``await lab.close()``) is what ``softphone lab``, the tests and the demo
use.  Port 0 picks a free port; :attr:`LabServer.url` says which.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from softphone.errors import LabError
from softphone.lab.app import DEFAULT_TOKEN_TTL, NOTIFICATION_SETTING, Lab, RedactedAccessLogger, build_app
from softphone.lab.db import Database, open_database
from softphone.lab.office_hours import OfficeHours
from softphone.lab.seed import Seed, apply_seed, load_seed
from softphone.lab.telephony import InMemoryTelephony, Telephony
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
    """A running lab: ``url``, the aiohttp ``app``, the ``db`` and the :class:`Lab` state."""

    url: str
    app: web.Application
    db: Database
    lab: Lab
    seed: Seed
    api_key_source: str
    _runner: web.AppRunner
    state: ServerState = ServerState.RUNNING

    @property
    def api_key(self) -> Secret:
        return self.lab.api_key

    async def close(self) -> None:
        """Stop serving, wait for webhooks in flight, close telephony and database (idempotent)."""
        if self.state is not ServerState.RUNNING:
            return
        self.state = ServerState.CLOSING
        try:
            await self._runner.cleanup()
            await self.lab.notifier.close()
            await self.lab.telephony.close()
        finally:
            await self.db.close()
            self.state = ServerState.CLOSED
            log.info("lab at %s closed", self.url)

    async def __aenter__(self) -> LabServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


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
    **lab_options: Any,
) -> LabServer:
    """Open ``db_url``, apply the seed, serve the API on ``host:port``.

    ``api_key`` defaults to the seed's; ``office_hours`` to none (the archive
    API runs at any hour); ``telephony`` to :class:`InMemoryTelephony`.
    """
    seed_obj = seed if isinstance(seed, Seed) else load_seed(seed)
    if api_key is None:
        key, key_source = Secret(seed_obj.api_key), f"seed {seed_obj.path}"
    else:
        key, key_source = Secret(api_key), api_key_source or "given"
    for user in seed_obj.users:
        register_secret(user["password"])
    hours = office_hours if isinstance(office_hours, OfficeHours) else OfficeHours.parse(office_hours)
    db = await open_database(db_url)
    runner: web.AppRunner | None = None
    try:
        await apply_seed(db, seed_obj)
        options: dict[str, Any] = {}
        if clock is not None:
            options["clock"] = clock
        if "supervisor_ids" not in lab_options:
            options["supervisor_ids"] = seed_obj.supervisor_ids
        lab = Lab(db=db, api_key=key, telephony=telephony or InMemoryTelephony(), office_hours=hours,
                  token_ttl=token_ttl, paths=paths, **options, **lab_options)
        lab.notifier.timeout = notification_timeout
        agents, calls = await lab.store.reset_sessions(lab.clock())
        if agents or calls:
            log.info("start: %d agent(s) logged out and %d call(s) ended from a previous run", agents, calls)
        lab.notifier.url = await lab.store.setting(NOTIFICATION_SETTING)
        app = build_app(lab)
        runner = web.AppRunner(app, access_log_class=RedactedAccessLogger,
                               access_log=get_logger("softphone.lab.access"))
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise LabError(f"lab: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = runner.addresses[0]
        url_host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{url_host}:{bound[1]}"
        if isinstance(lab.telephony, InMemoryTelephony):
            lab.telephony.recording_base_url = f"{url}/recordings"
        log.info("lab serving at %s (database %s, office hours %s)", url, db.url.display, hours.describe())
        return LabServer(url=url, app=app, db=db, lab=lab, seed=seed_obj, api_key_source=key_source,
                         _runner=runner)
    except BaseException:
        if runner is not None:
            await runner.cleanup()
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
