"""The demo's step bookkeeping with fake steps: lines, failure naming the step, summary, report."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from softphone.demo_runner import (
    DemoFailed,
    StepRecord,
    StepRunner,
    StepStatus,
    demo_report_html,
    format_step,
    format_summary,
    write_demo_report,
)
from softphone.errors import PlatformError, SoftphoneError
from softphone.log import register_secret
from softphone.media.sinks import LevelSample


class FakeClock:
    """Each read advances 0.25 s: times are deterministic, nothing sleeps."""

    def __init__(self) -> None:
        self._ticks = itertools.count()

    def __call__(self) -> float:
        return next(self._ticks) * 0.25


def make_runner(planned=()) -> tuple[StepRunner, list[str]]:
    lines: list[str] = []
    return StepRunner(echo=lines.append, clock=FakeClock(), planned=tuple(planned)), lines


async def _value(v):
    return v


async def test_steps_print_one_line_each_with_time_name_and_detail():
    runner, lines = make_runner(["authorize", "register"])
    token = await runner.step("authorize", lambda: _value("tok"), detail="token cached")
    ext = await runner.step("register", _value("9001"), detail=lambda e: f"extension {e}")
    assert (token, ext) == ("tok", "9001")
    assert len(lines) == 2
    assert "ok" in lines[0] and "authorize" in lines[0] and "token cached" in lines[0]
    assert "register" in lines[1] and "extension 9001" in lines[1]
    assert lines[0].strip().split()[0].replace(".", "").isdigit()  # the time column comes first
    assert runner.ok and runner.failed is None and runner.not_run() == []
    assert [r.status for r in runner.records] == [StepStatus.OK, StepStatus.OK]
    assert all(r.ended >= r.started for r in runner.records)


async def test_a_failing_step_names_itself_and_stops_the_run():
    runner, lines = make_runner(["authorize", "login", "logout"])
    await runner.step("authorize", _value(1))

    async def refuse():
        raise PlatformError("login: 409 extension 9001 is not registered")

    with pytest.raises(DemoFailed) as info:
        await runner.step("login", refuse)
    assert info.value.step == "login"
    assert "9001 is not registered" in info.value.reason
    assert "FAILED" in lines[-1] and "login" in lines[-1] and "not registered" in lines[-1]
    assert not runner.ok
    assert runner.failed.name == "login"
    assert runner.not_run() == ["logout"]
    summary = format_summary(runner)
    assert "FAILED at step 'login'" in summary
    assert "not run: logout" in summary


async def test_a_step_that_never_finishes_fails_with_its_timeout():
    runner, lines = make_runner(["bridge call answered"])
    never = asyncio.Event()
    with pytest.raises(DemoFailed) as info:
        await runner.step("bridge call answered", never.wait, timeout=0.05)
    assert "no result within 0.05 s" in info.value.reason
    assert "FAILED" in lines[-1]


async def test_an_unexpected_exception_is_named_by_its_class_and_secrets_are_redacted():
    register_secret("s3cr3t-demo-password")
    runner, lines = make_runner()

    async def boom():
        raise RuntimeError("bad password s3cr3t-demo-password\nsecond line")

    with pytest.raises(DemoFailed) as info:
        await runner.step("register", boom)
    assert info.value.reason.startswith("RuntimeError: bad password")
    assert "s3cr3t-demo-password" not in info.value.reason
    assert "s3cr3t-demo-password" not in "\n".join(lines)
    assert "\n" not in info.value.reason
    assert isinstance(info.value, SoftphoneError)


async def test_a_detail_that_cannot_render_does_not_fail_a_good_step():
    runner, lines = make_runner()
    await runner.step("hold", _value(None), detail=lambda r: r.missing)
    assert runner.records[0].status is StepStatus.OK
    assert "detail unavailable" in lines[0]


async def test_summary_lists_facts_in_order_and_the_verdict():
    runner, _ = make_runner(["a", "b"])
    await runner.step("a", _value(1))
    await runner.step("b", _value(2))
    runner.fact("agent", "user 1001, extension 9001")
    runner.fact("DTMF", "123 sent")
    runner.fact("agent", "user 1001, extension 9002")  # replaces
    summary = format_summary(runner)
    lines = summary.splitlines()
    assert "OK, 2 steps" in lines[1]
    assert lines[2].split() == ["agent", "user", "1001,", "extension", "9002"]
    assert "DTMF" in lines[3]
    assert len(lines) <= 24  # one screen


def test_format_step_of_a_step_not_run():
    line = format_step(StepRecord("unregister", StepStatus.NOT_RUN))
    assert "unregister" in line and "-" in line and "ms" not in line


async def test_report_has_the_steps_and_a_chart_per_direction(tmp_path):
    runner, _ = make_runner(["prompt heard", "logout"])
    await runner.step("prompt heard", _value(440.0), detail=lambda hz: f"{hz:g} Hz")
    history = [LevelSample(i * 0.02, -20.0 - (i % 5), -10.0) for i in range(100)]
    quiet = [LevelSample(i * 0.02, -70.0, -60.0) for i in range(100)]
    page = demo_report_html(runner, {"agent hears": history, "customer hears": quiet},
                            {"agent hears": [(0.5, "440 Hz")]})
    assert page.count("<svg") == 2
    assert "agent hears" in page and "customer hears" in page and "440 Hz" in page
    assert "prompt heard" in page and "logout" in page and "not run" in page
    out = write_demo_report(tmp_path / "demo.html", runner, {"agent hears": history})
    assert out.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(SoftphoneError, match="cannot write the demo report"):
        write_demo_report(tmp_path / "missing-dir" / "demo.html", runner, {"agent hears": history})
