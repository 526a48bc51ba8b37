"""CallQuality: E-model arithmetic, no-data cases, and 5 % loss injected on a real relayed call."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st
from media_support import LossyUdpRelay, SineTrack, ToneMeter, negotiate, wait_connected

from softphone.media.config import IceConfig, MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.media.stats import (
    CODEC_IMPAIRMENTS,
    CallQuality,
    collect,
    estimate_mos,
    mos_from_r,
    r_factor,
)

# --- E-model arithmetic -------------------------------------------------------------


def test_r_factor_without_impairments_is_the_default_rating():
    assert r_factor(0, 0, "pcmu") == pytest.approx(93.2)
    assert mos_from_r(93.2) == pytest.approx(4.41, abs=0.01)


def test_delay_impairment_follows_the_simplified_formula():
    # Id = 0.024 d + 0.11 (d - 177.3) above 177.3 ms
    assert 93.2 - r_factor(100, 0) == pytest.approx(2.4)
    assert 93.2 - r_factor(200, 0) == pytest.approx(0.024 * 200 + 0.11 * (200 - 177.3))


def test_loss_impairment_uses_g113_values_for_g711():
    imp = CODEC_IMPAIRMENTS["pcmu"]
    assert (imp.ie, imp.bpl) == (0.0, 4.3)
    expected_ie_eff = 95 * 5 / (5 + 4.3)
    assert 93.2 - r_factor(0, 5, "PCMU") == pytest.approx(expected_ie_eff)


def test_mos_mapping_limits():
    assert mos_from_r(-5) == 1.0
    assert mos_from_r(0) == 1.0
    assert mos_from_r(100) == 4.5
    assert mos_from_r(120) == 4.5
    assert mos_from_r(50) == pytest.approx(1 + 0.035 * 50 + 50 * (50 - 60) * (100 - 50) * 7e-6)


@given(
    delay=st.floats(0, 600),
    loss=st.floats(0, 0.5),
    more=st.floats(0.001, 0.3),
    codec=st.sampled_from(sorted(CODEC_IMPAIRMENTS)),
)
def test_mos_never_improves_with_more_loss_or_delay(delay, loss, more, codec):
    base = estimate_mos(delay, 0.0, loss, codec)
    assert 1.0 <= base <= 4.5
    assert estimate_mos(delay, 0.0, min(1.0, loss + more), codec) <= base
    assert estimate_mos(delay + 200 * more, 0.0, loss, codec) <= base


def test_mos_is_none_without_data():
    assert estimate_mos(None, 1.0, 0.0) is None
    assert estimate_mos(20.0, 1.0, None) is None


async def test_collect_on_a_call_without_media_reports_no_figures():
    handler = WebRtcDescriptionHandler(MediaConfig(ice=IceConfig()))
    try:
        quality = await collect(handler.pc)
        assert isinstance(quality, CallQuality)
        assert quality.packets_received == 0 and quality.packets_sent == 0
        assert quality.loss_fraction is None
        assert quality.jitter_ms is None
        assert quality.rtt_ms is None
        assert quality.mos is None
    finally:
        await handler.close()


# --- real call with injected loss ---------------------------------------------------


async def _wait_for_rtt(handler: WebRtcDescriptionHandler, timeout: float = 15.0) -> CallQuality:
    async def _poll():
        while True:
            quality = await handler.stats()
            if quality.rtt_ms is not None and quality.mos is not None:
                return quality
            await asyncio.sleep(0.1)
    return await asyncio.wait_for(_poll(), timeout)


@pytest.mark.peer
async def test_five_percent_loss_shows_in_call_quality(coturn):
    relay = LossyUdpRelay((coturn.host, coturn.port), loss=0.05, seed=4733)
    port = await relay.start()
    relay.dropping = True

    def config(url: str) -> MediaConfig:
        return MediaConfig(
            ice=IceConfig(turn_urls=(url,), username=coturn.username, credential=coturn.password,
                          relay_only=True),
            codecs=("PCMU",),
        )

    meter_a, meter_b = ToneMeter(), ToneMeter()
    lossy = WebRtcDescriptionHandler(config(f"turn:127.0.0.1:{port}"), source=SineTrack(600), sinks=[meter_a])
    clean = WebRtcDescriptionHandler(config(coturn.url), source=SineTrack(800), sinks=[meter_b])
    try:
        await negotiate(lossy, clean)
        await wait_connected(lossy, clean, timeout=15)
        await meter_b.wait_frames(150, timeout=20)  # 3 s of audio through the lossy hop
        received_lossy = await _wait_for_rtt(clean)  # what came through the dropping relay
        received_clean = await _wait_for_rtt(lossy)
        assert relay.dropped > 0
        assert received_lossy.packets_received > 100
        assert 0.025 <= received_lossy.loss_fraction <= 0.08, received_lossy
        assert received_clean.loss_fraction == 0.0, received_clean
        assert received_lossy.mos < received_clean.mos
        assert received_lossy.jitter_ms is not None and received_lossy.jitter_ms >= 0
        assert received_lossy.rtt_ms > 0
        # the lossy side learns about its own stream's loss through RTCP receiver reports
        lossy_view = await lossy.stats()
        assert lossy_view.remote_loss_fraction is not None and lossy_view.remote_loss_fraction > 0.01
        assert lossy_view.packets_sent > 100
    finally:
        await lossy.close()
        await clean.close()
        relay.close()


# --- delivered against due: what loss cannot show -------------------------------------


def test_packets_due_follow_the_clock_between_first_and_latest_packet():
    from types import SimpleNamespace

    from softphone.media.rtp_counter import RtpStreamCounter

    counter = RtpStreamCounter(8000)
    assert counter.packets_due() == 0
    # 10 packets with gapless sequence numbers, but spread over 0.38 s: 20 were due.
    for i, arrival in enumerate([0.0, 0.02, 0.04, 0.06, 0.08, 0.30, 0.32, 0.34, 0.36, 0.38]):
        counter.add(SimpleNamespace(sequence_number=100 + i, timestamp=160 * i, payload_type=0, payload=b""),
                    arrival=arrival)
    assert counter.lost == 0 and counter.unique_received == 10
    assert counter.packets_due(0.02) == 20


async def test_late_frames_dropped_by_the_sender_show_as_not_delivered_not_as_loss():
    import time

    from media_support import wait_until

    from softphone.media.lean import PreEncodedAudioTrack, Tone
    from softphone.media.testing import loopback_host_candidates, open_loopback_call

    with loopback_host_candidates():
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(Tone(440, 1.0)), None)
    try:
        receiver = call.callee.receiver
        await wait_until(lambda: call.callee.report().received >= 10, what="packets")
        before = call.callee.report().received
        time.sleep(0.6)  # the loop stalls: the sender skips the frames whose time has passed
        await wait_until(lambda: call.callee.report().received >= before + 10, what="packets after the stall")
        quality = await collect(call.callee.pc)
        assert quality.packets_lost == 0 and quality.loss_fraction == 0.0  # no sequence gap ...
        assert quality.packets_due - quality.packets_received >= 10  # ... yet about 30 frames never came
        assert quality.delivered_fraction < 1.0
        assert call.caller.track.frames_skipped >= 10
        assert receiver.report().lost == 0
    finally:
        await call.close()


async def test_stock_aiortc_receivers_give_no_delivered_figure():
    from softphone.media.lean import PreEncodedAudioTrack, Tone
    from softphone.media.testing import loopback_host_candidates, open_loopback_call

    with loopback_host_candidates():
        call = await open_loopback_call("PCMU", PreEncodedAudioTrack(Tone(440, 1.0)), None, fast_path=False)
    try:
        stats: list[CallQuality] = []

        async def poll() -> None:
            while True:
                quality = await collect(call.callee.pc)
                if quality.packets_received:
                    stats.append(quality)
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), 10)
        assert stats[0].packets_due is None and stats[0].delivered_fraction is None
    finally:
        await call.close()
