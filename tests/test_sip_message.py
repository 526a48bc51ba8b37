"""SIP message model, parser and serializer: RFC 4475-style torture cases and properties.

The torture messages are written for this suite in the spirit of RFC 4475
section 3.1.1 (valid, must parse) and 3.1.2 (invalid, must be refused with a
reason); hypothesis checks that serialisation is stable and that nothing from
the network raises anything but SipParseError.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from softphone.errors import SipError, SipParseError
from softphone.sip.message import (
    MAX_HEADERS,
    MAX_MESSAGE_BYTES,
    REASON_PHRASES,
    CSeq,
    Headers,
    NameAddr,
    SipRequest,
    SipResponse,
    SipUri,
    Via,
    canonical_name,
    generate_branch,
    generate_call_id,
    generate_tag,
    make_response,
    parse_message,
)

CRLF = "\r\n"


def msg(*lines: str, body: str = "") -> str:
    """A message from header lines joined by CRLF, an empty line, then ``body``."""
    return CRLF.join(lines) + CRLF + CRLF + body


BASE_HEADERS = (
    "Via: SIP/2.0/WS a1b2.invalid;branch=z9hG4bK776asdhds",
    "Max-Forwards: 70",
    "To: Bob <sip:bob@biloxi.example.com>",
    'From: "Alice" <sip:alice@atlanta.example.com>;tag=1928301774',
    "Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
)


def request(method: str = "OPTIONS", uri: str = "sip:bob@biloxi.example.com", *extra: str, body: str = "",
            cseq: str | None = None) -> str:
    return msg(f"{method} {uri} SIP/2.0", *BASE_HEADERS, f"CSeq: {cseq or '314159 ' + method}", *extra,
               body=body)


def reason_of(data: str | bytes) -> SipParseError:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    return info.value


# --- RFC 4475 3.1.1-style valid messages ----------------------------------------------

TORTUOUS = (
    "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
    "TO :\r\n"
    " sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
    "  ;\r\n"
    "  tag = 98asjd8\r\n"
    "MaX-fOrWaRdS: 0068\r\n"
    "Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
    "Content-Length   : 150\r\n"
    "cseq: 0009\r\n"
    "  INVITE\r\n"
    "Via  : SIP  /   2.0\r\n"
    " /UDP\r\n"
    "    192.0.2.2;branch=390skdjuw\r\n"
    "s :\r\n"
    "NewFangledHeader:   newfangled value\r\n"
    " continued newfangled value\r\n"
    "UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    "Content-Type: application/sdp\r\n"
    "Route:\r\n"
    " <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
    "v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n"
    "  branch  =   z9hG4bK9ikj8  ,\r\n"
    " SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n"
    " z9hG4bK30239\r\n"
    'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\r\n'
    "      newvalue ;\r\n"
    "  secondparam ; q = 0.33\r\n"
    "\r\n"
    "v=0\r\n"
    "o=mhandley 29739 7272939 IN IP4 192.0.2.3\r\n"
    "s=-\r\n"
    "c=IN IP4 192.0.2.4\r\n"
    "t=0 0\r\n"
    "m=audio 49217 RTP/AVP 0 12\r\n"
    "m=video 3227 RTP/AVP 31\r\n"
    "a=rtpmap:31 LPC\r\n"
)


def test_short_tortuous_invite_parses():
    m = parse_message(TORTUOUS)
    assert isinstance(m, SipRequest)
    assert m.method == "INVITE"
    assert m.uri.params == {"unknownparam": None}
    assert m.to.tag == "1918181833n"
    assert str(m.to.uri) == "sip:vivekg@chair-dnrc.example.com"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert m.cseq == CSeq(9, "INVITE")
    assert m.call_id == "wsinv.ndaksdj@192.0.2.1"
    vias = m.via
    assert [(v.transport, v.host, v.branch) for v in vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"
    assert m.headers.get_all("Route") == ["<sip:services.example.com;lr;unknownwith=value;unknown-no-value>"]
    (contact,) = m.contact
    assert contact.display_name == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert len(m.body.encode()) == 150
    assert m.body.startswith("v=0\r\n") and m.body.endswith("a=rtpmap:31 LPC\r\n")
    assert m.content_type == "application/sdp"


def test_tortuous_invite_serialises_canonically_and_stably():
    once = parse_message(TORTUOUS).encode()
    text = once.decode()
    assert "\r\nTo: sip:vivekg" in text and "\r\nFrom: " in text and "\r\nCSeq: 0009 INVITE\r\n" in text
    assert "\r\nVia: SIP  /   2.0 /UDP 192.0.2.2;branch=390skdjuw\r\n" in text  # unfolded, verbatim
    assert "\r\nContent-Length: 150\r\n\r\n" in text
    assert "\n " not in text.split("\r\n\r\n")[0]  # no folding left
    assert parse_message(once).encode() == once


def test_wide_range_of_valid_characters():
    data = msg(
        "!interesting-Method0123456789_*+`.%indeed'~ "
        "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
        "@example.com SIP/2.0",
        "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
        'To: "BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f" <sip:1_unusual.URI~(to-be!sure)&isn\'t+it$/crazy?,/;;*'
        "@example.com>",
        "From: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%="
        '"\xd1\x80\xd0\xb0\xd0\xb1\xd0\xbe\xd1\x82\xd0\xb0\xd1\x8e\xd1\x89\xd0\xb8\xd0\xb9";tag=_token~1\'+`*%!-.',
        "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
        "CSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~",
        "Max-Forwards: 255",
        "extensionHeader-!.%*+_`'~: \xef\xbb\xbf\xe5\xa4\xa7\xe5\x81\x9c\xe9\x9b\xbb",
    ).encode("latin-1")
    m = parse_message(data)
    assert m.to.display_name == "BEL:\x07 NUL:\x00 DEL:\x7f"  # control characters as quoted-pairs are legal
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    assert m.uri.user.startswith("1_unusual.URI~(to-be!sure)")
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.from_.display_name == "token1~` token2'+_ token3*%!.-"
    assert m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.params["fromparam''~+*_!.-%"] == '"работающий"'
    assert m.headers.get("extensionHeader-!.%*+_`'~") == "\ufeff大停電"
    assert parse_message(m.encode()).encode() == m.encode()


def test_escaped_uris_keep_their_text_and_compare_unescaped():
    m = parse_message(request(
        "INVITE", "sip:sips%3Auser%40example.com@example.net",
        "Contact: <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
        "Route: <sip:sip.example.net;lr>",
    ).replace("To: Bob <sip:bob@biloxi.example.com>", "To: sip:%61lice@example.com"))
    assert m.uri.user == "sips%3Auser%40example.com"
    assert m.uri.user_unescaped == "sips:user@example.com"
    assert str(m.uri) == "sip:sips%3Auser%40example.com@example.net"
    assert m.to.uri == SipUri.parse("sip:alice@example.com")
    contact = m.contact[0].uri
    assert contact.params == {"%6c%72": None, "n%61me": "v%61lue%25%34%31"}
    assert contact.user_unescaped == "caller"


def test_escaped_null_and_semicolon_in_user_part():
    m = parse_message(request("REGISTER", "sip:example.com",
                              "Contact: <sip:null-%00-null@example.com>"))
    assert m.contact[0].uri.user_unescaped == "null-\x00-null"
    uri = SipUri.parse("sip:user;par=u%40example.net@example.com")
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", {})
    assert str(uri) == "sip:user;par=u%40example.net@example.com"


def test_unknown_uri_schemes_are_kept_opaque():
    m = parse_message(request("OPTIONS", "nobodyKnowsThisScheme:totallyopaquecontent",
                              "Contact: <mailto:bob@example.com>"))
    assert m.uri.scheme == "nobodyknowsthisscheme"
    assert m.uri.opaque == "totallyopaquecontent"
    assert str(m.uri) == "nobodyknowsthisscheme:totallyopaquecontent"
    assert str(m.contact[0].uri) == "mailto:bob@example.com"
    tel = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (tel.scheme, tel.opaque) == ("tel", "+1-201-555-0123;phone-context=example.com")


def test_ipv6_references_everywhere():
    m = parse_message(msg(
        "REGISTER sip:[2001:db8::10]:5070 SIP/2.0",
        "To: sip:user@[2001:db8::10]",
        "From: sip:user@[2001:db8::10];tag=81x2",
        "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111;received=[2001:db8::9:255]",
        "Via: SIP/2.0/WS [::1]:8443;branch=z9hG4bKas3-112;received=2001:db8::9:255;rport=5060",
        "Call-ID: SSG9559905523997077@hlau_4100",
        "Max-Forwards: 70",
        "Contact: \"Caller\" <sip:caller@[2001:db8::1]:5060;transport=ws>",
        "CSeq: 98176 REGISTER",
    ))
    assert (m.uri.host, m.uri.port) == ("[2001:db8::10]", 5070)
    assert m.to.uri.host == "[2001:db8::10]"
    first, second = m.via
    assert first.host == "[2001:db8::9:1]" and first.port is None
    assert first.received == "[2001:db8::9:255]"
    assert (second.host, second.port, second.received, second.rport) == ("[::1]", 8443, "2001:db8::9:255", 5060)
    assert str(m.contact[0].uri) == "sip:caller@[2001:db8::1]:5060;transport=ws"


def test_percent_in_method_and_header_names_is_not_an_escape():
    m = parse_message(msg(
        "RE%47IST%45R sip:registrar.example.com SIP/2.0",
        'To: "%Z%45" <sip:resource@example.com>',
        'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
        "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
        "Via: SIP/2.0/TCP host.example.com;rport;branch=z9hG4bK209%fzsnel234",
        "CSeq: 29344 RE%47IST%45R",
        "Max-Forwards: 70",
        "Contact: <sip:alias1@host1.example.com>",
        "C%6Fntact: <sip:alias2@host2.example.com>",
        "Contact: <sip:alias3@host3.example.com>",
        "l: 0",
    ))
    assert m.method == "RE%47IST%45R" and m.method != "REGISTER"
    assert m.to.display_name == "%Z%45"
    assert [str(c.uri) for c in m.contact] == ["sip:alias1@host1.example.com", "sip:alias3@host3.example.com"]
    assert m.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"
    assert m.top_via.branch == "z9hG4bK209%fzsnel234"


def test_no_space_before_angle_unknown_transports_and_rfc2543_style():
    m = parse_message(msg(
        "INVITE sip:user@example.com SIP/2.0",
        "To: sip:j_user@example.com",
        "From: caller<sip:caller@example.com>;tag=323",
        "Max-Forwards: 70",
        "Call-ID: lwsdisp.1234abcd@funky.example.com",
        "CSeq: 60 INVITE",
        "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
        "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
        "Via: SIP/2.0/TLS-SCTP t3.example.com;branch=z9hG4bK2980unddj",
        "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
        "Via: SIP/2.0/TCP t5.example.com",
        "Contact: <sip:user@example.com?Route=%3Csip:sip.example.com%3E>",
        "Authorization: NoOneKnowsThisScheme opaque-data=here",
        "Date: Fri, 01 Jan 2010 16:00:00 EST",
        "Content-Type: application/unknownformat",
    ))
    assert m.from_.display_name == "caller" and m.from_.tag == "323"
    assert m.to.tag is None  # RFC 2543 style: no tags, no branch
    assert [v.transport for v in m.via] == ["UDP", "SCTP", "TLS-SCTP", "UNKNOWN", "TCP"]
    assert m.via[-1].branch is None
    assert m.contact[0].uri.headers == {"Route": "%3Csip:sip.example.com%3E"}
    assert m.headers.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def test_sipjs_register_from_peers_md():
    m = parse_message(msg(
        "REGISTER sip:pbx.example.com SIP/2.0",
        "Via: SIP/2.0/WS 192.0.2.91;branch=z9hG4bK1167274",
        "To: <sip:1007@pbx.example.com>",
        "From: <sip:1007@pbx.example.com>;tag=4hs3cp7nqa",
        "CSeq: 6144 REGISTER",
        "Call-ID: 6s70l43qj5v50gula5jek1",
        "Max-Forwards: 70",
        "Contact: <sip:u865kl0i@192.0.2.91;transport=ws>;expires=600",
        "Allow: ACK,CANCEL,INVITE,MESSAGE,BYE,OPTIONS,INFO,NOTIFY,REFER",
        "Supported: outbound, path, gruu",
        "User-Agent: SIP.js/0.15.11",
        "Content-Length: 0",
    ))
    assert m.headers.get_all("Allow") == ["ACK", "CANCEL", "INVITE", "MESSAGE", "BYE", "OPTIONS", "INFO", "NOTIFY",
                                          "REFER"]
    assert m.contact[0].params == {"expires": "600"} and m.contact[0].uri.transport == "ws"
    assert (m.cseq.seq, m.max_forwards, m.expires, m.body) == (6144, 70, None, "")


def test_compact_forms_leading_crlf_and_lf_only_line_ends():
    text = (
        "\r\n\r\n\nMESSAGE sip:bob@example.com SIP/2.0\n"
        "v: SIP/2.0/WSS df7jal23ls0d.invalid;rport;branch=z9hG4bKxyz\n"
        "f: <sip:alice@example.com>;tag=abc\n"
        "t: <sip:bob@example.com>\n"
        "i: 1234@host\n"
        "CSeq: 1 MESSAGE\n"
        "c: text/plain\n"
        "k: path, outbound\n"
        "o: presence\n"
        "u: presence, dialog\n"
        "e: gzip\n"
        "s: hello\n"
        "m: *\n"
        "l: 5\n"
        "\n"
        "hello world"
    )
    m = parse_message(text)
    assert m.top_via.transport == "WSS" and m.top_via.has_rport and m.top_via.rport is None
    names = [name for name, _ in m.headers]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq", "Content-Type", "Supported", "Event",
                     "Allow-Events", "Content-Encoding", "Subject", "Contact", "Content-Length"]
    assert m.headers.get_all("Supported") == ["path", "outbound"]
    assert m.contact_wildcard and m.contact == []
    assert m.body == "hello"  # Content-Length shorter than the frame truncates (RFC 3261 18.3)


def test_missing_content_length_means_rest_of_frame_and_counts_utf8_bytes():
    body = "Grüße, 世界\r\n"
    m = parse_message(request("MESSAGE", "sip:bob@example.com", "Content-Type: text/plain", body=body))
    assert m.body == body
    wire = m.encode()
    assert f"Content-Length: {len(body.encode())}\r\n".encode() in wire
    assert wire.endswith(body.encode())
    assert parse_message(wire).body == body


def test_content_length_header_is_recomputed_on_serialisation():
    m = parse_message(request("INFO", "sip:bob@example.com", "Content-Length: 3", body="abc"))
    m.body = "longer body"
    wire = m.encode().decode()
    assert wire.count("Content-Length") == 1 and "Content-Length: 11\r\n" in wire


def test_response_parsing_and_reason_phrases():
    m = parse_message(msg("SIP/2.0 180 Ringing, with spaces, ünïcode", *BASE_HEADERS, "CSeq: 1 INVITE"))
    assert isinstance(m, SipResponse)
    assert (m.status, m.reason) == (180, "Ringing, with spaces, ünïcode")
    empty = parse_message(msg("SIP/2.0 200 ", *BASE_HEADERS, "CSeq: 1 INVITE"))
    assert (empty.status, empty.reason) == (200, "")
    assert SipResponse(486).reason == "Busy Here" == REASON_PHRASES[486]
    assert SipResponse(299).reason == ""


def test_unknown_method_and_headers_survive_round_trip():
    m = parse_message(request("NEWMETHOD", "sip:bob@example.com", "X-Custom-Header: a, b, \"c,d\"",
                              "P-Weird: <sip:x@y>;a=\"b;c\""))
    assert m.method == "NEWMETHOD" and m.cseq.method == "NEWMETHOD"
    assert m.headers.get("x-custom-header") == 'a, b, "c,d"'
    assert m.headers.get_all("X-Custom-Header") == ['a, b, "c,d"']  # unknown: never split
    assert "X-Custom-Header: a, b, \"c,d\"\r\n" in str(m)


def test_long_values_and_many_vias():
    long_user = "a" * 5000
    vias = [f"Via: SIP/2.0/WS h{i}.invalid;branch=z9hG4bK{i}" for i in range(60)]
    data = msg(f"OPTIONS sip:{long_user}@example.com SIP/2.0", *vias, *BASE_HEADERS[1:],
               "CSeq: 1 OPTIONS", "X-Long: " + "x" * 20000)
    m = parse_message(data)
    assert len(m.via) == 60 and m.via[-1].branch == "z9hG4bK59"
    assert m.uri.user == long_user


# --- RFC 4475 3.1.2-style invalid messages ------------------------------------------------

INVALID = {
    "content length larger than body": (
        request("INVITE", "sip:bob@example.com", "Content-Length: 9999", body="v=0\r\n"),
        "Content-Length 9999 is larger"),
    "negative content length": (
        request("INVITE", "sip:bob@example.com", "Content-Length: -999", body="v=0\r\n"), "bad Content-Length"),
    "overlarge CSeq": (request(cseq="36893488147419103232 OPTIONS"), "bad CSeq header"),
    "overlarge Max-Forwards": (request("OPTIONS", "sip:b@example.com", "Max-Forwards: 300")
                               .replace("Max-Forwards: 70\r\n", ""), "Max-Forwards"),
    "overlarge Expires": (request("REGISTER", "sip:example.com", "Expires: 10000000000000"), "bad Expires"),
    "overlarge response code": (msg("SIP/2.0 4294967301 better not break the receiver", *BASE_HEADERS,
                                    "CSeq: 1 INVITE"), "bad status code"),
    "status code out of range": (msg("SIP/2.0 099 Early", *BASE_HEADERS, "CSeq: 1 INVITE"), "out of range"),
    "unterminated quoted display name": (
        request().replace('From: "Alice" <', 'From: "Mr. J. User <'), "unterminated quoted string"),
    "<> around the Request-URI": (request("INVITE", "<sip:user@example.com>"), "bad Request-URI"),
    "LWS inside the Request-URI": (request("INVITE", "sip:user@example.com; lr"), "bad request line"),
    "multiple SP in the request line": (request("INVITE", " sip:user@example.com "), "bad request line"),
    "trailing SP on the request line": (request().replace("SIP/2.0\r\n", "SIP/2.0 \r\n", 1), "bad request line"),
    "escaped headers in the Request-URI": (
        request("INVITE", "sip:user@example.com?Route=%3Csip:example.com%3E"), "must not contain headers"),
    "name-addr URI with ? not in <>": (
        request("REGISTER", "sip:example.com", "Contact: sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
        "must be enclosed in <>"),
    "space inside addr-spec": (request().replace("<sip:bob@biloxi.example.com>", "<sip:bob@ biloxi.example.com>"),
                               "bad To header"),
    "non-token characters in display name": (
        request().replace('"Alice" <', "Bell, Alexander <"), "display name"),
    "unknown protocol version": (request().replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1), "unsupported SIP version"),
    "CSeq method mismatch": (request("OPTIONS", cseq="1 INVITE"), "does not match request method OPTIONS"),
    "unknown method with CSeq mismatch": (request("NEWMETHOD", cseq="1 OTHERMETHOD"), "does not match"),
    "multiple Call-ID values": (request("OPTIONS", "sip:b@example.com", "Call-ID: other@host"),
                                "more than one Call-ID header"),
    "two To values on one line": (request().replace("To: Bob <sip:bob@biloxi.example.com>",
                                                    "To: <sip:a@example.com>, <sip:b@example.com>"), "bad To header"),
    "missing Call-ID": (request().replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", ""),
                        "missing mandatory header: Call-ID"),
    "missing Via": (request().replace("Via: SIP/2.0/WS a1b2.invalid;branch=z9hG4bK776asdhds\r\n", ""),
                    "missing mandatory header: Via"),
    "bad Via": (request().replace("SIP/2.0/WS a1b2.invalid", "SIP/2.0 a1b2.invalid"), "bad Via header"),
    "bad CSeq": (request(cseq="abc OPTIONS"), "bad CSeq header: 'abc OPTIONS'"),
    "header line without colon": (request("OPTIONS", "sip:b@example.com", "NoColonHere"), "without a colon"),
    "bad header name": (request("OPTIONS", "sip:b@example.com", "Bad Name: x"), "bad header name"),
    "no empty line after headers": (request().rstrip("\r\n"), "no empty line"),
    "bad port": (request("OPTIONS", "sip:bob@example.com:70000"), "out of range"),
    "bad escape in user": (request("OPTIONS", "sip:b%zzob@example.com"), "bad %-escape"),
    "unterminated IPv6": (request("OPTIONS", "sip:bob@[2001:db8::1"), "IPv6"),
    "control character in a header": (request("OPTIONS", "sip:b@example.com", "X-Bad: a\x00b"), "control character"),
    "empty URI parameter": (request("OPTIONS", "sip:bob@example.com;;lr"), "empty URI parameter"),
    "bad Call-ID": (request().replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com",
                                      "Call-ID: has space"), "bad Call-ID"),
    "wildcard mixed with addresses": (request("REGISTER", "sip:example.com", "Contact: *, <sip:a@b>"),
                                      "'*' mixed"),
    "continuation before first header": (request().replace("\r\nVia:", "\r\n Via:", 1), "continuation line"),
    "empty message": ("\r\n\r\n", "empty message"),
    "extraneous separators in Via": (request().replace("branch=z9hG4bK776asdhds", "branch=z9hG4bK776asdhds;;,;,,"),
                                     "bad Via header"),
    "spaces inside <> around the URI": (
        request().replace("Bob <sip:bob@biloxi.example.com>", '"Watson, Thomas" < sip:t.watson@example.org >'),
        "bad To header"),
    "multiple Content-Length values": (
        request("MESSAGE", "sip:b@example.com", "Content-Length: 3", "l: 3", body="abc"),
        "more than one Content-Length header"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_messages_are_refused_with_a_reason(case):
    data, expected = INVALID[case]
    error = reason_of(data)
    assert expected in error.reason, error.reason


def test_bad_request_carries_a_partial_request_to_answer_400():
    error = reason_of(request("INVITE", "<sip:user@example.com>"))
    assert isinstance(error.partial, SipRequest) and error.partial.method == "INVITE"
    reply = make_response(error.partial, 400, f"Bad Request ({error.reason})")
    reparsed = parse_message(reply.encode())
    assert reparsed.status == 400 and "bad Request-URI" in reparsed.reason
    assert reparsed.call_id == "a84b4c76e66710@pc33.atlanta.example.com"
    assert reparsed.top_via.branch == "z9hG4bK776asdhds"


def test_partial_only_for_requests_with_a_via():
    no_via = request().replace("Via: SIP/2.0/WS a1b2.invalid;branch=z9hG4bK776asdhds\r\n", "")
    assert reason_of(no_via.replace("CSeq: 314159 OPTIONS", "CSeq: x")).partial is None
    response = msg("SIP/2.0 200 OK", *BASE_HEADERS, "CSeq: bogus")
    assert reason_of(response).partial is None
    missing_call_id = request().replace("Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n", "")
    assert reason_of(missing_call_id).partial.method == "OPTIONS"


@pytest.mark.parametrize("bad_line,reason", [
    ("NoColonHere", "header line without a colon"),
    ("Bad Name: x", "bad header name"),
    ("X-Ctl: a\x01b", "control character in X-Ctl header"),
])
def test_bad_header_lines_still_give_an_answerable_partial(bad_line, reason):
    text = msg("INFO sip:b@example.com SIP/2.0", bad_line, *BASE_HEADERS, "CSeq: 5 INFO")
    error = reason_of(text)
    assert reason in error.reason
    partial = error.partial
    assert partial.call_id == "a84b4c76e66710@pc33.atlanta.example.com" and partial.cseq == CSeq(5, "INFO")
    answer = parse_message(make_response(partial, 400, f"Bad Request ({error.reason})", to_tag="x").encode())
    assert answer.status == 400 and answer.to.tag == "x" and answer.top_via.branch == "z9hG4bK776asdhds"


def test_parse_errors_do_not_quote_a_mangled_authorization_line():
    text = request("REGISTER", "sip:example.com",
                   'Authorization Digest username="u", response="6629fae49393a05397450978507c4ef1"')
    error = reason_of(text)
    assert "header line without a colon: 'Authorization'" in error.reason
    assert "6629fae4" not in error.reason


def test_size_caps_give_clear_errors():
    huge = request("MESSAGE", "sip:b@example.com", body="x" * MAX_MESSAGE_BYTES)
    assert "exceeds the 65536-byte limit" in reason_of(huge).reason
    assert "exceeds the 65536-byte limit" in reason_of(huge.encode()).reason
    many = request("OPTIONS", "sip:b@example.com", *[f"X-H{i}: v" for i in range(MAX_HEADERS + 1)])
    assert f"more than {MAX_HEADERS} headers" in reason_of(many).reason


def test_invalid_utf8_and_wrong_types_are_parse_errors():
    assert "not valid UTF-8" in reason_of(request().encode().replace(b"Alice", b"Al\xffice")).reason
    assert "cannot parse" in reason_of(12345).reason  # type: ignore[arg-type]
    assert "not encodable" in reason_of("OPTIONS sip:a@b SIP/2.0\r\nX: \ud800\r\n\r\n").reason


def test_binary_body_round_trips_byte_exact():
    body = bytes(range(256))
    head = request("MESSAGE", "sip:b@example.com", "Content-Type: application/octet-stream",
                   f"Content-Length: {len(body)}").encode()
    m = parse_message(head + body)
    assert m.encode().endswith(body)
    assert f"Content-Length: {len(body)}".encode() in m.encode()


def test_pathological_inputs_are_linear():
    # Each is close to the size cap; a quadratic parser would take minutes (pytest-timeout guards).
    quotes = request("OPTIONS", "sip:b@example.com", "Contact: " + '"\\' * 20000)
    assert reason_of(quotes)
    commas = request("OPTIONS", "sip:b@example.com", "Via: " + "," * 60000)
    assert parse_message(commas).via  # empty list elements are dropped
    angles = request("OPTIONS", "sip:b@example.com", "Route: " + "<" * 60000)
    assert "unterminated" in reason_of(angles).reason
    semis = request("OPTIONS", "sip:b@example.com" + ";a" * 20000)
    assert len(parse_message(semis).uri.params) == 1
    folds = request("OPTIONS", "sip:b@example.com", "X-Fold: a" + "\r\n b" * 9000)
    assert parse_message(folds).headers.get("X-Fold").count("b") == 9000


# --- Headers --------------------------------------------------------------------------------


def test_canonical_names_and_compact_forms():
    pairs = {"i": "Call-ID", "m": "Contact", "v": "Via", "f": "From", "t": "To", "l": "Content-Length",
             "c": "Content-Type", "k": "Supported", "s": "Subject", "e": "Content-Encoding", "o": "Event",
             "u": "Allow-Events", "CALL-ID": "Call-ID", "cseq": "CSeq", "www-authenticate": "WWW-Authenticate",
             "X-Unknown-Thing": "X-Unknown-Thing"}
    for name, canonical in pairs.items():
        assert canonical_name(name) == canonical


def test_headers_multimap_operations():
    h = Headers([("v", "SIP/2.0/WS a;branch=z9hG4bK1"), ("To", "<sip:a@b>")])
    h.add("via", "SIP/2.0/WS b;branch=z9hG4bK2, SIP/2.0/WS c;branch=z9hG4bK3")
    h.prepend("Via", "SIP/2.0/WS top;branch=z9hG4bK0")
    assert [n for n, _ in h] == ["Via", "Via", "To", "Via"]
    assert [Via.parse(v).host for v in h.get_all("VIA")] == ["top", "a", "b", "c"]
    assert h.get("Via") == "SIP/2.0/WS top;branch=z9hG4bK0"
    assert "t" in h and "Route" not in h and 3 not in h
    copy = h.copy()
    h.set("via", "SIP/2.0/WS only;branch=z9hG4bK9")
    assert h.get_all("Via") == ["SIP/2.0/WS only;branch=z9hG4bK9"] and [n for n, _ in h] == ["Via", "To"]
    assert len(copy.get_all("Via")) == 4  # the copy is independent
    h.remove("v")
    assert "Via" not in h and h.get("Via", "dflt") == "dflt"
    h.set("X-New", "1")
    assert list(h)[-1] == ("X-New", "1")


def test_list_splitting_respects_quotes_and_angle_brackets():
    h = Headers()
    h.add("Contact", '"Doe, John" <sip:j@x;a=b,c>;q=0.5, <sip:k@y>, "quote \\" , inside" <sip:l@z>')
    h.add("WWW-Authenticate", 'Digest realm="a, b", nonce="n", qop="auth,auth-int"')
    h.add("Date", "Sat, 13 Nov 2010 23:29:00 GMT")
    contacts = h.get_all("Contact")
    assert len(contacts) == 3 and contacts[0].startswith('"Doe, John"') and contacts[2].endswith("<sip:l@z>")
    assert len(h.get_all("WWW-Authenticate")) == 1
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_header_injection_is_refused():
    h = Headers()
    with pytest.raises(SipError, match="line break"):
        h.add("Subject", "hi\r\nVia: evil")
    with pytest.raises(SipError, match="invalid SIP header name"):
        h.add("Bad Name", "x")
    req = parse_message(request())
    with pytest.raises(SipError, match="line break in start line"):
        make_response(req, 400, "Bad\r\nVia: evil").encode()
    with pytest.raises(SipError, match="line break in start line"):
        SipRequest("OPTIONS", SipUri(host="a\r\nb"), req.headers).encode()


# --- URIs, addresses, Via, CSeq -------------------------------------------------------------


@pytest.mark.parametrize("a,b", [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
     "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com"),
    ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
     "sip:alice@atlanta.com?priority=urgent&subject=project%20x"),
])
def test_uri_equality_rfc3261_equal(a, b):
    assert SipUri.parse(a) == SipUri.parse(b)
    assert hash(SipUri.parse(a)) == hash(SipUri.parse(b))


@pytest.mark.parametrize("a,b", [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
])
def test_uri_equality_rfc3261_different(a, b):
    assert SipUri.parse(a) != SipUri.parse(b)


def test_uri_parts_round_trip_and_password_hidden_in_repr():
    uri = SipUri.parse("sips:user:s3cret@Example.COM:05061;Transport=WS;lr;maddr=[::1]?h=v&x=y")
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == ("sips", "user", "s3cret", "Example.COM", 5061)
    assert uri.params == {"transport": "WS", "lr": None, "maddr": "[::1]"} and uri.transport == "ws"
    assert uri.headers == {"h": "v", "x": "y"}
    assert str(uri) == "sips:user:s3cret@Example.COM:5061;transport=WS;lr;maddr=[::1]?h=v&x=y"
    assert "s3cret" not in repr(uri)
    copy = uri.copy()
    copy.params["lr"] = "x"
    assert uri.params["lr"] is None


@pytest.mark.parametrize("text", ["", "sip:", "sip:@host", "bob@host", "sip:bob@", "sip:bob@host:", "sip:bob@host:x",
                                  "sip:bob@ho st", "sip:bob@host;=v", "sip:bob@host?novalue", "1sip:x@y",
                                  "sip:bob@[::1", "sip:bob@[zz::1]", "sip:b<o>b@host"])
def test_bad_uris(text):
    with pytest.raises(SipParseError):
        SipUri.parse(text)


def test_name_addr_forms():
    a = NameAddr.parse('  "Bob \\"the\\" Builder"   <sip:bob@example.com;transport=ws> ;tag=abc;+sip.instance="<urn:x>"')
    assert a.display_name == 'Bob "the" Builder' and a.tag == "abc"
    assert a.params["+sip.instance"] == '"<urn:x>"'
    assert str(a) == '"Bob \\"the\\" Builder" <sip:bob@example.com;transport=ws>;tag=abc;+sip.instance="<urn:x>"'
    bare = NameAddr.parse("sip:bob@example.com;tag=xyz;expires=60")
    assert bare.uri.params == {} and bare.params == {"tag": "xyz", "expires": "60"}
    assert str(bare) == "<sip:bob@example.com>;tag=xyz;expires=60"
    tokens = NameAddr.parse("Bob   Smith <sip:bob@example.com>")
    assert tokens.display_name == "Bob Smith"
    empty = NameAddr.parse('"" <sip:x@y>')
    assert empty.display_name == "" and str(empty) == '"" <sip:x@y>'
    bare.tag = "new"
    assert bare.tag == "new"
    bare.tag = None
    assert "tag" not in bare.params
    assert NameAddr.parse(str(a)) == a
    for bad in ("*", "", '"unterminated <sip:x@y>', "<sip:x@y", "<sip:x@y> trailing", '"x" sip:x@y'):
        with pytest.raises(SipParseError):
            NameAddr.parse(bad)


def test_via_forms():
    via = Via.parse("SIP / 2.0 / ws  host.invalid : 05060 ; branch = z9hG4bK1 ; rport ; received=1.2.3.4 (comment)")
    assert (via.protocol, via.transport, via.host, via.port) == ("SIP/2.0", "WS", "host.invalid", 5060)
    assert via.branch == "z9hG4bK1" and via.has_rport and via.rport is None and via.received == "1.2.3.4"
    assert str(via) == "SIP/2.0/WS host.invalid:5060;branch=z9hG4bK1;rport;received=1.2.3.4"
    via.branch = "z9hG4bK2"
    via.received = None
    assert str(via) == "SIP/2.0/WS host.invalid:5060;branch=z9hG4bK2;rport"
    assert Via("WS", "x.invalid", params={"branch": "z9hG4bKa"}) == Via.parse("SIP/2.0/WS x.invalid;branch=z9hG4bKa")
    for bad in ("SIP/2.0/WS", "SIP/2.0 host", "SIP/2.0/WS host:99999", "SIP/2.0/WS host junk", "SIP/2.0/WShost"):
        with pytest.raises(SipParseError):
            Via.parse(bad)


def test_cseq_forms():
    assert CSeq.parse("  0001   INVITE ") == CSeq(1, "INVITE")
    assert str(CSeq(2147483647, "BYE")) == "2147483647 BYE"
    for bad in ("", "1", "INVITE 1", "-1 INVITE", "2147483648 INVITE", "1 IN VITE", "１ INVITE"):
        with pytest.raises(SipParseError, match="bad CSeq header"):
            CSeq.parse(bad)


# --- building messages ---------------------------------------------------------------------


def test_make_response_per_rfc3261_8_2_6():
    req = parse_message(msg(
        "INVITE sip:bob@example.com SIP/2.0",
        "Via: SIP/2.0/WS first.invalid;branch=z9hG4bKa, SIP/2.0/WS second.invalid;branch=z9hG4bKb",
        "Record-Route: <sip:proxy1;lr>",
        "Via: SIP/2.0/WS third.invalid;branch=z9hG4bKc",
        "Record-Route: <sip:proxy2;lr>",
        *BASE_HEADERS[1:],
        "CSeq: 7 INVITE",
        "Contact: <sip:alice@pc.invalid;transport=ws>",
    ))
    trying = make_response(req, 100)
    assert trying.reason == "Trying" and trying.to.tag is None
    assert "Record-Route" not in trying.headers
    ringing = make_response(req, 180, to_tag="t1")
    assert ringing.to.tag == "t1" and [v.branch for v in ringing.via] == ["z9hG4bKa", "z9hG4bKb", "z9hG4bKc"]
    assert ringing.headers.get_all("Record-Route") == ["<sip:proxy1;lr>", "<sip:proxy2;lr>"]
    ok = make_response(req, 200, "Fine", to_tag="t1", headers=[("Contact", "<sip:bob@x.invalid>")],
                       body="v=0\r\n")
    wire = parse_message(ok.encode())
    assert (wire.status, wire.reason, wire.content_type) == (200, "Fine", "application/sdp")
    assert wire.cseq == CSeq(7, "INVITE") and wire.call_id == req.call_id
    assert wire.from_.tag == "1928301774" and wire.body == "v=0\r\n"
    assert "Contact" not in make_response(req, 486).headers
    assert "Record-Route" not in make_response(req, 486).headers
    tagged = make_response(ringing_request := parse_message(ringing.encode().replace(b"SIP/2.0 180 Ringing",
                                                                                    b"BYE sip:x@y SIP/2.0")
                                                              .replace(b"7 INVITE", b"8 BYE")), 200, to_tag="t2")
    assert ringing_request.to.tag == "t1" and tagged.to.tag == "t1"  # an existing To tag is kept
    info = make_response(req, 200, body="x", content_type="text/plain")
    assert info.content_type == "text/plain"


def test_building_requests_and_generators():
    headers = Headers()
    headers.add("Via", f"SIP/2.0/WS x.invalid;branch={generate_branch()}")
    headers.add("From", f"<sip:a@b>;tag={generate_tag()}")
    headers.add("To", "<sip:c@d>")
    headers.add("Call-ID", generate_call_id())
    headers.add("CSeq", str(CSeq(1, "OPTIONS")))
    req = SipRequest("OPTIONS", "sip:c@d", headers)
    again = parse_message(req.encode())
    assert again.top_via.branch.startswith("z9hG4bK") and len(again.top_via.branch) > 16
    assert again.from_.tag and again.call_id == req.call_id
    assert len({generate_branch() for _ in range(100)}) == 100
    assert len({generate_call_id() for _ in range(100)}) == 100
    assert "Content-Length: 0\r\n\r\n" in str(req)


# --- properties ---------------------------------------------------------------------------------

_token = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1, max_size=12)
_label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)
_host = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.lists(st.text("0123456789abcdef", min_size=1, max_size=4), min_size=2, max_size=8)
    .map(lambda parts: "[" + ":".join(parts) + "]"),
)
_user = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789-_.!~*'()&=+$,;?/", min_size=1, max_size=15) | \
    st.binary(min_size=1, max_size=6).map(lambda b: "".join(f"%{c:02X}" for c in b))
_uri = st.builds(
    lambda scheme, user, host, port, params: f"{scheme}:{user + '@' if user else ''}{host}"
    f"{':' + str(port) if port is not None else ''}" + "".join(f";{k}" if v is None else f";{k}={v}"
                                                               for k, v in params),
    st.sampled_from(["sip", "sips", "SIP"]), st.none() | _user, _host, st.none() | st.integers(0, 65535),
    st.lists(st.tuples(_label, st.none() | _label), max_size=3),
)
_display = st.none() | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12)
_ws_before = st.sampled_from(["", " ", "  ", "\t"])
_ws_after = st.sampled_from(["", " ", "  ", "\t", " \r\n "])


def _addr(display, uri, tag):
    name = ""
    if display is not None:  # quoted-pairs for quote, backslash and controls (RFC 3261 25.1)
        name = '"' + "".join("\\" + c if c in '"\\' or ord(c) < 32 or c == "\x7f" else c for c in display) + '" '
    return f"{name}<{uri}>" + (f";tag={tag}" if tag else "")


@st.composite
def sip_messages(draw, response: bool | None = None):
    method = draw(st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "REGISTER", "INFO", "NEWMETHOD"]))
    is_response = draw(st.booleans()) if response is None else response
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    before, after = draw(_ws_before), draw(_ws_after)
    vias = draw(st.lists(st.builds(
        lambda t, h, p, b: f"SIP/2.0/{t} {h}{':' + str(p) if p else ''};branch=z9hG4bK{b}",
        st.sampled_from(["WS", "WSS", "UDP", "tcp"]), _host, st.none() | st.integers(1, 65535), _label),
        min_size=1, max_size=3))
    headers = [
        (draw(st.sampled_from(["Via", "v", "VIA"])), ", ".join(vias)),
        (draw(st.sampled_from(["From", "f"])), _addr(draw(_display), draw(_uri), draw(_token))),
        (draw(st.sampled_from(["To", "t"])), _addr(draw(_display), draw(_uri), draw(st.none() | _token))),
        (draw(st.sampled_from(["Call-ID", "i"])), draw(_token) + "@" + draw(_label)),
        ("CSeq", f"{draw(st.integers(0, 2**31 - 1))} {method}"),
    ]
    extras = draw(st.lists(st.tuples(
        st.sampled_from(["X-Extra", "Subject", "User-Agent", "Allow", "Supported"]),
        st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(str.strip)), max_size=4))
    if draw(st.booleans()):
        extras.append(("Contact", _addr(draw(_display), draw(_uri), None) + ";expires=60"))
    if draw(st.booleans()):
        extras.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    headers += extras
    order = draw(st.permutations(range(len(headers))))
    body = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
    start = (f"SIP/2.0 {draw(st.integers(100, 699))} {draw(st.sampled_from(['OK', 'Ringing', 'Über', '']))}"
             if is_response else f"{method} {draw(_uri)} SIP/2.0")
    lines = [start] + [f"{headers[i][0]}{before}:{after}{headers[i][1]}" for i in order]
    if draw(st.booleans()):
        lines.append(f"Content-Length: {len(body.encode())}")
    return eol.join(lines) + eol + eol + body


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sip_messages())
def test_serialisation_is_stable(text):
    first = parse_message(text)
    once = first.encode()
    second = parse_message(once)
    assert second.encode() == once
    assert second.call_id == first.call_id and second.cseq == first.cseq
    assert [v.branch for v in second.via] == [v.branch for v in first.via]
    assert second.from_ == first.from_ and second.to.tag == first.to.tag
    assert second.body == first.body


def _only_parse_errors(data):
    try:
        message = parse_message(data)
    except SipParseError as exc:
        assert exc.reason
        return None
    # Whatever parsed must serialise and parse back the same, accessors included.
    wire = message.encode()
    assert parse_message(wire).encode() == wire
    for name in ("call_id", "cseq", "from_", "to", "via", "top_via", "contact", "max_forwards", "expires"):
        try:
            getattr(message, name)
        except SipParseError:
            pass
    return message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_parse_errors(data):
    _only_parse_errors(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=1024))
def test_random_text_raises_only_parse_errors(text):
    _only_parse_errors(text)


_MUTATION_BASE = (TORTUOUS.encode(),
                  request("REGISTER", "sip:example.com", "Contact: <sip:a@[::1]:5060;transport=ws>;expires=60",
                          "Authorization: Digest username=\"a\", realm=\"b\", nonce=\"c\"").encode())


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(_MUTATION_BASE)))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from([b"\r\n", b" ", b":", b";", b",", b"<", b">", b'"', b"\\",
                                                  b"%", b"@", b"[", b"\x00", b"\xff", b"\r\n ", b"=", b"?"]))
        elif data:
            del data[pos:pos + draw(st.integers(1, 20))]
    return bytes(data)


@settings(max_examples=250, deadline=None)
@given(mutated())
def test_mutated_messages_raise_only_parse_errors(data):
    _only_parse_errors(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sip_messages(response=False), st.integers(100, 699), st.none() | _label)
def test_make_response_to_any_request(text, status, tag):
    req = parse_message(text)
    back = parse_message(make_response(req, status, to_tag=tag).encode())
    assert isinstance(back, SipResponse) and back.status == status
    assert back.reason == REASON_PHRASES.get(status, "")
    assert back.call_id == req.call_id and back.cseq == req.cseq and back.from_ == req.from_
    assert [str(v) for v in back.via] == [str(v) for v in req.via]
    if tag and status > 100 and req.to.tag is None:
        assert back.to.tag == tag
    else:
        assert back.to.tag == req.to.tag


_header_names = st.sampled_from(["Via", "v", "VIA", "To", "t", "X-A", "x-a", "Contact", "m"])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "prepend", "set", "remove"]), _header_names,
                          st.text("ab ,\"<>", max_size=6)), max_size=20))
def test_headers_behave_like_an_ordered_list(ops):
    headers = Headers()
    model: list[tuple[str, str]] = []
    for op, name, value in ops:
        key = canonical_name(name).lower()
        getattr(headers, op)(*((name,) if op == "remove" else (name, value)))
        if op == "add":
            model.append((key, value))
        elif op == "prepend":
            model.insert(0, (key, value))
        elif op == "remove":
            model = [item for item in model if item[0] != key]
        else:
            first = next((i for i, item in enumerate(model) if item[0] == key), None)
            model = [item for item in model if item[0] != key]
            model.insert(len(model) if first is None else first, (key, value))
    assert [(canonical_name(n).lower(), v) for n, v in headers] == model
    for name in ("via", "To", "x-A", "contact"):
        key = canonical_name(name).lower()
        assert headers.get(name) == next((v for k, v in model if k == key), None)
        assert (name in headers) == any(k == key for k, _ in model)
    assert headers.copy() == headers


@settings(max_examples=150, deadline=None)
@given(_uri, _display, st.none() | _token)
def test_uri_and_name_addr_round_trip(uri_text, display, tag):
    uri = SipUri.parse(uri_text)
    again = SipUri.parse(str(uri))
    assert again == uri and str(again) == str(uri) and hash(again) == hash(uri)
    addr = NameAddr.parse(_addr(display, uri_text, tag))
    assert addr.display_name == (display if display is not None else None)
    assert addr.tag == tag and addr.uri == uri
    back = NameAddr.parse(str(addr))
    assert (back.display_name, back.uri, back.params) == (addr.display_name, addr.uri, addr.params)


# --- real Kamailio: a whole call of hand-built messages through the proxy ----------------------


class _Peer:
    """One raw WebSocket SIP endpoint: sends messages built here, parses what arrives."""

    def __init__(self, ws, user: str, kam):
        self.ws, self.user, self.kam = ws, user, kam
        self.host = f"{user}-msgtest.invalid"
        self.tag = generate_tag()

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.kam.domain}"

    def contact(self) -> str:
        return f"<sip:{self.user}@{self.host};transport=ws>"

    def via(self) -> str:
        return f"SIP/2.0/WS {self.host};branch={generate_branch()};rport"

    async def send(self, message) -> None:
        await self.ws.send_str(message.encode().decode())

    async def receive(self):
        while True:
            frame = await asyncio.wait_for(self.ws.receive(), 10)
            assert frame.type == aiohttp.WSMsgType.TEXT, frame
            if frame.data.strip():
                return parse_message(frame.data)

    async def final(self):
        while True:
            message = await self.receive()
            if isinstance(message, SipResponse) and message.status >= 200:
                return message


def _request(peer: _Peer, method: str, uri: str, to: str, call_id: str, cseq: int, *extra: tuple[str, str],
             body: str = "") -> SipRequest:
    headers = Headers([("Via", peer.via()), ("Max-Forwards", "70"), ("To", to),
                       ("From", f"<{peer.aor}>;tag={peer.tag}"), ("Call-ID", call_id),
                       ("CSeq", str(CSeq(cseq, method)))])
    for name, value in extra:
        headers.add(name, value)
    if body:
        headers.add("Content-Type", "application/sdp")
    return SipRequest(method, uri, headers, body)


async def _authorized(peer: _Peer, request: SipRequest):
    """Send; answer one 401/407 with digest (RFC 3261 22.2) and return the final response."""
    from softphone.sip.digest import DigestChallenge, DigestClient, DigestCredentials, choose_challenge

    await peer.send(request)
    response = await peer.final()
    if response.status not in (401, 407):
        return request, response, None
    proxy = response.status == 407
    challenge = choose_challenge([DigestChallenge.parse(v) for v in response.headers.get_all(
        "Proxy-Authenticate" if proxy else "WWW-Authenticate")])
    if request.method == "INVITE":  # ACK the challenge hop by hop (same branch)
        ack = SipRequest("ACK", request.uri, [("Via", request.headers.get("Via")), ("Max-Forwards", "70"),
                                             ("To", response.headers.get("To")), ("From", request.headers.get("From")),
                                             ("Call-ID", request.call_id), ("CSeq", str(CSeq(request.cseq.seq, "ACK")))])
        await peer.send(ack)
    retry = SipRequest(request.method, request.uri, request.headers.copy(), request.body)
    retry.headers.set("Via", peer.via())
    retry.headers.set("CSeq", str(CSeq(request.cseq.seq + 1, request.method)))
    client = DigestClient(DigestCredentials(peer.user, peer.kam.users[peer.user]))
    retry.headers.add("Proxy-Authorization" if proxy else "Authorization",
                      client.authorize(challenge, request.method, str(request.uri), request.body))
    await peer.send(retry)
    return retry, await peer.final(), response


async def test_call_of_hand_built_messages_through_real_kamailio(kamailio_factory):
    # A private instance: nobody else's registrations can fork this INVITE.
    kamailio = kamailio_factory(users={"7013": "pw-a-7013", "7014": "pw-b-7014"}, n_users=0)
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"
    async with aiohttp.ClientSession() as session, \
            session.ws_connect(kamailio.ws_url, protocols=("sip",)) as ws_a, \
            session.ws_connect(kamailio.ws_url, protocols=("sip",)) as ws_b:
        alice, bob = _Peer(ws_a, "7013", kamailio), _Peer(ws_b, "7014", kamailio)
        register = _request(bob, "REGISTER", f"sip:{kamailio.domain}", f"<{bob.aor}>", generate_call_id(), 1,
                            ("Contact", bob.contact() + ";expires=60"))
        _, registered, challenge = await _authorized(bob, register)
        assert challenge.status == 401 and registered.status == 200 and registered.contact

        call_id = generate_call_id()
        invite = _request(alice, "INVITE", bob.aor, f"<{bob.aor}>", call_id, 10, ("Contact", alice.contact()),
                          body=sdp)
        pending = asyncio.ensure_future(_authorized(alice, invite))  # 407, ACK, retry with credentials
        incoming = await bob.receive()
        while not (isinstance(incoming, SipRequest) and incoming.method == "INVITE"):
            incoming = await bob.receive()
        assert incoming.body == sdp and incoming.call_id == call_id
        assert len(incoming.via) == 2 and incoming.via[1].host == alice.host
        assert incoming.via[1].received and incoming.via[1].rport  # filled in by Kamailio (RFC 3581)
        assert incoming.headers.get_all("Record-Route")
        assert "Proxy-Authorization" not in incoming.headers  # consumed by the proxy
        await bob.send(make_response(incoming, 180, to_tag=bob.tag))
        await bob.send(make_response(incoming, 200, to_tag=bob.tag, headers=[("Contact", bob.contact())],
                                     body=sdp))
        sent_invite, ok, challenge = await asyncio.wait_for(pending, 10)
        assert challenge.status == 407 and sent_invite.headers.get("Proxy-Authorization")
        assert ok.status == 200 and ok.to.tag == bob.tag and ok.body == sdp
        assert [v.branch for v in ok.via] == [sent_invite.top_via.branch]  # the proxy's Via is gone
        route_set = list(reversed(ok.headers.get_all("Record-Route")))
        target = ok.contact[0].uri
        assert route_set and target.user == bob.user

        dialog_to = f"<{bob.aor}>;tag={bob.tag}"
        routes = [("Route", r) for r in route_set]
        ack = _request(alice, "ACK", str(target), dialog_to, call_id, sent_invite.cseq.seq, *routes)
        await alice.send(ack)
        got_ack = await bob.receive()
        assert isinstance(got_ack, SipRequest) and got_ack.method == "ACK" and got_ack.cseq.method == "ACK"

        bye = _request(alice, "BYE", str(target), dialog_to, call_id, sent_invite.cseq.seq + 1, *routes)
        await alice.send(bye)
        got_bye = await bob.receive()
        assert got_bye.method == "BYE" and got_bye.to.tag == bob.tag and got_bye.from_.tag == alice.tag
        await bob.send(make_response(got_bye, 200))
        bye_ok = await alice.final()
        assert bye_ok.status == 200 and bye_ok.cseq == CSeq(sent_invite.cseq.seq + 1, "BYE")


def test_parse_benchmark_runs_on_a_valid_message():
    """bench/sip_parse.py must keep working (bench/sip.py calls it); figures only, no timing asserts."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "bench" / "sip_parse.py"
    spec = importlib.util.spec_from_file_location("sip_parse_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    invite = parse_message(module.INVITE)
    assert invite.content_type == "application/sdp" and "a=rtpmap:111 opus/48000/2" in invite.body
    result = module.bench_parse(3)
    assert set(result) >= {"parse_per_s", "serialise_per_s", "parse_and_serialise_per_s", "digest_authorize_per_s"}
    assert result["message_bytes"] == len(module.INVITE.encode())
