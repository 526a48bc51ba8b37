"""Our stack against the Webphone's real stack with media: SIP.js 0.15.11 in headless Chromium.

Each test starts one Chromium whose fake microphone plays BROWSER_TONE; our
UA (softphone.sip + WebRtcDescriptionHandlerFactory) sends OUR_TONE. The
browser hears through a WebAudio AnalyserNode on the remote stream, we hear
through a ToneDetector. Calls go through a private Kamailio per test (no
extension shared with other tests; a killed browser leaves its registration
behind) and, where the test says so, through coturn relay-only on both sides;
see tests/browser_support.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from browser_support import (
    BOUND,
    BROWSER_TONE,
    OUR_TONE,
    OurMedia,
    WebphonePage,
    media_config,
    media_user_agent,
    wait_for,
    webrtc_handler,
)

from softphone.media.sdp import Direction, audio_direction

pytestmark = [pytest.mark.peer, pytest.mark.browser]
OURS, THEIRS = "1001", "1002"


@pytest.fixture
def kamailio(kamailio_factory):
    """A private Kamailio with extensions 1001 (our UA) and 1002 (the browser)."""
    return kamailio_factory(n_users=2)


def dtmf_digit(*args: Any) -> str:
    """The digit of a session or handler ``dtmf`` event (a DtmfEvent, or digit/duration/via)."""
    first = args[0]
    return getattr(first, "digit", first)


def dtmf_via(*args: Any) -> str:
    first = args[0]
    return getattr(first, "via", None) or args[2]


@contextlib.asynccontextmanager
async def browser_calls_us(kamailio, chromium, *, coturn=None, ours=OURS, theirs=THEIRS):
    """The browser's SIP.js calls our UA; yields (page, media, invitation) once both have media."""
    media = OurMedia(media_config(coturn))
    agent = media_user_agent(kamailio, ours, media)
    async with WebphonePage(chromium, ext=theirs, password=kamailio.users[theirs], domain=kamailio.domain,
                            ws=kamailio.ws_url, turn=coturn) as page, agent:
        await page.next_event("registered")
        incoming = asyncio.get_running_loop().create_future()
        agent.once("invite", lambda inv: incoming.done() or incoming.set_result(inv))
        await page.evaluate(f"window.call('{ours}')")
        invitation = await asyncio.wait_for(incoming, BOUND)
        assert invitation.request.headers.get("User-Agent") == "SIP.js/0.15.11"
        assert "UDP/TLS/RTP/SAVPF 111" in invitation.request.body  # Chromium's own offer, opus first
        await invitation.wait_established(BOUND)
        await page.next_event("accepted")
        handler = webrtc_handler(invitation)
        await wait_for(lambda: handler.pc.connectionState == "connected", "our peer connection to connect")
        yield page, media, invitation


@contextlib.asynccontextmanager
async def we_call_browser(kamailio, chromium, *, coturn=None, ours=OURS, theirs=THEIRS):
    """Our UA calls the browser (SIP.js auto-answers); yields (page, media, inviter)."""
    media = OurMedia(media_config(coturn))
    agent = media_user_agent(kamailio, ours, media)
    async with WebphonePage(chromium, ext=theirs, password=kamailio.users[theirs], domain=kamailio.domain,
                            ws=kamailio.ws_url, turn=coturn) as page, agent:
        await page.next_event("registered")
        inviter = await asyncio.wait_for(agent.call(theirs), BOUND)
        await page.next_event("invite")
        await inviter.wait_established(BOUND)
        handler = webrtc_handler(inviter)
        assert "UDP/TLS/RTP/SAVPF" in handler.remote_sdp  # Chromium's answer
        await wait_for(lambda: handler.pc.connectionState == "connected", "our peer connection to connect")
        yield page, media, inviter


async def check_tones_both_ways(page: WebphonePage, media: OurMedia, session) -> None:
    handler = webrtc_handler(session)
    assert (await handler.stats()).codec == "opus"
    heard = await media.hears(BROWSER_TONE)
    assert abs(heard - BROWSER_TONE) <= 0.02 * BROWSER_TONE
    await page.hears(OUR_TONE)


async def check_relay_only(page: WebphonePage, session) -> None:
    """Both ends use relay candidates only: ours in our SDP, the browser's in its selected pair."""
    handler = webrtc_handler(session)
    ours = [line for line in handler.local_sdp.splitlines() if line.startswith("a=candidate:")]
    theirs = [line for line in handler.remote_sdp.splitlines() if line.startswith("a=candidate:")]
    assert ours and all(" typ relay" in line for line in ours), ours
    assert theirs and all(" typ relay" in line for line in theirs), theirs
    counters = await wait_for(page.counters, "the browser's selected candidate pair")
    assert counters.get("localCandidateType") == "relay", counters


async def test_browser_calls_us_tones_and_info_dtmf_both_ways(kamailio, chromium):
    """SIP.js calls our UA; tones are heard both ways; SIP INFO digits go both ways."""
    async with browser_calls_us(kamailio, chromium) as (page, media, invitation):
        await check_tones_both_ways(page, media, invitation)
        received: list[tuple] = []
        invitation.on("dtmf", lambda *args: received.append(args))
        for n, digit in enumerate("5#", 1):  # one at a time: SIP.js sends queued digits from a timer
            await page.evaluate(f"window.sendInfoDtmf('{digit}')")
            await wait_for(lambda n=n: len(received) >= n, f"INFO digit {digit} from the browser")
        assert [dtmf_digit(*a) for a in received] == ["5", "#"]
        assert {dtmf_via(*a) for a in received} == {"info"}
        assert await invitation.send_dtmf("9*", method="info") == "info"
        assert await page.next_event("dtmf") == "9"
        assert await page.next_event("dtmf") == "*"
        assert await page.events_named("dtmfSent") == ["5", "#"]
        await invitation.bye()
        await page.next_event("bye")


async def test_we_call_browser_tones_both_ways(kamailio, chromium):
    """Our UA calls SIP.js (auto-answer) with our offer; tones both ways; either side holds and
    unholds (our re-offers to a call we placed, SIP.js's to a call it answered); the browser hangs up."""
    async with we_call_browser(kamailio, chromium) as (page, media, inviter):
        await check_tones_both_ways(page, media, inviter)
        handler = webrtc_handler(inviter)
        await page.evaluate("window.session.hold(), true")
        await page.next_event("reinviteAccepted")
        assert audio_direction(handler.remote_sdp) is Direction.SENDONLY
        assert handler.local_direction is Direction.RECVONLY
        await wait_for(page.silent, "silence in the browser while it holds us")
        await page.evaluate("window.session.unhold(), true")
        await page.next_event("reinviteAccepted")
        assert handler.local_direction is Direction.SENDRECV
        await page.hears(OUR_TONE)
        await asyncio.wait_for(inviter.hold(), BOUND)
        assert audio_direction(handler.remote_sdp) is Direction.RECVONLY
        assert await page.evaluate("window.localDirection()") == "recvonly"
        await asyncio.wait_for(inviter.unhold(), BOUND)
        assert await page.evaluate("window.localDirection()") == "sendrecv"
        await check_tones_both_ways(page, media, inviter)
        await page.evaluate("window.session.bye(), true")
        await asyncio.wait_for(inviter.wait_terminated(BOUND), BOUND)
        assert inviter.termination_reason == "remote hangup"


async def test_relay_only_through_coturn_browser_calls_us(kamailio, chromium, coturn):
    """Both ends relay-only through coturn (browser iceTransportPolicy 'relay'); tones both ways."""
    async with browser_calls_us(kamailio, chromium, coturn=coturn) as (
            page, media, invitation):
        await check_relay_only(page, invitation)
        await check_tones_both_ways(page, media, invitation)


async def test_relay_only_through_coturn_we_call_browser(kamailio, chromium, coturn):
    async with we_call_browser(kamailio, chromium, coturn=coturn) as (
            page, media, inviter):
        await check_relay_only(page, inviter)
        await check_tones_both_ways(page, media, inviter)


async def test_rfc4733_from_browser_rtcdtmfsender_decoded_by_us(kamailio, chromium):
    """RTCDTMFSender's telephone-event packets (through SIP.js's SessionDescriptionHandler.sendDtmf,
    as session.dtmf() does with dtmfType 'rtp', and insertDTMF directly) are decoded by us, digit for digit."""
    async with browser_calls_us(kamailio, chromium) as (page, media, invitation):
        handler = webrtc_handler(invitation)
        assert handler.negotiated_events, "telephone-event was not negotiated with Chromium"
        await media.hears(BROWSER_TONE)  # audio flows, so the sender has a stream to put events in
        events: list = []
        handler.on("dtmf", events.append)
        assert await page.evaluate("window.sdhDtmf('23')") is True  # SIP.js's own RTP DTMF path
        await wait_for(lambda: len(events) >= 2, "2 RFC 4733 digits sent through SIP.js")
        assert "".join(e.digit for e in events) == "23"
        events.clear()
        tones = "159#*0D"
        assert await page.evaluate(f"window.insertDTMF('{tones}', 100, 70)") == tones
        await wait_for(lambda: len(events) >= len(tones), f"{len(tones)} RFC 4733 digits", timeout=BOUND)
        assert "".join(e.digit for e in events) == tones
        assert all(e.via in ("rtp", "rfc4733") for e in events)
        assert all(80 <= e.duration_ms <= 200 for e in events), [e.duration_ms for e in events]
        played = [t for t in await page.events_named("tonechange") if t]
        assert "".join(played) == tones  # what the browser says it played


async def test_hold_and_unhold_from_browser(kamailio, chromium):
    """SIP.js hold(): it re-offers sendonly, we answer recvonly and send nothing; unhold() restores both."""
    async with browser_calls_us(kamailio, chromium) as (page, media, invitation):
        await check_tones_both_ways(page, media, invitation)
        handler = webrtc_handler(invitation)
        held: list[str] = []
        invitation.on("hold", held.append)
        invitation.on("unhold", held.append)

        await page.evaluate("window.session.hold(), true")
        await page.next_event("reinviteAccepted")
        assert audio_direction(handler.remote_sdp) is Direction.SENDONLY
        assert audio_direction(handler.local_sdp) is Direction.RECVONLY
        assert handler.local_direction is Direction.RECVONLY
        assert await page.evaluate("window.localDirection()") == "sendonly"
        assert held == ["sendonly"]
        # The held side (us) sends nothing: our sender stops and the browser's counter stops growing.
        await wait_for(page.silent, "silence in the browser while we are held")
        stopped = await _sent_count_settles(handler)
        browser_got = (await page.counters())["packetsReceived"]
        # Still the browser's microphone reaches us (RFC 3264 sendonly): its tone goes on.
        await media.hears(BROWSER_TONE)
        assert (await page.counters())["packetsReceived"] == browser_got
        assert (await handler.stats()).packets_sent == stopped

        await page.evaluate("window.session.unhold(), true")
        await page.next_event("reinviteAccepted")
        assert audio_direction(handler.remote_sdp) is Direction.SENDRECV
        assert handler.local_direction is Direction.SENDRECV
        assert held == ["sendonly", "sendrecv"]
        await wait_for(lambda: _grew(handler, stopped), "our RTP after unhold")
        await page.hears(OUR_TONE)
        assert (await page.counters())["packetsReceived"] > browser_got


async def _grew(handler, before: int) -> bool:
    return (await handler.stats()).packets_sent > before


async def _sent_count_settles(handler) -> int:
    """Our packets-sent count once two reads 0.3 s apart agree (a sender that stopped)."""
    previous = -1

    async def probe() -> int | None:
        nonlocal previous
        now = (await handler.stats()).packets_sent
        settled = now == previous
        previous = now
        return now if settled else None

    return await wait_for(probe, "our sender to stop while held", BOUND, 0.3)


async def test_we_hold_and_unhold_the_browser_that_called_us(kamailio, chromium):
    """Our re-offer to Chromium after answering its offer (hold, then unhold) is accepted.

    aiortc re-offers its default RTP header extension IDs; Chromium refused
    them with 500 until our re-offers kept the IDs of the session.
    """
    async with browser_calls_us(kamailio, chromium) as (page, media, invitation):
        await check_tones_both_ways(page, media, invitation)
        handler = webrtc_handler(invitation)
        await asyncio.wait_for(invitation.hold(), BOUND)
        assert audio_direction(handler.local_sdp) is Direction.SENDONLY
        assert audio_direction(handler.remote_sdp) in (Direction.RECVONLY, Direction.INACTIVE)
        await page.next_event("reinvite")
        assert await page.evaluate("window.localDirection()") in ("recvonly", "inactive")
        await page.hears(OUR_TONE)  # we still send while holding (SIP.js semantics)
        sent = await _browser_sent_settles(page)
        await asyncio.wait_for(invitation.unhold(), BOUND)
        assert audio_direction(handler.remote_sdp) is Direction.SENDRECV
        assert await page.evaluate("window.localDirection()") == "sendrecv"
        await wait_for(lambda: _browser_sent_grew(page, sent), "the browser's RTP after unhold")
        await media.hears(BROWSER_TONE)


async def _browser_sent_grew(page: WebphonePage, before: int) -> bool:
    return (await page.counters())["packetsSent"] > before


async def _browser_sent_settles(page: WebphonePage) -> int:
    """The browser's packets-sent count once two reads 0.3 s apart agree (it stopped sending)."""
    previous = -1

    async def probe() -> int | None:
        nonlocal previous
        now = (await page.counters())["packetsSent"]
        settled = now == previous
        previous = now
        return now if settled else None

    return await wait_for(probe, "the browser to stop sending while held", BOUND, 0.3)
