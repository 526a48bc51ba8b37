"""Registerer over the in-memory registrar: digest, refresh, 423, un-REGISTER, reconnection."""

from __future__ import annotations

import asyncio
import logging

import pytest

from softphone.errors import AuthenticationError, RegistrationError
from softphone.sip.registerer import Registerer, RegistererOptions, RegistererState
from softphone.sip.testing import LoopbackHub, hub_user_agent

USERS = {"1001": "secret-1001"}
BOUND = 5.0


def _events(emitter, *names):
    seen: list[tuple] = []
    for name in names:
        emitter.on(name, lambda *args, _n=name: seen.append((_n, *args)))
    return seen


async def _until(predicate, timeout=BOUND):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_register_with_digest_and_sipjs_headers():
    hub = LoopbackHub(users=dict(USERS))
    ua = hub_user_agent(hub, "1001")
    events = _events(ua, "registered")
    async with ua:
        assert ua.registered
        assert events == [("registered", 600)]
        first, second = hub.messages("REGISTER")
        assert "Authorization" not in first.headers
        auth = second.headers.get("Authorization")
        assert auth.startswith("Digest") and 'username="1001"' in auth and "qop=auth" in auth
        assert second.cseq.seq == first.cseq.seq + 1
        assert second.call_id == first.call_id
        assert second.top_via.branch != first.top_via.branch
        assert str(first.uri) == "sip:example.test"
        contact = first.headers.get("Contact")
        cfg = ua.core.config
        assert contact.startswith(f"<sip:{cfg.contact_user}@{cfg.via_host};transport=ws>")
        assert f'+sip.instance="<urn:uuid:{cfg.instance_id}>"' in contact
        assert "reg-id=1" in contact and "expires=600" in contact
        assert first.headers.get("Allow") == "ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER"
        assert first.headers.get("Supported") == "outbound, path, gruu"
        assert first.top_via.transport == "WS" and first.top_via.host.endswith(".invalid")
        assert "1001" in hub.bindings
    assert "1001" not in hub.bindings  # un-REGISTER on close
    last = hub.messages("REGISTER")[-1]
    assert "expires=0" in last.headers.get("Contact")


async def test_wrong_password_is_authentication_error_not_a_loop():
    hub = LoopbackHub(users=dict(USERS))
    ua = hub_user_agent(hub, "1001", password="not-the-password")
    failed = _events(ua, "registration_failed")
    with pytest.raises(AuthenticationError) as info:
        await asyncio.wait_for(ua.start(), BOUND)
    assert "authentication rejected for 1001@example.test (401 Unauthorized)" in str(info.value)
    assert "not-the-password" not in str(info.value)
    assert len(hub.messages("REGISTER")) == 2
    assert failed and isinstance(failed[0][1], AuthenticationError)


async def test_digest_response_is_never_logged(caplog):
    hub = LoopbackHub(users=dict(USERS))
    ua = hub_user_agent(hub, "1001")
    caplog.set_level(logging.DEBUG, logger="softphone")
    async with ua:
        pass
    auth = hub.messages("REGISTER")[1].headers.get("Authorization")
    response = auth.split('response="', 1)[1].split('"', 1)[0]
    assert response not in caplog.text
    assert "secret-1001" not in caplog.text
    # The debug trace shows the messages (as SIP.js's traceSip does), masked.
    assert "SIP out:\nREGISTER sip:example.test SIP/2.0" in caplog.text
    assert 'response="***"' in caplog.text and "SIP in:\nSIP/2.0 200 OK" in caplog.text


async def test_stale_nonce_is_retried_transparently():
    hub = LoopbackHub(users=dict(USERS), stale_nonces=True)
    ua = hub_user_agent(hub, "1001")
    async with ua:
        assert ua.registered
        registers = hub.messages("REGISTER")
        assert len(registers) == 3  # no credentials, then stale, then accepted
        assert all("Authorization" in r.headers for r in registers[1:])


async def test_interval_too_brief_retries_with_min_expires():
    hub = LoopbackHub(users=dict(USERS), min_expires=1200)
    ua = hub_user_agent(hub, "1001")
    async with ua:
        assert ua.registerer.granted_expires == 1200
        contacts = [m.headers.get("Contact") for m in hub.messages("REGISTER")]
        assert "expires=600" in contacts[0]
        assert "expires=1200" in contacts[-1]


async def test_refresh_before_expiry_uses_granted_value():
    hub = LoopbackHub(users=dict(USERS), max_expires=1)
    ua = hub_user_agent(hub, "1001")
    async with ua:
        ua.registerer.options = RegistererOptions(refresh_frequency=0.05)
        events = _events(ua.registerer, "refreshed")
        await ua.registerer.register()
        await _until(lambda: len(events) >= 2)
        assert events[0] == ("refreshed", 1)
        call_ids = {m.call_id for m in hub.messages("REGISTER")}
        assert len(call_ids) == 1
        seqs = [m.cseq.seq for m in hub.messages("REGISTER")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_rejected_register_raises_registration_error():
    hub = LoopbackHub(users=dict(USERS))
    hub.interceptors.append(
        lambda msg, src: getattr(msg, "method", None) == "REGISTER" and (hub.respond(src, msg, 403), True)[1])
    ua = hub_user_agent(hub, "1001")
    with pytest.raises(RegistrationError) as info:
        await asyncio.wait_for(ua.start(), BOUND)
    assert "403" in str(info.value)


async def test_no_response_times_out_with_timer_f():
    hub = LoopbackHub(users=dict(USERS))
    hub.interceptors.append(lambda msg, src: True)  # a black hole
    ua = hub_user_agent(hub, "1001")
    with pytest.raises(RegistrationError) as info:
        await asyncio.wait_for(ua.start(), BOUND)
    assert "no final response" in str(info.value)


async def test_reconnect_re_registers_with_events():
    hub = LoopbackHub(users=dict(USERS))
    ua = hub_user_agent(hub, "1001")
    events = _events(ua, "registered", "unregistered", "disconnected", "connected")
    async with ua:
        transport = ua.transport
        before = len(hub.messages("REGISTER"))
        transport.drop("registrar went away")
        assert ua.registerer.state is RegistererState.UNREGISTERED
        transport.restore()
        await _until(lambda: ua.registered)
        assert len(hub.messages("REGISTER")) > before
        names = [e[0] for e in events]
        assert names == ["connected", "registered", "disconnected", "unregistered", "connected", "registered"]
        assert "registrar went away" in events[2][1] and "registrar went away" in events[3][1]


async def test_registerer_rejects_negative_expires_and_terminated_use():
    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001", register=False)
    async with ua:
        with pytest.raises(Exception, match="expires"):
            Registerer(ua.core, RegistererOptions(expires=-1))
        reg = Registerer(ua.core)
        await reg.register()
        assert reg.state is RegistererState.REGISTERED
        await reg.dispose()
        assert reg.state is RegistererState.TERMINATED
        with pytest.raises(RegistrationError):
            await reg.register()


async def test_reregistration_after_reconnect_retries_until_accepted():
    hub = LoopbackHub(users=dict(USERS))
    ua = hub_user_agent(hub, "1001")
    async with ua:
        failures = []

        def refuse_twice(msg, src):
            if getattr(msg, "method", None) == "REGISTER" and len(failures) < 2:
                failures.append(msg)
                hub.respond(src, msg, 500, "Server Internal Error")
                return True
            return False

        hub.interceptors.append(refuse_twice)
        failed = _events(ua, "registration_failed")
        ua.transport.drop()
        ua.transport.restore()
        await _until(lambda: ua.registered)
        assert len(failures) == 2 and len(failed) == 2
        assert all(isinstance(f[1], RegistrationError) for f in failed)


async def test_unsupported_challenge_is_an_immediate_authentication_error():
    hub = LoopbackHub(users=dict(USERS))

    def aka_only(msg, src):
        if getattr(msg, "method", None) == "REGISTER":
            hub.respond(src, msg, 401, "Unauthorized",
                        headers=[("WWW-Authenticate", 'Digest realm="x", nonce="n1", algorithm=AKAv1-MD5')])
            return True
        return False

    hub.interceptors.append(aka_only)
    ua = hub_user_agent(hub, "1001")
    with pytest.raises(AuthenticationError, match="impossible"):
        await asyncio.wait_for(ua.start(), BOUND)
    assert len(hub.messages("REGISTER")) == 1


async def test_expiry_from_expires_header_when_contact_not_listed():
    hub = LoopbackHub()

    def bare_ok(msg, src):
        if getattr(msg, "method", None) == "REGISTER":
            hub.respond(src, msg, 200, "OK", headers=[("Expires", "120")])
            return True
        return False

    hub.interceptors.append(bare_ok)
    ua = hub_user_agent(hub, "1001")
    async with ua:
        assert ua.registerer.granted_expires == 120


async def test_failed_refresh_is_retried_and_reported():
    hub = LoopbackHub(max_expires=1)
    ua = hub_user_agent(hub, "1001")
    async with ua:
        reg = ua.registerer
        reg.options = RegistererOptions(refresh_frequency=0.05, retry_interval=0.02)
        failed = _events(ua, "registration_failed", "unregistered")
        refused = []

        def refuse_once(msg, src):
            if getattr(msg, "method", None) == "REGISTER" and not refused:
                refused.append(msg)
                hub.respond(src, msg, 503, "Service Unavailable")
                return True
            return False

        await reg.register()  # refresh now; the next one is due in 50 ms
        registered = _events(reg, "registered")
        hub.interceptors.append(refuse_once)
        await _until(lambda: refused and reg.registered and registered)
        assert [e[0] for e in failed] == ["unregistered", "registration_failed"]


async def test_unregister_failure_still_ends_unregistered():
    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001")
    await ua.start()
    hub.interceptors.append(
        lambda msg, src: getattr(msg, "method", None) == "REGISTER" and (hub.respond(src, msg, 500), True)[1])
    await asyncio.wait_for(ua.stop(), BOUND)
    assert ua.registerer.state is RegistererState.TERMINATED


async def test_pending_register_fails_at_once_when_the_connection_drops():
    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001", scale=1.0)  # timer F would be 32 s
    async with ua:
        before = len(hub.messages("REGISTER"))
        hub.interceptors.append(lambda msg, src: getattr(msg, "method", None) == "REGISTER")
        pending = asyncio.ensure_future(ua.registerer.register())
        await _until(lambda: len(hub.messages("REGISTER")) > before)
        ua.transport.drop("cable cut")
        with pytest.raises(RegistrationError, match="connection lost"):
            await asyncio.wait_for(pending, BOUND)
        hub.interceptors.clear()
        ua.transport.restore()
        await _until(lambda: ua.registered)
