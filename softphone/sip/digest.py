"""HTTP digest authentication for SIP (RFC 7616, RFC 8760, RFC 2617, RFC 2069).

Client side: parse ``WWW-Authenticate``/``Proxy-Authenticate`` challenges,
pick the strongest one we support, and compute the ``Authorization`` value
with a per-(realm, nonce) nonce count.  Server side (the lab registrar and
tests): issue challenges and verify answers.

The password and computed responses are secrets: neither appears in logs,
reprs or error messages.  Computed responses are registered with the log
redactor only on request (``register_responses=True``): every registration
grows the redactor's pattern, and hundreds of agents re-registering for hours
would make that unbounded, while the response is a one-use hash that the SIP
layer never logs.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from softphone.errors import AuthenticationError, SipParseError
from softphone.log import Secret, get_logger, register_secret
from softphone.sip.headers import TOKEN_CHARS

log = get_logger(__name__)

# Strength order for choose_challenge: higher is preferred (RFC 8760 section 2.4).
ALGORITHM_STRENGTH: dict[str, int] = {
    "MD5": 1,
    "MD5-SESS": 1,
    "SHA-256": 2,
    "SHA-256-SESS": 2,
    "SHA-512-256": 3,
    "SHA-512-256-SESS": 3,
}
_HASHES: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256", "SHA-512-256": "sha512_256"}
SUPPORTED_QOP = ("auth", "auth-int")
# Unquoted values are tokens; base64 nonces sent unquoted by lax servers need "/=:@" too.
_UNQUOTED_VALUE_CHARS = frozenset(TOKEN_CHARS | set("/=:@?"))


def _short(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _hash(algorithm: str, text: str) -> str:
    base = algorithm.upper().removesuffix("-SESS")
    name = _HASHES.get(base)
    if name is None:
        raise AuthenticationError(f"unsupported digest algorithm {algorithm!r}")
    return hashlib.new(name, text.encode("utf-8")).hexdigest()


def parse_auth_params(value: str) -> tuple[str, dict[str, str]]:
    """``Scheme a=b, c="d"`` -> (scheme, params with lower-cased names, unquoted values)."""
    if not isinstance(value, str) or not value.strip():
        raise SipParseError("empty authentication header")
    text = value.strip(" \t")
    n = len(text)
    i = 0
    while i < n and text[i] in TOKEN_CHARS:
        i += 1
    scheme = text[:i]
    if not scheme:
        raise SipParseError("authentication header does not start with a scheme token")
    params: dict[str, str] = {}
    expect_comma = False
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        if text[i] == ",":
            i += 1
            expect_comma = False
            continue
        if expect_comma:
            # Offsets, not text: these headers carry nonces and responses.
            raise SipParseError(f"missing ',' between parameters in {scheme} header at offset {i}")
        j = i
        while j < n and text[j] in TOKEN_CHARS:
            j += 1
        if j == i:
            raise SipParseError(f"bad character in {scheme} header parameters at offset {i}")
        name = text[i:j].lower()
        i = j
        while i < n and text[i] in " \t":
            i += 1
        if i >= n or text[i] != "=":
            raise SipParseError(f"parameter {name!r} without a value in {scheme} header")
        i += 1
        while i < n and text[i] in " \t":
            i += 1
        if i < n and text[i] == '"':
            out: list[str] = []
            i += 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            if i >= n:
                raise SipParseError(f"unterminated quoted value of {name!r} in {scheme} header")
            i += 1
            params[name] = "".join(out)
        else:
            j = i
            while j < n and text[j] in _UNQUOTED_VALUE_CHARS:
                j += 1
            if j == i:
                raise SipParseError(f"parameter {name!r} has an empty value in {scheme} header")
            params[name] = text[i:j]
            i = j
        expect_comma = True
    return scheme, params


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class DigestChallenge:
    """One ``Digest`` challenge from a 401/407."""

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: list[str] = field(default_factory=list)
    stale: bool = False
    domain: str | None = None
    userhash: bool = False
    charset: str | None = None
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, header_value: str) -> DigestChallenge:
        scheme, params = parse_auth_params(header_value)
        if scheme.lower() != "digest":
            raise AuthenticationError(f"unsupported authentication scheme {scheme!r} (only Digest)")
        for name in ("realm", "nonce"):
            if name not in params:
                raise SipParseError(f"Digest challenge without {name}")
        qop = [q.strip().lower() for q in params["qop"].split(",") if q.strip()] if "qop" in params else []
        return cls(
            realm=params["realm"],
            nonce=params["nonce"],
            opaque=params.get("opaque"),
            algorithm=params.get("algorithm", "MD5").upper(),
            qop=qop,
            stale=params.get("stale", "").lower() == "true",
            domain=params.get("domain"),
            userhash=params.get("userhash", "").lower() == "true",
            charset=params.get("charset"),
            params=params,
        )

    @property
    def supported(self) -> bool:
        """We can answer it: known algorithm, and qop absent or offering auth/auth-int."""
        if self.algorithm not in ALGORITHM_STRENGTH:
            return False
        return not self.qop or any(q in SUPPORTED_QOP for q in self.qop)


def choose_challenge(challenges: list[DigestChallenge]) -> DigestChallenge:
    """The strongest supported challenge (SHA-512-256 > SHA-256 > MD5; first wins ties)."""
    usable = [c for c in challenges if c.supported]
    if not usable:
        offered = ", ".join(f"{c.algorithm}/qop={','.join(c.qop) or '-'}" for c in challenges) or "none"
        raise AuthenticationError(f"no supported digest challenge (offered: {offered})")
    return max(usable, key=lambda c: ALGORITHM_STRENGTH[c.algorithm])


class DigestCredentials:
    """Username and password (kept as a :class:`Secret`), optionally bound to a realm."""

    __slots__ = ("_password", "realm", "username")

    def __init__(self, username: str, password: Secret | str, realm: str | None = None):
        self.username = username
        self._password = password if isinstance(password, Secret) else Secret(password)
        self.realm = realm

    def password(self) -> str:
        return self._password.reveal()

    def __repr__(self) -> str:
        return f"DigestCredentials(username={self.username!r}, password=***, realm={self.realm!r})"


def compute_response(algorithm: str, username: str, realm: str, password: str, nonce: str, method: str,
                     uri: str, qop: str | None = None, nc: str | None = None, cnonce: str | None = None,
                     body: str = "") -> str:
    """The ``response`` value (RFC 7616 3.4.1; RFC 2069 when ``qop`` is None)."""
    algorithm = algorithm.upper()
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    if algorithm.endswith("-SESS"):
        ha1 = _hash(algorithm, f"{ha1}:{nonce}:{cnonce or ''}")
    if qop == "auth-int":
        ha2 = _hash(algorithm, f"{method}:{uri}:{_hash(algorithm, body)}")
    else:
        ha2 = _hash(algorithm, f"{method}:{uri}")
    if qop:
        return _hash(algorithm, f"{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return _hash(algorithm, f"{ha1}:{nonce}:{ha2}")


class DigestClient:
    """Answers challenges for one set of credentials, counting nonce use."""

    MAX_NONCES = 64

    def __init__(self, credentials: DigestCredentials, *, register_responses: bool = False):
        self.credentials = credentials
        self.register_responses = register_responses
        self._nc: dict[tuple[str, str], int] = {}

    def nonce_count(self, challenge: DigestChallenge) -> int:
        """How many times we answered this (realm, nonce) so far."""
        return self._nc.get((challenge.realm, challenge.nonce), 0)

    def authorize(self, challenge: DigestChallenge, method: str, uri: str, body: str = "",
                  cnonce: str | None = None) -> str:
        """The ``Digest ...`` value for Authorization/Proxy-Authorization."""
        creds = self.credentials
        if creds.realm is not None and creds.realm != challenge.realm:
            raise AuthenticationError(
                f"credentials of {creds.username!r} are for realm {creds.realm!r}, "
                f"challenge is from realm {challenge.realm!r}")
        if not challenge.supported:
            raise AuthenticationError(
                f"unsupported digest challenge: algorithm {challenge.algorithm!r}, qop {challenge.qop!r}")
        if "auth" in challenge.qop:
            qop: str | None = "auth"
        elif "auth-int" in challenge.qop:
            qop = "auth-int"
        else:
            qop = None
        algorithm = challenge.algorithm
        sess = algorithm.endswith("-SESS")
        key = (challenge.realm, challenge.nonce)
        count = self._nc.get(key, 0) + 1
        if key not in self._nc and len(self._nc) >= self.MAX_NONCES:
            self._nc.pop(next(iter(self._nc)))
        self._nc[key] = count
        nc = f"{count:08x}"
        if cnonce is None and (qop or sess):
            cnonce = secrets.token_hex(12)
        username = creds.username
        if challenge.userhash:
            username = _hash(algorithm, f"{creds.username}:{challenge.realm}")
        response = compute_response(algorithm, creds.username, challenge.realm, creds.password(),
                                    challenge.nonce, method, uri, qop, nc if qop else None, cnonce, body)
        if self.register_responses:
            register_secret(response)
        if challenge.userhash or username.isascii():
            parts = [f"username={_quote(username)}"]
        else:
            parts = [f"username*=UTF-8''{quote(username, safe='')}"]
        parts += [f"realm={_quote(challenge.realm)}", f"nonce={_quote(challenge.nonce)}",
                  f"uri={_quote(uri)}", f"response={_quote(response)}", f"algorithm={algorithm_name(algorithm)}"]
        if cnonce is not None and (qop or sess):
            parts.append(f"cnonce={_quote(cnonce)}")
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")
        if qop:
            parts += [f"qop={qop}", f"nc={nc}"]
        if challenge.userhash:
            parts.append("userhash=true")
        return "Digest " + ", ".join(parts)

    def should_retry(self, challenge: DigestChallenge, previous_attempt_failed: bool) -> bool:
        """Answer a fresh challenge once; after a rejected answer only a stale nonce earns a retry."""
        if not challenge.supported:
            return False
        if not previous_attempt_failed:
            return True
        return challenge.stale

    def __repr__(self) -> str:
        return f"DigestClient({self.credentials!r})"


def algorithm_name(algorithm: str) -> str:
    """Canonical spelling on the wire (``MD5-sess``, ``SHA-256``)."""
    algorithm = algorithm.upper()
    return algorithm[:-5] + "-sess" if algorithm.endswith("-SESS") else algorithm


# --- server side ----------------------------------------------------------------------


def make_challenge(realm: str, algorithm: str = "MD5", qop: tuple[str, ...] | list[str] | None = ("auth",),
                   stale: bool = False, opaque: str | None = None, *, nonce: str | None = None) -> tuple[str, str]:
    """A ``Digest`` challenge value and its nonce (fresh unless given; for the lab registrar and tests)."""
    if algorithm.upper() not in ALGORITHM_STRENGTH:
        raise AuthenticationError(f"unsupported digest algorithm {algorithm!r}")
    if nonce is None:
        nonce = f"{int(time.time()):x}{secrets.token_hex(12)}"
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    parts.append(f"algorithm={algorithm_name(algorithm)}")
    if qop:
        parts.append(f"qop={_quote(','.join(qop))}")
    if stale:
        parts.append("stale=true")
    return "Digest " + ", ".join(parts), nonce


def _valid_escapes(text: str) -> bool:
    """RFC 5987 value: %XX escapes that decode as UTF-8."""
    try:
        unquote(text, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


class NonceState(enum.Enum):
    VALID = "valid"
    STALE = "stale"  # ours but expired: challenge again with stale=true (RFC 7616 3.3)
    UNKNOWN = "unknown"  # not issued by this store: plain challenge


class NonceStore:
    """Stateless server nonces: ``<issued-at hex>.<HMAC>`` checked without keeping a table.

    A registrar answers an expired-but-genuine nonce with ``stale=true`` so the
    client retries with the same credentials instead of reporting a failure.
    """

    def __init__(self, ttl: float = 300.0, secret: bytes | None = None, clock: Callable[[], float] = time.time):
        self.ttl = ttl
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        # A random part keeps nonces issued in the same millisecond apart: nonce counts are
        # per nonce, so two clients sharing one would look like a replay to NonceCounter.
        stamp = f"{int(self._clock() * 1000):x}-{secrets.token_hex(6)}"
        return f"{stamp}.{self._mac(stamp)}"

    def state(self, nonce: str) -> NonceState:
        stamp, sep, mac = nonce.partition(".")
        if not sep or not hmac.compare_digest(mac.encode(), self._mac(stamp).encode()):
            return NonceState.UNKNOWN
        try:
            issued = int(stamp.split("-", 1)[0], 16) / 1000
        except ValueError:
            return NonceState.UNKNOWN
        return NonceState.VALID if 0 <= self._clock() - issued <= self.ttl else NonceState.STALE

    def is_valid(self, nonce: str) -> bool:
        return self.state(nonce) is NonceState.VALID


class NonceCounter:
    """Optional server-side replay check: nonce counts must grow per nonce."""

    def __init__(self, limit: int = 10000):
        self.limit = limit
        self._last: dict[str, int] = {}

    def accept(self, nonce: str, nc: int) -> bool:
        if nc <= self._last.get(nonce, 0):
            return False
        if nonce not in self._last and len(self._last) >= self.limit:
            self._last.pop(next(iter(self._last)))
        self._last[nonce] = nc
        return True


def verify_authorization(header_value: str, method: str, password_lookup: Callable[[str], str | None],
                         realm: str, body: str = "", *, nonce_counter: NonceCounter | None = None,
                         nonces: Callable[[str], bool] | None = None,
                         request_uri: str | None = None) -> str | None:
    """The authenticated username, or None if the answer is wrong for any reason.

    ``nonces`` may say whether a nonce is one we issued; ``nonce_counter``
    enforces growing ``nc`` values; ``request_uri`` must then equal the
    digest ``uri`` (an answer replayed for another target is refused).
    Never raises for bad input.
    """
    try:
        scheme, params = parse_auth_params(header_value)
    except SipParseError as exc:
        log.info("unparsable Authorization header: %s", exc.reason)
        return None
    if scheme.lower() != "digest":
        return None
    username = params.get("username")
    extended = params.get("username*")
    if username is None and extended is not None:
        charset, _, encoded = extended.partition("''")
        if charset.upper() != "UTF-8" or not encoded:
            return None
        username = unquote(encoded, errors="strict") if _valid_escapes(encoded) else None
    nonce = params.get("nonce")
    response = params.get("response")
    uri = params.get("uri")
    if not username or nonce is None or response is None or uri is None or params.get("realm") != realm:
        return None
    if request_uri is not None and uri != request_uri:
        return None
    if params.get("userhash", "").lower() == "true":
        return None  # hashed usernames need a reverse table the lab does not keep
    algorithm = params.get("algorithm", "MD5").upper()
    if algorithm not in ALGORITHM_STRENGTH:
        return None
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        if qop not in SUPPORTED_QOP or nc is None or cnonce is None or len(nc) != 8:
            return None
        try:
            nc_value = int(nc, 16)
        except ValueError:
            return None
    if nonces is not None and not nonces(nonce):
        return None
    password = password_lookup(username)
    if password is None:
        return None
    expected = compute_response(algorithm, username, realm, password, nonce, method, uri, qop, nc, cnonce, body)
    if not hmac.compare_digest(expected.encode(), response.lower().encode()):
        return None
    if qop is not None and nonce_counter is not None and not nonce_counter.accept(nonce, nc_value):
        return None
    return username
