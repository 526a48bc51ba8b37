"""The one table of OmniSense REST paths, shared by the client and the lab.

Most paths are not public (see the platform contract): they are the project's
defaults, so a real deployment must be matchable by configuration.  Every
endpoint has a name, an HTTP method and a path template whose placeholders
(``{user_id}``, ``{call_id}``, ``{campaign_id}``) are filled by the caller.
Templates use aiohttp's route syntax, so the lab registers them as they are.

Overrides, lowest precedence first: :data:`DEFAULT_ENDPOINTS` < a JSON or TOML
file < ``SOFTPHONE_PATH_<NAME>`` environment variables < :meth:`PlatformPaths.override`.
An override value is either a path (``"/api/v2/voice/{user_id}/call"``, the
method stays) or ``"METHOD /path"``; in a file it may also be a table
``{"method": ..., "path": ...}``.  A file holds either the names at top level
or under a ``paths`` key.
"""

from __future__ import annotations

import json
import os
import re
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from softphone.errors import ConfigurationError
from softphone.log import get_logger

log = get_logger(__name__)

ENV_PREFIX = "SOFTPHONE_PATH_"
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})

#: name -> (method, template). ``campaign_status`` (read) and
#: ``set_campaign_status`` (change) share one path with two methods.
DEFAULT_ENDPOINTS: dict[str, tuple[str, str]] = {
    "authorize": ("POST", "/omni/user/authorize"),
    "provision_extension": ("POST", "/omni/users/{user_id}/webrtc"),
    "login": ("POST", "/omni/users/{user_id}/login"),
    "logout": ("POST", "/omni/users/{user_id}/logout"),
    "call": ("POST", "/omni/voice/{user_id}/call"),
    "hangup": ("POST", "/omni/voice/{user_id}/calls/{call_id}/hangup"),
    "hold": ("POST", "/omni/voice/{user_id}/calls/{call_id}/hold"),
    "retrieve": ("POST", "/omni/voice/{user_id}/calls/{call_id}/retrieve"),
    "recording_start": ("POST", "/omni/voice/{user_id}/calls/{call_id}/recording/start"),
    "recording_stop": ("POST", "/omni/voice/{user_id}/calls/{call_id}/recording/stop"),
    "dispose": ("POST", "/omni/voice/{user_id}/calls/{call_id}/dispose"),
    "connect_calls": ("POST", "/omni/voice/{user_id}/calls/connect"),
    "shotgun": ("POST", "/omni/voice/{user_id}/shotgun"),
    "active_calls": ("GET", "/omni/voice/{user_id}/calls"),
    "set_notification_endpoint": ("POST", "/omni/notifications/endpoint"),
    "campaign_status": ("GET", "/omni/campaigns/{campaign_id}/status"),
    "set_campaign_status": ("POST", "/omni/campaigns/{campaign_id}/status"),
    "lead_archive": ("POST", "/vicidial/leads/archive"),
    "lead_dearchive": ("POST", "/vicidial/leads/dearchive"),
}

#: Every placeholder a caller can fill.  An override may use any of the
#: placeholders its endpoint's default uses (and drop some), nothing else.
KNOWN_PLACEHOLDERS = frozenset({"user_id", "call_id", "campaign_id"})

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _placeholders(template: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigurationError(f"{where}: malformed path template {template!r}: {exc}") from None
    names: set[str] = set()
    for _literal, field_name, spec, conv in parsed:
        if field_name is None:
            continue
        if not field_name or spec or conv:
            raise ConfigurationError(
                f"{where}: placeholder {{{field_name}}} in {template!r} must be a bare name like {{user_id}}"
            )
        names.add(field_name)
    return names


@dataclass(frozen=True)
class Endpoint:
    """One REST endpoint: its name, HTTP method and path template."""

    name: str
    method: str
    template: str

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(_placeholders(self.template, f"path {self.name}"))

    @property
    def is_omni(self) -> bool:
        """Whether the user token (``tokenKey``) belongs on this call.

        Every endpoint takes a token except authorize itself and the lead
        archive API, which is authorised by the system key alone.
        """
        return self.name not in ("authorize", "lead_archive", "lead_dearchive")

    def path(self, **values: Any) -> str:
        """The template with each placeholder URL-quoted; extra values are ignored."""
        missing = self.placeholders - values.keys()
        if missing:
            raise ConfigurationError(
                f"path {self.name}: no value for placeholder(s) {', '.join(sorted(missing))}"
            )
        quoted = {k: quote(str(v), safe="") for k, v in values.items() if k in self.placeholders}
        return self.template.format(**quoted)


def _parse_override(name: str, value: Any, where: str) -> tuple[str | None, str]:
    """(method or None to keep it, template) from one override value."""
    if isinstance(value, Mapping):
        unknown = set(value) - {"method", "path"}
        if unknown or "path" not in value:
            raise ConfigurationError(
                f"{where}: path {name} must be a string or a table with 'path' (and optional 'method'),"
                f" got keys {sorted(value)}"
            )
        method = value.get("method")
        template = value["path"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        method, template = value
    elif isinstance(value, str):
        parts = value.strip().split(None, 1)
        if len(parts) == 2 and parts[0].upper() in METHODS:
            method, template = parts[0], parts[1].strip()
        else:
            method, template = None, value.strip()
    else:
        raise ConfigurationError(f"{where}: path {name} must be a string, got {type(value).__name__}")
    if not isinstance(template, str):
        raise ConfigurationError(f"{where}: path {name} must be a string, got {type(template).__name__}")
    if method is not None:
        if not isinstance(method, str) or method.upper() not in METHODS:
            raise ConfigurationError(
                f"{where}: path {name}: method {method!r} is not one of {', '.join(sorted(METHODS))}"
            )
        method = method.upper()
    return method, template


def _validate(name: str, method: str, template: str, where: str) -> Endpoint:
    if name not in DEFAULT_ENDPOINTS:
        raise ConfigurationError(
            f"{where}: unknown path name {name!r}; known: {', '.join(sorted(DEFAULT_ENDPOINTS))}"
        )
    if not template.startswith("/") or any(c.isspace() for c in template) or "?" in template \
            or "#" in template:
        raise ConfigurationError(
            f"{where}: path {name} must start with '/' and hold no spaces, query or fragment: {template!r}"
        )
    found = _placeholders(template, f"{where}: path {name}")
    allowed = _placeholders(DEFAULT_ENDPOINTS[name][1], "default")
    unknown = found - allowed
    if unknown:
        hint = allowed or {"(none)"}
        raise ConfigurationError(
            f"{where}: path {name} uses unknown placeholder(s) "
            f"{', '.join('{' + u + '}' for u in sorted(unknown))} in {template!r}; allowed: "
            f"{', '.join(sorted(hint))}"
        )
    return Endpoint(name, method, template)


class PlatformPaths(Mapping[str, Endpoint]):
    """Name -> :class:`Endpoint`, immutable; :meth:`override` returns a new table."""

    def __init__(self, endpoints: Mapping[str, Endpoint] | None = None):
        if endpoints is None:
            endpoints = {n: Endpoint(n, m, t) for n, (m, t) in DEFAULT_ENDPOINTS.items()}
        self._endpoints: dict[str, Endpoint] = dict(endpoints)

    # Mapping protocol
    def __getitem__(self, name: str) -> Endpoint:
        try:
            return self._endpoints[name]
        except KeyError:
            raise ConfigurationError(
                f"unknown path name {name!r}; known: {', '.join(sorted(self._endpoints))}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def __repr__(self) -> str:
        changed = {n: f"{e.method} {e.template}" for n, e in self._endpoints.items()
                   if DEFAULT_ENDPOINTS.get(n) != (e.method, e.template)}
        return f"PlatformPaths(overrides={changed})"

    def override(self, _where: str = "override", **overrides: Any) -> PlatformPaths:
        """A copy with some endpoints replaced; values as described in the module doc."""
        endpoints = dict(self._endpoints)
        for name, value in overrides.items():
            if name not in DEFAULT_ENDPOINTS:
                _validate(name, "GET", "/", _where)  # raises the unknown-name error
            method, template = _parse_override(name, value, _where)
            current = endpoints[name]
            endpoints[name] = _validate(name, method or current.method, template, _where)
            log.debug("path %s overridden by %s: %s %s", name, _where,
                      endpoints[name].method, endpoints[name].template)
        return PlatformPaths(endpoints)

    def override_from_file(self, path: str | os.PathLike[str]) -> PlatformPaths:
        """Apply overrides from a ``.json`` or ``.toml`` file."""
        p = Path(path)
        where = str(p)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"paths file {where}: cannot read: {exc.strerror or exc}") from None
        try:
            if p.suffix.lower() == ".toml":
                import tomllib

                data = tomllib.loads(raw.decode("utf-8"))
            else:
                data = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"paths file {where}: not valid {p.suffix.lstrip('.') or 'JSON'}: "
                                     f"{exc}") from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"paths file {where}: top level must be an object/table")
        if "paths" in data and isinstance(data["paths"], dict):
            data = data["paths"]
        return self.override(where, **data)

    def override_from_env(self, environ: Mapping[str, str] | None = None) -> PlatformPaths:
        """Apply ``SOFTPHONE_PATH_<NAME>`` variables (e.g. ``SOFTPHONE_PATH_CALL``)."""
        environ = os.environ if environ is None else environ
        found = {}
        for key, value in environ.items():
            if key.startswith(ENV_PREFIX):
                name = key[len(ENV_PREFIX):].lower()
                if not _NAME_RE.match(name):
                    raise ConfigurationError(f"environment {key}: not a path name")
                found[name] = value
        return self.override("environment", **found) if found else self

    @classmethod
    def load(
        cls,
        file: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> PlatformPaths:
        """Defaults < ``file`` (or ``$SOFTPHONE_PATHS_FILE``) < environment < ``overrides``."""
        environ = os.environ if environ is None else environ
        paths = cls()
        file = file or environ.get("SOFTPHONE_PATHS_FILE") or None
        if file:
            paths = paths.override_from_file(file)
        paths = paths.override_from_env(environ)
        if overrides:
            paths = paths.override(**overrides)
        return paths

    def method(self, name: str) -> str:
        return self[name].method

    def path(self, name: str, **values: Any) -> str:
        """The filled-in path of endpoint ``name``."""
        return self[name].path(**values)


#: The defaults, for modules that do not take configuration (e.g. the lab's routes).
DEFAULT_PATHS = PlatformPaths()
