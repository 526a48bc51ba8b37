"""Launch parameters: every source, every invalid case, round trip."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from softphone.errors import ParameterError
from softphone.params import LaunchParams, load_params, parse_query

FUTURE = "2099-06-30T18:00:00+02:00"
VALID = {
    "auth_key": "sys-KEY-0123",
    "server": "pbx.example.com",
    "turn_port": "3478",
    "customer_id": "7",
    "user_id": "1001",
    "username": "agent1",
    "password": "pa ss+w&rd=%",
    "expire_date": FUTURE,
}


def q(**changes) -> str:
    values = {**VALID, **changes}
    return urlencode({k: v for k, v in values.items() if v is not None}, quote_via=quote)


def errors_of(url: str, **kw) -> dict[str, str]:
    with pytest.raises(ParameterError) as info:
        load_params(url, environ={}, **kw)
    return {e.field: e.reason for e in info.value.errors}


def test_full_webphone_url_any_order_percent_and_plus_decoded():
    url = (
        "https://pbx.example.com/any/path/TForge-OmniSense-Webphone.html?"
        "expire_date=2099-06-30+18:00:00&password=pa+ss%2Bw%26rd%3D%25&user_id=1001&username=agent1"
        "&customer_id=7&turn_port=3478&server=pbx.example.com&auth_key=sys-KEY-0123&debug_console=True"
    )
    p = load_params(url, environ={})
    assert p.password.reveal() == "pa ss+w&rd=%"
    assert p.turn_port == 3478 and p.customer_id == 7 and p.user_id == 1001
    assert p.debug_console is True and p.debug_html is False
    # naive time: local time zone
    assert p.expire_date == datetime(2099, 6, 30, 18, 0, 0).astimezone()


def test_bare_query_string_and_leading_question_mark():
    assert load_params(q(), environ={}) == load_params("?" + q(), environ={})


def test_precedence_flags_over_url_over_environment():
    env = {"SOFTPHONE_" + k.upper(): v for k, v in VALID.items()}
    env["SOFTPHONE_USERNAME"] = "from-env"
    env["SOFTPHONE_SERVER"] = "env.example"
    p = load_params("server=url.example&username=from-url", flags={"username": "from-flag"}, environ=env)
    assert p.username == "from-flag"
    assert p.server == "url.example"
    assert p.auth_key.reveal() == "sys-KEY-0123"  # environment only


def test_environment_alone():
    env = {"SOFTPHONE_" + k.upper(): v for k, v in VALID.items()}
    assert load_params(None, environ=env).user_id == 1001


def test_empty_string_is_missing_and_lower_layer_fills_it():
    env = {"SOFTPHONE_USERNAME": "env-user"}
    p = load_params(q(username=""), environ=env)
    assert p.username == "env-user"
    assert errors_of(q(username="")) == {"username": "is required but missing or empty"}


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"auth_key": None}, "auth_key", "is required"),
        ({"server": None}, "server", "is required"),
        ({"turn_port": None}, "turn_port", "is required"),
        ({"customer_id": None}, "customer_id", "is required"),
        ({"user_id": None}, "user_id", "is required"),
        ({"username": None}, "username", "is required"),
        ({"password": None}, "password", "is required"),
        ({"expire_date": None}, "expire_date", "is required"),
        ({"password": ""}, "password", "is required"),
        ({"turn_port": "abc"}, "turn_port", "must be an integer"),
        ({"turn_port": "34.5"}, "turn_port", "must be an integer"),
        ({"turn_port": "-1"}, "turn_port", "must be an integer"),
        ({"turn_port": "0"}, "turn_port", "between 1 and 65535"),
        ({"turn_port": "65536"}, "turn_port", "between 1 and 65535"),
        ({"customer_id": "seven"}, "customer_id", "must be an integer"),
        ({"customer_id": "1e3"}, "customer_id", "must be an integer"),
        ({"user_id": "12a"}, "user_id", "must be an integer"),
        ({"expire_date": "tomorrow"}, "expire_date", "ISO 8601"),
        ({"expire_date": "2099-13-01 10:00:00"}, "expire_date", "ISO 8601"),
        ({"expire_date": "2001-01-01 10:00:00"}, "expire_date", "in the past"),
        ({"expire_date": "2001-01-01T10:00:00Z"}, "expire_date", "in the past"),
        ({"debug_console": "yes"}, "debug_console", "true or false"),
        ({"debug_html": "1"}, "debug_html", "true or false"),
        ({"server": "https://pbx.example.com/"}, "server", "not a URL"),
        ({"server": "pbx example"}, "server", "not a valid host"),
        ({"server": "pbx.example.com:99999"}, "server", "between 1 and 65535"),
        ({"sip_ws_url": "http://x"}, "sip_ws_url", "ws://"),
        ({"api_url": "ftp://x"}, "api_url", "http"),
        ({"turn_urls": "udp://x"}, "turn_urls", "turn:"),
    ],
)
def test_each_invalid_case_names_the_field(changes, field, reason):
    errs = errors_of(q(**changes))
    assert list(errs) == [field]
    assert reason in errs[field]


def test_parameter_given_twice_is_an_error():
    assert "more than once" in errors_of(q() + "&user_id=5")["user_id"]


def test_every_bad_field_reported_at_once():
    errs = errors_of("turn_port=x&customer_id=y&debug_html=maybe")
    assert {"auth_key", "server", "turn_port", "customer_id", "user_id", "username", "password",
            "expire_date", "debug_html"} == set(errs)


def test_unknown_parameter_is_a_warning(caplog):
    p = load_params(q() + "&theme=dark", environ={})
    assert any("theme" in w for w in p.warnings)
    assert "theme" in caplog.text


def test_expire_date_forms():
    now = datetime(2030, 1, 1, tzinfo=timezone.utc)
    for text, expected in [
        ("2030-02-01T10:00:00+02:00", datetime(2030, 2, 1, 8, tzinfo=timezone.utc)),
        ("2030-02-01T10:00:00Z", datetime(2030, 2, 1, 10, tzinfo=timezone.utc)),
        ("2030-02-01 10:00:00", datetime(2030, 2, 1, 10).astimezone()),
        ("2030-02-01T10:00:00", datetime(2030, 2, 1, 10).astimezone()),
    ]:
        assert load_params(q(expire_date=text), environ={}, now=now).expire_date == expected


def test_derived_defaults_and_overrides():
    p = load_params(q(server="pbx.example.com:8443"), environ={})
    d = p.derived
    assert d.api_url == "https://pbx.example.com:8443"
    assert d.sip_ws_url == "wss://pbx.example.com:8089/ws"
    assert d.sip_domain == "pbx.example.com"
    assert d.turn_urls == ("turn:pbx.example.com:3478?transport=udp", "turn:pbx.example.com:3478?transport=tcp")
    assert d.turn_username == "agent1" and d.turn_password.reveal() == VALID["password"]
    p2 = load_params(q(), flags={"sip_ws_url": "ws://127.0.0.1:5066/ws", "turn_urls": "turns:t.example:443",
                                 "extension": "9001", "turn_password": "other-secret"}, environ={})
    assert p2.derived.sip_ws_url == "ws://127.0.0.1:5066/ws"
    assert p2.derived.turn_urls == ("turns:t.example:443",)
    assert p2.derived.extension == "9001"
    assert p2.derived.turn_password.reveal() == "other-secret"
    assert "other-secret" not in repr(p2.derived) + str(p2.derived.as_dict())


def test_ipv6_server():
    p = load_params(q(server="[2001:db8::1]:8443"), environ={})
    assert p.host == "2001:db8::1"
    assert p.derived.sip_ws_url == "wss://[2001:db8::1]:8089/ws"


def test_secrets_never_in_repr_str_or_errors():
    p = load_params(q(), environ={})
    for text in (repr(p), str(p), str(p.as_dict()), f"{p.password}", repr(p.auth_key)):
        assert VALID["password"] not in text and VALID["auth_key"] not in text
    with pytest.raises(ParameterError) as info:
        load_params(q(turn_port="x", password="hunter22-secret"), environ={})
    assert "hunter22-secret" not in str(info.value)


def test_query_duplicate_detected_by_parser():
    raw = parse_query("a=1&server=x&server=y")
    assert raw.unknown == ["a"]
    assert [e.field for e in raw.errors] == ["server"]


def test_seconds_left():
    p = load_params(q(), environ={})
    assert p.seconds_left(p.expire_date - timedelta(seconds=30)) == 30


# --- property: any valid parameter set survives encode -> parse unchanged --------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=30
).filter(lambda s: s.strip() != "")
_host = st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,20}(:[1-9][0-9]{0,3})?\Z")


@settings(max_examples=200, deadline=None)
@given(
    auth_key=_text, server=_host, turn_port=st.integers(1, 65535), customer_id=st.integers(0, 10**9),
    user_id=st.integers(0, 10**9), username=_text, password=_text,
    expire=st.datetimes(min_value=datetime(2100, 1, 1), max_value=datetime(2999, 1, 1),
                        timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=2)),
                                                   timezone(timedelta(hours=-5, minutes=-30))])),
    debug_console=st.booleans(), debug_html=st.booleans(),
)
def test_roundtrip_encode_parse(auth_key, server, turn_port, customer_id, user_id, username, password,
                                expire, debug_console, debug_html):
    from softphone.log import Secret

    original = LaunchParams(
        auth_key=Secret(auth_key), server=server, turn_port=turn_port, customer_id=customer_id,
        user_id=user_id, username=username, password=Secret(password), expire_date=expire,
        debug_console=debug_console, debug_html=debug_html,
    )
    url = "https://h.example/TForge-OmniSense-Webphone.html?" + original.to_query()
    assert load_params(url, environ={}) == original


@pytest.mark.parametrize("field", ["server", "user_id", "customer_id", "turn_port", "debug_console",
                                   "expire_date", "sip_ws_url", "api_url", "turn_urls"])
def test_a_secret_in_the_wrong_field_is_not_echoed(field):
    """The auth key pasted as ``server=`` (or any other field) must not reach stderr in full."""
    key = "Zq9sysKEY/verysecret+01="  # base64-like: not a valid host, port, date or URL
    with pytest.raises(ParameterError) as info:
        load_params(q(**{field: key}), environ={})
    text = str(info.value)
    assert field in text  # the field and the reason are still named
    assert key not in text and key[:5] not in text
    assert f"{len(key)} characters" in text  # and what was wrong with it, in shape


def test_values_that_cannot_be_secrets_are_still_echoed():
    errs = errors_of(q(expire_date="2099-13-01 10:00:00", turn_port="70000", debug_html="1"))
    assert "'2099-13-01 10:00:00'" in errs["expire_date"]
    assert "'70000'" in errs["turn_port"] and "'1'" in errs["debug_html"]
