"""What a load run measured: latencies, failures by cause, every call leg, resources, time series.

Plain data, no I/O in the hot path: workers append records as things happen and send
their :class:`Results` to the parent, which :meth:`Results.merge`\\ s them.  The figures
a threshold may name (:data:`softphone.load.scenario.METRICS`) come from
:meth:`Results.metric`; the outputs are JSON (everything, the report reads it back),
CSV (one file per table, for spreadsheets) and JUnit XML (thresholds as test cases, for
CI).  A run whose threshold fails exits with :data:`EXIT_THRESHOLD_FAILED`.

Times are seconds since the run started (``at``); latencies are seconds.
"""

from __future__ import annotations

import csv
import enum
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from softphone.load.scenario import METRICS, MetricKind, ThresholdOutcome
from softphone.log import get_logger

log = get_logger(__name__)

#: Exit status of ``softphone load`` when the run completed but a threshold failed
#: (1 is a runtime failure, 2 bad input, 130 interrupted).
EXIT_THRESHOLD_FAILED = 3

#: Latency metrics recorded per step (seconds), in the order reports show them.
LATENCY_METRICS = ("authorize", "register", "login_to_bridge", "ice_connected", "first_audio",
                   "login_to_audio", "outbound_answered")


class FailureKind(enum.Enum):
    SIP = "sip"              # a SIP final response (code in sip_code)
    HTTP = "http"            # a platform API error (status in http_status)
    ICE = "ice"              # ICE / DTLS did not connect
    TIMEOUT = "timeout"      # a step's timeout (step names which)
    ONE_WAY = "one_way"      # audio verdict: nothing heard
    SILENT_GAP = "silent_gap"
    PROMPT = "prompt"        # audio verdict: not the expected prompt
    NOT_ANSWERED = "not_answered"  # a dialled call ended unanswered (why: sip_code when known)
    ERROR = "error"          # anything else (message in detail)


@dataclass(frozen=True)
class Failure:
    kind: FailureKind
    step: str
    at: float
    agent: int
    detail: str = ""
    sip_code: int | None = None
    http_status: int | None = None
    leg: str | None = None
    call_id: int | None = None  # the platform's call (dialled calls)

    @property
    def cause(self) -> str:
        """The label failures are grouped by: "SIP 486", "HTTP 503", "timeout: dial", ..."""
        if self.kind is FailureKind.SIP:
            return f"SIP {self.sip_code}" if self.sip_code else "SIP"
        if self.kind is FailureKind.NOT_ANSWERED:
            return f"not answered: SIP {self.sip_code}" if self.sip_code else "not answered"
        if self.kind is FailureKind.HTTP:
            return f"HTTP {self.http_status}" if self.http_status else "HTTP"
        if self.kind is FailureKind.TIMEOUT:
            return f"timeout: {self.step}"
        return {FailureKind.ICE: "ICE failed", FailureKind.ONE_WAY: "one-way audio",
                FailureKind.SILENT_GAP: "silent gap", FailureKind.PROMPT: "wrong prompt",
                FailureKind.ERROR: f"error: {self.step}"}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["cause"] = self.cause
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Failure:
        d = {k: v for k, v in d.items() if k != "cause"}
        return cls(**{**d, "kind": FailureKind(d["kind"])})


@dataclass(frozen=True)
class Latency:
    metric: str
    seconds: float
    at: float
    agent: int


@dataclass(frozen=True)
class SipLine:
    """One line of a call's SIP ladder."""

    at: float
    direction: str  # "->" sent, "<-" received
    summary: str    # "INVITE", "180 Ringing", "200 OK", "ACK", "BYE"


@dataclass(frozen=True)
class QualityPoint:
    at: float
    loss: float | None
    jitter_ms: float | None
    rtt_ms: float | None
    mos: float | None


@dataclass
class Leg:
    """One call leg as the agent saw it."""

    leg: str
    agent: int
    kind: str                     # "bridge" | "outbound" | "inbound"
    started: float
    answered: float | None = None
    ended: float | None = None
    codec: str | None = None
    ice_pair: str | None = None   # "relay 127.0.0.1:50000 <-> host 127.0.0.1:40000 (udp)"
    loss: float | None = None     # fraction
    jitter_ms: float | None = None
    rtt_ms: float | None = None
    mos: float | None = None      # None: unmeasured (no RTCP yet, or no packets)
    packets_received: int = 0
    audio: dict[str, Any] | None = None  # LegVerdict.to_dict()
    failure: str | None = None    # the cause label when the leg failed
    sip: list[SipLine] = field(default_factory=list)
    quality: list[QualityPoint] = field(default_factory=list)
    clip: str | None = None       # path of the kept audio (failed legs only)

    @property
    def duration(self) -> float | None:
        return None if self.answered is None or self.ended is None else self.ended - self.answered

    def badness(self) -> float:
        """Higher is worse: failed first, then low MOS, loss and jitter (for "the 10 worst calls")."""
        score = 0.0
        if self.failure:
            score += 100.0
        if self.audio and self.audio.get("failed"):
            score += 50.0
        if self.mos is not None:
            score += (4.5 - self.mos) * 10.0
        if self.loss is not None:
            score += self.loss * 100.0
        if self.jitter_ms is not None:
            score += self.jitter_ms / 10.0
        return score

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["duration"] = self.duration
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Leg:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["sip"] = [SipLine(**s) for s in d.get("sip", [])]
        kw["quality"] = [QualityPoint(**q) for q in d.get("quality", [])]
        return cls(**kw)


@dataclass(frozen=True)
class Recording:
    """What an agent heard during one sampled talk step (``talk: {record: F}``), saved as a file."""

    path: str                      # the file (under the run's output directory)
    agent: int
    iteration: int                 # the scenario's pass
    step: str                      # the talk step's name
    leg: str | None                # the call leg it was taken from
    started: float                 # seconds into the run
    seconds: float
    packets: int
    call_id: int | None = None     # the platform's customer call it covered, if any


@dataclass(frozen=True)
class Session:
    """One agent session: did it reach the bridge call with audio."""

    agent: int
    ok: bool
    started: float
    cause: str | None = None
    logged_out: bool | None = None    # the User Logout API answered (None: never logged in)
    unregistered: bool | None = None  # the registrar confirmed the unregister (None: never registered)


@dataclass(frozen=True)
class Resource:
    """One worker's resources at one moment."""

    at: float
    worker: int
    cpu_s: float          # cumulative process CPU seconds
    pss_bytes: int | None
    loop_lag_ms: float    # the worst lag in the sampling interval
    agents: int
    gc_pause_ms: float = 0.0  # the garbage collector's worst pause in the interval


@dataclass(frozen=True)
class Snapshot:
    """The whole run at one moment (one point of every time-series plot)."""

    at: float
    active_agents: int = 0
    registered: int = 0
    in_call: int = 0
    calls: int = 0         # cumulative calls started
    failures: int = 0      # cumulative failures
    cpu_cores: float = 0.0  # all workers
    pss_mb: float = 0.0     # all workers
    loop_lag_ms: float = 0.0  # the worst worker's
    gc_pause_ms: float = 0.0  # the worst worker's longest garbage-collector pause


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return float(xs[0])
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))


def aggregate(values: Sequence[float], how: str) -> float | None:
    if not values:
        return None
    if how == "mean":
        return float(sum(values) / len(values))
    if how == "max":
        return float(max(values))
    if how == "min":
        return float(min(values))
    if how.startswith("p"):
        return percentile(values, float(how[1:]))
    raise ValueError(f"aggregate: unknown {how!r}")


class Results:
    """Everything one run (or one worker of it) measured."""

    def __init__(self, scenario: str = "", *, started_at: float | None = None, agents: int = 0,
                 workers: int = 1) -> None:
        self.scenario = scenario
        self.started_at = time.time() if started_at is None else started_at
        self.agents = agents
        self.workers = workers
        self.duration = 0.0
        self.latencies: list[Latency] = []
        self.failures: list[Failure] = []
        self.legs: list[Leg] = []
        self.sessions: list[Session] = []
        self.recordings: list[Recording] = []
        self.resources: list[Resource] = []
        self.snapshots: list[Snapshot] = []
        self.interrupted = False

    # -- recording

    def latency(self, metric: str, seconds: float, *, at: float, agent: int) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric: unknown {metric!r}")
        self.latencies.append(Latency(metric, float(seconds), float(at), agent))

    def fail(self, failure: Failure) -> None:
        self.failures.append(failure)

    def merge(self, other: Results) -> Results:
        """Add a worker's results (times are already relative to the same start)."""
        self.latencies += other.latencies
        self.failures += other.failures
        self.legs += other.legs
        self.sessions += other.sessions
        self.recordings += other.recordings
        self.resources += other.resources
        self.duration = max(self.duration, other.duration)
        self.interrupted = self.interrupted or other.interrupted
        return self

    # -- figures

    def samples(self, metric: str) -> list[float]:
        if metric in LATENCY_METRICS:
            return [x.seconds for x in self.latencies if x.metric == metric]
        if metric in ("loss", "jitter", "rtt", "mos"):
            attr = {"loss": "loss", "jitter": "jitter_ms", "rtt": "rtt_ms", "mos": "mos"}[metric]
            scale = 0.001 if metric in ("jitter", "rtt") else 1.0
            return [getattr(leg, attr) * scale for leg in self.legs if getattr(leg, attr) is not None]
        if metric == "loop_lag":
            return [r.loop_lag_ms / 1000.0 for r in self.resources]
        return []

    def checked_legs(self) -> list[Leg]:
        return [leg for leg in self.legs if leg.audio and leg.audio.get("status") != "unchecked"]

    def rate(self, metric: str) -> float | None:
        if metric == "setup_success":
            return _fraction(sum(s.ok for s in self.sessions), len(self.sessions))
        if metric == "call_success":
            return _fraction(sum(leg.failure is None for leg in self.legs), len(self.legs))
        checked = self.checked_legs()
        if metric == "audio_heard":
            return _fraction(sum(leg.audio["status"] in ("heard", "silent_gaps") for leg in checked), len(checked))
        if metric == "one_way":
            return _fraction(sum(leg.audio["status"] == "one_way" for leg in checked), len(checked))
        if metric == "silent_gaps":
            return _fraction(sum(leg.audio["status"] == "silent_gaps" for leg in checked), len(checked))
        if metric == "prompt_match":
            judged = [leg for leg in self.legs if leg.audio and leg.audio.get("prompt") is not None]
            return _fraction(sum(leg.audio["prompt"] is True for leg in judged), len(judged))
        raise ValueError(f"metric: {metric!r} is not a rate")

    def agent_seconds(self) -> float:
        """Integral of active agents over time (from the snapshots)."""
        snaps = sorted(self.snapshots, key=lambda s: s.at)
        return sum(a.active_agents * (b.at - a.at) for a, b in itertools.pairwise(snaps))

    def value(self, metric: str) -> float | None:
        if metric == "cpu_per_agent_second":
            agent_s = self.agent_seconds()
            cpu = self.cpu_seconds()
            return cpu / agent_s if agent_s > 0 and cpu is not None else None
        if metric == "pss_per_agent":
            return self.pss_per_agent()
        raise ValueError(f"metric: {metric!r} is not a single figure")

    def cpu_seconds(self) -> float | None:
        """CPU used by all workers over the run (last minus first sample of each)."""
        by_worker: dict[int, list[Resource]] = {}
        for r in self.resources:
            by_worker.setdefault(r.worker, []).append(r)
        if not by_worker:
            return None
        return sum(max(r.cpu_s for r in rs) - min(r.cpu_s for r in rs) for rs in by_worker.values())

    def pss_per_agent(self) -> float | None:
        """What an agent costs in memory: the workers' PSS above their idle baseline (a sample
        with no agent yet, taken before the first agent starts) per agent, at the moment the
        most agents were up.  Without a baseline: total PSS / agents (interpreter included)."""
        baseline: dict[int, int] = {}
        for r in sorted(self.resources, key=lambda r: r.at):
            if r.agents == 0 and r.pss_bytes is not None and r.worker not in baseline:
                baseline[r.worker] = r.pss_bytes
            elif r.agents:
                baseline.setdefault(r.worker, -1)  # agents came first: no baseline for this worker
        by_time: dict[float, dict[int, Resource]] = {}
        for r in sorted(self.resources, key=lambda r: r.at):
            by_time.setdefault(round(r.at), {})[r.worker] = r  # one sample per worker and second
        best: tuple[int, float] | None = None
        for at, per_worker in sorted(by_time.items()):
            rs = list(per_worker.values())
            agents = sum(r.agents for r in rs)
            if not agents or any(r.pss_bytes is None for r in rs):
                continue
            if best is None or agents >= best[0]:
                best = (agents, at)
        if best is None:
            return None
        agents, at = best
        rs = list(by_time[at].values())
        total = sum(r.pss_bytes or 0 for r in rs)
        if all(baseline.get(r.worker, -1) >= 0 for r in rs):
            total -= sum(baseline[r.worker] for r in {r.worker: r for r in rs}.values())
        return max(0.0, total / agents)

    def metric(self, name: str, aggregate_: str | None) -> float | None:
        """A threshold's figure (:class:`softphone.load.scenario.MetricSource`)."""
        spec = METRICS[name]
        if spec.kind is MetricKind.RATE:
            return self.rate(name)
        if spec.kind is MetricKind.VALUE:
            return self.value(name)
        return aggregate(self.samples(name), aggregate_ or spec.default_aggregate or "mean")

    def latency_summary(self) -> dict[str, dict[str, float | int | None]]:
        out = {}
        for metric in LATENCY_METRICS:
            xs = self.samples(metric)
            out[metric] = {"count": len(xs), "mean": aggregate(xs, "mean"), "p50": percentile(xs, 50),
                           "p90": percentile(xs, 90), "p95": percentile(xs, 95), "p99": percentile(xs, 99),
                           "max": aggregate(xs, "max")}
        return out

    def failures_by_cause(self) -> dict[str, int]:
        return dict(Counter(f.cause for f in self.failures).most_common())

    def audio_summary(self) -> dict[str, Any]:
        mos = [leg.mos for leg in self.legs if leg.mos is not None]
        buckets = Counter(min(4, max(1, int(m))) for m in mos)
        return {
            "legs": len(self.legs), "checked": len(self.checked_legs()),
            "statuses": dict(Counter(leg.audio["status"] for leg in self.legs if leg.audio)),
            "loss_mean": aggregate([leg.loss for leg in self.legs if leg.loss is not None], "mean"),
            "jitter_ms_p95": percentile([leg.jitter_ms for leg in self.legs if leg.jitter_ms is not None], 95),
            "rtt_ms_p95": percentile([leg.rtt_ms for leg in self.legs if leg.rtt_ms is not None], 95),
            "mos_mean": aggregate(mos, "mean"),
            "mos_unmeasured": sum(leg.mos is None for leg in self.legs),
            "mos_distribution": {f"{b}-{b + 1}": buckets.get(b, 0) for b in (1, 2, 3, 4)},
        }

    def worst_legs(self, n: int = 10) -> list[Leg]:
        return sorted(self.legs, key=lambda leg: -leg.badness())[:n]

    # -- output

    def to_dict(self, outcomes: Iterable[ThresholdOutcome] = ()) -> dict[str, Any]:
        return {
            "scenario": self.scenario, "started_at": self.started_at, "duration": self.duration,
            "agents": self.agents, "workers": self.workers, "interrupted": self.interrupted,
            "summary": {
                "setup_success": self.rate("setup_success"), "call_success": self.rate("call_success"),
                "cpu_per_agent_second": self.value("cpu_per_agent_second"),
                "pss_per_agent": self.value("pss_per_agent"),
                "loop_lag_p99_ms": _ms(aggregate(self.samples("loop_lag"), "p99")),
            },
            "latency": self.latency_summary(),
            "failures_by_cause": self.failures_by_cause(),
            "audio": self.audio_summary(),
            "thresholds": [{"threshold": o.threshold.text, "actual": o.actual, "passed": o.passed,
                            "shown": o.describe()} for o in outcomes],
            "latencies": [asdict(x) for x in self.latencies],
            "failures": [f.to_dict() for f in self.failures],
            "legs": [leg.to_dict() for leg in self.legs],
            "sessions": [asdict(s) for s in self.sessions],
            "recordings": [asdict(x) for x in sorted(self.recordings, key=lambda x: (x.agent, x.started))],
            "resources": [asdict(r) for r in self.resources],
            "snapshots": [asdict(s) for s in self.snapshots],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Results:
        r = cls(d.get("scenario", ""), started_at=d.get("started_at"), agents=d.get("agents", 0),
                workers=d.get("workers", 1))
        r.duration = d.get("duration", 0.0)
        r.interrupted = d.get("interrupted", False)
        r.latencies = [Latency(**x) for x in d.get("latencies", [])]
        r.failures = [Failure.from_dict(x) for x in d.get("failures", [])]
        r.legs = [Leg.from_dict(x) for x in d.get("legs", [])]
        r.sessions = [Session(**x) for x in d.get("sessions", [])]
        r.recordings = [Recording(**x) for x in d.get("recordings", [])]
        r.resources = [Resource(**x) for x in d.get("resources", [])]
        r.snapshots = [Snapshot(**x) for x in d.get("snapshots", [])]
        return r

    def write_json(self, path: Path, outcomes: Iterable[ThresholdOutcome] = ()) -> Path:
        path.write_text(json.dumps(self.to_dict(outcomes), indent=1, default=_json_default))
        return path

    def write_csv(self, directory: Path) -> list[Path]:
        """latencies.csv, failures.csv, legs.csv, recordings.csv, timeseries.csv, resources.csv in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        tables: dict[str, tuple[list[str], list[list[Any]]]] = {
            "latencies": (["metric", "seconds", "at", "agent"],
                          [[x.metric, x.seconds, x.at, x.agent] for x in self.latencies]),
            "failures": (["at", "agent", "cause", "step", "detail", "sip_code", "http_status", "leg"],
                         [[f.at, f.agent, f.cause, f.step, f.detail, f.sip_code, f.http_status, f.leg]
                          for f in self.failures]),
            "legs": (["leg", "agent", "kind", "started", "answered", "ended", "codec", "loss", "jitter_ms",
                      "rtt_ms", "mos", "audio", "prompt", "failure", "ice_pair", "clip"],
                     [[g.leg, g.agent, g.kind, g.started, g.answered, g.ended, g.codec, g.loss, g.jitter_ms,
                       g.rtt_ms, g.mos, (g.audio or {}).get("status"), (g.audio or {}).get("prompt"),
                       g.failure, g.ice_pair, g.clip] for g in self.legs]),
            "recordings": ([f.name for f in fields(Recording)],
                           [[getattr(x, f.name) for f in fields(Recording)] for x in self.recordings]),
            "timeseries": ([f.name for f in fields(Snapshot)],
                           [[getattr(s, f.name) for f in fields(Snapshot)] for s in self.snapshots]),
            "resources": ([f.name for f in fields(Resource)],
                          [[getattr(r, f.name) for f in fields(Resource)] for r in self.resources]),
        }
        paths = []
        for name, (header, rows) in tables.items():
            path = directory / f"{name}.csv"
            with open(path, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(header)
                w.writerows(["" if v is None else v for v in row] for row in rows)
            paths.append(path)
        return paths

    def write_junit(self, path: Path, outcomes: Sequence[ThresholdOutcome]) -> Path:
        """Thresholds as test cases (and one case for the run's failures), for CI dashboards."""
        suite = ET.Element("testsuite", name=f"softphone load {self.scenario}".strip(),
                           timestamp=time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.started_at)),
                           time=f"{self.duration:.3f}")
        failed = 0
        for o in outcomes:
            case = ET.SubElement(suite, "testcase", classname="softphone.load.threshold", name=o.threshold.text)
            if not o.passed:
                failed += 1
                ET.SubElement(case, "failure", message=o.describe(), type="threshold").text = o.describe()
        case = ET.SubElement(suite, "testcase", classname="softphone.load.run", name="failures by cause")
        causes = self.failures_by_cause()
        ET.SubElement(case, "system-out").text = "\n".join(f"{c}: {n}" for c, n in causes.items()) or "none"
        suite.set("tests", str(len(outcomes) + 1))
        suite.set("failures", str(failed))
        suite.set("errors", "0")
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
        return path


def exit_code(outcomes: Sequence[ThresholdOutcome]) -> int:
    """0 when every threshold passed, :data:`EXIT_THRESHOLD_FAILED` otherwise."""
    return 0 if all(o.passed for o in outcomes) else EXIT_THRESHOLD_FAILED


def _fraction(n: int, total: int) -> float | None:
    return n / total if total else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def _json_default(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
