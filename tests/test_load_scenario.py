"""Scenario files: the shipped examples validate, and bad input names its line and field."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from softphone.load.scenario import (
    METRICS,
    ScenarioError,
    Span,
    StepKind,
    load_scenario,
    parse_duration,
    parse_scenario,
    parse_threshold,
)

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples" / "load").glob("*.yaml"))


def test_three_example_scenarios_are_shipped():
    names = {p.stem for p in EXAMPLES}
    assert {"steady_bridge", "outbound_campaign", "inbound_dtmf_menu"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_scenario_validates(path):
    scenario = load_scenario(path)
    assert scenario.loop and scenario.loop[0].kind is StepKind.WAIT_BRIDGE
    assert scenario.thresholds
    assert all(t.metric in METRICS for t in scenario.thresholds)


def test_outbound_example_has_the_steps_of_a_campaign():
    s = load_scenario(next(p for p in EXAMPLES if p.stem == "outbound_campaign"))
    kinds = [step.kind for step in s.loop]
    assert kinds[:3] == [StepKind.WAIT_BRIDGE, StepKind.DIAL, StepKind.TALK]
    dial = s.loop[1]
    assert dial.dial_number(agent=7, iteration=1) == "+15550007"
    talk = s.loop[2]
    assert talk.seconds == Span(20, 40) and talk.record == 0.05
    hold = next(step for step in s.loop if step.kind is StepKind.HOLD)
    assert hold.probability == 0.2
    assert any(step.kind is StepKind.HANGUP for step in s.loop)


def test_inbound_example_expects_the_menu_prompt_and_sends_dtmf():
    s = load_scenario(next(p for p in EXAMPLES if p.stem == "inbound_dtmf_menu"))
    assert s.codec == "pcmu" and s.audio.check
    menu = next(step for step in s.loop if step.kind is StepKind.EXPECT_AUDIO)
    assert menu.expect == "tone:600" and menu.name == "menu_prompt"
    dtmf = next(step for step in s.loop if step.kind is StepKind.DTMF)
    assert dtmf.digits == "2#" and dtmf.interval == pytest.approx(0.15)
    wait = next(step for step in s.loop if step.kind is StepKind.WAIT_CALL)
    assert wait.inject and wait.timeout == 30
    assert s.decode  # the expect_audio step listens for the menu tone


def _error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, source="s.yaml")
    return info.value


def test_unknown_step_option_names_line_and_field():
    err = _error("name: x\nloop:\n  - wait_bridge: {}\n  - talk: {seconds: 3, sekonds: 4}\n")
    assert err.line == 4 and err.field == "loop[1].talk.sekonds"
    assert str(err).startswith("s.yaml:4: loop[1].talk.sekonds: unknown key")


def test_bad_duration_names_line_and_field():
    err = _error("name: x\nloop:\n  - think:\n      seconds: long\n")
    assert (err.line, err.field) == (4, "loop[0].think.seconds")
    assert "duration" in err.reason


def test_range_must_be_ordered():
    err = _error("name: x\nloop:\n  - think: {seconds: [5, 2]}\n")
    assert err.line == 3 and "high is below low" in str(err)


def test_unknown_step_kind_lists_the_known_ones():
    err = _error("name: x\nloop:\n  - wait_bridge\n  - dance: {}\n")
    assert err.line == 4 and "dance" in str(err) and "wait_bridge" in str(err)


def test_missing_required_option():
    err = _error("name: x\nloop:\n  - dial: {timeout: 5s}\n")
    assert err.field == "loop[0].dial.number" and err.reason == "required"


def test_missing_top_level_key_and_unknown_top_level_key():
    assert _error("loop: [hangup]\n").field == "name"
    err = _error("name: x\nloops: []\n")
    assert (err.line, err.field) == (2, "loops")


def test_probability_out_of_range():
    err = _error("name: x\nloop:\n  - hangup: {probability: 1.5}\n")
    assert err.field == "loop[0].hangup.probability" and err.line == 3


def test_dtmf_digits_and_method_are_checked():
    assert _error("name: x\nloop:\n  - dtmf: {digits: '12x'}\n").field == "loop[0].dtmf.digits"
    assert _error("name: x\nloop:\n  - dtmf: {digits: '1', method: sms}\n").field == "loop[0].dtmf.method"


def test_number_template_fields_are_checked():
    err = _error("name: x\nloop:\n  - dial: {number: '+1{customer}'}\n")
    assert err.field == "loop[0].dial.number" and "customer" in err.reason


def test_missing_audio_file_and_bad_tone():
    err = _error("name: x\nplay: nowhere.wav\nloop: [hangup]\n")
    assert (err.line, err.field) == (2, "play") and "not found" in err.reason
    assert _error("name: x\nplay: tone:9000\nloop: [hangup]\n").field == "play"


def test_audio_file_is_relative_to_the_scenario(tmp_path):
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "menu.wav").write_bytes(b"RIFF")
    (tmp_path / "s.yaml").write_text("name: x\naudio: {expect: prompts/menu.wav}\nloop: [wait_bridge]\n")
    s = load_scenario(tmp_path / "s.yaml")
    assert s.audio.expect == str(tmp_path / "prompts" / "menu.wav") and s.audio.check and not s.decode


def test_invalid_yaml_names_the_line():
    err = _error("name: x\nloop:\n  - talk: {seconds: 3\n  - hangup\n")
    assert err.line is not None and "not valid YAML" in str(err)


def test_empty_file():
    assert _error("").line == 1


def test_threshold_error_names_line():
    err = _error("name: x\nloop: [hangup]\nthresholds:\n  - setup_success > 99.5%\n  - p95(setup_success) < 1s\n")
    assert (err.line, err.field) == (5, "thresholds[1]")
    err = _error("name: x\nloop: [hangup]\nthresholds:\n  - p95(nothing) < 1s\n")
    assert "unknown metric" in err.reason


@pytest.mark.parametrize(("text", "metric", "agg", "op", "value"), [
    ("setup_success > 99.5%", "setup_success", None, ">", 0.995),
    ("p95(login_to_audio) < 1s", "login_to_audio", "p95", "<", 1.0),
    ("p99.9(register) <= 800ms", "register", "p99.9", "<=", 0.8),
    ("mean(mos) >= 4", "mos", "mean", ">=", 4.0),
    ("loss < 0.5%", "loss", "mean", "<", 0.005),
    ("pss_per_agent < 1MB", "pss_per_agent", None, "<", 1024 ** 2),
])
def test_parse_threshold(text, metric, agg, op, value):
    t = parse_threshold(text)
    assert (t.metric, t.aggregate, t.op) == (metric, agg, op)
    assert t.value == pytest.approx(value)


@pytest.mark.parametrize(("text", "fragment"), [
    ("setup_success > 99.5", "percentage"),
    ("p95(login_to_audio) < 1", "unit"),
    ("login_to_audio < 1s", "p95(login_to_audio)"),
    ("q95(register) < 1s", "aggregate"),
    ("mos ~ 4", "METRIC OP VALUE"),
])
def test_bad_thresholds_say_why(text, fragment):
    with pytest.raises(ValueError, match=None) as info:
        parse_threshold(text)
    assert fragment in str(info.value)


class _Results:
    def __init__(self, figures):
        self.figures = figures

    def metric(self, name, aggregate):
        return self.figures.get((name, aggregate))


def test_thresholds_evaluate_against_results():
    s = parse_scenario("name: x\nloop: [wait_bridge]\nthresholds:\n"
                       "  - setup_success > 99.5%\n  - p95(login_to_audio) < 1s\n  - mean(mos) > 4\n")
    outcomes = s.evaluate(_Results({("setup_success", None): 1.0, ("login_to_audio", "p95"): 1.2}))
    assert [o.passed for o in outcomes] == [True, False, False]
    assert outcomes[1].actual == 1.2 and "FAILED" in outcomes[1].describe()
    assert outcomes[2].actual is None and "not measured" in outcomes[2].describe()


def test_durations_and_probabilities():
    assert parse_duration("500ms") == 0.5 and parse_duration("2m") == 120 and parse_duration(3) == 3.0
    with pytest.raises(ValueError):
        parse_duration("-1s")
    s = parse_scenario("name: x\nloop:\n  - hangup: {probability: 0.5}\n  - think: {seconds: [1, 2]}\n")
    rng = random.Random(7)
    runs = [len(list(s.passes(rng, i))) for i in range(400)]
    assert 1 in runs and 2 in runs
    assert all(1 <= s.loop[1].seconds.draw(rng) <= 2 for _ in range(50))
