"""RFC 3261 section 17 state machines, driven directly with scaled timers."""

from __future__ import annotations

import asyncio

import pytest

from softphone.errors import TransactionTimeoutError, TransportError
from softphone.sip.message import make_response, parse_message
from softphone.sip.timers import Timers
from softphone.sip.transaction import (
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    TransactionState,
    TransactionTable,
)

TIMERS = Timers.scaled(0.002)  # timer B/F/H = 64 ms


def request(method="INVITE", branch="z9hG4bKabc1", cseq=1, to_tag=None):
    to = "<sip:1002@example.test>" + (f";tag={to_tag}" if to_tag else "")
    text = (
        f"{method} sip:1002@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/WS client.invalid;branch={branch}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: {to}\r\n"
        "From: <sip:1001@example.test>;tag=fromtag\r\n"
        "Call-ID: call-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Route: <sip:proxy.example.test;lr>\r\n"
        "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text)


class Wire:
    """Records what a transaction sends; can be told to fail."""

    def __init__(self):
        self.sent = []
        self.fail = False

    def send(self, message):
        if self.fail:
            raise TransportError("wire is down")
        self.sent.append(message)


class User:
    def __init__(self):
        self.responses = []
        self.timeouts = []
        self.transport_errors = []

    def receive_response(self, response):
        self.responses.append(response.status)

    def on_transaction_timeout(self, error):
        self.timeouts.append(error)

    def on_transport_error(self, error):
        self.transport_errors.append(error)


async def settle(tx, state, timeout=2.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while tx.state is not state:
        if loop.time() > end:
            raise AssertionError(f"{tx} never reached {state}")
        await asyncio.sleep(0.002)


async def test_invite_client_2xx_accepted_then_terminated_by_timer_m():
    wire, user = Wire(), User()
    req = request()
    tx = InviteClientTransaction(req, wire, TIMERS, user)
    tx.start()
    assert tx.state is TransactionState.CALLING and wire.sent == [req]
    tx.receive_response(make_response(req, 180, to_tag="t1"))
    assert tx.state is TransactionState.PROCEEDING
    tx.receive_response(make_response(req, 200, to_tag="t1"))
    assert tx.state is TransactionState.ACCEPTED
    tx.receive_response(make_response(req, 200, to_tag="t1"))  # retransmission goes to the TU (RFC 6026)
    assert user.responses == [180, 200, 200]
    assert len(wire.sent) == 1  # no ACK from the transaction for 2xx
    await settle(tx, TransactionState.TERMINATED)
    assert user.timeouts == []


async def test_invite_client_non_2xx_is_acked_on_the_same_branch():
    wire, user = Wire(), User()
    req = request()
    tx = InviteClientTransaction(req, wire, TIMERS, user)
    tx.start()
    final = make_response(req, 486, to_tag="busy")
    tx.receive_response(final)
    assert user.responses == [486]
    ack = wire.sent[1]
    assert ack.method == "ACK"
    assert ack.top_via.branch == req.top_via.branch
    assert ack.cseq.seq == 1 and ack.cseq.method == "ACK"
    assert "tag=busy" in ack.headers.get("To")
    assert ack.headers.get_all("Route") == req.headers.get_all("Route")
    assert str(ack.uri) == str(req.uri)
    await settle(tx, TransactionState.TERMINATED)


async def test_invite_client_completed_re_acks_retransmitted_final():
    wire, user = Wire(), User()
    req = request()
    tx = InviteClientTransaction(req, Wire(), Timers.scaled(1.0), user)
    tx.transport = wire
    tx.start()
    tx._stop_timer("D")
    tx.receive_response(make_response(req, 603, to_tag="x"))
    tx._stop_timer("D")
    assert tx.state is TransactionState.COMPLETED
    tx.receive_response(make_response(req, 603, to_tag="x"))
    assert [m.method for m in wire.sent[1:]] == ["ACK", "ACK"]
    assert user.responses == [603]  # the retransmission is absorbed
    tx.terminate()


async def test_invite_client_timer_b():
    wire, user = Wire(), User()
    tx = InviteClientTransaction(request(), wire, TIMERS, user)
    tx.start()
    await settle(tx, TransactionState.TERMINATED)
    assert len(user.timeouts) == 1
    assert isinstance(user.timeouts[0], TransactionTimeoutError)
    assert "timer B" in str(user.timeouts[0])


async def test_invite_client_provisional_stops_timer_b():
    wire, user = Wire(), User()
    req = request()
    tx = InviteClientTransaction(req, wire, TIMERS, user)
    tx.start()
    tx.receive_response(make_response(req, 100))
    await asyncio.sleep(TIMERS.timer_b * 2)
    assert tx.state is TransactionState.PROCEEDING
    assert user.timeouts == []
    tx.terminate()


async def test_client_transport_failure_is_reported_not_raised():
    wire, user = Wire(), User()
    wire.fail = True
    tx = NonInviteClientTransaction(request("OPTIONS"), wire, TIMERS, user)
    tx.start()
    assert tx.state is TransactionState.TERMINATED
    assert len(user.transport_errors) == 1


async def test_non_invite_client_final_and_timer_f():
    wire, user = Wire(), User()
    req = request("REGISTER")
    tx = NonInviteClientTransaction(req, wire, TIMERS, user)
    tx.start()
    assert tx.state is TransactionState.TRYING
    tx.receive_response(make_response(req, 100))
    assert tx.state is TransactionState.PROCEEDING
    tx.receive_response(make_response(req, 200, to_tag="r"))
    tx.receive_response(make_response(req, 200, to_tag="r"))
    assert user.responses == [100, 200]
    await settle(tx, TransactionState.TERMINATED)

    user2 = User()
    tx2 = NonInviteClientTransaction(request("REGISTER", branch="z9hG4bKother"), wire, TIMERS, user2)
    tx2.start()
    await settle(tx2, TransactionState.TERMINATED)
    assert len(user2.timeouts) == 1 and "timer F" in str(user2.timeouts[0])


async def test_invite_server_sends_100_when_tu_is_slow():
    wire = Wire()
    req = request()
    tx = InviteServerTransaction(req, wire, TIMERS)
    assert tx.state is TransactionState.PROCEEDING
    for _ in range(200):
        if wire.sent:
            break
        await asyncio.sleep(0.002)
    assert wire.sent[0].status == 100
    tx.terminate()


async def test_invite_server_fast_tu_suppresses_100():
    wire = Wire()
    req = request()
    tx = InviteServerTransaction(req, wire, Timers.scaled(1.0))
    tx.respond(make_response(req, 180, to_tag="a"))
    assert [m.status for m in wire.sent] == [180]
    tx.terminate()


async def test_invite_server_non_2xx_waits_for_ack():
    wire = Wire()
    req = request()
    tx = InviteServerTransaction(req, wire, Timers.scaled(1.0))
    tx.respond(make_response(req, 486, to_tag="a"))
    assert tx.state is TransactionState.COMPLETED
    tx.receive_request(req)  # INVITE retransmission: the final is resent
    assert [m.status for m in wire.sent] == [486, 486]
    ack = request("ACK", to_tag="a")
    tx.receive_request(ack)
    assert tx.state is TransactionState.CONFIRMED
    await settle(tx, TransactionState.TERMINATED)


async def test_invite_server_timer_h_without_ack():
    wire = Wire()
    req = request()
    tx = InviteServerTransaction(req, wire, TIMERS)
    timed_out = []
    tx.on_ack_timeout = lambda: timed_out.append(True)
    tx.respond(make_response(req, 500, to_tag="a"))
    await settle(tx, TransactionState.TERMINATED)
    assert timed_out == [True]


async def test_invite_server_2xx_accepted_then_timer_l():
    wire = Wire()
    req = request()
    tx = InviteServerTransaction(req, wire, TIMERS)
    ok = make_response(req, 200, to_tag="a")
    tx.respond(ok)
    assert tx.state is TransactionState.ACCEPTED
    tx.respond(ok)  # the core's 2xx retransmission passes through
    tx.receive_request(req)  # INVITE retransmission absorbed
    assert [m.status for m in wire.sent] == [200, 200]
    await settle(tx, TransactionState.TERMINATED)


async def test_non_invite_server_resends_final_for_retransmission():
    wire = Wire()
    req = request("OPTIONS")
    tx = NonInviteServerTransaction(req, wire, Timers.scaled(1.0))
    assert tx.state is TransactionState.TRYING
    tx.receive_request(req)
    assert wire.sent == []  # nothing to resend yet
    tx.respond(make_response(req, 100))
    assert tx.state is TransactionState.PROCEEDING
    tx.respond(make_response(req, 200, to_tag="z"))
    tx._stop_timer("J")
    assert tx.state is TransactionState.COMPLETED
    tx.receive_request(req)
    assert [m.status for m in wire.sent] == [100, 200, 200]
    tx.respond(make_response(req, 500))  # after the final: ignored
    assert len(wire.sent) == 3
    tx.terminate()


async def test_illegal_moves_are_refused():
    tx = NonInviteServerTransaction(request("OPTIONS"), Wire(), TIMERS)
    with pytest.raises(RuntimeError, match="illegal move"):
        tx._move(TransactionState.ACCEPTED)


async def test_table_matching_rules():
    table = TransactionTable()
    wire, user = Wire(), User()
    invite = request(branch="z9hG4bKinv")
    ctx = InviteClientTransaction(invite, wire, Timers.scaled(1.0), user)
    table.add_client(ctx)
    # 17.1.3: branch and CSeq method must both match.
    assert table.match_response(make_response(invite, 180)) is ctx
    cancel = request("CANCEL", branch="z9hG4bKinv")
    assert table.match_response(make_response(cancel, 200)) is None

    stx = InviteServerTransaction(invite, wire, Timers.scaled(1.0))
    table.add_server(stx)
    assert table.match_request(invite) is stx  # retransmission
    assert table.match_request(request("ACK", branch="z9hG4bKinv", to_tag="a")) is stx  # ACK for non-2xx
    assert table.match_request(cancel) is None  # CANCEL is its own transaction
    assert table.find_invite_for_cancel(cancel) is stx
    assert table.match_request(request(branch="z9hG4bKelse")) is None
    stx.terminate()
    assert table.match_request(invite) is None  # removed on termination
    ctx.terminate()
    assert table.client == {}
