"""SIP parser benchmark: parse / serialise rates for a SIP.js-style INVITE with a Chromium offer.

The message is what the Webphone sends (SIP.js 0.15.11 in Chromium): SIP.js 0.15.11
headers and one BUNDLEd audio m-line with host UDP/TCP candidates.  Also times
the digest ``Authorization`` computation for a REGISTER retry.  Rates use this
process's CPU time, so other load on the machine distorts them less.  No asserts:
this measures.

    python bench/sip_parse.py --n 5000

``bench_parse(n)`` returns the figures as a dict for ``bench/sip.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from softphone.sip.digest import DigestChallenge, DigestClient, DigestCredentials  # noqa: E402
from softphone.sip.message import make_response, parse_message  # noqa: E402

CHROMIUM_OFFER = "\r\n".join([
    "v=0",
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
    "s=-",
    "t=0 0",
    "a=group:BUNDLE 0",
    "a=extmap-allow-mixed",
    "a=msid-semantic: WMS 9f1c2a4e-6d3b-4f7a-9a51-0c6a5e2b7d10",
    "m=audio 50742 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126",
    "c=IN IP4 192.0.2.91",
    "a=rtcp:9 IN IP4 0.0.0.0",
    "a=candidate:2999745851 1 udp 2122260223 192.0.2.91 50742 typ host generation 0 network-id 1",
    "a=candidate:1606961068 1 udp 2122194687 10.0.0.12 57395 typ host generation 0 network-id 2",
    "a=candidate:4233069003 1 tcp 1518280447 192.0.2.91 9 typ host tcptype active generation 0 network-id 1",
    "a=candidate:303424348 1 tcp 1518214911 10.0.0.12 9 typ host tcptype active generation 0 network-id 2",
    "a=ice-ufrag:q2Xh",
    "a=ice-pwd:Ay1Xy0b9t9kq5l0wD7mWn0fJ",
    "a=ice-options:trickle",
    "a=fingerprint:sha-256 5C:2F:8E:3A:61:0D:9B:7E:44:12:AA:F0:19:C3:6B:2D:88:71:E5:0C:3F:94:D2:1B:"
    "6A:08:CE:57:B3:40:9D:E1",
    "a=setup:actpass",
    "a=mid:0",
    "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
    "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
    "a=sendrecv",
    "a=msid:9f1c2a4e-6d3b-4f7a-9a51-0c6a5e2b7d10 3b0f7c1e-2a55-4d8e-b6a9-71c4f0e2d913",
    "a=rtcp-mux",
    "a=rtcp-rsize",
    "a=rtpmap:111 opus/48000/2",
    "a=rtcp-fb:111 transport-cc",
    "a=fmtp:111 minptime=10;useinbandfec=1",
    "a=rtpmap:63 red/48000/2",
    "a=fmtp:63 111/111",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:13 CN/8000",
    "a=rtpmap:110 telephone-event/48000",
    "a=rtpmap:126 telephone-event/8000",
    "a=ssrc:3735928559 cname:4TOk42mSjXCkVIa6",
    "a=ssrc:3735928559 msid:9f1c2a4e-6d3b-4f7a-9a51-0c6a5e2b7d10 3b0f7c1e-2a55-4d8e-b6a9-71c4f0e2d913",
    "",
])

INVITE_HEAD = "\r\n".join([
    "INVITE sip:1002@pbx.example.com SIP/2.0",
    "Via: SIP/2.0/WS 192.0.2.244;branch=z9hG4bK3375409",
    "Max-Forwards: 70",
    "To: <sip:1002@pbx.example.com>",
    'From: "Agent 1001" <sip:1001@pbx.example.com>;tag=0sjrg4hr1v',
    "Call-ID: 9fs6om0sjlhvpo7ihmg6",
    "CSeq: 7829 INVITE",
    "Contact: <sip:f72ht0ja@192.0.2.244;transport=ws;ob>",
    "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
    "Supported: outbound",
    "User-Agent: SIP.js/0.15.11",
    "Content-Type: application/sdp",
    f"Content-Length: {len(CHROMIUM_OFFER.encode())}",
    "",
    "",
])
INVITE = INVITE_HEAD + CHROMIUM_OFFER


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def bench_parse(n: int = 5000) -> dict:
    """Parse, serialise and digest rates over ``n`` iterations (messages per second)."""
    text = INVITE
    message = parse_message(text)  # warm-up and sanity: the benchmark message is valid
    assert message.body == CHROMIUM_OFFER

    t0 = time.process_time()
    for _ in range(n):
        parse_message(text)
    parse_s = time.process_time() - t0

    t0 = time.process_time()
    for _ in range(n):
        message.encode()
    encode_s = time.process_time() - t0

    t0 = time.process_time()
    for _ in range(n):
        parse_message(text).encode()
    both_s = time.process_time() - t0

    # The UA's typical receive path: parse, read the fields a transaction needs, answer.
    t0 = time.process_time()
    for _ in range(n):
        m = parse_message(text)
        _ = (m.top_via.branch, m.cseq.seq, m.call_id, m.from_.tag, m.to.tag)
        make_response(m, 180, to_tag="abc").encode()
    answer_s = time.process_time() - t0

    challenge = DigestChallenge.parse('Digest realm="pbx.example.com", nonce="Z2x9bWFk4hN0aWduZXJ2ZXIK", '
                                      'qop="auth", algorithm=MD5')
    client = DigestClient(DigestCredentials("1007", "pw1007"))
    digest_n = max(1, n // 4)
    t0 = time.process_time()
    for _ in range(digest_n):
        client.authorize(challenge, "REGISTER", "sip:pbx.example.com")
    digest_s = time.process_time() - t0

    return {
        "n": n,
        "message_bytes": len(text.encode()),
        "parse_per_s": _rate(n, parse_s),
        "serialise_per_s": _rate(n, encode_s),
        "parse_and_serialise_per_s": _rate(n, both_s),
        "parse_fields_answer_180_per_s": _rate(n, answer_s),
        "parse_us": parse_s / n * 1e6,
        "digest_authorize_per_s": _rate(digest_n, digest_s),
    }


def run(n: int = 5000) -> dict:
    """Run and print (``bench/sip.py`` calls this)."""
    result = bench_parse(n)
    print(f"SIP.js INVITE with Chromium offer: {result['message_bytes']} bytes, n={n}")
    print(f"  parse                    {result['parse_per_s']:>10,.0f} msg/s  ({result['parse_us']:.1f} us each)")
    print(f"  serialise                {result['serialise_per_s']:>10,.0f} msg/s")
    print(f"  parse + serialise        {result['parse_and_serialise_per_s']:>10,.0f} msg/s")
    print(f"  parse + fields + 180     {result['parse_fields_answer_180_per_s']:>10,.0f} msg/s")
    print(f"  digest Authorization     {result['digest_authorize_per_s']:>10,.0f} /s")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=5000, help="iterations per measurement (default 5000)")
    args = parser.parse_args(argv)
    run(args.n)


if __name__ == "__main__":
    main()
