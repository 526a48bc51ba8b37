"""Typed results: what a malformed answer turns into (an error naming the field)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.errors import LeadRequestError, PlatformServerError, PlatformValidationError
from softphone.lab.archive import Direction, validate_request
from softphone.platform.client import PlatformClient
from softphone.platform.models import (
    ActionResult,
    ArchiveResult,
    Call,
    CallState,
    CampaignState,
    CampaignStatus,
    Extension,
    RecordingResult,
    Token,
)


def test_token_parses_offsets_z_and_naive_times():
    t = Token.from_json({"user_id": "1001", "user_name": "a", "token_key": "k-123456",
                         "expiry_date": "2030-01-01T10:00:00+02:00"})
    assert t.user_id == 1001 and t.expiry_date == dt.datetime(2030, 1, 1, 8, tzinfo=dt.timezone.utc)
    assert Token.from_json({"user_id": 1, "token_key": "k-123456", "expiry_date": "2030-01-01T00:00:00Z"}) \
        .expiry_date.utcoffset() == dt.timedelta(0)
    naive = Token.from_json({"user_id": 1, "token_key": "k-123456", "expiry_date": "2030-01-01 00:00:00"})
    assert naive.expiry_date.tzinfo is not None  # naive platform times are UTC
    assert Token.from_json({"user_id": 1, "token_key": "k-123456"}).expiry_date is None
    assert "k-123456" not in repr(t)


@pytest.mark.parametrize(
    ("data", "field"),
    [({"user_id": 1}, "token_key"),
     ({"user_id": 1, "token_key": ""}, "token_key"),
     ({"token_key": "k-1234"}, "user_id"),
     ({"user_id": 1, "token_key": "k-1234", "expiry_date": "tomorrow"}, "expiry_date"),
     ({"user_id": 1, "token_key": "k-1234", "expiry_date": 5}, "expiry_date")],
)
def test_token_errors_name_the_field(data, field):
    with pytest.raises(PlatformServerError, match=field):
        Token.from_json(data)


def test_call_state_and_unknown_values():
    c = Call.from_json({"call_id": "12", "phone_number": 555, "call_state": "connected",
                        "call_start_time": None})
    assert c.call_id == 12 and c.phone_number == "555" and c.state is CallState.CONNECTED and c.is_answered
    odd = Call.from_json({"call_id": 1, "phone_number": "5", "call_state": "queued"})
    assert odd.state is None and odd.call_state == "queued" and not odd.is_answered
    with pytest.raises(PlatformServerError, match="call_id"):
        Call.from_json({"call_id": "x1", "phone_number": "5", "call_state": "ended"})
    with pytest.raises(PlatformServerError, match="call_state"):
        Call.from_json({"call_id": 1, "phone_number": "5", "call_state": 3})


def test_campaign_archive_action_extension():
    assert CampaignStatus.from_json({"campaign_id": 3, "status": 2, "status_name": "Paused"}).state \
        is CampaignState.PAUSED
    assert CampaignStatus.from_json({"campaign_id": 3, "status": 9}).state is None
    with pytest.raises(PlatformServerError, match="status"):
        CampaignStatus.from_json({"campaign_id": 3, "status": True})
    r = ArchiveResult.from_json({"message": "ok", "select_count": 2, "insert_count": 2, "delete_count": 1})
    assert r.update_count == 0 and r.as_dict()["delete_count"] == 1  # dearchive has no update count
    with pytest.raises(PlatformServerError, match="insert_count"):
        ArchiveResult.from_json({"select_count": 1, "update_count": 0, "delete_count": 0})
    with pytest.raises(PlatformServerError, match="success"):
        ActionResult.from_json({"success": "yes"})
    assert RecordingResult.from_json({"success": True, "detail": "d"}).recording_url is None
    assert Extension.from_json({"extension": 9001}).extension == "9001"
    with pytest.raises(PlatformServerError, match="extension"):
        Extension.from_json({"expire_date": "2030-01-01T00:00:00Z"})


# --- local validation agrees with the lab's (the contract's) -----------------------------------

_id_values = st.one_of(st.integers(min_value=1, max_value=30), st.sampled_from(["0", "7", 2.5, None, True]))


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.lists(_id_values, max_size=12),
                 st.integers(min_value=495, max_value=505).map(lambda n: list(range(1, n + 1)))))
def test_client_refuses_exactly_what_the_lab_refuses(ids):
    flags = {"insert_leads": True, "update_leads": True, "delete_leads": True}
    try:
        validate_request({**flags, "lead_ids": ids}, Direction.ARCHIVE)
        server = None
    except LeadRequestError as exc:
        server = exc.as_json()
    try:
        PlatformClient._check_ids(ids, validate=True)
        local = None
    except PlatformValidationError as exc:
        local = {"message": exc.message, "lead_ids": exc.ids}
    if server is None:
        assert local is None
    else:
        assert local is not None and local["message"] == server["message"]
        assert local["lead_ids"] == server.get("lead_ids", [])
