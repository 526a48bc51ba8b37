"""In-memory SIP network for unit tests: fake transports and a tiny proxy/registrar.

:class:`LoopbackHub` behaves like the part of Kamailio the user agents rely
on: a registrar (digest MD5 ``qop=auth`` optional, Min-Expires, granted
expiry in the Contact), and a stateless record-routing proxy that forwards
requests to registered contacts (or to the UA owning the Request-URI host,
for in-dialog requests) and responses back along the Via path.  Every
message is delivered on a later loop iteration, as a network would, and is
recorded in :attr:`LoopbackHub.log`; ``interceptors`` let a test drop,
rewrite or answer any message.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from softphone.errors import SipParseError, TransportError
from softphone.log import get_logger
from softphone.sip.message import Via, generate_tag, make_response, parse_message
from softphone.sip.timers import Timers
from softphone.sip.transport import Reconnect, Transport, TransportState
from softphone.sip.user_agent import UserAgent, UserAgentConfig

log = get_logger(__name__)

HUB_HOST = "hub.invalid"


class FakeTransport(Transport):
    """A :class:`Transport` whose frames go to a :class:`LoopbackHub`."""

    def __init__(self, hub: LoopbackHub, name: str) -> None:
        super().__init__()
        self.hub = hub
        self.name = name
        self.sent: list[str] = []
        self.refuse_connect = False

    @property
    def via_transport(self) -> str:
        return "WS"

    async def connect(self) -> None:
        if self._state is TransportState.CLOSED:
            raise TransportError(f"fake transport {self.name} is closed")
        if self.refuse_connect:
            raise TransportError(f"fake transport {self.name}: connection refused")
        self._set_state(TransportState.CONNECTED)
        self.emit("connected")

    async def close(self) -> None:
        if self._state is TransportState.CLOSED:
            return
        was = self.connected
        self._set_state(TransportState.CLOSED)
        if was:
            self.emit("disconnected", "closed by us")
        self.emit("closed")

    def send_text(self, text: str) -> None:
        if not self.connected:
            raise TransportError(f"fake transport {self.name} is {self._state.value}")
        self.sent.append(text)
        asyncio.get_running_loop().call_soon(self.hub.route, self, text)

    def deliver(self, text: str) -> None:
        """The hub hands us a frame (on the next loop iteration)."""
        if self.connected:
            asyncio.get_running_loop().call_soon(self._deliver_now, text)

    def _deliver_now(self, text: str) -> None:
        if self.connected:
            self.receive_text(text)

    def drop(self, reason: str = "connection lost") -> None:
        """Simulate a network loss."""
        if self.connected:
            self._set_state(TransportState.DISCONNECTED)
            self.emit("disconnected", reason)

    def restore(self) -> None:
        """Simulate a successful reconnection."""
        if self._state is TransportState.DISCONNECTED:
            self.emit("reconnecting", 1, 0.0)
            self._set_state(TransportState.CONNECTED)
            self.emit("connected")


@dataclass
class Binding:
    contact: str
    uri: Any
    transport: FakeTransport
    expires: int


Interceptor = Callable[[Any, FakeTransport], bool]
"""Sees every parsed message from a transport; returning True swallows it."""


@dataclass
class LoopbackHub:
    """A registrar + record-routing proxy in memory."""

    domain: str = "example.test"
    users: dict[str, str] | None = None
    """extension -> password: digest authentication is required when set."""
    min_expires: int = 0
    max_expires: int = 3600
    record_route: bool = True
    auth_invites: bool = False
    """Challenge out-of-dialog INVITEs with 407 Proxy-Authenticate (needs ``users``)."""
    stale_nonces: bool = False
    """Answer the first authorized REGISTER with a ``stale=true`` challenge."""
    interceptors: list[Interceptor] = field(default_factory=list)
    log: list[tuple[str, Any]] = field(default_factory=list)
    bindings: dict[str, Binding] = field(default_factory=dict)
    unparsable: list[tuple[str, str]] = field(default_factory=list)
    """Frames a user agent sent that do not parse: should stay empty."""

    def __post_init__(self) -> None:
        self._transports: dict[str, FakeTransport] = {}
        self._hosts: dict[str, FakeTransport] = {}
        self._branches: dict[str, FakeTransport] = {}
        self._forwarded_branch: dict[str, str] = {}
        self._counter = itertools.count(1)
        self._nonces: set[str] = set()
        self._stale_sent: set[str] = set()
        self.realm = self.domain

    def transport(self, name: str) -> FakeTransport:
        t = FakeTransport(self, name)
        self._transports[name] = t
        return t

    def messages(self, kind: str | None = None, source: str | None = None) -> list[Any]:
        """Recorded messages: ``kind`` is a method (``"INVITE"``) or a status (``"200"``)."""
        out = []
        for src, msg in self.log:
            if source is not None and src != source:
                continue
            if kind is not None:
                label = getattr(msg, "method", None) or str(getattr(msg, "status", ""))
                if label != kind:
                    continue
            out.append(msg)
        return out

    # --- routing ---------------------------------------------------------------------

    def route(self, source: FakeTransport, text: str) -> None:
        try:
            msg = parse_message(text)
        except SipParseError:
            log.warning("hub: unparsable frame from %s dropped", source.name)
            self.unparsable.append((source.name, text))
            return
        self.log.append((source.name, parse_message(text)))  # a copy routing will not touch
        for interceptor in list(self.interceptors):
            if interceptor(msg, source):
                return
        if getattr(msg, "method", None):
            self._route_request(source, msg)
        else:
            self._route_response(msg)

    def send_to(self, transport: FakeTransport, message: Any) -> None:
        text = message if isinstance(message, str) else message.encode().decode()
        transport.deliver(text)

    def respond(self, source: FakeTransport, request: Any, status: int, reason: str | None = None,
                headers: list[tuple[str, str]] | None = None) -> None:
        to_tag = None if status == 100 else generate_tag()
        self.send_to(source, make_response(request, status, reason, to_tag=to_tag, headers=headers))

    def _route_request(self, source: FakeTransport, req: Any) -> None:
        via = req.top_via
        if via is not None:
            self._hosts[via.host.lower()] = source
        if req.method == "REGISTER":
            self._register(source, req)
            return
        # Pop our own Route (loose routing).
        routes = req.headers.get_all("Route")
        if routes and HUB_HOST in routes[0]:
            req.headers.remove("Route")
            for r in routes[1:]:
                req.headers.add("Route", r)
        if self.users is not None and self.auth_invites and req.method == "INVITE" \
                and "tag=" not in (req.headers.get("To") or ""):
            user = req.from_.uri.user or ""
            verdict = self._check_auth(req, user, "Proxy-Authorization")
            if verdict is not None:
                self.respond(source, req, 407, "Proxy Authentication Required",
                             headers=[("Proxy-Authenticate", self._challenge(stale=verdict == "stale"))])
                return
            req.headers.remove("Proxy-Authorization")
        target = self._hosts.get((req.uri.host or "").lower())
        if target is None:
            binding = self.bindings.get(req.uri.user or "")
            if binding is None:
                if req.method != "ACK":
                    self.respond(source, req, 404, "Not Found")
                return
            target = binding.transport
            req.uri = binding.uri.copy() if hasattr(binding.uri, "copy") else binding.uri
        if not target.connected:
            if req.method != "ACK":
                self.respond(source, req, 480, "Temporarily Unavailable")
            return
        orig_branch = via.branch if via is not None else ""
        branch = self._forwarded_branch.get(orig_branch)
        if branch is None:
            branch = f"z9hG4bKhub{next(self._counter)}"
            self._forwarded_branch[orig_branch] = branch
        self._branches[branch] = source
        req.headers.prepend("Via", f"SIP/2.0/WS {HUB_HOST};branch={branch}")
        if self.record_route and req.method == "INVITE" and "tag=" not in (req.headers.get("To") or ""):
            req.headers.prepend("Record-Route", f"<sip:{HUB_HOST};lr>")
        self.send_to(target, req)

    def _route_response(self, resp: Any) -> None:
        vias = resp.headers.get_all("Via")
        if not vias or HUB_HOST not in vias[0]:
            return
        branch = Via.parse(vias[0]).branch
        source = self._branches.get(branch or "")
        if source is None:
            return
        resp.headers.remove("Via")
        for v in vias[1:]:
            resp.headers.add("Via", v)
        # Keep Via first: rebuild header order is not significant for our parser users.
        self.send_to(source, resp)

    # --- registrar -------------------------------------------------------------------

    def _register(self, source: FakeTransport, req: Any) -> None:
        user = req.to.uri.user if hasattr(req, "to") and req.to is not None else None
        if user is None:
            self.respond(source, req, 400, "Bad Request")
            return
        if self.users is not None:
            verdict = self._check_auth(req, user)
            if verdict is not None:
                self.respond(source, req, 401, "Unauthorized",
                             headers=[("WWW-Authenticate", self._challenge(stale=verdict == "stale"))])
                return
        contacts = req.contact
        if not contacts:
            self.respond(source, req, 200, "OK")
            return
        contact = contacts[0]
        requested = contact.params.get("expires") or req.headers.get("Expires") or "3600"
        expires = int(requested)
        if expires and expires < self.min_expires:
            self.respond(source, req, 423, "Interval Too Brief",
                         headers=[("Min-Expires", str(self.min_expires))])
            return
        granted = min(expires, self.max_expires)
        if granted == 0:
            self.bindings.pop(user, None)
            self.respond(source, req, 200, "OK")
            return
        self.bindings[user] = Binding(str(contact), contact.uri, source, granted)
        contact_out = f"<{contact.uri}>;expires={granted}"
        self.respond(source, req, 200, "OK", headers=[("Contact", contact_out)])

    def _challenge(self, stale: bool = False) -> str:
        nonce = secrets.token_hex(8)
        self._nonces.add(nonce)
        value = f'Digest realm="{self.realm}", nonce="{nonce}", qop="auth", algorithm=MD5'
        if stale:
            value += ", stale=true"
        return value

    def _check_auth(self, req: Any, user: str, header_name: str = "Authorization") -> str | None:
        """None if authorized, else "missing"/"bad"/"stale"."""
        header = req.headers.get(header_name)
        if not header:
            return "missing"
        params = _digest_params(header)
        password = (self.users or {}).get(params.get("username", ""))
        if password is None or params.get("username") != user:
            return "bad"
        nonce = params.get("nonce", "")
        if nonce not in self._nonces:
            return "stale"
        ha1 = _md5(f"{params['username']}:{self.realm}:{password}")
        ha2 = _md5(f"{req.method}:{params.get('uri', '')}")
        expected = _md5(f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:"
                        f"{params.get('qop', '')}:{ha2}")
        if expected != params.get("response"):
            return "bad"
        if self.stale_nonces and not self._stale_sent:
            self._stale_sent.add(nonce)
            self._nonces.discard(nonce)
            return "stale"
        return None


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _digest_params(header: str) -> dict[str, str]:
    """Parameters of a ``Digest a=b, c="d"`` header (enough for the fake registrar)."""
    body = header.split(None, 1)[1] if " " in header else ""
    out: dict[str, str] = {}
    for part in _split_commas(body):
        if "=" in part:
            key, _, value = part.partition("=")
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def _split_commas(text: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return parts


def hub_user_agent(hub: LoopbackHub, ext: str, *, password: str | None = None, scale: float = 0.05,
                   **config: Any) -> UserAgent:
    """A :class:`~softphone.sip.user_agent.UserAgent` on ``hub`` with timers scaled for tests."""
    config.setdefault("reconnect", Reconnect(min_delay=0.01 * scale * 100, max_delay=0.05 * scale * 100))

    if password is None and hub.users is not None:
        password = hub.users.get(ext)
    cfg = UserAgentConfig(ws_url=f"ws://{HUB_HOST}/ws", aor=f"sip:{ext}@{hub.domain}", password=password,
                          timers=config.pop("timers", Timers.scaled(scale)), **config)
    return UserAgent(cfg, transport=hub.transport(ext))
