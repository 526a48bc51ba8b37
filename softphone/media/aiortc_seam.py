"""The one module that touches aiortc's and aioice's private state.

aiortc has no public API for what a softphone under load needs (RFC 4733 on the
audio stream, counting RTP without a decoder thread, sending pre-encoded packets
from a shared timer, SRTP without a task hop per packet), so the media layer
reaches into its internals.  Every such access lives here, behind small
functions, so that an aiortc or aioice upgrade is one file to read and one table
to widen:

* :data:`TESTED_VERSIONS` and :func:`problems` / :func:`check`: the releases this
  module was written against and the attributes it relies on (probed once on a
  throw-away peer connection).  ``pyproject.toml`` pins exactly these releases.
* :func:`fast_path_enabled`: what ``MediaConfig.fast_path`` ("auto" | "on" |
  "off") means given that check: ``auto`` falls back to stock aiortc with one
  warning per process, ``on`` raises :class:`AiortcCompatibilityError`.
* The fast path proper (used only when enabled): :func:`install_fast_path` puts
  the direct SRTP receive, the direct send and the datetime-free clock on one
  peer connection; the clock is swapped while at least one such connection is
  open and put back after the last one closes.  Nothing is patched at import time.
* The receiver and sender hooks of the lean path: :class:`HookedRtpReceiver`
  (the class swapped onto aiortc's receivers) and the ``sender_*`` functions.
* The RFC 4733 hooks (:mod:`softphone.media.rfc4733` uses them with the fast path
  on or off: aiortc has no telephone-event of its own): :func:`check_rfc4733`,
  :func:`hook_rtp_packets`, :func:`route_payload_types`, :func:`send_rtp`...
* ICE details: host candidates on given addresses only (:func:`host_addresses`,
  per peer connection while it gathers); no public STUN fallback while a peer connection's gatherers are
  created (:func:`no_default_stun`), the TURN TLS context, the nominated pair.

``tests/test_aiortc_seam.py`` fails when any other module of the package touches
these names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import struct
import threading
import time
import types
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import aioice
import aioice.ice
import aioice.stun
import aiortc
import pylibsrtp
from aioice.turn import TurnTransport
from aiortc import RTCPeerConnection
from aiortc import clock as aiortc_clock
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcicetransport import RTCIceGatherer
from aiortc.rtcrtpreceiver import RemoteStreamTrack, RTCRtpReceiver, StreamStatistics
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensions, is_rtcp

from softphone.errors import AiortcCompatibilityError, MediaError
from softphone.log import get_logger

log = get_logger(__name__)

# --- versions and the one check ---------------------------------------------------------

#: Major.minor releases this module was written and tested against (pyproject pins the same).
TESTED_VERSIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "aiortc": ((1, 16),),
    "aioice": ((0, 13),),
}

FAST_PATH_MODES = ("auto", "on", "off")

#: Attributes the fast path relies on, on classes (checked without creating anything).
_FAST_CLASS_ATTRS: tuple[tuple[Any, str], ...] = (
    *((aiortc_clock, a) for a in ("current_ms", "current_ntp_time", "current_datetime")),
    (aioice.ice.Connection, "data_received"), (aioice.ice.Connection, "send"),
    (aioice.ice.StunProtocol, "send_data"), (aioice.ice.StunProtocol, "datagram_received"),
    (RTCDtlsTransport, "_send_rtp"), (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    *((RTCRtpReceiver, a) for a in ("receive", "stop", "_handle_rtp_packet", "_run_rtcp")),
    *((RTCRtpSender, a) for a in ("_run_rtp", "_run_rtcp", "_retransmit", "_next_encoded_frame",
                                  "_handle_rtcp_packet", "send", "stop")),
)
#: Instance attributes the fast path relies on (probed on a throw-away peer connection).
_FAST_INSTANCE_ATTRS: dict[str, tuple[str, ...]] = {
    "dtls": ("_rx_srtp", "_tx_srtp", "_state", "_rtp_router", "_RTCDtlsTransport__rx_bytes",
             "_RTCDtlsTransport__rx_packets", "_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets"),
    "connection": ("_queue", "_nominated", "_protocols"),
    "receiver": ("_RTCRtpReceiver__codecs", "_RTCRtpReceiver__rtx_ssrc", "_RTCRtpReceiver__transport",
                 "_RTCRtpReceiver__rtcp_task", "_RTCRtpReceiver__started", "_RTCRtpReceiver__remote_streams",
                 "_RTCRtpReceiver__active_ssrc", "_enabled", "_track"),
    "sender": ("_RTCRtpSender__track", "_RTCRtpSender__mid", "_RTCRtpSender__rtp_header_extensions_map",
               "_RTCRtpSender__rtp_started", "_RTCRtpSender__rtp_exited", "_RTCRtpSender__encoder",
               "_RTCRtpSender__ntp_timestamp", "_RTCRtpSender__rtp_timestamp", "_RTCRtpSender__rtp_task",
               "_RTCRtpSender__octet_count", "_RTCRtpSender__packet_count", "_ssrc", "_enabled"),
}
#: What the RFC 4733 hooks need (with the fast path on or off).
_RFC4733_CLASS_ATTRS: tuple[tuple[Any, str], ...] = (
    (RTCRtpSender, "setTransport"), (RTCRtpReceiver, "_handle_rtp_packet"),
    (RTCDtlsTransport, "_send_rtp"), (RTCDtlsTransport, "_register_rtp_sender"),
)
_RFC4733_INSTANCE_ATTRS: dict[str, tuple[str, ...]] = {
    "dtls": ("_rtp_router", "_rtp_header_extensions_map"),
    "receiver": ("_RTCRtpReceiver__remote_streams", "_RTCRtpReceiver__codecs", "_enabled"),
    "sender": ("_ssrc",),
}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())


def installed_versions() -> dict[str, str]:
    return {"aiortc": aiortc.__version__, "aioice": aioice.__version__}


def _probe_now() -> dict[str, Any]:
    from aiortc import RTCConfiguration

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver("audio")
    dtls = transceiver.receiver.transport
    return {
        "dtls": set(vars(dtls)),
        "connection": set(vars(getattr(dtls.transport, "_connection", None) or object())),
        "receiver": set(vars(transceiver.receiver)),
        "sender": set(vars(transceiver.sender)),
    }


@functools.lru_cache(maxsize=1)
def _probe() -> dict[str, Any]:
    """aiortc's objects for one audio transceiver, created and dropped (nothing is started)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # aiortc's objects look up the loop: lend them a private one
        loop = asyncio.new_event_loop()
        try:
            async def probe() -> dict[str, Any]:
                return _probe_now()

            return loop.run_until_complete(probe())
        finally:
            loop.close()
    return _probe_now()


def _missing(class_attrs, instance_attrs) -> list[str]:
    missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in class_attrs
               if not hasattr(owner, name)]
    try:
        probed = _probe()
    except Exception as exc:  # aiortc changed so much that a transceiver cannot be made
        return [*missing, f"a probe transceiver ({type(exc).__name__}: {exc})"]
    for kind, names in instance_attrs.items():
        missing += [f"{kind}.{name}" for name in names if name not in probed[kind]]
    return missing


def problems() -> list[str]:
    """Why the fast path cannot run on the installed aiortc/aioice (empty: it can)."""
    out = []
    for package, text in installed_versions().items():
        tested = TESTED_VERSIONS[package]
        if _version(text) not in tested:
            out.append(f"{package} {text} (tested: {', '.join('.'.join(map(str, v)) for v in tested)})")
    missing = _missing(_FAST_CLASS_ATTRS, _FAST_INSTANCE_ATTRS)
    if missing:
        out.append(f"missing {', '.join(missing)}")
    return out


def check() -> None:
    """Raise :class:`AiortcCompatibilityError` unless the fast path fits this aiortc/aioice."""
    found = problems()
    if found:
        raise AiortcCompatibilityError("media fast path: " + "; ".join(found))


def check_rfc4733() -> None:
    """Raise unless the RFC 4733 hooks fit this aiortc (they are small: attributes, not versions)."""
    missing = _missing(_RFC4733_CLASS_ATTRS, _RFC4733_INSTANCE_ATTRS)
    if missing:
        raise AiortcCompatibilityError(f"aiortc {aiortc.__version__}: RFC 4733 DTMF hooks: missing "
                                       + ", ".join(missing))


_fallback_warned = False
_warn_lock = threading.Lock()


def fast_path_enabled(mode: str) -> bool:
    """Whether ``MediaConfig.fast_path == mode`` means the fast path on this installation."""
    global _fallback_warned
    if mode == "off":
        return False
    if mode == "on":
        check()
        return True
    if mode != "auto":
        raise ValueError(f"fast_path: {mode!r} is not one of {FAST_PATH_MODES}")
    found = problems()
    if not found:
        return True
    with _warn_lock:
        if not _fallback_warned:
            _fallback_warned = True
            log.warning("media fast path off, running stock aiortc (%s); pin the tested versions "
                        "or set fast_path='off' to silence this", "; ".join(found))
    return False


# --- ICE --------------------------------------------------------------------------------


def _no_default_ice_servers(cls) -> list:
    return []


@contextlib.contextmanager
def no_default_stun() -> Iterator[None]:
    """While creating a peer connection's transports: no public STUN fallback.

    aiortc's ``RTCIceGatherer`` uses ``stun:stun.l.google.com:19302`` when given
    ``iceServers=None``.  Our configurations always pass a list; this is defence in
    depth for the gatherers created inside the block (``addTransceiver``), and
    the class is restored on exit (it is not left patched for the process).
    """
    saved = RTCIceGatherer.__dict__["getDefaultIceServers"]
    RTCIceGatherer.getDefaultIceServers = classmethod(_no_default_ice_servers)  # type: ignore[method-assign]
    try:
        yield  # synchronous use only (no await inside): nothing else runs meanwhile
    finally:
        RTCIceGatherer.getDefaultIceServers = saved  # type: ignore[method-assign]


def default_ice_servers() -> list:
    """aiortc's own fallback list (tests show it is a public STUN server, and unused)."""
    return RTCIceGatherer.getDefaultIceServers()


@contextlib.contextmanager
def loopback_host_addresses() -> Iterator[None]:
    """Gather host candidates on 127.0.0.1 only (tests, benchmarks); restored on exit."""
    original = aioice.ice.get_host_addresses

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    aioice.ice.get_host_addresses = loopback
    try:
        yield
    finally:
        aioice.ice.get_host_addresses = original


class _GatheringSwap:
    """One ``aioice.ice`` function replaced while any gathering block is open.

    aioice looks these functions up in its module when a gathering runs; the
    replacement stays while at least one block is open (reference counted) and what
    was there before is put back when the last closes, so nothing is patched for
    the process at large.
    """

    def __init__(self, name: str, replacement: Callable[..., Any]) -> None:
        self.name = name
        self.replacement = replacement
        self.original: Callable[..., Any] | None = None
        self._users = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        with self._lock:
            if self._users == 0:
                self.original = getattr(aioice.ice, self.name)
                setattr(aioice.ice, self.name, self.replacement)
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    if getattr(aioice.ice, self.name) is self.replacement:
                        setattr(aioice.ice, self.name, self.original)
                    self.original = None


#: The host addresses the gathering in this task (and the tasks it spawns) may use; None: aioice's.
_gather_hosts: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "softphone_gather_hosts", default=None)
_AIOICE_HOST_ADDRESSES = aioice.ice.get_host_addresses  # aioice's own, whatever wraps it later


def _dispatch_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    wanted = _gather_hosts.get()
    if wanted is None:
        original = _HOSTS_SWAP.original or _AIOICE_HOST_ADDRESSES
        return original(use_ipv4, use_ipv6)
    return [a for a in wanted if (use_ipv6 if ":" in a else use_ipv4)]


_HOSTS_SWAP = _GatheringSwap("get_host_addresses", _dispatch_host_addresses)


@contextlib.contextmanager
def host_addresses(addresses: tuple[str, ...] | None) -> Iterator[None]:
    """Gather host candidates on ``addresses`` only, for the peer connection gathering in this task.

    aioice reads its host addresses from one module function when a connection starts
    gathering (``Connection.gather_candidates``, before its first await).  While any
    such block is open that function is a dispatcher reading a context variable, so
    only the gathering started from this task (its child tasks inherit the variable)
    sees ``addresses``; other connections gathering meanwhile get aioice's own list.
    ``None``: no change.
    """
    if addresses is None:
        yield
        return
    with _HOSTS_SWAP.installed():
        token = _gather_hosts.set(tuple(addresses))
        try:
            yield
        finally:
            _gather_hosts.reset(token)


#: TURN failures seen by the gatherings of this task (a list shared with the tasks it spawns).
_turn_failures: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "softphone_turn_failures", default=None)
ALLOCATION_MISMATCH_RETRIES = 2


async def _relayed_candidate_retrying(**kwargs: Any) -> Any:
    """aioice's ``relayed_candidate``, again from a new socket after a 437 Allocation Mismatch.

    coturn keeps a deleted allocation for about a second; an Allocate from a client port
    the kernel hands out again in that window gets 437 (RFC 8656 section 7.2: retry from
    another port).  Calls hung up and placed again at once (a bot, a load run) hit it.
    aioice does not retry it, and drops the error without a word.
    """
    original = _TURN_SWAP.original or aioice.ice.relayed_candidate
    failures = _turn_failures.get()
    for attempt in range(ALLOCATION_MISMATCH_RETRIES + 1):
        try:
            return await original(**kwargs)
        except aioice.stun.TransactionFailed as exc:
            code = exc.response.attributes.get("ERROR-CODE", (None, ""))[0]
            if failures is not None:
                failures.append(str(exc))
            if code != 437 or attempt == ALLOCATION_MISMATCH_RETRIES:
                raise
            log.debug("TURN allocation mismatch (437): allocating again from a new port")
        except Exception as exc:
            if failures is not None:
                failures.append(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            raise
    raise AssertionError("unreachable")  # pragma: no cover


_TURN_SWAP = _GatheringSwap("relayed_candidate", _relayed_candidate_retrying)


@contextlib.contextmanager
def turn_allocation_retry() -> Iterator[list[str]]:
    """While a gathering runs: TURN allocations retry 437 and their failures are collected.

    Yields the list of failure texts of this task's gatherings (for the error).
    """
    failures: list[str] = []
    if not callable(getattr(aioice.ice, "relayed_candidate", None)):  # another aioice: its own path
        yield failures
        return
    with _TURN_SWAP.installed():
        token = _turn_failures.set(failures)
        try:
            yield failures
        finally:
            _turn_failures.reset(token)


def _connection(transceiver: Any) -> Any:
    return transceiver.receiver.transport.transport._connection


def set_turn_tls_context(transceiver: Any, context: Any) -> None:
    """aiortc only passes ``ssl=True`` for ``turns:``; aioice hands ``turn_ssl`` to create_connection()."""
    _connection(transceiver).turn_ssl = context


def nominated_pair(transceiver: Any) -> Any:
    """aioice's nominated candidate pair of component 1, None before ICE completes."""
    return getattr(_connection(transceiver), "_nominated", {}).get(1)


def ice_connection_settings(transceiver: Any) -> dict:
    connection = _connection(transceiver)
    return {"stun_server": connection.stun_server, "turn_server": connection.turn_server,
            "transport_policy": getattr(connection, "_transport_policy", None)}


def dtls_role(dtls: Any) -> str:
    """"client" or "server": the DTLS role this side took."""
    return dtls._role


def negotiated_codecs(transceiver: Any) -> list:
    """The codecs negotiated for ``transceiver`` (aiortc keeps them private), first = in use."""
    return list(getattr(transceiver, "_codecs", None) or [])


# --- the clock ---------------------------------------------------------------------------

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2208988800


def fast_current_ms() -> int:
    """``aiortc.clock.current_ms()`` (ms since 1900, from microseconds) without a datetime."""
    t = time.time()
    sec = int(t)
    return (sec + NTP_UNIX_OFFSET) * 1000 + int((t - sec) * 1_000_000) // 1000


def fast_current_ntp_time() -> int:
    """``aiortc.clock.current_ntp_time()`` (64-bit NTP, microsecond resolution) without a datetime."""
    t = time.time()
    sec = int(t)
    micros = int((t - sec) * 1_000_000)
    return ((sec + NTP_UNIX_OFFSET) << 32) | ((micros << 32) // 1_000_000)


_STOCK_CLOCK = {"current_ms": aiortc_clock.current_ms, "current_ntp_time": aiortc_clock.current_ntp_time}
_clock_users = 0


def install_fast_clock() -> None:
    """Swap aiortc's per-packet clock functions (same results, no datetime); counted."""
    global _clock_users
    _clock_users += 1
    aiortc_clock.current_ms = fast_current_ms
    aiortc_clock.current_ntp_time = fast_current_ntp_time


def uninstall_fast_clock(*, force: bool = False) -> None:
    """Put aiortc's own clock back once the last user is gone (``force``: now)."""
    global _clock_users
    _clock_users = 0 if force else max(0, _clock_users - 1)
    if _clock_users == 0:
        for name, fn in _STOCK_CLOCK.items():
            setattr(aiortc_clock, name, fn)


def fast_clock_installed() -> bool:
    return aiortc_clock.current_ms is fast_current_ms


def current_ms() -> int:
    return aiortc_clock.current_ms()


def current_ntp_time() -> int:
    return aiortc_clock.current_ntp_time()


def current_datetime() -> Any:
    return aiortc_clock.current_datetime()


# --- receive -----------------------------------------------------------------------------


@types.coroutine
def _resume(coro: Coroutine, yielded: Any):
    """Continue a coroutine already stepped once by hand, inside the awaiting task."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # delivered by the task (cancellation included)
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class LightRtpPacket:
    """The fields a counting receiver reads, from the fixed header: no extension parsing."""

    __slots__ = ("marker", "payload", "payload_type", "sequence_number", "ssrc", "timestamp")

    def __init__(self, payload_type: int, marker: int, sequence_number: int, timestamp: int,
                 ssrc: int, payload: bytes) -> None:
        self.payload_type = payload_type
        self.marker = marker
        self.sequence_number = sequence_number
        self.timestamp = timestamp
        self.ssrc = ssrc
        self.payload = payload


_RTP_FIXED = struct.Struct("!BBHII")


def _passes_hook(receiver: Any, packet: LightRtpPacket) -> bool:
    """No packet hook on ``receiver``, or one (RFC 4733's) that passes this packet on untouched."""
    hook = receiver.__dict__.get("_handle_rtp_packet")
    if hook is None:
        return True
    passes = getattr(getattr(hook, "__self__", None), "passes_through", None)
    return passes is not None and passes(packet.payload_type)


def _handle_rtp_light(dtls: RTCDtlsTransport, data: bytes, arrival_time_ms: int | None = None) -> Coroutine | None:
    """``RTCDtlsTransport._handle_rtp_data`` for packets routed to a counting-only receiver.

    aiortc parses every header extension into an ``RtpPacket`` (about 5% of a core at
    150 peer connections) although a :class:`HookedRtpReceiver` that does not decode
    reads only the fixed header and the payload length.  Anything else (decoding
    receivers, the RFC 4733 hook, malformed packets) gets aiortc's parse.
    """
    size = len(data)
    router = getattr(dtls, "_rtp_router", None)
    if size >= 12 and router is not None:
        b0, b1, seq, ts, ssrc = _RTP_FIXED.unpack_from(data)
        packet = LightRtpPacket(b1 & 0x7F, b1 >> 7, seq, ts, ssrc, b"")
        receiver = router.route_rtp(packet) if b0 >> 6 == 2 else None
        if isinstance(receiver, HookedRtpReceiver) and not receiver.decoding and _passes_hook(receiver, packet):
            start = 12 + 4 * (b0 & 0x0F)
            if b0 & 0x10 and start + 4 <= size:
                start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
            end = size - data[-1] if b0 & 0x20 else size
            if start <= end:
                packet.payload = data[start:end]
                receiver.count_rtp(packet)  # never decodes here: no coroutine needed
                return None
    if arrival_time_ms is None:  # the counting path keeps its own arrival clock
        arrival_time_ms = aiortc_clock.current_ms()
    return dtls._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)


class FastReceive:
    """The direct SRTP receive path of one DTLS transport.

    aiortc 1.16 / aioice 0.13 hand every received datagram through an ``asyncio.Queue``
    (``Connection.data_received`` -> queue -> the DTLS transport's task ->
    ``_recv_next``): a task switch and five coroutine frames per packet.  This runs
    the SRTP branch of ``_recv_next`` in the datagram callback; DTLS records, the
    end-of-connection sentinel and packets behind queued ones still take the
    queue, so ordering and closing behave as before.  A handler that really
    suspends is finished in a task, with later packets waiting in order behind it.
    """

    __slots__ = ("_backlog", "_task", "connection", "direct", "discarded", "dtls", "light_parse", "queued")

    def __init__(self, dtls: RTCDtlsTransport, *, light_parse: bool = True) -> None:
        self.dtls = dtls
        self.connection = dtls.transport._connection
        self.light_parse = light_parse  # fixed-header parse for counting-only receivers
        self._backlog: collections.deque[bytes] = collections.deque()
        self._task: asyncio.Task | None = None
        self.direct = 0  # datagrams handled in the callback
        self.queued = 0  # datagrams left to aiortc's queue and task
        self.discarded = 0  # empty datagrams and SRTP/SRTCP that failed to unprotect

    def data_received(self, data: bytes, component: int) -> None:
        """Stands in for ``aioice.ice.Connection.data_received`` on one connection."""
        if not data:
            self.discarded += 1  # aiortc's _recv_next reads data[0]: one would end its receive task
            return
        dtls = self.dtls
        if 127 < data[0] < 192 and dtls._rx_srtp is not None and dtls._state is DtlsState.CONNECTED:
            if self._task is not None:
                self._backlog.append(data)  # behind a handler that is still running
                return
            if self.connection._queue.empty():
                self.direct += 1
                coro = self._srtp(data)
                if coro is not None:
                    self._drive(coro)
                return
        self.queued += 1
        self.connection._queue.put_nowait((data, component))

    def _srtp(self, data: bytes) -> Coroutine | None:
        """The SRTP branch of ``RTCDtlsTransport._recv_next`` up to its handler coroutine."""
        dtls = self.dtls
        dtls._RTCDtlsTransport__rx_bytes += len(data)
        dtls._RTCDtlsTransport__rx_packets += 1
        try:
            if is_rtcp(data):
                return dtls._handle_rtcp_data(dtls._rx_srtp.unprotect_rtcp(data))
            plain = dtls._rx_srtp.unprotect(data)
            if self.light_parse:
                return _handle_rtp_light(dtls, plain)
            return dtls._handle_rtp_data(plain, arrival_time_ms=aiortc_clock.current_ms())
        except pylibsrtp.Error as exc:
            self.discarded += 1
            log.debug("x SRTP unprotect failed: %s", exc)
            return None

    def _drive(self, coro: Coroutine) -> None:
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except pylibsrtp.Error as exc:
            log.debug("x SRTP handling failed: %s", exc)
            return
        except Exception:
            # aiortc's receive task would die on this and leave the transport deaf; one
            # bad packet should not end the call.
            log.exception("packet handler failed")
            return
        self._task = asyncio.ensure_future(self._finish(coro, yielded))

    async def _finish(self, coro: Coroutine, yielded: Any) -> None:
        try:
            try:
                await _resume(coro, yielded)
            except pylibsrtp.Error as exc:
                log.debug("x SRTP handling failed: %s", exc)
            except Exception:
                log.exception("packet handler failed")
            while self._backlog:
                coro = self._srtp(self._backlog.popleft())
                if coro is None:
                    continue
                try:
                    await coro
                except pylibsrtp.Error as exc:
                    log.debug("x SRTP handling failed: %s", exc)
                except Exception:
                    log.exception("packet handler failed")
        finally:
            self._task = None
            self._backlog.clear()


class EmptyDatagramGuard:
    """Drops empty datagrams before aiortc's queue on the stock receive path.

    aiortc 1.16's ``RTCDtlsTransport._recv_next`` reads ``data[0]``: one empty
    datagram (anyone who can reach the relayed address can send it) raises
    IndexError in its receive task and the call is deaf from then on.
    """

    __slots__ = ("discarded", "stock")

    def __init__(self, stock: Callable[[bytes, int], None]) -> None:
        self.stock = stock
        self.discarded = 0

    def data_received(self, data: bytes, component: int) -> None:
        if not data:
            self.discarded += 1
            return
        self.stock(data, component)


def guard_empty_datagrams(pc: RTCPeerConnection) -> None:
    """Install :class:`EmptyDatagramGuard` on ``pc``'s ICE connections once connected.

    For calls on stock aiortc (fast path off); the fast receive path drops empty
    datagrams itself.  Skipped, with the stock behaviour, where aioice has no such
    connection attribute.
    """

    def on_state() -> None:
        if pc.connectionState != "connected":
            return
        for transceiver in pc.getTransceivers():
            dtls = transceiver.receiver.transport
            connection = getattr(getattr(dtls, "transport", None), "_connection", None)
            if connection is None or "data_received" in connection.__dict__:
                continue  # no aioice connection here, or already hooked (guard or fast receive)
            stock = getattr(connection, "data_received", None)
            if callable(stock):
                connection.data_received = EmptyDatagramGuard(stock).data_received

    pc.on("connectionstatechange", on_state)


def discarded_datagrams(pc: RTCPeerConnection) -> int | None:
    """Datagrams ``pc``'s receive hooks dropped (empty, or SRTP that failed to unprotect).

    None when no hook of ours is on the connection; stock aiortc drops SRTP
    failures without counting them.
    """
    total, hooked = 0, False
    seen: set[int] = set()
    for transceiver in pc.getTransceivers():
        dtls = transceiver.receiver.transport
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if connection is None or id(connection) in seen:
            continue
        seen.add(id(connection))
        hook = getattr(connection.__dict__.get("data_received"), "__self__", None)
        if isinstance(hook, FastReceive | EmptyDatagramGuard):
            hooked = True
            total += hook.discarded
    return total if hooked else None


def install_fast_receive(dtls: RTCDtlsTransport, *, light_parse: bool = True) -> FastReceive:
    """Route ``dtls``'s SRTP straight from the datagram callback; idempotent."""
    connection = dtls.transport._connection
    hook = connection.__dict__.get("data_received")
    if isinstance(getattr(hook, "__self__", None), FastReceive):
        return hook.__self__
    fast = FastReceive(dtls, light_parse=light_parse)
    connection.data_received = fast.data_received  # instance attribute shadows the method
    for protocol in connection._protocols:
        _skip_stun_parse(protocol, fast)
    return fast


def _skip_stun_parse(protocol: Any, fast: FastReceive) -> None:
    """Hand RTP/RTCP datagrams of ``protocol`` to ``fast`` before aioice tries them as STUN.

    ``StunProtocol.datagram_received`` parses every datagram as STUN and passes it on
    when ``ValueError`` says it is not one: an exception per media packet.  A first
    byte of 128-191 (RTP version 2) can never start a STUN message (RFC 7983), so
    those skip the attempt; everything else takes aioice's path.
    """
    if type(protocol).datagram_received is not aioice.ice.StunProtocol.datagram_received:
        return
    if "datagram_received" in protocol.__dict__:
        return
    stock = protocol.datagram_received
    candidate = getattr(protocol, "local_candidate", None)
    component = candidate.component if candidate is not None else 1
    direct = fast.data_received

    def datagram_received(data: bytes, addr: tuple[Any, ...]) -> None:
        if data and 127 < data[0] < 192:
            direct(data, component)
        else:
            stock(data, addr)

    protocol.datagram_received = datagram_received


def fast_receive_of(dtls: RTCDtlsTransport) -> FastReceive | None:
    """The :class:`FastReceive` installed on ``dtls``, if any (tests, reports)."""
    connection = getattr(getattr(dtls, "transport", None), "_connection", None)
    hook = connection.__dict__.get("data_received") if connection is not None else None
    owner = getattr(hook, "__self__", None)
    return owner if isinstance(owner, FastReceive) else None


# --- send --------------------------------------------------------------------------------


def install_fast_send(dtls: RTCDtlsTransport) -> None:
    """Send ``dtls``'s datagrams to the nominated pair's socket in one step; idempotent.

    ``RTCIceTransport._send`` is aioice's ``Connection.send`` -> ``sendto`` ->
    ``StunProtocol.send_data`` -> ``transport.sendto``: three coroutine frames per
    packet that only look up the nominated pair.  The replacement does the same
    lookup and the same ``transport.sendto`` (on a bound TURN channel, the
    ChannelData write aioice would do from a task); a protocol with its own
    ``send_data`` keeps it.  Its ``now`` attribute is what :func:`send_rtp_now` uses.
    """
    ice = dtls.transport
    if getattr(ice._send, "_softphone_fast", False):
        return
    nominated = ice._connection._nominated
    stock_send_data = aioice.ice.StunProtocol.send_data

    def send_now(data: bytes) -> Coroutine | None:
        """Send now; a coroutine to await instead when the pair's protocol has its own send."""
        pair = nominated.get(1)
        if pair is None:
            raise ConnectionError("Cannot send data, not connected")
        protocol = pair.protocol
        if type(protocol).send_data is stock_send_data:
            candidate = pair.remote_candidate
            addr = (candidate._network_host, candidate.port)
            transport = protocol.transport
            if type(transport) is not TurnTransport or not turn_send_now(transport, data, addr):
                transport.sendto(data, addr)
            return None
        return protocol.send_data(data, pair.remote_addr)

    async def send(data: bytes) -> None:
        pending = send_now(data)
        if pending is not None:
            await pending

    send._softphone_fast = True  # type: ignore[attr-defined]
    send.now = send_now  # type: ignore[attr-defined]
    ice._send = send


_CHANNEL_HEADER = struct.Struct("!HH")


def turn_send_now(transport: TurnTransport, data: bytes, addr: tuple[str, int]) -> bool:
    """Send ``data`` to ``addr`` on its bound TURN channel right now; False to leave it to aioice.

    aioice's ``TurnTransport.sendto`` creates a task per datagram to run
    ``send_data``, which for a bound, fresh channel only prepends the 4-byte
    ChannelData header (RFC 8656 section 12.4).  That case is done here; a channel
    still to bind or refresh, or a closing transport, takes aioice's own path.
    """
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)
    channels = getattr(inner, "peer_to_channel", None)
    if channels is None or getattr(transport, "_TurnTransport__close_task", True) is not None:
        return False
    channel = channels.get(addr)
    if channel is None or addr in inner.peer_connect_waiters or inner.transport.is_closing():
        return False
    if time.time() > inner.channel_refresh_at.get(channel, 0.0):
        return False
    inner._send(_CHANNEL_HEADER.pack(channel, len(data)) + data)
    return True


def send_rtp_now(dtls: RTCDtlsTransport, data: bytes) -> None:
    """``RTCDtlsTransport._send_rtp`` for one RTP packet, without a coroutine when possible.

    With :func:`install_fast_send` in place the packet is protected and handed to the
    socket right here; the transmit counters are kept as aiortc keeps them.
    Otherwise aiortc's own ``_send_rtp`` runs through :func:`step_awaitable`.
    Raises ``ConnectionError`` as ``_send_rtp`` does.
    """
    send_now = getattr(dtls.transport._send, "now", None)
    if send_now is None:
        step_awaitable(dtls._send_rtp(data))
        return
    if dtls._state is not DtlsState.CONNECTED:
        raise ConnectionError("Cannot send encrypted RTP, not connected")
    data = dtls._tx_srtp.protect(data)
    pending = send_now(data)
    if pending is not None:
        step_awaitable(pending)
    dtls._RTCDtlsTransport__tx_bytes += len(data)
    dtls._RTCDtlsTransport__tx_packets += 1


def send_rtp_packet(transport: Any, data: bytes) -> None:
    """Send one RTP packet on a sender's transport now (DTLS: :func:`send_rtp_now`; else stepped)."""
    if type(transport) is RTCDtlsTransport:
        send_rtp_now(transport, data)
    else:  # something else standing in for the transport
        step_awaitable(transport._send_rtp(data))


async def _continue(awaitable_iter: Any, yielded: Any) -> None:
    try:
        await _resume(awaitable_iter, yielded)
    except ConnectionError as exc:
        log.debug("x RTP not sent: %s", exc)


_pending_sends: set[asyncio.Task] = set()


def step_awaitable(awaitable: Any) -> None:
    """Run an awaitable up to its first suspension; finish the rest in a task."""
    it = awaitable.__await__()
    try:
        yielded = next(it)
    except StopIteration:
        return
    task = asyncio.ensure_future(_continue(it, yielded))
    _pending_sends.add(task)
    task.add_done_callback(_pending_sends.discard)


def install_fast_path(pc: RTCPeerConnection, *, light_parse: bool = True) -> None:
    """The fast clock while ``pc`` is open, the fast receive and send once it is connected.

    Call right after creating the peer connection; DTLS transports are only final
    (BUNDLE) and keyed once the connection is up.  Packets that arrive earlier go
    through aiortc's queue as usual.  The caller has decided the fast path is on
    (:func:`fast_path_enabled`).
    """
    install_fast_clock()
    released = False

    def on_state() -> None:
        nonlocal released
        state = pc.connectionState
        if state in ("closed", "failed") and not released:
            released = True
            uninstall_fast_clock()
        if state != "connected":
            return
        seen: set[int] = set()
        for transceiver in pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is not None and id(dtls) not in seen:
                seen.add(id(dtls))
                install_fast_receive(dtls, light_parse=light_parse)
                install_fast_send(dtls)

    pc.on("connectionstatechange", on_state)


# --- the receiver hook ----------------------------------------------------------------------


class DroppingFrameQueue(asyncio.Queue):
    """A remote track's frame queue, bounded: when full the oldest frame goes.

    aiortc's decoder thread puts every decoded frame into an unbounded queue;
    when the reader stops or falls behind, memory grows by the call's whole
    decoded audio (190 KB/s for Opus).  The end-of-stream ``None`` is always kept.
    """

    maxframes: int
    dropped: int

    def put_nowait(self, item) -> None:
        if item is not None:
            while self.qsize() >= self.maxframes:
                super().get_nowait()
                self.dropped += 1
        super().put_nowait(item)

    async def put(self, item) -> None:
        self.put_nowait(item)


def bound_frame_queue(track: Any, maxframes: int) -> DroppingFrameQueue | None:
    """Bound a remote track's queue in place (readers already waiting keep waiting on it)."""
    if not isinstance(track, RemoteStreamTrack):
        return None
    queue = track._queue
    if not isinstance(queue, DroppingFrameQueue):
        if type(queue) is not asyncio.Queue:
            raise AiortcCompatibilityError(f"remote track queue: expected asyncio.Queue, got {type(queue).__name__}")
        queue.__class__ = DroppingFrameQueue
        queue.dropped = 0
    queue.maxframes = maxframes
    return queue  # type: ignore[return-value]


def dropped_frames(track: Any) -> int:
    """Decoded frames a bounded remote track dropped because nobody read them in time."""
    queue = getattr(track, "_queue", None)
    return queue.dropped if isinstance(queue, DroppingFrameQueue) else 0


def end_remote_track(track: Any) -> None:
    """Drop queued frames and end a remote track so nothing waits on it forever."""
    if not isinstance(track, RemoteStreamTrack):
        return
    queue = track._queue
    while not queue.empty():
        queue.get_nowait()
    queue.put_nowait(None)  # a consumer blocked in recv() gets MediaStreamError
    track.stop()


class HookedRtpReceiver(RTCRtpReceiver):
    """aiortc's receiver with a synchronous per-packet hook and an optional decoder.

    Swapped onto an existing receiver by :func:`swap_receiver_class` (aiortc creates
    receivers itself).  A subclass implements :meth:`count_rtp` (True: go on to
    aiortc's decoding path) and :attr:`decoding`; without decoding there is no
    decoder thread and the remote track ends when the receiver stops.  RTCP, and
    thus the far end's RTT and loss, keep working.
    """

    #: Decoded frames kept for a slow or absent reader (1 s): older ones are dropped.
    DECODED_BACKLOG = 50

    @property
    def decoding(self) -> bool:
        raise NotImplementedError

    def count_rtp(self, packet: Any) -> bool:
        raise NotImplementedError

    # The private state a subclass reads, by aiortc's names.
    @property
    def remote_streams(self) -> dict:
        """aiortc's per-SSRC statistics objects (a subclass may put its own there)."""
        return self._RTCRtpReceiver__remote_streams

    @property
    def codecs_by_payload_type(self) -> dict:
        return self._RTCRtpReceiver__codecs

    @property
    def receiving_enabled(self) -> bool:
        return self._enabled

    @property
    def remote_track(self) -> Any:
        return self._track

    def mark_active(self, ssrc: int) -> None:
        """What ``getSynchronizationSources()`` reads (it looks 10 s back)."""
        self._RTCRtpReceiver__active_ssrc[ssrc] = aiortc_clock.current_datetime()

    async def receive(self, parameters) -> None:
        if self.decoding:
            bound_frame_queue(self._track, self.DECODED_BACKLOG)
            await super().receive(parameters)
            return
        if self._RTCRtpReceiver__started:
            return
        codecs = self._RTCRtpReceiver__codecs
        for codec in parameters.codecs:
            codecs[codec.payloadType] = codec
        for encoding in parameters.encodings:
            if encoding.rtx:
                self._RTCRtpReceiver__rtx_ssrc[encoding.rtx.ssrc] = encoding.ssrc
        # Same as RTCRtpReceiver.receive() minus the decoder thread.
        self._RTCRtpReceiver__transport._register_rtp_receiver(self, parameters)
        self._RTCRtpReceiver__rtcp_task = asyncio.ensure_future(self._run_rtcp())
        self._RTCRtpReceiver__started = True

    async def _handle_rtp_packet(self, packet, arrival_time_ms: int) -> None:
        if self.count_rtp(packet):
            await super()._handle_rtp_packet(packet, arrival_time_ms)

    async def stop(self) -> None:
        await super().stop()
        if not self.decoding:
            end_remote_track(self._track)


def swap_receiver_class(receiver: RTCRtpReceiver, cls: type[HookedRtpReceiver]) -> None:
    """Give aiortc's ``receiver`` the class ``cls``; must precede negotiation."""
    if type(receiver) is not RTCRtpReceiver:
        raise AiortcCompatibilityError(f"receiver: expected aiortc's RTCRtpReceiver, got {type(receiver).__name__}")
    missing = [a for a in _FAST_INSTANCE_ATTRS["receiver"] if not hasattr(receiver, a)]
    if missing:
        raise AiortcCompatibilityError(f"receiver: missing {', '.join(missing)}")
    if receiver._RTCRtpReceiver__started:
        raise MediaError("receiver: already receiving; install the counting receiver before "
                         "the description that starts media is applied")
    receiver.__class__ = cls


# --- the sender hook -------------------------------------------------------------------------


def sender_track(sender: RTCRtpSender) -> Any:
    return sender._RTCRtpSender__track


def sender_enabled(sender: RTCRtpSender) -> bool:
    """False while aiortc has the sender disabled (hold to inactive/recvonly)."""
    return sender._enabled


def sender_ssrc(sender: RTCRtpSender) -> int:
    return sender._ssrc


def sender_loop_started(sender: RTCRtpSender) -> bool:
    """True once aiortc started the sender's RTP loop (too late to replace it)."""
    return sender._RTCRtpSender__rtp_task is not None


def sender_loop_finished(sender: RTCRtpSender) -> bool:
    """True once the sender's RTP loop has exited (its source ended or the call closed)."""
    task = getattr(sender, "_RTCRtpSender__rtp_task", None)
    return task is not None and task.done()


def replace_sender_loop(sender: RTCRtpSender, run: Callable[[Any], Coroutine],
                        retransmit: Callable[[int], Coroutine] | None = None) -> bool:
    """Make ``sender`` run ``run(codec)`` instead of aiortc's ``_run_rtp``; idempotent.

    ``retransmit(seq)`` replaces ``_retransmit`` (aiortc's answer to an RTCP NACK,
    which reads a history only its own loop fills).  False when aiortc already
    started its loop.
    """
    if "_run_rtp" in sender.__dict__:
        return True
    missing = [a for a in _FAST_INSTANCE_ATTRS["sender"] if not hasattr(sender, a)]
    if missing:
        raise AiortcCompatibilityError(f"sender: missing {', '.join(missing)}")
    if sender_loop_started(sender):
        return False
    sender._run_rtp = run
    if retransmit is not None:
        sender._retransmit = retransmit
    return True


def sender_loop_started_event(sender: RTCRtpSender) -> None:
    """What aiortc's ``_run_rtp`` does first (``stop()`` waits on it)."""
    sender._RTCRtpSender__rtp_started.set()


def sender_loop_exited(sender: RTCRtpSender) -> None:
    """What aiortc's ``_run_rtp`` does last: stop the track, drop the encoder, signal the exit."""
    track = sender._RTCRtpSender__track
    if track is not None:
        track.stop()
        sender._RTCRtpSender__track = None
    sender._RTCRtpSender__encoder = None
    sender._RTCRtpSender__rtp_exited.set()


def record_sent(sender: RTCRtpSender, ntp: int, rtp_timestamp: int, payload_bytes: int) -> None:
    """The counters aiortc's loop keeps per packet (sender reports, RTT, ``getStats()``)."""
    sender._RTCRtpSender__ntp_timestamp = ntp
    sender._RTCRtpSender__rtp_timestamp = rtp_timestamp
    sender._RTCRtpSender__octet_count += payload_bytes
    sender._RTCRtpSender__packet_count += 1


async def next_encoded_frame(sender: RTCRtpSender, codec: Any) -> Any:
    """aiortc's own ``track.recv()`` + encode step for one frame (None: nothing to send)."""
    return await sender._next_encoded_frame(codec)


def sender_mid(sender: RTCRtpSender) -> str | None:
    return sender._RTCRtpSender__mid


def sender_header_extensions_map(sender: RTCRtpSender) -> Any:
    return sender._RTCRtpSender__rtp_header_extensions_map


def header_extension_block(sender: RTCRtpSender, abs_send_time: int) -> bytes:
    """The RTP header extension block aiortc writes for ``sender`` (mid, abs-send-time)."""
    profile, value = sender._RTCRtpSender__rtp_header_extensions_map.set(
        HeaderExtensions(mid=sender._RTCRtpSender__mid, abs_send_time=abs_send_time))
    return struct.pack("!HH", profile, len(value) >> 2) + value if value else b""


# --- the RFC 4733 hooks -------------------------------------------------------------------------


def hook_rtp_packets(receiver: RTCRtpReceiver, handler: Callable[..., Coroutine]) -> None:
    """Make ``handler(packet, arrival_time_ms)`` receive every RTP packet routed to ``receiver``."""
    receiver._handle_rtp_packet = handler  # type: ignore[method-assign]


def unhook_rtp_packets(receiver: RTCRtpReceiver) -> None:
    receiver.__dict__.pop("_handle_rtp_packet", None)


def handle_rtp_packet_unhooked(receiver: RTCRtpReceiver, packet: Any, arrival_time_ms: int) -> Coroutine:
    """The receiver's own packet handler, looked up on its class now (it may have been swapped)."""
    return type(receiver)._handle_rtp_packet(receiver, packet, arrival_time_ms=arrival_time_ms)


def receiver_enabled(receiver: RTCRtpReceiver) -> bool:
    return receiver._enabled


def route_payload_types(receiver: RTCRtpReceiver, payload_types: list[int]) -> None:
    """Let the receiver's transport route these payload types to it (aiortc drops unknown ones)."""
    router = getattr(receiver.transport, "_rtp_router", None)
    if router is None:
        raise AiortcCompatibilityError("RTCDtlsTransport has no _rtp_router to route telephone-event")
    router.register_receiver(receiver, ssrcs=[], payload_types=list(payload_types))


def receiver_stream_statistics(receiver: RTCRtpReceiver, ssrc: int, rate: int) -> Any:
    """The receiver's statistics object for ``ssrc``, created when packets come before any audio."""
    streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", None)
    if not isinstance(streams, dict):
        return None
    stream = streams.get(ssrc)
    if stream is None:
        make = getattr(receiver, "counter_for", None)  # a counting receiver makes its own kind
        if callable(make):
            stream = make(ssrc, None)
        else:
            codecs = getattr(receiver, "_RTCRtpReceiver__codecs", {})
            clock = next(iter(codecs.values())).clockRate if codecs else rate
            stream = streams[ssrc] = StreamStatistics(clock)
    return stream


def send_rtp(transport: Any, data: bytes) -> Any:
    """The transport's ``_send_rtp(data)`` awaitable (RTP and RTCP)."""
    return transport._send_rtp(data)


def transport_header_extensions_map(transport: Any) -> Any:
    return transport._rtp_header_extensions_map
