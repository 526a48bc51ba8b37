"""The lab's SIP registrar over real WebSockets (ws and wss), with our own SIP user agent as the phone."""

from __future__ import annotations

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

from softphone.errors import AuthenticationError, ConfigurationError, RegistrationError, TransportError
from softphone.lab.registrar import RegistrarOptions
from softphone.lab.sip_endpoint import EdgeLimits
from softphone.sip.message import parse_message


async def test_registers_over_ws_and_over_wss_with_the_ca_file():
    async with running_lab() as lab:
        events = Events(lab.endpoint)
        assert lab.sip_ws_url.startswith("ws://") and lab.sip_wss_url.startswith("wss://")
        for i, secure in ((0, False), (1, True)):
            ua = phone(lab, i, secure=secure)
            await ua.start()
            try:
                assert ua.registered
                assert lab.endpoint.is_registered(extension(i))
                binding = lab.endpoint.binding(extension(i))
                assert binding.connection.scheme == ("wss" if secure else "ws")
                assert ua.registerer.granted_expires == 600
            finally:
                await ua.stop()
        assert events.registered == [extension(0), extension(1)]
        assert events.unregistered == [(extension(0), "expires 0"), (extension(1), "expires 0")]
        assert lab.endpoint.registered_extensions() == []


async def test_wss_is_verified_a_client_without_the_ca_file_is_refused():
    async with running_lab() as lab:
        ua = phone(lab, 0, secure=True, ca_file=None)
        with pytest.raises(TransportError, match="certificate verification failed"):
            await ua.start()
        assert lab.endpoint.registered_extensions() == []


@pytest.mark.parametrize("algorithms", [("MD5",), ("SHA-256",), ("MD5", "SHA-256")])
async def test_md5_and_sha256_both_work(algorithms):
    async with running_lab(registrar_options=RegistrarOptions(algorithms=algorithms)) as lab:
        challenges = []
        ua = phone(lab, 0)
        ua.transport.on("message", lambda m: challenges.append(m.headers.get_all("WWW-Authenticate"))
                        if getattr(m, "status", None) == 401 else None)
        async with ua:
            binding = lab.endpoint.binding(extension(0))
            # our client takes the strongest offered; SIP.js takes the first (MD5 comes first)
            assert binding.algorithm == ("SHA-256" if "SHA-256" in algorithms else "MD5")
        first = challenges[0]
        assert [c.split("algorithm=")[1].split(",")[0] for c in first] == list(algorithms)
        assert all('qop="auth"' in c for c in first)


async def test_wrong_password_gets_401_then_fails():
    async with running_lab() as lab:
        statuses = []
        ua = phone(lab, 0, secret="not-the-password")
        ua.transport.on("message", lambda m: statuses.append(getattr(m, "status", None)))
        failures = []
        ua.on("registration_failed", failures.append)
        with pytest.raises(AuthenticationError, match="authentication rejected"):
            await ua.start()
        assert statuses.count(401) == 2
        assert failures and isinstance(failures[0], AuthenticationError)
        assert lab.endpoint.registered_extensions() == []
        assert "not-the-password" not in repr(failures[0])


async def test_a_stale_nonce_gets_stale_true_and_the_retry_registers():
    async with running_lab() as lab:
        registrar = lab.registrar
        now = [datetime.now(UTC).timestamp()]
        registrar.nonces._clock = lambda: now[0]
        issue = registrar.nonces.issue
        issued = []

        def issue_then_age() -> str:
            nonce = issue()
            if not issued:  # the first nonce is out of date by the time the phone answers
                now[0] += registrar.options.nonce_ttl + 1
            issued.append(nonce)
            return nonce

        registrar.nonces.issue = issue_then_age
        challenges = []
        ua = phone(lab, 0)
        ua.transport.on("message", lambda m: challenges.extend(m.headers.get_all("WWW-Authenticate"))
                        if getattr(m, "status", None) == 401 else None)
        async with ua:
            assert ua.registered
        assert any("stale=true" in c for c in challenges)
        assert registrar.counters["stale"] == 1


async def test_expired_extension_gets_403_and_unknown_extension_404():
    async with running_lab() as lab:
        past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
        await lab.db.run_transaction(lambda tx: tx.execute(
            "UPDATE lab_extensions SET expire_date = ? WHERE extension = ?", (past, extension(0))))
        ua = phone(lab, 0)
        with pytest.raises(RegistrationError, match=r"403 Forbidden \(extension 7000 expired"):
            await ua.start()
        ua = phone(lab, 99)  # 7099: nobody has it
        with pytest.raises(RegistrationError, match=r"404 Not Found \(extension 7099 is not provisioned"):
            await ua.start()
        assert lab.endpoint.registered_extensions() == []


async def test_provisioned_extension_uses_the_users_password_and_sees_a_change():
    async with running_lab() as lab:
        user = await lab.lab.store.user(1001)
        ext = await lab.lab.store.provision_extension(user, (datetime.now(UTC) + timedelta(hours=1)).isoformat())
        from softphone.sip.user_agent import UserAgent, UserAgentConfig

        def ua(secret: str) -> UserAgent:
            return UserAgent(UserAgentConfig(ws_url=lab.sip_ws_url, aor=f"sip:{ext}@{lab.domain}", password=secret))

        async with ua("agent1pass") as first:
            assert first.registered and lab.endpoint.is_registered(ext)
        await lab.db.run_transaction(lambda tx: tx.execute(
            "UPDATE lab_users SET password = ? WHERE user_id = ?", ("changed-pass", 1001)))
        with pytest.raises(AuthenticationError):
            await ua("agent1pass").start()
        async with ua("changed-pass") as second:
            assert second.registered


async def test_expires_0_unbinds_and_closing_the_websocket_unbinds():
    async with running_lab() as lab:
        events = Events(lab.endpoint)
        first, second = phone(lab, 0), phone(lab, 1)
        await first.start()
        await second.start()
        assert lab.endpoint.registered_extensions() == [extension(0), extension(1)]
        await first.registerer.unregister()
        await wait_until(lambda: (extension(0), "expires 0") in events.unregistered, what="expires 0 unbinding")
        assert not lab.endpoint.is_registered(extension(0))
        # the WebSocket goes away without any un-REGISTER
        await second.transport.close()
        await wait_until(lambda: (extension(1), "websocket closed") in events.unregistered,
                         what="unbinding on close")
        assert lab.endpoint.registered_extensions() == []
        await first.stop()
        await second.stop()


async def test_too_brief_expiry_gets_423_and_the_phone_takes_min_expires():
    async with running_lab() as lab:
        statuses = []
        ua = phone(lab, 0, expires=5)
        ua.transport.on("message", lambda m: statuses.append(getattr(m, "status", None)))
        async with ua:
            assert 423 in statuses
            assert ua.registerer.granted_expires == lab.registrar.options.min_expires


async def test_binding_expires_when_not_refreshed():
    options = RegistrarOptions(min_expires=1)
    async with running_lab(registrar_options=options) as lab:
        events = Events(lab.endpoint)
        ua = phone(lab, 0, expires=1)
        await ua.start()
        ua.registerer._cancel_refresh()  # a phone that forgets to refresh
        await wait_until(lambda: (extension(0), "binding expired") in events.unregistered, what="binding expiry")
        assert not lab.endpoint.is_registered(extension(0))
        await ua.stop()


async def test_options_is_answered_and_a_method_not_allowed_gets_405_with_allow():
    async with running_lab() as lab:
        async with phone(lab, 0) as ua:
            for method, status in (("OPTIONS", 200), ("SUBSCRIBE", 405), ("MESSAGE", 405), ("FOO", 501)):
                request = ua.core.create_request(method, f"sip:{lab.domain}", to=f"<sip:{lab.domain}>")
                response = await ua.core.request(request).response()
                assert response.status == status, method
                if status == 405:
                    allow = response.headers.get("Allow")
                    assert "REGISTER" in allow and "INVITE" in allow and method not in allow
            bye = ua.core.create_request("BYE", f"sip:{lab.domain}", to=f"<sip:{lab.domain}>;tag=nope")
            assert (await ua.core.request(bye).response()).status == 481


@pytest.mark.parametrize(("text", "reason"), [
    (register_text("7000", "127.0.0.1", from_user="7001"), "To and From name different AORs"),
    (register_text("7000", "127.0.0.1", contact=None), "no Contact"),
    (register_text("7000", "127.0.0.1", contact="<sip:a@b.invalid>;expires=soon"), "expires='soon' is not a number"),
    (register_text("7000", "127.0.0.1", contact="*"), "Contact '*' needs Expires: 0"),
    (register_text("", "127.0.0.1"), "names no extension"),
    (register_text("7000", "127.0.0.1", extra="Expires: never"), "Expires"),
])
async def test_bad_register_gets_400_naming_the_problem(text, reason):
    async with running_lab() as lab:
        async with raw_ws(lab.sip_ws_url) as ws:
            await ws.send_str(text)
            response = parse_message(await receive_text(ws))
            assert response.status == 400
            assert reason in response.reason


async def test_unparsable_request_gets_400_with_the_reason_when_answerable():
    async with running_lab() as lab:
        async with raw_ws(lab.sip_ws_url) as ws:
            broken = register_text("7000", "127.0.0.1").replace("Max-Forwards: 70", "Max-Forwards: x")
            await ws.send_str(broken)
            response = parse_message(await receive_text(ws))
            assert response.status == 400 and "Max-Forwards" in response.reason
            # a message too broken to answer is dropped; the connection still serves the next one
            await ws.send_str(broken.replace("CSeq: 1 REGISTER", "CSeq: x REGISTER"))
            await ws.send_str("OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/WS raw.invalid;branch=z9hG4bKo1\r\n"
                              "To: <sip:127.0.0.1>\r\nFrom: <sip:7000@127.0.0.1>;tag=t\r\nCall-ID: o1\r\n"
                              "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
            assert parse_message(await receive_text(ws)).status == 200


async def test_handshake_without_the_sip_subprotocol_is_refused():
    async with running_lab() as lab:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await session.ws_connect(lab.sip_ws_url)
            assert info.value.status == 400
            async with session.get(lab.sip_ws_url.replace("ws://", "http://")) as resp:
                assert resp.status == 400
        assert lab.endpoint.refused["subprotocol"] == 2


async def test_crlf_keep_alive_is_answered():
    async with running_lab() as lab:
        async with raw_ws(lab.sip_ws_url) as ws:
            await ws.send_str("\r\n\r\n")
            msg = await ws.receive(timeout=10)
            assert msg.data == "\r\n"


async def test_sip_false_serves_no_edge():
    async with running_lab(sip=False) as lab:
        assert lab.endpoint is None and lab.sip_ws_url is None and lab.ca_file is None
        async with aiohttp.ClientSession() as session:
            async with session.get(lab.url + "/ws") as resp:
                assert resp.status == 404


@pytest.mark.parametrize(("make", "field"), [
    (lambda: RegistrarOptions(algorithms=("MD4",)), "algorithms"),
    (lambda: RegistrarOptions(min_expires=700), "min_expires"),
    (lambda: RegistrarOptions(realm='a"b'), "realm"),
    (lambda: EdgeLimits(rate=0), "rate"),
    (lambda: EdgeLimits(max_frame_bytes=0), "max_frame_bytes"),
])
def test_bad_limits_and_options_name_the_field(make, field):
    with pytest.raises(ConfigurationError, match=field):
        make()
