"""RFC 3261 section 12 dialogs: creation, route sets, in-dialog requests, ordering."""

from __future__ import annotations

import pytest

from softphone.errors import SipError
from softphone.sip.dialog import Dialog, DialogState
from softphone.sip.message import make_response, parse_message

INVITE = (
    "INVITE sip:1002@example.test SIP/2.0\r\n"
    "Via: SIP/2.0/WS a.invalid;branch=z9hG4bK1\r\n"
    "Record-Route: <sip:p2.example.test;lr>\r\n"
    "Record-Route: <sip:p1.example.test;lr>\r\n"
    "Max-Forwards: 70\r\n"
    "To: <sip:1002@example.test>\r\n"
    'From: "Alice" <sip:1001@example.test>;tag=alice\r\n'
    "Call-ID: dlg-1\r\n"
    "CSeq: 10 INVITE\r\n"
    "Contact: <sip:alice@a.invalid;transport=ws;ob>\r\n"
    "Content-Length: 0\r\n\r\n"
)


def invite():
    return parse_message(INVITE)


def answer(status=200, tag="bob", contact="<sip:bob@b.invalid;transport=ws>", rr=True):
    req = invite()
    resp = make_response(req, status, to_tag=tag, headers=[("Contact", contact)] if contact else None)
    if not rr:
        resp.headers.remove("Record-Route")
    elif "Record-Route" not in resp.headers:
        for value in req.headers.get_all("Record-Route"):
            resp.headers.add("Record-Route", value)
    return resp


def test_uac_dialog_from_2xx_reverses_route_set():
    d = Dialog.uac(invite(), answer())
    assert d.state is DialogState.CONFIRMED
    assert d.id == ("dlg-1", "alice", "bob")
    assert d.route_set == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert str(d.remote_target) == "sip:bob@b.invalid;transport=ws"
    assert d.local_seq == 10 and d.remote_seq is None


def test_uac_early_dialog_from_tagged_1xx_then_confirmed():
    d = Dialog.uac(invite(), answer(180))
    assert d.state is DialogState.EARLY and d.early
    d.receive_response(answer(200, contact="<sip:bob@new.invalid>"), "INVITE")
    assert d.state is DialogState.CONFIRMED
    assert d.remote_target.host == "new.invalid"


def test_untagged_response_cannot_form_a_dialog():
    req = invite()
    with pytest.raises(SipError, match="no To tag"):
        Dialog.uac(req, make_response(req, 180))
    with pytest.raises(SipError, match="Contact"):
        Dialog.uac(req, answer(200, contact=None))


def test_in_dialog_request_uses_loose_routing_and_next_cseq():
    d = Dialog.uac(invite(), answer())
    bye = d.create_request("BYE")
    assert bye.method == "BYE"
    assert str(bye.uri) == "sip:bob@b.invalid;transport=ws"
    assert bye.headers.get_all("Route") == ["<sip:p1.example.test;lr>", "<sip:p2.example.test;lr>"]
    assert bye.cseq.seq == 11 and bye.cseq.method == "BYE"
    assert "tag=alice" in bye.headers.get("From") and "tag=bob" in bye.headers.get("To")
    assert bye.call_id == "dlg-1"
    assert "Contact" not in bye.headers
    reinvite = d.create_request("INVITE", body="v=0\r\n", content_type="application/sdp")
    assert reinvite.cseq.seq == 12
    assert reinvite.headers.get("Contact") == "<sip:alice@a.invalid;transport=ws;ob>"
    ack = d.create_ack(12)
    assert ack.cseq.seq == 12 and ack.cseq.method == "ACK"
    assert d.local_seq == 12  # ACK does not consume a CSeq


def test_strict_router_goes_into_request_uri():
    resp = answer(rr=False)
    resp.headers.add("Record-Route", "<sip:strict.example.test>")
    d = Dialog.uac(invite(), resp)
    bye = d.create_request("BYE")
    assert str(bye.uri) == "sip:strict.example.test"
    assert bye.headers.get_all("Route") == ["<sip:bob@b.invalid;transport=ws>"]


def test_uas_dialog_keeps_route_order_and_checks_cseq():
    req = invite()
    d = Dialog.uas(req, "bob", "<sip:bob@b.invalid;transport=ws>")
    assert d.id == ("dlg-1", "bob", "alice")
    assert d.state is DialogState.EARLY
    assert d.route_set == ["<sip:p2.example.test;lr>", "<sip:p1.example.test;lr>"]
    assert d.remote_seq == 10 and d.local_seq is None
    d.confirm()
    bye = d.create_request("BYE")
    assert bye.headers.get_all("Route")[0] == "<sip:p2.example.test;lr>"
    assert "tag=bob" in bye.headers.get("From") and "tag=alice" in bye.headers.get("To")
    # Our first request picks its own CSeq; the next one follows it.
    assert d.create_request("INFO").cseq.seq == bye.cseq.seq + 1


def _in_dialog(method, cseq, contact=None):
    text = (
        f"{method} sip:bob@b.invalid SIP/2.0\r\n"
        "Via: SIP/2.0/WS a.invalid;branch=z9hG4bK9\r\n"
        "To: <sip:1002@example.test>;tag=bob\r\n"
        "From: <sip:1001@example.test>;tag=alice\r\n"
        "Call-ID: dlg-1\r\n"
        f"CSeq: {cseq} {method}\r\n"
        + (f"Contact: {contact}\r\n" if contact else "")
        + "Content-Length: 0\r\n\r\n"
    )
    return parse_message(text)


def test_incoming_order_and_target_refresh():
    d = Dialog.uas(invite(), "bob", "<sip:bob@b.invalid>", confirmed=True)
    assert Dialog.id_of_incoming(_in_dialog("INFO", 11)) == d.id
    assert d.receive_request(_in_dialog("INFO", 11))
    assert not d.receive_request(_in_dialog("INFO", 11))  # not above: 500
    assert not d.receive_request(_in_dialog("INFO", 5))
    assert d.receive_request(_in_dialog("ACK", 10))  # ACK is not ordered
    assert d.receive_request(_in_dialog("INVITE", 12, "<sip:alice@moved.invalid>"))
    assert d.remote_target.host == "moved.invalid"
    assert d.receive_request(_in_dialog("INFO", 13, "<sip:alice@ignored.invalid>"))
    assert d.remote_target.host == "moved.invalid"  # INFO is not a target refresh


def test_terminated_dialog_refuses_new_requests():
    d = Dialog.uac(invite(), answer())
    d.terminate()
    with pytest.raises(SipError, match="terminated"):
        d.create_request("INFO")
    with pytest.raises(SipError):
        d.confirm()
    assert Dialog.id_of_incoming(invite()) is None  # no To tag: not in a dialog
