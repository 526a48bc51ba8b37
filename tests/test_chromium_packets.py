"""What Chromium (SIP.js 0.15.11) really sent, replayed into our parsers.

tests/data/chromium_rtp/sipjs_chromium_call.json was captured by
tests/capture_chromium_packets.py on our side of a real call, after SRTP
unprotect: Chromium's offer and our answer, our hold re-offer and Chromium's
answer, Opus packets of the browser's fake-microphone tone, the RFC 4733
packets of RTCDTMFSender.insertDTMF, and Chromium's RTCP (SR, RR, SDES).
Like aiortc's own tests with packets from other implementations, these need
no browser: they run in every test run.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from aiortc.codecs import get_decoder
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpRrPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
)

from softphone.media import sdp as sdpmod
from softphone.media import tones
from softphone.media.config import MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.media.rfc4733 import TelephoneEvent, TelephoneEventDecoder
from softphone.sip.description_handler import Body, DescriptionOptions

CAPTURE = json.loads((Path(__file__).parent / "data" / "chromium_rtp" / "sipjs_chromium_call.json").read_text())
OPUS_PT = 111
EVENT_PT = 110  # telephone-event/48000, the one matching Opus's clock


def packets(kind: str) -> list[bytes]:
    return [bytes.fromhex(p["hex"]) for p in CAPTURE["packets"] if p["kind"] == kind]


def rtp(payload_type: int) -> list[RtpPacket]:
    return [packet for packet in map(RtpPacket.parse, packets("rtp")) if packet.payload_type == payload_type]


def extmap(text: str) -> dict[str, int]:
    out = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("a=extmap:"):
            ident, uri = line[len("a=extmap:"):].split()[:2]
            out[uri] = int(ident.split("/")[0])
    return out


def chromium_ssrc() -> int:
    line = next(x for x in CAPTURE["offer"].splitlines() if x.startswith("a=ssrc:"))
    return int(line.split(":")[1].split()[0])


def test_capture_is_chromiums_webphone_offer():
    offer = sdpmod.SessionDescription.parse(CAPTURE["offer"]).audio()
    names = [(c.payload_type, c.name.lower(), c.clock_rate) for c in offer.codecs]
    assert names[0] == (OPUS_PT, "opus", 48000)
    assert offer.telephone_events() == {110: 48000, 126: 8000}
    assert sdpmod.setup_attribute(CAPTURE["offer"]) == "actpass"
    assert CAPTURE["sipjs"] == "0.15.11" and CAPTURE["chromium"].startswith("Chromium ")


def test_opus_packets_parse_with_chromiums_header_extensions_and_decode_to_its_tone():
    ids = extmap(CAPTURE["answer"])  # what we accepted of Chromium's extensions
    extensions = HeaderExtensionsMap()
    extensions.configure(RTCRtpParameters(headerExtensions=[
        RTCRtpHeaderExtensionParameters(id=i, uri=uri) for uri, i in ids.items()]))
    raw = [p for p in packets("rtp") if p[1] & 0x7F == OPUS_PT]
    assert len(raw) >= 50
    parsed = [RtpPacket.parse(data, extensions) for data in raw]
    assert {p.ssrc for p in parsed} == {chromium_ssrc()}
    # Chromium sends the MID only until it is sure the receiver has it (then audio-level alone).
    assert all(p.version == 2 and p.extensions.mid in ("0", None) for p in parsed)
    assert all(p.extensions.audio_level is not None for p in parsed)
    # One sequence space with the RFC 4733 events (RFC 4733 2.1): together they leave no gap.
    first = parsed[0].sequence_number
    last = (parsed[-1].sequence_number - first) % 65536
    span = {(p.sequence_number - first) % 65536 for p in map(RtpPacket.parse, packets("rtp"))}
    assert set(range(last + 1)) <= span
    assert {(b.timestamp - a.timestamp) % 960 for a, b in itertools.pairwise(parsed)} == {0}
    decoder = get_decoder(RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2,
                                                payloadType=OPUS_PT))
    pcm = []
    for packet in parsed:
        for frame in decoder.decode(JitterFrame(data=packet.payload, timestamp=packet.timestamp)):
            pcm.append(frame.to_ndarray().reshape(-1, 2)[:, 0])
    audio = tones.pcm16_to_float(np.concatenate(pcm))
    freq, level = tones.dominant_frequency(audio[-48000:], 48000)
    assert tones.frequencies_close(freq, CAPTURE["browser_tone_hz"]), (freq, level)


def test_rtcdtmfsender_events_decode_to_the_inserted_digits():
    events = rtp(EVENT_PT)
    assert events, "no telephone-event packets in the capture"
    assert all(p.ssrc == chromium_ssrc() for p in events)  # same stream as the audio (RFC 4733 2.1)
    parsed = [TelephoneEvent.parse(p.payload) for p in events]
    assert [p.end for p in parsed].count(True) == 3 * len(CAPTURE["digits"])  # three end packets each
    assert all(p.volume == 10 for p in parsed)
    assert [p.marker for p in events].count(1) == len(CAPTURE["digits"])  # marker on each event's start
    decoder = TelephoneEventDecoder()
    digits = []
    for packet in events:
        digits += decoder.feed(packet.timestamp, packet.payload, CAPTURE["telephone_events"][str(EVENT_PT)])
    digits += decoder.flush()
    assert "".join(d.digit for d in digits) == CAPTURE["digits"]
    assert all(d.duration_ms == 100 for d in digits)  # insertDTMF(..., 100, 70)


def test_chromium_rtcp_parses_into_sender_and_receiver_reports():
    parsed = [RtcpPacket.parse(data) for data in packets("rtcp")]
    flat = [p for compound in parsed for p in compound]
    senders = [p for p in flat if isinstance(p, RtcpSrPacket)]
    receivers = [p for p in flat if isinstance(p, RtcpRrPacket)]
    assert senders and receivers and any(isinstance(p, RtcpSdesPacket) for p in flat)
    assert {p.ssrc for p in senders} == {chromium_ssrc()}
    counts = [p.sender_info.packet_count for p in senders]
    assert counts == sorted(counts) and counts[0] > 0
    blocks = [block for p in receivers for block in p.reports]
    assert blocks and {b.ssrc for b in blocks} == {CAPTURE["our_ssrc"]}  # about the stream we sent
    assert all(b.packets_lost == 0 and b.jitter >= 0 for b in blocks)


@pytest.mark.peer  # a real peer connection (no media flows: nothing answers its ICE checks)
async def test_we_answer_chromiums_real_offer_and_keep_its_extension_ids_on_hold():
    """Our answer to Chromium's captured offer; our hold re-offer keeps Chromium's extmap IDs.

    aiortc re-offers with its default IDs (mid=1); Chromium rejected that with
    500 ("RTP extension ID reassignment not supported"), so a call the browser
    placed could not be held from our side.
    """
    handler = WebRtcDescriptionHandler(MediaConfig())
    try:
        await handler.set_description(Body("application/sdp", CAPTURE["offer"]))
        answer = (await handler.get_description()).content
        audio = sdpmod.SessionDescription.parse(answer).audio()
        assert audio.codecs[0].name.lower() == "opus" and audio.codecs[0].payload_type == OPUS_PT
        assert audio.telephone_events() == {EVENT_PT: 48000}
        assert sdpmod.setup_attribute(answer) == "active"
        assert extmap(answer).items() <= extmap(CAPTURE["offer"]).items()
        reoffer = (await handler.get_description(DescriptionOptions(hold=True))).content
        assert sdpmod.audio_direction(reoffer) is sdpmod.Direction.SENDONLY
        assert extmap(reoffer) == extmap(answer)
    finally:
        await handler.close()


@pytest.mark.peer
async def test_chromium_receiver_reports_feed_our_call_quality():
    """Chromium's RR about our stream becomes CallQuality.remote_* (softphone.media.stats)."""
    handler = WebRtcDescriptionHandler(MediaConfig())
    try:
        await handler.set_description(Body("application/sdp", CAPTURE["offer"]))
        await handler.get_description()
        handler.sender._ssrc = CAPTURE["our_ssrc"]  # the SSRC Chromium's reports are about
        reports = [p for data in packets("rtcp") for p in RtcpPacket.parse(data)
                   if isinstance(p, RtcpRrPacket) and p.reports]
        for packet in reports:
            await handler.sender._handle_rtcp_packet(packet)
        quality = await handler.stats()
        last = reports[-1].reports[0]
        assert quality.codec == "opus"
        assert quality.remote_packets_lost == last.packets_lost == 0
        assert quality.remote_jitter_ms == pytest.approx(last.jitter * 1000 / 48000)
    finally:
        await handler.close()


def test_keep_extension_ids_renumbers_known_uris_and_gives_new_ones_free_ids():
    previous = "v=0\r\nm=audio 9 RTP/SAVPF 111\r\na=extmap:1 urn:a\r\na=extmap:4/sendrecv urn:mid\r\n"
    offer = "v=0\r\nm=audio 9 RTP/SAVPF 96\r\na=extmap:1 urn:mid\r\na=extmap:2 urn:new\r\na=extmap:3 urn:a x\r\n"
    out = sdpmod.keep_extension_ids(offer, previous)
    assert out.split("\r\n")[2:5] == ["a=extmap:4 urn:mid", "a=extmap:2 urn:new", "a=extmap:1 urn:a x"]
    assert out.startswith("v=0\r\nm=audio 9 RTP/SAVPF 96\r\n") and out.endswith("\r\n")
    assert sdpmod.keep_extension_ids(offer, "v=0\r\n") == offer  # nothing negotiated yet: unchanged
