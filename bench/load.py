"""Load benchmark: ``softphone load --lab`` at growing N, the largest N that holds every quality bar.

Each step is one ``softphone load`` run (its own process tree: the lab, with its media, in
the parent process and coturn in its own; the agents in worker processes), the steady
bridge scenario with the audio verdict on every leg, the agents' media relayed through
coturn (as the Webphone's), the lab's media server on its host address (as a platform's).  The bars (issue 13): setup success > 99.5 %, mean loss < 0.5 %, audio heard on
every checked leg, event-loop lag p99 < 50 ms.  Printed per N: setup success, heard, loss,
loop lag p99, p95 login -> bridge answered (agents ramping at ``--ramp`` per second),
the agents' CPU-s per agent-second (the workers' own process time over the whole run:
set-up, signalling, keep-alives, the audio verdict; and in the steady state after the
ramp), PSS per agent, and apart from it the lab's CPU: this script samples
the run's process tree every second (``psutil``) and counts the ``softphone load`` parent
(the lab: REST, SIP edge, dialer, its media; plus the run's bookkeeping) and coturn.

PSS per agent: per worker, the PSS (``/proc/PID/smaps_rollup``, the runner samples it every
second) at the moment most agents were up minus the worker's idle baseline (sampled after
its imports, before its first agent), summed over workers and divided by the agents.  The
table also prints the workers' whole PSS per agent (interpreter and libraries included),
which is what a figure without the baseline shows: it falls as 1/N.  The load
average is printed with every row (the machine may be shared).  No asserts: this measures.

``--chromium K`` runs the same flow for K agents as SIP.js 0.15.11 pages (the Webphone's
legacy ``SIP.UA``, ``tests/js/webphone_media.html``, auto-answering with a fake microphone,
relay only through the lab's coturn) in headless Chromium: one browser with K tabs, then
one browser per agent; the REST steps are done from this script as the page would.  Over
a steady window with every page answered it prints the browsers' CPU-s per agent-second
and PSS per agent (every Chromium process) beside ``softphone load`` at K (steady state),
and the ratios.

``--locust`` adds, per N, the same agents as Locust users (``examples/load/locustfile.py``,
one headless master and one worker process, the lab in this process) and compares the
worker's CPU-s per agent-second in the steady state (after the ramp) with one
``softphone load`` worker's over the same window: agents per core = 1 / that figure,
and the ratio says how many of ``softphone load``'s agents a Locust worker holds.

    python bench/load.py --n 10,20,40 --duration 30 --ramp 10 --workers 2
    python bench/load.py --n 20 --duration 40 --workers 1 --locust
    python bench/load.py --n "" --chromium 10 --duration 40 --chromium-seconds 20
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIO = """\
name: bench-steady-bridge
codec: opus
play: tone:440
audio: {check: true, expect: tone:440, gap: 1s}
iterations: 1
loop:
  - wait_bridge: {timeout: 30s}
  - talk: {seconds: 86400}
thresholds:
  - setup_success > 99.5%
  - mean(loss) < 0.5%
  - audio_heard >= 100%
  - p99(loop_lag) < 50ms
"""


class TreeSampler:
    """CPU seconds of every process under ``pid`` (last value seen of each), by role."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.cpu: dict[int, float] = {}
        self.role: dict[int, str] = {}
        self.smaps: dict[int, list[tuple[float, dict[str, int]]]] = {}  # worker pid -> (time, kB figures)

    def _role(self, proc) -> str:
        if proc.pid == self.root.pid:
            return "lab"  # the softphone load parent: the embedded lab and the run's bookkeeping
        try:
            name, cmdline = proc.name(), " ".join(proc.cmdline())
        except Exception:
            return "other"
        if "turnserver" in name or "turnserver" in cmdline:
            return "coturn"
        if "spawn_main" in cmdline:
            return "tracker" if "resource_tracker" in cmdline else "worker"
        return "other"

    def sample(self) -> None:
        import psutil

        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            if proc.pid not in self.role:
                self.role[proc.pid] = self._role(proc)
            self.cpu[proc.pid] = times.user + times.system
            if self.role[proc.pid] == "worker":
                figures = smaps_rollup(proc.pid)
                if figures:
                    self.smaps.setdefault(proc.pid, []).append((time.time(), figures))

    def by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, cpu in self.cpu.items():
            out[self.role[pid]] = out.get(self.role[pid], 0.0) + cpu
        return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """``Pss``, ``Pss_Anon``, ``Pss_File``... of ``/proc/PID/smaps_rollup`` in kB (empty if gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return {}
    return out


def worker_memory(tree: TreeSampler, doc: dict, n: int, ramp: float) -> dict:
    """PSS per agent from this script's own samples of each worker.

    Baseline: the sample nearest to the runner's own idle baseline of that worker (taken after its
    imports, before its first agent).
    Loaded: the median over the steady window (every agent up, until 2 s before the end).
    Both ``Pss`` (shared library pages split among every process on the machine mapping them:
    it moves when other processes start or stop) and ``Pss_Anon`` (the worker's own heap:
    what agents add) are reported.
    """
    import statistics

    started = doc["started_at"]
    workers = sorted(tree.smaps)  # pids in start order: worker k gets agents k, k+K, ...
    k_count = len(workers)
    if not k_count:
        return {}
    steady0 = started + (n - 1) / ramp + 3.0
    steady1 = started + doc["duration"] - 2.0
    out = {"Pss": 0.0, "Pss_Anon": 0.0, "base_Pss": 0.0, "base_Pss_Anon": 0.0, "loaded_Pss": 0.0}
    idle = {r["worker"]: started + r["at"] for r in sorted(doc["resources"], key=lambda r: -r["at"])
            if r["agents"] == 0}  # the earliest agent-free sample of each worker wins
    for k, pid in enumerate(workers):
        samples = tree.smaps[pid]
        during = [f for t, f in samples if steady0 <= t <= steady1]
        if k not in idle or not during:
            return {}
        _, before = min(samples, key=lambda s: abs(s[0] - idle[k]))
        for key in ("Pss", "Pss_Anon"):
            base = before.get(key, 0)
            loaded = statistics.median(f.get(key, 0) for f in during)
            out[key] += loaded - base
            out["base_" + key] += base
            if key == "Pss":
                out["loaded_Pss"] += loaded
    mb = 1024.0
    return {"pss_per_agent_mb": out["Pss"] / n / mb, "pss_anon_per_agent_mb": out["Pss_Anon"] / n / mb,
            "workers_baseline_mb": out["base_Pss"] / mb, "workers_pss_mb": out["loaded_Pss"] / mb,
            "whole_pss_per_agent_mb": out["loaded_Pss"] / n / mb, "agents_at_peak": n}


def pss_figures(doc: dict) -> dict:
    """Per worker: idle baseline, PSS when most agents were up, those agents (from the runner's samples)."""
    by_worker: dict[int, list[dict]] = {}
    for r in doc["resources"]:
        by_worker.setdefault(r["worker"], []).append(r)
    baseline = peak = agents = 0
    for samples in by_worker.values():
        samples.sort(key=lambda r: r["at"])
        base = next((r["pss_bytes"] for r in samples if r["agents"] == 0 and r["pss_bytes"]), None)
        top = max((r for r in samples if r["pss_bytes"]), key=lambda r: (r["agents"], r["at"]), default=None)
        if base is None or top is None or not top["agents"]:
            continue
        baseline += base
        peak += top["pss_bytes"]
        agents += top["agents"]
    if not agents:
        return {}
    mb = 1024 ** 2
    return {"workers_baseline_mb": baseline / mb, "workers_pss_mb": peak / mb, "agents_at_peak": agents,
            "pss_per_agent_mb": (peak - baseline) / agents / mb, "whole_pss_per_agent_mb": peak / agents / mb}


def run_step(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    out = workdir / f"n{n}"
    scenario = workdir / "scenario.yaml"
    scenario.write_text(SCENARIO)
    cmd = [sys.executable, "-c", "from softphone.cli import main; main()", "load", "--lab", "-n", str(n),
           "--ramp", str(args.ramp), "--duration", str(args.duration), "--scenario", str(scenario),
           "--out", str(out), "--quiet"]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with open(workdir / f"n{n}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        tree = TreeSampler(proc.pid)
        loads = []
        deadline = started + args.duration + 300
        while proc.poll() is None:
            tree.sample()
            loads.append(os.getloadavg()[0])
            if time.monotonic() > deadline:
                proc.kill()
                break
            time.sleep(0.25)
        proc.wait()
    wall = time.monotonic() - started
    doc = json.loads((out / "results.json").read_text())
    lat = doc["latency"]["login_to_bridge"]
    summary = doc["summary"]
    agent_s = sum(a["active_agents"] * (b["at"] - a["at"])
                  for a, b in itertools.pairwise(sorted(doc.get("snapshots", []), key=lambda s: s["at"])))
    roles = tree.by_role()
    lab_cpu = roles.get("lab", 0.0) + roles.get("coturn", 0.0)
    return {
        "n": n, "exit": proc.returncode, "wall_s": round(wall, 1),
        "load_avg": (load_before, max(loads, default=load_before)),
        "cpu_by_process_s": {k: round(v, 2) for k, v in roles.items()},
        "lab_cpu_s": lab_cpu, "agent_seconds": agent_s,
        "steady_cpu_per_agent_second": steady_cpu(doc, n / args.ramp + 5.0, doc["duration"] - 3.0),
        "lab_cpu_per_agent_second": lab_cpu / agent_s if agent_s else None,
        "pss": worker_memory(tree, doc, n, args.ramp) or pss_figures(doc),
        "pss_runner": pss_figures(doc),
        "setup_success": summary["setup_success"], "heard": doc["audio"]["statuses"].get("heard", 0),
        "legs": doc["audio"]["legs"], "loss_mean": doc["audio"]["loss_mean"],
        "loop_lag_p99_ms": summary["loop_lag_p99_ms"], "login_to_bridge_p95_ms": lat["p95"] and lat["p95"] * 1000,
        "cpu_per_agent_second": summary["cpu_per_agent_second"],
        "pss_per_agent_mb": summary["pss_per_agent"] and summary["pss_per_agent"] / 1024 ** 2,
        "passed": all(t["passed"] for t in doc["thresholds"]),
        "failed": [t["threshold"] for t in doc["thresholds"] if not t["passed"]],
    }


def steady_cpu(doc: dict, t0: float, t1: float) -> float | None:
    """CPU-s per agent-second of all workers between t0 and t1 (from the per-second resource samples)."""
    by_worker: dict[int, list[dict]] = {}
    for r in doc["resources"]:
        by_worker.setdefault(r["worker"], []).append(r)
    cpu = 0.0
    agents_s = 0.0
    for samples in by_worker.values():
        window = [r for r in samples if t0 <= r["at"] <= t1]
        if len(window) < 2:
            return None
        cpu += window[-1]["cpu_s"] - window[0]["cpu_s"]
        agents_s += sum(a["agents"] * (b["at"] - a["at"]) for a, b in itertools.pairwise(window))
    return cpu / agents_s if agents_s else None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _locust_step(n: int, args: argparse.Namespace, workdir: Path) -> dict:
    import asyncio
    import csv

    import psutil

    from softphone.lab.server import start_lab
    from softphone.load.runner import _seed_file

    out = workdir / f"locust-n{n}"
    out.mkdir(parents=True, exist_ok=True)
    seed_path, ids = _seed_file(n, out)
    server = await start_lab(db_url="sqlite:///:memory:", seed=str(seed_path), turn=True,
                             relay_only=False, media_turn=False)
    procs = []
    try:
        rows = [server.launch_params(uid, secure=False) for uid in ids]
        with open(out / "agents.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted({k for row in rows for k in row}))
            writer.writeheader()
            writer.writerows(rows)
        env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}
        env.update(SOFTPHONE_CREDENTIALS=str(out / "agents.csv"), SOFTPHONE_RELAY_ONLY="1")
        port = _free_port()
        base = [sys.executable, "-m", "locust", "-f", str(ROOT / "examples" / "load" / "locustfile.py")]
        master = await asyncio.create_subprocess_exec(
            *base, "--master", "--headless", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
            "--expect-workers", "1", "-u", str(n), "-r", str(args.ramp), "--run-time", f"{int(args.duration)}s",
            "--csv", "stats", "--stop-timeout", "30", cwd=str(out), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        procs.append(master)
        worker = await asyncio.create_subprocess_exec(
            *base, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port), cwd=str(out), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        procs.append(worker)
        ps = psutil.Process(worker.pid)
        # the steady window: after the ramp (and the agents' set-up), until shortly before the end
        t0 = n / args.ramp + 5.0
        t1 = args.duration - 2.0
        await asyncio.sleep(2.0 + t0)  # the master waits for its worker first (about 2 s)
        c0, w0 = sum(ps.cpu_times()[:2]), time.monotonic()
        await asyncio.sleep(max(1.0, t1 - t0))
        c1, w1 = sum(ps.cpu_times()[:2]), time.monotonic()
        await asyncio.wait_for(master.wait(), args.duration + 120)
        await asyncio.wait_for(worker.wait(), 60)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await server.close()
    stats = {(r["Type"], r["Name"]): r for r in csv.DictReader((out / "stats_stats.csv").read_text().splitlines())}
    bridged = int(stats.get(("SIP", "login_to_bridge"), {}).get("Request Count", 0))
    return {"n": n, "bridged": bridged, "cpu_per_agent_second": (c1 - c0) / (n * (w1 - w0)),
            "failures": sum(int(r["Failure Count"]) for k, r in stats.items() if k[1] != "Aggregated")}


REPORTER_JS = """
window.CFG = %s;
setInterval(() => {
  if (window.__events && window.__events.length)
    fetch('/event?agent=%d', {method: 'POST', body: JSON.stringify(window.__events.splice(0))});
}, 250);
"""


def tree_pss_cpu(root) -> tuple[float, float]:
    """(CPU seconds, PSS kB) summed over ``root`` and its descendants (psutil processes)."""
    import psutil

    cpu = pss = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        cpu += times.user + times.system
        pss += smaps_rollup(proc.pid).get("Pss", 0)
    return cpu, pss


async def _chromium_step(k: int, mode: str, args: argparse.Namespace, workdir: Path) -> dict:
    """K SIP.js 0.15.11 pages (the Webphone's legacy SIP.UA, auto-answering with a fake microphone)
    in headless Chromium against the lab: one browser with K tabs (``mode="tabs"``) or one browser
    per agent (``"browsers"``).  The REST steps (authorize, extension, login) are done from here,
    as the Webphone page does them; the lab then INVITEs each page (the bridge call).  Measured
    over the steady window, every page answered: the browsers' CPU per agent-second and PSS
    (all their processes) per agent, minus nothing (a browser has no idle baseline worth taking).
    """
    import asyncio
    import signal

    import psutil
    from aiohttp import web

    sys.path.insert(0, str(ROOT / "tests"))
    from peers.chromium import FAKE_MEDIA_FLAGS, HEADLESS_FLAGS, SIPJS

    from softphone.lab.server import start_lab
    from softphone.load.runner import _seed_file
    from softphone.log import reveal
    from softphone.media.sources import write_wav
    from softphone.params import load_params
    from softphone.platform.client import PlatformClient

    out = workdir / f"chromium-{mode}-k{k}"
    out.mkdir(parents=True, exist_ok=True)
    seed_path, ids = _seed_file(k, out)
    server = await start_lab(db_url="sqlite:///:memory:", seed=str(seed_path), turn=True,
                             relay_only=False, media_turn=False)
    events: dict[int, list[str]] = {i: [] for i in range(k)}
    configs: dict[int, str] = {}
    clients = []
    browsers: list[subprocess.Popen] = []
    runner = None
    try:
        import numpy as np

        t = np.arange(48000 * 2) / 48000
        wav = write_wav(out / "mic.wav", (0.3 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), 48000)
        for i, uid in enumerate(ids):
            params = load_params(None, flags=server.launch_params(uid, secure=False))
            api = PlatformClient.from_params(params)
            clients.append((api, params))
            await api.authorize()
            ext = params.derived.extension or (await api.provision_extension(params.customer_id,
                                                                              params.expire_date)).extension
            d = params.derived
            cfg = {"ext": ext, "password": reveal(params.password), "domain": d.sip_domain, "ws": d.sip_ws_url,
                   "turn": {"url": d.turn_urls[0], "username": d.turn_username,
                            "credential": reveal(d.turn_password)}}
            configs[i] = REPORTER_JS % (json.dumps(cfg), i)
            clients[-1] = (api, ext)

        # the page loads config.js and sip.min.js relative to its own path, /p/N/: one config per agent
        html = (ROOT / "tests" / "js" / "webphone_media.html").read_text()
        html = html.replace('src="/config.js"', 'src="config.js"').replace('src="/sip.min.js"', 'src="sip.min.js"')

        async def page(_request):
            return web.Response(text=html, content_type="text/html")

        async def config(request):
            return web.Response(text=configs[int(request.match_info["n"])], content_type="application/javascript")

        async def sipjs(_request):
            return web.FileResponse(SIPJS)

        async def event(request):
            events[int(request.query["agent"])].extend(e[0] for e in json.loads(await request.text()))
            return web.Response(text="ok")

        app = web.Application()
        app.add_routes([web.get("/p/{n}/", page), web.get("/p/{n}/config.js", config),
                        web.get("/p/{n}/sip.min.js", sipjs), web.post("/event", event)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        urls = [f"http://127.0.0.1:{port}/p/{i}/" for i in range(k)]
        flags = [*HEADLESS_FLAGS, *FAKE_MEDIA_FLAGS, f"--use-file-for-fake-audio-capture={wav}",
                 "--autoplay-policy=no-user-gesture-required"]
        # headless Chromium opens one target from its command line: further tabs through DevTools
        devtools = _free_port()
        if mode == "tabs":
            flags += [f"--remote-debugging-port={devtools}", "--remote-debugging-address=127.0.0.1"]
        for n, url in enumerate(urls[:1] if mode == "tabs" else urls):
            profile = out / f"profile-{n}"
            profile.mkdir(exist_ok=True)
            with open(out / f"browser-{n}.log", "wb") as log:
                browsers.append(subprocess.Popen(
                    [shutil_which("chromium"), *flags, f"--user-data-dir={profile}", url],
                    stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True))
        if mode == "tabs" and k > 1:
            import aiohttp

            async with aiohttp.ClientSession() as http:
                for _ in range(120):
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{devtools}/json/version") as resp:
                            if resp.status == 200:
                                break
                    await asyncio.sleep(0.25)
                for url in urls[1:]:
                    async with http.put(f"http://127.0.0.1:{devtools}/json/new?{url}") as resp:
                        resp.raise_for_status()
        deadline = time.monotonic() + 60 + k
        while time.monotonic() < deadline and not all("registered" in events[i] for i in range(k)):
            await asyncio.sleep(0.25)
        registered = sum("registered" in events[i] for i in range(k))
        for api, ext in clients:
            try:
                await api.login(1, ext)
            except Exception as exc:
                print(f"      login of {ext} failed: {exc}", flush=True)
        deadline = time.monotonic() + 30 + k
        while time.monotonic() < deadline and not all("accepted" in events[i] for i in range(k)):
            await asyncio.sleep(0.25)
        answered = sum("accepted" in events[i] for i in range(k))
        await asyncio.sleep(3.0)  # past the answer's DTLS/ICE work
        roots = [psutil.Process(b.pid) for b in browsers]
        received0 = lab_received(server)
        c0 = sum(tree_pss_cpu(r)[0] for r in roots)
        w0 = time.monotonic()
        await asyncio.sleep(args.chromium_seconds)
        figures = [tree_pss_cpu(r) for r in roots]
        w1 = time.monotonic()
        cpu = sum(f[0] for f in figures) - c0
        pss_kb = sum(f[1] for f in figures)
        received1 = lab_received(server)
        # heard: the lab got at least half of the 50 packets/s each page sent in the window
        heard_at_lab = sum(received1.get(key, 0) - received0.get(key, 0) >= 25 * (w1 - w0) for key in received1)
        for api, _ext in clients:
            with contextlib.suppress(Exception):
                await api.logout()
    finally:
        for b in browsers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(b.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                b.wait(10)
        for api, _ext in clients:
            with contextlib.suppress(Exception):
                await api.close()
        if runner is not None:
            await runner.cleanup()
        await server.close()
    return {"k": k, "mode": mode, "registered": registered, "answered": answered, "heard_at_lab": heard_at_lab,
            "cpu_per_agent_second": cpu / (k * (w1 - w0)), "pss_per_agent_mb": pss_kb / k / 1024,
            "load_avg": os.getloadavg()[0]}


def lab_received(server) -> dict:
    """RTP packets the lab received so far on each bridge call (its counting receivers)."""
    out = {}
    for key, bridge in server.lab.telephony.bridges.items():
        report = getattr(bridge.handler.receiver, "report", None) if bridge.handler is not None else None
        if report is not None:
            out[key] = report().received
    return out


def shutil_which(name: str) -> str:
    import shutil

    return shutil.which(name) or f"/usr/bin/{name}"


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="10,20,40", help="agent counts to try, in order")
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--ramp", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--out", type=Path, default=None, help="keep each run's results here")
    ap.add_argument("--locust", action="store_true", help="also run each N as Locust users and compare")
    ap.add_argument("--chromium", default="", help="K values: the same flow as SIP.js pages in headless Chromium "
                    "(one browser with K tabs, and one browser per agent) beside softphone load at K")
    ap.add_argument("--chromium-seconds", type=float, default=20.0, help="the browsers' measuring window")
    args = ap.parse_args(argv)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="bench-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"softphone load --lab, steady bridge, {args.duration:g} s per step, ramp {args.ramp:g}/s, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    print(f"{'N':>5} {'setup':>7} {'heard':>9} {'loss %':>7} {'lag p99':>8} {'login->bridge p95':>18} "
          f"{'agent CPU-s/agent-s':>20} {'lab CPU-s/agent-s':>18} {'PSS/agent MB':>13} {'(whole)':>8} "
          f"{'load avg':>10}  bars")
    for n in [int(x) for x in args.n.split(",") if x.strip()]:
        r = run_step(n, args, workdir)
        rows.append(r)
        pss = r["pss"]
        print(f"{r['n']:>5} {_f(r['setup_success'] and r['setup_success'] * 100, '.1f'):>7} "
              f"{r['heard']:>4}/{r['legs']:<4} {_f(r['loss_mean'] and r['loss_mean'] * 100, '.2f'):>7} "
              f"{_f(r['loop_lag_p99_ms'], '.0f'):>8} {_f(r['login_to_bridge_p95_ms'], '.0f'):>15} ms "
              f"{_f(r['cpu_per_agent_second'], '.4f'):>20} {_f(r['lab_cpu_per_agent_second'], '.4f'):>18} "
              f"{_f(pss.get('pss_per_agent_mb'), '.2f'):>13} {_f(pss.get('whole_pss_per_agent_mb'), '.1f'):>8} "
              f"{r['load_avg'][0]:>4.1f}-{r['load_avg'][1]:<4.1f}  "
              f"{'ok' if r['passed'] else 'missed: ' + ', '.join(r['failed'])}", flush=True)
        print(f"      CPU-s by process: {r['cpu_by_process_s']}, agent-seconds {r['agent_seconds']:.0f}; "
              f"workers' PSS {_f(pss.get('workers_pss_mb'), '.1f')} MB over a baseline of "
              f"{_f(pss.get('workers_baseline_mb'), '.1f')} MB with {pss.get('agents_at_peak', 0)} agents up; "
              f"agent CPU-s/agent-s in the steady state (after the ramp) "
              f"{_f(r['steady_cpu_per_agent_second'], '.4f')}; "
              f"Pss_Anon per agent {_f(pss.get('pss_anon_per_agent_mb'), '.2f')} MB; the runner's own "
              f"PSS figure {_f(r['pss_per_agent_mb'], '.2f')} MB", flush=True)
    if args.locust:
        import asyncio

        print("\nLocust worker vs softphone load (steady state, CPU-s per agent-second; agents per core = 1/x)")
        print(f"{'N':>5} {'softphone load':>15} {'locust worker':>14} {'bridged':>8} {'failures':>9} "
              f"{'locust holds':>13}")
        for r in rows:
            doc = json.loads((workdir / f"n{r['n']}" / "results.json").read_text())
            mine = steady_cpu(doc, r["n"] / args.ramp + 5.0, args.duration - 2.0)
            loc = asyncio.run(_locust_step(r["n"], args, workdir))
            ratio = mine / loc["cpu_per_agent_second"] if mine and loc["cpu_per_agent_second"] else None
            r["locust"] = {**loc, "softphone_steady_cpu_per_agent_second": mine, "holds_ratio": ratio}
            print(f"{r['n']:>5} {_f(mine, '.4f'):>15} {_f(loc['cpu_per_agent_second'], '.4f'):>14} "
                  f"{loc['bridged']:>4}/{r['n']:<3} {loc['failures']:>9} "
                  f"{_f(ratio and ratio * 100, '.0f'):>12}%", flush=True)
    extra: list[dict] = []  # softphone load runs made only for the side-by-side
    if args.chromium:
        import asyncio

        print("\nSIP.js 0.15.11 in headless Chromium vs softphone load, same flow (bridge call through the lab's "
              "coturn), steady state")
        print(f"{'K':>4} {'agents':>16} {'answered':>9} {'heard@lab':>10} {'CPU-s/agent-s':>14} {'PSS/agent MB':>13} "
              f"{'CPU ratio':>10} {'PSS ratio':>10} {'load avg':>9}")
        for k in [int(x) for x in args.chromium.split(",") if x.strip()]:
            mine = next((r for r in rows if r["n"] == k), None) or run_step(k, args, workdir)
            cpu = mine["steady_cpu_per_agent_second"] or mine["cpu_per_agent_second"]
            pss = mine["pss"].get("pss_per_agent_mb")
            print(f"{k:>4} {'softphone load':>16} {mine['heard']:>5}/{k:<3} {'':>10} {_f(cpu, '.4f'):>14} "
                  f"{_f(pss, '.2f'):>13} {'1':>10} {'1':>10} {mine['load_avg'][0]:>9.1f}", flush=True)
            side = mine.setdefault("chromium", [])
            for mode in ("tabs", "browsers"):
                c = asyncio.run(_chromium_step(k, mode, args, workdir))
                side.append(c)
                cpu_ratio = c["cpu_per_agent_second"] / cpu if cpu else None
                pss_ratio = c["pss_per_agent_mb"] / pss if pss else None
                label = "chromium, 1 browser" if mode == "tabs" else "chromium per agent"
                print(f"{k:>4} {label:>16} {c['answered']:>5}/{k:<3} {c['heard_at_lab']:>6}/{k:<3} "
                      f"{_f(c['cpu_per_agent_second'], '.4f'):>14} {_f(c['pss_per_agent_mb'], '.1f'):>13} "
                      f"{_f(cpu_ratio, '.0f'):>9}x {_f(pss_ratio, '.0f'):>9}x {c['load_avg']:>9.1f}", flush=True)
            if mine not in rows:
                extra.append(mine)
    held = [r["n"] for r in rows if r["passed"]]
    print(f"largest N holding every bar: {max(held) if held else 'none'}")
    (workdir / "bench-load.json").write_text(json.dumps(rows + extra, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
