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


UDP_PROBE = """
import locust  # patches the process with gevent, as the locust command does
import asyncio, socket
import softphone.locust as sl

async def main():
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class Receiver(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            got.set_result(data)

    a, _ = await loop.create_datagram_endpoint(Receiver, local_addr=("127.0.0.1", 0))
    b, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=a.get_extra_info("sockname"))
    b.sendto(b"rtp")
    data = await asyncio.wait_for(got, 5)
    classes = sorted({type(t.get_extra_info("socket")._sock).__module__ for t in (a, b)})
    a.close(); b.close()
    return classes, data, socket.socket.__module__

import gc, time
thread = sl._loop_thread()
result = sl.asyncio.run_coroutine_threadsafe(main(), thread.loop).result(10)
thread.note_start()  # a user starting: the loop thread freezes the survivors while users keep starting
deadline = time.monotonic() + 10
while gc.get_freeze_count() == 0 and time.monotonic() < deadline:
    time.sleep(0.05)
print((*result, gc.get_freeze_count() > 0))
"""


def test_loop_thread_udp_endpoints_are_original_sockets_and_starts_freeze_survivors():
    """The agents' UDP sockets are the stdlib's, not gevent's wrappers (Python code on every packet)."""
    import ast
    import subprocess

    proc = subprocess.run([sys.executable, "-c", UDP_PROBE], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    classes, data, patched, froze = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    assert patched.startswith("gevent")  # the process is patched: socket.socket is gevent's
    assert classes == ["socket"] and data == b"rtp"  # yet both endpoints are stdlib sockets, and work
    assert froze  # and a user's start runs the collector's freezer on the loop thread
