"""softphone.Phone and its Call facade against a real Kamailio, media relayed through a real coturn."""

from __future__ import annotations

import asyncio

import pytest

from softphone import AgentState, CallState, DtmfEvent, Phone
from softphone.errors import AuthenticationError

pytestmark = pytest.mark.peer
BOUND = 15.0
USERS = {str(n): f"pw-{n}-phone" for n in range(2031, 2036)}


def make_phone(kam, coturn, ext: str, *, password: str | None = None, **options) -> Phone:
    return Phone.connect(kam.ws_url, ext, password if password is not None else kam.users[ext],
                         domain=kam.domain, turn=[coturn.url], turn_username=coturn.username,
                         turn_password=coturn.password, relay_only=True, **options)


async def test_two_phones_talk_dtmf_both_ways_hold_and_hang_up(kamailio_factory, coturn, tmp_path):
    kamailio = kamailio_factory(users=USERS)
    caller = make_phone(kamailio, coturn, "2031", play="tone:1000")
    callee = make_phone(kamailio, coturn, "2032", play="tone:440", record=tmp_path / "callee.wav")
    seen: dict[str, list] = {"caller": [], "callee": []}
    for name, phone in (("caller", caller), ("callee", callee)):
        for event in ("registered", "call_incoming", "call_answered", "call_ended", "dtmf", "hold", "unhold",
                      "unregistered"):
            phone.on(event, lambda ev, _n=name: seen[_n].append(ev))
    async with callee, caller:
        assert callee.state is AgentState.READY and caller.state is AgentState.READY
        out = await asyncio.wait_for(caller.invite("2032"), BOUND)
        into = await asyncio.wait_for(callee.wait_for_call(), BOUND)
        assert out.state is CallState.ANSWERED and into.state is CallState.ANSWERED
        shown = repr(out) + repr(into) + repr(caller) + repr(callee) + str(caller.snapshot())
        assert USERS["2031"] not in shown and USERS["2032"] not in shown and coturn.password not in shown
        # audio both ways, checked by tone detection on what each side received
        await into.wait_for_tone(1000, timeout=BOUND)
        await out.wait_for_tone(440, timeout=BOUND)
        # DTMF both ways, by RFC 4733 and by SIP INFO, into one DtmfEvent stream
        # (one way at a time: RTP through the relay and SIP through Kamailio may overtake each other)
        assert await asyncio.wait_for(out.send_dtmf("12", method="rfc4733"), BOUND) == "rfc4733"
        assert await into.wait_for_dtmf(2, timeout=BOUND) == "12"
        assert await asyncio.wait_for(out.send_dtmf("#", method="info"), BOUND) == "info"
        assert await into.wait_for_dtmf(1, timeout=BOUND) == "#"
        assert [e.via for e in into.digits] == ["rfc4733", "rfc4733", "info"]
        assert all(isinstance(e, DtmfEvent) for e in into.digits)
        await asyncio.wait_for(into.send_dtmf("9", method="info"), BOUND)
        assert await out.wait_for_dtmf(1, timeout=BOUND) == "9"
        await asyncio.wait_for(into.send_dtmf("7", method="rfc4733"), BOUND)
        assert await out.wait_for_dtmf(1, timeout=BOUND) == "7"
        assert [e.via for e in out.digits] == ["info", "rfc4733"]
        # in-band: tones in the audio reach the same stream
        out.play("dtmf:9")  # the digit as dual tones in the audio
        got = await asyncio.wait_for(_next_inband(into), BOUND)
        assert got.digit == "9" and got.via == "inband" and got.duration_ms > 40
        out.play("tone:1000")
        # hold / unhold
        await asyncio.wait_for(out.hold(), BOUND)
        assert out.state is CallState.HELD
        await _until(lambda: into.on_hold)
        await asyncio.wait_for(out.unhold(), BOUND)
        assert out.state is CallState.ANSWERED
        await _until(lambda: not into.on_hold)
        assert out.sent_level_dbfs() > -30 and into.received_level_dbfs() > -40
        quality = await out.stats()
        assert quality.packets_received > 0 and quality.codec
        await asyncio.wait_for(out.hangup(), BOUND)
        await into.wait_ended(BOUND)
        assert into.end_cause == "remote hangup"
    assert callee.state is AgentState.STOPPED and caller.state is AgentState.STOPPED
    names = [e.EVENT for e in seen["callee"]]
    assert names[0] == "registered" and names[-1] == "unregistered"
    assert {"call_incoming", "call_answered", "dtmf", "hold", "unhold", "call_ended"} <= set(names)
    ended = next(e for e in seen["callee"] if e.EVENT == "call_ended")
    assert ended.duration > 0
    # the recording holds the caller's tone
    from softphone.media import tones
    from softphone.media.sources import decode_file

    pcm = decode_file(tmp_path / "callee.wav", rate=8000)
    import numpy as np

    x = np.frombuffer(pcm, dtype=np.int16).astype(float) / 32768 if isinstance(pcm, bytes) else pcm
    freq, _level = tones.dominant_frequency(np.asarray(x, dtype=float), 8000)
    assert tones.frequencies_close(freq, 1000.0, 0.03)


async def _next_inband(call):
    while True:
        await asyncio.sleep(0.02)
        inband = [e for e in call.digits if e.via == "inband"]
        if inband:
            return inband[0]


async def _until(predicate, timeout: float = BOUND) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_wrong_password_fails_the_start_and_leaves_nothing(kamailio_factory, coturn):
    kamailio = kamailio_factory(users=USERS)
    phone = make_phone(kamailio, coturn, "2033", password="wrong-password-here")
    states: list[str] = []
    phone.on("state", lambda ev: states.append(ev.state))
    with pytest.raises(AuthenticationError):
        async with phone:
            raise AssertionError("the block must not run")
    assert phone.state is AgentState.FAILED
    assert states == ["registering", "stopping", "failed"]
    assert "wrong-password-here" not in repr(phone)


async def test_request_stop_ends_the_block_cleanly(kamailio_factory, coturn):
    kamailio = kamailio_factory(users=USERS)
    phone = make_phone(kamailio, coturn, "2034")
    async with phone:
        asyncio.get_running_loop().call_soon(phone.request_stop, "test asked")
        await asyncio.sleep(3600)  # cancelled by request_stop; the exit swallows that cancellation
    assert phone.state is AgentState.STOPPED and phone.stop_reason == "test asked"
    assert not phone.ua.registered


async def test_registrar_restart_gives_reconnecting_then_registered_again(kamailio_factory, coturn):
    kamailio = kamailio_factory(users=USERS)
    phone = make_phone(kamailio, coturn, "2035")
    seen: list[str] = []
    for name in ("registered", "unregistered", "reconnecting"):
        phone.on(name, lambda ev, _n=name: seen.append(_n))
    async with phone:
        kamailio.stop()
        await _until(lambda: "reconnecting" in seen)
        kamailio.start()
        await _until(lambda: seen.count("registered") >= 2, timeout=40.0)
        assert phone.state is AgentState.READY and phone.ua.registered
    assert seen[0] == "registered" and seen.index("reconnecting") < len(seen) - 1 - seen[::-1].index("registered")
