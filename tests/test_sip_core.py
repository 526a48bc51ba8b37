"""User-agent core: what it answers by itself, and robustness against bad input."""

from __future__ import annotations

import asyncio

import pytest

from softphone.sip.core import ALLOW, CoreConfig, random_token
from softphone.sip.testing import LoopbackHub, hub_user_agent

BOUND = 5.0


@pytest.fixture
async def setup():
    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001")
    probe = hub.transport("probe")
    await probe.connect()
    got: list = []
    probe.on("message", got.append)
    await ua.start()
    yield hub, ua, probe, got
    await asyncio.wait_for(ua.stop(), BOUND)


def raw_request(ua, method, *, to_tag=None, branch="z9hG4bKprobe1", extra="", call_id="probe-call"):
    cfg = ua.core.config
    to = f"<sip:1001@example.test>{';tag=' + to_tag if to_tag else ''}"
    return (
        f"{method} sip:{cfg.contact_user}@{cfg.via_host};transport=ws SIP/2.0\r\n"
        f"Via: SIP/2.0/WS probe.invalid;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        "From: <sip:9999@example.test>;tag=probetag\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Contact: <sip:probe@probe.invalid;transport=ws>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    )


async def answers(got, count=1):
    for _ in range(500):
        if len(got) >= count:
            return got
        await asyncio.sleep(0.002)
    raise AssertionError(f"expected {count} responses, got {len(got)}")


async def test_options_answered_200_with_capabilities(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "OPTIONS"))
    (resp,) = await answers(got)
    assert resp.status == 200
    assert resp.headers.get("Allow") == ",".join(ALLOW)
    assert resp.headers.get("Accept") == "application/sdp"
    assert "outbound" in resp.headers.get("Supported")
    assert resp.headers.get("User-Agent").startswith("softphone/")
    assert resp.to.tag  # RFC 3261 8.2.6.2: a final response carries a To tag


async def test_unknown_method_501_known_not_allowed_405(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "FROBNICATE"))
    probe.send_text(raw_request(ua, "SUBSCRIBE", branch="z9hG4bKprobe2"))
    first, second = await answers(got, 2)
    assert first.status == 501
    assert second.status == 405
    assert second.headers.get("Allow") == ",".join(ALLOW)


async def test_in_dialog_request_for_unknown_dialog_gets_481(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "BYE", to_tag="nosuchtag"))
    probe.send_text(raw_request(ua, "INFO", branch="z9hG4bKprobe3"))  # out of dialog INFO
    first, second = await answers(got, 2)
    assert first.status == 481 and second.status == 481


async def test_cancel_for_unknown_invite_gets_481(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "CANCEL"))
    (resp,) = await answers(got)
    assert resp.status == 481


async def test_out_of_dialog_message_and_notify_are_accepted_and_emitted(setup):
    _, ua, probe, got = setup
    seen = []
    ua.on("message", lambda req: seen.append(req.method))
    probe.send_text(raw_request(ua, "MESSAGE"))
    (resp,) = await answers(got)
    assert resp.status == 200
    await asyncio.sleep(0.01)
    assert seen == ["MESSAGE"]


async def barrier(ua, probe, got, branch: str) -> None:
    """An OPTIONS from the probe, answered: whatever the UA sent before its answer is in the hub's log
    (the hub delivers in order), so a count taken now needs no sleep."""
    probe.send_text(raw_request(ua, "OPTIONS", branch=branch))
    for _ in range(500):
        if any(branch in (m.headers.get("Via") or "") for m in got):
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"the barrier OPTIONS ({branch}) was not answered")


async def test_partial_bad_request_gets_400_naming_the_problem(setup):
    hub, ua, probe, got = setup
    bad = raw_request(ua, "OPTIONS").replace("Content-Length: 0", "Content-Length: many")
    ua.transport.receive_text(bad)
    await barrier(ua, probe, got, "z9hG4bKbarrier1")
    replies = [m for m in hub.messages(source="1001") if getattr(m, "status", None) == 400]
    assert len(replies) == 1
    assert "content-length" in replies[0].reason.lower()
    # Without a Call-ID there is nothing to answer with: dropped.
    ua.transport.receive_text(raw_request(ua, "OPTIONS").replace("Call-ID: probe-call\r\n", ""))
    await barrier(ua, probe, got, "z9hG4bKbarrier2")
    assert len([m for m in hub.messages(source="1001") if getattr(m, "status", None) == 400]) == 1


async def test_garbage_frames_are_dropped_without_crashing(setup):
    hub, ua, probe, got = setup
    before = len(hub.messages(source="1001"))
    for junk in ["", "\r\n", "hello world", "SIP/2.0 abc\r\n\r\n", "INVITE\r\n\r\n", "\x00\xff" * 10,
                 "SIP/2.0 200 OK\r\nVia: SIP/2.0/WS other.invalid;branch=z9hG4bKx\r\n\r\n"]:
        ua.transport.receive_text(junk)
    probe.send_text(raw_request(ua, "OPTIONS"))  # still alive and answering
    (resp,) = await answers(got)
    assert resp.status == 200
    assert len(hub.messages(source="1001")) == before + 1  # that answer, nothing for the junk


async def test_response_for_someone_else_is_dropped(setup):
    _, ua, _, _ = setup
    text = (
        "SIP/2.0 200 OK\r\nVia: SIP/2.0/WS elsewhere.invalid;branch=z9hG4bKzz\r\n"
        "To: <sip:a@b>;tag=1\r\nFrom: <sip:a@b>;tag=2\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    ua.transport.receive_text(text)  # logged and dropped, nothing raised
    assert ua.state.value == "started"


def test_core_identity_is_random_and_sipjs_shaped():
    a = CoreConfig(aor="sip:1001@example.test")
    b = CoreConfig(aor="sip:1001@example.test")
    assert a.via_host.endswith(".invalid") and a.via_host != b.via_host
    assert a.contact_user != b.contact_user
    assert a.domain == "example.test" and a.user == "1001"
    assert len(random_token(12)) == 12 and random_token().isalnum()


async def test_config_never_shows_password():
    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001", password="hunter2-secret")
    assert "hunter2-secret" not in repr(ua.config)
    assert "hunter2-secret" not in repr(ua.core.config)


SAMPLE = (
    "INVITE sip:u@h.invalid SIP/2.0\r\nVia: SIP/2.0/WS p.invalid;branch=z9hG4bKf\r\n"
    "To: <sip:u@h>\r\nFrom: <sip:p@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n"
    "Contact: <sip:p@p.invalid>\r\nContent-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n"
)


@pytest.mark.parametrize("seed", range(3))
async def test_mangled_frames_never_escape_the_transport(seed):
    """Random cuts, duplications and byte flips of a valid INVITE: never an exception."""
    import random

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001", register=False)
    await ua.start()
    rng = random.Random(seed)

    def mangle(text: str, cuts: list[int]) -> str:
        out = text
        for c in cuts:
            i = c % max(1, len(out))
            op = rng.randrange(4)
            if op == 0:
                out = out[:i] + out[i + 1:]
            elif op == 1:
                out = out[:i] + chr(rng.randrange(0, 0x2FF)) + out[i:]
            elif op == 2:
                out = out[:i] + out[i:i + 20] + out[i:]
            else:
                out = out[:i]
        return out

    seen = []

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.integers(min_value=0, max_value=400), max_size=6))
    def feed(cuts):
        frame = mangle(SAMPLE, cuts)
        ua.transport.receive_text(frame)  # must not raise
        seen.append(frame)

    feed()
    await asyncio.sleep(0.05)  # let any 400/answers go out and any tasks run
    assert seen
    assert ua.state.value == "started"
    await ua.stop()
    assert hub.unparsable == []  # every reply the agent sent (400s included) is valid SIP


async def test_required_extension_we_lack_gets_420(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "OPTIONS", extra="Require: 100rel, outbound\r\n"))
    (resp,) = await answers(got)
    assert resp.status == 420
    assert resp.headers.get("Unsupported") == "100rel"


async def test_same_request_by_a_second_path_is_a_loop(setup):
    _, ua, probe, got = setup
    probe.send_text(raw_request(ua, "MESSAGE", branch="z9hG4bKpath1"))
    probe.send_text(raw_request(ua, "MESSAGE", branch="z9hG4bKpath2"))
    first, second = await answers(got, 2)
    assert sorted([first.status, second.status]) == [200, 482]
