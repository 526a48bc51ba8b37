"""Audio-level charts: a :class:`LevelMeter` history as inline SVG or an HTML page.

People would rather look at a call's level curve than read numbers: a
silent leg, clipping, a prompt that never played or DTMF bursts are obvious
in a plot.  The output is self-contained (no JavaScript, no matplotlib):
one SVG per meter with RMS (filled) and peak (line) in dBFS over time,
optional event markers (digits, tones), and a summary table.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from softphone.errors import ConfigurationError, MediaError
from softphone.log import get_logger
from softphone.media import tones
from softphone.media.sinks import DtmfDetector, LevelMeter, LevelSample, ToneDetector

log = get_logger(__name__)

Event = tuple[float, str]
History = LevelMeter | Sequence[LevelSample]

_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 52, 16, 28, 36


def nice_step(span: float, target_ticks: int = 8) -> float:
    """A 1/2/5 x 10^k step giving about ``target_ticks`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(1, target_ticks)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power  # pragma: no cover - the loop always returns


def downsample(history: Sequence[LevelSample], max_points: int) -> list[LevelSample]:
    """At most ``max_points`` samples: energy-mean RMS and max peak per bucket."""
    if max_points < 2:
        raise ConfigurationError(f"max_points: must be >= 2, got {max_points}")
    if len(history) <= max_points:
        return list(history)
    size = math.ceil(len(history) / max_points)
    out = []
    for i in range(0, len(history), size):
        bucket = history[i:i + size]
        out.append(LevelSample(bucket[0].t, tones.mean_level(s.rms_dbfs for s in bucket),
                               max(s.peak_dbfs for s in bucket)))
    return out


def detector_events(*detectors: object) -> list[Event]:
    """Chart markers from a :class:`DtmfDetector` (digits) and/or :class:`ToneDetector` (tones)."""
    events: list[Event] = []
    for detector in detectors:
        if isinstance(detector, DtmfDetector):
            events += [(e.start, f"DTMF {e.digit}") for e in detector.events]
        elif isinstance(detector, ToneDetector):
            events += [(e.start, f"{e.freq:g} Hz") for e in detector.detections]
        else:
            raise ConfigurationError(f"detectors: {type(detector).__name__} is not a DtmfDetector or ToneDetector")
    return sorted(events)


def _samples(history: History) -> list[LevelSample]:
    return list(history.history) if isinstance(history, LevelMeter) else list(history)


def level_chart_svg(history: History, *, title: str = "", width: int = 900, height: int = 260,
                    floor_db: float = -80.0, events: Iterable[Event] = (), max_points: int = 1500) -> str:
    """An SVG chart of RMS and peak level over time (seconds), dBFS from ``floor_db`` to 0."""
    if floor_db >= 0:
        raise ConfigurationError(f"floor_db: must be below 0 dBFS, got {floor_db}")
    if width < 200 or height < 120:
        raise ConfigurationError(f"width/height: chart too small ({width}x{height}); need 200x120 at least")
    points = downsample(_samples(history), max_points)
    plot_w = width - _MARGIN_LEFT - _MARGIN_RIGHT
    plot_h = height - _MARGIN_TOP - _MARGIN_BOTTOM
    t_end = max([p.t for p in points] + [t for t, _ in events] + [0.0])
    if points and len(points) > 1:
        t_end += points[-1].t - points[-2].t
    t_end = t_end or 1.0

    def x(t: float) -> float:
        return _MARGIN_LEFT + plot_w * t / t_end

    def y(db: float) -> float:
        db = min(0.0, max(floor_db, db))
        return _MARGIN_TOP + plot_h * (db / floor_db)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        parts.append(f'<text x="{_MARGIN_LEFT}" y="18" font-size="13" font-weight="bold">'
                     f'{html.escape(title)}</text>')
    # grid and axes
    db_step = 10 if floor_db >= -100 else 20
    db = 0
    while db >= floor_db:
        parts.append(f'<line x1="{_MARGIN_LEFT}" x2="{_MARGIN_LEFT + plot_w}" y1="{y(db):.1f}" y2="{y(db):.1f}" '
                     f'stroke="#e3e3e3"/>')
        parts.append(f'<text x="{_MARGIN_LEFT - 6}" y="{y(db) + 4:.1f}" text-anchor="end">{db}</text>')
        db -= db_step
    step = nice_step(t_end)
    t = 0.0
    while t <= t_end + 1e-9:
        label = f"{t:g}"
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_MARGIN_TOP}" y2="{_MARGIN_TOP + plot_h}" '
                     f'stroke="#f0f0f0"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{_MARGIN_TOP + plot_h + 14}" text-anchor="middle">{label}</text>')
        t += step
    parts.append(f'<text x="{_MARGIN_LEFT + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
                 'time (s)</text>')
    parts.append(f'<text x="12" y="{_MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {_MARGIN_TOP + plot_h / 2:.1f})">dBFS</text>')
    parts.append(f'<rect x="{_MARGIN_LEFT}" y="{_MARGIN_TOP}" width="{plot_w}" height="{plot_h}" '
                 'fill="none" stroke="#999"/>')
    if points:
        base = y(floor_db)
        area = [f"{x(points[0].t):.1f},{base:.1f}"]
        area += [f"{x(p.t):.1f},{y(p.rms_dbfs):.1f}" for p in points]
        area.append(f"{x(points[-1].t):.1f},{base:.1f}")
        parts.append(f'<polygon class="rms" points="{" ".join(area)}" fill="#4a90d9" fill-opacity="0.45" '
                     'stroke="#2f6fb3" stroke-width="1"/>')
        peak = " ".join(f"{x(p.t):.1f},{y(p.peak_dbfs):.1f}" for p in points)
        parts.append(f'<polyline class="peak" points="{peak}" fill="none" stroke="#d9534f" stroke-width="1"/>')
    for t_ev, label in events:
        parts.append(f'<line class="event" x1="{x(t_ev):.1f}" x2="{x(t_ev):.1f}" y1="{_MARGIN_TOP}" '
                     f'y2="{_MARGIN_TOP + plot_h}" stroke="#5cb85c" stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{x(t_ev) + 2:.1f}" y="{_MARGIN_TOP + 12}" fill="#3d8b3d">{html.escape(label)}</text>')
    legend_x = width - _MARGIN_RIGHT - 150
    parts.append(f'<rect x="{legend_x}" y="8" width="10" height="10" fill="#4a90d9" fill-opacity="0.45"/>'
                 f'<text x="{legend_x + 14}" y="17">RMS</text>'
                 f'<line x1="{legend_x + 50}" x2="{legend_x + 62}" y1="13" y2="13" stroke="#d9534f"/>'
                 f'<text x="{legend_x + 66}" y="17">peak</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _summary(history: History) -> dict:
    if isinstance(history, LevelMeter):
        return history.summary()
    samples = list(history)
    return {
        "seconds": round(samples[-1].t - samples[0].t, 3) if samples else 0.0,
        "frames": len(samples),
        "rms_dbfs": round(tones.mean_level(s.rms_dbfs for s in samples), 2),
        "peak_dbfs": round(max((s.peak_dbfs for s in samples), default=tones.DB_FLOOR), 2),
    }


@dataclass
class RecordingAnalysis:
    """What a recording holds: length, levels, pitch, DTMF digits and configured tones."""

    path: Path
    seconds: float
    sample_rate: int
    rms_dbfs: float
    peak_dbfs: float
    dominant_hz: float
    digits: str
    meter: LevelMeter
    dtmf: DtmfDetector
    tones: ToneDetector

    def events(self) -> list[Event]:
        return detector_events(self.dtmf, self.tones)

    def write_report(self, path: str | os.PathLike, title: str | None = None) -> Path:
        return write_level_report(path, {self.path.name: self.meter}, title or f"Audio levels: {self.path.name}",
                                  events={self.path.name: self.events()})


def analyze_recording(path: str | os.PathLike, tone_freqs: Sequence[float] = (),
                      rate: int | None = None) -> RecordingAnalysis:
    """Decode a whole file (any PyAV format) and run the meter and detectors over it.

    For voice API tests and bots that assert on what was recorded: "the
    prompt played", "the caller pressed 1 2 3", "the 1 kHz tone is there".
    ``rate`` None analyses at the file's own rate; ``dominant_hz`` is the
    strongest frequency of the first 10 s.
    """
    import av

    from softphone.media.sources import FileSource

    p = Path(path)
    if rate is None:
        try:
            with av.open(str(p)) as container:
                streams = container.streams.audio
                rate = streams[0].codec_context.sample_rate if streams else None
        except (av.FFmpegError, OSError):
            rate = None  # FileSource below reports the problem with the path
    source = FileSource(p, sample_rate=rate or 48000, realtime=False)
    meter, dtmf, detector = LevelMeter(name=p.name), DtmfDetector(), ToneDetector(tone_freqs)
    rest = []
    for chunk in iter(lambda: source.read(source.samples_per_frame), b""):
        x = tones.pcm16_to_float(chunk)
        meter.measure(x, source.sample_rate)
        dtmf.feed(x, source.sample_rate)
        detector.feed(x, source.sample_rate)
        rest.append(x)
    source.stop()
    dtmf.close()
    detector.close()
    whole = np.concatenate(rest) if rest else np.zeros(0)
    dominant, _ = tones.dominant_frequency(whole[: source.sample_rate * 10], source.sample_rate)
    return RecordingAnalysis(p, whole.size / source.sample_rate, source.sample_rate, meter.rms_dbfs,
                             meter.peak_dbfs, dominant, dtmf.digits, meter, dtmf, detector)


def level_report_html(meters: Mapping[str, History], title: str = "Audio levels",
                      events: Mapping[str, Iterable[Event]] | None = None, **chart_kwargs) -> str:
    """A self-contained HTML page: a summary table and one chart per meter."""
    if not meters:
        raise ConfigurationError("meters: nothing to report (give at least one LevelMeter)")
    events = events or {}
    rows = []
    charts = []
    for name, history in meters.items():
        s = _summary(history)
        rows.append(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                name, s["seconds"], s["frames"], s["rms_dbfs"], s["peak_dbfs"], s.get("silent_fraction", "")
            )) + "</tr>"
        )
        charts.append(f"<section><h2>{html.escape(name)}</h2>"
                      f"{level_chart_svg(history, events=events.get(name, ()), **chart_kwargs)}</section>")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}</style>"
        f"</head><body><h1>{html.escape(title)}</h1>"
        "<table><tr><th>stream</th><th>seconds</th><th>frames</th><th>RMS dBFS</th>"
        "<th>peak dBFS</th><th>silent share</th></tr>"
        + "".join(rows) + "</table>" + "".join(charts) + "</body></html>\n"
    )


def write_level_report(path: str | os.PathLike, meters: Mapping[str, History], title: str = "Audio levels",
                       events: Mapping[str, Iterable[Event]] | None = None, **chart_kwargs) -> Path:
    """Write :func:`level_report_html` (``.html``) or a single chart (``.svg``) to ``path``."""
    p = Path(path)
    if p.suffix.lower() == ".svg":
        if len(meters) != 1:
            raise ConfigurationError(f"{p}: an .svg file holds one chart; got {len(meters)} meters (use .html)")
        (name, history), = meters.items()
        text = level_chart_svg(history, title=title or name, events=(events or {}).get(name, ()),
                               **chart_kwargs)
    else:
        text = level_report_html(meters, title, events, **chart_kwargs)
    try:
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MediaError(f"{p}: cannot write the level report ({exc.strerror or exc})") from exc
    log.info("level report written to %s", p)
    return p
