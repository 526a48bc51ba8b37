"""The media fast path: same clock values, SRTP handled in the datagram callback, order kept."""

from __future__ import annotations

import asyncio
import datetime

import aioice
import aioice.ice
import aiortc
import pytest
from aiortc import clock as aiortc_clock
from aiortc.rtcdtlstransport import State as DtlsState
from media_support import wait_until

from softphone.errors import AiortcCompatibilityError
from softphone.media import aiortc_seam as seam
from softphone.media.aiortc_seam import (
    FastReceive,
    fast_receive_of,
    install_fast_receive,
    install_fast_send,
    send_rtp_now,
)
from softphone.media.lean import PreEncodedAudioTrack, Tone
from softphone.media.testing import loopback_host_candidates, open_loopback_call

# --- clock -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 1.5, 1_700_000_000.123456, 1_799_999_999.999999, 2_000_000_000.000001])
def test_fast_clock_matches_aiortc_for_the_same_instant(monkeypatch, t):
    monkeypatch.setattr(seam.time, "time", lambda: t)
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    stock_ntp = aiortc_clock.datetime_to_ntp(dt)
    stock_ms = int((dt - aiortc_clock.NTP_EPOCH).total_seconds() * 1000)
    # Float microseconds of ``t`` may round differently from datetime's: allow one microsecond.
    assert abs(seam.fast_current_ntp_time() - stock_ntp) <= (1 << 32) // 1_000_000 + 1
    assert abs(seam.fast_current_ms() - stock_ms) <= 1


def test_fast_clock_is_close_to_aiortc_now():
    seam.uninstall_fast_clock()
    stock = aiortc_clock.current_ntp_time()
    fast = seam.fast_current_ntp_time()
    assert stock >> 32 > 3_900_000_000  # after 2023, so the epoch offset is right
    assert abs(fast - stock) < 60 << 32  # same clock, not a constant apart


def test_install_fast_clock_swaps_and_restores():
    seam.install_fast_clock()
    try:
        assert aiortc_clock.current_ntp_time is seam.fast_current_ntp_time
        assert aiortc_clock.current_ms is seam.fast_current_ms
    finally:
        seam.uninstall_fast_clock()
    assert aiortc_clock.current_ntp_time is not seam.fast_current_ntp_time


# --- version checks --------------------------------------------------------------------


def test_unsupported_aiortc_is_refused(monkeypatch):
    monkeypatch.setattr(aiortc, "__version__", "1.99.0")
    with pytest.raises(AiortcCompatibilityError, match=r"aiortc 1\.99\.0"):
        seam.check()


# --- receive path with a fake transport ----------------------------------------------------


class FakeSrtp:
    def unprotect(self, data: bytes) -> bytes:
        return data

    def protect(self, data: bytes) -> bytes:
        return b"srtp:" + data

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return data


class FakeConnection:
    def __init__(self) -> None:
        self._queue: asyncio.Queue = asyncio.Queue()
        self._nominated: dict = {}
        self._protocols: list = []

    def data_received(self, data: bytes, component: int) -> None:  # replaced by the hook
        self._queue.put_nowait((data, component))


class FakeIce:
    def __init__(self) -> None:
        self._connection = FakeConnection()
        self._send = self._stock_send
        self.stock_sent: list[bytes] = []

    async def _stock_send(self, data: bytes) -> None:
        self.stock_sent.append(data)


class FakeDtls:
    """Just what the SRTP branch of RTCDtlsTransport._recv_next touches."""

    def __init__(self, gate: asyncio.Event | None = None) -> None:
        self.transport = FakeIce()
        self._rx_srtp = FakeSrtp()
        self._tx_srtp = FakeSrtp()
        self._state = DtlsState.CONNECTED
        self._RTCDtlsTransport__rx_bytes = 0
        self._RTCDtlsTransport__rx_packets = 0
        self._RTCDtlsTransport__tx_bytes = 0
        self._RTCDtlsTransport__tx_packets = 0
        self.stock_send_rtp: list[bytes] = []
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []
        self.gate = gate

    async def _handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        if self.gate is not None and data[2] == 1:
            await self.gate.wait()  # the first packet's handler really suspends
        self.rtp.append(data)

    async def _handle_rtcp_data(self, data: bytes) -> None:
        self.rtcp.append(data)

    async def _send_rtp(self, data: bytes) -> None:
        self.stock_send_rtp.append(data)


def rtp(n: int) -> bytes:
    return bytes([0x80, 0, n, 0]) + bytes(8) + b"payload"


def rtcp() -> bytes:
    return bytes([0x80, 200, 0, 6]) + bytes(24)


async def test_srtp_is_handled_in_the_callback_without_the_queue():
    dtls = FakeDtls()
    fast = install_fast_receive(dtls)  # type: ignore[arg-type]
    conn = dtls.transport._connection
    for n in range(1, 4):
        conn.data_received(rtp(n), 1)
    conn.data_received(rtcp(), 1)
    assert dtls.rtp == [rtp(1), rtp(2), rtp(3)]  # handled synchronously, before any await
    assert dtls.rtcp == [rtcp()]
    assert conn._queue.empty()
    assert (fast.direct, fast.queued) == (4, 0)
    assert dtls._RTCDtlsTransport__rx_packets == 4
    assert dtls._RTCDtlsTransport__rx_bytes == 3 * len(rtp(1)) + len(rtcp())


async def test_install_is_idempotent_and_findable():
    dtls = FakeDtls()
    first = install_fast_receive(dtls)  # type: ignore[arg-type]
    assert install_fast_receive(dtls) is first  # type: ignore[arg-type]
    assert fast_receive_of(dtls) is first  # type: ignore[arg-type]
    assert fast_receive_of(FakeDtls()) is None  # type: ignore[arg-type]


async def test_dtls_records_and_unkeyed_srtp_go_through_the_queue():
    dtls = FakeDtls()
    fast = install_fast_receive(dtls)  # type: ignore[arg-type]
    conn = dtls.transport._connection
    dtls_record = bytes([22, 254, 253]) + bytes(10)
    conn.data_received(dtls_record, 1)
    dtls._rx_srtp = None  # before the handshake has produced keys
    conn.data_received(rtp(1), 1)
    assert [conn._queue.get_nowait()[0] for _ in range(2)] == [dtls_record, rtp(1)]
    assert dtls.rtp == [] and fast.queued == 2


async def test_packets_queue_behind_earlier_queued_datagrams():
    dtls = FakeDtls()
    install_fast_receive(dtls)  # type: ignore[arg-type]
    conn = dtls.transport._connection
    conn._queue.put_nowait((rtp(1), 1))  # not yet taken by aiortc's receive task
    conn.data_received(rtp(2), 1)
    assert dtls.rtp == []
    assert [conn._queue.get_nowait()[0] for _ in range(2)] == [rtp(1), rtp(2)]


async def test_a_suspended_handler_finishes_in_a_task_and_later_packets_keep_order():
    gate = asyncio.Event()
    dtls = FakeDtls(gate)
    fast: FastReceive = install_fast_receive(dtls)  # type: ignore[arg-type]
    conn = dtls.transport._connection
    conn.data_received(rtp(1), 1)  # suspends on the gate
    conn.data_received(rtp(2), 1)
    conn.data_received(rtp(3), 1)
    assert dtls.rtp == []
    assert conn._queue.empty()
    gate.set()
    for _ in range(100):
        if len(dtls.rtp) == 3:
            break
        await asyncio.sleep(0)
    assert dtls.rtp == [rtp(1), rtp(2), rtp(3)]
    conn.data_received(rtp(4), 1)  # back on the direct path
    assert dtls.rtp[-1] == rtp(4)
    assert fast._task is None


async def test_a_failing_handler_does_not_stop_reception(caplog):
    dtls = FakeDtls()
    install_fast_receive(dtls)  # type: ignore[arg-type]
    conn = dtls.transport._connection
    original = dtls._handle_rtp_data

    async def broken(data: bytes, arrival_time_ms: int) -> None:
        if data[2] == 1:
            raise RuntimeError("boom")
        await original(data, arrival_time_ms)

    dtls._handle_rtp_data = broken
    conn.data_received(rtp(1), 1)
    conn.data_received(rtp(2), 1)
    assert dtls.rtp == [rtp(2)]
    assert "packet handler failed" in caplog.text


# --- send path with a fake transport ------------------------------------------------------


class FakeDatagramTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))


def nominate(dtls: FakeDtls, protocol) -> None:
    candidate = aioice.Candidate(foundation="1", component=1, transport="udp", priority=1,
                                 host="127.0.0.1", port=40000, type="host")
    dtls.transport._connection._nominated[1] = aioice.ice.CandidatePair(protocol, candidate)


async def test_fast_send_goes_to_the_nominated_pairs_transport():
    dtls = FakeDtls()
    install_fast_send(dtls)  # type: ignore[arg-type]
    install_fast_send(dtls)  # type: ignore[arg-type]  # idempotent
    with pytest.raises(ConnectionError):
        await dtls.transport._send(b"early")
    protocol = aioice.ice.StunProtocol(None)  # type: ignore[arg-type]
    protocol.transport = FakeDatagramTransport()
    nominate(dtls, protocol)
    await dtls.transport._send(b"srtp")
    assert protocol.transport.sent == [(b"srtp", ("127.0.0.1", 40000))]
    assert dtls.transport.stock_sent == []


async def test_fast_send_keeps_a_protocols_own_send_data():
    class Custom(aioice.ice.StunProtocol):
        async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(b"wrapped:" + data, addr)

    dtls = FakeDtls()
    install_fast_send(dtls)  # type: ignore[arg-type]
    protocol = Custom(None)  # type: ignore[arg-type]
    protocol.transport = FakeDatagramTransport()
    nominate(dtls, protocol)
    await dtls.transport._send(b"x")
    assert protocol.transport.sent == [(b"wrapped:x", ("127.0.0.1", 40000))]


async def test_send_rtp_now_protects_and_sends_without_a_coroutine():
    dtls = FakeDtls()
    install_fast_send(dtls)  # type: ignore[arg-type]
    protocol = aioice.ice.StunProtocol(None)  # type: ignore[arg-type]
    protocol.transport = FakeDatagramTransport()
    nominate(dtls, protocol)
    send_rtp_now(dtls, rtp(1))  # type: ignore[arg-type]
    # On the socket before any await, with the transport's counters kept.
    assert protocol.transport.sent == [(b"srtp:" + rtp(1), ("127.0.0.1", 40000))]
    assert dtls._RTCDtlsTransport__tx_packets == 1
    assert dtls._RTCDtlsTransport__tx_bytes == len(b"srtp:" + rtp(1))
    assert dtls.stock_send_rtp == [] and not seam._pending_sends
    dtls._state = DtlsState.CLOSED
    with pytest.raises(ConnectionError):
        send_rtp_now(dtls, rtp(2))  # type: ignore[arg-type]
    assert len(protocol.transport.sent) == 1


async def test_send_rtp_now_awaits_a_protocols_own_send_data_in_a_task():
    gate = asyncio.Event()

    class Relay(aioice.ice.StunProtocol):  # a TURN relay really suspends sometimes
        async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
            await gate.wait()
            self.transport.sendto(b"relayed:" + data, addr)

    dtls = FakeDtls()
    install_fast_send(dtls)  # type: ignore[arg-type]
    protocol = Relay(None)  # type: ignore[arg-type]
    protocol.transport = FakeDatagramTransport()
    nominate(dtls, protocol)
    send_rtp_now(dtls, rtp(1))  # type: ignore[arg-type]
    assert protocol.transport.sent == [] and len(seam._pending_sends) == 1
    gate.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert protocol.transport.sent == [(b"relayed:srtp:" + rtp(1), ("127.0.0.1", 40000))]
    assert not seam._pending_sends


async def test_send_rtp_now_without_the_fast_send_uses_aiortcs_send_rtp():
    dtls = FakeDtls()
    send_rtp_now(dtls, rtp(1))  # type: ignore[arg-type]
    assert dtls.stock_send_rtp == [rtp(1)]


def stun_protocol(connection) -> aioice.ice.StunProtocol:
    protocol = aioice.ice.StunProtocol(connection)
    protocol.local_candidate = aioice.Candidate(foundation="1", component=1, transport="udp", priority=1,
                                                host="127.0.0.1", port=40001, type="host")
    return protocol


async def test_media_datagrams_skip_the_stun_parse_and_stun_still_gets_it(monkeypatch):
    dtls = FakeDtls()
    conn = dtls.transport._connection
    protocol = stun_protocol(conn)
    conn._protocols.append(protocol)
    fast = install_fast_receive(dtls)  # type: ignore[arg-type]
    parsed: list[bytes] = []
    stock_parse = aioice.stun.parse_message

    def counting_parse(data: bytes, *args, **kwargs):
        parsed.append(data)
        return stock_parse(data, *args, **kwargs)

    monkeypatch.setattr(aioice.stun, "parse_message", counting_parse)
    protocol.datagram_received(rtp(1), ("127.0.0.1", 5000))
    protocol.datagram_received(rtcp(), ("127.0.0.1", 5000))
    assert parsed == [] and dtls.rtp == [rtp(1)] and dtls.rtcp == [rtcp()]
    assert fast.direct == 2
    # A STUN binding request still goes to aioice's parser and on to the connection.
    requests: list = []
    conn.request_received = lambda message, addr, proto, raw=None: requests.append(message)
    request = aioice.stun.Message(message_method=aioice.stun.Method.BINDING,
                                  message_class=aioice.stun.Class.REQUEST)
    protocol.datagram_received(bytes(request), ("127.0.0.1", 5000))
    assert len(parsed) == 1 and len(requests) == 1
    # Anything else that is not STUN (a DTLS record) reaches the connection as before.
    protocol.datagram_received(bytes([22, 254, 253]) + bytes(10), ("127.0.0.1", 5000))
    assert conn._queue.get_nowait()[0] == bytes([22, 254, 253]) + bytes(10)
    # An empty datagram is dropped and counted: aiortc's _recv_next would die on data[0].
    protocol.datagram_received(b"", ("127.0.0.1", 5000))
    assert conn._queue.empty() and fast.discarded == 1


async def test_a_protocol_with_its_own_datagram_handler_is_left_alone():
    class Own(aioice.ice.StunProtocol):
        def datagram_received(self, data, addr):
            self.seen = data

    dtls = FakeDtls()
    conn = dtls.transport._connection
    own = Own(conn)
    conn._protocols.append(own)
    install_fast_receive(dtls)  # type: ignore[arg-type]
    assert "datagram_received" not in own.__dict__


# --- a real call --------------------------------------------------------------------------


async def test_loopback_call_uses_the_fast_path_and_keeps_rtp_and_rtcp():
    tone = Tone(440, 1.0)
    with loopback_host_candidates():
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(tone), PreEncodedAudioTrack(tone))
    try:
        def flowing() -> bool:
            return all((fast := fast_receive_of(leg.receiver.transport)) is not None and fast.direct > 10
                       and leg.report().received > 10 for leg in (call.caller, call.callee))

        await wait_until(flowing, 10, "more than 10 packets each way on the fast path")
        for leg in (call.caller, call.callee):
            fast = fast_receive_of(leg.receiver.transport)
            assert fast is not None
            assert fast.direct > 10
            assert getattr(leg.receiver.transport.transport._send, "_softphone_fast", False)
            protocols = leg.receiver.transport.transport._connection._protocols
            assert protocols and all("datagram_received" in p.__dict__ for p in protocols)
            report = leg.report()
            assert report.received > 10 and report.lost == 0
        # RTCP sender/receiver reports are sent every ~1 s and arrive over the fast path too.
        stats = {}
        for _ in range(50):
            stats = await call.caller.pc.getStats()
            if any(s.type == "remote-inbound-rtp" for s in stats.values()):
                break
            await asyncio.sleep(0.1)
        assert any(s.type == "remote-inbound-rtp" for s in stats.values())
        transport = next(s for s in stats.values() if s.type == "transport")
        assert transport.packetsReceived >= call.caller.report().received
    finally:
        await call.close()


async def test_loopback_call_without_the_fast_path_is_stock_aiortc():
    from softphone.media.lean_sender import lean_sender_of

    seam.uninstall_fast_clock(force=True)
    tone = Tone(440, 1.0)
    with loopback_host_candidates():
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(tone), PreEncodedAudioTrack(tone),
                                        fast_path=False)
    try:
        async def received() -> int:
            stats = await call.caller.receiver.getStats()
            return sum(s.packetsReceived for s in stats.values() if s.type == "inbound-rtp")

        got = 0

        async def some() -> bool:
            nonlocal got
            got = await received()
            return got > 5

        for _ in range(200):  # up to 10 s
            if await some():
                break
            await asyncio.sleep(0.05)
        assert got > 5
        assert fast_receive_of(call.caller.receiver.transport) is None
        assert type(call.caller.receiver) is aiortc.RTCRtpReceiver  # no class swap
        assert lean_sender_of(call.caller.transceiver.sender) is None
        assert not seam.fast_clock_installed()
    finally:
        await call.close()


async def test_the_fast_clock_is_only_installed_while_fast_calls_are_open():
    seam.uninstall_fast_clock(force=True)
    tone = Tone(440, 1.0)
    with loopback_host_candidates():
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(tone), None)
    try:
        assert seam.fast_clock_installed()
    finally:
        await call.close()
    assert not seam.fast_clock_installed()


# --- TURN channel send without a task per packet -------------------------------------------


class FakeTurnInner:
    """What turn_send_now reads of aioice's TURN client protocol."""

    def __init__(self) -> None:
        self.peer_to_channel: dict = {}
        self.peer_connect_waiters: dict = {}
        self.channel_refresh_at: dict = {}
        self.sent: list[bytes] = []
        self.transport = type("T", (), {"is_closing": lambda self: False})()

    def _send(self, data: bytes) -> None:
        self.sent.append(data)


def test_turn_send_now_sends_on_a_bound_channel_and_leaves_the_rest_to_aioice():
    import time

    from aioice.turn import TurnTransport

    inner = FakeTurnInner()
    transport = TurnTransport(inner)  # type: ignore[arg-type]
    peer = ("127.0.0.1", 50000)
    assert seam.turn_send_now(transport, b"rtp", peer) is False  # no channel yet: aioice binds
    inner.peer_to_channel[peer] = 0x4001
    inner.channel_refresh_at[0x4001] = time.time() + 60
    assert seam.turn_send_now(transport, b"rtp", peer) is True
    assert inner.sent == [bytes([0x40, 0x01, 0x00, 0x03]) + b"rtp"]  # RFC 8656 ChannelData
    inner.channel_refresh_at[0x4001] = time.time() - 1  # due for refresh: aioice refreshes
    assert seam.turn_send_now(transport, b"rtp", peer) is False
    inner.channel_refresh_at[0x4001] = time.time() + 60
    inner.peer_connect_waiters[peer] = []  # a (re)bind in progress: wait behind it in aioice
    assert seam.turn_send_now(transport, b"rtp", peer) is False
    del inner.peer_connect_waiters[peer]
    transport._TurnTransport__close_task = object()  # closing: aioice drops it
    assert seam.turn_send_now(transport, b"rtp", peer) is False
    assert len(inner.sent) == 1


# --- RFC 4733 hooked receivers -------------------------------------------------------------


def test_audio_passes_a_dtmf_hook_on_the_light_path_and_events_go_to_the_hook():
    from types import SimpleNamespace

    from aiortc import RTCRtpReceiver
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from aiortc.rtp import RtpPacket

    from softphone.media.counting_receiver import install_counting_receiver
    from softphone.media.rfc4733 import DtmfReceiver

    receiver = install_counting_receiver(RTCRtpReceiver("audio", SimpleNamespace(state="new")))
    receiver._RTCRtpReceiver__codecs[0] = RTCRtpCodecParameters(
        mimeType="audio/PCMU", clockRate=8000, channels=1, payloadType=0)
    router = SimpleNamespace(route_rtp=lambda packet: receiver, register_receiver=lambda *a, **k: None)
    receiver._RTCRtpReceiver__transport = SimpleNamespace(_rtp_router=router)
    hook = DtmfReceiver(receiver, lambda event: None)
    hook.configure({101: 8000})
    full_parse: list[bytes] = []

    async def handle_rtp_data(data, arrival_time_ms):
        full_parse.append(data)

    dtls = SimpleNamespace(_rtp_router=router, _handle_rtp_data=handle_rtp_data)

    def packet(pt: int, seq: int) -> bytes:
        p = RtpPacket(payload_type=pt, sequence_number=seq, timestamp=seq * 160, ssrc=9)
        p.payload = bytes(4) if pt == 101 else b"\xff" * 160
        return p.serialize()

    assert seam._handle_rtp_light(dtls, packet(0, 1)) is None  # audio: counted right here
    assert full_parse == [] and receiver.counters[9].packets_received == 1
    coro = seam._handle_rtp_light(dtls, packet(101, 2))  # an event: the hook's full path
    with pytest.raises(StopIteration):
        coro.send(None)
    assert full_parse == [packet(101, 2)]
