"""A direct receive path for SRTP and a cheaper clock, for many calls in one event loop.

aiortc 1.16 / aioice 0.13 hand every received datagram through an
``asyncio.Queue``: ``StunProtocol.datagram_received`` -> ``Connection.data_received``
-> ``queue.put_nowait`` -> wake the DTLS transport's ``__run`` task -> ``Queue.get``
-> ``Connection.recvfrom`` -> ``Connection.recv`` -> ``RTCDtlsTransport._recv_next``.
That is a task switch and five coroutine frames per packet before any RTP work.
:func:`install_fast_receive` makes ``Connection.data_received`` run the SRTP branch
of ``_recv_next`` directly in the datagram callback; everything else (DTLS records,
the end-of-connection sentinel, packets while earlier ones are still queued) still
goes through the queue, so ordering and closing behave as before.  A packet
handler that really suspends (a TURN channel bind on an RTCP reply, say) is
finished in a task, and packets arriving meanwhile wait in order behind it.
Media datagrams also skip aioice's attempt to parse them as STUN (an exception
per packet).  :func:`install_fast_send` likewise collapses aioice's
three-coroutine send chain into one ``transport.sendto`` on the nominated pair,
and on a bound TURN channel into the ChannelData write aioice would do from a
task per packet; :func:`send_rtp_now` protects and sends an RTP packet that way
without a coroutine at all.

aiortc's ``clock`` builds a timezone-aware ``datetime`` for every RTP packet sent
(twice) and received; :func:`install_fast_clock` swaps ``current_ms`` and
``current_ntp_time`` for ``time.time()`` arithmetic with the same microsecond
quantisation, so results are identical.

Both rely on private names; :func:`check_fastpath_supported` verifies versions
and attributes and raises :class:`~softphone.errors.AiortcCompatibilityError`.
"""

from __future__ import annotations

import asyncio
import collections
import struct
import time
import types
from collections.abc import Coroutine
from typing import Any

import aioice
import aioice.ice
import aiortc
import pylibsrtp
from aioice.turn import TurnTransport
from aiortc import RTCPeerConnection
from aiortc import clock as aiortc_clock
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import is_rtcp

from softphone.errors import AiortcCompatibilityError
from softphone.log import get_logger

log = get_logger(__name__)

TESTED_AIORTC = ((1, 16),)
TESTED_AIOICE = ((0, 13),)
_DTLS_ATTRS = ("_rx_srtp", "_tx_srtp", "_state", "_handle_rtp_data", "_handle_rtcp_data",
               "_RTCDtlsTransport__rx_bytes", "_RTCDtlsTransport__rx_packets",
               "_RTCDtlsTransport__tx_bytes", "_RTCDtlsTransport__tx_packets")
_CONNECTION_ATTRS = ("_queue", "_nominated", "_protocols", "data_received")
_CLOCK_ATTRS = ("current_ms", "current_ntp_time", "current_datetime", "datetime_to_ntp", "NTP_EPOCH")

#: Seconds from the NTP epoch (1900) to the Unix epoch (1970).
NTP_UNIX_OFFSET = 2208988800


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())


def check_fastpath_supported(dtls: RTCDtlsTransport | None = None) -> None:
    """Raise :class:`AiortcCompatibilityError` unless the hooks fit the installed aiortc/aioice."""
    problems = []
    if _version(aiortc.__version__) not in TESTED_AIORTC:
        problems.append(f"aiortc {aiortc.__version__} (written for 1.16)")
    if _version(aioice.__version__) not in TESTED_AIOICE:
        problems.append(f"aioice {aioice.__version__} (written for 0.13)")
    missing = [a for a in _CLOCK_ATTRS if not hasattr(aiortc_clock, a)]
    missing += [f"Connection.{a}" for a in ("data_received", "send") if not hasattr(aioice.ice.Connection, a)]
    missing += [f"StunProtocol.{a}" for a in ("send_data",) if not hasattr(aioice.ice.StunProtocol, a)]
    if dtls is not None:
        missing += [a for a in _DTLS_ATTRS if not hasattr(dtls, a)]
        connection = getattr(getattr(dtls, "transport", None), "_connection", None)
        if not hasattr(getattr(dtls, "transport", None), "_send"):
            missing.append("transport._send")
        if connection is None:
            missing.append("transport._connection")
        else:
            missing += [a for a in _CONNECTION_ATTRS if not hasattr(connection, a)]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if problems:
        raise AiortcCompatibilityError("media fast path: " + "; ".join(problems))


# --- clock -----------------------------------------------------------------------------


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


_stock_clock: dict[str, Any] = {}


def install_fast_clock() -> None:
    """Swap aiortc's per-packet clock functions (process-wide, idempotent, same results)."""
    check_fastpath_supported()
    if not _stock_clock:
        _stock_clock["current_ms"] = aiortc_clock.current_ms
        _stock_clock["current_ntp_time"] = aiortc_clock.current_ntp_time
    aiortc_clock.current_ms = fast_current_ms
    aiortc_clock.current_ntp_time = fast_current_ntp_time


def uninstall_fast_clock() -> None:
    """Put aiortc's own clock functions back."""
    for name, fn in _stock_clock.items():
        setattr(aiortc_clock, name, fn)


# --- receive ---------------------------------------------------------------------------


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


_counting_receiver_type: type | None = None


def _passes_hook(receiver: Any, packet: LightRtpPacket) -> bool:
    """No packet hook on ``receiver``, or one (RFC 4733's) that passes this packet on untouched."""
    hook = receiver.__dict__.get("_handle_rtp_packet")
    if hook is None:
        return True
    passes = getattr(getattr(hook, "__self__", None), "passes_through", None)
    return passes is not None and passes(packet.payload_type)


def _load_counting_receiver_type() -> type:
    """``lean.CountingRtpReceiver``, imported once (lean imports this module: no top-level import)."""
    global _counting_receiver_type
    from softphone.media.lean import CountingRtpReceiver

    _counting_receiver_type = CountingRtpReceiver
    return CountingRtpReceiver


def _handle_rtp_light(dtls: RTCDtlsTransport, data: bytes, arrival_time_ms: int | None = None) -> Coroutine | None:
    """``RTCDtlsTransport._handle_rtp_data`` for packets routed to a counting-only receiver.

    aiortc parses every header extension into an ``RtpPacket`` (about 5% of a core at
    150 peer connections) although a :class:`~softphone.media.lean.CountingRtpReceiver`
    that does not decode reads only the fixed header and the payload length.  Anything
    else (decoding receivers, the RFC 4733 hook, malformed packets) gets aiortc's parse.
    """
    counting_type = _counting_receiver_type or _load_counting_receiver_type()
    size = len(data)
    router = getattr(dtls, "_rtp_router", None)  # absent: aiortc changed, take its own path
    if size >= 12 and router is not None:
        b0, b1, seq, ts, ssrc = _RTP_FIXED.unpack_from(data)
        packet = LightRtpPacket(b1 & 0x7F, b1 >> 7, seq, ts, ssrc, b"")
        receiver = router.route_rtp(packet) if b0 >> 6 == 2 else None
        if type(receiver) is counting_type and not receiver._lean_decode and _passes_hook(receiver, packet):
            start = 12 + 4 * (b0 & 0x0F)
            if b0 & 0x10 and start + 4 <= size:
                start += 4 + 4 * ((data[start + 2] << 8) | data[start + 3])
            end = size - data[-1] if b0 & 0x20 else size
            if start <= end:
                packet.payload = data[start:end]
                receiver._count_rtp(packet)  # never decodes here: no coroutine needed
                return None
    if arrival_time_ms is None:  # the counting path keeps its own arrival clock
        arrival_time_ms = aiortc_clock.current_ms()
    return dtls._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)


class FastReceive:
    """The direct SRTP receive path of one DTLS transport (see the module docstring)."""

    __slots__ = ("_backlog", "_task", "connection", "direct", "dtls", "queued")

    #: Parse only the fixed RTP header for counting-only receivers (False: aiortc's parse).
    light_parse = True

    def __init__(self, dtls: RTCDtlsTransport) -> None:
        self.dtls = dtls
        self.connection = dtls.transport._connection
        self._backlog: collections.deque[bytes] = collections.deque()
        self._task: asyncio.Task | None = None
        self.direct = 0  # datagrams handled in the callback
        self.queued = 0  # datagrams left to aiortc's queue and task

    def data_received(self, data: bytes, component: int) -> None:
        """Stands in for ``aioice.ice.Connection.data_received`` on one connection."""
        dtls = self.dtls
        if data and 127 < data[0] < 192 and dtls._rx_srtp is not None and dtls._state is DtlsState.CONNECTED:
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


def install_fast_send(dtls: RTCDtlsTransport) -> None:
    """Send ``dtls``'s datagrams to the nominated pair's socket in one step; idempotent.

    ``RTCIceTransport._send`` is aioice's ``Connection.send`` -> ``Connection.sendto``
    -> ``StunProtocol.send_data`` -> ``transport.sendto``: three coroutine frames per
    packet that only look up the nominated pair.  The replacement does the same
    lookup and the same ``transport.sendto`` (a TURN relay's transport included);
    a protocol with its own ``send_data`` keeps it.  Its ``now`` attribute is the
    synchronous form :func:`send_rtp_now` uses.
    """
    ice = dtls.transport
    if getattr(ice._send, "_softphone_fast", False):
        return
    check_fastpath_supported(dtls)
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


def turn_send_now(transport: TurnTransport, data: bytes, addr: tuple[str, int]) -> bool:
    """Send ``data`` to ``addr`` on its bound TURN channel right now; False to leave it to aioice.

    aioice's ``TurnTransport.sendto`` creates a task per datagram to run
    ``send_data``, which for a bound, fresh channel only prepends the 4-byte
    ChannelData header (RFC 8656 section 12.4) and sends.  That case is done here;
    a channel still to bind or to refresh, a closing transport or an aioice
    without these attributes takes aioice's own path.
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


_CHANNEL_HEADER = struct.Struct("!HH")


def send_rtp_now(dtls: RTCDtlsTransport, data: bytes) -> None:
    """``RTCDtlsTransport._send_rtp`` for one RTP packet, without a coroutine when possible.

    With :func:`install_fast_send` in place the packet is protected and handed to the
    socket right here (2 coroutine frames and an ``await`` less per packet, about
    a tenth of a core at 150 peer connections); the transmit counters are kept as
    aiortc keeps them.  Otherwise aiortc's own ``_send_rtp`` runs through
    :func:`step_awaitable`.  Raises ``ConnectionError`` as ``_send_rtp`` does.
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


async def _continue(awaitable_iter: Any, yielded: Any) -> None:
    try:
        await _resume(awaitable_iter, yielded)
    except ConnectionError as exc:
        log.debug("x RTP not sent: %s", exc)


_pending_sends: set[asyncio.Task] = set()


def step_awaitable(awaitable: Any) -> None:
    """Run an awaitable up to its first suspension; finish the rest in a task.

    A send that completes without suspending (the usual case) creates no task.
    """
    it = awaitable.__await__()
    try:
        yielded = next(it)
    except StopIteration:
        return
    task = asyncio.ensure_future(_continue(it, yielded))
    _pending_sends.add(task)
    task.add_done_callback(_pending_sends.discard)


def install_fast_receive(dtls: RTCDtlsTransport) -> FastReceive:
    """Route ``dtls``'s SRTP straight from the datagram callback; idempotent."""
    connection = dtls.transport._connection
    hook = connection.__dict__.get("data_received")
    if isinstance(getattr(hook, "__self__", None), FastReceive):
        return hook.__self__
    check_fastpath_supported(dtls)
    fast = FastReceive(dtls)
    connection.data_received = fast.data_received  # instance attribute shadows the method
    for protocol in connection._protocols:
        _skip_stun_parse(protocol, fast)
    return fast


def _skip_stun_parse(protocol: Any, fast: FastReceive) -> None:
    """Hand RTP/RTCP datagrams of ``protocol`` to ``fast`` before aioice tries them as STUN.

    ``StunProtocol.datagram_received`` parses every datagram as STUN and passes it on
    when ``ValueError`` says it is not one: an exception per media packet.  A first
    byte of 128-191 (RTP version 2) can never start a STUN message (RFC 7983), so
    those skip the attempt; everything else takes aioice's path.  A TURN relay's
    protocol gets the same, after the TURN client has unwrapped the data.
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


def enable_fastpath(pc: RTCPeerConnection) -> None:
    """Install the fast clock now and the fast receive path on ``pc``'s transports once connected.

    Call right after creating the peer connection; DTLS transports are only final
    (BUNDLE) and keyed once the connection is up.  Packets that arrive earlier go
    through aiortc's queue as usual.
    """
    check_fastpath_supported()
    install_fast_clock()

    def on_state() -> None:
        if pc.connectionState != "connected":
            return
        seen: set[int] = set()
        for transceiver in pc.getTransceivers():
            dtls = transceiver.receiver.transport
            if dtls is not None and id(dtls) not in seen:
                seen.add(id(dtls))
                install_fast_receive(dtls)
                install_fast_send(dtls)

    pc.on("connectionstatechange", on_state)
