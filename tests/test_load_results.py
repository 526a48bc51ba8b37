"""Results figures, JSON/CSV/JUnit output, thresholds, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import csv
import json
import random
import re
import wave
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from softphone.load.report import histogram, render, write_report
from softphone.load.results import (
    EXIT_THRESHOLD_FAILED,
    LATENCY_METRICS,
    Failure,
    FailureKind,
    Leg,
    QualityPoint,
    Recording,
    Resource,
    Results,
    Session,
    SipLine,
    Snapshot,
    exit_code,
    percentile,
)
from softphone.load.scenario import parse_scenario
from softphone.load.verdict import AudioStatus, LegAudioCheck, write_clip, write_recording
from softphone.media.lean import Tone, codec_spec, encode_source


def synthetic_results(tmp_path, agents: int = 40, seconds: int = 60, seed: int = 5) -> Results:
    """A plausible run: ramp, steady state, a few failures, one leg with a kept clip."""
    rng = random.Random(seed)
    r = Results("synthetic", started_at=1_700_000_000.0, agents=agents, workers=2)
    r.duration = float(seconds)
    for t in range(seconds + 1):
        active = min(agents, t * 4)
        r.snapshots.append(Snapshot(at=float(t), active_agents=active, registered=active, in_call=max(0, active - 2),
                                    calls=t * 3, failures=t // 20, cpu_cores=0.01 * active,
                                    pss_mb=60 + 0.8 * active, loop_lag_ms=2 + rng.random() * 5,
                                    gc_pause_ms=rng.random() * 3))
        for w in (0, 1):
            r.resources.append(Resource(at=float(t), worker=w, cpu_s=0.004 * t * active / 2,
                                        pss_bytes=int((30 + 0.4 * active) * 1024 ** 2), loop_lag_ms=2 + rng.random() * 8,
                                        agents=active // 2))
    for agent in range(agents):
        start = agent / 4
        for metric in LATENCY_METRICS:
            r.latency(metric, rng.lognormvariate(-2.5, 0.5), at=start + rng.random(), agent=agent)
        r.sessions.append(Session(agent=agent, ok=agent != 7, started=start, cause=None if agent != 7 else "SIP 503"))
    r.fail(Failure(FailureKind.SIP, "register", 1.9, 7, "503 Service Unavailable", sip_code=503))
    r.fail(Failure(FailureKind.TIMEOUT, "dial", 30.0, 3, "no answer in 20 s"))
    r.fail(Failure(FailureKind.ONE_WAY, "talk", 41.0, 12, "nothing heard", leg="a12-c2"))
    # A real failed leg's audio clip, from the verdict itself.
    payloads = list(encode_source(Tone(440, 1.0, 0.3), codec_spec("pcmu")).payloads)
    check = LegAudioCheck("pcmu", leg="a12-c2", clip_dir=tmp_path / "clips", start=0.0)
    t = 0.0
    for k in range(150):
        if k < 60:
            check.on_packet(type("P", (), {"payload_type": 0, "sequence_number": k, "payload": payloads[k % 49]})())
        t = (k + 1) * 0.02
        if (k + 1) % 50 == 0:
            check.tick(t)
    verdict = check.finish(t)
    assert verdict.status is AudioStatus.GAPS and verdict.clip is not None
    for k in range(agents * 2):
        agent = k % agents
        started = 5.0 + k * 0.5
        mos = None if k % 17 == 0 else round(4.4 - rng.random() * (1.5 if k % 9 == 0 else 0.3), 2)
        leg = Leg(leg=f"a{agent}-c{k}", agent=agent, kind="outbound" if k % 2 else "bridge", started=started,
                  answered=started + 0.4, ended=started + 20, codec="opus",
                  ice_pair="relay 127.0.0.1:50001 <-> host 127.0.0.1:40000 (udp)",
                  loss=rng.random() * 0.01, jitter_ms=rng.random() * 20, rtt_ms=1 + rng.random() * 5, mos=mos,
                  packets_received=1000,
                  audio={"status": "heard", "prompt": True, "failed": False, "reason": "heard"},
                  sip=[SipLine(started, "<-", "INVITE"), SipLine(started + 0.01, "->", "180 Ringing"),
                       SipLine(started + 0.4, "->", "200 OK"), SipLine(started + 0.41, "<-", "ACK"),
                       SipLine(started + 20, "->", "BYE"), SipLine(started + 20.01, "<-", "200 OK")],
                  quality=[QualityPoint(started + s, 0.001 * s, 5 + s, 2.0, 4.3 - 0.01 * s) for s in range(0, 20, 5)])
        r.legs.append(leg)
    bad = r.legs[24]
    bad.leg, bad.failure, bad.mos = "a12-c2", "one-way audio", None
    bad.audio = verdict.to_dict()
    bad.clip = str(verdict.clip)
    # A sampled talk step's recording, as the agent saves it (Opus packets in Ogg).
    opus = list(encode_source(Tone(440, 1.0, 0.3), codec_spec("opus")).payloads)
    saved = write_recording(tmp_path / "recordings" / "agent-3-1.ogg", opus, list(range(len(opus))), "opus")
    r.recordings.append(Recording(str(saved), agent=3, iteration=1, step="talk", leg="a3-c3", started=12.0,
                                  seconds=1.0, packets=len(opus), call_id=17))
    return r


def test_percentile_and_histogram():
    assert percentile([], 95) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 95) == pytest.approx(95)
    h = histogram([0, 1, 1, 2, 10], bins=5)
    assert sum(h["y"]) == 5 and h["y"][0] == 3 and h["y"][-1] == 1


def test_metrics_and_thresholds(tmp_path):
    r = synthetic_results(tmp_path)
    assert r.metric("setup_success", None) == pytest.approx(39 / 40)
    assert r.metric("call_success", None) == pytest.approx(79 / 80)
    assert r.metric("one_way", None) == pytest.approx(0.0)  # the bad leg had gaps in its audio
    assert r.metric("silent_gaps", None) == pytest.approx(1 / 80)
    assert r.metric("login_to_audio", "p95") == pytest.approx(
        percentile([x.seconds for x in r.latencies if x.metric == "login_to_audio"], 95))
    assert 0 < r.metric("mos", "mean") <= 4.5
    assert r.metric("cpu_per_agent_second", None) > 0
    assert r.metric("pss_per_agent", None) > 0
    assert r.metric("loop_lag", "p99") < 0.05
    assert r.failures_by_cause() == {"SIP 503": 1, "timeout: dial": 1, "one-way audio": 1}
    assert r.audio_summary()["mos_unmeasured"] == sum(leg.mos is None for leg in r.legs) > 0
    assert r.worst_legs(1)[0].leg == "a12-c2"

    s = parse_scenario("name: x\nloop: [wait_bridge]\nthresholds:\n  - setup_success > 99.5%\n"
                       "  - p95(login_to_audio) < 1s\n  - mean(mos) > 3\n")
    outcomes = s.evaluate(r)
    assert [o.passed for o in outcomes] == [False, True, True]
    assert exit_code(outcomes) == EXIT_THRESHOLD_FAILED and exit_code(outcomes[1:]) == 0


def test_json_round_trip_csv_and_junit(tmp_path):
    r = synthetic_results(tmp_path)
    s = parse_scenario("name: x\nloop: [wait_bridge]\nthresholds:\n  - setup_success > 99.5%\n  - mean(mos) > 3\n")
    outcomes = s.evaluate(r)
    path = r.write_json(tmp_path / "results.json", outcomes)
    doc = json.loads(path.read_text())
    assert doc["failures_by_cause"]["SIP 503"] == 1
    assert doc["thresholds"][0]["passed"] is False
    assert set(doc["latency"]) == set(LATENCY_METRICS)
    back = Results.from_dict(doc)
    assert len(back.legs) == len(r.legs) and back.legs[0].sip == r.legs[0].sip
    assert back.metric("setup_success", None) == r.metric("setup_success", None)
    assert back.failures_by_cause() == r.failures_by_cause()
    assert back.recordings == r.recordings and doc["recordings"][0]["path"].endswith("agent-3-1.ogg")

    paths = r.write_csv(tmp_path / "csv")
    assert {p.name for p in paths} == {"latencies.csv", "failures.csv", "legs.csv", "recordings.csv",
                                       "timeseries.csv", "resources.csv"}
    with open(tmp_path / "csv" / "legs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(r.legs) and rows[24]["audio"] == "silent_gaps"

    junit = r.write_junit(tmp_path / "junit.xml", outcomes)
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "1" and suite.get("tests") == "3"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["setup_success > 99.5%"]


def test_merge_of_worker_results(tmp_path):
    a, b = Results("x", started_at=0.0), Results("x", started_at=0.0)
    a.latency("register", 0.1, at=1.0, agent=0)
    b.latency("register", 0.3, at=1.5, agent=1)
    b.sessions.append(Session(1, True, 0.0))
    b.duration = 9.0
    a.merge(b)
    assert a.samples("register") == [0.1, 0.3] and a.duration == 9.0 and len(a.sessions) == 1


def test_report_is_self_contained(tmp_path):
    r = synthetic_results(tmp_path)
    page = render(r, parse_scenario("name: x\nloop: [wait_bridge]\nthresholds: ['setup_success > 99.5%']\n")
                  .evaluate(r))
    assert "<script src" not in page and "<link" not in page  # nothing fetched from anywhere
    assert "uPlot" in page and "data:audio/wav;base64," in page
    assert "FAIL" in page and "SIP 503" in page
    assert (tmp_path / "recordings" / "agent-3-1.ogg").as_uri() in page  # linked (not embedded)
    page = write_report(tmp_path / "report.html", r).read_text()
    assert '<a href="recordings/agent-3-1.ogg">' in page  # beside the report: a relative link
    # the clip is the verdict's WAV, intact
    b64 = re.search(r"data:audio/wav;base64,([A-Za-z0-9+/=]+)", page).group(1)
    import base64

    assert base64.b64decode(b64)[:4] == b"RIFF"


HARNESS = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { __errors.push("error: " + e.message); });
window.addEventListener("unhandledrejection", function (e) { __errors.push("rejection: " + e.reason); });
(function () { var ce = console.error; console.error = function () {
  __errors.push("console.error: " + Array.prototype.join.call(arguments, " ")); ce.apply(console, arguments); }; })();
window.addEventListener("load", function () { setTimeout(function () {
  var plots = Array.prototype.map.call(document.querySelectorAll(".plot"), function (p) {
    var c = p.querySelector("canvas"); var r = p.getBoundingClientRect();
    return {title: p.getAttribute("data-title"), canvas: !!c, w: c ? c.width : 0, h: c ? c.height : 0,
            shown: r.width > 0 && r.height > 0, inWorst: !!p.closest("#worst")};
  });
  var out = document.createElement("pre"); out.id = "selfcheck";
  out.textContent = JSON.stringify({errors: __errors, plots: plots, audio: document.querySelectorAll("audio").length,
                                    details: document.querySelectorAll("#worst details").length});
  document.body.appendChild(out);
}, 200); });
</script>"""


@pytest.mark.peer
def test_report_renders_in_headless_chromium(tmp_path, chromium):
    r = synthetic_results(tmp_path)
    path = write_report(tmp_path / "report.html", r)
    page = path.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("<head>", "<head>" + HARNESS, 1))
    dom = chromium.dump_dom(probe.as_uri(), virtual_time_budget_ms=5000, extra=("--window-size=1280,2000",))
    m = re.search(r'<pre id="selfcheck">(.*?)</pre>', dom, re.S)
    assert m, dom[-3000:]
    import html as _html

    check = json.loads(_html.unescape(m.group(1)))
    assert check["errors"] == [], check["errors"]
    titles = [p["title"] for p in check["plots"]]
    for expected in ("agents", "calls and failures (cumulative)", "CPU (cores, all workers)",
                     "event-loop lag and garbage-collector pauses (ms, worst worker)", "latencies (ms) by step", "MOS per leg (at its end)",
                     "login_to_audio (ms)", "MOS per leg"):
        assert expected in titles, titles
    assert all(p["canvas"] and p["w"] > 0 and p["h"] > 0 for p in check["plots"]), check["plots"]
    assert all(p["shown"] for p in check["plots"] if not p["inWorst"])
    assert check["details"] == 10 and check["audio"] >= 1
    assert sum(p["inWorst"] for p in check["plots"]) == 10  # a quality timeline per worst call


def test_clip_written_by_verdict_is_playable(tmp_path):
    payloads = list(encode_source(Tone(440, 0.5, 0.3), codec_spec("opus")).payloads)
    path = write_clip(tmp_path / "c.wav", payloads, "opus")
    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnframes() > 4000
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert np.abs(x).max() > 1000


def test_pss_per_agent_is_above_the_idle_baseline():
    r = Results("x", started_at=0.0)
    mb = 1024 ** 2
    for worker in (0, 1):
        r.resources.append(Resource(-0.5, worker, 1.0, 50 * mb, 0.0, 0))       # idle, imports done
        r.resources.append(Resource(5.0, worker, 2.0, 55 * mb, 1.0, 10))       # 10 agents: +5 MB
        r.resources.append(Resource(9.0, worker, 3.0, 54 * mb, 1.0, 10))       # latest moment with 20 agents
    assert r.pss_per_agent() == pytest.approx(2 * 4 * mb / 20)
    no_baseline = Results("x", started_at=0.0)
    no_baseline.resources = [x for x in r.resources if x.agents]
    assert no_baseline.pss_per_agent() == pytest.approx(2 * 54 * mb / 20)
