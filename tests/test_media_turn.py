"""Two WebRTC peers through the real coturn, relay only: audio both ways, ICE failures."""

from __future__ import annotations

import asyncio
import socket

import aioice.ice
import aioice.stun
import pytest
from media_support import (
    FAST_PATH_ON_AND_OFF,
    SineTrack,
    ToneMeter,
    negotiate,
    relay_config,
    wait_connected,
    wait_until,
)

from softphone.errors import IceError, IceGatheringError
from softphone.media.config import IceConfig, MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.media.peer import ice_connection_kwargs, selected_candidate_pair
from softphone.media.sdp import candidate_types

pytestmark = pytest.mark.peer


async def _tone_call(config: MediaConfig, freq_a: float, freq_b: float):
    meter_a, meter_b = ToneMeter(), ToneMeter()
    a = WebRtcDescriptionHandler(config, source=SineTrack(freq_a), sinks=[meter_a])
    b = WebRtcDescriptionHandler(config, source=SineTrack(freq_b), sinks=[meter_b])
    try:
        offer, answer = await negotiate(a, b)
        await wait_connected(a, b)
        await meter_a.wait_frames(40)
        await meter_b.wait_frames(40)
        return a, b, offer, answer, meter_a.dominant_frequency(), meter_b.dominant_frequency()
    except BaseException:
        await a.close()
        await b.close()
        raise


@pytest.mark.parametrize("codec, freq_a, freq_b", [("opus", 440.0, 1000.0), ("PCMU", 700.0, 1200.0)])
@FAST_PATH_ON_AND_OFF
async def test_relay_only_tone_heard_both_ways(fast_path, coturn, codec, freq_a, freq_b):
    config = relay_config(coturn, codecs=(codec,))
    a, b, offer, answer, heard_by_a, heard_by_b = await _tone_call(config, freq_a, freq_b)
    try:
        assert set(candidate_types(offer)) == {"relay"}
        assert set(candidate_types(answer)) == {"relay"}
        for handler in (a, b):
            pair = selected_candidate_pair(handler.pc)
            assert pair is not None and pair.local_type == "relay" and pair.remote_type == "relay"
            assert pair.local_address[0] == "127.0.0.1"
        assert abs(heard_by_b - freq_a) / freq_a < 0.02, heard_by_b
        assert abs(heard_by_a - freq_b) / freq_b < 0.02, heard_by_a
        assert (await a.stats()).codec.lower() == codec.lower()
    finally:
        await a.close()
        await b.close()


async def test_turn_over_tcp(coturn):
    url = f"turn:{coturn.host}:{coturn.port}?transport=tcp"
    config = relay_config(coturn, codecs=("PCMU",), url=url)
    assert config.ice.selected_turn_url == url
    a, b, _, _, heard_by_a, heard_by_b = await _tone_call(config, 500.0, 900.0)
    try:
        connection = a.pc.getTransceivers()[0].receiver.transport.transport._connection
        assert connection.turn_server == (coturn.host, coturn.port)
        assert connection.turn_transport == "tcp"
        assert abs(heard_by_b - 500.0) / 500.0 < 0.02
        assert abs(heard_by_a - 900.0) / 900.0 < 0.02
    finally:
        await a.close()
        await b.close()


async def test_udp_preferred_over_tcp_by_default(coturn):
    urls = (f"turn:{coturn.host}:{coturn.port}?transport=tcp", f"turn:{coturn.host}:{coturn.port}")
    ice = IceConfig(turn_urls=urls, username=coturn.username, credential=coturn.password, relay_only=True)
    assert ice.selected_turn_url == urls[1]
    handler = WebRtcDescriptionHandler(MediaConfig(ice=ice))
    try:
        await handler.get_description()
        kwargs = ice_connection_kwargs(handler.pc)
        assert kwargs["stun_server"] is None
        assert kwargs["turn_server"] == (coturn.host, coturn.port)
        connection = handler.pc.getTransceivers()[0].receiver.transport.transport._connection
        assert connection.turn_transport == "udp"
    finally:
        await handler.close()


def _closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_unreachable_turn_is_an_ice_error():
    ice = IceConfig(turn_urls=(f"turn:127.0.0.1:{_closed_udp_port()}",), username="u", credential="secretpw",
                    relay_only=True, gathering_timeout=1.0)
    handler = WebRtcDescriptionHandler(MediaConfig(ice=ice))
    try:
        with pytest.raises(IceError) as info:
            await asyncio.wait_for(handler.get_description(), 10)
        assert "turn:127.0.0.1" in str(info.value)
        assert "secretpw" not in str(info.value)
    finally:
        await handler.close()


async def test_silent_turn_server_hits_the_gathering_timeout():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent.bind(("127.0.0.1", 0))
    try:
        ice = IceConfig(turn_urls=(f"turn:127.0.0.1:{silent.getsockname()[1]}",), username="u",
                        credential="secretpw", relay_only=True, gathering_timeout=0.5)
        handler = WebRtcDescriptionHandler(MediaConfig(ice=ice))
        try:
            with pytest.raises(IceGatheringError, match=r"within 0\.5 s"):
                await asyncio.wait_for(handler.get_description(), 10)
        finally:
            await handler.close()
    finally:
        silent.close()


async def test_rejected_turn_credentials_are_an_ice_error(coturn):
    ice = IceConfig(turn_urls=(coturn.url,), username=coturn.username, credential="not-the-password",
                    relay_only=True, gathering_timeout=3.0)
    handler = WebRtcDescriptionHandler(MediaConfig(ice=ice))
    try:
        with pytest.raises(IceError) as info:
            await asyncio.wait_for(handler.get_description(), 10)
        assert "not-the-password" not in str(info.value)
        assert "401" in str(info.value)  # what the TURN server said, not a guess
    finally:
        await handler.close()


def _allocation_mismatch() -> aioice.stun.TransactionFailed:
    response = aioice.stun.Message(message_method=aioice.stun.Method.ALLOCATE,
                                   message_class=aioice.stun.Class.ERROR)
    response.attributes["ERROR-CODE"] = (437, "Mismatched allocation: wrong transaction ID")
    return aioice.stun.TransactionFailed(response)


async def test_a_437_allocation_mismatch_is_allocated_again_from_a_new_port(coturn, monkeypatch):
    """coturn keeps a deleted allocation about a second: an Allocate from a client port reused
    in that window gets 437 (a call hung up and placed again at once); RFC 8656 says retry
    from another port, which aioice does not do."""
    real = aioice.ice.relayed_candidate
    calls: list[str] = []

    async def mismatch_once(**kwargs):
        calls.append("allocate")
        if len(calls) == 1:
            raise _allocation_mismatch()
        return await real(**kwargs)

    monkeypatch.setattr(aioice.ice, "relayed_candidate", mismatch_once)
    handler = WebRtcDescriptionHandler(relay_config(coturn))
    try:
        body = await asyncio.wait_for(handler.get_description(), 15)
        assert "relay" in candidate_types(body.content) and calls == ["allocate", "allocate"]
    finally:
        await handler.close()
    assert aioice.ice.relayed_candidate is mismatch_once  # the seam put back what it found


async def test_constant_allocation_mismatches_end_in_an_error_that_says_so(coturn, monkeypatch):
    async def always_mismatch(**kwargs):
        raise _allocation_mismatch()

    monkeypatch.setattr(aioice.ice, "relayed_candidate", always_mismatch)
    handler = WebRtcDescriptionHandler(relay_config(coturn))
    try:
        with pytest.raises(IceGatheringError, match="437"):
            await asyncio.wait_for(handler.get_description(), 15)
    finally:
        await handler.close()


async def test_turn_credential_never_reaches_the_logs(coturn, caplog):
    import logging

    caplog.set_level(logging.DEBUG)  # every logger: ours, aiortc's, aioice's
    config = relay_config(coturn, codecs=("PCMU",))
    a, b, offer, answer, _, _ = await _tone_call(config, 600.0, 900.0)
    try:
        await a.send_dtmf("5", 40, 40)
        await a.stats()
    finally:
        await a.close()
        await b.close()
    assert caplog.records, "DEBUG logging produced nothing: the check would be empty"
    text = caplog.text + "".join(str(r.args) for r in caplog.records) + offer + answer
    assert coturn.password not in text
    assert coturn.password not in repr(config) and coturn.password not in config.ice.describe()


@pytest.mark.parametrize("codec", ["PCMU", "opus"])
async def test_lean_path_through_the_relay(coturn, codec, monkeypatch):
    """What a load test runs: pre-encoded tracks, the lean sender and the fast receive path, via TURN."""
    from aioice.turn import TurnTransport

    from softphone.media.aiortc_seam import fast_receive_of
    from softphone.media.lean import PreEncodedAudioTrack, Tone
    from softphone.media.lean_sender import lean_sender_of

    stock_sends = [0]
    stock_sendto = TurnTransport.sendto

    def counting_sendto(self, data, addr):
        stock_sends[0] += 1
        stock_sendto(self, data, addr)

    monkeypatch.setattr(TurnTransport, "sendto", counting_sendto)
    config = relay_config(coturn, codecs=(codec,))
    meter = ToneMeter()
    # a: counting only (the load-test receiver); b: decodes what a sends, to check the tone.
    a = WebRtcDescriptionHandler(config, source=PreEncodedAudioTrack(Tone(700, 1.0)))
    b = WebRtcDescriptionHandler(config, source=PreEncodedAudioTrack(Tone(1200, 1.0)), sinks=[meter])
    try:
        await negotiate(a, b)
        await wait_connected(a, b)
        await meter.wait_frames(50)
        sends_before, packets_before = stock_sends[0], lean_sender_of(a.sender).packets
        await wait_until(lambda: lean_sender_of(a.sender).packets - packets_before > 15, 10,
                         "more than 15 packets sent on the TURN channel")
        assert abs(meter.dominant_frequency() - 700) / 700 < 0.02
        # Media goes out on the bound TURN channel directly, not through a task per packet:
        # aioice's own sendto is left with the odd STUN consent check or RTCP.
        sent = lean_sender_of(a.sender).packets - packets_before
        assert sent > 15 and stock_sends[0] - sends_before < sent / 3
        for handler in (a, b):
            pair = selected_candidate_pair(handler.pc)
            assert pair is not None and pair.local_type == "relay" and pair.remote_type == "relay"
            lean = lean_sender_of(handler.sender)
            assert lean is not None and lean.packets > 25  # the shared send driver, not aiortc's loop
            fast = fast_receive_of(handler.receiver.transport)
            assert fast is not None and fast.direct > 25  # SRTP handled in the datagram callback
            quality = await handler.stats()
            assert quality.packets_received > 25 and quality.packets_lost == 0
            assert quality.packets_sent >= lean.packets - 1
        # RFC 4733 on the same path: the tap on a's sender, the hook on b's receiver.
        from softphone.media.rfc4733 import RtpSenderTap

        assert type(a.sender.transport) is RtpSenderTap
        digits = []
        b.on("dtmf", lambda event: digits.append(event.digit))
        assert await asyncio.wait_for(a.send_dtmf("7#", 80, 60), 10) is True
        await wait_until(lambda: digits == ["7", "#"], what="both digits at b")
        # The counting side's receiver saw every packet b sent, in order.
        report = a.receiver.report()
        assert report.received > 25 and report.lost == 0 and report.out_of_order == 0
        quality = await b.stats()
        assert quality.packets_lost == 0  # audio held back for the digits did not read as loss
    finally:
        await a.close()
        await b.close()
