"""The Webphone's launch parameters, and everything derived from them.

The browser Webphone is opened as
``TForge-OmniSense-Webphone.html?auth_key=...&server=...&...``; softphone takes
the same parameters from that URL, a bare query string, ``SOFTPHONE_*``
environment variables or command-line flags.  Precedence, highest first:
**flags > URL (or query string) > environment**.

Validation collects every problem before failing, so one
:class:`~softphone.errors.ParameterError` lists each bad field and why.
Secrets (``auth_key``, ``password``) are :class:`~softphone.log.Secret`
objects from the moment they are parsed.

Naive ``expire_date`` values (no offset) are in the machine's local time
zone, as a browser would read them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from softphone.errors import FieldError, ParameterError
from softphone.log import Secret, get_logger

log = get_logger(__name__)

ENV_PREFIX = "SOFTPHONE_"


@dataclass(frozen=True)
class ParamSpec:
    """One row of the contract's parameter table."""

    name: str
    kind: str  # "string" | "integer" | "port" | "datetime" | "boolean"
    required: bool
    secret: bool
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


#: The Webphone's parameters exactly as the platform documents them.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("auth_key", "string", True, True, "system key (Authorization: Key=...)"),
    ParamSpec("server", "string", True, False, "platform host"),
    ParamSpec("turn_port", "port", True, False, "TURN port used to reach the WebRTC server"),
    ParamSpec("customer_id", "integer", True, False, "customer ID"),
    ParamSpec("user_id", "integer", True, False, "agent profile ID"),
    ParamSpec("username", "string", True, False, "agent profile username"),
    ParamSpec("password", "string", True, True, "password for connecting to the WebRTC server"),
    ParamSpec("expire_date", "datetime", True, False, "until when the agent's WebRTC session may last"),
    ParamSpec("debug_console", "boolean", False, False, "debug trace on the console (stderr)"),
    ParamSpec("debug_html", "boolean", False, False, "debug trace written to an HTML file"),
)
SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


@dataclass(frozen=True)
class OverrideSpec:
    """A derived value the user may set instead of the contract's default."""

    name: str
    help: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


#: Derived values (project defaults, see the platform contract) that can be overridden.
OVERRIDES: tuple[OverrideSpec, ...] = (
    OverrideSpec("api_url", "REST API base URL [https://{server}]"),
    OverrideSpec("sip_ws_url", "SIP WebSocket URL [wss://{server}:8089/ws]"),
    OverrideSpec("sip_domain", "SIP domain of the AOR [{server} without port]"),
    OverrideSpec("turn_urls", "TURN URLs, comma-separated [turn:{server}:{turn_port}?transport=udp,...tcp]"),
    OverrideSpec("turn_username", "TURN username [username]"),
    OverrideSpec("turn_password", "TURN credential [password]"),
    OverrideSpec("extension", "WebRTC extension to register, skipping provisioning [provisioned]"),
    OverrideSpec("ca_file", "CA file trusted for wss:// and https:// (e.g. the lab's) [system CAs]"),
)
OVERRIDE_NAMES = frozenset(o.name for o in OVERRIDES)
SECRET_OVERRIDES = frozenset({"turn_password"})

_INT_RE = re.compile(r"^[0-9]+$")
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?$")
_SIMPLE_DT_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


@dataclass(frozen=True)
class Derived:
    """Values computed from the launch parameters, in one place.

    Defaults follow the contract (Asterisk-style WebSocket on 8089, TURN on
    ``turn_port`` over UDP and TCP with the agent's credentials); each can be
    overridden by flag, URL parameter or environment.
    """

    api_url: str
    sip_ws_url: str
    sip_domain: str
    turn_urls: tuple[str, ...]
    turn_username: str
    turn_password: Secret
    extension: str | None
    ca_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "api_url": self.api_url,
            "sip_ws_url": self.sip_ws_url,
            "sip_domain": self.sip_domain,
            "turn_urls": list(self.turn_urls),
            "turn_username": self.turn_username,
            "turn_password": str(self.turn_password),
            "extension": self.extension,
            "ca_file": self.ca_file,
        }


@dataclass(frozen=True)
class LaunchParams:
    """Validated launch parameters; ``repr`` and ``str`` never show secrets."""

    auth_key: Secret
    server: str
    turn_port: int
    customer_id: int
    user_id: int
    username: str
    password: Secret
    expire_date: datetime
    debug_console: bool = False
    debug_html: bool = False
    overrides: Mapping[str, str] = field(default_factory=dict, compare=True)
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def host(self) -> str:
        """``server`` without a port (brackets kept off IPv6 literals)."""
        return split_host_port(self.server)[0]

    @property
    def derived(self) -> Derived:
        o = self.overrides
        host = self.host
        host_ref = f"[{host}]" if ":" in host else host
        turn_urls = o.get("turn_urls")
        return Derived(
            api_url=(o.get("api_url") or f"https://{self.server}").rstrip("/"),
            sip_ws_url=o.get("sip_ws_url") or f"wss://{host_ref}:8089/ws",
            sip_domain=o.get("sip_domain") or host,
            turn_urls=tuple(u.strip() for u in turn_urls.split(",") if u.strip())
            if turn_urls
            else (
                f"turn:{host_ref}:{self.turn_port}?transport=udp",
                f"turn:{host_ref}:{self.turn_port}?transport=tcp",
            ),
            turn_username=o.get("turn_username") or self.username,
            turn_password=Secret(o["turn_password"]) if o.get("turn_password") else self.password,
            extension=o.get("extension") or None,
            ca_file=o.get("ca_file") or None,
        )

    def seconds_left(self, now: datetime | None = None) -> float:
        """Seconds until ``expire_date`` (negative once it has passed)."""
        now = now or datetime.now(timezone.utc)
        return (self.expire_date - now).total_seconds()

    def as_dict(self, *, reveal_secrets: bool = False) -> dict[str, Any]:
        """JSON-ready view; secrets as ``***`` unless explicitly revealed."""
        out: dict[str, Any] = {}
        for spec in PARAMETERS:
            value = getattr(self, spec.name)
            if isinstance(value, Secret):
                value = value.reveal() if reveal_secrets else str(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            out[spec.name] = value
        return out

    def to_query(self) -> str:
        """Encode back into a Webphone query string (secrets included: it is a URL).

        The inverse of :func:`parse_query`: ``parse_query(p.to_query()) == p``.
        """
        items = [(k, v) for k, v in self.as_dict(reveal_secrets=True).items()]
        items = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in items]
        items += [(k, v) for k, v in self.overrides.items()]
        return urlencode(items, quote_via=quote)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.as_dict().items())
        return f"LaunchParams({shown})"

    __str__ = __repr__


def split_host_port(server: str) -> tuple[str, int | None]:
    """``"pbx:8443"`` -> ``("pbx", 8443)``; ``"[::1]:5"`` -> ``("::1", 5)``."""
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:] else None
    host, sep, port = server.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return server, None


# --- sources -----------------------------------------------------------------------


class RawParams(dict):
    """Raw string values from one source, plus the problems found reading it."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source
        self.errors: list[FieldError] = []
        self.unknown: list[str] = []


def parse_query(query: str, source: str = "URL") -> RawParams:
    """Read a query string (``a=1&b=2``, a leading ``?`` allowed).

    Percent- and plus-encoding are decoded.  A parameter given twice is an
    error; unknown names are kept aside for a warning.
    """
    raw = RawParams(source)
    query = query.lstrip("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except UnicodeDecodeError as exc:
        raw.errors.append(FieldError("(query)", f"not valid UTF-8 after percent-decoding: {exc.reason}"))
        return raw
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raw.errors.append(FieldError(name, f"given more than once in the {source}"))
            continue
        seen.add(name)
        if name in SPECS or name in OVERRIDE_NAMES:
            raw[name] = value
        else:
            raw.unknown.append(name)
    return raw


def parse_url(url: str) -> RawParams:
    """Read the Webphone's full URL (or a bare query string)."""
    text = url.strip()
    # A URL has its "://" or "?" before the first "="; a bare query string may carry URLs
    # in its values (api_url=http://..., sip_ws_url=wss://...).
    head = text.split("=", 1)[0]
    if "://" in head or text.startswith("/") or ("?" in text and "=" not in text.split("?", 1)[0]):
        parts = urlsplit(text)
        return parse_query(parts.query, "URL")
    return parse_query(text, "query string")


def from_environ(environ: Mapping[str, str] | None = None) -> RawParams:
    """Read ``SOFTPHONE_<NAME>`` variables (``SOFTPHONE_AUTH_KEY``, ...)."""
    environ = os.environ if environ is None else environ
    raw = RawParams("environment")
    for name in list(SPECS) + sorted(OVERRIDE_NAMES):
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None:
            raw[name] = value
    return raw


def from_flags(flags: Mapping[str, Any] | None) -> RawParams:
    """Read command-line values (``None`` means the flag was not given)."""
    raw = RawParams("flags")
    for name, value in (flags or {}).items():
        if value is None:
            continue
        if name not in SPECS and name not in OVERRIDE_NAMES:
            raise KeyError(f"unknown launch parameter flag {name!r}")
        if isinstance(value, bool):
            value = "true" if value else "false"
        raw[name] = str(value)
    return raw


# --- validation --------------------------------------------------------------------


def _parse_datetime(text: str) -> datetime:
    """ISO 8601 (with or without offset) or ``YYYY-MM-DD HH:MM:SS``; naive = local."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time zone, as the browser reads it
    return dt


def _check(spec: ParamSpec, value: str, now: datetime) -> tuple[Any, str | None]:
    """Convert one raw value; return (value, None) or (None, reason)."""
    v = value.strip()
    if spec.kind == "string":
        if spec.name == "server":
            if "://" in v or "/" in v:
                return None, "must be a host name (optionally host:port), not a URL"
            if not _HOST_RE.match(v):
                return None, "is not a valid host name"
            port = split_host_port(v)[1]
            if port is not None and not 1 <= port <= 65535:
                return None, "port must be between 1 and 65535"
            return v, None
        # Secrets and names are taken verbatim (spaces may be meaningful).
        return value, None
    if spec.kind in ("integer", "port"):
        if not _INT_RE.match(v):
            return None, "must be an integer" if spec.kind == "integer" else "must be an integer port number"
        n = int(v)
        if spec.kind == "port" and not 1 <= n <= 65535:
            return None, "must be between 1 and 65535"
        return n, None
    if spec.kind == "boolean":
        if v.lower() == "true":
            return True, None
        if v.lower() == "false":
            return False, None
        return None, "must be true or false"
    if spec.kind == "datetime":
        try:
            dt = _parse_datetime(v)
        except ValueError:
            return None, (
                "must be an ISO 8601 date-time (e.g. 2026-12-31T18:00:00+02:00) "
                "or 'YYYY-MM-DD HH:MM:SS' (local time)"
            )
        if dt <= now:
            return None, f"is in the past (read as {dt.isoformat()})"
        return dt, None
    raise AssertionError(spec.kind)  # pragma: no cover


#: values echoed in full: what dates, numbers, ports and flags are made of, never a key or password
_HARMLESS_RE = re.compile(r"^[0-9 :+\-.TZtz/]{0,32}$")
_HARMLESS_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})


def describe_value(value: str) -> str:
    """``got '...'`` for a value that cannot be a secret, else only its length.

    A value in the wrong field (the auth key pasted as ``server=``) must not be
    echoed on stderr: only date/number-shaped values and flag words are shown.
    """
    if _HARMLESS_RE.match(value) or value.strip().lower() in _HARMLESS_WORDS:
        return f"got {value!r}"
    return f"got {len(value)} characters, not shown"


def _display(spec: ParamSpec, value: str) -> str:
    return "" if spec.secret else f" ({describe_value(value)})"


def load_params(
    url: str | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> LaunchParams:
    """Merge the sources (flags > URL > environment), validate, return params.

    Raises :class:`ParameterError` listing every bad field.  Unknown URL
    parameters are logged as warnings and kept in ``LaunchParams.warnings``.
    """
    now = now or datetime.now(timezone.utc)
    layers = [from_environ(environ)]
    if url:
        layers.append(parse_url(url))
    layers.append(from_flags(flags))

    errors: list[FieldError] = []
    warnings: list[str] = []
    merged: dict[str, str] = {}
    for layer in layers:
        errors.extend(layer.errors)
        for name in layer.unknown:
            warnings.append(f"unknown parameter {name!r} in the {layer.source} ignored")
        for name, value in layer.items():
            if value.strip() == "":
                continue  # an empty string is a missing value; a lower layer may fill it
            merged[name] = value
    for w in warnings:
        log.warning("%s", w)

    values: dict[str, Any] = {}
    for spec in PARAMETERS:
        raw = merged.get(spec.name)
        if spec.secret and raw:
            Secret(raw)  # registered for redaction before anything can log it
        if raw is None:
            if spec.required:
                errors.append(FieldError(spec.name, "is required but missing or empty"))
            continue
        value, reason = _check(spec, raw, now)
        if reason:
            errors.append(FieldError(spec.name, reason + _display(spec, raw)))
        else:
            values[spec.name] = Secret(value) if spec.secret else value

    overrides = {k: v for k, v in merged.items() if k in OVERRIDE_NAMES}
    for name in SECRET_OVERRIDES & overrides.keys():
        Secret(overrides[name])
    if "sip_ws_url" in overrides and not overrides["sip_ws_url"].startswith(("ws://", "wss://")):
        errors.append(FieldError("sip_ws_url", f"must start with ws:// or wss:// "
                                               f"({describe_value(overrides['sip_ws_url'])})"))
    if "api_url" in overrides and not overrides["api_url"].startswith(("http://", "https://")):
        errors.append(FieldError("api_url", f"must start with http:// or https:// "
                                            f"({describe_value(overrides['api_url'])})"))
    if "turn_urls" in overrides:
        for n, u in enumerate(overrides["turn_urls"].split(","), 1):
            if u.strip() and not u.strip().startswith(("turn:", "turns:", "stun:")):
                errors.append(FieldError("turn_urls", f"URL {n} must start with turn:, turns: or stun: "
                                                      f"({describe_value(u.strip())})"))

    if errors:
        raise ParameterError(errors)
    return LaunchParams(**values, overrides=overrides, warnings=tuple(warnings))


def field_names() -> list[str]:
    """All accepted names: the contract's parameters, then the overrides."""
    return [p.name for p in PARAMETERS] + [o.name for o in OVERRIDES]


__all__ = [
    "OVERRIDES",
    "PARAMETERS",
    "Derived",
    "LaunchParams",
    "load_params",
    "parse_query",
    "parse_url",
    "split_host_port",
]
