"""Level charts: well-formed SVG/HTML whose curves follow the measured levels."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from softphone.errors import ConfigurationError, MediaError
from softphone.media import report, tones
from softphone.media.sinks import DtmfDetector, LevelMeter, LevelSample, ToneDetector

SVG = "{http://www.w3.org/2000/svg}"


def meter_with_burst() -> LevelMeter:
    """1 s silence, 1 s tone at 0.5 amplitude, 1 s quiet tone, in 20 ms blocks at 8 kHz."""
    meter = LevelMeter(name="remote")
    for i in range(150):
        amplitude = 0.0 if i < 50 else (0.5 if i < 100 else 0.005)
        meter.measure(tones.sine_mix([1000.0], 160, 8000, amplitude, start=i * 160), 8000)
    return meter


def points_of(element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in element.get("points").split()]


def test_svg_is_well_formed_and_follows_the_levels():
    meter = meter_with_burst()
    svg = report.level_chart_svg(meter, title="call <1> & co", events=[(1.5, "DTMF 5")], height=300)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("height") == "300"
    rms = root.find(f"{SVG}polygon[@class='rms']")
    peak = root.find(f"{SVG}polyline[@class='peak']")
    assert len(points_of(peak)) == 150
    assert len(points_of(rms)) == 152  # closed down to the floor at both ends
    ys = [y for _, y in points_of(peak)]
    # SVG y grows downwards: loud (burst) is higher up than silence and the quiet tail
    assert max(ys[50:100]) < min(ys[100:]) < min(ys[:50]) + 1e-9
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "call <1> & co" in texts and "DTMF 5" in texts and "time (s)" in texts
    assert len(root.findall(f"{SVG}line[@class='event']")) == 1


def test_long_histories_are_downsampled_keeping_peaks():
    history = [LevelSample(i * 0.02, -40.0, -30.0) for i in range(10_000)]
    history[5_000] = LevelSample(100.0, -3.0, -1.0)
    reduced = report.downsample(history, 500)
    assert len(reduced) <= 500
    assert max(s.peak_dbfs for s in reduced) == -1.0
    assert all(-40.0 <= s.rms_dbfs <= -3.0 for s in reduced)
    svg = report.level_chart_svg(history, max_points=500)
    peak = ET.fromstring(svg).find(f"{SVG}polyline[@class='peak']")
    assert len(points_of(peak)) <= 500
    with pytest.raises(ConfigurationError, match="max_points"):
        report.downsample(history, 1)


def test_empty_history_still_draws_axes():
    root = ET.fromstring(report.level_chart_svg([]))
    assert root.find(f"{SVG}polyline[@class='peak']") is None
    assert any(t.text == "dBFS" for t in root.iter(f"{SVG}text"))


@pytest.mark.parametrize("kwargs, field", [({"floor_db": 0.0}, "floor_db"), ({"width": 50}, "width")])
def test_bad_chart_options_name_the_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=field):
        report.level_chart_svg([], **kwargs)


def test_nice_steps():
    assert report.nice_step(10.0) == 2.0
    assert report.nice_step(3.0) == 0.5
    assert report.nice_step(700.0) == 100.0
    assert report.nice_step(0.0) == 1.0


def test_html_report_with_table_and_charts(tmp_path):
    remote = meter_with_burst()
    local = LevelMeter(name="local")
    local.measure(np.full(8000, 0.1), 8000)
    history_only = list(remote.history)
    path = report.write_level_report(tmp_path / "levels.html", {"remote": remote, "local": local,
                                                                "copy": history_only},
                                     title="Call 42", events={"remote": [(1.2, "tone 1000 Hz")]})
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    assert text.count("<svg") == 3 and "Call 42" in text and "tone 1000 Hz" in text
    body = text[text.index("<table>"):text.index("</table>") + len("</table>")]
    table = ET.fromstring(body)
    rows = [[td.text for td in tr] for tr in table][1:]
    assert [r[0] for r in rows] == ["remote", "local", "copy"]
    assert float(rows[0][4]) == pytest.approx(-6.02, abs=0.05)  # peak of the 0.5 burst
    assert float(rows[1][3]) == pytest.approx(-20.0, abs=0.05)
    assert float(rows[0][1]) == pytest.approx(3.0) and rows[0][2] == "150"


def test_svg_file_and_errors(tmp_path):
    meter = meter_with_burst()
    path = report.write_level_report(tmp_path / "levels.svg", {"remote": meter})
    assert ET.parse(path).getroot().tag == f"{SVG}svg"
    with pytest.raises(ConfigurationError, match="one chart"):
        report.write_level_report(tmp_path / "two.svg", {"a": meter, "b": meter})
    with pytest.raises(ConfigurationError, match="meters"):
        report.level_report_html({})
    with pytest.raises(MediaError, match="missing"):
        report.write_level_report(tmp_path / "missing" / "x.html", {"a": meter})


def test_detector_events_become_markers():
    dtmf = DtmfDetector()
    dtmf.feed(tones.dtmf_samples("42", rate=8000).astype(np.float64) / 32768, 8000)
    dtmf.close()
    detector = ToneDetector([440.0])
    detector.feed(np.concatenate([np.zeros(4000), tones.sine_mix([440.0], 8000, 8000, 0.3)]), 8000)
    detector.close()
    events = report.detector_events(dtmf, detector)
    assert [label for _, label in events] == ["DTMF 4", "DTMF 2", "440 Hz"]
    assert events[-1][0] == pytest.approx(0.5, abs=0.05)
    svg = report.level_chart_svg([], events=events)
    assert len(ET.fromstring(svg).findall(f"{SVG}line[@class='event']")) == 3
    with pytest.raises(ConfigurationError, match="detectors"):
        report.detector_events(LevelMeter())


def test_analyze_a_recording_and_write_its_report(tmp_path):
    from softphone.media.sources import write_audio

    rate = 16000
    tone = tones.sine_mix([1000.0], rate, rate, 0.3)                       # 1 s of 1 kHz
    keys = tones.dtmf_samples("123", rate=rate).astype(np.float64) / 32768  # then 3 digits
    path = write_audio(tmp_path / "call.flac", tones.float_to_pcm16(np.concatenate([tone, keys])), rate)
    result = report.analyze_recording(path, tone_freqs=[1000.0])
    assert result.sample_rate == rate
    assert result.seconds == pytest.approx(1.0 + 3 * 0.17, abs=0.03)
    assert result.digits == "123"
    assert tones.frequencies_close(result.dominant_hz, 1000.0)
    assert result.peak_dbfs == pytest.approx(-6.02, abs=0.1)  # two DTMF tones of 0.25 add up to 0.5
    assert [label for _, label in result.events()] == ["1000 Hz", "DTMF 1", "DTMF 2", "DTMF 3"]
    html_text = result.write_report(tmp_path / "call.html").read_text()
    assert "call.flac" in html_text and "DTMF 3" in html_text
    resampled = report.analyze_recording(path, rate=8000)
    assert resampled.sample_rate == 8000 and resampled.digits == "123"
    from softphone.errors import AudioFileError

    with pytest.raises(AudioFileError, match=r"nothing\.wav"):
        report.analyze_recording(tmp_path / "nothing.wav")
