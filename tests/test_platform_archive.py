"""Archive jobs (batching, stop rules, office-hours wait, Ctrl-C stop) and the CLI's local checks.

The job is driven by a fake client here so each stop rule can be provoked
exactly; the same job runs against the real lab in test_platform_lab.py.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from tls_support import make_self_signed

from softphone.cli import main
from softphone.errors import (
    OfficeHoursError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformServerError,
    PlatformValidationError,
)
from softphone.platform.archive import (
    ArchiveJob,
    BatchStatus,
    JobState,
    Operation,
    dedupe,
    parse_ids,
    split_batches,
)
from softphone.platform.models import ArchiveResult


class FakeArchiveClient:
    """Records batches; ``failures`` maps a call number (1-based) to the exception to raise.

    A request with every step off is the job's check of the target table (recorded in
    ``probes``, not ``calls``): ids in ``in_target`` are there, any other id is not.
    """

    def __init__(self, failures: dict[int, Exception] | None = None, in_target: set[int] = frozenset()):
        self.failures = failures or {}
        self.in_target = set(in_target)
        self.calls: list[tuple[str, list[int], dict]] = []
        self.probes: list[tuple[str, list[int]]] = []

    async def _do(self, op: str, ids, flags) -> ArchiveResult:
        if not any(flags.values()):
            self.probes.append((op, list(ids)))
            absent = [i for i in ids if i not in self.in_target]
            if absent:
                raise PlatformValidationError("lead_ids does not exist", 400, ids=absent)
            return ArchiveResult(len(ids), 0, 0, 0, "lead_ids batch was successfully processed")
        self.calls.append((op, list(ids), flags))
        exc = self.failures.get(len(self.calls))
        if exc is not None:
            raise exc
        n = len(ids)
        return ArchiveResult(n, n if flags["insert_leads"] else 0, n if flags.get("update_leads") else 0,
                             n if flags["delete_leads"] else 0, "lead_ids batch was successfully processed")

    async def archive_leads(self, ids, **flags):
        return await self._do("archive", ids, flags)

    async def dearchive_leads(self, ids, **flags):
        return await self._do("dearchive", ids, flags)


OFFICE = OfficeHoursError("api cannot be executed during office hours time condition", 403)


# --- reading ids ------------------------------------------------------------------


def test_parse_ids_accepts_commas_spaces_newlines():
    assert parse_ids("1,2, 3\n4\t5,,6\r\n\n7 ,8") == [1, 2, 3, 4, 5, 6, 7, 8]
    assert parse_ids("") == []


@pytest.mark.parametrize(
    ("text", "where"),
    [("1,2,x3", "line 1, column 5 (id #3): 'x3'"),
     ("1\n2\n 3.5", "line 3, column 2 (id #3): '3.5'"),
     ("1 0", "(id #2): '0'"),
     ("-4", "'-4'"),
     ("1 +5", "(id #2): '+5'"),
     ('"5"', "'\"5\"'")],
)
def test_parse_ids_names_the_bad_token(text, where):
    with pytest.raises(PlatformValidationError) as info:
        parse_ids(text, "ids.txt")
    assert where in str(info.value) and "ids.txt" in str(info.value)


@given(st.lists(st.integers(min_value=1, max_value=2**40), max_size=50),
       st.lists(st.sampled_from([",", " ", "\n", "\t", ", ", " ,\n", "\r\n"]), min_size=1))
def test_parse_ids_round_trips_any_separators(ids, seps):
    text = "".join(f"{i}{seps[n % len(seps)]}" for n, i in enumerate(ids))
    assert parse_ids(text) == ids


def test_dedupe_keeps_first_seen_order():
    assert dedupe([3, 1, 3, 2, 1, 3]) == ([3, 1, 2], [3, 1])


def test_split_batches():
    sizes = [len(b) for b in split_batches(list(range(1, 1235)))]
    assert sizes == [500, 500, 234]
    assert split_batches([1, 2, 3], 2) == [[1, 2], [3]]
    with pytest.raises(PlatformValidationError, match="batch_size"):
        split_batches([1], 501)


# --- the job ------------------------------------------------------------------------


async def test_all_batches_sent_in_order_with_totals():
    client = FakeArchiveClient()
    seen = []
    job = ArchiveJob(client, Operation.ARCHIVE, [*range(1, 1235), 7, 8], on_batch=seen.append)
    report = await job.run()
    assert job.state is JobState.DONE and report.ok
    assert [len(ids) for _, ids, _ in client.calls] == [500, 500, 234]
    assert [i for _, ids, _ in client.calls for i in ids] == list(range(1, 1235))
    assert report.duplicates == [7, 8]
    assert report.totals["insert_count"] == 1234 and report.totals["batches_ok"] == 3
    assert [b.index for b in seen] == [1, 2, 3]
    d = report.as_dict()
    assert d["batches"][1]["first_id"] == 501 and d["batches"][1]["last_id"] == 1000
    assert d["batches"][2]["count"] == 234


async def test_flags_are_passed_and_dearchive_has_no_update():
    client = FakeArchiveClient()
    await ArchiveJob(client, Operation.ARCHIVE, [1], insert=False, update=True, delete=False).run()
    await ArchiveJob(client, Operation.DEARCHIVE, [1], update=False).run()
    assert client.calls[0] == ("archive", [1], {"insert_leads": False, "update_leads": True,
                                                "delete_leads": False})
    assert client.calls[1] == ("dearchive", [1], {"insert_leads": True, "delete_leads": True})


async def test_bad_batch_fails_alone():
    bad = PlatformValidationError("lead_ids does not exist", 400, ids=[600, 601])
    client = FakeArchiveClient({2: bad, 3: PlatformServerError("boom", 500)})
    report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 1500)).run()
    assert report.state is JobState.DONE and not report.ok
    assert [b.status for b in report.batches] == [BatchStatus.OK, BatchStatus.FAILED, BatchStatus.FAILED]
    assert report.batches[1].offending_ids == [600, 601] and report.batches[1].http_status == 400
    assert report.batches[1].message == "lead_ids does not exist"
    assert report.totals["batches_failed"] == 2


def missing(ids):
    return PlatformValidationError("lead_archive (POST /vicidial/leads/archive): lead_ids does not exist", 400,
                                   ids=ids)


async def test_skip_missing_resends_without_the_missing_ids():
    client = FakeArchiveClient({1: missing([3, 7])})
    report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 11), skip_missing=True).run()
    assert [ids for _, ids, _ in client.calls] == [list(range(1, 11)), [1, 2, 4, 5, 6, 8, 9, 10]]
    batch = report.batches[0]
    assert batch.status is BatchStatus.OK and batch.missing_ids == [3, 7] and batch.result.insert_count == 8
    assert report.totals["missing"] == 2 and report.as_dict()["batches"][0]["missing_ids"] == [3, 7]
    assert report.remaining_ids() == []


async def test_skip_missing_all_gone_and_unhelpful_answers():
    client = FakeArchiveClient({1: missing([1, 2])})
    report = await ArchiveJob(client, Operation.ARCHIVE, [1, 2], skip_missing=True).run()
    assert report.batches[0].status is BatchStatus.OK and "nothing to do" in report.batches[0].message
    assert len(client.calls) == 1
    # the server names ids that are not in the batch: no loop, the batch fails
    client = FakeArchiveClient({1: missing([99])})
    report = await ArchiveJob(client, Operation.ARCHIVE, [1, 2], skip_missing=True).run()
    assert report.batches[0].status is BatchStatus.FAILED and len(client.calls) == 1
    assert report.remaining_ids() == [1, 2]
    # without the option the batch fails and keeps its ids for the remaining list
    client = FakeArchiveClient({1: missing([2])})
    report = await ArchiveJob(client, Operation.ARCHIVE, [1, 2, 3]).run()
    assert report.batches[0].status is BatchStatus.FAILED and report.batches[0].offending_ids == [2]


async def test_auth_failure_stops_the_job():
    client = FakeArchiveClient({1: PlatformAuthError("unable to validate api user", 401)})
    report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 1200)).run()
    assert report.state is JobState.STOPPED and "unable to validate api user" in report.stop_reason
    assert [b.status for b in report.batches] == [BatchStatus.FAILED, BatchStatus.SKIPPED, BatchStatus.SKIPPED]
    assert len(client.calls) == 1


async def test_office_hours_stop_without_wait():
    client = FakeArchiveClient({2: OFFICE})
    report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 1200)).run()
    assert report.state is JobState.STOPPED and "office hours" in report.stop_reason
    assert [b.status for b in report.batches] == [BatchStatus.OK, BatchStatus.FAILED, BatchStatus.SKIPPED]
    assert report.batches[1].http_status == 403


async def test_office_hours_wait_polls_then_continues():
    client = FakeArchiveClient({1: OFFICE, 2: OFFICE})
    naps, waits = [], []

    async def sleep(s):
        naps.append(s)

    job = ArchiveJob(client, Operation.ARCHIVE, range(1, 600), wait_office_hours=True, poll_interval=5,
                     sleep=sleep, on_wait=lambda b, s: waits.append((b.index, s)))
    report = await job.run()
    assert report.state is JobState.DONE and report.ok
    assert naps == [5, 5] and waits == [(1, 5), (1, 5)]
    assert report.batches[0].office_hours_waits == 2
    assert [len(ids) for _, ids, _ in client.calls] == [500, 500, 500, 99]  # batch 1 sent three times


async def test_office_hours_wait_bounded_by_max_wait():
    client = FakeArchiveClient({i: OFFICE for i in range(1, 100)})
    now = [0.0]

    async def sleep(s):
        now[0] += s

    job = ArchiveJob(client, Operation.ARCHIVE, [1, 2], wait_office_hours=True, poll_interval=10, max_wait=30,
                     sleep=sleep, clock=lambda: now[0])
    report = await job.run()
    assert report.state is JobState.STOPPED and "max-wait" in report.stop_reason
    assert len(client.calls) == 4  # t=0, 10, 20, 30
    assert report.batches[0].status is BatchStatus.FAILED


async def test_stop_request_ends_after_current_batch():
    client = FakeArchiveClient()
    job = ArchiveJob(client, Operation.ARCHIVE, range(1, 1500), on_batch=lambda b: job.request_stop())
    report = await job.run()
    assert report.state is JobState.INTERRUPTED
    assert [b.status for b in report.batches] == [BatchStatus.OK, BatchStatus.SKIPPED, BatchStatus.SKIPPED]
    assert len(client.calls) == 1


async def test_stop_request_wakes_office_hours_wait():
    client = FakeArchiveClient({i: OFFICE for i in range(1, 100)})
    job = ArchiveJob(client, Operation.ARCHIVE, [1], wait_office_hours=True, poll_interval=30,
                     on_wait=lambda b, s: asyncio.get_running_loop().call_soon(job.request_stop))
    report = await asyncio.wait_for(job.run(), 10)  # the 30 s nap is cut short by the stop
    assert report.state is JobState.INTERRUPTED
    assert report.batches[0].status is BatchStatus.SKIPPED


def test_job_rejects_empty_and_bad_poll():
    with pytest.raises(PlatformValidationError, match="atleast 1"):
        ArchiveJob(None, Operation.ARCHIVE, [])
    with pytest.raises(PlatformValidationError, match="poll_interval"):
        ArchiveJob(None, Operation.ARCHIVE, [1], poll_interval=0)


async def test_report_written_atomically(tmp_path):
    report = await ArchiveJob(FakeArchiveClient(), Operation.DEARCHIVE, [5, 6, 5]).run()
    out = tmp_path / "r.json"
    report.write(out)
    data = json.loads(out.read_text())
    assert data["operation"] == "dearchive" and data["ok"] is True and data["duplicates_removed"] == [5]
    assert data["totals"]["select_count"] == 2 and data["batches"][0]["status"] == "ok"
    assert not (tmp_path / "r.json.tmp").exists()


# --- CLI: what is decided before anything is sent -------------------------------------------


def run_cli(*args, input=None, env=None):
    return CliRunner().invoke(main, ["leads", *args], input=input, env=env or {}, catch_exceptions=False)


def test_cli_dry_run_from_stdin_lists_batches_and_writes_report(tmp_path):
    ids = "\n".join(str(i) for i in range(1, 1235)) + "\n17\n"
    report = tmp_path / "dry.json"
    res = run_cli("archive", "-", "--dry-run", "--report", str(report), input=ids)
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("batch")]
    assert lines == ["batch 1/3 ids 1..500 (500): dry run, not sent",
                     "batch 2/3 ids 501..1000 (500): dry run, not sent",
                     "batch 3/3 ids 1001..1234 (234): dry run, not sent"]
    assert "1 duplicate lead id(s) removed: 17" in res.stderr
    data = json.loads(report.read_text())
    assert data["totals"]["batches_dry_run"] == 3 and data["totals"]["ids"] == 1234


def test_cli_bad_token_exits_2_naming_it(tmp_path):
    f = tmp_path / "ids.txt"
    f.write_text("1,2,3\n4, abc ,5\n")
    res = run_cli("archive", "--ids-file", str(f), "--dry-run")
    assert res.exit_code == 2
    assert "line 2, column 4 (id #5): 'abc'" in res.stderr and str(f) in res.stderr


def test_cli_ids_option_and_batch_size(tmp_path):
    left = tmp_path / "left.txt"
    res = run_cli("dearchive", "--ids", "1 2 3", "--ids", "4 2", "--batch-size", "3", "--dry-run",
                  "--remaining", str(left))
    assert res.exit_code == 0
    assert left.read_text() == "1\n2\n3\n4\n"  # a dry run processes nothing
    assert "batch 2/2 ids 4..4 (1)" in res.stdout
    assert run_cli("archive", "--ids", "1", "--batch-size", "501", "--dry-run").exit_code == 2


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["dearchive", "--ids", "1", "--no-update"], "--no-update does not apply to dearchive"),
     (["archive"], "no lead ids"),
     (["archive", "--ids", "1"], "no system key"),
     (["archive", "--ids", "1", "--auth-key", "k"], "no server"),
     (["archive", "--ids", "1", "--poll-interval", "1"], "--wait-outside-office-hours"),
     (["archive", "--ids", "1", "--poll-interval", "60"], "--wait-outside-office-hours"),
     (["archive", "--ids", "1", "--max-wait", "5"], "--wait-outside-office-hours"),
     (["archive", "--ids", "1", "--no-insert", "--no-update", "--no-delete"], "nothing to do"),
     (["archive", "--ids", "1", "--ids-file", "/nonexistent/ids"], "cannot read"),
     (["archive", "oops"], "unexpected argument"),
     (["archive", "--ids", " , "], "atleast 1"),
     (["archive", "--ids", "1", "--dry-run", "--report", "/nonexistent-dir/r.json"], "cannot write"),
     (["archive", "--ids", "1", "--dry-run", "--remaining", "/nonexistent-dir/r.txt"], "cannot write")],
)
def test_cli_usage_errors(args, needle):
    res = run_cli(*args)
    assert res.exit_code == 2
    assert needle in res.output


def test_cli_unreachable_server_fails_with_message(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    report = tmp_path / "r.json"
    res = run_cli("archive", "--ids", "1,2", "--server", f"http://127.0.0.1:{port}", "--retries", "0",
                  "--report", str(report), env={"SOFTPHONE_AUTH_KEY": "cli-secret-key"})
    assert res.exit_code == 1
    assert "cannot connect" in res.stderr and "cli-secret-key" not in res.output
    data = json.loads(report.read_text())
    assert data["state"] == "stopped" and data["batches"][0]["status"] == "failed"


# --- Ctrl-C on the real command (a subprocess) -------------------------------------------


@pytest.mark.parametrize("presses", [1, 2])
async def test_cli_ctrl_c_stops_after_current_batch_and_writes_report(tmp_path, presses):
    """SIGINT while batch 2 is in flight, exit 130 and a report either way.

    Once: batch 2 still completes, batch 3 is not sent.  Twice: the command
    aborts at once and reports batch 2 as unconfirmed (it may have run).
    """
    import os
    import signal
    import sys

    from aiohttp import web

    hits: list[list[int]] = []
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def archive(request: web.Request) -> web.Response:
        body = await request.json()
        hits.append(body["lead_ids"])
        if len(hits) == 2:
            in_flight.set()
            await asyncio.wait_for(release.wait(), 20)
        n = len(body["lead_ids"])
        return web.json_response({"message": "lead_ids batch was successfully processed", "select_count": n,
                                  "insert_count": n, "update_count": n, "delete_count": n})

    app = web.Application()
    app.router.add_post("/vicidial/leads/archive", archive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    report = tmp_path / "r.json"
    remaining = tmp_path / "left.txt"
    env = {**os.environ, "SOFTPHONE_AUTH_KEY": "signal-test-key"}
    ids = " ".join(str(i) for i in range(1, 1201))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "softphone.cli", "leads", "archive", "--ids", ids,
        "--server", f"http://127.0.0.1:{port}", "--report", str(report), "--remaining", str(remaining),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        await asyncio.wait_for(in_flight.wait(), 30)
        proc.send_signal(signal.SIGINT)
        # wait until the command says it will stop after this batch
        seen = b""
        while b"stopping after the current batch" not in seen:
            line = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert line, seen.decode()
            seen += line
        if presses == 2:
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            release.set()
        else:
            release.set()  # let the batch in flight finish
            out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        release.set()
        if proc.returncode is None:
            proc.kill()
        await runner.cleanup()
    assert proc.returncode == 130, (out + err).decode()
    assert len(hits) == 2
    data = json.loads(report.read_text())
    assert data["state"] == "interrupted"
    if presses == 1:
        assert [b["status"] for b in data["batches"]] == ["ok", "ok", "skipped"]
        assert data["totals"]["insert_count"] == 1000
        assert b"batch 2/3" in out and b"batch 3/3" not in out
        assert parse_ids(remaining.read_text()) == list(range(1001, 1201))
    else:
        assert [b["status"] for b in data["batches"]] == ["ok", "unconfirmed", "skipped"]
        assert "re-running these ids is safe" in data["batches"][1]["message"]
        assert data["totals"]["insert_count"] == 500
        assert parse_ids(remaining.read_text()) == list(range(501, 1201))


# --- CLI TLS options against an https loopback server ------------------------------------------


def _self_signed(tmp_path):
    """A self-signed certificate for 127.0.0.1: (server SSL context, PEM file)."""
    tls = make_self_signed(tmp_path)
    return tls.server_context(), tls.cert_file


def test_cli_tls_verified_by_default_ca_file_and_insecure(tmp_path):
    import threading

    from aiohttp import web

    ctx, cert_file = _self_signed(tmp_path)
    received: list[list[int]] = []

    async def archive(request: web.Request) -> web.Response:
        ids = (await request.json())["lead_ids"]
        received.append(ids)
        n = len(ids)
        return web.json_response({"message": "lead_ids batch was successfully processed", "select_count": n,
                                  "insert_count": n, "update_count": 0, "delete_count": n})

    ready, url = threading.Event(), []

    async def serve(stop: asyncio.Event):
        app = web.Application()
        app.router.add_post("/vicidial/leads/archive", archive)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        url.append(f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}")
        holder.append((asyncio.get_running_loop(), stop))
        ready.set()
        await asyncio.wait_for(stop.wait(), 120)
        await runner.cleanup()

    holder: list = []
    thread = threading.Thread(target=lambda: asyncio.run(serve(asyncio.Event())), daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        env = {"SOFTPHONE_AUTH_KEY": "tls-test-key"}
        res = run_cli("archive", "--ids", "1,2", "--server", url[0], env=env)
        assert res.exit_code == 1
        assert "not trusted" in res.stderr and "--ca-file" in res.stderr
        res = run_cli("archive", "--ids", "1,2", "--server", url[0], "--ca-file", str(cert_file), env=env)
        assert res.exit_code == 0, res.output
        res = run_cli("archive", "--ids", "3", "--server", url[0], "--insecure", env=env)
        assert res.exit_code == 0, res.output
        assert "verification is OFF" in res.stderr
        assert run_cli("archive", "--ids", "3", "--server", url[0], "--insecure", "--ca-file", str(cert_file),
                       env=env).exit_code == 2
    finally:
        loop, stop = holder[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    assert received == [[1, 2], [3]]


def lost_after_send() -> PlatformConnectionError:
    exc = PlatformConnectionError("lead_archive: connection failed: Server disconnected")
    exc.maybe_processed = True
    return exc


async def test_connection_lost_after_sending_is_unconfirmed_not_failed():
    client = FakeArchiveClient({2: lost_after_send()})
    report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 1200)).run()
    assert [b.status for b in report.batches] == [BatchStatus.OK, BatchStatus.UNCONFIRMED, BatchStatus.SKIPPED]
    assert "outcome unknown" in report.batches[1].message and report.state is JobState.STOPPED
    assert report.remaining_ids() == list(range(501, 1200))  # still to rerun: nothing is counted done
    # a refused connection (nothing sent) is a plain failure
    refused = PlatformConnectionError("cannot connect")
    report = await ArchiveJob(FakeArchiveClient({1: refused}), Operation.ARCHIVE, [1, 2]).run()
    assert report.batches[0].status is BatchStatus.FAILED


async def test_rerun_counts_ids_done_only_when_the_target_table_holds_them():
    # 501..700 were archived and deleted by the lost batch; 999 is in neither table
    gone = list(range(501, 701))
    client = FakeArchiveClient({1: PlatformValidationError("lead_ids does not exist", 400, ids=[*gone, 999])},
                               in_target=set(gone))
    report = await ArchiveJob(client, Operation.ARCHIVE, [*list(range(501, 801)), 999]).run()
    batch = report.batches[0]
    assert client.probes == [("dearchive", [*gone, 999])]  # asked the archive, changing nothing
    assert batch.status is BatchStatus.FAILED and batch.offending_ids == [999]
    assert batch.done_ids == gone and report.remaining_ids() == [*list(range(701, 801)), 999]
    # without the stray id the rerun finishes: the rest is sent, the done ids are reported
    client = FakeArchiveClient({1: PlatformValidationError("lead_ids does not exist", 400, ids=gone)},
                               in_target=set(gone))
    report = await ArchiveJob(client, Operation.ARCHIVE, range(501, 801)).run()
    assert report.ok and report.batches[0].done_ids == gone and report.totals["already_done"] == 200
    assert client.calls[1][1] == list(range(701, 801)) and report.remaining_ids() == []
    # a whole batch already done: nothing to send again
    client = FakeArchiveClient({1: PlatformValidationError("lead_ids does not exist", 400, ids=[1, 2])},
                               in_target={1, 2})
    report = await ArchiveJob(client, Operation.DEARCHIVE, [1, 2]).run()
    assert report.ok and "already dearchived" in report.batches[0].message and len(client.calls) == 1
    assert client.probes == [("archive", [1, 2])]
