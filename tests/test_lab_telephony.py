"""The telephony hook: the in-memory default keeps state and refuses what a phone system would."""

from __future__ import annotations

import pytest

from softphone.errors import TelephonyError
from softphone.lab.telephony import CALL_MOVES, CallInfo, CallState, InMemoryTelephony, Telephony


def call(call_id: int = 1, user_id: int = 1001) -> CallInfo:
    return CallInfo(call_id=call_id, user_id=user_id, phone_number="0821234567", outbound_cli="2711",
                    extension="9001", campaign_id=1)


def test_in_memory_telephony_satisfies_the_protocol():
    assert isinstance(InMemoryTelephony(), Telephony)


async def test_calls_need_a_bridge_and_move_through_states():
    tel = InMemoryTelephony(recording_base_url="http://lab/recordings/")
    with pytest.raises(TelephonyError, match="user 1001 has no bridge call"):
        await tel.place_call(call())
    await tel.on_login(1001, "9001", 1)
    assert tel.bridges == {1001: ("9001", 1)}
    assert await tel.place_call(call()) is CallState.ANSWERED
    await tel.hold(call())
    assert tel.calls[1] is CallState.HOLD
    await tel.retrieve(call())
    assert await tel.start_recording(call()) == "http://lab/recordings/call-1.wav"
    assert tel.recording == {1}
    assert await tel.hangup(call()) == 200
    assert tel.calls[1] is CallState.ENDED and not tel.recording
    await tel.on_logout(1001)
    assert tel.bridges == {}


async def test_connect_joins_two_calls():
    tel = InMemoryTelephony()
    await tel.on_login(1001, "9001", 1)
    await tel.place_call(call(1))
    await tel.place_call(call(2))
    await tel.connect(call(1), call(2))
    assert tel.calls == {1: CallState.CONNECTED, 2: CallState.CONNECTED}
    assert all(s.live for s in tel.calls.values()) and not CallState.ENDED.live


def test_call_moves_table():
    assert set(CALL_MOVES) == set(CallState)
    assert CallState.ANSWERED.can_move_to(CallState.HOLD) and CallState.HOLD.can_move_to(CallState.ANSWERED)
    assert not CallState.HOLD.can_move_to(CallState.HOLD)
    assert not CallState.ANSWERED.can_move_to(CallState.ANSWERED)
    assert not any(CallState.ENDED.can_move_to(s) for s in CallState)
    assert all(s.can_move_to(CallState.ENDED) for s in CallState if s.live)
