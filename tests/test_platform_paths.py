"""softphone.platform.paths: defaults, overrides from kwargs, files and env, validation."""

from __future__ import annotations

import json

import pytest

from softphone.errors import ConfigurationError
from softphone.platform.paths import DEFAULT_ENDPOINTS, DEFAULT_PATHS, PlatformPaths


def test_defaults_cover_the_table():
    assert DEFAULT_PATHS["authorize"].method == "POST"
    assert DEFAULT_PATHS.path("hangup", user_id=1001, call_id=7) == "/omni/voice/1001/calls/7/hangup"
    assert DEFAULT_PATHS["active_calls"].method == "GET"
    assert DEFAULT_PATHS["campaign_status"].template == DEFAULT_PATHS["set_campaign_status"].template
    assert DEFAULT_PATHS.method("set_campaign_status") == "POST"
    assert set(DEFAULT_PATHS) == set(DEFAULT_ENDPOINTS)


def test_token_only_where_the_contract_says():
    assert not DEFAULT_PATHS["authorize"].is_omni
    assert not DEFAULT_PATHS["lead_archive"].is_omni
    assert not DEFAULT_PATHS["lead_dearchive"].is_omni
    assert DEFAULT_PATHS["login"].is_omni


def test_placeholder_values_are_quoted():
    assert DEFAULT_PATHS.path("hold", user_id="a b", call_id="1/2") == "/omni/voice/a%20b/calls/1%2F2/hold"


def test_missing_placeholder_value_names_it():
    with pytest.raises(ConfigurationError, match="call_id"):
        DEFAULT_PATHS.path("hold", user_id=1)


def test_override_path_keeps_method_and_returns_a_copy():
    p = DEFAULT_PATHS.override(call="/api/v2/{user_id}/dial")
    assert p["call"].method == "POST" and p.path("call", user_id=3) == "/api/v2/3/dial"
    assert DEFAULT_PATHS["call"].template == "/omni/voice/{user_id}/call"
    assert "call" in repr(p) and "hangup" not in repr(p)


@pytest.mark.parametrize("value", ["PUT /x/{campaign_id}", ["put", "/x/{campaign_id}"],
                                   {"method": "PUT", "path": "/x/{campaign_id}"}])
def test_override_method_forms(value):
    p = DEFAULT_PATHS.override(set_campaign_status=value)
    assert (p["set_campaign_status"].method, p["set_campaign_status"].template) == ("PUT", "/x/{campaign_id}")


def test_override_may_drop_a_placeholder():
    p = DEFAULT_PATHS.override(logout="/logout")
    assert p.path("logout", user_id=5) == "/logout"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("call", "/x/{call_id}", "unknown placeholder"),  # call has no call_id
        ("hold", "/x/{foo}", "{foo}"),
        ("hold", "/x/{user_id!r}", "bare name"),
        ("hold", "/x/{", "malformed"),
        ("hold", "x/{user_id}", "must start with '/'"),
        ("hold", "/x?y=1", "query"),
        ("hold", "FETCH /x", "must start with '/'"),
        ("hold", {"method": "TRACE", "path": "/x"}, "TRACE"),
        ("hold", {"url": "/x"}, "'path'"),
        ("hold", 5, "must be a string"),
        ("nosuch", "/x", "unknown path name 'nosuch'"),
    ],
)
def test_invalid_overrides_name_the_problem(name, value, needle):
    with pytest.raises(ConfigurationError) as info:
        DEFAULT_PATHS.override(**{name: value})
    assert needle in str(info.value)
    assert name in str(info.value)


def test_env_overrides():
    env = {"SOFTPHONE_PATH_LOGIN": "/agents/{user_id}/in", "SOFTPHONE_PATH_ACTIVE_CALLS": "POST /calls/{user_id}",
           "OTHER": "x"}
    p = PlatformPaths.load(environ=env)
    assert p.path("login", user_id=1) == "/agents/1/in"
    assert p.method("active_calls") == "POST"


def test_env_error_says_environment():
    with pytest.raises(ConfigurationError, match="environment: path login"):
        PlatformPaths.load(environ={"SOFTPHONE_PATH_LOGIN": "/x/{nope}"})


def test_json_file_then_env_then_kwargs(tmp_path):
    f = tmp_path / "paths.json"
    f.write_text(json.dumps({"paths": {"login": "/a/{user_id}", "logout": "/b/{user_id}"}}))
    env = {"SOFTPHONE_PATH_LOGOUT": "/c/{user_id}"}
    p = PlatformPaths.load(f, environ=env, hangup="/d/{call_id}")
    assert p.path("login", user_id=1) == "/a/1"
    assert p.path("logout", user_id=1) == "/c/1"  # env beats file
    assert p.path("hangup", user_id=1, call_id=2) == "/d/2"


def test_toml_file_from_env_variable(tmp_path):
    f = tmp_path / "paths.toml"
    f.write_text('[paths]\ncall = "/v/{user_id}/call"\n[paths.hold]\nmethod = "PUT"\npath = "/h/{call_id}"\n')
    p = PlatformPaths.load(environ={"SOFTPHONE_PATHS_FILE": str(f)})
    assert p.path("call", user_id=9) == "/v/9/call"
    assert p["hold"].method == "PUT"


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"bad\.json"):
        DEFAULT_PATHS.override_from_file(bad)
    with pytest.raises(ConfigurationError, match="cannot read"):
        DEFAULT_PATHS.override_from_file(tmp_path / "missing.json")
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"hangup": "/x/{campaign_id}"}))
    with pytest.raises(ConfigurationError, match=r"wrong\.json: path hangup"):
        DEFAULT_PATHS.override_from_file(wrong)


def test_unknown_name_lookup():
    with pytest.raises(ConfigurationError, match="unknown path name"):
        DEFAULT_PATHS["nope"]


def test_default_table_matches_the_labs_openapi_document():
    """The client's paths and the lab's published API describe the same endpoints."""
    from importlib import resources

    import yaml

    doc = yaml.safe_load(resources.files("softphone.lab").joinpath("openapi.yaml").read_text("utf-8"))
    published = {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops
                 if method in ("get", "post", "put", "patch", "delete")}
    ours = {(e.method, e.template) for e in DEFAULT_PATHS.values()}
    assert ours == published
