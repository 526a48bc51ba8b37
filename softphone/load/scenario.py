"""The load scenario file: what every agent does in a loop, and the bars the run must meet.

A scenario is YAML because people write it by hand and diff it.  It is composed to
YAML *nodes* (not loaded to plain objects) so that every error names the line and the
field at fault: ``scenario.yaml:14: loop[2].talk.seconds: expected a duration like
30, "30s", "500ms" or [20, 40], got 'long'``.  Unknown keys are errors too (a typo
must not silently fall back to a default).

Shape (see ``examples/*.yaml``)::

    name: outbound-campaign
    codec: opus                 # opus | pcmu | pcma | g722
    play: tone:440              # what agents send: "tone:HZ" or an audio file
    audio:
      check: true               # live audio verdict for every leg (decode on)
      expect: tone:660          # what the far end plays ("is it the expected prompt")
      gap: 1s                   # a silence at least this long is a silent gap
      keep: 3s                  # audio kept around a failure
    iterations: null            # loop passes per agent; null = until the run ends
    loop:
      - wait_bridge: {timeout: 10s}
      - dial: {number: "+1555{agent:04d}", timeout: 20s, probability: 0.8}
      - talk: {seconds: [20, 40], record: 0.05}
      - dtmf: {digits: "1#"}
      - hold: {seconds: 5, probability: 0.2}
      - hangup: {}
      - dispose: {code: SALE}
      - think: {seconds: [2, 5]}
    thresholds:
      - setup_success > 99.5%
      - p95(login_to_audio) < 1s

Every step takes ``name`` (its label in results), ``probability`` (0..1, default 1)
and ``timeout`` (a duration, default per kind).  Durations are seconds as a number,
a string with ``ms``/``s``/``m``, or ``[low, high]`` for a uniform draw per pass.

Thresholds are ``METRIC OP VALUE`` with ``OP`` one of ``< <= > >=`` and ``METRIC`` a
name from :data:`METRICS`, optionally aggregated: ``p95(name)``, ``mean(name)``,
``max(name)``, ``min(name)``.  They parse into :class:`Threshold` objects evaluated
against anything with a ``metric(name, aggregate)`` method (the run's results).
"""

from __future__ import annotations

import enum
import math
import operator
import random
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from softphone.errors import ConfigurationError
from softphone.log import get_logger

log = get_logger(__name__)


class ScenarioError(ConfigurationError):
    """The scenario file is unusable; the message starts with ``file:line: field:``."""

    def __init__(self, message: str, *, source: str = "<scenario>", line: int | None = None,
                 field: str = "") -> None:
        self.source = source
        self.line = line
        self.field = field
        self.reason = message
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {field + ': ' if field else ''}{message}")


# --- durations ------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A duration in seconds, fixed (``low == high``) or drawn uniformly per use."""

    low: float
    high: float

    @classmethod
    def fixed(cls, seconds: float) -> Span:
        return cls(seconds, seconds)

    def draw(self, rng: random.Random) -> float:
        return self.low if self.low == self.high else rng.uniform(self.low, self.high)

    def __str__(self) -> str:
        return f"{self.low:g}s" if self.low == self.high else f"[{self.low:g}s, {self.high:g}s]"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min)?\s*$")
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "min": 60.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``30``, ``"30s"``, ``"500ms"``, ``"2m"``; ValueError otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"expected a duration, got {text!r}")
    if isinstance(text, int | float):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"expected a duration like 30, \"30s\" or \"500ms\", got {text!r}")
        value = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"a duration must be a finite number >= 0, got {text!r}")
    return value


# --- steps ----------------------------------------------------------------------------


class StepKind(enum.Enum):
    """What one step of an agent's loop does."""

    WAIT_BRIDGE = "wait_bridge"    # the platform's bridge call arrives and is answered
    WAIT_CALL = "wait_call"        # an inbound customer call is offered to the agent
    DIAL = "dial"                  # an outbound call via the voice API to a (simulated) customer
    TALK = "talk"                  # audio both ways for a while (play, maybe record)
    DTMF = "dtmf"                  # send digits
    EXPECT_AUDIO = "expect_audio"  # wait until the far end's audio is (or is not) the expected prompt
    HOLD = "hold"                  # hold, wait, retrieve
    HANGUP = "hangup"              # end the customer call
    DISPOSE = "dispose"            # disposition code for the last call
    THINK = "think"                # idle (wrap-up, think time)


#: Default timeout per kind (seconds); None = the step's own length bounds it.
DEFAULT_TIMEOUTS: dict[StepKind, float | None] = {
    StepKind.WAIT_BRIDGE: 15.0,
    StepKind.WAIT_CALL: 60.0,
    StepKind.DIAL: 30.0,
    StepKind.TALK: None,
    StepKind.DTMF: 10.0,
    StepKind.EXPECT_AUDIO: 10.0,
    StepKind.HOLD: 10.0,
    StepKind.HANGUP: 10.0,
    StepKind.DISPOSE: 10.0,
    StepKind.THINK: None,
}


@dataclass(frozen=True, kw_only=True)
class Step:
    """One step; the kind-specific fields are ``None`` / defaults where they do not apply.

    ``line`` is where the step is in the file, so a failure can point back at it.
    """

    kind: StepKind
    name: str
    probability: float = 1.0
    timeout: float | None = None
    line: int | None = None
    # kind-specific
    seconds: Span | None = None        # talk, hold, think
    play: str | None = None            # talk: what to send instead of the scenario's `play`
    record: float = 0.0                # talk: fraction of talk steps recorded (the agent's file, the platform's API)
    number: str | None = None          # dial: number template ({agent}, {iteration})
    caller_id: str | None = None       # dial
    digits: str | None = None          # dtmf
    method: str = "rfc4733"            # dtmf: rfc4733 | info
    interval: float = 0.1              # dtmf: seconds between digits
    expect: str | None = None          # expect_audio: "tone:HZ", a file, or "silence"
    code: str | None = None            # dispose
    inject: bool = False               # wait_call: ask the lab to place the inbound call

    def happens(self, rng: random.Random) -> bool:
        """Draw whether this pass runs the step (``probability``)."""
        return self.probability >= 1.0 or rng.random() < self.probability

    def dial_number(self, agent: int, iteration: int) -> str:
        assert self.number is not None
        return self.number.format(agent=agent, iteration=iteration)


@dataclass(frozen=True)
class AudioCheck:
    """What the audio verdict checks on every leg."""

    check: bool = False
    expect: str | None = None  # "tone:HZ" or a file path the far end plays
    gap: float = 1.0           # silence at least this long (s) is a silent gap
    keep: float = 3.0          # seconds of audio kept around a failure


# --- metrics and thresholds -----------------------------------------------------------


class MetricKind(enum.Enum):
    RATE = "rate"        # a fraction of events, written with %
    SAMPLES = "samples"  # many observations: aggregate with pNN/mean/max/min
    VALUE = "value"      # one figure for the run


class Unit(enum.Enum):
    FRACTION = "fraction"  # written "99.5%"
    SECONDS = "seconds"    # written "1s", "800ms"
    BYTES = "bytes"        # written "1MB", "512KB"
    NUMBER = "number"      # bare


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: MetricKind
    unit: Unit
    description: str
    default_aggregate: str | None = None  # for SAMPLES written without one


def _m(name: str, kind: MetricKind, unit: Unit, description: str, agg: str | None = None) -> MetricSpec:
    return MetricSpec(name, kind, unit, description, agg)


_R, _S, _V = MetricKind.RATE, MetricKind.SAMPLES, MetricKind.VALUE
#: Every metric a threshold may name (the results compute each of them).
METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    _m("authorize", _S, Unit.SECONDS, "system key + credentials -> token"),
    _m("register", _S, Unit.SECONDS, "SIP REGISTER sent -> 200 OK"),
    _m("login_to_bridge", _S, Unit.SECONDS, "User Login API -> bridge call answered"),
    _m("ice_connected", _S, Unit.SECONDS, "offer/answer -> ICE connected"),
    _m("first_audio", _S, Unit.SECONDS, "call answered -> first audio packet"),
    _m("login_to_audio", _S, Unit.SECONDS, "User Login API -> first audio packet of the bridge call"),
    _m("outbound_answered", _S, Unit.SECONDS, "voice API dial -> customer answered"),
    _m("setup_success", _R, Unit.FRACTION, "agent sessions that reached the bridge call with audio"),
    _m("call_success", _R, Unit.FRACTION, "calls (legs) set up and ended without a failure"),
    _m("audio_heard", _R, Unit.FRACTION, "checked legs whose far-end audio was heard"),
    _m("one_way", _R, Unit.FRACTION, "checked legs with one-way audio"),
    _m("silent_gaps", _R, Unit.FRACTION, "checked legs with at least one silent gap"),
    _m("prompt_match", _R, Unit.FRACTION, "legs with an expected prompt that heard it"),
    _m("loss", _S, Unit.FRACTION, "packet loss per leg", "mean"),
    _m("jitter", _S, Unit.SECONDS, "interarrival jitter per leg", "mean"),
    _m("rtt", _S, Unit.SECONDS, "round-trip time per leg (RTCP)", "mean"),
    _m("mos", _S, Unit.NUMBER, "estimated MOS per leg (E-model)", "mean"),
    _m("loop_lag", _S, Unit.SECONDS, "event-loop lag samples of the workers", "p99"),
    _m("cpu_per_agent_second", _V, Unit.NUMBER, "worker CPU-seconds per agent-second"),
    _m("pss_per_agent", _V, Unit.BYTES, "workers' proportional set size per agent"),
)}

_AGGREGATE = re.compile(r"^(?:p(\d{1,2}(?:\.\d+)?)|mean|max|min)$")
_THRESHOLD = re.compile(
    r"^\s*(?:(?P<agg>[A-Za-z][\w.]*)\s*\(\s*(?P<inner>\w+)\s*\)|(?P<bare>\w+))\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<num>[-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(?P<unit>%|ms|s|min|m|kb|mb|gb|b)?\s*$",
    re.IGNORECASE)
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_BYTE_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3}


class MetricSource(Protocol):
    """What thresholds are evaluated against (the run's results)."""

    def metric(self, name: str, aggregate: str | None) -> float | None: ...


@dataclass(frozen=True)
class ThresholdOutcome:
    threshold: Threshold
    actual: float | None  # None: the run did not measure it (counts as failed)
    passed: bool

    def describe(self) -> str:
        shown = "not measured" if self.actual is None else self.threshold.format_value(self.actual)
        return f"{self.threshold.text}: {'ok' if self.passed else 'FAILED'} (actual {shown})"


@dataclass(frozen=True)
class Threshold:
    """``aggregate(metric) op value`` with ``value`` in the metric's base unit."""

    metric: str
    aggregate: str | None
    op: str
    value: float
    text: str
    line: int | None = None

    @property
    def spec(self) -> MetricSpec:
        return METRICS[self.metric]

    def evaluate(self, source: MetricSource) -> ThresholdOutcome:
        actual = source.metric(self.metric, self.aggregate)
        passed = actual is not None and _OPS[self.op](actual, self.value)
        return ThresholdOutcome(self, actual, passed)

    def format_value(self, value: float) -> str:
        unit = self.spec.unit
        if unit is Unit.FRACTION:
            return f"{value * 100:.3g}%"
        if unit is Unit.SECONDS:
            return f"{value * 1000:.4g}ms" if value < 1 else f"{value:.4g}s"
        if unit is Unit.BYTES:
            return f"{value / 1024 ** 2:.3g}MB"
        return f"{value:.4g}"


def parse_threshold(text: str, line: int | None = None) -> Threshold:
    """Parse ``"p95(login_to_audio) < 1s"``; ValueError (naming the part at fault) otherwise."""
    m = _THRESHOLD.match(text)
    if not m:
        raise ValueError(f"expected METRIC OP VALUE such as \"p95(login_to_audio) < 1s\" or "
                         f"\"setup_success > 99.5%\", got {text!r}")
    name = (m.group("inner") or m.group("bare")).lower()
    agg = m.group("agg").lower() if m.group("agg") else None
    spec = METRICS.get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(sorted(METRICS))}")
    if agg is not None:
        am = _AGGREGATE.match(agg)
        if not am:
            raise ValueError(f"unknown aggregate {agg!r}: use pNN (p50, p95, p99.9), mean, max or min")
        if am.group(1) is not None and not 0 < float(am.group(1)) < 100:
            raise ValueError(f"percentile {agg!r} must be between p0 and p100")
        if spec.kind is not MetricKind.SAMPLES:
            raise ValueError(f"{name} is a single figure for the run: write it without {agg}(...)")
    elif spec.kind is MetricKind.SAMPLES:
        if spec.default_aggregate is None:
            raise ValueError(f"{name} has one sample per event: say which figure, e.g. p95({name})")
        agg = spec.default_aggregate
    number = float(m.group("num"))
    unit = (m.group("unit") or "").lower()
    if spec.unit is Unit.FRACTION:
        if unit != "%":
            raise ValueError(f"{name} is a rate: write the value as a percentage, e.g. 99.5%")
        value = number / 100.0
    elif spec.unit is Unit.SECONDS:
        if unit not in ("s", "ms", "m", "min"):
            raise ValueError(f"{name} is a time: give a unit, e.g. 1s or 800ms")
        value = number * _DURATION_UNITS[unit]
    elif spec.unit is Unit.BYTES:
        if unit not in _BYTE_UNITS:
            raise ValueError(f"{name} is a size: give a unit, e.g. 1MB or 512KB")
        value = number * _BYTE_UNITS[unit]
    else:
        if unit:
            raise ValueError(f"{name} is a plain number: drop the unit {unit!r}")
        value = number
    return Threshold(name, agg, m.group("op"), value, text.strip(), line)


# --- the scenario ---------------------------------------------------------------------


CODEC_NAMES = ("opus", "pcmu", "pcma", "g722")


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; build it with :func:`load_scenario` or :func:`parse_scenario`."""

    name: str
    loop: tuple[Step, ...]
    description: str = ""
    codec: str = "opus"
    play: str = "tone:440"
    audio: AudioCheck = field(default_factory=AudioCheck)
    iterations: int | None = None
    thresholds: tuple[Threshold, ...] = ()
    source: str = "<scenario>"

    @property
    def decode(self) -> bool:
        """Whether agents must decode received audio (lean path otherwise).

        Only ``expect_audio`` steps need decoded audio (a tone detector on the call);
        the audio verdict (``audio.check``) reads undecoded payloads.
        """
        return any(s.kind is StepKind.EXPECT_AUDIO for s in self.loop)

    def evaluate(self, results: MetricSource) -> list[ThresholdOutcome]:
        return [t.evaluate(results) for t in self.thresholds]

    def passes(self, rng: random.Random, iteration: int) -> Iterator[Step]:
        """The steps one pass of the loop runs (probabilities drawn)."""
        del iteration  # reserved: per-iteration variation
        for step in self.loop:
            if step.happens(rng):
                yield step


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; file paths in it are relative to the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(exc.strerror or str(exc), source=str(p)) from exc
    return parse_scenario(text, source=str(p), base_dir=p.parent)


def parse_scenario(text: str, *, source: str = "<scenario>", base_dir: Path | None = None) -> Scenario:
    """Validate scenario YAML ``text``; :class:`ScenarioError` names the line and field at fault."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise ScenarioError(f"not valid YAML: {exc.problem or exc}", source=source,
                            line=mark.line + 1 if mark else None) from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"not valid YAML: {exc}", source=source) from None
    return _Parser(source, base_dir).scenario(root)


#: What ``softphone load`` and the Locust user run without a scenario file.
DEFAULT_SCENARIO = """\
name: steady-bridge
description: agents log in and stay on the bridge call (the default scenario)
play: tone:440
audio: {check: true}
iterations: 1
loop:
  - wait_bridge: {timeout: 15s}
  - talk: {seconds: 86400, name: on_bridge}
thresholds:
  - setup_success > 99.5%
"""


_TOP_KEYS = ("name", "description", "codec", "play", "audio", "iterations", "loop", "thresholds")
_AUDIO_KEYS = ("check", "expect", "gap", "keep")
_COMMON_STEP_KEYS = ("name", "probability", "timeout")
_STEP_KEYS: dict[StepKind, tuple[str, ...]] = {
    StepKind.WAIT_BRIDGE: (),
    StepKind.WAIT_CALL: ("inject",),
    StepKind.DIAL: ("number", "caller_id"),
    StepKind.TALK: ("seconds", "play", "record"),
    StepKind.DTMF: ("digits", "method", "interval"),
    StepKind.EXPECT_AUDIO: ("expect",),
    StepKind.HOLD: ("seconds",),
    StepKind.HANGUP: (),
    StepKind.DISPOSE: ("code",),
    StepKind.THINK: ("seconds",),
}
_REQUIRED: dict[StepKind, tuple[str, ...]] = {
    StepKind.DIAL: ("number",), StepKind.TALK: ("seconds",), StepKind.DTMF: ("digits",),
    StepKind.EXPECT_AUDIO: ("expect",), StepKind.HOLD: ("seconds",), StepKind.DISPOSE: ("code",),
    StepKind.THINK: ("seconds",),
}
_DTMF_CHARS = set("0123456789*#ABCDabcd")
_TEMPLATE_FIELDS = {"agent", "iteration"}


class _Parser:
    """Walks composed YAML nodes, converting and validating with line numbers."""

    def __init__(self, source: str, base_dir: Path | None) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, node: yaml.Node | None, path: str, message: str) -> ScenarioError:
        line = node.start_mark.line + 1 if node is not None else None
        return ScenarioError(message, source=self.source, line=line, field=path)

    # -- node helpers

    def mapping(self, node: yaml.Node, path: str, allowed: tuple[str, ...]) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, f"expected a mapping with keys {', '.join(allowed)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            where = f"{path}.{key}" if path else str(key)
            if key not in allowed:
                raise self.fail(key_node, where, f"unknown key; expected one of {', '.join(allowed)}")
            if key in out:
                raise self.fail(key_node, where, "given twice")
            out[key] = (key_node, value_node)
        return out

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, path, "expected a single value, not a list or mapping")
        return yaml.SafeLoader(" ").construct_object(node) if node.tag != "tag:yaml.org,2002:str" else node.value

    def string(self, node: yaml.Node, path: str) -> str:
        value = self.scalar(node, path)
        if value is None or isinstance(value, bool | list | dict):
            raise self.fail(node, path, f"expected text, got {node.value!r}")
        return str(value)

    def boolean(self, node: yaml.Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            raise self.fail(node, path, f"expected true or false, got {node.value!r}")
        return value

    def number(self, node: yaml.Node, path: str, lo: float, hi: float) -> float:
        value = self.scalar(node, path)
        if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
            raise self.fail(node, path, f"expected a number from {lo:g} to {hi:g}, got {node.value!r}")
        return float(value)

    def duration(self, node: yaml.Node, path: str) -> float:
        try:
            return parse_duration(self.scalar(node, path))
        except ValueError as exc:
            raise self.fail(node, path, str(exc)) from None

    def span(self, node: yaml.Node, path: str) -> Span:
        if isinstance(node, yaml.SequenceNode):
            if len(node.value) != 2:
                raise self.fail(node, path, "a range is [low, high]")
            low = self.duration(node.value[0], path + "[0]")
            high = self.duration(node.value[1], path + "[1]")
            if high < low:
                raise self.fail(node, path, f"range [{low:g}, {high:g}]: high is below low")
            return Span(low, high)
        return Span.fixed(self.duration(node, path))

    def audio_source(self, node: yaml.Node, path: str, *, allow_silence: bool = False) -> str:
        text = self.string(node, path).strip()
        if text.startswith("tone:"):
            try:
                hz = float(text[5:])
            except ValueError:
                raise self.fail(node, path, f"tone:HZ needs a frequency in Hz, got {text!r}") from None
            if not 20 <= hz <= 4000:
                raise self.fail(node, path, f"tone frequency {hz:g} Hz is outside 20..4000 Hz "
                                            "(must survive an 8 kHz codec)")
            return f"tone:{hz:g}"
        if allow_silence and text == "silence":
            return text
        p = Path(text)
        if not p.is_absolute() and self.base_dir is not None:
            p = self.base_dir / p
        if not p.is_file():
            raise self.fail(node, path, f"audio file {text!r} not found (paths are relative to the "
                                        "scenario file); or use tone:HZ")
        return str(p)

    # -- the document

    def scenario(self, root: yaml.Node | None) -> Scenario:
        if root is None:
            raise ScenarioError("the file is empty", source=self.source, line=1)
        top = self.mapping(root, "", _TOP_KEYS)
        for required in ("name", "loop"):
            if required not in top:
                raise self.fail(root, required, "required")
        kw: dict[str, Any] = {"source": self.source}
        kw["name"] = self.string(top["name"][1], "name")
        if "description" in top:
            kw["description"] = self.string(top["description"][1], "description")
        if "codec" in top:
            codec = self.string(top["codec"][1], "codec").lower()
            if codec not in CODEC_NAMES:
                raise self.fail(top["codec"][1], "codec", f"expected one of {', '.join(CODEC_NAMES)}, got {codec!r}")
            kw["codec"] = codec
        if "play" in top:
            kw["play"] = self.audio_source(top["play"][1], "play")
        if "audio" in top:
            kw["audio"] = self.audio(top["audio"][1])
        if "iterations" in top:
            node = top["iterations"][1]
            value = self.scalar(node, "iterations")
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise self.fail(node, "iterations", f"expected a whole number >= 1 or null, got {node.value!r}")
                kw["iterations"] = value
        kw["loop"] = self.loop(top["loop"][1])
        if "thresholds" in top:
            kw["thresholds"] = self.thresholds(top["thresholds"][1])
        return Scenario(**kw)

    def audio(self, node: yaml.Node) -> AudioCheck:
        keys = self.mapping(node, "audio", _AUDIO_KEYS)
        expect = self.audio_source(keys["expect"][1], "audio.expect") if "expect" in keys else None
        check = self.boolean(keys["check"][1], "audio.check") if "check" in keys else True
        gap = self.duration(keys["gap"][1], "audio.gap") if "gap" in keys else 1.0
        keep = self.duration(keys["keep"][1], "audio.keep") if "keep" in keys else 3.0
        if gap < 0.2:
            raise self.fail(keys["gap"][1], "audio.gap", "must be at least 200ms (the verdict works in blocks)")
        if keep > 30:
            raise self.fail(keys["keep"][1], "audio.keep", "at most 30s of audio is kept per failed leg")
        return AudioCheck(check=check, expect=expect, gap=gap, keep=keep)

    def loop(self, node: yaml.Node) -> tuple[Step, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            raise self.fail(node, "loop", "expected a non-empty list of steps")
        return tuple(self.step(item, f"loop[{i}]") for i, item in enumerate(node.value))

    def step(self, node: yaml.Node, path: str) -> Step:
        kinds = [k.value for k in StepKind]
        if isinstance(node, yaml.ScalarNode):  # "- hangup" as shorthand for "- hangup: {}"
            name = node.value
            body: yaml.Node | None = None
            key_node = node
        elif isinstance(node, yaml.MappingNode) and len(node.value) == 1:
            key_node, body = node.value[0]
            name = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        else:
            raise self.fail(node, path, f"a step is one of {', '.join(kinds)} with its options, "
                                        "e.g. `- talk: {seconds: 30}`")
        try:
            kind = StepKind(name)
        except ValueError:
            raise self.fail(key_node, path, f"unknown step {name!r}; expected one of {', '.join(kinds)}") from None
        path = f"{path}.{kind.value}"
        allowed = _COMMON_STEP_KEYS + _STEP_KEYS[kind]
        is_empty = body is None or (isinstance(body, yaml.ScalarNode) and body.tag == "tag:yaml.org,2002:null")
        keys = {} if is_empty else self.mapping(body, path, allowed)
        for required in _REQUIRED.get(kind, ()):
            if required not in keys:
                raise self.fail(body if body is not None else node, f"{path}.{required}", "required")
        kw: dict[str, Any] = {"kind": kind, "name": kind.value, "line": key_node.start_mark.line + 1,
                              "timeout": DEFAULT_TIMEOUTS[kind]}
        for key, (_, value) in keys.items():
            where = f"{path}.{key}"
            if key == "name":
                kw["name"] = self.string(value, where)
            elif key == "probability":
                kw["probability"] = self.number(value, where, 0.0, 1.0)
            elif key == "timeout":
                kw["timeout"] = self.duration(value, where)
                if kw["timeout"] <= 0:
                    raise self.fail(value, where, "must be above 0")
            elif key == "seconds":
                kw["seconds"] = self.span(value, where)
            elif key == "play":
                kw["play"] = self.audio_source(value, where)
            elif key == "record":
                kw["record"] = self.number(value, where, 0.0, 1.0)
            elif key == "number":
                kw["number"] = self.template(value, where)
            elif key == "caller_id":
                kw["caller_id"] = self.string(value, where)
            elif key == "digits":
                digits = self.string(value, where)
                bad = sorted(set(digits) - _DTMF_CHARS)
                if not digits or bad:
                    raise self.fail(value, where, f"DTMF digits are 0-9 * # A-D, got {digits!r}")
                kw["digits"] = digits.upper()
            elif key == "method":
                method = self.string(value, where).lower()
                if method not in ("rfc4733", "info"):
                    raise self.fail(value, where, f"expected rfc4733 or info, got {method!r}")
                kw["method"] = method
            elif key == "interval":
                kw["interval"] = self.duration(value, where)
            elif key == "expect":
                kw["expect"] = self.audio_source(value, where, allow_silence=True)
            elif key == "code":
                kw["code"] = self.string(value, where)
            elif key == "inject":
                kw["inject"] = self.boolean(value, where)
        return Step(**kw)

    def template(self, node: yaml.Node, path: str) -> str:
        text = self.string(node, path)
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            text.format(agent=1, iteration=1)
        except (ValueError, IndexError, KeyError) as exc:
            raise self.fail(node, path, f"bad number template {text!r}: {exc}; fields: "
                                        "{agent}, {iteration}, e.g. \"+1555{agent:04d}\"") from None
        unknown = fields - _TEMPLATE_FIELDS
        if unknown:
            raise self.fail(node, path, f"unknown field(s) {sorted(unknown)} in {text!r}; use {{agent}} or {{iteration}}")
        return text

    def thresholds(self, node: yaml.Node) -> tuple[Threshold, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, "thresholds", "expected a list such as [\"setup_success > 99.5%\"]")
        out = []
        for i, item in enumerate(node.value):
            where = f"thresholds[{i}]"
            text = self.string(item, where)
            try:
                out.append(parse_threshold(text, item.start_mark.line + 1))
            except ValueError as exc:
                raise self.fail(item, where, str(exc)) from None
        return tuple(out)
