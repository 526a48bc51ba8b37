"""The SIP user agent an application holds: transport + core + registerer + sessions.

``async with UserAgent(config) as ua:`` connects, registers, and on exit ends
every call, unregisters and closes the WebSocket, so no binding or call is
left behind.  Incoming INVITEs become :class:`Invitation` objects handled by
the configured :class:`AnswerPolicy`; ``ua.invite(target)`` makes an
:class:`Inviter`.  After the transport reconnects (registrar restart, network
loss) the registration is renewed without any action by the caller.

Events: ``invite`` (Invitation), ``connected``, ``disconnected`` (reason),
``reconnecting`` (attempt, delay), ``registered`` (expires), ``unregistered``
(reason), ``registration_failed`` (error), ``message`` / ``notify`` (request).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone import __version__
from softphone.errors import AuthenticationError, ConfigurationError, SipError
from softphone.log import Secret, get_logger
from softphone.sip.core import CoreConfig, UserAgentCore
from softphone.sip.description_handler import SessionDescriptionHandlerFactory
from softphone.sip.invitation import AnswerPolicy, Invitation
from softphone.sip.inviter import Inviter
from softphone.sip.null_handler import null_handler_factory
from softphone.sip.registerer import Registerer, RegistererOptions
from softphone.sip.session import Session, SessionState
from softphone.sip.timers import Timers
from softphone.sip.transaction import InviteServerTransaction, ServerTransaction
from softphone.sip.transport import (
    KeepAlive,
    Reconnect,
    TlsOptions,
    Transport,
    WebSocketTransport,
    WebSocketTransportOptions,
)

log = get_logger(__name__)


#: calls an agent (a Webphone) takes at once; more INVITEs are answered 486 Busy Here
AGENT_MAX_CALLS = 1


@dataclass
class UserAgentConfig:
    """Everything one SIP user agent needs; only ``ws_url`` and ``aor`` are required."""

    ws_url: str
    aor: str
    """``sip:EXT@DOMAIN``."""
    password: Secret | str | None = None
    auth_username: str | None = None
    """Digest user name; the AOR's user part when not given."""
    display_name: str | None = None
    register: bool = True
    register_expires: int = 600
    keep_alive: KeepAlive = field(default_factory=KeepAlive)
    reconnect: Reconnect = field(default_factory=Reconnect)
    timers: Timers = field(default_factory=Timers)
    ca_file: str | None = None
    insecure: bool = False
    description_handler_factory: SessionDescriptionHandlerFactory = null_handler_factory
    answer_policy: AnswerPolicy = field(default_factory=AnswerPolicy)
    user_agent: str = f"softphone/{__version__}"
    connect_timeout: float = 10.0
    max_calls: int | None = None
    """Calls at once (incoming and outgoing); a new INVITE beyond it gets 486 Busy Here before
    any media is set up.  None: no limit (a trunk, a test hub); an agent has
    :data:`AGENT_MAX_CALLS`, as a phone."""

    def __post_init__(self) -> None:
        if self.password is not None and not isinstance(self.password, Secret):
            self.password = Secret(self.password)
        if not self.ws_url.startswith(("ws://", "wss://")):
            raise ConfigurationError(f"ws_url must start with ws:// or wss://, got {self.ws_url!r}")
        if not self.aor.startswith(("sip:", "sips:")) or "@" not in self.aor:
            raise ConfigurationError(f"aor must look like sip:EXTENSION@DOMAIN, got {self.aor!r}")
        if self.register_expires < 0:
            raise ConfigurationError(f"register_expires must be >= 0, got {self.register_expires}")
        if self.max_calls is not None and self.max_calls < 1:
            raise ConfigurationError(f"max_calls must be >= 1 (or None for no limit), got {self.max_calls}")

    @classmethod
    def from_params(cls, params: Any, extension: str, **overrides: Any) -> UserAgentConfig:
        """The Webphone's SIP settings for ``extension``: the launch parameters' WebSocket URL,
        AOR ``sip:{extension}@{sip_domain}``, digest user = extension, password = ``password``.

        ``params`` is a :class:`softphone.params.LaunchParams` (its ``ca_file`` override, when
        given, is trusted for ``wss://``); ``overrides`` set any other field (``ca_file``,
        ``insecure``, ``description_handler_factory``, ...).
        """
        extension = str(extension).strip()
        if not extension:
            raise ConfigurationError("extension: empty; nothing to register")
        derived = params.derived
        values: dict[str, Any] = dict(ws_url=derived.sip_ws_url, aor=f"sip:{extension}@{derived.sip_domain}",
                                      password=params.password, auth_username=extension,
                                      ca_file=getattr(derived, "ca_file", None))
        values["max_calls"] = AGENT_MAX_CALLS  # an agent is a phone: one call at a time
        values.update(overrides)
        return cls(**values)

    def __repr__(self) -> str:
        return (f"UserAgentConfig(ws_url={self.ws_url!r}, aor={self.aor!r}, "
                f"auth_username={self.auth_username!r}, password={'***' if self.password else None})")


class UserAgentState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    STARTED = "started"
    STOPPING = "stopping"


class UserAgent(AsyncIOEventEmitter):
    def __init__(self, config: UserAgentConfig, *, transport: Transport | None = None) -> None:
        super().__init__()
        self.config = config
        self.state = UserAgentState.STOPPED
        if transport is None:
            transport = WebSocketTransport(WebSocketTransportOptions(
                url=config.ws_url, keep_alive=config.keep_alive, reconnect=config.reconnect,
                tls=TlsOptions(ca_file=config.ca_file, insecure=config.insecure),
                connect_timeout=config.connect_timeout))
        self.transport = transport
        self.core = UserAgentCore(CoreConfig(
            aor=config.aor, auth_username=config.auth_username, password=config.password,  # type: ignore[arg-type]
            display_name=config.display_name, timers=config.timers, user_agent=config.user_agent,
        ), transport, delegate=self)
        self.registerer = Registerer(self.core, RegistererOptions(expires=config.register_expires))
        self.sessions: set[Session] = set()
        #: INVITEs answered 486 because ``config.max_calls`` calls were up
        self.busy_rejected = 0
        self._tasks: set[asyncio.Task] = set()
        self._wire_events()

    def _wire_events(self) -> None:
        t = self.transport
        t.on("connected", self._on_connected)
        t.on("disconnected", self._on_disconnected)
        t.on("reconnecting", lambda attempt, delay: self.emit("reconnecting", attempt, delay))
        r = self.registerer
        r.on("registered", lambda expires: self.emit("registered", expires))
        r.on("unregistered", lambda reason: self.emit("unregistered", reason))
        r.on("failed", lambda error: self.emit("registration_failed", error))

    def _move(self, state: UserAgentState) -> None:
        """The one place the life-cycle state changes."""
        if state is not self.state:
            log.debug("user agent %s: %s -> %s", self.aor, self.state.value, state.value)
            self.state = state

    @property
    def aor(self) -> str:
        return self.config.aor

    @property
    def registered(self) -> bool:
        return self.registerer.registered

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and (unless ``register=False``) register; raises on failure."""
        if self.state is not UserAgentState.STOPPED:
            raise SipError(f"user agent {self.aor} is {self.state.value}")
        self._move(UserAgentState.STARTING)
        try:
            await self.transport.connect()
            if self.config.register:
                await self.registerer.register()
        except BaseException:
            await self._shutdown()
            raise
        self._move(UserAgentState.STARTED)

    async def stop(self) -> None:
        """End every call, unregister, close the connection."""
        if self.state in (UserAgentState.STOPPED, UserAgentState.STOPPING):
            return
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._move(UserAgentState.STOPPING)
        timers = self.config.timers
        for session in list(self.sessions):
            try:
                await asyncio.wait_for(self._end_session(session), timers.timer_f + 1)
            except (SipError, TimeoutError) as exc:
                log.warning("ending call %s on stop: %s", session.call_id, exc)
        try:
            await asyncio.wait_for(self.registerer.dispose(), timers.timer_f + 1)
        except (SipError, TimeoutError) as exc:
            log.warning("unregister on stop: %s", exc)
        for task in list(self._tasks):
            task.cancel()
        self.core.close()
        await self.transport.close()
        self._move(UserAgentState.STOPPED)

    async def _end_session(self, session: Session) -> None:
        if session.state is SessionState.ESTABLISHED:
            await session.bye("user agent stopped")
        elif isinstance(session, Invitation) and session.state is SessionState.ESTABLISHING:
            try:
                await session.reject(480, "Temporarily Unavailable")
            except SipError:
                pass
        elif isinstance(session, Inviter) and session.state is SessionState.ESTABLISHING:
            await session.cancel("user agent stopped")
            await session.wait_terminated(self.config.timers.timer_b)

    async def __aenter__(self) -> UserAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- transport events --------------------------------------------------------------

    def _on_connected(self) -> None:
        self.emit("connected")
        if self.state is UserAgentState.STARTED and self.config.register:
            self._spawn(self._reregister())

    async def _reregister(self) -> None:
        """Register again on a fresh connection; keep trying (backing off) while connected."""
        attempt = 0
        while self.state is UserAgentState.STARTED and self.transport.connected:
            attempt += 1
            try:
                await self.registerer.register()
                return
            except SipError as exc:
                delay = self.config.reconnect.delay(attempt)
                log.warning("re-registration of %s after reconnect failed (%s); retrying in %.2fs",
                            self.aor, exc, delay)
                if isinstance(exc, AuthenticationError):
                    return  # the credentials are wrong: retrying will not help
                await asyncio.sleep(delay)

    def _on_disconnected(self, reason: str) -> None:
        self.emit("disconnected", reason)
        self.registerer.transport_lost(reason)

    # --- calls ------------------------------------------------------------------------

    def target_uri(self, target: str) -> str:
        """``1002`` -> ``sip:1002@DOMAIN``; full SIP URIs pass through."""
        if target.startswith(("sip:", "sips:")):
            return target
        if "@" in target:
            return f"sip:{target}"
        return f"sip:{target}@{self.core.config.domain}"

    def invite(self, target: str, *, extra_headers: list[tuple[str, str]] | None = None,
               no_answer_timeout: float = 120.0,
               handler_factory: SessionDescriptionHandlerFactory | None = None) -> Inviter:
        """A new outgoing call; ``await inviter.invite()`` sends it."""
        inviter = Inviter(self.core, self.target_uri(target),
                          handler_factory or self.config.description_handler_factory,
                          extra_headers=extra_headers, no_answer_timeout=no_answer_timeout)
        self._track(inviter)
        return inviter

    async def call(self, target: str, **kwargs: Any) -> Inviter:
        """Invite and wait until answered; returns the established session."""
        inviter = self.invite(target, **kwargs)
        await inviter.invite()
        return inviter

    async def message(self, target: str, body: str, content_type: str = "text/plain") -> Any:
        """Send an out-of-dialog MESSAGE (RFC 3428); returns the final response, raises on 3xx-6xx."""
        uri = self.target_uri(target)
        request = self.core.create_request("MESSAGE", uri, to=f"<{uri}>", body=body,
                                           content_type=content_type)
        response = await self.core.request(request).response()
        if response.status >= 300:
            raise SipError(f"MESSAGE to {uri} rejected: {response.status} {response.reason}")
        return response

    def _track(self, session: Session) -> None:
        self.sessions.add(session)
        session.on("terminated", lambda *_: self.sessions.discard(session))

    # --- RequestDelegate -------------------------------------------------------------------

    def on_invite(self, request: Any, transaction: InviteServerTransaction) -> None:
        if self.state is not UserAgentState.STARTED:
            self.core.reply(transaction, 480, "Temporarily Unavailable")
            return
        if not request.contact:
            self.core.reply(transaction, 400, "Bad Request (missing Contact)")
            return
        limit = self.config.max_calls
        if limit is not None and len(self.sessions) >= limit:
            # before the Invitation exists: no description handler, so no media, for a flood
            self.busy_rejected += 1
            self.core.reply(transaction, 486, "Busy Here")
            log.debug("INVITE %s: 486, already %d call(s) of max %d", request.call_id, len(self.sessions), limit)
            return
        invitation = Invitation(self.core, request, transaction, self.config.description_handler_factory)
        self._track(invitation)
        self.emit("invite", invitation)
        invitation._spawn(invitation.apply_policy(self.config.answer_policy))

    def on_out_of_dialog_request(self, request: Any, transaction: ServerTransaction) -> bool:
        self.core.reply(transaction, 200, "OK")
        self.emit(request.method.lower(), request)
        return True
