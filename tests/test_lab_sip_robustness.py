"""What one WebSocket sends never disturbs the others; expiry of provisioning; many registrations."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from lab_sip_support import (
    Events,
    extension,
    phone,
    raw_ws,
    receive_text,
    register_text,
    running_lab,
    wait_until,
)

from softphone.errors import RegistrationError
from softphone.lab.sip_endpoint import WS_MESSAGE_TOO_BIG, WS_POLICY_VIOLATION, EdgeLimits, TokenBucket
from softphone.sip.digest import NonceStore
from softphone.sip.message import parse_message
from softphone.sip.null_handler import NullDescriptionHandler
from softphone.sip.session import SessionState

PHONES = 24


async def start_all(uas, parallel: int = 100) -> None:
    gate = asyncio.Semaphore(parallel)

    async def start(ua) -> None:
        async with gate:
            await ua.start()

    await asyncio.gather(*(start(ua) for ua in uas))


async def call_everyone(lab, uas) -> None:
    """The lab INVITEs every phone; each call is answered, then the lab hangs up."""
    async def one(i: int) -> None:
        inviter = lab.endpoint.inviter(extension(i), NullDescriptionHandler, caller_id="omnisense")
        response = await inviter.invite()
        assert response.status == 200 and inviter.state is SessionState.ESTABLISHED
        await inviter.bye()

    await asyncio.gather(*(one(i) for i in range(len(uas))))


async def test_garbage_and_a_10_mb_frame_leave_the_other_phones_registered_and_callable():
    async with running_lab(phones=PHONES) as lab:
        events = Events(lab.endpoint)
        uas = [phone(lab, i) for i in range(PHONES)]
        await start_all(uas)
        closed = []
        lab.endpoint.on("disconnection", lambda conn, reason: closed.append((conn, reason)))
        try:
            async with raw_ws(lab.sip_ws_url, max_msg_size=0) as bad:
                await bad.send_bytes(b"\xff\xfe\x00 not utf-8 \x80")
                await bad.send_str("\x00\x01 complete garbage \r\n\r\n with CRLFs \r\n")
                await bad.send_str("INVITE sip:x SIP/2.0\r\n" + "X: " + "y" * 60000 + "\r\n\r\n")
                await bad.send_str(register_text("7000", lab.domain).replace("Max-Forwards: 70", "Max-Forwards: -1"))
                reply = parse_message(await receive_text(bad))
                assert reply.status == 400 and "Max-Forwards" in reply.reason
                try:
                    await bad.send_str("x" * (10 * 1024 * 1024))
                except (ConnectionError, aiohttp.ClientConnectionError):
                    pass  # the lab hung up in the middle of the frame
                await wait_until(lambda: closed, what="the lab closing the 10 MB sender")
            assert closed[0][0].close_code == WS_MESSAGE_TOO_BIG and "exceeds limit 65536" in closed[0][1]
            assert lab.endpoint.registered_extensions() == [extension(i) for i in range(PHONES)]
            assert events.unregistered == []
            await call_everyone(lab, uas)
        finally:
            await asyncio.gather(*(ua.stop() for ua in uas))


async def test_a_flood_is_rate_limited_then_cut_and_the_others_carry_on():
    limits = EdgeLimits(rate=50, burst=100, abuse_drops=500)
    async with running_lab(phones=PHONES, edge_limits=limits) as lab:
        uas = [phone(lab, i) for i in range(PHONES)]
        await start_all(uas)
        try:
            options = ("OPTIONS sip:{d} SIP/2.0\r\nVia: SIP/2.0/WS f.invalid;branch=z9hG4bKf{n}\r\n"
                       "To: <sip:{d}>\r\nFrom: <sip:flood@{d}>;tag=f\r\nCall-ID: flood{n}\r\n"
                       "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            answered = 0
            async with raw_ws(lab.sip_ws_url) as flood:
                for n in range(5000):
                    try:
                        await flood.send_str(options.format(d=lab.domain, n=n))
                    except (ConnectionResetError, aiohttp.ClientConnectionError):
                        break
                    if flood.closed:
                        break
                while True:
                    msg = await flood.receive(timeout=30)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    answered += 1
                assert flood.close_code == WS_POLICY_VIOLATION
            # the burst was served, the excess dropped, never more than the bucket allows
            assert limits.burst <= answered < 5000 - limits.abuse_drops
            assert lab.endpoint.registered_extensions() == [extension(i) for i in range(PHONES)]
            await call_everyone(lab, uas)
        finally:
            await asyncio.gather(*(ua.stop() for ua in uas))


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=10, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3


async def test_connection_limit_answers_503():
    async with running_lab(edge_limits=EdgeLimits(max_connections=2)) as lab:
        async with raw_ws(lab.sip_ws_url), raw_ws(lab.sip_ws_url):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with raw_ws(lab.sip_ws_url):
                    pass
            assert info.value.status == 503
        await wait_until(lambda: not lab.endpoint.connections, what="connections closed")
        async with raw_ws(lab.sip_ws_url):
            pass


async def test_provisioning_expiry_drops_the_binding_and_new_registers_get_403():
    now = [datetime.now(UTC).timestamp()]
    async with running_lab(clock=lambda: now[0]) as lab:
        lab.registrar.nonces = NonceStore(ttl=lab.registrar.options.nonce_ttl)  # real time for nonces
        events = Events(lab.endpoint)
        user = await lab.lab.store.user(1001)
        until = datetime.fromtimestamp(now[0], UTC) + timedelta(hours=2)
        ext = await lab.lab.store.provision_extension(user, until.isoformat())
        from softphone.sip.user_agent import UserAgent, UserAgentConfig

        def ua() -> UserAgent:
            return UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{ext}@{lab.domain}",
                                             password="agent1pass"))

        async with ua():
            assert lab.endpoint.is_registered(ext)
            assert await lab.registrar.check_provisioning() == []
            now[0] += 2 * 3600 + 1  # the provisioning's expire_date passes
            assert await lab.registrar.check_provisioning() == [ext]
            assert events.unregistered == [(ext, "provisioning expired")]
            assert not lab.endpoint.is_registered(ext)
            with pytest.raises(RegistrationError, match="403 Forbidden"):
                await ua().start()


async def test_the_provisioning_timer_fires_on_its_own():
    async with running_lab() as lab:
        events = Events(lab.endpoint)
        user = await lab.lab.store.user(1002)
        ext = await lab.lab.store.provision_extension(
            user, (datetime.now(UTC) + timedelta(seconds=3)).isoformat())
        from softphone.sip.user_agent import UserAgent, UserAgentConfig

        async with UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{ext}@{lab.domain}",
                                             password="agent2pass")):
            await wait_until(lambda: (ext, "provisioning expired") in events.unregistered, timeout=30,
                             what="the provisioning timer")
            assert not lab.endpoint.is_registered(ext)


async def test_a_re_provisioning_before_the_timer_keeps_the_binding():
    async with running_lab() as lab:
        events = Events(lab.endpoint)
        user = await lab.lab.store.user(1003)
        ext = await lab.lab.store.provision_extension(
            user, (datetime.now(UTC) + timedelta(seconds=1)).isoformat())
        from softphone.sip.user_agent import UserAgent, UserAgentConfig

        async with UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{ext}@{lab.domain}",
                                             password="agent3pass")):
            binding = lab.endpoint.binding(ext)
            await lab.lab.store.provision_extension(user, (datetime.now(UTC) + timedelta(hours=1)).isoformat())
            timer_fired = asyncio.Event()
            original = lab.registrar._recheck

            async def recheck(*args):
                await original(*args)
                timer_fired.set()

            lab.registrar._recheck = recheck
            await asyncio.wait_for(timer_fired.wait(), 30)
            assert lab.endpoint.binding(ext) is binding and events.unregistered == []


async def test_one_lab_holds_a_thousand_registrations():
    n = 1000
    async with running_lab(phones=n) as lab:
        events = Events(lab.endpoint)
        uas = [phone(lab, i) for i in range(n)]
        try:
            await start_all(uas)
            assert len(lab.endpoint.registered_extensions()) == n
            assert len(lab.endpoint.connections) == n
            # the phones vanish without un-REGISTERing: every binding goes with its WebSocket
            await asyncio.gather(*(ua.transport.close() for ua in uas))
            await wait_until(lambda: not lab.endpoint.registered_extensions(), timeout=60, what="all unbound")
            assert sorted(events.unregistered) == [(extension(i), "websocket closed") for i in range(n)]
        finally:
            await asyncio.gather(*(ua.stop() for ua in uas))


async def test_a_peer_that_does_not_read_is_closed_once_its_queue_is_full():
    class StuckWebSocket:
        """A WebSocket whose peer never reads: every send waits forever."""

        closed = False
        close_code = None

        async def send_str(self, text: str) -> None:
            await asyncio.Event().wait()

        async def close(self, code: int, message: bytes) -> None:
            self.closed, self.close_code = True, code

    from softphone.errors import TransportError
    from softphone.lab.sip_endpoint import WebSocketServerTransport

    ws = StuckWebSocket()
    transport = WebSocketServerTransport(ws, secure=False, name="stuck", max_outbox=5)
    transport.send_text("frame 0")
    await wait_until(lambda: transport._outbox.empty(), what="the writer taking the first frame")
    for n in range(1, 6):  # the writer is stuck on frame 0: five wait
        transport.send_text(f"frame {n}")
    with pytest.raises(TransportError, match="does not read"):
        transport.send_text("one too many")
    await wait_until(lambda: ws.closed, what="the close")
    assert ws.close_code == WS_POLICY_VIOLATION and transport.aborting
    transport.lost("closed")


async def test_registers_in_progress_per_connection_are_bounded():
    async with running_lab(edge_limits=EdgeLimits(max_pending_registers=2)) as lab:
        release = asyncio.Event()
        lookup = lab.registrar.lookup

        async def slow_lookup(ext):
            await release.wait()
            return await lookup(ext)

        lab.registrar.lookup = slow_lookup
        async with raw_ws(lab.sip_ws_url) as ws:
            for n in range(3):
                await ws.send_str(register_text("7000", lab.domain, call_id=f"pending-{n}"))
            third = parse_message(await receive_text(ws))
            assert third.status == 503 and third.call_id == "pending-2" and third.headers.get("Retry-After")
            release.set()
            answers = {parse_message(await receive_text(ws)).call_id: None for _ in range(2)}
            assert set(answers) == {"pending-0", "pending-1"}


async def test_a_phone_registering_during_the_provisioning_check_keeps_its_binding():
    async with running_lab() as lab:
        events = Events(lab.endpoint)
        first = phone(lab, 0)
        await first.start()
        reading, release = asyncio.Event(), asyncio.Event()
        dates = lab.registrar._expiry_dates

        async def slow_dates(extensions):
            reading.set()
            await release.wait()
            return await dates(extensions)

        lab.registrar._expiry_dates = slow_dates
        check = asyncio.get_running_loop().create_task(lab.registrar.check_provisioning())
        await reading.wait()
        second = phone(lab, 1)
        await second.start()  # registers while the check reads the dates of the bindings it knew
        release.set()
        assert await check == []
        assert lab.endpoint.registered_extensions() == [extension(0), extension(1)]
        assert events.unregistered == []
        await first.stop()
        await second.stop()
