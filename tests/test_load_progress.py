"""Live progress: a rich panel on a terminal, plain lines otherwise, nothing when quiet."""

from __future__ import annotations

import io

from softphone.load.progress import LiveProgress, RunStatus, WorkerStatus


def _status(t: float, calls: int, failures: dict[str, int] | None = None) -> RunStatus:
    return RunStatus(elapsed=t, duration=60, target_agents=10, active=10, registered=9, in_call=8, calls=calls,
                     failures=failures or {},
                     workers=(WorkerStatus(0, 5, 12.5, 80.0, 3.0), WorkerStatus(1, 5, 14.0, 82.0, 61.0)))


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with LiveProgress(file=out, interval=5.0) as p:
        assert p.mode == "plain"
        p.update(_status(1, 10), now=1.0)
        p.update(_status(2, 14, {"SIP 503": 2}), now=2.0)   # within the interval: no line
        p.update(_status(7, 30, {"SIP 503": 3, "timeout: dial": 1}), now=7.0)
        p.update(_status(8, 31, {"SIP 503": 3, "timeout: dial": 1}), now=8.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # first update, 5 s later, and the final state on stop
    assert lines[0].startswith("t=1/60s agents 10/10 registered 9 in call 8 calls 10")
    assert "failures 4" in lines[1] and "[SIP 503: 3, timeout: dial: 1]" in lines[1]  # brackets are not markup
    assert "(3.2/s)" in lines[1]  # calls rate between the last two updates: 16 calls in 5 s
    assert lines[2].startswith("t=8/60s") and "calls 31" in lines[2]
    assert "w1[5a 14% 82MB lag 61ms]" in lines[1]
    assert "\x1b[" not in out.getvalue()  # no terminal escapes in logs


def test_live_panel_on_a_terminal():
    out = io.StringIO()
    with LiveProgress(file=out, force_terminal=True) as p:
        assert p.mode == "live"
        p.update(_status(1, 10), now=1.0)
        p.update(_status(3, 20, {"ICE failed": 1}), now=3.0)
    text = out.getvalue()
    for word in ("agents", "registered", "in call", "ICE failed", "loop lag ms", "memory MB", "softphone load"):
        assert word in text, word
    assert p.rates == (5.0, 0.5)


def test_quiet_prints_nothing():
    out = io.StringIO()
    with LiveProgress(file=out, quiet=True, force_terminal=True) as p:
        p.update(_status(1, 10), now=1.0)
    assert out.getvalue() == ""


def test_plain_final_line_is_not_repeated():
    out = io.StringIO()
    with LiveProgress(file=out, interval=5.0) as p:
        p.update(_status(1, 10), now=1.0)
    assert len(out.getvalue().splitlines()) == 1
