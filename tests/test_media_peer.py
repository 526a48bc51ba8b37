"""Media configuration, SDP helpers and peer-connection setup (no public STUN, ever)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from aiortc import RTCIceTransportPolicy, RTCPeerConnection
from hypothesis import given
from hypothesis import strategies as st

from softphone.errors import ConfigurationError, MediaError
from softphone.log import REDACTED, Secret
from softphone.media import sdp as sdpmod
from softphone.media.config import (
    DEFAULT_CODECS,
    IceConfig,
    IceServerUrl,
    MediaConfig,
    TurnTransport,
)
from softphone.media.peer import (
    add_audio_transceiver,
    check_answer_setup,
    codec_capabilities,
    create_peer_connection,
    ice_connection_kwargs,
)
from softphone.media.sdp import Direction, SdpError
from softphone.params import load_params

CRED = dict(username="agent7", credential="turn-secret-123")

#: A throw-away self-signed CA certificate (openssl req -x509, CN "softphone test CA").
_SELF_SIGNED_CA = """\
-----BEGIN CERTIFICATE-----
MIIDGTCCAgGgAwIBAgIUKFKrBK2ZPICgDYVFUmAPHM15OnYwDQYJKoZIhvcNAQEL
BQAwHDEaMBgGA1UEAwwRc29mdHBob25lIHRlc3QgQ0EwHhcNMjYxMTI3MDMyNDMx
WhcNMzYxMTI0MDMyNDMxWjAcMRowGAYDVQQDDBFzb2Z0cGhvbmUgdGVzdCBDQTCC
ASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoCggEBALv5g4EuLyw87O0PVm7xmXQV
wIru7xcsC58gdbjt+mTVYIipKbtdkdj/kKr1lbwLqPU7fXRn9/dzdPdjXxsNyj7Q
0GVu4K6n2Gr05Qv6zZKtb/IPSFw/S0sZJRSio0bw8Lnurir1AWSQqivGxniE6N0m
zJkQx1Kri3DmYBLH/j6sZHW2YB2pIh9mNlTW3X2Ns7POK+07YVQ+KBGwqvy/Hj+7
T0VahCq7sWNkOdwQJy8eIrXobhXwotmfZjn2d01OwGGsxp8EcP/RWLdwuRgWD2AG
66K6wc6CucZU4hGY9FPcw2+pkjonNfkv84LJ42zW5QAtBZ3ERQdEIK25vD8HtrMC
AwEAAaNTMFEwHQYDVR0OBBYEFKWd9l2cvtTOjG49v6uGis/ci6CZMB8GA1UdIwQY
MBaAFKWd9l2cvtTOjG49v6uGis/ci6CZMA8GA1UdEwEB/wQFMAMBAf8wDQYJKoZI
hvcNAQELBQADggEBACTt26Q8HHDUCQEyGzwvX3/IuleALov0EvgZ8Jr4a4suaGOu
qVY3qCNqGDz0Btw8m7QNR+gHgPln1QmUm8HylotBPZ50pYYdtbryRFPqbypV/QPY
waABDLfpIRs3JgQZcZIXxxe30fcPzqFVF+YY9LMoQf1YOAJaygVwXOhQ8FzKQFsY
LzQSD36iajFw/QxEEj1I1NoGOsVAWzwcjDDp/OKfi30xKItGlk3uQgOZxiysJHZH
7oiK1yC7wgGwHUgBkw8+sXCuDLRkdGMYphnyTfzH47ia23aAkUA4M0Q6l7CI9T6k
jDrfXXbhuXFGrJ35rbjI2+6WoB5TDJiajVz46tg=
-----END CERTIFICATE-----
"""

# --- IceConfig ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, scheme, host, port, transport",
    [
        ("turn:pbx.example.com:3479", "turn", "pbx.example.com", 3479, TurnTransport.UDP),
        ("turn:pbx.example.com:3479?transport=tcp", "turn", "pbx.example.com", 3479, TurnTransport.TCP),
        ("turn:10.0.0.1", "turn", "10.0.0.1", 3478, TurnTransport.UDP),
        ("turns:pbx.example.com", "turns", "pbx.example.com", 5349, TurnTransport.TLS),
        ("turns:pbx.example.com:443?transport=tcp", "turns", "pbx.example.com", 443, TurnTransport.TLS),
        ("turn:[::1]:3478", "turn", "::1", 3478, TurnTransport.UDP),
        ("stun:127.0.0.1:3478", "stun", "127.0.0.1", 3478, None),
    ],
)
def test_ice_urls_parse(url, scheme, host, port, transport):
    parsed = IceServerUrl.parse(url)
    assert (parsed.scheme, parsed.host, parsed.port, parsed.transport) == (scheme, host, port, transport)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(turn_urls=("http://x",), **CRED), "turn_urls"),
        (dict(turn_urls=("turn:x?transport=sctp",), **CRED), "turn_urls"),
        (dict(turn_urls=("turns:x?transport=udp",), **CRED), "turn_urls"),
        (dict(turn_urls=("turn:x:70000",), **CRED), "turn_urls"),
        (dict(turn_urls=("stun:x",), **CRED), "turn_urls"),
        (dict(stun_urls=("turn:x",)), "stun_urls"),
        (dict(stun_urls=("stun:x?transport=udp",)), "stun_urls"),
        (dict(turn_urls=("turn:x",)), "username/credential"),
        (dict(relay_only=True), "relay_only"),
        (dict(gathering_timeout=0), "gathering_timeout"),
        (dict(turn_urls=("turn:x",), transport_preference=("quic",), **CRED), "transport_preference"),
    ],
)
def test_bad_ice_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=field):
        IceConfig(**kwargs)


def test_udp_is_preferred_and_the_preference_is_configurable():
    urls = ("turns:t.example", "turn:t.example:3478?transport=tcp", "turn:t.example:3478?transport=udp")
    assert IceConfig(turn_urls=urls, **CRED).selected_turn_url == urls[2]
    tcp_first = IceConfig(turn_urls=urls, transport_preference=("tcp", "udp"), **CRED)
    assert tcp_first.selected_turn_url == urls[1]
    assert [u.url for u in tcp_first.ordered_turn_urls] == [urls[1], urls[2]]  # tls not wanted
    assert IceConfig(turn_urls=urls, transport_preference=("tls",), **CRED).selected_turn_url == urls[0]


def test_only_the_selected_turn_server_reaches_aiortc():
    urls = ("turn:t.example:3478?transport=udp", "turn:t.example:3478?transport=tcp")
    ice = IceConfig(turn_urls=urls, relay_only=True, **CRED)
    servers = ice.ice_servers()
    assert len(servers) == 1 and servers[0].urls == [urls[0]]
    assert servers[0].username == "agent7" and servers[0].credential == "turn-secret-123"
    rtc = ice.rtc_configuration()
    assert rtc.iceTransportPolicy is RTCIceTransportPolicy.RELAY


def test_credential_is_a_secret_and_never_shown():
    ice = IceConfig(turn_urls=("turn:t.example",), **CRED)
    assert isinstance(ice.credential, Secret)
    for text in (repr(ice), str(ice), ice.describe(), repr(MediaConfig(ice=ice))):
        assert "turn-secret-123" not in text
    assert REDACTED in repr(ice)


async def test_turns_is_verified_by_default_and_a_ca_file_or_insecure_is_explicit(tmp_path):
    import ssl

    turns = dict(turn_urls=("turns:turn.example:5349",), relay_only=True, **CRED)

    def connection_ssl(ice: IceConfig):
        config = MediaConfig(ice=ice)
        pc = create_peer_connection(config)
        add_audio_transceiver(pc, config)
        return pc, pc.getTransceivers()[0].receiver.transport.transport._connection.turn_ssl

    pc, default = connection_ssl(IceConfig(**turns))
    assert default is True  # aioice: ssl=True -> system CAs, hostname checked
    await pc.close()
    pc, insecure = connection_ssl(IceConfig(tls_insecure=True, **turns))
    assert isinstance(insecure, ssl.SSLContext) and insecure.verify_mode is ssl.CERT_NONE
    await pc.close()
    ca = tmp_path / "ca.pem"
    ca.write_text(_SELF_SIGNED_CA)
    pc, custom = connection_ssl(IceConfig(tls_ca_file=str(ca), **turns))
    assert isinstance(custom, ssl.SSLContext) and custom.verify_mode is ssl.CERT_REQUIRED
    assert custom.check_hostname and custom.cert_store_stats()["x509_ca"] == 1
    await pc.close()
    with pytest.raises(ConfigurationError, match="tls_ca_file"):
        IceConfig(tls_ca_file=str(tmp_path / "missing.pem"), **turns)
    with pytest.raises(ConfigurationError, match="tls_insecure"):
        IceConfig(tls_ca_file=str(ca), tls_insecure=True, **turns)
    assert IceConfig(tls_insecure=True, turn_urls=("turn:t.example",), **CRED).turn_tls_context() is None


def test_no_servers_means_an_explicit_empty_list():
    ice = IceConfig()
    assert ice.ice_servers() == []
    assert ice.rtc_configuration().iceServers == []  # None would mean Google's STUN in aiortc


async def test_peer_connection_never_uses_a_public_stun_server():
    from softphone.media import aiortc_seam

    # aiortc on its own would use Google's STUN server when no iceServers are given ...
    assert [s.urls for s in aiortc_seam.default_ice_servers()] == ["stun:stun.l.google.com:19302"]
    # ... while our transceivers are created that fallback is an empty list (and put back after),
    bare = RTCPeerConnection()
    with aiortc_seam.no_default_stun():
        bare.addTransceiver("audio")
        assert aiortc_seam.default_ice_servers() == []
    assert ice_connection_kwargs(bare)["stun_server"] is None
    assert [s.urls for s in aiortc_seam.default_ice_servers()] == ["stun:stun.l.google.com:19302"]
    await bare.close()
    # and ours pass an explicit list anyway.

    for ice in (IceConfig(), IceConfig(turn_urls=("turn:127.0.0.1:3478",), relay_only=True, **CRED)):
        pc = create_peer_connection(MediaConfig(ice=ice))
        add_audio_transceiver(pc, MediaConfig(ice=ice))
        kwargs = ice_connection_kwargs(pc)
        assert kwargs["stun_server"] is None
        await pc.close()
    assert kwargs["turn_server"] == ("127.0.0.1", 3478)


def test_ice_config_from_launch_parameters():
    expire = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    query = (
        f"?auth_key=key-abcdef&server=pbx.example.com&turn_port=3479&customer_id=1&user_id=2"
        f"&username=agent7&password=pw-secret-1&expire_date={expire}"
    )
    params = load_params(query, environ={})
    ice = IceConfig.from_params(params, relay_only=True)
    assert ice.turn_urls == (
        "turn:pbx.example.com:3479?transport=udp",
        "turn:pbx.example.com:3479?transport=tcp",
    )
    assert ice.username == "agent7" and ice.credential.reveal() == "pw-secret-1"
    assert ice.selected_turn_url.endswith("transport=udp")
    media = MediaConfig.from_params(params, ice={"transport_preference": ("tcp", "udp")})
    assert media.ice.selected_turn_url.endswith("transport=tcp")
    assert "pw-secret-1" not in repr(media)


# --- MediaConfig and codecs -----------------------------------------------------------------


def test_default_codecs_follow_the_webphone_preference():
    assert DEFAULT_CODECS == ("opus", "PCMU", "PCMA", "G722")
    assert [c.mimeType for c in codec_capabilities(DEFAULT_CODECS)] == [
        "audio/opus", "audio/PCMU", "audio/PCMA", "audio/G722",
    ]


def test_codec_names_are_normalised_and_checked():
    assert MediaConfig(codecs=("pcmu", "OPUS", "pcmu")).codecs == ("PCMU", "opus")
    assert MediaConfig(codecs="PCMA, G722").codecs == ("PCMA", "G722")
    with pytest.raises(ConfigurationError, match="codecs"):
        MediaConfig(codecs=("G729",))
    with pytest.raises(ConfigurationError, match="codecs"):
        MediaConfig(codecs=())
    with pytest.raises(MediaError, match="codecs"):
        codec_capabilities(["iLBC"])


@pytest.mark.parametrize(
    "pts, message",
    [({8000: 10}, "payload type"), ({44100: 101}, "clock rate"), ({8000: 101, 48000: 101}, "differ")],
)
def test_telephone_event_payload_types_are_checked(pts, message):
    with pytest.raises(ConfigurationError, match=message):
        MediaConfig(telephone_event_payload_types=pts)


# --- SDP helpers -------------------------------------------------------------------------------

OFFER = "\r\n".join([
    "v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0",
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126", "c=IN IP4 0.0.0.0",
    "a=rtpmap:111 opus/48000/2", "a=fmtp:111 useinbandfec=1", "a=rtpmap:126 telephone-event/8000",
    "a=fmtp:126 0-16", "a=setup:actpass", "a=mid:0", "a=sendrecv", "a=rtcp-mux",
    "a=candidate:1 1 udp 16777215 127.0.0.1 50000 typ relay raddr 0.0.0.0 rport 9",
    "a=candidate:2 1 udp 2130706431 192.0.2.2 50001 typ host",
]) + "\r\n"


def test_sdp_reading():
    assert sdpmod.audio_direction(OFFER) is Direction.SENDRECV
    assert [(c.payload_type, c.name, c.clock_rate) for c in sdpmod.audio_codecs(OFFER)] == [
        (111, "opus", 48000), (0, "PCMU", 8000), (8, "PCMA", 8000), (126, "telephone-event", 8000),
    ]
    assert sdpmod.telephone_events(OFFER) == {126: 8000}
    assert sdpmod.setup_attribute(OFFER) == "actpass"
    assert sdpmod.candidate_types(OFFER) == ["relay", "host"]


@pytest.mark.parametrize("direction", list(Direction))
def test_direction_rewrite_keeps_everything_else(direction):
    text = sdpmod.set_audio_direction(OFFER, direction)
    assert sdpmod.audio_direction(text) is direction
    assert text.count("a=sendrecv") + text.count("a=sendonly") + text.count("a=recvonly") + \
        text.count("a=inactive") == 1
    assert sdpmod.audio_codecs(text) == sdpmod.audio_codecs(OFFER)
    assert text.endswith("\r\n") and "\n\n" not in text


def test_missing_direction_defaults_to_session_level_then_sendrecv():
    no_dir = OFFER.replace("a=sendrecv\r\n", "")
    assert sdpmod.audio_direction(no_dir) is Direction.SENDRECV
    session_level = no_dir.replace("t=0 0\r\n", "t=0 0\r\na=recvonly\r\n")
    assert sdpmod.audio_direction(session_level) is Direction.RECVONLY


def test_adding_telephone_events():
    text = sdpmod.add_telephone_events(OFFER, {110: 48000, 126: 8000})
    assert sdpmod.telephone_events(text) == {126: 8000, 110: 48000}
    assert text.splitlines()[5] == "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126 110"
    assert "a=fmtp:110 0-16" in text
    lines = text.splitlines()
    assert lines.index("a=rtpmap:110 telephone-event/48000") < lines.index("a=setup:actpass")
    assert sdpmod.add_telephone_events(text, {110: 48000}) == text


@pytest.mark.parametrize(
    "offered, rate, chosen",
    [
        ({110: 48000, 126: 8000}, 48000, {110: 48000}),
        ({110: 48000, 126: 8000}, 8000, {126: 8000}),
        ({126: 8000}, 48000, {126: 8000}),
        ({101: 16000}, 8000, {101: 16000}),
        ({}, 8000, {}),
    ],
)
def test_answer_keeps_the_telephone_event_matching_the_audio_clock(offered, rate, chosen):
    assert sdpmod.answer_telephone_events(offered, rate) == chosen


def test_setup_rewrite():
    text = sdpmod.set_setup_attribute(OFFER, "passive")
    assert sdpmod.setup_attribute(text) == "passive" and text.count("a=setup:") == 1
    with pytest.raises(SdpError, match="setup"):
        sdpmod.set_setup_attribute(OFFER, "sometimes")


def test_unusable_sdp_is_an_sdp_error():
    with pytest.raises(SdpError, match="v=0"):
        sdpmod.audio_direction("")
    with pytest.raises(SdpError, match="m=audio"):
        sdpmod.audio_direction("v=0\r\nm=video 9 RTP/AVP 96\r\n")
    with pytest.raises(SdpError, match="formats"):
        sdpmod.audio_codecs("v=0\r\nm=audio 9 RTP/AVP\r\n")
    assert issubclass(SdpError, MediaError)


@given(st.sampled_from(list(Direction)))
def test_direction_algebra(direction):
    assert direction.reversed().reversed() is direction
    assert direction.reversed().sends == direction.receives
    assert Direction.of(direction.sends, direction.receives) is direction


@pytest.mark.parametrize(
    "offer, answer, ok",
    [("actpass", "active", True), ("actpass", "passive", True), ("active", "passive", True),
     ("passive", "active", True), ("active", "active", False), ("passive", "passive", False),
     ("actpass", "actpass", False), (None, "active", True)],
)
def test_answer_setup_must_complement_the_offer(offer, answer, ok):
    if ok:
        check_answer_setup(offer, answer)
    else:
        with pytest.raises(MediaError, match="a=setup"):
            check_answer_setup(offer, answer)
