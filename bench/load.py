"""Load benchmark: ``softphone load --lab`` at growing N, the largest N that holds every quality bar.

Each step is one ``softphone load`` run (its own process tree: the lab, with its media, in
the parent process and coturn in its own; the agents in worker processes), the steady
bridge scenario with the audio verdict on every leg, media relayed through coturn on both
sides.  The bars (issue 13): setup success > 99.5 %, mean loss < 0.5 %, audio heard on
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
(The side-by-side with SIP.js pages in Chromium is still to do.)

``--locust`` adds, per N, the same agents as Locust users (``examples/load/locustfile.py``,
one headless master and one worker process, the lab in this process) and compares the
worker's CPU-s per agent-second in the steady state (after the ramp) with one
``softphone load`` worker's over the same window: agents per core = 1 / that figure,
and the ratio says how many of ``softphone load``'s agents a Locust worker holds.

    python bench/load.py --n 10,20,40 --duration 30 --ramp 10 --workers 2
    python bench/load.py --n 20 --duration 40 --workers 1 --locust
"""

from __future__ import annotations

import argparse
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
    server = await start_lab(db_url="sqlite:///:memory:", seed=str(seed_path), turn=True, relay_only=True)
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
    held = [r["n"] for r in rows if r["passed"]]
    print(f"largest N holding every bar: {max(held) if held else 'none'}")
    (workdir / "bench-load.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
