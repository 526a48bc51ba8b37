"""INVITE sessions between two user agents over the in-memory hub (scaled timers)."""

from __future__ import annotations

import asyncio

import pytest

from softphone.errors import AuthenticationError, SessionError
from softphone.sip.description_handler import DescriptionOptions
from softphone.sip.invitation import AnswerPolicy, Invitation
from softphone.sip.null_handler import Direction, NullDescriptionHandler, sdp_direction
from softphone.sip.session import DTMF_PLAIN, DTMF_RELAY, SessionState, parse_dtmf_info
from softphone.sip.testing import LoopbackHub, hub_user_agent

USERS = {"1001": "secret-1001", "1002": "secret-1002"}
BOUND = 5.0


async def _next(ua, event: str):
    """Future resolved with the args of the next ``event`` on ``ua``."""
    fut = asyncio.get_running_loop().create_future()

    def handler(*args):
        if not fut.done():
            fut.set_result(args)

    ua.once(event, handler)
    return fut


@pytest.fixture
async def pair():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    await a.start()
    await b.start()
    yield hub, a, b
    await asyncio.wait_for(a.stop(), BOUND)
    await asyncio.wait_for(b.stop(), BOUND)


async def _incoming(b) -> Invitation:
    fut = await _next(b, "invite")
    (invitation,) = await asyncio.wait_for(fut, BOUND)
    return invitation


async def test_call_answered_and_hung_up_by_caller(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = a.invite("1002")
    progress = []
    inviter.on("progress", lambda r: progress.append(r.status))
    await asyncio.wait_for(inviter.invite(), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    assert inviter.state is SessionState.ESTABLISHED
    assert callee.state is SessionState.ESTABLISHED
    assert 180 in progress
    assert inviter.call_id == callee.call_id
    # Offer/answer really happened: both handlers saw the other's SDP.
    assert isinstance(callee.handler, NullDescriptionHandler)
    assert callee.handler.remote_sdp and inviter.handler.remote_sdp
    terminated = await _next(callee, "terminated")
    await asyncio.wait_for(inviter.bye(), BOUND)
    reason, _status = await asyncio.wait_for(terminated, BOUND)
    assert reason == "remote hangup"
    assert inviter.state is SessionState.TERMINATED and inviter.termination_reason == "local hangup"
    assert [m.method for m in hub.messages(source="1001") if getattr(m, "method", None) in
            ("INVITE", "ACK", "BYE")] == ["INVITE", "ACK", "BYE"]
    assert a.sessions == set() and b.sessions == set()


async def test_invite_carries_sipjs_headers(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    await incoming
    invite = hub.messages("INVITE", source="1001")[0]
    contact = invite.headers.get("Contact")
    assert contact.startswith(f"<sip:{a.core.config.contact_user}@") and ";transport=ws;ob>" in contact
    assert invite.headers.get("Supported") == "outbound"
    assert invite.headers.get("User-Agent").startswith("softphone/")
    assert invite.top_via.branch.startswith("z9hG4bK") and invite.top_via.host.endswith(".invalid")
    assert invite.content_type == "application/sdp"
    await inviter.bye()


async def test_callee_hangs_up(pair):
    _, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    ended = await _next(inviter, "terminated")
    await callee.bye()
    assert (await asyncio.wait_for(ended, BOUND))[0] == "remote hangup"


async def test_reject_with_code():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.reject(486))
    async with a, b:
        inviter = a.invite("1002")
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(inviter.invite(), BOUND)
        assert info.value.status_code == 486
        assert inviter.state is SessionState.TERMINATED
        assert inviter.termination_status == 486
        # The INVITE client transaction ACKed the 486 itself, on the INVITE's branch.
        acks = hub.messages("ACK", source="1001")
        assert len(acks) == 1
        assert acks[0].top_via.branch == hub.messages("INVITE", source="1001")[0].top_via.branch


async def test_answer_after_delay_and_custom_policy():
    hub = LoopbackHub(users=dict(USERS))
    decided = []

    async def decide(invitation):
        decided.append(invitation.remote_identity)
        return AnswerPolicy.answer(delay=0.05)

    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy(decide=decide))
    async with a, b:
        inviter = await asyncio.wait_for(a.call("1002"), BOUND)
        assert inviter.state is SessionState.ESTABLISHED
        assert decided and "1001" in decided[0]
        await inviter.bye()


async def test_cancel_before_answer():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = a.invite("1002")
        ringing = await _next(inviter, "progress")
        call = asyncio.ensure_future(inviter.invite())
        await asyncio.wait_for(ringing, BOUND)
        callee = await incoming
        callee_end = await _next(callee, "terminated")
        await inviter.cancel()
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(call, BOUND)
        assert info.value.status_code == 487
        assert inviter.termination_reason == "cancelled"
        assert await asyncio.wait_for(callee_end, BOUND) == ("cancelled", 487)
        assert hub.messages("CANCEL", source="1001")
        cancel = hub.messages("CANCEL", source="1001")[0]
        invite = hub.messages("INVITE", source="1001")[-1]
        assert cancel.top_via.branch == invite.top_via.branch
        assert cancel.cseq.seq == invite.cseq.seq


async def test_cancel_requested_before_any_provisional_waits_for_it():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy(AnswerPolicy.manual().mode, ring=False))
    async with a, b:
        hold_provisionals = []

        def swallow_100(msg, src):
            # Hold back the callee's 100 Trying so the caller has seen nothing yet.
            if getattr(msg, "status", None) == 100 and not hold_provisionals:
                hold_provisionals.append((msg, src))
                return True
            return False

        hub.interceptors.append(swallow_100)
        inviter = a.invite("1002")
        call = asyncio.ensure_future(inviter.invite())
        for _ in range(50):
            if hold_provisionals:
                break
            await asyncio.sleep(0.01)
        await inviter.cancel()
        assert not hub.messages("CANCEL")  # RFC 3261 9.1: not before a provisional
        msg, _src = hold_provisionals[0]
        hub.interceptors.clear()
        hub._route_response(msg)
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(call, BOUND)
        assert info.value.status_code == 487
        assert hub.messages("CANCEL")


async def test_remote_hold_and_unhold(pair):
    _, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    held = await _next(callee, "hold")
    await asyncio.wait_for(inviter.hold(), BOUND)
    assert await asyncio.wait_for(held, BOUND) == ("sendonly",)
    assert callee.remote_hold
    assert inviter.handler.local_direction is Direction.SENDONLY
    assert callee.handler.local_direction is Direction.RECVONLY
    assert sdp_direction(callee.handler.remote_sdp) is Direction.SENDONLY
    unheld = await _next(callee, "unhold")
    await asyncio.wait_for(inviter.unhold(), BOUND)
    assert await asyncio.wait_for(unheld, BOUND) == ("sendrecv",)
    assert callee.handler.local_direction is Direction.SENDRECV
    assert inviter.state is SessionState.ESTABLISHED and callee.state is SessionState.ESTABLISHED
    await inviter.bye()


async def test_callee_can_hold_too(pair):
    _, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    held = await _next(inviter, "hold")
    await asyncio.wait_for(callee.hold(), BOUND)
    await asyncio.wait_for(held, BOUND)
    assert inviter.remote_hold
    await inviter.bye()


async def test_reinvite_glare_resolves(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    results = await asyncio.wait_for(
        asyncio.gather(inviter.hold(), callee.hold(), return_exceptions=True), BOUND)
    assert all(not isinstance(r, Exception) for r in results), results
    assert any(getattr(m, "status", None) == 491 for _, m in hub.log)
    assert inviter.state is SessionState.ESTABLISHED and callee.state is SessionState.ESTABLISHED
    await inviter.bye()


async def test_info_dtmf_both_bodies_and_both_ways(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    got = []
    callee.on("dtmf", lambda ev: got.append((ev.digit, ev.duration_ms, ev.via)))
    assert await asyncio.wait_for(inviter.send_dtmf("5#", duration_ms=10, gap_ms=5), BOUND) == "info"
    assert await asyncio.wait_for(
        inviter.send_dtmf("A", duration_ms=10, method="info", info_content_type=DTMF_PLAIN), BOUND) == "info"
    for _ in range(50):
        if len(got) == 3:
            break
        await asyncio.sleep(0.01)
    assert got == [("5", 10, "info"), ("#", 10, "info"), ("A", 100, "info")]
    infos = hub.messages("INFO", source="1001")
    assert infos[0].content_type == DTMF_RELAY and infos[0].body == "Signal=5\r\nDuration=10"
    assert infos[2].content_type == DTMF_PLAIN and infos[2].body == "A"
    back = []
    inviter.on("dtmf", lambda ev: back.append((ev.digit, ev.duration_ms, ev.via)))
    await asyncio.wait_for(callee.send_dtmf("7", duration_ms=20), BOUND)
    for _ in range(50):
        if back:
            break
        await asyncio.sleep(0.01)
    assert back == [("7", 20, "info")]
    with pytest.raises(SessionError):
        await inviter.send_dtmf("5", method="rtp")
    with pytest.raises(SessionError):
        await inviter.send_dtmf("x")
    await inviter.bye()


def test_parse_dtmf_info_bodies():
    assert parse_dtmf_info(DTMF_RELAY, "Signal=5\r\nDuration=160\r\n") == ("5", 160)
    assert parse_dtmf_info(DTMF_RELAY, "Signal=11\r\n") == ("#", None)
    assert parse_dtmf_info(DTMF_PLAIN, " * ") == ("*", None)
    with pytest.raises(SessionError):
        parse_dtmf_info(DTMF_RELAY, "Duration=100")
    with pytest.raises(SessionError):
        parse_dtmf_info(DTMF_PLAIN, "55")


async def test_bad_info_dtmf_body_gets_400(pair):
    _hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    response = await asyncio.wait_for(inviter.send_info(DTMF_RELAY, "Signal=Z"), BOUND)
    assert response.status == 400
    await inviter.bye()


async def test_invite_without_sdp_answer_comes_in_ack(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = a.invite("1002")
    inviter.send_offer = False
    await asyncio.wait_for(inviter.invite(), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    invite = hub.messages("INVITE", source="1001")[-1]
    assert not invite.body
    ack = hub.messages("ACK", source="1001")[-1]
    assert ack.body.startswith("v=0")
    assert callee.handler.remote_sdp == ack.body
    await inviter.bye()


async def test_early_media_183_applied():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = a.invite("1002")
        statuses = []
        inviter.on("progress", lambda r: statuses.append(r.status))
        call = asyncio.ensure_future(inviter.invite())
        callee = await incoming
        await callee.send_early_media()
        for _ in range(50):
            if 183 in statuses and inviter.handler.remote_sdp:
                break
            await asyncio.sleep(0.01)
        assert 183 in statuses
        assert inviter.handler.remote_sdp  # applied before the 200
        await callee.accept()
        await asyncio.wait_for(call, BOUND)
        assert inviter.state is SessionState.ESTABLISHED
        await inviter.bye()


async def test_invite_proxy_auth_challenge():
    hub = LoopbackHub(users=dict(USERS), auth_invites=True)
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        inviter = await asyncio.wait_for(a.call("1002"), BOUND)
        invites = hub.messages("INVITE", source="1001")
        assert len(invites) == 2
        assert "Proxy-Authorization" in invites[1].headers
        assert invites[1].cseq.seq == invites[0].cseq.seq + 1
        assert invites[1].call_id == invites[0].call_id
        assert invites[1].top_via.branch != invites[0].top_via.branch
        await inviter.bye()


async def test_invite_wrong_password_fails_without_loop():
    hub = LoopbackHub(users=dict(USERS), auth_invites=True)
    a = hub_user_agent(hub, "1001", register=False, password="wrong-pass")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        inviter = a.invite("1002")
        with pytest.raises(AuthenticationError):
            await asyncio.wait_for(inviter.invite(), BOUND)
        assert len(hub.messages("INVITE", source="1001")) == 2
        assert inviter.state is SessionState.TERMINATED


async def test_2xx_retransmitted_until_ack():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        dropped = []

        def drop_first_ack(msg, src):
            if getattr(msg, "method", None) == "ACK" and not dropped:
                dropped.append(msg)
                return True
            return False

        hub.interceptors.append(drop_first_ack)
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = await asyncio.wait_for(a.call("1002"), BOUND)
        callee = await incoming
        await callee.wait_established(BOUND)
        oks = [m for m in hub.messages("200", source="1002") if m.cseq.method == "INVITE"]
        assert len(oks) >= 2  # the first 200 was retransmitted because its ACK was lost
        assert len(hub.messages("ACK", source="1001")) >= 2  # and the caller ACKed again
        await inviter.bye()


async def test_no_ack_ends_call_with_bye():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        hub.interceptors.append(lambda msg, src: getattr(msg, "method", None) == "ACK")
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = await asyncio.wait_for(a.call("1002"), BOUND)
        callee = await incoming
        await asyncio.wait_for(callee.wait_terminated(BOUND), BOUND)
        assert callee.termination_reason == "no ACK"
        assert hub.messages("BYE", source="1002")
        await asyncio.wait_for(inviter.wait_terminated(BOUND), BOUND)
        assert inviter.termination_reason == "remote hangup"


async def test_bye_for_unknown_dialog_gets_481(pair):
    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    b.core.remove_dialog(callee)  # b forgets the call
    with pytest.raises(SessionError) as info:
        await asyncio.wait_for(inviter.reinvite(), BOUND)
    assert info.value.status_code == 481
    assert any(getattr(m, "status", None) == 481 for m in hub.messages(source="1002"))
    # RFC 3261 12.2.1.2: a 481 to an in-dialog request ends the dialog.
    await asyncio.wait_for(inviter.wait_terminated(BOUND), BOUND)
    assert inviter.termination_status == 481


async def test_stop_hangs_up_live_calls():
    hub = LoopbackHub(users=dict(USERS))
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with b:
        async with a:
            incoming = asyncio.ensure_future(_incoming(b))
            inviter = await asyncio.wait_for(a.call("1002"), BOUND)
            callee = await incoming
            await callee.wait_established(BOUND)
        assert inviter.state is SessionState.TERMINATED
        await asyncio.wait_for(callee.wait_terminated(BOUND), BOUND)
        assert "1001" not in hub.bindings


async def test_null_handler_follows_offer_answer_directions():
    from softphone.sip.description_handler import Body, DescriptionOptions

    caller, callee = NullDescriptionHandler(), NullDescriptionHandler()
    offer = await caller.get_description(DescriptionOptions(hold=True))
    assert sdp_direction(offer.content) is Direction.SENDONLY
    await callee.set_description(offer)
    answer = await callee.get_description()
    assert sdp_direction(answer.content) is Direction.RECVONLY
    await caller.set_description(answer)
    # Both hold: the answer to a sendonly offer from a holding callee is inactive.
    offer2 = await caller.get_description(DescriptionOptions(hold=True))
    await callee.set_description(offer2)
    answer2 = await callee.get_description(DescriptionOptions(hold=True))
    assert sdp_direction(answer2.content) is Direction.INACTIVE
    # The o= version increases with every description (RFC 3264 section 8).
    versions = [int(b.content.split("\r\n")[1].split()[2]) for b in (offer, offer2)]
    assert versions[1] > versions[0]
    assert await caller.send_dtmf("1") is False
    with pytest.raises(SessionError):
        await callee.set_description(Body("application/sdp", "not sdp"))
    with pytest.raises(SessionError):
        await callee.set_description(Body("text/plain", "v=0"))
    await caller.close()
    with pytest.raises(SessionError):
        await caller.get_description()


def test_timers_are_derived_and_scalable():
    from softphone.sip.timers import Timers

    t = Timers()
    assert (t.t1, t.t2, t.t4) == (0.5, 4.0, 5.0)
    assert t.timer_b == t.timer_f == t.timer_h == t.timer_l == t.timer_m == 32.0
    assert t.timer_d == t.timer_i == t.timer_j == t.timer_k == 0.0  # reliable transport
    fast = Timers.scaled(0.01)
    assert fast.t1 == pytest.approx(0.005) and fast.timer_b == pytest.approx(0.32)
    assert fast.glare_owner[1] == pytest.approx(0.04)
    with pytest.raises(ValueError):
        Timers.scaled(0)


async def test_invite_while_disconnected_fails_with_503_at_once():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001", register=False)
    async with a:
        a.transport.drop("cable cut")
        inviter = a.invite("1002")
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(inviter.invite(), BOUND)
        assert info.value.status_code == 503
        assert "not connected" in str(info.value)
        assert inviter.state is SessionState.TERMINATED


async def test_invite_timer_b_when_nobody_answers():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001", register=False, scale=0.002)
    async with a:
        hub.interceptors.append(lambda msg, src: getattr(msg, "method", None) == "INVITE")
        inviter = a.invite("1002")
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(inviter.invite(), BOUND)
        assert info.value.status_code == 408
        assert "timer B" in str(info.value)


async def test_no_answer_timeout_cancels():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = a.invite("1002", no_answer_timeout=0.05)
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(inviter.invite(), BOUND)
        assert info.value.status_code == 487
        assert inviter.termination_reason == "cancelled"
        callee = await incoming
        await asyncio.wait_for(callee.wait_terminated(BOUND), BOUND)


async def test_answer_crossing_cancel_is_acked_and_hung_up():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = a.invite("1002")
        ringing = await _next(inviter, "progress")
        call = asyncio.ensure_future(inviter.invite())
        await asyncio.wait_for(ringing, BOUND)
        callee = await incoming
        held = []
        hub.interceptors.append(
            lambda msg, src: getattr(msg, "method", None) == "CANCEL" and not held.append((msg, src)))
        await inviter.cancel()
        await asyncio.sleep(0.02)
        assert held  # the CANCEL is delayed in the network...
        accepting = asyncio.ensure_future(callee.accept())
        await asyncio.sleep(0.01)
        hub.interceptors.clear()
        hub._route_request(held[0][1], held[0][0])  # ...and arrives after the 200
        await accepting
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(call, BOUND)
        assert info.value.status_code == 487 and "crossed" in str(info.value)
        await asyncio.wait_for(callee.wait_terminated(BOUND), BOUND)
        assert callee.termination_reason == "remote hangup"
        assert hub.messages("ACK", source="1001") and hub.messages("BYE", source="1001")
        cancel_ok = [m for m in hub.messages("200", source="1002") if m.cseq.method == "CANCEL"]
        assert len(cancel_ok) == 1  # RFC 3261 9.2: 200 to the CANCEL, which had no effect
        assert not [m for m in hub.messages("487", source="1002")]


async def test_second_fork_answer_is_acked_and_released(pair):
    from softphone.sip.message import make_response

    hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    await incoming
    fork = make_response(inviter.request, 200, to_tag="forktwo",
                         headers=[("Contact", "<sip:fork@fork.invalid;transport=ws>")],
                         body=inviter.handler.remote_sdp)
    a.transport.receive_text(fork.encode().decode())
    for _ in range(100):
        if hub.messages("BYE", source="1001"):
            break
        await asyncio.sleep(0.005)
    bye = hub.messages("BYE", source="1001")[0]
    assert "tag=forktwo" in bye.headers.get("To")
    assert any("tag=forktwo" in m.headers.get("To") for m in hub.messages("ACK", source="1001"))
    assert inviter.state is SessionState.ESTABLISHED  # the first answer is the call
    # A retransmission of the real 200 is simply ACKed again.
    acks_before = len(hub.messages("ACK", source="1001"))
    ok = next(m for m in hub.messages("200", source="1002") if m.cseq.method == "INVITE")
    vias = ok.headers.get_all("Via")
    ok.headers.remove("Via")  # the hub's own Via: as the proxy would have removed it
    for via in vias[1:]:
        ok.headers.add("Via", via)
    a.transport.receive_text(ok.encode().decode())
    for _ in range(100):
        if len(hub.messages("ACK", source="1001")) > acks_before:
            break
        await asyncio.sleep(0.005)
    assert len(hub.messages("ACK", source="1001")) == acks_before + 1
    await inviter.hangup()
    assert inviter.state is SessionState.TERMINATED


async def test_hangup_while_ringing_cancels():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        inviter = a.invite("1002")
        ringing = await _next(inviter, "progress")
        call = asyncio.ensure_future(inviter.invite())
        await asyncio.wait_for(ringing, BOUND)
        await inviter.hangup()
        with pytest.raises(SessionError):
            await asyncio.wait_for(call, BOUND)
        assert inviter.termination_status == 487


async def test_invitation_api_guards():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002", answer_policy=AnswerPolicy.manual())
    async with a, b:
        incoming = asyncio.ensure_future(_incoming(b))
        inviter = a.invite("1002")
        call = asyncio.ensure_future(inviter.invite())
        callee = await incoming
        with pytest.raises(SessionError):
            callee.progress(200)
        with pytest.raises(SessionError):
            await callee.reject(200)
        with pytest.raises(SessionError):
            AnswerPolicy.reject(180)
        with pytest.raises(SessionError):
            await callee.bye()  # not established yet
        await callee.reject(603, "Decline")
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(call, BOUND)
        assert info.value.status_code == 603
        with pytest.raises(SessionError):
            await callee.accept()  # already rejected
        with pytest.raises(SessionError):
            await inviter.invite()  # only once


async def test_unsupported_offer_type_is_415():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        def as_text(msg, src):
            if getattr(msg, "method", None) == "INVITE":
                msg.headers.set("Content-Type", "text/plain")
                hub._route_request(src, msg)
                return True
            return False

        hub.interceptors.append(as_text)
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(a.call("1002"), BOUND)
        assert info.value.status_code == 415


async def test_many_concurrent_calls_do_not_interfere():
    hub = LoopbackHub()
    callers = [hub_user_agent(hub, f"2{i:03d}") for i in range(10)]
    callees = [hub_user_agent(hub, f"3{i:03d}") for i in range(10)]
    agents = callers + callees
    await asyncio.wait_for(asyncio.gather(*(ua.start() for ua in agents)), BOUND)
    try:
        got = {ua.aor: [] for ua in callees}
        for ua in callees:
            ua.on("invite", lambda inv, _ua=ua: inv.on("dtmf", lambda ev, _ua=_ua: got[_ua.aor].append(ev.digit)))
        calls = await asyncio.wait_for(
            asyncio.gather(*(a.call(f"3{i:03d}") for i, a in enumerate(callers))), BOUND)
        assert len({c.call_id for c in calls}) == 10
        await asyncio.wait_for(asyncio.gather(
            *(c.send_dtmf(str(i), duration_ms=5, method="info") for i, c in enumerate(calls))), BOUND)
        for _ in range(100):
            if all(got.values()):
                break
            await asyncio.sleep(0.01)
        assert [got[ua.aor] for ua in callees] == [[str(i)] for i in range(10)]
        await asyncio.wait_for(asyncio.gather(*(c.bye() for c in calls)), BOUND)
        for ua in callees:
            for _ in range(100):
                if not ua.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not ua.sessions
    finally:
        await asyncio.wait_for(asyncio.gather(*(ua.stop() for ua in agents)), BOUND)


async def test_target_forms(pair):
    _, a, _ = pair
    assert a.target_uri("1002") == "sip:1002@example.test"
    assert a.target_uri("1002@other.test") == "sip:1002@other.test"
    assert a.target_uri("sip:x@y.test") == "sip:x@y.test"


async def test_unusable_offer_is_answered_488_not_left_ringing():
    hub = LoopbackHub()
    a = hub_user_agent(hub, "1001")
    b = hub_user_agent(hub, "1002")
    async with a, b:
        def no_media(msg, src):
            if getattr(msg, "method", None) == "INVITE" and msg.body:
                msg.body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"  # no m= line
                msg.headers.set("Content-Length", str(len(msg.body)))
                hub._route_request(src, msg)
                return True
            return False

        hub.interceptors.append(no_media)
        with pytest.raises(SessionError) as info:
            await asyncio.wait_for(a.call("1002"), BOUND)
        assert info.value.status_code == 488


CHROMIUM_OFFER = "\r\n".join([
    "v=0", "o=- 4611731400430051336 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "a=extmap-allow-mixed", "a=msid-semantic: WMS stream",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126", "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:1 1 udp 2122260223 192.0.2.10 50000 typ host generation 0",
    "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx", "a=ice-options:trickle",
    "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF",
    "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux", "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1", "a=rtpmap:63 red/48000/2",
    "a=rtpmap:9 G722/8000", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000", "a=rtpmap:126 telephone-event/8000", "",
])


async def test_answers_a_sipjs_shaped_call():
    """What the Webphone's stack (SIP.js 0.15.11, peers.md) sends, message by message."""
    from softphone.sip.message import parse_message

    hub = LoopbackHub()
    ua = hub_user_agent(hub, "1001")
    webphone = hub.transport("webphone")
    await webphone.connect()
    got = []
    webphone.on("message", got.append)
    async with ua:
        cfg = ua.core.config
        target = f"sip:{cfg.contact_user}@{cfg.via_host};transport=ws"
        common = (
            "Via: SIP/2.0/WS 192.0.2.244;branch=z9hG4bK{branch}\r\n"
            "To: <sip:1001@example.test>{to_tag}\r\n"
            'From: "Agent" <sip:1007@example.test>;tag=4hs3cp7nqa\r\n'
            "CSeq: {cseq}\r\n"
            "Call-ID: 6s70l43qj5v50gula5jek1\r\n"
            "Max-Forwards: 70\r\n"
        )
        invite = (
            f"INVITE {target} SIP/2.0\r\n"
            + common.format(branch="7137265", to_tag="", cseq="6145 INVITE")
            + "Contact: <sip:f72ht0ja@192.0.2.244;transport=ws;ob>\r\n"
            "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER\r\n"
            "Supported: outbound\r\nUser-Agent: SIP.js/0.15.11\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(CHROMIUM_OFFER)}\r\n\r\n{CHROMIUM_OFFER}"
        )
        hub._hosts["192.0.2.244"] = webphone
        webphone.send_text(invite)
        for _ in range(200):
            if any(getattr(m, "status", 0) == 200 for m in got):
                break
            await asyncio.sleep(0.005)
        statuses = [m.status for m in got]
        assert statuses[:3] == [100, 180, 200]
        ok = got[2]
        assert ok.body.startswith("v=0") and ok.content_type == "application/sdp"
        to_tag = ok.to.tag
        assert to_tag and ok.contact and ok.headers.get("Allow")
        in_dialog = common.replace("{to_tag}", f";tag={to_tag}")
        ack = (f"ACK {ok.contact[0].uri} SIP/2.0\r\n"
               + in_dialog.format(branch="8888888", cseq="6145 ACK") + "Content-Length: 0\r\n\r\n")
        webphone.send_text(ack)
        dtmf = []
        session = next(iter(ua.sessions))
        session.on("dtmf", lambda ev: dtmf.append((ev.digit, ev.duration_ms, ev.via)))
        await session.wait_established(BOUND)
        body = "Signal=4\r\nDuration=100\r\n"
        info = (f"INFO {ok.contact[0].uri} SIP/2.0\r\n"
                + in_dialog.format(branch="9999999", cseq="6146 INFO")
                + f"Content-Type: application/dtmf-relay\r\nContent-Length: {len(body)}\r\n\r\n{body}")
        webphone.send_text(info)
        bye = (f"BYE {ok.contact[0].uri} SIP/2.0\r\n"
               + in_dialog.format(branch="1010101", cseq="6147 BYE") + "Content-Length: 0\r\n\r\n")
        webphone.send_text(bye)
        await asyncio.wait_for(session.wait_terminated(BOUND), BOUND)
        final = [(m.cseq.method, m.status) for m in got[3:]]
        assert final == [("INFO", 200), ("BYE", 200)]
        assert dtmf == [("4", 100, "info")]
        assert session.termination_reason == "remote hangup"
        assert parse_message(invite).headers.get("User-Agent") == "SIP.js/0.15.11"


async def test_null_handler_answer_mirrors_a_webrtc_offer():
    from softphone.sip.description_handler import Body

    handler = NullDescriptionHandler()
    await handler.set_description(Body("application/sdp", CHROMIUM_OFFER))
    answer = (await handler.get_description()).content
    m_line = next(line for line in answer.split("\r\n") if line.startswith("m=audio"))
    assert m_line.split()[2:] == ["UDP/TLS/RTP/SAVPF", "0", "8", "126"]
    assert "a=mid:0" in answer and "a=setup:active" in answer and "a=fingerprint:sha-256 " in answer
    assert "a=rtpmap:126 telephone-event/8000" in answer
    only_opus = CHROMIUM_OFFER.replace("111 63 9 0 8 13 110 126", "111")
    fresh = NullDescriptionHandler()
    await fresh.set_description(Body("application/sdp", only_opus))
    with pytest.raises(SessionError, match="PCMU or PCMA"):
        await fresh.get_description()


async def test_offerless_reinvite_gets_our_offer_and_the_answer_in_ack(pair):
    from softphone.sip.description_handler import Body

    _hub, a, b = pair
    incoming = asyncio.ensure_future(_incoming(b))
    inviter = await asyncio.wait_for(a.call("1002"), BOUND)
    callee = await incoming
    await callee.wait_established(BOUND)
    reinvites = []
    inviter.on("reinvite", reinvites.append)
    held = await _next(inviter, "hold")
    # The callee sends a re-INVITE without SDP, by hand.
    dialog = callee.dialog
    request = dialog.create_request("INVITE")
    response = await asyncio.wait_for(b.core.request(request, next_cseq=dialog.next_cseq).response(), BOUND)
    assert response.status == 200 and response.body.startswith("v=0")  # our offer
    handler = NullDescriptionHandler()
    await handler.set_description(Body("application/sdp", response.body))
    answer = await handler.get_description(DescriptionOptions(hold=True))  # the callee answers "on hold"
    b.core.send_ack(dialog.create_ack(response.cseq.seq, answer.content, answer.content_type))
    assert await asyncio.wait_for(held, BOUND) == ("sendonly",)
    assert reinvites and inviter.handler.remote_sdp == answer.content
    assert inviter.state is SessionState.ESTABLISHED
    await inviter.bye()
