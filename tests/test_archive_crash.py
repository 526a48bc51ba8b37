"""Nothing is lost when the lab dies mid-archive, and the rerun a user is told to run finishes.

* a server that commits a batch and dies before answering (a proxy that drops the
  connection after the lab answered, then stops listening): the batch is
  UNCONFIRMED, and the rerun of the remaining ids finishes without extra flags;
* ``kill -9`` of a real ``softphone lab`` process during ``softphone leads archive``,
  on SQLite and on the MariaDB peer: after a restart on the same database and a
  rerun of the same command, every lead is in exactly one of the two tables (all of
  them in the archive) and the rows are the seeded ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys

import aiohttp
import pytest
from aiohttp import web

from softphone.lab.db import open_database
from softphone.lab.seed import make_lead
from softphone.lab.server import start_lab
from softphone.lab.testing import MYSQL_URL_ENV, drop_mysql_database, fresh_mysql_url, table_snapshot
from softphone.platform.archive import ArchiveJob, BatchStatus, JobState, Operation
from softphone.platform.client import PlatformClient

KEY = "lab-system-key"
DEADLINE = 120.0


class DyingProxy:
    """Forwards to the lab; on the ``die_on``-th archive request, lets the lab answer, then drops
    the client's connection and stops listening: the server committed, the client never heard."""

    def __init__(self, target: str, die_on: int):
        self.target = target
        self.die_on = die_on
        self.archive_requests = 0
        self.runner: web.AppRunner | None = None
        self.site: web.TCPSite | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type",
                                                                              "tokenkey")}
        async with aiohttp.ClientSession() as session, session.request(
                request.method, self.target + request.path_qs, data=body, headers=headers) as resp:
            answer, status = await resp.read(), resp.status
        if request.path.endswith("/leads/archive"):
            self.archive_requests += 1
            if self.archive_requests == self.die_on:
                assert self.site is not None and self.site._server is not None
                self.site._server.close()  # no new connections: the retry cannot connect
                request.transport.close()  # and this answer never arrives
                raise asyncio.CancelledError
        return web.Response(body=answer, status=status, content_type="application/json")

    async def start(self) -> DyingProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        self.site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await self.site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def test_batch_committed_but_unanswered_is_unconfirmed_and_the_rerun_finishes():
    async with await start_lab() as lab:  # the seed's leads 1..50
        proxy = await DyingProxy(lab.url, die_on=2).start()
        try:
            async with PlatformClient(proxy.url, KEY, retries=2, backoff=0.01) as client:
                report = await ArchiveJob(client, Operation.ARCHIVE, range(1, 51), batch_size=10).run()
        finally:
            await proxy.stop()
        statuses = [b.status for b in report.batches]
        assert statuses == [BatchStatus.OK, BatchStatus.UNCONFIRMED] + [BatchStatus.SKIPPED] * 3, report.as_dict()
        assert report.state is JobState.STOPPED
        left = report.remaining_ids()
        assert left == list(range(11, 51))
        snap = await table_snapshot(lab.db)
        assert set(range(11, 21)) <= set(snap["vicidial_list_archive"])  # the server did commit batch 2
        assert not set(range(11, 21)) & set(snap["vicidial_list"])
        # the rerun of what the job says is left: no --skip-missing needed
        async with PlatformClient(lab.url, KEY, backoff=0.01) as client:
            rerun = await ArchiveJob(client, Operation.ARCHIVE, left, batch_size=10).run()
        assert rerun.ok and rerun.state is JobState.DONE, rerun.as_dict()
        assert rerun.batches[0].done_ids == list(range(11, 21))
        assert rerun.totals["already_done"] == 10 and rerun.remaining_ids() == []
        snap = await table_snapshot(lab.db)
        assert sorted(snap["vicidial_list_archive"]) == list(range(1, 51)) and snap["vicidial_list"] == {}


# --- kill -9 of a real lab process ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_lab_process(db_url: str, seed: str, port: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "softphone.cli", "lab", "--db", db_url, "--seed", seed, "--port", str(port),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

    async def serving() -> None:
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"softphone lab exited with {await proc.wait()}")
            if "Ctrl-C" in line:
                return

    try:
        await asyncio.wait_for(serving(), DEADLINE)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc


async def archive_command(url: str, ids_file: str, remaining: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "softphone.cli", "leads", "archive", "--api-url", url, "--ids-file", ids_file,
        "--batch-size", "50", "--retries", "1", "--timeout", "30", "--remaining", remaining,
        env={**os.environ, "SOFTPHONE_AUTH_KEY": KEY},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.peer)])
def crash_db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'lab.db'}"
        return
    url = fresh_mysql_url(os.environ.get(MYSQL_URL_ENV) or request.getfixturevalue("mariadb"))
    yield url
    drop_mysql_database(url)


async def test_kill_9_of_the_lab_mid_archive_loses_nothing(crash_db_url, tmp_path):
    n_leads = 2000
    seed = json.loads(await asyncio.to_thread(
        lambda: open(os.path.join(os.path.dirname(__file__), "..", "softphone", "lab", "seed.json")).read()))
    seed["leads"] = {"generate": {"first_lead_id": 1, "count": n_leads, "list_id": 101}}
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps(seed))
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(map(str, range(1, n_leads + 1))))
    remaining = str(tmp_path / "remaining.txt")
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    lab = await start_lab_process(crash_db_url, str(seed_file), port)
    try:
        job = await archive_command(url, str(ids_file), remaining)
        batches_seen = 0
        while batches_seen < 5:  # let a few batches through, then kill -9 the lab mid-run
            line = (await asyncio.wait_for(job.stdout.readline(), DEADLINE)).decode()
            assert line, "the archive command ended before the lab was killed"
            batches_seen += line.startswith("batch ")
        os.kill(lab.pid, signal.SIGKILL)
        await lab.wait()
        _out, err = await asyncio.wait_for(job.communicate(), DEADLINE)
        assert job.returncode == 1, err.decode()
        assert "not confirmed processed" in err.decode()
    finally:
        if lab.returncode is None:
            lab.kill()
            await lab.wait()

    lab = await start_lab_process(crash_db_url, str(seed_file), port)  # same database, same port
    try:
        job = await archive_command(url, str(ids_file), remaining)  # the same command again
        out, err = await asyncio.wait_for(job.communicate(), DEADLINE)
        assert job.returncode == 0, (out.decode()[-2000:], err.decode()[-2000:])
        assert (tmp_path / "remaining.txt").read_text() == ""
    finally:
        lab.send_signal(signal.SIGINT)
        await asyncio.wait_for(lab.wait(), DEADLINE)

    db = await open_database(crash_db_url)
    try:
        snap = await table_snapshot(db)
    finally:
        await db.close()
    archived, listed = snap["vicidial_list_archive"], snap["vicidial_list"]
    assert not set(archived) & set(listed)  # exactly once across the two tables
    assert sorted(archived) == list(range(1, n_leads + 1)) and listed == {}
    # and the rows are the seeded leads (a sample; modify_date is the database's own)
    for lead_id in (1, 250, n_leads):
        row = dict(zip(("lead_id", "entry_date", "modify_date", "status"), archived[lead_id], strict=False))
        assert row["status"] == make_lead(lead_id)["status"]
