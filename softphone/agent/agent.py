"""One Webphone session from its launch parameters: what the browser page does, headless.

::

    async with Agent.from_url(url, campaign_id=1, play="tone:440") as agent:
        call = await agent.wait_for_call(timeout=10)      # the bridge call, auto-answered
        await call.wait_for_tone(440, timeout=5)
        placed = await agent.dial("5551234")             # voice API (REST)

Start: authorize (the token is cached by the REST client) -> the extension
(explicit ``extension`` override, else the provisioning request) -> register
it over SIP/WebSocket -> User Login API into ``campaign_id`` (skipped when no
campaign is given) -> the platform's bridge call is answered automatically.
Stop: User Logout API, hang up, unregister, close; in that order, also when
the block raised or was cancelled, on :meth:`request_stop` (the CLI's
SIGINT/SIGTERM handlers) and when ``expire_date`` is reached (an
``expiring`` event comes ``min(60 s, 10 %)`` earlier; the block then ends
with :class:`~softphone.errors.SessionExpiredError`).

The Webphone's refresh rule: a user still logged in from a run that crashed
is logged out first (a warning, and a ``logged_out`` event with ``stale=True``),
then logged in again.

Naming: ``agent.call`` is the live SIP call (:class:`~softphone.agent.call.Call`);
``agent.dial(phone_number)`` asks the platform's voice API to place a call
(``POST .../call``); ``agent.invite(target)`` places a SIP call directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from softphone.agent.phone import STOP_TIMEOUT, Phone
from softphone.agent.state import AgentState
from softphone.errors import (
    AgentError,
    ConfigurationError,
    PlatformConflictError,
    PlatformError,
    SessionExpiredError,
)
from softphone.events import Expiring, LoggedIn, LoggedOut
from softphone.log import get_logger
from softphone.media.config import IceConfig, MediaConfig
from softphone.params import OVERRIDE_NAMES, SPECS, LaunchParams, load_params
from softphone.platform.client import PlatformClient
from softphone.platform.models import ActionResult, CampaignStatus, RecordingResult
from softphone.platform.models import Call as PlatformCall
from softphone.sip.invitation import Invitation
from softphone.sip.user_agent import UserAgentConfig

log = get_logger(__name__)

#: How long the logout may take on the way out before the rest of the shutdown goes on.
LOGOUT_TIMEOUT = 5.0
#: The ``expiring`` event comes this long before ``expire_date`` (or 10 % of the session, if less).
EXPIRY_WARNING = 60.0


def _host_of(url: str | None) -> str | None:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname if url else None


def expiry_lead(total_seconds: float, warning: float = EXPIRY_WARNING) -> float:
    """Seconds before ``expire_date`` to warn: ``min(warning, 10 % of the session)``."""
    return max(0.0, min(warning, 0.1 * total_seconds))


class Agent(Phone):
    """One agent session (see the module docs).  Attributes: ``params``, ``extension``,
    ``state`` (:class:`AgentState`), ``call`` (the live :class:`Call` or None), ``api``
    (the :class:`~softphone.platform.client.PlatformClient`), ``campaign_id``, ``logged_in``.

    Options: ``campaign_id`` (log in there; None: register only), ``answer`` (for calls
    other than the bridge, which is always answered), ``play``/``record`` (each call),
    ``ca_file``/``insecure`` (TLS of the REST API, the WebSocket and ``turns:``),
    ``relay_only`` (media only through TURN), ``media`` (a full MediaConfig instead),
    ``outbound_cli`` (default caller ID of :meth:`dial`), ``expiry_warning`` (seconds),
    ``api_timeout``, ``logout_timeout``, ``register_expires``, ``debug`` (honour the
    ``debug_console``/``debug_html`` flags by configuring logging; default True).
    """

    def __init__(self, params: LaunchParams, *, campaign_id: int | None = None, answer: str = "auto",
                 play: Any = None, record: str | os.PathLike | None = None, ca_file: str | None = None,
                 insecure: bool = False, relay_only: bool = False, media: MediaConfig | None = None,
                 outbound_cli: str | None = None, expiry_warning: float = EXPIRY_WARNING,
                 api_timeout: float = 10.0, logout_timeout: float = LOGOUT_TIMEOUT,
                 register_expires: int = 600, inband_dtmf: bool = True, debug: bool = True,
                 client: PlatformClient | None = None, stop_timeout: float = STOP_TIMEOUT) -> None:
        if not isinstance(params, LaunchParams):
            raise ConfigurationError(f"params: expected LaunchParams (softphone.load_params), got {params!r}")
        if campaign_id is not None and (not isinstance(campaign_id, int) or campaign_id < 0):
            raise ConfigurationError(f"campaign_id: must be a non-negative integer, got {campaign_id!r}")
        if ca_file is None:
            ca_file = getattr(params.derived, "ca_file", None)
        if media is None:  # servers all on this machine: media stays on loopback too
            ice = IceConfig.from_params(params, relay_only=relay_only, tls_ca_file=ca_file, tls_insecure=insecure)
            media = MediaConfig(ice=ice.loopback_only_for(_host_of(params.derived.sip_ws_url)))
        super().__init__(None, media, answer=answer, play=play, record=record, inband_dtmf=inband_dtmf,
                         stop_timeout=stop_timeout)
        self.params = params
        self.campaign_id = campaign_id
        self.ca_file, self.insecure = ca_file, insecure
        self.outbound_cli = outbound_cli
        self.expiry_warning = expiry_warning
        self.logout_timeout = logout_timeout
        self.register_expires = register_expires
        self.api = client or PlatformClient.from_params(params, ca_file=ca_file, insecure=insecure,
                                                        timeout=api_timeout)
        self.logged_in = False
        self._login_sent = False
        self.stale_session_logged_out = False
        self._extension: str | None = params.derived.extension
        self._bridge: Invitation | None = None
        if debug and (params.debug_console or params.debug_html):
            from softphone.log import setup_logging

            setup_logging(debug_console=params.debug_console, debug_html=params.debug_html)

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> Agent:
        """An agent for the Webphone's URL (or bare query string).

        ``overrides`` may hold launch parameters and derived overrides (``password=...``,
        ``sip_ws_url=...``: they win over the URL) and the agent's own options.
        """
        flags, options = _split(overrides)
        return cls(load_params(url, flags=flags), **options)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Agent:
        """An agent from ``SOFTPHONE_*`` variables (``SOFTPHONE_CAMPAIGN_ID`` gives the campaign)."""
        environ = os.environ if environ is None else environ
        flags, options = _split(overrides)
        if "campaign_id" not in options and environ.get("SOFTPHONE_CAMPAIGN_ID"):
            try:
                options["campaign_id"] = int(environ["SOFTPHONE_CAMPAIGN_ID"])
            except ValueError:
                raise ConfigurationError("SOFTPHONE_CAMPAIGN_ID: must be an integer") from None
        return cls(load_params(None, flags=flags, environ=environ), **options)

    def __repr__(self) -> str:
        return (f"Agent(user={self.params.username!r}, user_id={self.params.user_id}, server={self.params.server!r}, "
                f"extension={self.extension!r}, state={self.state.value})")

    @property
    def extension(self) -> str | None:
        return self._extension

    @property
    def name(self) -> str:
        return f"agent {self.params.username}"

    def snapshot(self) -> dict[str, Any]:
        out = super().snapshot()
        out.update(user=self.params.username, user_id=self.params.user_id, extension=self.extension,
                   campaign_id=self.campaign_id, logged_in=self.logged_in,
                   expires_in=round(self.params.seconds_left()))
        return out

    # --- start ------------------------------------------------------------------------

    async def _start_steps(self) -> None:
        if self.params.seconds_left() <= 0:
            raise SessionExpiredError(f"expire_date {self.params.expire_date.isoformat()} has passed")
        self._move(AgentState.AUTHORIZING)
        await self.api.authorize()
        if self._extension is None:
            self._move(AgentState.PROVISIONING)
            provisioned = await self.api.provision_extension(self.params.customer_id, self.params.expire_date)
            self._extension = provisioned.extension
            log.info("%s: extension %s provisioned", self.name, self._extension)
        self._move(AgentState.REGISTERING)
        self.ua_config = UserAgentConfig.from_params(self.params, self._extension, ca_file=self.ca_file,
                                                     insecure=self.insecure,
                                                     register_expires=self.register_expires)
        await self._register()
        if self.campaign_id is not None:
            self._move(AgentState.LOGGING_IN)
            await self._login()
        self._move(AgentState.READY)
        self._spawn(self._expiry_watch())

    async def _login(self) -> None:
        assert self._extension is not None and self.campaign_id is not None
        self._login_sent = True  # from here on the platform may count us logged in
        try:
            await self.api.login(self.campaign_id, self._extension)
        except PlatformConflictError as exc:
            if "already logged in" not in exc.message:
                raise
            # The Webphone's refresh rule: the session of a crashed run is logged out first.
            log.warning("%s: user_id %s is still logged in from an earlier session; logging it out first",
                        self.name, self.params.user_id)
            await self.api.logout()
            self.stale_session_logged_out = True
            self._emit(LoggedOut(self.params.user_id, "stale session from an earlier run", stale=True))
            await self.api.login(self.campaign_id, self._extension)
        self.logged_in = True
        log.info("%s: logged in to campaign %s on extension %s", self.name, self.campaign_id, self._extension)
        self._emit(LoggedIn(self.params.user_id, self.campaign_id, self._extension))

    def _is_bridge(self, invitation: Invitation) -> bool:
        """The platform's call: the first incoming call while logging in or logged in."""
        if self.campaign_id is None or self.state not in (AgentState.LOGGING_IN, AgentState.READY):
            return False
        if self._bridge is not None and self._bridge.state.value != "terminated":
            return False
        self._bridge = invitation
        return True

    def _accepts_calls_now(self) -> bool:
        return self.state is AgentState.LOGGING_IN  # the platform calls before login answers

    async def _expiry_watch(self) -> None:
        left = self.params.seconds_left()
        lead = expiry_lead(left, self.expiry_warning)
        await asyncio.sleep(max(0.0, left - lead))
        left = self.params.seconds_left()
        log.warning("%s: the session expires in %.0f s (expire_date %s)", self.name, max(left, 0),
                    self.params.expire_date.isoformat())
        self._emit(Expiring(self.params.expire_date, round(max(left, 0.0), 3)))
        await asyncio.sleep(max(0.0, left))
        self.request_stop("expired")

    # --- stop -------------------------------------------------------------------------

    async def _teardown(self) -> None:
        if self.logged_in or self._login_sent:
            # also when the login was cut short (Ctrl-C, an error): it may have reached the platform
            await self._logout()
        await super()._teardown()
        with contextlib.suppress(Exception):
            await self.api.close()

    async def _logout(self) -> None:
        try:
            await asyncio.wait_for(self.api.logout(), self.logout_timeout)
        except PlatformConflictError as exc:
            if not self.logged_in and "not logged in" in exc.message:
                log.info("%s: the interrupted login had not reached the platform", self.name)
                return
            log.error("%s: logout failed: %s", self.name, exc)
            return
        except (PlatformError, TimeoutError) as exc:
            log.error("%s: logout failed: %s", self.name, exc)
            return
        self.logged_in = self._login_sent = False
        self._emit(LoggedOut(self.params.user_id, self.stop_reason or "stop"))
        log.info("%s: logged out", self.name)

    def _after_block(self) -> None:
        if self.stop_reason == "expired":
            raise SessionExpiredError(f"the session reached expire_date {self.params.expire_date.isoformat()}")

    # --- voice API (REST) -------------------------------------------------------------

    def _need_login(self, what: str) -> None:
        if not self.logged_in:
            raise AgentError(f"{what}: the agent is not logged in (give campaign_id)")

    async def dial(self, phone_number: str, *, outbound_cli: str | None = None, unique_id: str | None = None,
                   lead_id: int | None = None) -> PlatformCall:
        """Voice API: the platform places a call to ``phone_number`` for this agent (a conference
        if a call is live).  ``outbound_cli`` defaults to the agent's ``outbound_cli`` option, else
        the extension; ``unique_id`` to a fresh one."""
        self._need_login("dial")
        return await self.api.call(phone_number, outbound_cli=outbound_cli or self.outbound_cli or
                                   str(self.extension), unique_id=unique_id or uuid.uuid4().hex,
                                   lead_id=lead_id)

    async def shotgun(self, phone_numbers: Sequence[str], *, outbound_cli: str | None = None,
                      unique_id: str | None = None, lead_id: int | None = None) -> PlatformCall:
        """Voice API: dial up to five numbers at once; the first to answer is bridged."""
        self._need_login("shotgun")
        return await self.api.shotgun(phone_numbers, outbound_cli=outbound_cli or self.outbound_cli or
                                      str(self.extension), unique_id=unique_id or uuid.uuid4().hex,
                                      lead_id=lead_id)

    async def hangup_call(self, call_id: int) -> ActionResult:
        return await self.api.hangup(call_id)

    async def hold_call(self, call_id: int) -> ActionResult:
        return await self.api.hold(call_id)

    async def retrieve_call(self, call_id: int) -> ActionResult:
        return await self.api.retrieve(call_id)

    async def start_recording(self, call_id: int) -> RecordingResult:
        return await self.api.start_recording(call_id)

    async def stop_recording(self, call_id: int) -> RecordingResult:
        return await self.api.stop_recording(call_id)

    async def dispose(self, call_id: int, code: str) -> ActionResult:
        return await self.api.dispose(call_id, code)

    async def connect_calls(self, call_id_a: int, call_id_b: int) -> ActionResult:
        return await self.api.connect_calls(call_id_a, call_id_b)

    async def active_calls(self) -> list[PlatformCall]:
        return await self.api.active_calls()

    async def campaign_status(self, campaign_id: int | None = None) -> CampaignStatus:
        """The campaign's status (this agent's campaign by default)."""
        cid = campaign_id if campaign_id is not None else self.campaign_id
        if cid is None:
            raise ConfigurationError("campaign_id: none given and the agent has no campaign")
        return await self.api.campaign_status(cid)


def _split(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(launch-parameter flags, agent options) from ``from_url``/``from_env`` keywords."""
    flags = {k: v for k, v in overrides.items() if k in SPECS or k in OVERRIDE_NAMES}
    options = {k: v for k, v in overrides.items() if k not in flags}
    return flags, options


__all__ = ["EXPIRY_WARNING", "Agent", "expiry_lead"]
