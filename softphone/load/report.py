"""The self-contained HTML report of a load run: plots over time, histograms, the worst calls.

One file that works offline (mailed, attached to a CI run, opened years later): the
plotting library, its CSS, the run's data and the worst calls' audio clips are all
inside it.

Why uPlot (1.6.32, MIT, vendored under ``softphone/load/vendor/``): it is 51 KB
minified with no dependencies and draws on a canvas, so a report with a dozen
interactive time-series plots (zoom by drag, hover values, series toggles) of a
long run stays small and fast.  The ``plotly`` wheel was the other candidate: it
would embed ~3.5 MB of ``plotly.min.js`` in every report and add a large install
for one feature.  uPlot is not a Python package, so the files ship as package data
(declared in ``pyproject.toml``) and load with :mod:`importlib.resources`.

Histograms are binned here in Python; the page's script only draws.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
import urllib.parse
from importlib import resources
from pathlib import Path
from typing import Any

from softphone.load.results import LATENCY_METRICS, Leg, Results
from softphone.load.scenario import ThresholdOutcome
from softphone.log import get_logger

log = get_logger(__name__)

UPLOT_VERSION = "1.6.32"
MAX_CLIP_BYTES = 2_000_000  # per clip: a longer one is linked, not embedded
MAX_RECORDINGS_LISTED = 200


def _vendor(name: str) -> str:
    return resources.files("softphone.load").joinpath("vendor", name).read_text(encoding="utf-8")


def histogram(values: list[float], bins: int = 20) -> dict[str, list[float]]:
    """Equal-width bins: ``{"x": bin starts, "y": counts, "width": w}``."""
    if not values:
        return {"x": [], "y": [], "width": 0}
    lo, hi = min(values), max(values)
    if hi <= lo:
        return {"x": [lo], "y": [len(values)], "width": 1.0}
    width = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / width))] += 1
    return {"x": [lo + k * width for k in range(bins)], "y": counts, "width": width}


def _series_over_time(results: Results) -> dict[str, Any]:
    snaps = sorted(results.snapshots, key=lambda s: s.at)
    t = [s.at for s in snaps]
    out: dict[str, Any] = {
        "t": t,
        "active_agents": [s.active_agents for s in snaps],
        "registered": [s.registered for s in snaps],
        "in_call": [s.in_call for s in snaps],
        "calls": [s.calls for s in snaps],
        "failures": [s.failures for s in snaps],
        "cpu_cores": [s.cpu_cores for s in snaps],
        "pss_mb": [s.pss_mb for s in snaps],
        "loop_lag_ms": [s.loop_lag_ms for s in snaps],
        "gc_pause_ms": [s.gc_pause_ms for s in snaps],
    }
    lat: dict[str, dict[str, list[float]]] = {}
    for x in sorted(results.latencies, key=lambda x: x.at):
        d = lat.setdefault(x.metric, {"t": [], "ms": []})
        d["t"].append(round(x.at, 3))
        d["ms"].append(round(x.seconds * 1000.0, 2))
    out["latency"] = lat
    mos = sorted((leg.ended if leg.ended is not None else leg.started, leg.mos)
                 for leg in results.legs if leg.mos is not None)
    out["mos"] = {"t": [m[0] for m in mos], "mos": [round(m[1], 3) for m in mos]}
    return out


def _histograms(results: Results) -> dict[str, Any]:
    out = {}
    for metric in LATENCY_METRICS:
        ms = [x * 1000.0 for x in results.samples(metric)]
        if ms:
            out[f"{metric} (ms)"] = histogram(ms)
    mos = results.samples("mos")
    if mos:
        out["MOS per leg"] = histogram(mos, bins=14)
    jitter = [leg.jitter_ms for leg in results.legs if leg.jitter_ms is not None]
    if jitter:
        out["jitter per leg (ms)"] = histogram(jitter)
    return out


def _clip_url(leg: Leg) -> str | None:
    if not leg.clip:
        return None
    path = Path(leg.clip)
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("report: clip of leg %s unreadable: %s", leg.leg, exc)
        return None
    if len(data) > MAX_CLIP_BYTES:
        return path.resolve().as_uri()
    return "data:audio/wav;base64," + base64.b64encode(data).decode("ascii")


def _recordings(results: Results, base: Path | None, limit: int = MAX_RECORDINGS_LISTED) -> str:
    """The sampled calls' recordings as links (relative to the report, so the output directory
    can be moved or served as a whole) with a player each; files are not embedded."""
    if not results.recordings:
        return '<p class="note">No calls recorded (a talk step\'s <code>record</code> samples them).</p>'
    rows = []
    for rec in sorted(results.recordings, key=lambda x: (x.agent, x.started))[:limit]:
        path = Path(rec.path)
        href = path.resolve().as_uri()
        if base is not None:
            with contextlib.suppress(ValueError):
                href = urllib.parse.quote(os.path.relpath(path.resolve(), base.resolve()).replace(os.sep, "/"))
        link = html.escape(href, quote=True)
        rows.append([str(rec.agent), str(rec.iteration), html.escape(rec.step), html.escape(rec.leg or "–"),
                     _fmt(rec.seconds, " s"), str(rec.packets),
                     f'<a href="{link}">{html.escape(path.name)}</a>',
                     f'<audio controls preload="none" src="{link}"></audio>'])
    more = (f'<p class="note">{len(results.recordings) - limit} more in results.json and csv/recordings.csv.</p>'
            if len(results.recordings) > limit else "")
    return _table(["agent", "pass", "step", "leg", "length", "packets", "file", ""], rows) + more


def _worst(results: Results, n: int) -> list[dict[str, Any]]:
    out = []
    for leg in results.worst_legs(n):
        d = leg.to_dict()
        d["badness"] = round(leg.badness(), 2)
        d["clip_url"] = _clip_url(leg)
        out.append(d)
    return out


def _fmt(value: Any, unit: str = "", scale: float = 1.0, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float | int):
        return f"{value * scale:.{digits}g}{unit}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(results: Results, outcomes: list[ThresholdOutcome] | None = None, *, title: str | None = None,
           worst: int = 10, base: Path | None = None) -> str:
    """The report as one HTML string; ``base``: the directory it is written to (recording links)."""
    outcomes = outcomes or []
    data = {
        "series": _series_over_time(results),
        "histograms": _histograms(results),
        "worst": _worst(results, worst),
    }
    title = title or f"softphone load: {results.scenario or 'run'}"
    summary = results.to_dict(outcomes)["summary"]
    audio = results.audio_summary()

    rows = [[html.escape(o.threshold.text), _fmt(None) if o.actual is None else html.escape(o.threshold.format_value(o.actual)),
             '<span class="ok">pass</span>' if o.passed else '<span class="bad">FAIL</span>'] for o in outcomes]
    thresholds = _table(["threshold", "actual", ""], rows) if rows else "<p>No thresholds in the scenario.</p>"
    lat_rows = [[html.escape(m), str(s["count"]), _fmt(s["p50"], " ms", 1000), _fmt(s["p90"], " ms", 1000),
                 _fmt(s["p95"], " ms", 1000), _fmt(s["p99"], " ms", 1000), _fmt(s["max"], " ms", 1000)]
                for m, s in results.latency_summary().items() if s["count"]]
    latency = _table(["step", "n", "p50", "p90", "p95", "p99", "max"], lat_rows) if lat_rows else "<p>No latencies.</p>"
    causes = results.failures_by_cause()
    failures = (_table(["cause", "count"], [[html.escape(c), str(n)] for c, n in causes.items()])
                if causes else '<p class="ok">No failures.</p>')
    figures = [
        ["agents", str(results.agents)], ["workers", str(results.workers)],
        ["duration", _fmt(results.duration, " s")],
        ["setup success", _fmt(summary["setup_success"], " %", 100, 4)],
        ["call success", _fmt(summary["call_success"], " %", 100, 4)],
        ["call legs (audio checked)", f"{audio['legs']} ({audio['checked']})"],
        ["audio verdicts", html.escape(", ".join(f"{k}: {v}" for k, v in audio["statuses"].items()) or "–")],
        ["mean loss", _fmt(audio["loss_mean"], " %", 100)],
        ["MOS mean (unmeasured legs)", f"{_fmt(audio['mos_mean'])} ({audio['mos_unmeasured']})"],
        ["CPU-s per agent-second", _fmt(summary["cpu_per_agent_second"], "", 1, 3)],
        ["PSS per agent", _fmt(summary["pss_per_agent"], " MB", 1 / 1024 ** 2)],
        ["event-loop lag p99", _fmt(summary["loop_lag_p99_ms"], " ms")],
    ]
    if results.interrupted:
        figures.insert(0, ["stopped", '<span class="bad">interrupted (Ctrl-C)</span>'])
    overview = _table(["", ""], [[html.escape(a), b] for a, b in figures], "kv")
    payload = json.dumps(data, separators=(",", ":"), default=str).replace("</", "<\\/")
    return _PAGE.format(
        title=html.escape(title), css=_vendor("uPlot.min.css"), js=_vendor("uPlot.iife.min.js"),
        uplot_version=UPLOT_VERSION, overview=overview, thresholds=thresholds, latency=latency,
        failures=failures, recordings=_recordings(results, base), data=payload, script=_SCRIPT)


def write_report(path: Path, results: Results, outcomes: list[ThresholdOutcome] | None = None, **kw: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kw.setdefault("base", path.parent)
    path.write_text(render(results, outcomes, **kw), encoding="utf-8")
    return path


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }}
h1 {{ font-size: 1.5em; }} h2 {{ margin-top: 1.6em; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .5em 0; }} td, th {{ padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }}
.ok {{ color: #176b1c; font-weight: 600; }} .bad {{ color: #b00020; font-weight: 600; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1em; }}
.plot {{ min-height: 240px; }} details {{ margin: .6em 0; padding: .4em .8em; border: 1px solid #ddd; border-radius: 4px; }}
summary {{ cursor: pointer; }} pre.ladder {{ background: #f6f6f6; padding: .5em; overflow-x: auto; }}
.note {{ color: #666; font-size: 90%; }}
</style>
<script>{js}</script>
</head><body>
<h1>{title}</h1>
<div class="grid"><div><h2>Run</h2>{overview}</div><div><h2>Thresholds</h2>{thresholds}
<h2>Failures by cause</h2>{failures}</div></div>
<h2>Latency per step</h2>{latency}
<h2>Over time</h2><p class="note">Drag to zoom, double-click to reset; click a legend entry to hide a series.</p>
<div class="grid" id="time"></div>
<h2>Histograms</h2><div class="grid" id="hist"></div>
<h2>The worst calls</h2><div id="worst"></div>
<h2>Recorded calls</h2>{recordings}
<p class="note">Plots: uPlot {uplot_version} (MIT), embedded. Generated by softphone.</p>
<script type="application/json" id="data">{data}</script>
<script>{script}</script>
</body></html>
"""

_SCRIPT = r"""
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  function box(parent, title) {
    var div = document.createElement("div");
    div.className = "plot";
    div.setAttribute("data-title", title);
    parent.appendChild(div);
    return div;
  }
  function width(el) { return Math.max(320, Math.min(560, (el.parentNode.clientWidth || 560) - 10)); }

  function lines(parent, title, xs, series, opts) {
    opts = opts || {};
    var el = box(parent, title);
    var data = [xs];
    var s = [{label: opts.xlabel || "t (s)"}];
    series.forEach(function (sr, i) {
      data.push(sr.values);
      var conf = {label: sr.label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: true};
      if (opts.points) { conf.paths = function () { return null; }; conf.points = {show: true, size: 4, fill: COLORS[i % COLORS.length]}; }
      s.push(conf);
    });
    return new uPlot({title: title, width: width(el), height: 220, series: s,
                      scales: {x: {time: false}}, axes: [{label: opts.xlabel || "seconds into the run"}, {label: opts.ylabel || ""}]},
                     data, el);
  }

  function bars(parent, title, h) {
    var el = box(parent, title);
    var xs = h.x.map(function (v) { return v + h.width / 2; });
    return new uPlot({title: title, width: width(el), height: 200,
                      series: [{label: "bin"}, {label: "count", fill: "rgba(31,119,180,0.4)", stroke: COLORS[0],
                               paths: uPlot.paths.bars({size: [0.9, Infinity]})}],
                      scales: {x: {time: false}}, axes: [{}, {label: "count"}]}, [xs, h.y], el);
  }

  function mergeXY(groups) {
    // uPlot wants one x array: merge per-series (t, y) samples onto the union of their times.
    var ts = {};
    groups.forEach(function (g) { g.t.forEach(function (t) { ts[t] = true; }); });
    var xs = Object.keys(ts).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    xs.forEach(function (t, i) { index[t] = i; });
    var ys = groups.map(function (g) {
      var y = new Array(xs.length).fill(null);
      g.t.forEach(function (t, i) { y[index[t]] = g.y[i]; });
      return y;
    });
    return {xs: xs, ys: ys};
  }

  var S = DATA.series, time = document.getElementById("time");
  if (S.t.length) {
    lines(time, "agents", S.t, [{label: "active", values: S.active_agents}, {label: "registered", values: S.registered},
                                {label: "in call", values: S.in_call}]);
    lines(time, "calls and failures (cumulative)", S.t, [{label: "calls", values: S.calls}, {label: "failures", values: S.failures}]);
    lines(time, "CPU (cores, all workers)", S.t, [{label: "cores", values: S.cpu_cores}]);
    lines(time, "event-loop lag and garbage-collector pauses (ms, worst worker)", S.t,
          [{label: "loop lag", values: S.loop_lag_ms}, {label: "GC pause", values: S.gc_pause_ms}]);
    lines(time, "memory (PSS MB, all workers)", S.t, [{label: "PSS", values: S.pss_mb}]);
  }
  var names = Object.keys(S.latency);
  if (names.length) {
    var m = mergeXY(names.map(function (n) { return {t: S.latency[n].t, y: S.latency[n].ms}; }));
    lines(time, "latencies (ms) by step", m.xs, names.map(function (n, i) { return {label: n, values: m.ys[i]}; }),
          {points: true, ylabel: "ms"});
  }
  if (S.mos.t.length) {
    lines(time, "MOS per leg (at its end)", S.mos.t, [{label: "MOS", values: S.mos.mos}], {points: true});
  }

  var hist = document.getElementById("hist");
  Object.keys(DATA.histograms).forEach(function (name) { bars(hist, name, DATA.histograms[name]); });

  var worst = document.getElementById("worst");
  DATA.worst.forEach(function (leg, k) {
    var d = document.createElement("details");
    if (k === 0) d.open = true;
    var s = document.createElement("summary");
    var audio = leg.audio ? leg.audio.status + (leg.audio.prompt === false ? ", wrong prompt" : "") : "audio unchecked";
    s.textContent = "#" + (k + 1) + " " + leg.leg + " (agent " + leg.agent + ", " + leg.kind + "): " +
      (leg.failure || "no failure") + "; " + audio + "; MOS " + (leg.mos === null ? "unmeasured" : leg.mos.toFixed(2)) +
      "; loss " + (leg.loss === null ? "–" : (leg.loss * 100).toFixed(2) + " %");
    d.appendChild(s);
    var info = document.createElement("p");
    info.textContent = "ICE pair: " + (leg.ice_pair || "unknown") + " · codec " + (leg.codec || "–") +
      " · jitter " + (leg.jitter_ms === null ? "–" : leg.jitter_ms.toFixed(1) + " ms") +
      " · RTT " + (leg.rtt_ms === null ? "–" : leg.rtt_ms.toFixed(1) + " ms") +
      (leg.audio ? " · verdict: " + leg.audio.reason : "");
    d.appendChild(info);
    var ladder = document.createElement("pre");
    ladder.className = "ladder";
    ladder.textContent = leg.sip.length ? leg.sip.map(function (l) {
      var arrow = l.direction === "->" ? "agent ──▶ " : l.direction === "<-" ? "agent ◀── " : "          ";
      return l.at.toFixed(3).padStart(9) + "  " + arrow + l.summary;
    }).join("\n") : "(no SIP ladder recorded)";
    d.appendChild(ladder);
    if (leg.quality.length) {
      var q = leg.quality;
      lines(d, "quality of " + leg.leg, q.map(function (p) { return p.at; }),
            [{label: "loss %", values: q.map(function (p) { return p.loss === null ? null : p.loss * 100; })},
             {label: "jitter ms", values: q.map(function (p) { return p.jitter_ms; })},
             {label: "RTT ms", values: q.map(function (p) { return p.rtt_ms; })},
             {label: "MOS", values: q.map(function (p) { return p.mos; })}]);
    }
    if (leg.clip_url) {
      var a = document.createElement("audio");
      a.controls = true;
      a.preload = "metadata";
      a.src = leg.clip_url;
      var cap = document.createElement("p");
      cap.textContent = "Audio kept around the failure:";
      d.appendChild(cap);
      d.appendChild(a);
    }
    worst.appendChild(d);
  });
  if (!DATA.worst.length) worst.textContent = "No calls.";
})();
"""
