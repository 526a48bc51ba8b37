"""Digest authentication: published vectors, algorithm choice, server side, secrets, real Kamailio."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.errors import AuthenticationError, SipParseError
from softphone.log import Secret, redact
from softphone.sip.digest import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    NonceCounter,
    NonceState,
    NonceStore,
    choose_challenge,
    compute_response,
    make_challenge,
    parse_auth_params,
    verify_authorization,
)
from softphone.sip.message import (
    CSeq,
    Headers,
    SipRequest,
    generate_branch,
    generate_call_id,
    generate_tag,
    parse_message,
)

RFC2617_CHALLENGE = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
                     'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
ALGORITHMS = ["MD5", "MD5-SESS", "SHA-256", "SHA-256-SESS", "SHA-512-256", "SHA-512-256-SESS"]


def params_of(header: str) -> dict[str, str]:
    scheme, params = parse_auth_params(header)
    assert scheme == "Digest"
    return params


# --- published vectors ----------------------------------------------------------------


def test_rfc2617_section_3_5_vector():
    client = DigestClient(DigestCredentials("Mufasa", "Circle Of Life"))
    header = client.authorize(DigestChallenge.parse(RFC2617_CHALLENGE), "GET", "/dir/index.html", cnonce="0a4f113b")
    p = params_of(header)
    assert p["response"] == "6629fae49393a05397450978507c4ef1"
    assert (p["qop"], p["nc"], p["cnonce"], p["opaque"]) == ("auth", "00000001", "0a4f113b",
                                                             "5ccc069c403ebaf9f0171e9517f40e41")
    assert 'qop=auth, nc=00000001' in header  # qop and nc are unquoted on the wire


@pytest.mark.parametrize("algorithm,expected", [
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_section_3_9_1_vectors(algorithm, expected):
    challenge = DigestChallenge.parse(
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')
    client = DigestClient(DigestCredentials("Mufasa", "Circle of Life"))
    header = client.authorize(challenge, "GET", "/dir/index.html", cnonce=RFC7616_CNONCE)
    p = params_of(header)
    assert p["response"] == expected
    assert p["algorithm"] == algorithm and p["uri"] == "/dir/index.html" and p["realm"] == "http-auth@example.org"
    assert verify_authorization(header, "GET", {"Mufasa": "Circle of Life"}.get, "http-auth@example.org") == "Mufasa"


def test_rfc2069_compat_without_qop():
    challenge = DigestChallenge.parse('Digest realm="r", nonce="n1"')
    header = DigestClient(DigestCredentials("u", "p")).authorize(challenge, "REGISTER", "sip:example.com")
    p = params_of(header)
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    assert p["response"] == md5(f"{md5('u:r:p')}:n1:{md5('REGISTER:sip:example.com')}")
    assert "qop" not in p and "nc" not in p and "cnonce" not in p


def test_auth_int_when_only_offered_hashes_the_body():
    challenge = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth-int", algorithm=SHA-256')
    body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"
    header = DigestClient(DigestCredentials("u", "p")).authorize(challenge, "INVITE", "sip:b@r", body, cnonce="c")
    p = params_of(header)
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    ha2 = sha(f"INVITE:sip:b@r:{sha(body)}")
    assert p["qop"] == "auth-int"
    assert p["response"] == sha(f"{sha('u:r:p')}:n:00000001:c:auth-int:{ha2}")
    assert verify_authorization(header, "INVITE", lambda u: "p", "r", body) == "u"
    assert verify_authorization(header, "INVITE", lambda u: "p", "r", body + "tampered") is None


def test_sess_variant_uses_nonce_and_cnonce_in_ha1():
    challenge = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth", algorithm=MD5-sess')
    header = DigestClient(DigestCredentials("u", "p")).authorize(challenge, "BYE", "sip:x@y", cnonce="cn")
    md5 = lambda s: hashlib.md5(s.encode()).hexdigest()  # noqa: E731
    ha1 = md5(f"{md5('u:r:p')}:n:cn")
    assert params_of(header)["response"] == md5(f"{ha1}:n:00000001:cn:auth:{md5('BYE:sip:x@y')}")
    assert "algorithm=MD5-sess" in header


def test_userhash_and_non_ascii_usernames():
    challenge = DigestChallenge.parse(
        'Digest realm="api@example.org", qop="auth", algorithm=SHA-512-256, nonce="n", userhash=true, charset=UTF-8')
    client = DigestClient(DigestCredentials("J\u00e4s\u00f8n Doe", "Secret, or not?"))
    p = params_of(client.authorize(challenge, "GET", "/doe.json", cnonce="c"))
    expected_user = hashlib.new("sha512_256", "J\u00e4s\u00f8n Doe:api@example.org".encode()).hexdigest()
    assert p["username"] == expected_user and p["userhash"] == "true"
    assert p["response"] == compute_response("SHA-512-256", "J\u00e4s\u00f8n Doe", "api@example.org",
                                             "Secret, or not?", "n", "GET", "/doe.json", "auth", "00000001", "c")
    plain = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth"')
    header = client.authorize(plain, "GET", "/")
    assert "username*=UTF-8''J%C3%A4s%C3%B8n%20Doe" in header
    assert verify_authorization(header, "GET", {"J\u00e4s\u00f8n Doe": "Secret, or not?"}.get, "r") == "J\u00e4s\u00f8n Doe"
    assert verify_authorization(header.replace("UTF-8''", "latin1''"), "GET", lambda u: "Secret, or not?", "r") is None
    assert verify_authorization(header.replace("%C3%A4", "%C3"), "GET", lambda u: "Secret, or not?", "r") is None


# --- challenges and choice ---------------------------------------------------------------


def test_challenge_parsing():
    c = DigestChallenge.parse('Digest  realm="sip.example.com" ,nonce="a\\"b",opaque="", algorithm=sha-256,'
                              ' qop="auth-int, auth", stale=TRUE, domain="sip:a sip:b", userhash=false')
    assert (c.realm, c.nonce, c.opaque, c.algorithm) == ("sip.example.com", 'a"b', "", "SHA-256")
    assert c.qop == ["auth-int", "auth"] and c.stale and not c.userhash and c.domain == "sip:a sip:b"
    assert DigestChallenge.parse('digest realm="r", nonce="n"').algorithm == "MD5"
    with pytest.raises(AuthenticationError, match="Basic"):
        DigestChallenge.parse('Basic realm="r"')
    for bad, reason in [('Digest realm="r"', "without nonce"), ('Digest nonce="n"', "without realm"),
                        ('Digest realm="r, nonce=n', "unterminated"), ("Digest realm", "without a value"),
                        ('Digest realm="r" nonce="n"', "missing ','"), ("", "empty"), ("Digest realm=", "empty value")]:
        with pytest.raises(SipParseError, match=reason):
            DigestChallenge.parse(bad)


def test_choose_challenge_prefers_the_strongest_supported():
    def ch(alg, qop='"auth"'):
        return DigestChallenge.parse(f'Digest realm="r", nonce="{alg}", algorithm={alg}, qop={qop}')
    assert choose_challenge([ch("MD5"), ch("SHA-512-256"), ch("SHA-256")]).algorithm == "SHA-512-256"
    assert choose_challenge([ch("MD5"), ch("SHA-256-sess")]).algorithm == "SHA-256-SESS"
    assert choose_challenge([ch("SHA-1"), ch("MD5")]).algorithm == "MD5"
    assert choose_challenge([ch("SHA-512-256", '"auth-conf"'), ch("MD5")]).algorithm == "MD5"
    with pytest.raises(AuthenticationError, match=r"no supported digest challenge.*SHA-1"):
        choose_challenge([ch("SHA-1")])
    with pytest.raises(AuthenticationError):
        choose_challenge([])


def test_nonce_count_per_realm_and_nonce():
    client = DigestClient(DigestCredentials("u", "p"))
    first = DigestChallenge.parse('Digest realm="r", nonce="n1", qop="auth"')
    counts = [params_of(client.authorize(first, "REGISTER", "sip:r"))["nc"] for _ in range(3)]
    assert counts == ["00000001", "00000002", "00000003"]
    second = DigestChallenge.parse('Digest realm="r", nonce="n2", qop="auth"')
    assert params_of(client.authorize(second, "REGISTER", "sip:r"))["nc"] == "00000001"
    assert client.nonce_count(first) == 3
    other_realm = DigestChallenge.parse('Digest realm="other", nonce="n1", qop="auth"')
    assert params_of(client.authorize(other_realm, "REGISTER", "sip:r"))["nc"] == "00000001"
    for i in range(200):  # bounded memory across many nonces
        client.authorize(DigestChallenge.parse(f'Digest realm="r", nonce="x{i}", qop="auth"'), "REGISTER", "sip:r")
    assert len(client._nc) <= DigestClient.MAX_NONCES


def test_cnonces_are_fresh():
    client = DigestClient(DigestCredentials("u", "p"))
    ch = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth"')
    assert len({params_of(client.authorize(ch, "REGISTER", "sip:r"))["cnonce"] for _ in range(20)}) == 20


def test_should_retry_semantics():
    client = DigestClient(DigestCredentials("u", "p"))
    fresh = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth"')
    stale = DigestChallenge.parse('Digest realm="r", nonce="n2", qop="auth", stale=true')
    unsupported = DigestChallenge.parse('Digest realm="r", nonce="n", algorithm=SHA-1')
    assert client.should_retry(fresh, previous_attempt_failed=False)
    assert not client.should_retry(fresh, previous_attempt_failed=True)  # wrong password: stop
    assert client.should_retry(stale, previous_attempt_failed=True)  # stale nonce: transparent retry
    assert not client.should_retry(unsupported, previous_attempt_failed=False)


def test_realm_bound_credentials():
    client = DigestClient(DigestCredentials("u", "p", realm="good"))
    with pytest.raises(AuthenticationError, match=r"realm 'good'.*'evil'"):
        client.authorize(DigestChallenge.parse('Digest realm="evil", nonce="n"'), "REGISTER", "sip:x")
    assert "realm=\"good\"" in client.authorize(DigestChallenge.parse('Digest realm="good", nonce="n"'),
                                                "REGISTER", "sip:x")


# --- server side -----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("qop", [("auth",), ("auth-int",), ("auth", "auth-int"), ()])
def test_make_challenge_authorize_verify_round_trip(algorithm, qop):
    header, nonce = make_challenge("example.test", algorithm=algorithm, qop=qop, opaque="op")
    challenge = DigestChallenge.parse(header)
    assert challenge.nonce == nonce and challenge.algorithm == algorithm and challenge.opaque == "op"
    client = DigestClient(DigestCredentials("1001", "pw1001"))
    answer = client.authorize(challenge, "INVITE", "sip:1002@example.test", "body")
    users = {"1001": "pw1001"}.get
    assert verify_authorization(answer, "INVITE", users, "example.test", "body", nonces={nonce}.__contains__) == "1001"
    assert verify_authorization(answer, "INVITE", {"1001": "wrong"}.get, "example.test", "body") is None
    assert verify_authorization(answer, "INVITE", users, "other.realm", "body") is None
    assert verify_authorization(answer, "BYE", users, "example.test", "body") is None
    assert verify_authorization(answer, "INVITE", users, "example.test", "body", nonces=set().__contains__) is None


def test_verify_rejects_unknown_users_garbage_and_replays():
    header, _nonce = make_challenge("r")
    client = DigestClient(DigestCredentials("u", "p"))
    answer = client.authorize(DigestChallenge.parse(header), "REGISTER", "sip:r")
    assert verify_authorization(answer, "REGISTER", {}.get, "r") is None
    for garbage in ("", "Digest", 'Digest username="u"', "Basic dTpw", 'Digest username="u", realm="r", '
                    'nonce="n", uri="sip:r", response="x", qop=auth, nc=zz, cnonce="c"', '"unterminated'):
        assert verify_authorization(garbage, "REGISTER", {"u": "p"}.get, "r") is None
    counter = NonceCounter()
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", nonce_counter=counter) == "u"
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", nonce_counter=counter) is None  # replay
    newer = client.authorize(DigestChallenge.parse(header), "REGISTER", "sip:r")
    assert verify_authorization(newer, "REGISTER", {"u": "p"}.get, "r", nonce_counter=counter) == "u"


def test_make_challenge_flags_and_fresh_nonces():
    header, _nonce = make_challenge("r", algorithm="SHA-256", qop=("auth", "auth-int"), stale=True)
    c = DigestChallenge.parse(header)
    assert c.stale and c.qop == ["auth", "auth-int"] and c.algorithm == "SHA-256"
    assert len({make_challenge("r")[1] for _ in range(50)}) == 50
    with pytest.raises(AuthenticationError):
        make_challenge("r", algorithm="SHA-1")


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess"])
@pytest.mark.parametrize("qop", [("auth",), ("auth-int",)])
async def test_server_side_accepts_an_independent_client(algorithm, qop):
    """aiohttp's DigestAuthMiddleware (its own RFC 7616 code) against make_challenge/verify_authorization."""
    from aiohttp import DigestAuthMiddleware, web

    seen: list[str | None] = []
    issued: set[str] = set()
    counter = NonceCounter()

    async def handler(request: web.Request) -> web.Response:
        body = await request.text()
        header = request.headers.get("Authorization")
        user = None
        if header:
            user = verify_authorization(header, request.method, {"agent": "s3cr3t pw"}.get, "lab.test", body,
                                        nonce_counter=counter, nonces=issued.__contains__,
                                        request_uri=request.path_qs)
        seen.append(user)
        if user is None:
            value, nonce = make_challenge("lab.test", algorithm=algorithm, qop=qop, opaque="op1")
            issued.add(nonce)
            return web.Response(status=401, headers={"WWW-Authenticate": value})
        return web.Response(text=f"hello {user}")

    app = web.Application()
    app.router.add_route("*", "/sip/register", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(middlewares=(DigestAuthMiddleware("agent", "s3cr3t pw"),)) as session:
            url = f"http://127.0.0.1:{port}/sip/register?x=1"
            async with session.post(url, data="v=0\r\n") as resp:
                assert (resp.status, await resp.text()) == (200, "hello agent")
            async with session.post(url, data="second") as resp:  # same nonce, nc=2
                assert resp.status == 200
        assert seen[0] is None and seen[-1] == "agent"
        async with aiohttp.ClientSession(middlewares=(DigestAuthMiddleware("agent", "wrong"),)) as session, \
                session.get(f"http://127.0.0.1:{port}/sip/register") as resp:
            assert resp.status == 401
    finally:
        await asyncio.wait_for(runner.cleanup(), 10)


def test_nonce_store_valid_stale_unknown_and_the_stale_retry_flow():
    now = [1000.0]
    store = NonceStore(ttl=60, clock=lambda: now[0])
    other = NonceStore(ttl=60, clock=lambda: now[0])
    nonce = store.issue()
    assert store.state(nonce) is NonceState.VALID and store.is_valid(nonce)
    assert other.state(nonce) is NonceState.UNKNOWN  # another secret
    last_changed = nonce[:-1] + ("1" if nonce.endswith("0") else "0")  # never the nonce itself
    for forged in ("", "abc", nonce.replace(".", ""), "zz." + nonce.split(".")[1], last_changed):
        assert store.state(forged) is NonceState.UNKNOWN
    header, _ = make_challenge("r", nonce=nonce)
    client = DigestClient(DigestCredentials("u", "p"))
    answer = client.authorize(DigestChallenge.parse(header), "REGISTER", "sip:r")
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", nonces=store.is_valid) == "u"
    now[0] += 61
    assert store.state(nonce) is NonceState.STALE
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", nonces=store.is_valid) is None
    stale_header, fresh = make_challenge("r", stale=True, nonce=store.issue())
    stale = DigestChallenge.parse(stale_header)
    assert stale.stale and client.should_retry(stale, previous_attempt_failed=True)
    retry = client.authorize(stale, "REGISTER", "sip:r")
    assert params_of(retry)["nonce"] == fresh and params_of(retry)["nc"] == "00000001"
    assert verify_authorization(retry, "REGISTER", {"u": "p"}.get, "r", nonces=store.is_valid) == "u"


def test_request_uri_must_match_when_given():
    header, _ = make_challenge("r")
    answer = DigestClient(DigestCredentials("u", "p")).authorize(DigestChallenge.parse(header), "REGISTER", "sip:r")
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", request_uri="sip:r") == "u"
    assert verify_authorization(answer, "REGISTER", {"u": "p"}.get, "r", request_uri="sip:other") is None


# --- secrets -----------------------------------------------------------------------------------


def test_password_and_response_never_in_reprs_or_errors(caplog):
    caplog.set_level(logging.DEBUG)
    creds = DigestCredentials("alice", "hunter2-secret", realm="good")
    client = DigestClient(creds)
    assert "hunter2" not in repr(creds) and "hunter2" not in repr(client)
    with pytest.raises(AuthenticationError) as info:
        client.authorize(DigestChallenge.parse('Digest realm="bad", nonce="n"'), "REGISTER", "sip:x")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in caplog.text
    assert redact("pw is hunter2-secret") == "pw is ***"  # credentials register the password
    secret_creds = DigestCredentials("bob", Secret("another-pass"))
    assert secret_creds.password() == "another-pass"


@pytest.mark.parametrize("mangle", [
    lambda h: h.replace(", uri=", " uri="),  # missing comma right before the secret part
    lambda h: h.replace('response="', 'response=x"'),
    lambda h: '"' + h,
    lambda h: h.replace(", response=", ", @response="),
])
def test_parse_errors_never_quote_the_response(mangle):
    header = DigestClient(DigestCredentials("u", "p")).authorize(
        DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth"'), "REGISTER", "sip:r")
    response = params_of(header)["response"]
    with pytest.raises(SipParseError) as info:
        parse_auth_params(mangle(header))
    assert response[:6] not in info.value.reason


def test_register_responses_option_redacts_the_computed_response():
    challenge = DigestChallenge.parse('Digest realm="r", nonce="n", qop="auth"')
    plain = params_of(DigestClient(DigestCredentials("u", "pppp")).authorize(challenge, "REGISTER", "sip:r"))
    assert plain["response"] in redact(plain["response"])  # default: not registered (unbounded growth)
    client = DigestClient(DigestCredentials("u", "pppp"), register_responses=True)
    response = params_of(client.authorize(challenge, "REGISTER", "sip:r"))["response"]
    assert redact(f"Authorization: response={response}") == "Authorization: response=***"


# --- properties ---------------------------------------------------------------------------------

_printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20)


@settings(max_examples=150, deadline=None)
@given(user=_printable, password=st.text(max_size=20), realm=_printable,
       algorithm=st.sampled_from(ALGORITHMS), qop=st.sampled_from([(), ("auth",), ("auth-int",)]))
def test_any_credentials_round_trip(user, password, realm, algorithm, qop):
    header, _ = make_challenge(realm, algorithm=algorithm, qop=qop)
    challenge = DigestChallenge.parse(header)
    assert challenge.realm == realm
    answer = DigestClient(DigestCredentials(user, password)).authorize(challenge, "REGISTER", "sip:x")
    assert verify_authorization(answer, "REGISTER", {user: password}.get, realm) == user


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_auth_header_parsing_raises_only_parse_errors(text):
    try:
        parse_auth_params(text)
    except SipParseError:
        pass
    try:
        DigestChallenge.parse(text)
    except (SipParseError, AuthenticationError):
        pass
    assert verify_authorization(text, "REGISTER", lambda u: "p", "r") is None  # never raises, never accepts noise


# --- real Kamailio ------------------------------------------------------------------------------


def _register(kam, user: str, call_id: str, cseq: int, auth: str | None = None) -> SipRequest:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/WS digesttest.invalid;branch={generate_branch()}")
    headers.add("Max-Forwards", "70")
    headers.add("To", f"<sip:{user}@{kam.domain}>")
    headers.add("From", f"<sip:{user}@{kam.domain}>;tag={generate_tag()}")
    headers.add("Call-ID", call_id)
    headers.add("CSeq", str(CSeq(cseq, "REGISTER")))
    headers.add("Contact", f"<sip:{user}x@digesttest.invalid;transport=ws>;expires=60")
    headers.add("Expires", "60")
    if auth:
        headers.add("Authorization", auth)
    return SipRequest("REGISTER", f"sip:{kam.domain}", headers)


async def _exchange(ws, request: SipRequest):
    await ws.send_str(request.encode().decode())
    while True:
        frame = await asyncio.wait_for(ws.receive(), 10)
        assert frame.type == aiohttp.WSMsgType.TEXT, frame
        if frame.data.strip():
            response = parse_message(frame.data)
            if response.status >= 200:
                return response


async def test_digest_against_real_kamailio(kamailio):
    (user,) = kamailio.allocate(1)
    async with aiohttp.ClientSession() as session, session.ws_connect(kamailio.ws_url, protocols=("sip",)) as ws:
        call_id = generate_call_id()
        first = await _exchange(ws, _register(kamailio, user, call_id, 1))
        assert first.status == 401
        challenge = choose_challenge([DigestChallenge.parse(v) for v in first.headers.get_all("WWW-Authenticate")])
        client = DigestClient(DigestCredentials(user, kamailio.users[user]))
        uri = f"sip:{kamailio.domain}"
        ok = await _exchange(ws, _register(kamailio, user, call_id, 2, client.authorize(challenge, "REGISTER", uri)))
        assert ok.status == 200, (ok.status, ok.reason)
        # The same nonce again with nc=2: still accepted (qop=auth nonce counting).
        again = await _exchange(ws, _register(kamailio, user, call_id, 3, client.authorize(challenge, "REGISTER", uri)))
        assert again.status == 200
        wrong = DigestClient(DigestCredentials(user, "not-the-password"))
        bad = await _exchange(ws, _register(kamailio, user, call_id, 4, wrong.authorize(challenge, "REGISTER", uri)))
        assert bad.status in (401, 403)
        unregister = _register(kamailio, user, call_id, 5, client.authorize(challenge, "REGISTER", uri))
        unregister.headers.set("Expires", "0")
        unregister.headers.set("Contact", "*")
        done = await _exchange(ws, unregister)
        assert done.status == 200
