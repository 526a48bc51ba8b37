"""The customer table: lookup order, file formats, and errors that name the entry and the field."""

from __future__ import annotations

import json

import pytest

from softphone.errors import ConfigurationError
from softphone.lab.customers import DEFAULT_BEHAVIOUR, Behaviour, CustomerTable, Outcome, PstnGateway
from softphone.sip.invitation import AnswerMode


def test_defaults_and_builtin_special_numbers():
    table = CustomerTable()
    assert table.lookup("0821234567") == DEFAULT_BEHAVIOUR
    assert DEFAULT_BEHAVIOUR.outcome is Outcome.ANSWER and DEFAULT_BEHAVIOUR.play == "tone:600"
    assert table.lookup("0821110486").final_status == 486
    assert table.lookup("0821110480").outcome is Outcome.NO_ANSWER
    assert table.lookup("0821110603").final_status == 603


def test_exact_numbers_win_over_patterns_and_patterns_keep_file_order(tmp_path):
    (tmp_path / "hold.wav").write_bytes(b"RIFF")
    path = tmp_path / "customers.yaml"
    path.write_text(
        "default: {answer_after: 2, play: 'tone:700'}\n"
        "numbers:\n"
        "  '0821234486': {outcome: answer, hangup_after: 5}\n"
        "  '082*': {outcome: reject, status: 404}\n"
        "  '08*': {play: hold.wav, listen: [1000, 440]}\n"
        "  '0830000000': {play: echo, dtmf: '12#', listen: true}\n")
    table = CustomerTable.load(path)
    exact = table.lookup("0821234486")
    assert exact.outcome is Outcome.ANSWER and exact.hangup_after == 5.0
    assert exact.answer_after == 2.0 and exact.play == "tone:700"  # the file's default underneath
    assert table.lookup("0829999999") == Behaviour(outcome=Outcome.REJECT, status=404, answer_after=2.0,
                                                   play="tone:700")
    assert table.lookup("0840000000").play == str(tmp_path / "hold.wav")
    assert table.lookup("0840000000").listen == (1000.0, 440.0)
    assert table.lookup("0830000000").dtmf == "12#" and table.lookup("0830000000").listen is True
    assert table.lookup("0711110486").final_status == 486  # built-ins stay unless overridden
    assert table.lookup("0711111111").play == "tone:700"


def test_json_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"numbers": {"100": {"outcome": "no-answer", "ring_timeout": 3}}}))
    b = CustomerTable.load(path).lookup("100")
    assert b.outcome is Outcome.NO_ANSWER and b.ring_timeout == 3.0 and b.final_status == 480


@pytest.mark.parametrize(("data", "message"), [
    ({"numbers": {"0821": {"answer_after": -1}}}, r"numbers\['0821'\]\.answer_after: must be a number"),
    ({"numbers": {"0821": {"outcome": "maybe"}}}, r"numbers\['0821'\]\.outcome: must be one of answer"),
    ({"numbers": {"0821": {"status": 200}}}, r"numbers\['0821'\]\.status: must be a SIP final status"),
    ({"numbers": {"0821": {"play": "tone:9"}}}, r"numbers\['0821'\]\.play: tone frequency"),
    ({"numbers": {"0821": {"play": "missing.wav"}}}, r"numbers\['0821'\]\.play: audio file 'missing.wav'"),
    ({"numbers": {"0821": {"dtmf": "12x"}}}, r"numbers\['0821'\]\.dtmf: must be digits"),
    ({"numbers": {"0821": {"listen": [5]}}}, r"numbers\['0821'\]\.listen: must be true/false"),
    ({"numbers": {"0821": {"colour": "red"}}}, r"numbers\['0821'\]: unknown field\(s\) colour"),
    ({"numbers": {"abc": {}}}, r"numbers\['abc'\]: must be digits"),
    ({"default": {"hangup_after": "soon"}}, r"default\.hangup_after: must be a number"),
    ({"numbers": []}, "numbers must be a mapping"),
    ({"customers": {}}, r"unknown key\(s\) customers"),
    ([1, 2], "must be a mapping"),
])
def test_bad_entries_name_the_entry_and_field(tmp_path, data, message):
    path = tmp_path / "customers.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigurationError, match=message):
        CustomerTable.load(path)


def test_unreadable_or_invalid_files(tmp_path):
    with pytest.raises(ConfigurationError, match=r"customers file .*nope\.yaml"):
        CustomerTable.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("numbers: [unclosed\n")
    with pytest.raises(ConfigurationError, match="not valid"):
        CustomerTable.load(bad)


def test_gateway_answer_policies_follow_the_table():
    gateway = PstnGateway(CustomerTable().with_numbers({"555": Behaviour(outcome=Outcome.REJECT, status=403,
                                                                            answer_after=0.5)}))

    class FakeInvitation:
        def __init__(self, user: str) -> None:
            self.request = type("R", (), {"uri": type("U", (), {"user": user})()})()
            self.call_id = f"c-{user}"
            self.remote_hold = False

        def on(self, *_args) -> None:
            return None

    policy = gateway._decide(FakeInvitation("555"))
    assert policy.mode is AnswerMode.REJECT and policy.reject_status == 403 and policy.delay == 0.5
    assert gateway._decide(FakeInvitation("1486")).reject_status == 486
    assert gateway._decide(FakeInvitation("1480")).reject_status == 480
    answer = gateway._decide(FakeInvitation("1234"))
    assert answer.mode is AnswerMode.ANSWER and answer.delay == 1.0
    assert set(gateway.customers) == {"c-555", "c-1486", "c-1480", "c-1234"}
