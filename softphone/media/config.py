"""Media configuration: ICE/TURN servers, codecs and DTMF, from launch parameters.

The Webphone reaches media through ``turn:{server}:{turn_port}`` (UDP and
TCP) with the agent's ``username``/``password`` as TURN credentials.  Two
aiortc behaviours shape this module:

* aiortc falls back to Google's public STUN server when
  ``RTCConfiguration.iceServers`` is ``None``.  A headless agent inside a
  contact centre must never talk to a public address it was not given, so
  :meth:`IceConfig.rtc_configuration` always passes an explicit list (empty
  when nothing is configured).
* aiortc (aioice) uses only the *first* TURN URL it is given.  We therefore
  pick one URL ourselves: the configured URLs are ordered by
  ``transport_preference`` (default UDP, then TCP, then TLS) and the first one
  wins; :attr:`IceConfig.selected_turn_url` says which.  To force TCP (a
  firewall that drops UDP), set ``transport_preference=("tcp", "udp", "tls")``.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy

from softphone.errors import ConfigurationError
from softphone.log import Secret, get_logger, reveal
from softphone.media.codecs import DEFAULT_CODECS, SUPPORTED_CODECS

if TYPE_CHECKING:
    from softphone.params import LaunchParams

log = get_logger(__name__)

#: Same default as SIP.js 0.15's SessionDescriptionHandler (iceGatheringTimeout).
DEFAULT_GATHERING_TIMEOUT = 5.0

#: RFC 7064/7065 URIs; ``?transport=`` only for TURN.
_URI_RE = re.compile(
    r"^(?P<scheme>stuns?|turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[^?:\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?:\?transport=(?P<transport>[a-z]+))?$"
)


#: ``IceConfig.host_addresses`` when every server is on this machine.
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1",)


def is_loopback_host(host: str | None) -> bool:
    """``localhost`` or a loopback address literal (127.0.0.0/8, ::1); names are not resolved."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TurnTransport(enum.Enum):
    """How a TURN client reaches the server (``turns:`` is TLS over TCP)."""

    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


@dataclass(frozen=True)
class IceServerUrl:
    """One parsed STUN/TURN URL."""

    url: str
    scheme: str
    host: str
    port: int
    transport: TurnTransport | None

    @property
    def is_turn(self) -> bool:
        return self.scheme in ("turn", "turns")

    @classmethod
    def parse(cls, url: str, field_name: str = "turn_urls") -> IceServerUrl:
        match = _URI_RE.match(url.strip())
        if not match:
            raise ConfigurationError(f"{field_name}: {url!r} is not a stun:/turn:/turns: URL")
        scheme = match["scheme"]
        port = int(match["port"]) if match["port"] else (5349 if scheme.endswith("s") else 3478)
        if not 0 < port < 65536:
            raise ConfigurationError(f"{field_name}: port {port} of {url!r} is out of range")
        transport_name = match["transport"]
        if scheme.startswith("stun"):
            if transport_name:
                raise ConfigurationError(f"{field_name}: {url!r}: a STUN URL takes no ?transport=")
            transport = None
        elif scheme == "turns":
            if transport_name not in (None, "tcp"):
                raise ConfigurationError(f"{field_name}: {url!r}: turns: runs over TCP only")
            transport = TurnTransport.TLS
        else:
            if transport_name not in (None, "udp", "tcp"):
                raise ConfigurationError(
                    f"{field_name}: {url!r}: transport must be udp or tcp, got {transport_name!r}"
                )
            transport = TurnTransport(transport_name or "udp")
        return cls(url=url.strip(), scheme=scheme, host=match["host"].strip("[]"), port=port,
                   transport=transport)


@dataclass(frozen=True)
class IceConfig:
    """ICE servers and policy for one peer connection.

    ``credential`` is a :class:`Secret`; ``repr`` shows ``***``.  No STUN
    server is used unless listed in ``stun_urls``.
    """

    turn_urls: tuple[str, ...] = ()
    username: str | None = None
    credential: Secret | None = None
    relay_only: bool = False
    transport_preference: tuple[str, ...] = ("udp", "tcp", "tls")
    gathering_timeout: float = DEFAULT_GATHERING_TIMEOUT
    stun_urls: tuple[str, ...] = ()
    tls_ca_file: str | None = None
    """CA bundle for a ``turns:`` server's certificate (default: the system's)."""
    tls_insecure: bool = False
    """Accept any ``turns:`` certificate: an explicit opt-in, never a fallback."""
    host_addresses: tuple[str, ...] | None = None
    """Gather host candidates on these addresses only (None: every interface but 127.0.0.1, as
    aioice does).  :meth:`loopback_only_for` sets :data:`LOOPBACK_HOSTS` when every server is
    local, so a single-machine setup never sends media over another interface."""

    def __post_init__(self) -> None:
        if isinstance(self.turn_urls, str):
            object.__setattr__(self, "turn_urls", (self.turn_urls,))
        if isinstance(self.stun_urls, str):
            object.__setattr__(self, "stun_urls", (self.stun_urls,))
        if self.credential is not None and not isinstance(self.credential, Secret):
            object.__setattr__(self, "credential", Secret(self.credential))
        for url in self.turn_urls:
            if not IceServerUrl.parse(url, "turn_urls").is_turn:
                raise ConfigurationError(f"turn_urls: {url!r} is not a turn: or turns: URL")
        for url in self.stun_urls:
            if IceServerUrl.parse(url, "stun_urls").is_turn:
                raise ConfigurationError(f"stun_urls: {url!r} is not a stun: URL")
        known = {t.value for t in TurnTransport}
        for name in self.transport_preference:
            if name not in known:
                raise ConfigurationError(
                    f"transport_preference: {name!r} is not one of {sorted(known)}"
                )
        if not self.gathering_timeout > 0:
            raise ConfigurationError(
                f"gathering_timeout: must be > 0 seconds, got {self.gathering_timeout!r}"
            )
        if self.relay_only and not self.turn_urls:
            raise ConfigurationError("relay_only: needs at least one TURN URL in turn_urls")
        if self.tls_ca_file and self.tls_insecure:
            raise ConfigurationError("tls_ca_file/tls_insecure: give one or the other, not both")
        if self.tls_ca_file is not None:
            import os

            if not os.path.isfile(self.tls_ca_file):
                raise ConfigurationError(f"tls_ca_file: {self.tls_ca_file!r} is not a readable file")
        if self.host_addresses is not None:
            if isinstance(self.host_addresses, str):
                object.__setattr__(self, "host_addresses", (self.host_addresses,))
            for address in self.host_addresses:
                try:
                    ipaddress.ip_address(address)
                except ValueError:
                    raise ConfigurationError(f"host_addresses: {address!r} is not an IP address") from None
            object.__setattr__(self, "host_addresses", tuple(self.host_addresses))
        if self.turn_urls and (not self.username or not self.credential):
            raise ConfigurationError("username/credential: TURN URLs need both (long-term credentials)")

    @property
    def ordered_turn_urls(self) -> list[IceServerUrl]:
        """TURN URLs by ``transport_preference``, then configuration order."""
        parsed = [IceServerUrl.parse(u) for u in self.turn_urls]
        rank = {name: i for i, name in enumerate(self.transport_preference)}
        usable = [p for p in parsed if p.transport and p.transport.value in rank]
        return sorted(usable, key=lambda p: rank[p.transport.value])  # type: ignore[union-attr]

    @property
    def selected_turn_url(self) -> str | None:
        """The one TURN URL aiortc will use (it ignores all but the first)."""
        ordered = self.ordered_turn_urls
        return ordered[0].url if ordered else None

    def turn_tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for a ``turns:`` server when it differs from aioice's default.

        aioice verifies ``turns:`` certificates against the system CAs (``ssl=True``);
        a CA file or the explicit insecure flag need a context of our own.
        """
        selected = self.ordered_turn_urls
        if not selected or selected[0].transport is not TurnTransport.TLS:
            return None
        if self.tls_insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            log.warning("TURN over TLS to %s without certificate verification (tls_insecure)", selected[0].host)
            return context
        if self.tls_ca_file:
            return ssl.create_default_context(cafile=self.tls_ca_file)
        return None

    def ice_servers(self) -> list[RTCIceServer]:
        """An explicit (possibly empty) list: never ``None``, so no public STUN default."""
        servers: list[RTCIceServer] = []
        selected = self.selected_turn_url
        if selected is not None:
            servers.append(
                RTCIceServer(urls=[selected], username=self.username, credential=reveal(self.credential))
            )
        if self.stun_urls:
            servers.append(RTCIceServer(urls=[self.stun_urls[0]]))
        return servers

    def rtc_configuration(self) -> RTCConfiguration:
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=self.ice_servers(), iceTransportPolicy=policy)

    def describe(self) -> str:
        """A log-safe one-liner (no credential)."""
        hosts = "" if self.host_addresses is None else f" hosts={','.join(self.host_addresses) or '-'}"
        return (
            f"turn={self.selected_turn_url or '-'} user={self.username or '-'} "
            f"relay_only={self.relay_only} stun={list(self.stun_urls) or '-'}{hosts}"
        )

    def loopback_only_for(self, *servers: str | None) -> IceConfig:
        """This configuration, gathering host candidates on 127.0.0.1 only when every server is local.

        ``servers``: the hosts of the servers talked to besides the STUN/TURN URLs (the SIP
        server); all of them and every STUN/TURN host must be loopback (:func:`is_loopback_host`).
        Unchanged when ``host_addresses`` is already set or some server is elsewhere.
        """
        if self.host_addresses is not None:
            return self
        hosts = [h for h in servers if h] + [IceServerUrl.parse(u).host for u in (*self.turn_urls, *self.stun_urls)]
        if not hosts or not all(is_loopback_host(h) for h in hosts):
            return self
        import dataclasses

        return dataclasses.replace(self, host_addresses=LOOPBACK_HOSTS)

    @classmethod
    def from_params(cls, params: LaunchParams, **overrides) -> IceConfig:
        """TURN on ``turn_port`` over UDP and TCP with the agent's credentials."""
        derived = params.derived
        values = dict(
            turn_urls=tuple(derived.turn_urls),
            username=derived.turn_username,
            credential=derived.turn_password,
        )
        values.update(overrides)
        return cls(**values)


#: ``MediaConfig.fast_path`` values (see :mod:`softphone.media.aiortc_seam`).
FAST_PATH_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class FastPathOptions:
    """The fast path's parts, each switchable for A/B measurements (all on by default).

    ``lean_sender``: pre-encoded tracks are sent from the shared 2 ms slot scheduler
    instead of aiortc's per-sender loop; ``light_parse``: counting-only receivers
    read the fixed RTP header only; ``spread``: new streams start in a slot of the
    scheduler's choosing instead of all at once.
    """

    lean_sender: bool = True
    light_parse: bool = True
    spread: bool = True


#: telephone-event payload types Chromium uses (peers.md): /48000 -> 110, /8000 -> 126.
DEFAULT_TELEPHONE_EVENT_PTS: dict[int, int] = {48000: 110, 8000: 126}


@dataclass(frozen=True)
class MediaConfig:
    """Everything a peer connection needs besides the audio source and sinks.

    ``codecs`` is the preference order offered and used to pick from an offer.
    ``telephone_event`` negotiates RFC 4733 at the clock rates in
    ``telephone_event_payload_types`` (rate -> payload type we offer).
    ``decode=False`` leaves received audio undecoded (the lean load path).
    ``fast_path``: ``"auto"`` runs the fast media path when the installed aiortc and
    aioice are the tested ones (else stock aiortc, with one warning), ``"on"``
    raises :class:`~softphone.errors.AiortcCompatibilityError` instead of falling
    back, ``"off"`` always runs stock aiortc (decoding every call).
    """

    ice: IceConfig = field(default_factory=IceConfig)
    codecs: tuple[str, ...] = DEFAULT_CODECS
    telephone_event: bool = True
    telephone_event_payload_types: dict[int, int] = field(
        default_factory=lambda: dict(DEFAULT_TELEPHONE_EVENT_PTS)
    )
    decode: bool = True
    dtmf_flush_timeout: float = 0.5
    """A received event whose end packets were all lost is reported this long after its last packet."""
    fast_path: str = "auto"
    fast_path_options: FastPathOptions = field(default_factory=FastPathOptions)

    def __post_init__(self) -> None:
        if isinstance(self.codecs, str):
            object.__setattr__(self, "codecs", tuple(c.strip() for c in self.codecs.split(",") if c.strip()))
        if not self.codecs:
            raise ConfigurationError("codecs: at least one audio codec is needed")
        lower = {c.lower(): c for c in SUPPORTED_CODECS}
        normalised = []
        for name in self.codecs:
            if name.lower() not in lower:
                raise ConfigurationError(
                    f"codecs: {name!r} is not supported by aiortc (supported: {', '.join(SUPPORTED_CODECS)})"
                )
            if lower[name.lower()] not in normalised:
                normalised.append(lower[name.lower()])
        object.__setattr__(self, "codecs", tuple(normalised))
        for rate, pt in self.telephone_event_payload_types.items():
            if rate not in (8000, 16000, 48000):
                raise ConfigurationError(f"telephone_event_payload_types: clock rate {rate} is not 8000/16000/48000")
            if not 96 <= pt <= 127:
                raise ConfigurationError(
                    f"telephone_event_payload_types: payload type {pt} is not dynamic (96-127)"
                )
        if len(set(self.telephone_event_payload_types.values())) != len(self.telephone_event_payload_types):
            raise ConfigurationError("telephone_event_payload_types: payload types must differ")
        if not self.dtmf_flush_timeout > 0:
            raise ConfigurationError(f"dtmf_flush_timeout: must be > 0, got {self.dtmf_flush_timeout!r}")
        if self.fast_path not in FAST_PATH_MODES:
            raise ConfigurationError(f"fast_path: {self.fast_path!r} is not one of {', '.join(FAST_PATH_MODES)}")
        if not isinstance(self.fast_path_options, FastPathOptions):
            raise ConfigurationError("fast_path_options: must be a FastPathOptions")

    @classmethod
    def from_params(cls, params: LaunchParams, *, ice: dict | None = None, **overrides) -> MediaConfig:
        return cls(ice=IceConfig.from_params(params, **(ice or {})), **overrides)
