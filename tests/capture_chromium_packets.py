"""Regenerate tests/data/chromium_rtp/sipjs_chromium_call.json: what Chromium really sends.

Run from the repository root: ``python3 tests/capture_chromium_packets.py`` (needs the
Debian ``kamailio`` and ``chromium`` packages and SIP.js in tests/js, as the browser
tests do). It starts a private Kamailio and one headless Chromium with SIP.js
0.15.11 whose fake microphone plays BROWSER_TONE, lets the browser call our UA,
and records every RTP and RTCP packet our side receives *after* SRTP unprotect
(hooks on the DTLS transport's packet handlers), while:

1. the browser's tone plays (Opus, with Chromium's header extensions),
2. RTCDTMFSender plays DIGITS (RFC 4733 telephone-event),
3. we put the browser on hold, so it only receives and sends RTCP receiver reports.

It keeps Chromium's offer and our answer, our hold re-offer and Chromium's answer to it, the first OPUS_PACKETS Opus packets
after the tone was heard, every telephone-event packet and every RTCP packet.
tests/test_chromium_packets.py feeds them to our parsers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from browser_support import BROWSER_TONE, OurMedia, WebphonePage, media_config, media_user_agent, wait_for
from peers.chromium import Chromium
from peers.kamailio import Kamailio

from softphone.media.description_handler import WebRtcDescriptionHandler

OUT = Path(__file__).resolve().parent / "data" / "chromium_rtp" / "sipjs_chromium_call.json"
DIGITS = "1#"
OPUS_PACKETS = 100
RTCP_SENDER_REPORTS = 2
RTCP_RECEIVER_REPORTS = 2


class Capture:
    """Hooks one handler's DTLS transport and keeps (kind, arrival seconds, bytes)."""

    def __init__(self) -> None:
        self.packets: list[tuple[str, float, bytes]] = []
        self.handler: WebRtcDescriptionHandler | None = None
        self.start = time.monotonic()

    def install(self, handler: WebRtcDescriptionHandler) -> None:
        self.handler = handler
        dtls = handler.receiver.transport
        rtp, rtcp = dtls._handle_rtp_data, dtls._handle_rtcp_data

        def on_rtp(data: bytes, arrival_time_ms: int):
            self.packets.append(("rtp", time.monotonic() - self.start, bytes(data)))
            return rtp(data, arrival_time_ms=arrival_time_ms)

        def on_rtcp(data: bytes):
            self.packets.append(("rtcp", time.monotonic() - self.start, bytes(data)))
            return rtcp(data)

        dtls._handle_rtp_data = on_rtp
        dtls._handle_rtcp_data = on_rtcp

    def rtcp_types(self, since: int = 0) -> list[int]:
        return [data[1] for kind, _, data in self.packets[since:] if kind == "rtcp"]


def payload_type(data: bytes) -> int:
    return data[1] & 0x7F


async def capture(workdir: Path) -> dict:
    kam = Kamailio(workdir / "kamailio")
    (workdir / "kamailio").mkdir()
    (workdir / "chromium").mkdir()
    chromium = Chromium(workdir / "chromium")
    chromium.check()
    kam.start()
    try:
        media = OurMedia(media_config())
        cap = Capture()
        make = media.factory

        def factory(session=None, options=None):
            handler = make(session, options)
            cap.install(handler)
            return handler

        media.factory = factory
        agent = media_user_agent(kam, "1001", media)
        async with WebphonePage(chromium, ext="1002", password=kam.users["1002"], domain=kam.domain,
                                ws=kam.ws_url) as page, agent:
            await page.next_event("registered")
            incoming = asyncio.get_running_loop().create_future()
            agent.once("invite", lambda inv: incoming.done() or incoming.set_result(inv))
            await page.evaluate("window.call('1001')")
            invitation = await asyncio.wait_for(incoming, 30)
            await invitation.wait_established(30)
            handler = cap.handler
            assert handler is not None
            offer, answer = invitation.request.body, handler.local_sdp
            await media.hears(BROWSER_TONE)
            heard_at = len(cap.packets)
            digits: list[str] = []
            handler.on("dtmf", lambda event: digits.append(event.digit))
            await page.evaluate(f"window.insertDTMF('{DIGITS}', 100, 70)")
            await wait_for(lambda: len(digits) >= len(DIGITS), "the digits")
            await wait_for(lambda: cap.rtcp_types().count(200) >= RTCP_SENDER_REPORTS,
                           "Chromium's sender reports", timeout=30)
            await invitation.hold()
            held_at = len(cap.packets)
            await wait_for(lambda: cap.rtcp_types(held_at).count(201) >= RTCP_RECEIVER_REPORTS,
                           "Chromium's receiver reports while we hold it", timeout=30)
            hold_offer, hold_answer = handler.local_sdp, handler.remote_sdp
            our_ssrc = handler.sender._ssrc
            await invitation.bye()
    finally:
        kam.stop()
        chromium.stop_all()
    events_pt = {pt for pt, rate in handler.negotiated_events.items()}
    kept, opus_kept = [], 0
    for index, (kind, at, data) in enumerate(cap.packets):
        keep = kind == "rtcp" or payload_type(data) in events_pt
        if not keep and index >= heard_at and opus_kept < OPUS_PACKETS and index < held_at:
            opus_kept += 1
            keep = True
        if keep:
            kept.append({"kind": kind, "at": round(at, 4), "hex": data.hex()})
    chromium_version = subprocess.run([chromium.binary, "--version"], capture_output=True, text=True).stdout
    return {
        "about": "RTP/RTCP from SIP.js 0.15.11 in headless Chromium, after SRTP unprotect; "
                 "regenerate with tests/capture_chromium_packets.py",
        "chromium": chromium_version.strip().split(" built")[0],
        "sipjs": "0.15.11",
        "browser_tone_hz": BROWSER_TONE,
        "digits": DIGITS,
        "our_ssrc": our_ssrc,
        "telephone_events": {str(pt): rate for pt, rate in handler.negotiated_events.items()},
        "offer": offer,
        "answer": answer,
        "hold_offer": hold_offer,
        "hold_answer": hold_answer,
        "packets": kept,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    out = parser.parse_args().out
    with tempfile.TemporaryDirectory(prefix="chromium-capture-") as tmp:
        result = asyncio.run(capture(Path(tmp)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    kinds = [p["kind"] for p in result["packets"]]
    print(f"wrote {out}: {kinds.count('rtp')} RTP, {kinds.count('rtcp')} RTCP packets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
