"""The agent's parts that need no peer: state table, typed events, the lazy front door, reprs, debug page."""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

import softphone
from softphone import events
from softphone.agent.state import TRANSITIONS, AgentState, check_move
from softphone.errors import AgentError, ConfigurationError


def test_every_state_has_a_row_and_only_stopping_reaches_the_end():
    assert set(TRANSITIONS) == set(AgentState)
    for state, targets in TRANSITIONS.items():
        if state.terminal:
            assert not targets
        elif state is not AgentState.STOPPING:
            assert AgentState.STOPPING in targets and not targets & {AgentState.STOPPED, AgentState.FAILED}
    assert TRANSITIONS[AgentState.STOPPING] == {AgentState.STOPPED, AgentState.FAILED}


def test_the_start_path_follows_the_webphone_order():
    path = [AgentState.NEW, AgentState.AUTHORIZING, AgentState.PROVISIONING, AgentState.REGISTERING,
            AgentState.LOGGING_IN, AgentState.READY, AgentState.STOPPING, AgentState.STOPPED]
    for a, b in itertools.pairwise(path):
        check_move(a, b)
    with pytest.raises(AgentError, match="cannot go from ready to logging_in"):
        check_move(AgentState.READY, AgentState.LOGGING_IN)
    with pytest.raises(AgentError):
        check_move(AgentState.NEW, AgentState.READY)  # never ready without registering


def test_events_are_frozen_typed_and_json_ready():
    assert set(events.EVENTS) == {"state", "registered", "unregistered", "logged_in", "logged_out",
                                  "call_incoming", "call_answered", "call_ended", "dtmf", "hold", "unhold",
                                  "reconnecting", "expiring", "error"}
    ev = events.CallEnded("abc", "remote hangup", 486, 1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.cause = "x"  # type: ignore[misc]
    as_json = json.loads(json.dumps(ev.as_dict()))
    assert as_json["event"] == "call_ended" and as_json["sip_code"] == 486 and as_json["cause"] == "remote hangup"
    expiring = events.Expiring(datetime(2030, 1, 1, tzinfo=UTC), 60.0)
    assert expiring.as_dict()["expire_date"] == "2030-01-01T00:00:00+00:00"
    for cls in events.EVENTS.values():
        assert cls.__doc__ and dataclasses.is_dataclass(cls)


def test_one_dtmf_event_shape_for_every_way_a_digit_arrives():
    from softphone.media.rfc4733 import DtmfEvent as MediaDtmf

    assert MediaDtmf is events.DtmfEvent
    assert events.DtmfEvent("5", 100, "info") == events.DtmfEvent("5", 100, "info")  # `at` is not compared
    with pytest.raises(ValueError, match="via"):
        events.DtmfEvent("5", 100, "rtp")  # type: ignore[arg-type]


def test_importing_softphone_loads_neither_aiortc_nor_av():
    code = ("import sys, softphone; "
            "softphone.load_params; softphone.AgentState; softphone.DtmfEvent; softphone.SoftphoneError; "
            "print(sorted(m for m in ('aiortc', 'av', 'aioice', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr


def test_front_door_exports_resolve():
    for name in softphone.__all__:
        assert getattr(softphone, name) is not None
    assert softphone.Agent.__module__ == "softphone.agent.agent"
    with pytest.raises(AttributeError):
        softphone.NoSuchThing  # noqa: B018


def _params(**extra):
    expire = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    flags = {"auth_key": "system-key-123456", "server": "127.0.0.1", "turn_port": "3478", "customer_id": "1",
             "user_id": "1001", "username": "agent1", "password": "agent1-secret-pw", "expire_date": expire,
             "api_url": "http://127.0.0.1:9", **extra}
    return softphone.load_params(None, flags=flags)


def test_agent_repr_has_no_secret_and_options_are_checked():
    agent = softphone.Agent(_params(), campaign_id=1)
    text = repr(agent) + repr(agent.api) + repr(agent.media.ice) + str(agent.snapshot())
    assert "agent1-secret-pw" not in text and "system-key-123456" not in text
    assert agent.state is AgentState.NEW and agent.call is None
    with pytest.raises(ConfigurationError, match="answer"):
        softphone.Agent(_params(), answer="sometimes")
    with pytest.raises(ConfigurationError, match="play"):
        softphone.Agent(_params(), play="/no/such/prompt.wav")
    with pytest.raises(ConfigurationError, match="campaign_id"):
        softphone.Agent(_params(), campaign_id=-1)


def test_from_url_splits_launch_parameters_from_agent_options():
    params = _params()
    url = "https://pbx.example/TForge-OmniSense-Webphone.html?" + params.to_query()
    agent = softphone.Agent.from_url(url, password="another-secret-pw", campaign_id=3, answer="manual")
    assert agent.params.password.reveal() == "another-secret-pw" and agent.campaign_id == 3
    assert agent.answer == "manual"


def test_call_facade_sources_and_repr():
    from softphone.agent.call import make_source
    from softphone.media.sources import DtmfToneSource, SilenceSource, ToneSource

    assert isinstance(make_source("tone:440"), ToneSource)
    assert make_source("tone:350+440").freqs == (350.0, 440.0)
    assert isinstance(make_source("dtmf:12#"), DtmfToneSource)
    assert isinstance(make_source("silence"), SilenceSource)
    assert make_source(None) is None
    with pytest.raises(ConfigurationError):
        make_source("tone:abc")
    with pytest.raises(ConfigurationError):
        make_source("dtmf:12x")


def test_html_debug_page_shows_the_live_state_redacted(tmp_path):
    from softphone.log import Secret, publish_state, setup_logging

    page = tmp_path / "debug.html"
    Secret("very-secret-token-1")
    try:
        setup_logging(debug_html=True, html_path=page)
        publish_state({"state": "ready", "note": "very-secret-token-1"})
        publish_state({"state": "stopped"})
    finally:
        setup_logging()
    text = page.read_text()
    assert "<pre id='state'>" in text and '"state": "ready"' in text and '"note": "***"' in text
    assert text.rindex('"stopped"') > text.rindex('"ready"')  # the latest state wins as the page loads
    assert "very-secret-token-1" not in text


def test_status_line_and_event_lines_of_the_cli():
    """The Reporter's text (the processes' JSON output is tested against real peers in test_agent_cli)."""
    import io

    from pyee.asyncio import AsyncIOEventEmitter

    from softphone.cli_run import EXIT_AUTH, EXIT_BAD_INPUT, EXIT_NETWORK, Reporter, exit_code_for, one_line
    from softphone.errors import IceGatheringError, ParameterError, PlatformAuthError, PlatformConnectionError
    from softphone.media.stats import CallQuality

    class Session(AsyncIOEventEmitter):  # a stand-in: state and call as the Reporter reads them
        state = AgentState.READY
        call = None

    class LiveCall:
        state = type("S", (), {"value": "answered"})()
        duration = 75.2
        last_stats = CallQuality(loss_fraction=0.012, mos=4.21)
        digits = [events.DtmfEvent("1", 100, "info"), events.DtmfEvent("2", 90, "rfc4733")]

        def received_level_dbfs(self) -> float:
            return -23.4

        def sent_level_dbfs(self) -> float:
            return -15.0

    session = Session()
    out = io.StringIO()
    reporter = Reporter(session, json_events=False, out=out)
    assert reporter.status_text() == "[ready]  no call"
    session.call = LiveCall()
    assert reporter.status_text() == "[ready]  call answered 01:15  tx  -15.0 rx  -23.4 dBFS  loss 1.2%  MOS 4.2  dtmf 12"
    session.emit("logged_out", events.LoggedOut(1001, "stale session from an earlier run", stale=True))
    session.emit("dtmf", events.DtmfEvent("5", 120, "inband"))
    text = out.getvalue()
    assert "logged out a stale session of user 1001 left by an earlier run" in text
    assert "DTMF 5 (120 ms, inband)" in text
    json_out = io.StringIO()
    Reporter(session, json_events=True, out=json_out)
    session.emit("dtmf", events.DtmfEvent("7", 100, "info"))
    assert json.loads(json_out.getvalue().splitlines()[-1])["digit"] == "7"
    assert exit_code_for(PlatformAuthError("bad key", 401)) == EXIT_AUTH
    assert exit_code_for(PlatformConnectionError("refused")) == EXIT_NETWORK
    assert exit_code_for(IceGatheringError("no relay candidate")) == EXIT_NETWORK
    assert exit_code_for(ParameterError([])) == EXIT_BAD_INPUT
    assert one_line(IceGatheringError("no relay\ncandidate")) == "media (TURN/ICE): no relay candidate"


def test_a_bare_query_string_may_carry_urls_in_its_values():
    """`softphone run 'auth_key=...&api_url=http://...'`: the query is not mistaken for a URL."""
    from softphone.params import parse_url

    raw = parse_url("auth_key=k&server=pbx&api_url=http://127.0.0.1:9&sip_ws_url=wss://pbx:8089/ws")
    assert raw["api_url"] == "http://127.0.0.1:9" and raw["server"] == "pbx" and raw.source == "query string"
    full = parse_url("https://pbx/TForge-OmniSense-Webphone.html?auth_key=k&api_url=http://x:1")
    assert full["api_url"] == "http://x:1" and full.source == "URL"


def test_a_phone_keeps_only_the_latest_ended_calls():
    """Each ended Call holds its session and peer connection: a phone answering calls for
    hours keeps the live ones and only ``keep_ended_calls`` of the ended ones."""
    from types import SimpleNamespace

    from softphone.agent.phone import Phone

    phone = Phone()
    phone.keep_ended_calls = 2
    live = SimpleNamespace(is_live=True)
    ended = [SimpleNamespace(is_live=False, n=n) for n in range(5)]
    phone.calls = [ended[0], live, *ended[1:]]
    phone._forget_ended_calls()
    assert phone.calls == [live, ended[3], ended[4]]
