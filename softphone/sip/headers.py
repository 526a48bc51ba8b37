"""SIP header fields: an ordered multi-map with case-insensitive names.

Names are normalised once (compact forms such as ``v`` become ``Via``, known
names get their canonical spelling) so lookups are a dict hit plus a list scan.
Unknown headers keep the spelling they arrived with.  Header values are kept
verbatim (after unfolding); :meth:`Headers.get_all` splits the comma-separated
list headers of RFC 3261 (Via, Route, Contact, ...) respecting quotes and
``<...>``, never the authentication headers whose values contain commas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from softphone.errors import SipError, SipParseError
from softphone.log import get_logger

log = get_logger(__name__)

# RFC 3261 7.3.3 and the extensions that define compact forms.
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "v": "Via",
    "f": "From",
    "t": "To",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
    "a": "Accept-Contact",
    "j": "Reject-Contact",
    "d": "Request-Disposition",
    "y": "Identity",
}

_KNOWN = (
    "Accept", "Accept-Contact", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact",
    "Content-Disposition", "Content-Encoding", "Content-Language", "Content-Length",
    "Content-Type", "CSeq", "Date", "Error-Info", "Event", "Expires", "From", "Identity",
    "In-Reply-To", "Max-Forwards", "MIME-Version", "Min-Expires", "Min-SE", "Organization",
    "P-Asserted-Identity", "P-Preferred-Identity", "Path", "Priority", "Privacy",
    "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "RAck", "Reason",
    "Record-Route", "Refer-To", "Referred-By", "Reject-Contact", "Reply-To", "Request-Disposition",
    "Require", "Retry-After", "Route", "RSeq", "Server", "Service-Route", "Session-Expires",
    "SIP-ETag", "SIP-If-Match", "Subject", "Subscription-State", "Supported", "Timestamp", "To",
    "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
)
_CANONICAL: dict[str, str] = {name.lower(): name for name in _KNOWN}
_CANONICAL.update(COMPACT_FORMS)

# Headers whose grammar is a comma-separated list (RFC 3261 7.3.1).  The
# authentication headers and Date contain commas inside one value: not here.
LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via", "Route", "Record-Route", "Contact", "Allow", "Supported", "Require",
        "Proxy-Require", "Unsupported", "Accept", "Accept-Encoding", "Accept-Language",
        "Allow-Events", "Path", "Service-Route", "Content-Encoding", "Content-Language",
        "Alert-Info", "Call-Info", "Error-Info", "In-Reply-To", "Warning",
        "P-Asserted-Identity", "Accept-Contact", "Reject-Contact",
    )
)

TOKEN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~")


def canonical_name(name: str) -> str:
    """The canonical spelling of a header name (``v`` -> ``Via``, ``call-id`` -> ``Call-ID``)."""
    return _CANONICAL.get(name.lower(), name)


_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")


def is_token(text: str) -> bool:
    """True if ``text`` is a non-empty RFC 3261 token."""
    return _TOKEN_RE.fullmatch(text) is not None


def split_list(value: str) -> list[str]:
    """Split a list header value on commas outside quoted strings and ``<...>``.

    Empty elements (``a,,b``) are dropped, as RFC 7230-style list parsing allows.
    Raises SipParseError on an unterminated quoted string or unbalanced ``<``.
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    start = 0
    quoted = False
    angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    if quoted:
        raise SipParseError(f"unterminated quoted string in {_short(value)}")
    if angle:
        raise SipParseError(f"unterminated '<' in {_short(value)}")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _check(name: str, value: str) -> str:
    """Refuse names/values that would break the wire format (header injection)."""
    if not is_token(name):
        raise SipError(f"invalid SIP header name {name!r}")
    value = str(value)
    if "\r" in value or "\n" in value:
        raise SipError(f"SIP header {name} value contains a line break: {_short(value)}")
    return value


class Headers:
    """Ordered multi-map of header fields; names compared case-insensitively.

    Iteration yields ``(name, value)`` in wire order.  Each stored field is one
    header line: a list header may hold several comma-separated values.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] | None = None):
        self._items: list[tuple[str, str, str]] = []
        for name, value in items or ():
            self.add(name, value)

    @classmethod
    def _trusted(cls, items: list[tuple[str, str, str]]) -> Headers:
        h = cls.__new__(cls)
        h._items = items
        return h

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (the whole line for list headers)."""
        key = canonical_name(name).lower()
        for k, _, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; list headers are split on commas."""
        key = canonical_name(name).lower()
        values = [v for k, _, v in self._items if k == key]
        if key in LIST_HEADERS:
            out: list[str] = []
            for v in values:
                out.extend(split_list(v))
            return out
        return values

    def add(self, name: str, value: str) -> None:
        """Append a field at the end."""
        name = canonical_name(name)
        self._items.append((name.lower(), name, _check(name, value)))

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before all others (a new top Via or Record-Route)."""
        name = canonical_name(name)
        self._items.insert(0, (name.lower(), name, _check(name, value)))

    def set(self, name: str, value: str) -> None:
        """Replace every field ``name`` with one value, at the first one's place."""
        name = canonical_name(name)
        key = name.lower()
        value = _check(name, value)
        out: list[tuple[str, str, str]] = []
        placed = False
        for item in self._items:
            if item[0] == key:
                if not placed:
                    out.append((key, name, value))
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append((key, name, value))
        self._items = out

    def remove(self, name: str) -> None:
        """Drop every field ``name`` (no error if absent)."""
        key = canonical_name(name).lower()
        self._items = [item for item in self._items if item[0] != key]

    def count(self, name: str) -> int:
        """How many header lines named ``name`` there are."""
        key = canonical_name(name).lower()
        return sum(1 for item in self._items if item[0] == key)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = canonical_name(name).lower()
        return any(item[0] == key for item in self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([(n, v) for _, n, v in self._items])

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k, v) for k, _, v in self._items] == [(k, v) for k, _, v in other._items]

    def copy(self) -> Headers:
        return Headers._trusted(list(self._items))

    def __repr__(self) -> str:
        return f"Headers({[n for _, n, _ in self._items]!r})"
