"""SIP messages (RFC 3261 7, 20, 25) as they travel over WebSocket (RFC 7118).

One WebSocket frame carries one message, so a missing Content-Length means
"the rest of the frame".  The parser is tolerant where RFC 3261 is (LF-only
line ends, folded headers, whitespace around colons, compact names, leading
CRLF keep-alives) and strict where RFC 4475's invalid cases demand it.
Everything that can go wrong with network input raises
:class:`~softphone.errors.SipParseError` with a ``reason`` naming the header or
line at fault; a request that parsed far enough to be answered comes back as
``error.partial`` so the user agent can reply 400 with that reason.  Sizes are
capped and every step is a linear scan, so hostile frames cost little.

URI, name-addr and header helpers live in :mod:`softphone.sip.uri` and
:mod:`softphone.sip.headers` and are re-exported here.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import TypeVar

from softphone.errors import SipError, SipParseError
from softphone.log import get_logger
from softphone.sip.headers import (
    COMPACT_FORMS,
    LIST_HEADERS,
    TOKEN_CHARS,
    Headers,
    canonical_name,
    is_token,
    split_list,
)
from softphone.sip.uri import (
    NameAddr,
    SipUri,
    format_params,
    parse_host,
    parse_params,
    parse_port,
    quote_string,
    read_quoted,
    skip_ws,
)

__all__ = [
    "COMPACT_FORMS", "LIST_HEADERS", "MAX_HEADERS", "MAX_MESSAGE_BYTES", "REASON_PHRASES",
    "CSeq", "Headers", "NameAddr", "SipMessage", "SipRequest", "SipResponse", "SipUri", "Via",
    "canonical_name", "generate_branch", "generate_call_id", "generate_tag", "make_response",
    "parse_message", "quote_string", "read_quoted", "split_list",
]

log = get_logger(__name__)
_T = TypeVar("_T")

MAX_MESSAGE_BYTES = 65536
MAX_HEADERS = 200
SIP_VERSION = "SIP/2.0"
BRANCH_COOKIE = "z9hG4bK"
MAX_CSEQ = 2**31 - 1
MAX_EXPIRES = 2**32 - 1

# Headers a message may carry only once (RFC 3261 7.3.1: not list headers).
_SINGLETONS = ("To", "From", "CSeq", "Call-ID", "Max-Forwards", "Content-Length", "Content-Type",
               "Expires")
_MANDATORY = ("To", "From", "CSeq", "Call-ID", "Via")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # all but HTAB and LF
# In header values a control character is only legal as a quoted-pair (RFC 3261 25.1).
_BARE_CONTROL = re.compile(r"(?<!\\)[\x00-\x08\x0a-\x1f\x7f]|[\r\n]")
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")

REASON_PHRASES: dict[int, str] = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 199: "Early Dialog Terminated",
    200: "OK", 202: "Accepted", 204: "No Notification",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    305: "Use Proxy", 380: "Alternative Service",
    400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    412: "Conditional Request Failed", 413: "Request Entity Too Large",
    414: "Request-URI Too Long", 415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    417: "Unknown Resource-Priority", 420: "Bad Extension", 421: "Extension Required",
    422: "Session Interval Too Small", 423: "Interval Too Brief", 428: "Use Identity Header",
    429: "Provide Referrer Identity", 433: "Anonymity Disallowed", 436: "Bad Identity-Info",
    437: "Unsupported Certificate", 438: "Invalid Identity Header",
    439: "First Hop Lacks Outbound Support", 440: "Max-Breadth Exceeded", 469: "Bad Info Package",
    470: "Consent Needed", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete", 485: "Ambiguous",
    486: "Busy Here", 487: "Request Terminated", 488: "Not Acceptable Here", 489: "Bad Event",
    491: "Request Pending", 493: "Undecipherable", 494: "Security Agreement Required",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 555: "Push Notification Service Not Supported",
    580: "Precondition Failure",
    600: "Busy Everywhere", 603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
    607: "Unwanted", 608: "Rejected",
}


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --- Via and CSeq -----------------------------------------------------------------


class Via:
    """One Via value: ``SIP/2.0/WS host[:port];branch=...``."""

    __slots__ = ("host", "params", "port", "protocol", "transport")

    def __init__(self, transport: str, host: str, port: int | None = None,
                 params: dict[str, str | None] | None = None, protocol: str = SIP_VERSION):
        self.transport = transport
        self.host = host
        self.port = port
        self.params: dict[str, str | None] = dict(params or {})
        self.protocol = protocol

    @classmethod
    def parse(cls, text: str) -> Via:
        if not isinstance(text, str):
            raise SipParseError("missing Via")
        s = text.strip(" \t")
        n = len(s)
        fields: list[str] = []
        i = 0
        for k in range(3):
            i = skip_ws(s, i)
            j = i
            while j < n and s[j] in TOKEN_CHARS:
                j += 1
            if j == i:
                raise SipParseError(f"bad sent-protocol in Via {_short(s)}")
            fields.append(s[i:j])
            i = skip_ws(s, j)
            if k < 2:
                if i >= n or s[i] != "/":
                    raise SipParseError(f"bad sent-protocol in Via {_short(s)}")
                i += 1
        if i >= n or s[i - 1] not in " \t":
            raise SipParseError(f"missing sent-by in Via {_short(s)}")
        if s[i] == "[":
            j = s.find("]", i)
            if j < 0:
                raise SipParseError(f"unterminated IPv6 reference in Via {_short(s)}")
            j += 1
        else:
            j = i
            while j < n and s[j] in _HOST_CHARS:
                j += 1
        host = parse_host(s[i:j], "Via host")
        port = None
        i = skip_ws(s, j)
        if i < n and s[i] == ":":
            i = skip_ws(s, i + 1)
            j = i
            while j < n and s[j].isdigit():
                j += 1
            port = parse_port(s[i:j], "Via port")
            i = j
        params, i = parse_params(s, i)
        i = skip_ws(s, i)
        if i < n and s[i] == "(":  # obsolete comment after the parameters
            end = s.find(")", i)
            if end < 0:
                raise SipParseError(f"unterminated comment in Via {_short(s)}")
            i = skip_ws(s, end + 1)
        if i != n:
            raise SipParseError(f"unexpected {s[i:i + 20]!r} in Via {_short(s)}")
        return cls(fields[2].upper(), host, port, params, f"{fields[0].upper()}/{fields[1]}")

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @branch.setter
    def branch(self, value: str | None) -> None:
        self._set("branch", value)

    @property
    def received(self) -> str | None:
        return self.params.get("received")

    @received.setter
    def received(self, value: str | None) -> None:
        self._set("received", value)

    @property
    def has_rport(self) -> bool:
        return "rport" in self.params

    @property
    def rport(self) -> int | None:
        """The port filled in by the server (RFC 3581), None if absent or a bare flag."""
        value = self.params.get("rport")
        return int(value) if value and value.isdigit() else None

    def _set(self, name: str, value: str | None) -> None:
        if value is None:
            self.params.pop(name, None)
        else:
            self.params[name] = value

    def __str__(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"

    def __repr__(self) -> str:
        return f"Via({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Via):
            return NotImplemented
        return str(self) == str(other)

    __hash__ = None  # type: ignore[assignment]


class CSeq:
    """``CSeq: <seq> <METHOD>``."""

    __slots__ = ("method", "seq")

    def __init__(self, seq: int, method: str):
        self.seq = int(seq)
        self.method = method

    @classmethod
    def parse(cls, text: str | None) -> CSeq:
        if text is None:
            raise SipParseError("missing mandatory header: CSeq")
        parts = text.split()
        if len(parts) != 2 or not parts[0].isascii() or not parts[0].isdigit() or not is_token(parts[1]):
            raise SipParseError(f"bad CSeq header: {_short(text)}")
        if len(parts[0]) > 12 or int(parts[0]) > MAX_CSEQ:
            raise SipParseError(f"bad CSeq header: sequence number {parts[0][:20]} exceeds 2**31-1")
        return cls(int(parts[0]), parts[1])

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"

    def __repr__(self) -> str:
        return f"CSeq({self.seq}, {self.method!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CSeq):
            return NotImplemented
        return (self.seq, self.method) == (other.seq, other.method)

    def __hash__(self) -> int:
        return hash((self.seq, self.method))


# --- messages ---------------------------------------------------------------------


def _as_headers(headers: Headers | Iterable[tuple[str, str]] | None) -> Headers:
    if headers is None:
        return Headers()
    if isinstance(headers, Headers):
        return headers
    return Headers(headers)


class SipMessage:
    """What requests and responses share: headers, a text body, typed accessors.

    Accessors parse on each call (the headers stay the one source of truth and
    may be edited freely); they raise SipParseError for a malformed value.
    """

    def __init__(self, headers: Headers | Iterable[tuple[str, str]] | None = None, body: str = ""):
        self.headers = _as_headers(headers)
        self.body = body or ""

    def start_line(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def call_id(self) -> str | None:
        return self.headers.get("Call-ID")

    @property
    def cseq(self) -> CSeq:
        return CSeq.parse(self.headers.get("CSeq"))

    @property
    def from_(self) -> NameAddr:
        return NameAddr.parse(self._required("From"))

    @property
    def to(self) -> NameAddr:
        return NameAddr.parse(self._required("To"))

    @property
    def via(self) -> list[Via]:
        return [Via.parse(v) for v in self.headers.get_all("Via")]

    @property
    def top_via(self) -> Via | None:
        values = self.headers.get_all("Via")
        return Via.parse(values[0]) if values else None

    @property
    def contact(self) -> list[NameAddr]:
        """Contact addresses in order; a ``*`` (un-REGISTER all) is skipped, see :attr:`contact_wildcard`."""
        return [NameAddr.parse(v) for v in self.headers.get_all("Contact") if v != "*"]

    @property
    def contact_wildcard(self) -> bool:
        return "*" in self.headers.get_all("Contact")

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def max_forwards(self) -> int | None:
        return _small_int(self.headers.get("Max-Forwards"), "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        return _small_int(self.headers.get("Expires"), "Expires", MAX_EXPIRES)

    def _required(self, name: str) -> str:
        value = self.headers.get(name)
        if value is None:
            raise SipParseError(f"missing mandatory header: {name}")
        return value

    def encode(self) -> bytes:
        """The wire form: CRLF line ends, Content-Length recomputed from the body."""
        body = self.body.encode("utf-8", "surrogateescape")
        start = self.start_line()
        if "\r" in start or "\n" in start:
            raise SipError(f"line break in start line {_short(start)}")
        parts = [start, "\r\n"]
        for key, name, value in self.headers._items:
            if key != "content-length":
                parts += (name, ": ", value, "\r\n")
        parts.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "".join(parts).encode("utf-8", "surrogateescape") + body

    def __str__(self) -> str:
        return self.encode().decode("utf-8", "surrogateescape")


class SipRequest(SipMessage):
    def __init__(self, method: str, uri: SipUri | str, headers: Headers | Iterable[tuple[str, str]] | None = None,
                 body: str = ""):
        super().__init__(headers, body)
        self.method = method
        self.uri = SipUri.parse(uri) if isinstance(uri, str) else uri

    def start_line(self) -> str:
        return f"{self.method} {self.uri} {SIP_VERSION}"

    def __repr__(self) -> str:
        return f"<SipRequest {self.method} {self.uri!r} Call-ID={self.call_id!r}>"


class SipResponse(SipMessage):
    def __init__(self, status: int, reason: str | None = None,
                 headers: Headers | Iterable[tuple[str, str]] | None = None, body: str = ""):
        super().__init__(headers, body)
        self.status = int(status)
        self.reason = REASON_PHRASES.get(self.status, "") if reason is None else reason

    def start_line(self) -> str:
        return f"{SIP_VERSION} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<SipResponse {self.status} {self.reason!r} Call-ID={self.call_id!r}>"


def _small_int(text: str | None, name: str, limit: int) -> int | None:
    if text is None:
        return None
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        raise SipParseError(f"bad {name} header: {_short(text)}")
    if len(value) > 12 or int(value) > limit:
        raise SipParseError(f"bad {name} header: {value[:20]} exceeds {limit}")
    return int(value)


# --- parser -------------------------------------------------------------------------


def parse_message(data: bytes | str) -> SipRequest | SipResponse:
    """Parse one SIP message (one WebSocket frame); raises only SipParseError."""
    if isinstance(data, str):
        if len(data) > MAX_MESSAGE_BYTES:
            raise SipParseError(f"message of {len(data)} characters exceeds the {MAX_MESSAGE_BYTES}-byte limit")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SipParseError(f"message text is not encodable as UTF-8 (position {exc.start})") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = bytes(data)
    else:
        raise SipParseError(f"cannot parse a {type(data).__name__} as a SIP message")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise SipParseError(f"message of {len(raw)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    start = 0
    n = len(raw)
    while start < n and raw[start] in (13, 10):
        start += 1
    if start == n:
        raise SipParseError("empty message")
    end = _HEADER_END.search(raw, start)
    if end is not None:
        head_bytes, body_bytes = raw[start : end.start()], raw[end.end() :]
    else:
        head_bytes, body_bytes = raw[start:].rstrip(b"\r\n"), None
    try:
        head = head_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"header section is not valid UTF-8 (byte {exc.start})") from None
    text = head.replace("\r\n", "\n")
    lines = text.split("\n")
    start_line = lines[0]
    if "\r" in start_line or _BAD_CONTROL.search(start_line):
        raise SipParseError(f"control character in start line {_short(start_line)}")
    message, uri_error = _parse_start_line(start_line)
    # One scan of the whole header section spares a per-header check in the usual case.
    items, header_error = _parse_header_lines(lines, _ANY_CONTROL.search(text) is not None)
    message.headers = Headers._trusted(items)
    partial = None
    if isinstance(message, SipRequest) and "Via" in message.headers:
        partial = message  # enough to send a 400 back naming what is wrong
    try:
        if uri_error is not None or header_error is not None:
            raise SipParseError(uri_error or header_error or "")
        _validate(message)
        message.body = _body(message, body_bytes)
    except SipParseError as exc:
        if partial is not None and body_bytes is not None:
            partial.body = body_bytes.decode("utf-8", "replace")
        raise SipParseError(exc.reason, partial) from None
    return message


def _parse_start_line(line: str) -> tuple[SipRequest | SipResponse, str | None]:
    """The message skeleton, and why its Request-URI is bad (answerable with 400)."""
    if line[:4].upper() == "SIP/":
        parts = line.split(" ", 2)
        if parts[0].upper() != SIP_VERSION:
            raise SipParseError(f"unsupported SIP version in status line {_short(line)}")
        if len(parts) < 2 or len(parts[1]) != 3 or not parts[1].isascii() or not parts[1].isdigit():
            raise SipParseError(f"bad status code in status line {_short(line)}")
        status = int(parts[1])
        if not 100 <= status <= 699:
            raise SipParseError(f"status code {status} out of range 100-699")
        return SipResponse(status, parts[2] if len(parts) == 3 else "", Headers()), None
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise SipParseError(f"bad request line (want 'METHOD URI SIP/2.0' with single spaces): {_short(line)}")
    method, uri_text, version = parts
    if not is_token(method):
        raise SipParseError(f"bad method in request line {_short(line)}")
    if version.upper() != SIP_VERSION:
        if version[:4].upper() == "SIP/":
            raise SipParseError(f"unsupported SIP version {version[:20]!r} in request line")
        raise SipParseError(f"bad request line (no SIP version): {_short(line)}")
    try:
        uri = SipUri.parse(uri_text)
        if uri.headers:
            raise SipParseError(f"Request-URI must not contain headers: {_short(uri_text)}")
    except SipParseError as exc:
        # Keep the text opaque so the request can still be answered 400.
        return SipRequest(method, SipUri(scheme="", opaque=uri_text), Headers()), f"bad Request-URI: {exc.reason}"
    return SipRequest(method, uri, Headers()), None


def _parse_header_lines(lines: list[str], controls: bool = True) -> tuple[list[tuple[str, str, str]], str | None]:
    """Header fields in order, and the first problem met (bad lines are skipped).

    Going on past a bad line keeps Via/From/To/Call-ID/CSeq for the 400 answer.
    """
    items: list[tuple[str, str, str]] = []
    error: str | None = None
    pending: list[str] = []
    name = ""

    def flush() -> None:
        nonlocal error
        value = " ".join(p for p in pending if p) if len(pending) > 1 else pending[0]
        canonical = canonical_name(name)
        if controls and _BARE_CONTROL.search(value):
            error = error or f"control character in {canonical} header"
        else:
            items.append((canonical.lower(), canonical, value))

    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if pending:
                pending.append(line.strip(" \t"))
            else:
                error = error or f"continuation line before the first header: {_short(line)}"
            continue
        if pending:
            flush()
            pending = []
        if len(items) >= MAX_HEADERS:
            return items, f"more than {MAX_HEADERS} headers"
        colon = line.find(":")
        if colon < 0:
            # Only the first word: the line may be a mangled Authorization header.
            error = error or f"header line without a colon: {_short(line.split(None, 1)[0][:30] if line.strip() else line)}"
            continue
        name = line[:colon].rstrip(" \t")
        if not is_token(name):
            error = error or f"bad header name {name[:40]!r}"
            continue
        pending = [line[colon + 1 :].strip(" \t")]
    if pending:
        flush()
    return items, error


def _validate(message: SipRequest | SipResponse) -> None:
    """Mandatory and single-valued headers present once and well-formed (RFC 3261 8.1.1, 20)."""
    headers = message.headers
    counts: dict[str, int] = {}
    for key, _, _ in headers._items:
        counts[key] = counts.get(key, 0) + 1
    for name in _SINGLETONS:
        if counts.get(name.lower(), 0) > 1:
            raise SipParseError(f"more than one {name} header")
    for name in _MANDATORY:
        if name.lower() not in counts:
            raise SipParseError(f"missing mandatory header: {name}")
    cseq = _field(message, "CSeq", lambda: message.cseq)
    if isinstance(message, SipRequest) and cseq.method != message.method:
        raise SipParseError(f"CSeq method {cseq.method} does not match request method {message.method}")
    _field(message, "From", lambda: message.from_)
    _field(message, "To", lambda: message.to)
    vias = _field(message, "Via", lambda: message.via)
    if not vias:
        raise SipParseError("missing mandatory header: Via")
    call_id = headers.get("Call-ID") or ""
    if not call_id or any(c in " \t" for c in call_id):
        raise SipParseError(f"bad Call-ID header: {_short(call_id)}")
    message.max_forwards  # noqa: B018 - validates
    message.expires  # noqa: B018 - validates
    if "contact" in counts:
        contacts = _field(message, "Contact", lambda: headers.get_all("Contact"))
        if "*" in contacts and len(contacts) > 1:
            raise SipParseError("bad Contact header: '*' mixed with addresses")
        _field(message, "Contact", lambda: message.contact)
    for name in ("Route", "Record-Route"):
        if name.lower() in counts:
            _field(message, name, lambda n=name: [NameAddr.parse(v) for v in headers.get_all(n)])


def _field(message: SipMessage, name: str, parse: Callable[[], _T]) -> _T:
    """Run ``parse``; its error is reworded to name the header and show its value."""
    try:
        return parse()
    except SipParseError as exc:
        if exc.reason.startswith(f"bad {name} header"):
            raise
        value = message.headers.get(name) or ""
        raise SipParseError(f"bad {name} header: {_short(value)} ({exc.reason})") from None


def _body(message: SipMessage, body_bytes: bytes | None) -> str:
    length_text = message.headers.get("Content-Length")
    length = None
    if length_text is not None:
        value = length_text.strip()
        if not value.isascii() or not value.isdigit() or len(value) > 10:
            raise SipParseError(f"bad Content-Length header: {_short(length_text)}")
        length = int(value)
    if body_bytes is None:
        if length:
            raise SipParseError(f"Content-Length {length} but no empty line ends the headers")
        raise SipParseError("no empty line after the headers")
    if length is not None:
        if length > len(body_bytes):
            raise SipParseError(f"Content-Length {length} is larger than the {len(body_bytes)}-byte body")
        body_bytes = body_bytes[:length]
    return body_bytes.decode("utf-8", "surrogateescape")


# --- helpers ------------------------------------------------------------------------


def generate_branch() -> str:
    """A new RFC 3261 branch (magic cookie + 80 random bits)."""
    return BRANCH_COOKIE + secrets.token_hex(10)


def generate_tag() -> str:
    return secrets.token_hex(6)


def generate_call_id() -> str:
    return secrets.token_hex(16)


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Headers | Iterable[tuple[str, str]] | None = None,
    body: str = "",
    content_type: str | None = None,
) -> SipResponse:
    """A response to ``request`` per RFC 3261 8.2.6.

    Copies every Via, From, To (adding ``to_tag`` when the To has none and the
    status is above 100), Call-ID and CSeq verbatim, plus Record-Route for
    101-299 (12.1.1: a dialog-forming response carries the route set back).
    """
    items: list[tuple[str, str, str]] = []
    src = request.headers._items
    items.extend(item for item in src if item[0] == "via")
    if 100 < status < 300:
        items.extend(item for item in src if item[0] == "record-route")
    for key in ("from", "to", "call-id", "cseq"):
        for item in src:
            if item[0] == key:
                if key == "to" and to_tag and status > 100 and not _has_tag(item[2]):
                    item = (item[0], item[1], f"{item[2]};tag={to_tag}")
                items.append(item)
                break
    response = SipResponse(status, reason, Headers._trusted(items), body)
    extra = _as_headers(headers)
    for name, value in extra:
        response.headers.add(name, value)
    if body and "Content-Type" not in response.headers:
        response.headers.add("Content-Type", content_type or "application/sdp")
    return response


def _has_tag(value: str) -> bool:
    try:
        return NameAddr.parse(value).tag is not None
    except SipParseError:
        return ";tag=" in value.lower()
