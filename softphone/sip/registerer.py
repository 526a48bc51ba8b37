"""REGISTER and keep registered (RFC 3261 section 10), as SIP.js's Registerer.

One Call-ID for the life of the registration and an increasing CSeq, the
SIP.js default of 600 s, a refresh at 99 % of the expiry the registrar
granted for *our* Contact, ``423 Interval Too Brief`` answered with the
registrar's Min-Expires, and an un-REGISTER (expires 0) on close.  The user
agent calls :meth:`Registerer.transport_lost` and :meth:`register` around a
reconnection, so a registration survives a registrar restart.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import AuthenticationError, RegistrationError, SipError
from softphone.log import get_logger
from softphone.sip.core import UserAgentCore
from softphone.sip.message import generate_call_id

log = get_logger(__name__)


class RegistererState(enum.Enum):
    INITIAL = "initial"
    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    TERMINATED = "terminated"


_ALLOWED = {
    RegistererState.INITIAL: {RegistererState.REGISTERED, RegistererState.UNREGISTERED,
                              RegistererState.TERMINATED},
    RegistererState.REGISTERED: {RegistererState.UNREGISTERED, RegistererState.TERMINATED},
    RegistererState.UNREGISTERED: {RegistererState.REGISTERED, RegistererState.TERMINATED},
    RegistererState.TERMINATED: set(),
}


@dataclass(frozen=True)
class RegistererOptions:
    expires: int = 600
    """Requested binding lifetime in seconds (SIP.js default)."""
    refresh_frequency: float = 0.99
    """Refresh after this fraction of the granted expiry (SIP.js: 99 %)."""
    retry_interval: float = 30.0
    """After a failed refresh, try again this many seconds later."""
    max_interval_retries: int = 2
    """How many 423 Interval Too Brief are followed before giving up."""


class Registerer(AsyncIOEventEmitter):
    """Events: ``registered`` (expires), ``refreshed`` (expires), ``unregistered`` (reason),
    ``failed`` (error), ``state`` (RegistererState)."""

    def __init__(self, core: UserAgentCore, options: RegistererOptions | None = None) -> None:
        super().__init__()
        self.core = core
        self.options = options or RegistererOptions()
        if self.options.expires < 0:
            raise SipError(f"register expires must be >= 0, got {self.options.expires}")
        self.state = RegistererState.INITIAL
        self.call_id = generate_call_id()
        self._cseq = 0
        self.expires = self.options.expires
        self.granted_expires: int | None = None
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._refresh_task: asyncio.Task | None = None
        self._register_lock = asyncio.Lock()
        self.last_response: Any = None

    @property
    def registrar(self) -> str:
        return f"sip:{self.core.config.domain}"

    @property
    def registered(self) -> bool:
        return self.state is RegistererState.REGISTERED

    def _move(self, state: RegistererState, reason: str = "") -> None:
        if state is self.state:
            return
        if state not in _ALLOWED[self.state]:
            raise SipError(f"registerer cannot go from {self.state.value} to {state.value}")
        log.debug("registerer %s: %s -> %s", self.core.config.aor, self.state.value, state.value)
        previous, self.state = self.state, state
        self.emit("state", state)
        if state is RegistererState.UNREGISTERED and previous is RegistererState.REGISTERED:
            self.emit("unregistered", reason or "unregistered")

    def _next_cseq(self) -> int:
        self._cseq += 1
        return self._cseq

    def _request(self, expires: int) -> Any:
        core = self.core
        contact = core.contact(register=True, expires=expires)
        extra = [("Expires", "0")] if expires == 0 else []
        return core.create_request(
            "REGISTER", self.registrar, to=f"<{core.config.aor}>", call_id=self.call_id,
            cseq=self._next_cseq(), contact=contact, extra_headers=extra,
        )

    async def register(self) -> int:
        """Register (or refresh) now; returns the granted expiry in seconds."""
        if self.state is RegistererState.TERMINATED:
            raise RegistrationError(f"registerer for {self.core.config.aor} is terminated")
        self._cancel_refresh()
        async with self._register_lock:
            try:
                expires = await self._register_once(self.expires)
            except SipError as exc:
                self._move(RegistererState.UNREGISTERED, str(exc))
                self.emit("failed", exc)
                raise
            if expires == 0:
                self._move(RegistererState.UNREGISTERED, "registrar granted 0 seconds")
                return 0
            was = self.state
            self._move(RegistererState.REGISTERED)
            self.granted_expires = expires
            self._schedule_refresh(expires)
            self.emit("registered" if was is not RegistererState.REGISTERED else "refreshed", expires)
            log.info("registered %s for %ds", self.core.config.aor, expires)
            return expires

    async def _register_once(self, expires: int) -> int:
        aor = self.core.config.aor
        interval_retries = 0
        while True:
            request = self._request(expires)
            outgoing = self.core.request(request, next_cseq=self._next_cseq)
            try:
                response = await outgoing.response()
            except AuthenticationError:
                raise
            except TimeoutError as exc:
                raise RegistrationError(f"REGISTER for {aor} got no final response: {exc}") from exc
            except SipError as exc:
                raise RegistrationError(f"REGISTER for {aor} failed: {exc}") from exc
            self.last_response = response
            if 200 <= response.status < 300:
                return self._granted(response, expires)
            if response.status == 423 and interval_retries < self.options.max_interval_retries:
                min_expires = response.headers.get("Min-Expires")
                try:
                    wanted = int(str(min_expires).strip())
                except (TypeError, ValueError):
                    raise RegistrationError(
                        f"REGISTER for {aor}: 423 Interval Too Brief without a valid Min-Expires "
                        f"({min_expires!r})") from None
                if wanted <= expires:
                    raise RegistrationError(
                        f"REGISTER for {aor}: 423 with Min-Expires {wanted} not above {expires}")
                log.info("registrar wants at least %ds (asked %d)", wanted, expires)
                expires = self.expires = wanted
                interval_retries += 1
                continue
            raise RegistrationError(f"REGISTER for {aor} rejected: {response.status} {response.reason}")

    def _granted(self, response: Any, requested: int) -> int:
        """Our binding's expiry: its Contact ``expires`` param, else the Expires header."""
        config = self.core.config
        for addr in response.contact:
            uri = addr.uri
            instance = str(addr.params.get("+sip.instance", "")).strip('"')
            ours = (uri.user == config.contact_user and (uri.host or "").lower() == config.via_host.lower()) \
                or (instance and config.instance_id in instance)
            if ours:
                value = addr.params.get("expires")
                if value is not None:
                    try:
                        return int(value)
                    except ValueError:
                        log.warning("registrar returned a bad expires=%r for our contact", value)
                break
        else:
            if requested:
                log.warning("200 to REGISTER does not list our Contact; assuming %ds", requested)
        header = response.headers.get("Expires")
        if header is not None:
            try:
                return int(str(header).strip())
            except ValueError:
                log.warning("registrar returned a bad Expires header %r", header)
        return requested

    def _schedule_refresh(self, expires: int) -> None:
        self._cancel_refresh()
        delay = max(0.0, expires * self.options.refresh_frequency)
        loop = asyncio.get_running_loop()
        self._refresh_handle = loop.call_later(delay, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh_handle = None
        self._refresh_task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        try:
            await self.register()
        except SipError as exc:
            log.warning("registration refresh for %s failed: %s", self.core.config.aor, exc)
            if self.state is not RegistererState.TERMINATED and self.core.transport.connected:
                self._refresh_handle = asyncio.get_running_loop().call_later(
                    self.options.retry_interval, self._refresh_now)

    def _cancel_refresh(self) -> None:
        if self._refresh_handle is not None:
            self._refresh_handle.cancel()
            self._refresh_handle = None

    def transport_lost(self, reason: str) -> None:
        """The connection is gone, so is our reachable binding: stop refreshing."""
        self._cancel_refresh()
        if self.state is RegistererState.REGISTERED:
            self._move(RegistererState.UNREGISTERED, f"connection lost: {reason}")

    async def unregister(self) -> None:
        """Remove our binding (Contact ``expires=0``)."""
        self._cancel_refresh()
        if self.state is not RegistererState.REGISTERED:
            return
        async with self._register_lock:
            try:
                outgoing = self.core.request(self._request(0), next_cseq=self._next_cseq)
                response = await outgoing.response()
                if response.status >= 300:
                    log.warning("un-REGISTER of %s answered %d %s", self.core.config.aor,
                                response.status, response.reason)
            except (SipError, TimeoutError) as exc:
                log.warning("un-REGISTER of %s failed: %s", self.core.config.aor, exc)
            self._move(RegistererState.UNREGISTERED, "unregistered")

    async def dispose(self) -> None:
        """Unregister if registered, then stop for good."""
        if self.state is RegistererState.TERMINATED:
            return
        if self.core.transport.connected:
            await self.unregister()
        self._cancel_refresh()
        if self._refresh_task is not None and self._refresh_task is not asyncio.current_task():
            self._refresh_task.cancel()
        self._move(RegistererState.TERMINATED)
