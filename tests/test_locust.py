"""softphone.locust through the documented examples/load/locustfile.py: headless master + 2 workers on
loopback against the lab; the master's stats hold every agent's steps."""

from __future__ import annotations

import asyncio
import csv
import os
import socket
import sys
from pathlib import Path

import pytest

# Never import locust here: it monkey-patches the whole test process with gevent.
pytestmark = [pytest.mark.peer, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "load" / "locustfile.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _locust(*args: str, cwd: Path, credentials: Path) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}  # as users run it
    env.update(SOFTPHONE_CREDENTIALS=str(credentials), SOFTPHONE_WORKER_STRIDE="1", SOFTPHONE_RELAY_ONLY="1")
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "locust", "-f", str(EXAMPLE), *args, cwd=str(cwd), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def test_master_and_two_workers_report_the_agents_steps(tmp_path):
    from softphone.lab.server import start_lab

    server = await start_lab(db_url="sqlite:///:memory:", turn=True, relay_only=True)
    procs = []
    try:
        rows = [server.launch_params(uid, secure=False) for uid in (1001, 1002)]
        with open(tmp_path / "agents.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for row in rows for k in row}))
            writer.writeheader()
            writer.writerows(rows)
        port = _free_port()
        master = await _locust("--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port",
                               str(port), "--expect-workers", "2", "-u", "2", "-r", "2", "--run-time", "12s",
                               "--csv", "stats", "--stop-timeout", "30", cwd=tmp_path,
                               credentials=tmp_path / "agents.csv")
        procs.append(master)
        for _ in range(2):
            procs.append(await _locust("--worker", "--master-host", "127.0.0.1", "--master-port", str(port),
                                       cwd=tmp_path, credentials=tmp_path / "agents.csv"))
        out, _ = await asyncio.wait_for(master.communicate(), 120)
        for worker in procs[1:]:
            await asyncio.wait_for(worker.wait(), 60)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await server.close()
    text = out.decode(errors="replace")
    stats = (tmp_path / "stats_stats.csv").read_text()
    rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(stats.splitlines())}
    for key in (("API", "authorize"), ("SIP", "register"), ("SIP", "login_to_bridge"), ("WEBRTC", "ice_connected"),
                ("WEBRTC", "first_audio")):
        assert key in rows, (sorted(rows), text[-3000:])
        assert rows[key]["Request Count"] == "2", (key, rows[key])  # one per agent, from both workers
        assert rows[key]["Failure Count"] == "0"
