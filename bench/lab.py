"""Lab benchmark: how fast ``softphone lab`` starts, how many registrations one lab process holds.

Scenarios (``--only`` picks some; all by default):

* ``start``: ``softphone lab --port 0`` as a user runs it, ``--starts`` times,
  from the command to the banner's last line (ready: REST, ws, wss, status
  page served).  Goal: under 2 s.  Once without TURN (``--no-turn``) and once
  with coturn when ``turnserver`` is installed.
* ``registrations``: a lab process seeded with ``--n`` phones (pre-provisioned
  extensions 7000...), and ``--n`` of our SIP user agents in this process, each
  on its own WebSocket, registering ``--concurrency`` at a time with digest
  authentication; then the lab's ``/lab/status`` is read to confirm it holds
  them all, they stay registered ``--hold`` seconds, and un-register.  Reports
  the time and rate, the lab's CPU seconds per registration and its memory
  (RSS) with them all bound.  Goal: at least 1,000.

* ``bridged_calls``: ``--calls`` agents (150 by default, at most ``--n``) each
  bridged and on a call to a customer at once, media on the lean path, audio
  verified both ways per call, the lab's CPU per call-second (goal: 150 calls;
  ``bench/lab_calls.py``, which also runs on its own).

More scenarios can join :data:`SCENARIOS` (name -> ``async def run(args) -> dict``).

Prints a table and writes the figures to ``bench/out/lab-<time>.json``.  No
asserts: this measures.

    python bench/lab.py
    python bench/lab.py --only registrations --n 2000 --concurrency 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from softphone.lab.seed import load_seed  # noqa: E402
from softphone.sip.timers import Timers  # noqa: E402
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect  # noqa: E402
from softphone.sip.user_agent import UserAgent, UserAgentConfig  # noqa: E402

CLI = [sys.executable, "-m", "softphone.cli", "lab"]
FIRST_EXTENSION = 7000


def proc_cpu(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def start_lab_process(*args: str) -> tuple[asyncio.subprocess.Process, dict[str, str], float]:
    """``softphone lab`` with ``args``; returns once its banner is out (ready), with the seconds it took
    (``banner["cpu_s"]``: the CPU seconds the lab process had used by then)."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(*CLI, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.DEVNULL)
    banner: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
        if not line:
            raise RuntimeError(f"softphone lab {' '.join(args)} exited with {await proc.wait()}")
        if line.startswith("softphone lab: serving "):
            banner["url"] = line.split()[-1]
        elif line.startswith("  ") and ":" in line:
            key, _, value = line.strip().partition(":")
            banner[key.strip()] = value.strip()
        if "Ctrl-C" in line:
            seconds = time.perf_counter() - started
            banner["cpu_s"] = str(proc_cpu(proc.pid))
            return proc, banner, seconds


async def stop_lab_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(2)
        try:
            await asyncio.wait_for(proc.communicate(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def bench_start(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = [("no TURN", ["--no-turn"])]
    if shutil.which("turnserver"):
        variants.append(("with coturn", []))
    for name, extra in variants:
        times, cpus = [], []
        for _ in range(args.starts):
            proc, banner, seconds = await start_lab_process("--port", "0", *extra)
            times.append(seconds)
            if banner["cpu_s"] != "None":
                cpus.append(float(banner["cpu_s"]))
            await stop_lab_process(proc)
        out[name] = {"runs": len(times), "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "median_cpu_s": statistics.median(cpus) if cpus else None}
    return out


def phone_seed(n: int, directory: Path) -> Path:
    base = load_seed()
    users = [{"user_id": u["user_id"], "user_name": u["user_name"], "password": u["password"],
              "customer_id": u["customer_id"], **({"role": u["role"]} if "role" in u else {})} for u in base.users]
    users += [{"user_id": 5000 + i, "user_name": f"phone{i}", "password": f"phone{i}-pass", "customer_id": 1,
               "extension": str(FIRST_EXTENSION + i)} for i in range(n)]
    seed = {"api_key": base.api_key, "customers": base.customers, "users": users, "campaigns": base.campaigns}
    path = directory / "bench-seed.json"
    path.write_text(json.dumps(seed))
    return path


async def bench_registrations(args: argparse.Namespace) -> dict[str, Any]:
    n = args.n
    with tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        seed = phone_seed(n, Path(tmp))
        proc, banner, _ = await start_lab_process("--port", "0", "--no-turn", "--seed", str(seed))
        try:
            ws_url, domain = banner["sip ws"], banner["sip domain"]
            uas = [UserAgent(UserAgentConfig(
                ws_url=ws_url, aor=f"sip:{FIRST_EXTENSION + i}@{domain}", password=f"phone{i}-pass",
                reconnect=Reconnect(enabled=False), keep_alive=KeepAlive(mode=KeepAliveMode.NONE),
                timers=Timers(), register_expires=600)) for i in range(n)]
            gate = asyncio.Semaphore(args.concurrency)
            failures: list[str] = []

            async def start(ua: UserAgent) -> None:
                async with gate:
                    try:
                        await ua.start()
                    except Exception as exc:
                        failures.append(f"{ua.aor}: {exc}")

            cpu0 = proc_cpu(proc.pid)
            ours0 = time.process_time()
            t0 = time.perf_counter()
            await asyncio.gather(*(start(ua) for ua in uas))
            elapsed = time.perf_counter() - t0
            cpu1 = proc_cpu(proc.pid)
            phones_cpu = time.process_time() - ours0
            async with aiohttp.ClientSession() as http, http.get(banner["url"] + "/lab/status") as resp:
                held = len((await resp.json())["registrations"])
            rss = proc_rss_mb(proc.pid)
            await asyncio.sleep(args.hold)
            async with aiohttp.ClientSession() as http, http.get(banner["url"] + "/lab/status") as resp:
                held_after = len((await resp.json())["registrations"])
            t1 = time.perf_counter()
            await asyncio.gather(*(ua.stop() for ua in uas))
            unregister_s = time.perf_counter() - t1
        finally:
            await stop_lab_process(proc)
    lab_cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    return {
        "phones": n, "concurrency": args.concurrency, "registered": n - len(failures), "failures": failures[:10],
        "lab_holds": held, "lab_holds_after_hold": held_after, "hold_s": args.hold,
        "register_s": elapsed, "registrations_per_s": (n - len(failures)) / elapsed if elapsed else None,
        "lab_cpu_s": lab_cpu, "lab_cpu_ms_per_registration": lab_cpu * 1000 / n if lab_cpu is not None else None,
        "lab_rss_mb": rss, "unregister_s": unregister_s, "phones_cpu_s": phones_cpu,
    }


async def bench_bridged_calls(args: argparse.Namespace) -> dict[str, Any]:
    """Concurrent bridged calls with audio both ways (bench/lab_calls.py)."""
    import importlib.util
    from dataclasses import asdict

    spec = importlib.util.spec_from_file_location("lab_calls_bench", Path(__file__).with_name("lab_calls.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_calls_bench"] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    calls = args.calls if args.calls is not None else min(150, args.n)
    result = await module.bridged_calls(calls, args.call_seconds, concurrency=min(args.concurrency, 25))
    return asdict(result)


#: name -> scenario; other parts of the lab add theirs (e.g. bridged calls with audio).
SCENARIOS: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "start": bench_start,
    "registrations": bench_registrations,
    "bridged_calls": bench_bridged_calls,
}


def print_table(results: dict[str, Any]) -> None:
    start = results.get("start")
    if start:
        print("lab start, command to ready (goal < 2 s)")
        for name, r in start.items():
            cpu = f", {r['median_cpu_s']:.2f} CPU-s" if r.get("median_cpu_s") is not None else ""
            print(f"  {name:12s} median {r['median_s']:.2f} s  (min {r['min_s']:.2f}, max {r['max_s']:.2f}, "
                  f"{r['runs']} runs{cpu})")
    reg = results.get("registrations")
    if reg:
        print("registrations held by one lab process (goal >= 1,000)")
        print(f"  {reg['registered']}/{reg['phones']} registered in {reg['register_s']:.2f} s "
              f"({reg['registrations_per_s']:.0f}/s, {reg['concurrency']} at a time); lab holds {reg['lab_holds']}, "
              f"{reg['lab_holds_after_hold']} after {reg['hold_s']:g} s")
        if reg["lab_cpu_ms_per_registration"] is not None:
            print(f"  lab CPU {reg['lab_cpu_s']:.2f} s ({reg['lab_cpu_ms_per_registration']:.2f} ms per registration), "
                  f"RSS {reg['lab_rss_mb']:.0f} MB; un-registering took {reg['unregister_s']:.2f} s")
        print(f"  the phones' side (this process) used {reg['phones_cpu_s']:.2f} CPU-s registering")
        for failure in reg["failures"]:
            print(f"  failed: {failure}")
    calls = results.get("bridged_calls")
    if calls:
        print("concurrent bridged calls, lean media, audio verified both ways (goal >= 150)")
        print(f"  {calls['verified_both']}/{calls['n']} verified ({calls['answered']} answered) over "
              f"{calls['seconds']:g} s; lab CPU {calls['lab_cpu_seconds']:.2f} s = "
              f"{calls['lab_cpu_per_call_second'] * 1000:.2f} ms per call-second"
              + (f"; {calls['error']}" if calls.get("error") else ""))
    for name, value in results.items():
        if name not in ("start", "registrations", "bridged_calls", "meta"):
            print(f"{name}: {json.dumps(value, default=str)}")


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default all: {', '.join(SCENARIOS)})")
    parser.add_argument("--starts", type=int, default=5, help="lab starts to time per variant")
    parser.add_argument("--n", type=int, default=1000, help="phones registering")
    parser.add_argument("--concurrency", type=int, default=100, help="registrations in flight")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds to hold the registrations")
    parser.add_argument("--calls", type=int, default=None,
                        help="bridged calls at once (default 150, at most --n)")
    parser.add_argument("--call-seconds", type=float, default=10.0, help="bridged calls' measuring window")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="where the JSON goes")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    results: dict[str, Any] = {"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg": os.getloadavg(),
                                        "cpus": os.cpu_count(), "argv": sys.argv[1:]}}
    for name in chosen:
        results[name] = await SCENARIOS[name](args)
    print_table(results)
    print(f"load average at start {results['meta']['loadavg'][0]:.2f} on {results['meta']['cpus']} CPUs "
          "(a loaded machine stretches wall times; CPU seconds are steadier)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lab-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"figures: {path}")
    return results


if __name__ == "__main__":
    asyncio.run(main())
