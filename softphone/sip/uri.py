"""SIP URIs (RFC 3261 19.1) and name-addr values (From, To, Contact, Route).

Parsing is a single left-to-right scan per value (no backtracking regexes), so
hostile input costs linear time.  Escaped user parts (``%40``) are kept as
received, so a URI serialises back to the same text; comparisons unescape them
as RFC 3261 19.1.4 requires.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from softphone.errors import SipParseError
from softphone.log import get_logger
from softphone.sip.headers import TOKEN_CHARS

log = get_logger(__name__)

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_UNRESERVED = _ALNUM + "-_.!~*'()"
_USER_CHARS = frozenset(_UNRESERVED + "%&=+$,;?/")
_PASSWORD_CHARS = frozenset(_UNRESERVED + "%&=+$,")
_PARAM_CHARS = frozenset(_UNRESERVED + "%[]/:&+$")
_HEADER_CHARS = frozenset(_UNRESERVED + "%[]/?:+$")
_HOST_RE = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME_CHARS = frozenset(_ALNUM + "+-.")
_HEX = frozenset("0123456789abcdefABCDEF")
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")
_OPAQUE_FORBIDDEN = frozenset(' \t\r\n<>"')
# Value characters of generic header parameters besides token chars: IPv6
# addresses appear unbracketed in Via received= (RFC 3261 18.2.1).
_PARAM_VALUE_CHARS = frozenset(TOKEN_CHARS | set(":[]"))

# URI parameters that must match when present in either URI (19.1.4).
_SIGNIFICANT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def skip_ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in " \t":
        i += 1
    return i


def read_quoted(s: str, i: int) -> tuple[str, str, int]:
    """Read the quoted-string starting at ``s[i] == '"'``: (raw, unescaped, end)."""
    n = len(s)
    j = i + 1
    out: list[str] = []
    while j < n:
        c = s[j]
        if c == "\\":
            if j + 1 >= n:
                break
            out.append(s[j + 1])
            j += 2
            continue
        if c == '"':
            return s[i : j + 1], "".join(out), j + 1
        out.append(c)
        j += 1
    raise SipParseError(f"unterminated quoted string in {_short(s)}")


_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x08\x0b\x0c\x0e-\x1f\x7f]')


def quote_string(text: str) -> str:
    """``text`` as a quoted-string: quoted-pairs for ``"``, backslash and control characters.

    CR and LF cannot be quoted (RFC 3261 25.1); Headers refuses them on add.
    """
    return '"' + _NEEDS_ESCAPE.sub(lambda m: "\\" + m.group(0), text) + '"'


def parse_params(s: str, i: int) -> tuple[dict[str, str | None], int]:
    """Generic ``*( SEMI name [EQUAL value] )`` from ``s[i]``; names lower-cased.

    Values are tokens, quoted strings (kept with their quotes) or IPv6
    references.  Returns the parameters and the index after the last one.
    """
    params: dict[str, str | None] = {}
    n = len(s)
    while True:
        i = skip_ws(s, i)
        if i >= n or s[i] != ";":
            return params, i
        i = skip_ws(s, i + 1)
        j = i
        while j < n and s[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            raise SipParseError(f"empty parameter name in {_short(s)}")
        name = s[i:j].lower()
        i = skip_ws(s, j)
        value: str | None = None
        if i < n and s[i] == "=":
            i = skip_ws(s, i + 1)
            if i < n and s[i] == '"':
                value, _, i = read_quoted(s, i)
            else:
                j = i
                while j < n and s[j] in _PARAM_VALUE_CHARS:
                    j += 1
                if j == i:
                    raise SipParseError(f"parameter {name!r} has an empty value in {_short(s)}")
                value = s[i:j]
                i = j
        params[name] = value
    return params, i  # pragma: no cover - loop returns


def format_params(params: dict[str, str | None]) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


_FAST: dict[frozenset[str], re.Pattern[str]] = {}


def _fast_pattern(allowed: frozenset[str]) -> re.Pattern[str]:
    """``(allowed-char | %XX)*`` as one regex: linear, and much faster than a Python loop."""
    pattern = _FAST.get(allowed)
    if pattern is None:
        chars = "".join(re.escape(c) for c in sorted(allowed - {"%"}))
        escape = "|%[0-9A-Fa-f]{2}" if "%" in allowed else ""
        pattern = _FAST[allowed] = re.compile(f"(?:[{chars}]{escape})*")
    return pattern


def _check_chars(text: str, allowed: frozenset[str], what: str) -> None:
    if _fast_pattern(allowed).fullmatch(text) is not None:
        return
    for k, c in enumerate(text):
        if c not in allowed:
            raise SipParseError(f"invalid character {c!r} in {what} {_short(text)}")
        if c == "%" and (k + 2 >= len(text) or text[k + 1] not in _HEX or text[k + 2] not in _HEX):
            raise SipParseError(f"bad %-escape in {what} {_short(text)}")


def parse_host(text: str, what: str = "host") -> str:
    """Validate a host (hostname, IPv4 or bracketed IPv6); returns it unchanged."""
    if not text:
        raise SipParseError(f"empty {what}")
    if text[0] == "[":
        if text[-1] != "]" or len(text) < 4 or any(c not in _IPV6_CHARS for c in text[1:-1]) \
                or ":" not in text:
            raise SipParseError(f"bad IPv6 reference in {what} {_short(text)}")
        return text
    if _HOST_RE.fullmatch(text) is None:
        raise SipParseError(f"bad {what} {_short(text)}")
    return text


def parse_port(text: str, what: str = "port") -> int:
    if not text or not text.isascii() or not text.isdigit() or len(text) > 10:
        raise SipParseError(f"bad {what} {_short(text)}")
    port = int(text)
    if port > 65535:
        raise SipParseError(f"{what} {port} out of range")
    return port


def split_hostport(text: str, what: str = "host") -> tuple[str, int | None]:
    """``host[:port]`` with IPv6 brackets kept."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise SipParseError(f"unterminated IPv6 reference in {what} {_short(text)}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise SipParseError(f"unexpected {rest!r} after IPv6 reference in {what}")
        port = rest[1:] if rest else None
    else:
        host, sep, port_text = text.partition(":")
        port = port_text if sep else None
    parse_host(host, what)
    return host, (parse_port(port, f"{what} port") if port is not None else None)


class SipUri:
    """A sip:/sips: URI; other schemes (tel:, http:, unknown) are kept opaque.

    ``user`` and ``password`` stay %-escaped as received; use
    :attr:`user_unescaped` to read the decoded value.
    """

    __slots__ = ("headers", "host", "opaque", "params", "password", "port", "scheme", "user")

    def __init__(
        self,
        scheme: str = "sip",
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: dict[str, str | None] | None = None,
        headers: dict[str, str] | None = None,
        opaque: str | None = None,
    ):
        self.scheme = scheme
        self.user = user
        self.password = password
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = dict(params or {})
        self.headers: dict[str, str] = dict(headers or {})
        self.opaque = opaque

    @classmethod
    def parse(cls, text: str) -> SipUri:
        """Parse one URI (no surrounding ``<>``); raises SipParseError."""
        if not isinstance(text, str) or not text:
            raise SipParseError("empty URI")
        colon = text.find(":")
        if colon <= 0:
            raise SipParseError(f"URI without scheme: {_short(text)}")
        scheme = text[:colon]
        if not scheme[0].isalpha() or any(c not in _SCHEME_CHARS for c in scheme):
            raise SipParseError(f"bad URI scheme in {_short(text)}")
        scheme = scheme.lower()
        rest = text[colon + 1 :]
        if scheme not in ("sip", "sips"):
            if not rest or any(c in _OPAQUE_FORBIDDEN or ord(c) < 32 for c in rest):
                raise SipParseError(f"bad {scheme}: URI {_short(text)}")
            return cls(scheme=scheme, opaque=rest)
        user = password = None
        at = rest.find("@")
        if at >= 0:
            userinfo, rest = rest[:at], rest[at + 1 :]
            user, sep, pw = userinfo.partition(":")
            if not user:
                raise SipParseError(f"empty user part in URI {_short(text)}")
            _check_chars(user, _USER_CHARS, "URI user part")
            if sep:
                _check_chars(pw, _PASSWORD_CHARS, "URI password")
                password = pw
        headers: dict[str, str] = {}
        q = rest.find("?")
        if q >= 0:
            rest, header_text = rest[:q], rest[q + 1 :]
            for part in header_text.split("&"):
                hname, sep, hvalue = part.partition("=")
                if not hname or not sep:
                    raise SipParseError(f"bad URI header {part!r} in {_short(text)}")
                _check_chars(hname, _HEADER_CHARS, "URI header name")
                _check_chars(hvalue, _HEADER_CHARS, "URI header value")
                headers[hname] = hvalue
        hostport, *param_parts = rest.split(";")
        host, port = split_hostport(hostport, "URI host")
        params: dict[str, str | None] = {}
        for part in param_parts:
            pname, sep, pvalue = part.partition("=")
            if not pname:
                raise SipParseError(f"empty URI parameter in {_short(text)}")
            _check_chars(pname, _PARAM_CHARS, "URI parameter name")
            if sep:
                if not pvalue:
                    raise SipParseError(f"URI parameter {pname!r} has an empty value in {_short(text)}")
                _check_chars(pvalue, _PARAM_CHARS, "URI parameter value")
            params[pname.lower()] = pvalue if sep else None
        return cls(scheme, user, password, host, port, params, headers)

    @property
    def user_unescaped(self) -> str | None:
        return unquote(self.user) if self.user is not None else None

    @property
    def transport(self) -> str | None:
        value = self.params.get("transport")
        return value.lower() if value else None

    def __str__(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}" if self.scheme else self.opaque
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for k, v in self.params.items():
            out.append(f";{k}" if v is None else f";{k}={v}")
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)

    def __repr__(self) -> str:
        shown = self.copy()
        if shown.password is not None:
            shown.password = "***"
        return f"SipUri({str(shown)!r})"

    def copy(self) -> SipUri:
        return SipUri(self.scheme, self.user, self.password, self.host, self.port,
                      self.params, self.headers, self.opaque)

    def __eq__(self, other: object) -> bool:
        """RFC 3261 19.1.4 comparison."""
        if not isinstance(other, SipUri):
            return NotImplemented
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return (self.opaque or "").lower() == (other.opaque or "").lower()
        if self.user_unescaped != other.user_unescaped:
            return False
        pa = unquote(self.password) if self.password is not None else None
        pb = unquote(other.password) if other.password is not None else None
        if pa != pb or self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        for name in _SIGNIFICANT_PARAMS:
            if (name in self.params) != (name in other.params):
                return False
        for name, value in self.params.items():
            if name in other.params:
                ov = other.params[name]
                if (value is None) != (ov is None):
                    return False
                if value is not None and ov is not None and unquote(value).lower() != unquote(ov).lower():
                    return False
        ha = {k.lower(): unquote(v) for k, v in self.headers.items()}
        hb = {k.lower(): unquote(v) for k, v in other.headers.items()}
        return ha == hb

    def __hash__(self) -> int:
        if self.opaque is not None:
            return hash((self.scheme, self.opaque.lower()))
        return hash((self.scheme, self.user_unescaped, self.host.lower(), self.port))


class NameAddr:
    """``["Display" ] <uri> *(;param)`` or a bare addr-spec whose params are the header's."""

    __slots__ = ("display_name", "params", "uri")

    def __init__(self, uri: SipUri | str, display_name: str | None = None,
                 params: dict[str, str | None] | None = None):
        self.uri = SipUri.parse(uri) if isinstance(uri, str) else uri
        self.display_name = display_name
        self.params: dict[str, str | None] = dict(params or {})

    @classmethod
    def parse(cls, text: str) -> NameAddr:
        if not isinstance(text, str):
            raise SipParseError("missing address")
        s = text.strip(" \t")
        if not s:
            raise SipParseError("empty address")
        display: str | None = None
        i = 0
        if s[0] == '"':
            _, display, i = read_quoted(s, 0)
            i = skip_ws(s, i)
            if i >= len(s) or s[i] != "<":
                raise SipParseError(f"quoted display name not followed by <URI> in {_short(s)}")
        else:
            lt = s.find("<")
            if lt > 0:
                words = s[:lt].split()
                for word in words:
                    if not all(c in TOKEN_CHARS for c in word):
                        raise SipParseError(f"display name {s[:lt].strip()!r} must be tokens or quoted")
                display = " ".join(words) if words else None
                i = lt
        if s[i] == "<":
            gt = s.find(">", i)
            if gt < 0:
                raise SipParseError(f"unterminated '<' in {_short(s)}")
            uri = SipUri.parse(s[i + 1 : gt])
            i = gt + 1
        else:
            if s == "*":
                raise SipParseError("'*' is not an address")
            at = s.find("@")
            end = i
            n = len(s)
            while end < n and s[end] not in " \t" and not (s[end] == ";" and end > at):
                end += 1
            spec = s[i:end]
            if "?" in spec or "," in spec:
                raise SipParseError(f"URI with '?' or ',' must be enclosed in <>: {_short(s)}")
            uri = SipUri.parse(spec)
            i = end
        params, i = parse_params(s, i)
        if i != len(s):
            raise SipParseError(f"unexpected {s[i:i + 20]!r} after address in {_short(s)}")
        return cls(uri, display, params)

    @property
    def tag(self) -> str | None:
        return self.params.get("tag")

    @tag.setter
    def tag(self, value: str | None) -> None:
        if value is None:
            self.params.pop("tag", None)
        else:
            self.params["tag"] = value

    def __str__(self) -> str:
        name = quote_string(self.display_name) + " " if self.display_name is not None else ""
        return f"{name}<{self.uri}>{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"NameAddr({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NameAddr):
            return NotImplemented
        return self.uri == other.uri and self.params == other.params

    __hash__ = None  # type: ignore[assignment]

    def copy(self) -> NameAddr:
        return NameAddr(self.uri.copy(), self.display_name, self.params)
