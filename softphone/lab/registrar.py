"""The lab's SIP registrar: one binding per provisioned extension, digest-authenticated.

A phone (our agent, SIP.js in a browser, any SIP-over-WebSocket client)
registers ``sip:EXTENSION@DOMAIN`` with digest user = extension and digest
password = the password of the user the extension is provisioned for (the
platform contract).  The registrar answers as a PBX would:

* 400 with the reason for a REGISTER it cannot use (no extension in To, To and
  From naming different AORs, no Contact, a bad ``expires``);
* 404 for an extension nobody provisioned, 403 for one whose ``expire_date``
  has passed (and for a digest user that is not the extension);
* 401 with two challenges, MD5 first (SIP.js 0.15 reads only the first
  ``WWW-Authenticate`` and knows only MD5) then SHA-256 (clients that choose
  the strongest take it), ``qop="auth"``; nonces are stateless
  (:class:`~softphone.sip.digest.NonceStore`) and an expired one that was
  answered correctly earns ``stale=true``; a replayed nonce count is refused;
* 423 with Min-Expires for a too brief expiry; 200 listing the binding's
  Contact with the granted ``expires``.

The password is read from the database for every authenticated REGISTER, so
a password change or a re-provisioning is seen at once.  A binding ends on
``Expires: 0`` ("expires 0"), when its expiry passes without a refresh
("binding expired"), when its WebSocket closes ("websocket closed"), when
another connection registers the same extension ("replaced"), and when the
extension's provisioning expires ("provisioning expired": a timer per binding
plus a periodic re-read of every bound extension's ``expire_date``).  Each end
emits ``unregistered(extension, reason)``; each new binding ``registered(extension)``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import ConfigurationError, SipParseError
from softphone.lab.db import Database
from softphone.log import Secret, get_logger, register_secret
from softphone.sip.digest import (
    ALGORITHM_STRENGTH,
    NonceCounter,
    NonceState,
    NonceStore,
    make_challenge,
    parse_auth_params,
    verify_authorization,
)

log = get_logger(__name__)

#: Challenge order: SIP.js 0.15.11 answers only MD5, and keeps only the *last* WWW-Authenticate
#: of a 401 (its parser replaces the header with each one), so MD5 must come last; our own
#: client takes the strongest it is offered wherever it is.
DEFAULT_ALGORITHMS = ("SHA-256", "MD5")


@dataclass(frozen=True)
class RegistrarOptions:
    """Policy of the registrar; every limit is in seconds."""

    realm: str = "127.0.0.1"
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    min_expires: int = 30
    max_expires: int = 3600
    default_expires: int = 600
    nonce_ttl: float = 300.0
    expiry_check_interval: float = 15.0
    """How often every bound extension's ``expire_date`` is re-read from the database."""

    def __post_init__(self) -> None:
        if not self.realm or any(c in self.realm for c in '"\\\r\n'):
            raise ConfigurationError(f"RegistrarOptions.realm must be a non-empty plain string, got {self.realm!r}")
        if not self.algorithms:
            raise ConfigurationError("RegistrarOptions.algorithms: offer at least one (MD5, SHA-256)")
        for algorithm in self.algorithms:
            if algorithm.upper() not in ALGORITHM_STRENGTH:
                raise ConfigurationError(f"RegistrarOptions.algorithms: {algorithm!r} is not a digest algorithm "
                                         f"({', '.join(ALGORITHM_STRENGTH)})")
        if not 0 <= self.min_expires <= self.default_expires <= self.max_expires:
            raise ConfigurationError(
                f"RegistrarOptions: need 0 <= min_expires ({self.min_expires}) <= default_expires "
                f"({self.default_expires}) <= max_expires ({self.max_expires})")
        for name in ("nonce_ttl", "expiry_check_interval"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"RegistrarOptions.{name} must be > 0 seconds, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ExtensionRecord:
    """A provisioned extension as the database has it now."""

    extension: str
    user_id: int
    expire_date: datetime
    password: Secret

    def expired(self, now: float) -> bool:
        return self.expire_date.timestamp() <= now

    def __repr__(self) -> str:
        return f"ExtensionRecord({self.extension!r}, user_id={self.user_id}, expires={self.expire_date.isoformat()})"


@dataclass(frozen=True)
class RegisterAnswer:
    """What the connection sends back for one REGISTER."""

    status: int
    reason: str
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(eq=False)
class Binding:
    """One registered extension: where it is reachable and until when."""

    extension: str
    contact: Any
    """The registered Contact (:class:`~softphone.sip.uri.NameAddr`)."""
    connection: Any
    """The :class:`~softphone.lab.sip_endpoint.SipConnection` it arrived on."""
    expires: int
    registered_at: float
    refreshed_at: float
    user_agent: str
    algorithm: str
    provisioned_until: datetime
    _expiry_timer: asyncio.TimerHandle | None = field(default=None, repr=False)
    _provisioning_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    @property
    def contact_uri(self) -> Any:
        return self.contact.uri

    @property
    def expires_at(self) -> float:
        return self.refreshed_at + self.expires

    def cancel_timers(self) -> None:
        for timer in (self._expiry_timer, self._provisioning_timer):
            if timer is not None:
                timer.cancel()
        self._expiry_timer = self._provisioning_timer = None

    def as_dict(self, now: float) -> dict[str, Any]:
        """JSON-ready view for the status page (no secrets in a binding)."""
        return {
            "extension": self.extension,
            "contact": str(self.contact_uri),
            "peer": getattr(self.connection, "peer", "?"),
            "transport": getattr(self.connection, "scheme", "?"),
            "user_agent": self.user_agent,
            "algorithm": self.algorithm,
            "registered_for_s": round(now - self.registered_at, 1),
            "expires_in_s": max(0, round(self.expires_at - now)),
            "provisioned_until": self.provisioned_until.isoformat(),
        }


def _parse_expire_date(value: Any) -> datetime:
    dt = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class Registrar(AsyncIOEventEmitter):
    """Bindings of the lab's extensions.  Events: ``registered``(ext), ``unregistered``(ext, reason)."""

    def __init__(self, db: Database, options: RegistrarOptions | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.db = db
        self.options = options or RegistrarOptions()
        self.clock = clock
        self.nonces = NonceStore(ttl=self.options.nonce_ttl, clock=clock)
        self.nonce_counter = NonceCounter()
        self.bindings: dict[str, Binding] = {}
        self.counters: dict[str, int] = {"registered": 0, "challenged": 0, "stale": 0, "refused": 0}
        self._check_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self.on("error", lambda exc: log.error("registrar event listener failed: %s", exc))

    # --- life cycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the periodic provisioning check (needs a running loop)."""
        if self._check_task is None:
            self._check_task = asyncio.get_running_loop().create_task(self._check_loop())

    async def close(self) -> None:
        """Stop the periodic check and drop every binding (reason "lab stopping")."""
        if self._check_task is not None:
            self._check_task.cancel()
            self._check_task = None
        for task in list(self._tasks):
            task.cancel()
        for ext in list(self.bindings):
            self._drop(ext, "lab stopping")

    # --- database -----------------------------------------------------------------------

    async def lookup(self, extension: str) -> ExtensionRecord | None:
        """The extension's owner, expiry and password, read now (never cached)."""
        row = await self.db.run_transaction(lambda tx: tx.fetchone(
            "SELECT e.user_id, e.expire_date, u.password FROM lab_extensions e "
            "JOIN lab_users u ON u.user_id = e.user_id WHERE e.extension = ?", (extension,)), readonly=True)
        if row is None:
            return None
        password = str(row[2])
        register_secret(password)
        try:
            expire = _parse_expire_date(row[1])
        except ValueError:
            log.warning("extension %s has an unreadable expire_date %r: treated as expired", extension, row[1])
            expire = datetime.fromtimestamp(0, UTC)
        return ExtensionRecord(extension, int(row[0]), expire, Secret(password))

    async def _expiry_dates(self, extensions: list[str]) -> dict[str, datetime]:
        rows = await self.db.run_transaction(lambda tx: tx.fetchall(
            "SELECT extension, expire_date FROM lab_extensions"), readonly=True)
        wanted = set(extensions)
        out: dict[str, datetime] = {}
        for ext, value in rows:
            if str(ext) in wanted:
                try:
                    out[str(ext)] = _parse_expire_date(value)
                except ValueError:
                    out[str(ext)] = datetime.fromtimestamp(0, UTC)
        return out

    # --- REGISTER -------------------------------------------------------------------------

    async def register(self, request: Any, connection: Any) -> RegisterAnswer:
        """Process one REGISTER that arrived on ``connection``; the answer to send."""
        try:
            answer = await self._register(request, connection)
        except SipParseError as exc:
            answer = RegisterAnswer(400, f"Bad Request ({exc.reason})")
        if answer.status >= 300 and answer.status != 401:
            self.counters["refused"] += 1
            log.info("REGISTER from %s refused: %d %s", getattr(connection, "peer", "?"), answer.status,
                     answer.reason)
        return answer

    async def _register(self, request: Any, connection: Any) -> RegisterAnswer:
        to_uri = request.to.uri
        extension = to_uri.user
        if not extension:
            return RegisterAnswer(400, "Bad Request (the To URI names no extension)")
        from_uri = request.from_.uri
        if (from_uri.user or "") != extension or (from_uri.host or "").lower() != (to_uri.host or "").lower():
            return RegisterAnswer(400, "Bad Request (To and From name different AORs: "
                                       "third-party registration is not supported)")
        wildcard = request.contact_wildcard
        contacts = request.contact
        if wildcard and contacts:
            return RegisterAnswer(400, "Bad Request (Contact '*' mixed with addresses)")
        if not wildcard and not contacts:
            return RegisterAnswer(400, "Bad Request (no Contact: binding queries are not supported)")
        if len(contacts) > 1:
            return RegisterAnswer(400, "Bad Request (one Contact per REGISTER)")
        header_expires = request.expires  # SipParseError -> 400 naming Expires
        if wildcard:
            if header_expires != 0:
                return RegisterAnswer(400, "Bad Request (Contact '*' needs Expires: 0)")
            requested = 0
        else:
            raw = contacts[0].params.get("expires")
            if raw is not None:
                if not str(raw).isdigit() or len(str(raw)) > 10:
                    return RegisterAnswer(400, f"Bad Request (Contact expires={str(raw)[:20]!r} is not a number)")
                requested = int(raw)
            elif header_expires is not None:
                requested = header_expires
            else:
                requested = self.options.default_expires

        record = await self.lookup(extension)
        if record is None:
            return RegisterAnswer(404, f"Not Found (extension {extension} is not provisioned)")
        now = self.clock()
        if record.expired(now):
            return RegisterAnswer(403, f"Forbidden (extension {extension} expired at "
                                       f"{record.expire_date.isoformat()})")
        verdict = self._authenticate(request, record)
        if isinstance(verdict, RegisterAnswer):
            return verdict
        algorithm = verdict

        if requested == 0:
            binding = self.bindings.get(extension)
            if binding is not None and (wildcard or binding.connection is connection
                                        or str(binding.contact_uri) == str(contacts[0].uri)):
                self._drop(extension, "expires 0")
            return RegisterAnswer(200, "OK")
        if requested < self.options.min_expires:
            return RegisterAnswer(423, "Interval Too Brief", [("Min-Expires", str(self.options.min_expires))])
        granted = min(requested, self.options.max_expires)
        binding = self._bind(extension, contacts[0], connection, granted, record, algorithm,
                             request.headers.get("User-Agent") or "")
        contact = binding.contact
        params = {k: v for k, v in contact.params.items() if k != "expires"}
        params["expires"] = str(granted)
        shown = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())
        return RegisterAnswer(200, "OK", [("Contact", f"<{contact.uri}>{shown}")])

    def _authenticate(self, request: Any, record: ExtensionRecord) -> str | RegisterAnswer:
        """The digest algorithm used, or the 401/403 to send."""
        header = request.headers.get("Authorization")
        if not header:
            return self._challenge(stale=False)
        try:
            scheme, params = parse_auth_params(header)
        except SipParseError:
            return self._challenge(stale=False)
        if scheme.lower() != "digest" or params.get("realm") != self.options.realm:
            return self._challenge(stale=False)
        username = params.get("username")
        if username is not None and username != record.extension:
            return RegisterAnswer(403, f"Forbidden (digest user {username[:40]!r} is not extension "
                                       f"{record.extension})")
        nonce = params.get("nonce", "")
        state = self.nonces.state(nonce)
        password = record.password.reveal()

        def lookup(user: str) -> str | None:
            return password if user == record.extension else None

        if state is NonceState.UNKNOWN:
            return self._challenge(stale=False)
        if state is NonceState.STALE:
            # Right answer to a nonce we issued that has since expired: "stale", retry allowed.
            ok = verify_authorization(header, request.method, lookup, self.options.realm, request.body or "")
            return self._challenge(stale=ok is not None)
        user = verify_authorization(header, request.method, lookup, self.options.realm, request.body or "",
                                    nonce_counter=self.nonce_counter)
        if user is None:
            log.info("REGISTER for %s: digest answer rejected", record.extension)
            return self._challenge(stale=False)
        return params.get("algorithm", "MD5").upper()

    def _challenge(self, stale: bool) -> RegisterAnswer:
        nonce = self.nonces.issue()
        self.counters["stale" if stale else "challenged"] += 1
        headers = [("WWW-Authenticate", make_challenge(self.options.realm, algorithm, ("auth",), stale=stale,
                                                       nonce=nonce)[0])
                   for algorithm in self.options.algorithms]
        return RegisterAnswer(401, "Unauthorized", headers)

    # --- bindings -----------------------------------------------------------------------

    def _bind(self, extension: str, contact: Any, connection: Any, granted: int, record: ExtensionRecord,
              algorithm: str, user_agent: str) -> Binding:
        now = self.clock()
        old = self.bindings.get(extension)
        if old is not None and old.connection is not connection:
            log.info("extension %s registered again from %s: the binding from %s is replaced", extension,
                     getattr(connection, "peer", "?"), getattr(old.connection, "peer", "?"))
            self._drop(extension, "replaced by a registration on another connection")
            old = None
        if old is not None:
            binding = old
            binding.cancel_timers()
            binding.contact = contact
            binding.expires = granted
            binding.refreshed_at = now
            binding.algorithm = algorithm
            binding.provisioned_until = record.expire_date
            new = False
        else:
            binding = Binding(extension, contact, connection, granted, now, now, user_agent[:80], algorithm,
                              record.expire_date)
            self.bindings[extension] = binding
            new = True
        loop = asyncio.get_running_loop()
        binding._expiry_timer = loop.call_later(granted, self._expired, extension, binding)
        self._arm_provisioning(binding)
        if new:
            self.counters["registered"] += 1
            log.info("extension %s registered from %s (%s) for %ds", extension, getattr(connection, "peer", "?"),
                     algorithm, granted)
            self.emit("registered", extension)
        return binding

    def _arm_provisioning(self, binding: Binding) -> None:
        if binding._provisioning_timer is not None:
            binding._provisioning_timer.cancel()
        delay = binding.provisioned_until.timestamp() - self.clock()
        # Far-away dates are covered by the periodic check; no timer for decades.
        if delay <= self.options.expiry_check_interval * 4:
            binding._provisioning_timer = asyncio.get_running_loop().call_later(
                max(0.0, delay), self._provisioning_due, binding.extension, binding)
        else:
            binding._provisioning_timer = None

    def _expired(self, extension: str, binding: Binding) -> None:
        if self.bindings.get(extension) is binding:
            log.info("extension %s: binding expired (not refreshed within %ds)", extension, binding.expires)
            self._drop(extension, "binding expired")

    def _provisioning_due(self, extension: str, binding: Binding) -> None:
        binding._provisioning_timer = None
        task = asyncio.get_running_loop().create_task(self._recheck(extension, binding))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recheck(self, extension: str, binding: Binding) -> None:
        """The provisioning timer fired: drop unless the extension was re-provisioned meanwhile."""
        try:
            record = await self.lookup(extension)
        except Exception as exc:  # the database is away: keep the binding, the next check decides
            log.warning("provisioning check of %s failed: %s", extension, exc)
            return
        if self.bindings.get(extension) is not binding:
            return
        if record is None or record.expired(self.clock()):
            self._drop(extension, "provisioning expired")
        else:
            binding.provisioned_until = record.expire_date
            self._arm_provisioning(binding)

    async def check_provisioning(self) -> list[str]:
        """Re-read every bound extension's expire_date; drop the expired ones (returned)."""
        if not self.bindings:
            return []
        snapshot = list(self.bindings.items())
        dates = await self._expiry_dates([ext for ext, _ in snapshot])
        now = self.clock()
        dropped = []
        for ext, binding in snapshot:
            if self.bindings.get(ext) is not binding:
                continue  # registered (or dropped) while the dates were read: not in this check
            expire = dates.get(ext)
            if expire is None or expire.timestamp() <= now:
                self._drop(ext, "provisioning expired")
                dropped.append(ext)
            elif expire != binding.provisioned_until:
                binding.provisioned_until = expire
                self._arm_provisioning(binding)
        return dropped

    async def _check_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.expiry_check_interval)
            try:
                await self.check_provisioning()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("periodic provisioning check failed: %s", exc)

    def drop_connection(self, connection: Any, reason: str = "websocket closed") -> list[str]:
        """The WebSocket closed: every binding it carried ends."""
        gone = [ext for ext, b in self.bindings.items() if b.connection is connection]
        for ext in gone:
            self._drop(ext, reason)
        return gone

    def _drop(self, extension: str, reason: str) -> None:
        binding = self.bindings.pop(extension, None)
        if binding is None:
            return
        binding.cancel_timers()
        log.info("extension %s unregistered: %s", extension, reason)
        self.emit("unregistered", extension, reason)

    def unbind(self, extension: str, reason: str) -> bool:
        """Drop ``extension``'s binding (tests, operators); False if it had none."""
        if extension not in self.bindings:
            return False
        self._drop(extension, reason)
        return True
