"""SIP benchmark: N user agents registering to a real Kamailio from one process.

Starts its own Kamailio with the tests/peers launcher (or uses ``--ws-url``
with ``--domain`` and ``--password``), then starts ``--n`` user agents
(default 100, up to 500), each opening its own WebSocket and registering with
digest authentication, ``--concurrency`` at a time.  Reports registrations per
second, p50/p95/max latency of connect and of REGISTER (challenge + retry
included), CPU seconds per registration for this process (``getrusage``) and
for Kamailio (``/proc``); with ``--calls M``, M pairs of them then call each other
through Kamailio (signalling only) and hang up; then everyone un-registers.  If SIP-A's parser
benchmark (``bench/sip_parse.py``) is present, it runs first.  Prints a
table and writes the raw figures to ``bench/out/sip-<time>.json``.  No
asserts: this measures.

``--restart`` is another scenario: N user agents that register by themselves and
reconnect with back-off (as agents run), Kamailio killed with SIGKILL and
started again (registrations live in its memory), and the time until the
last user agent is registered again, from the kill and from the restart.

    python bench/sip.py --n 200 --concurrency 50 --calls 50
    python bench/sip.py --restart --n 200
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from softphone.sip.timers import Timers  # noqa: E402
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect  # noqa: E402
from softphone.sip.user_agent import UserAgent, UserAgentConfig  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_tree_cpu(pid: int) -> float | None:
    """User+system CPU seconds of ``pid`` and its children (Kamailio forks workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        pids = {pid}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    pids.add(int(entry.name))
        for p in pids:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / tick
    except OSError:
        return None
    return total


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def run_parse_benchmark() -> None:
    """SIP-A's parser benchmark, if it is in the tree (import guarded)."""
    try:
        module = importlib.import_module("bench.sip_parse")
    except ImportError:
        print("(bench/sip_parse.py not present: parser benchmark skipped)")
        return
    for name in ("run", "benchmark", "bench", "main"):
        fn = getattr(module, name, None)
        if callable(fn):
            print(f"--- parser benchmark (bench/sip_parse.py:{name}) ---")
            try:
                fn()
            except SystemExit:
                pass
            except Exception as exc:  # a broken sibling benchmark must not stop this one
                print(f"parser benchmark failed: {exc}")
            print()
            return
    print("(bench/sip_parse.py has no run/benchmark/main function: skipped)")


def start_kamailio(users: dict[str, str], children: int):
    """A private Kamailio from the tests/peers launcher, with ``users`` provisioned."""
    try:
        from tests.peers.kamailio import Kamailio
    except ImportError as exc:
        raise SystemExit(
            f"tests/peers Kamailio launcher not importable ({exc}); pass --ws-url, --domain and --password"
        ) from exc
    workdir = Path(tempfile.mkdtemp(prefix="bench-sip-kamailio-"))
    kam = Kamailio(workdir, users=users, n_users=0, children=children)
    kam.start()
    print(f"Kamailio {kam.ws_url} (pid {kam.pid}, {children} workers, log {kam.log_path})")
    return kam


async def register_one(ws_url: str, domain: str, ext: str, password: str, results: dict) -> UserAgent | None:
    c0 = time.process_time()
    config = UserAgentConfig(
        ws_url=ws_url, aor=f"sip:{ext}@{domain}", password=password, register=False,
        keep_alive=KeepAlive(KeepAliveMode.NONE), reconnect=Reconnect(enabled=False),
        timers=Timers(), connect_timeout=30.0)
    # Secret() registers the password with the log redactor (a new prefix pattern now and
    # then, rebuilt off the loop): still worth seeing separately at large N.
    results["config_cpu"] += time.process_time() - c0
    ua = UserAgent(config)
    t0 = time.perf_counter()
    try:
        await ua.start()
        t1 = time.perf_counter()
        await ua.registerer.register()
        t2 = time.perf_counter()
    except Exception as exc:
        results["errors"].append(f"{ext}: {exc}")
        await ua.stop()
        return None
    results["connect"].append(t1 - t0)
    results["register"].append(t2 - t1)
    return ua


async def run_calls(agents: list[UserAgent], wanted: int, domain: str) -> dict:
    """Pairs of registered agents call each other (signalling only) and hang up."""
    pairs = list(zip(agents[0::2], agents[1::2], strict=False))[:wanted]
    out: dict = {"attempted": len(pairs), "setup": [], "bye": [], "errors": [], "cpu": 0.0}

    async def one(caller: UserAgent, callee: UserAgent) -> None:
        t0 = time.perf_counter()
        try:
            inviter = await caller.call(callee.aor)
            t1 = time.perf_counter()
            await inviter.bye()
            t2 = time.perf_counter()
        except Exception as exc:
            out["errors"].append(f"{caller.aor} -> {callee.aor}: {exc}")
            return
        out["setup"].append(t1 - t0)
        out["bye"].append(t2 - t1)

    cpu0 = cpu_seconds()
    await asyncio.gather(*(one(a, b) for a, b in pairs))
    out["cpu"] = cpu_seconds() - cpu0
    return out


async def run(args: argparse.Namespace) -> None:
    n = args.n
    extensions = [str(args.first_extension + i) for i in range(n)]
    kam = None
    if args.ws_url:
        ws_url, domain = args.ws_url, args.domain
        passwords = dict.fromkeys(extensions, args.password)
    else:
        wanted = {ext: f"pw-{ext}-bench" for ext in extensions}
        kam = start_kamailio(wanted, args.kamailio_children)
        ws_url, domain = kam.ws_url, kam.domain
        passwords = {ext: kam.users.get(ext, wanted[ext]) for ext in extensions}
    kam_pid = getattr(kam, "pid", None)
    try:
        results: dict = {"connect": [], "register": [], "errors": [], "config_cpu": 0.0}
        semaphore = asyncio.Semaphore(args.concurrency)

        async def bounded(ext: str):
            async with semaphore:
                return await register_one(ws_url, domain, ext, passwords[ext], results)

        kam_cpu0 = process_tree_cpu(kam_pid) if kam_pid else None
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        agents = await asyncio.gather(*(bounded(ext) for ext in extensions))
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
        kam_cpu = (process_tree_cpu(kam_pid) - kam_cpu0) if kam_cpu0 is not None else None
        ok = [a for a in agents if a is not None]
        calls = await run_calls(ok, args.calls, domain) if args.calls else None

        unreg0 = time.perf_counter()
        await asyncio.gather(*(a.stop() for a in ok), return_exceptions=True)
        unreg_wall = time.perf_counter() - unreg0
    finally:
        if kam is not None and hasattr(kam, "stop"):
            kam.stop()

    registered = len(ok)
    print(f"SIP registration benchmark: {n} user agents, concurrency {args.concurrency}, one process")
    print(f"{'metric':<38}{'value':>14}")
    rows = [
        ("registered / attempted", f"{registered}/{n}"),
        ("wall time (s)", f"{wall:.3f}"),
        ("registrations per second", f"{registered / wall:.1f}" if wall else "n/a"),
        ("connect latency p50 (ms)", f"{percentile(results['connect'], 0.5) * 1000:.1f}"),
        ("connect latency p95 (ms)", f"{percentile(results['connect'], 0.95) * 1000:.1f}"),
        ("REGISTER latency p50 (ms)", f"{percentile(results['register'], 0.5) * 1000:.1f}"),
        ("REGISTER latency p95 (ms)", f"{percentile(results['register'], 0.95) * 1000:.1f}"),
        ("REGISTER latency max (ms)", f"{max(results['register'], default=float('nan')) * 1000:.1f}"),
        ("REGISTER latency mean (ms)",
         f"{statistics.fmean(results['register']) * 1000:.1f}" if results["register"] else "n/a"),
        ("client CPU s per registration", f"{cpu / max(1, registered):.5f}"),
        ("  of which config + log redactor setup", f"{results['config_cpu'] / max(1, registered):.5f}"),
        ("Kamailio CPU s per registration",
         f"{kam_cpu / max(1, registered):.5f}" if kam_cpu is not None else "n/a"),
        ("un-REGISTER + close all (s)", f"{unreg_wall:.3f}"),
        ("load average (1 min)", f"{os.getloadavg()[0]:.2f}"),
    ]
    for name, value in rows:
        print(f"{name:<38}{value:>14}")
    report = {"n": n, "concurrency": args.concurrency, "registered": registered, "wall_s": wall,
              "registrations_per_s": registered / wall if wall else None,
              "connect_s": results["connect"], "register_s": results["register"],
              "client_cpu_s": cpu, "config_cpu_s": results["config_cpu"], "kamailio_cpu_s": kam_cpu,
              "unregister_wall_s": unreg_wall, "errors": results["errors"], "calls": calls,
              "loadavg": os.getloadavg()}
    if calls is not None:
        print(f"\nSIP call benchmark: {calls['attempted']} calls between registered agents through Kamailio "
              "(INVITE with 407 challenge, 180, 200, ACK, then BYE), all at once")
        for name, value in (
            ("calls established / attempted", f"{len(calls['setup'])}/{calls['attempted']}"),
            ("call setup p50 (ms)", f"{percentile(calls['setup'], 0.5) * 1000:.1f}"),
            ("call setup p95 (ms)", f"{percentile(calls['setup'], 0.95) * 1000:.1f}"),
            ("BYE p50 (ms)", f"{percentile(calls['bye'], 0.5) * 1000:.1f}"),
            ("client CPU s per call (setup + BYE)", f"{calls['cpu'] / max(1, len(calls['setup'])):.5f}"),
        ):
            print(f"{name:<38}{value:>14}")
        for line in calls["errors"][:5]:
            print(f"  call failed: {line}")
    if results["errors"]:
        print(f"\n{len(results['errors'])} failures, first ones:")
        for line in results["errors"][:5]:
            print(f"  {line}")
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"sip-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nraw figures: {out}")


async def run_restart(args: argparse.Namespace) -> None:
    """N self-registering user agents; Kamailio SIGKILLed and restarted; time until all are back."""
    extensions = [str(args.first_extension + i) for i in range(args.n)]
    kam = start_kamailio({ext: f"pw-{ext}-bench" for ext in extensions}, args.kamailio_children)
    agents = [UserAgent(UserAgentConfig(
        ws_url=kam.ws_url, aor=f"sip:{ext}@{kam.domain}", password=kam.users[ext], timers=Timers(),
        keep_alive=KeepAlive(KeepAliveMode.NONE), connect_timeout=30.0,
        reconnect=Reconnect(min_delay=args.reconnect_min, max_delay=args.reconnect_max)))
        for ext in extensions]
    back_at: dict[int, float] = {}
    lost_at: dict[int, float] = {}
    deadline = 600.0
    try:
        gate = asyncio.Semaphore(args.concurrency)

        async def start(ua: UserAgent) -> None:
            async with gate:
                await ua.start()

        await asyncio.gather(*(start(ua) for ua in agents))

        async def wait_for(predicate, what: str) -> bool:
            end = time.perf_counter() + deadline
            while not predicate():
                if time.perf_counter() > end:
                    print(f"gave up after {deadline:.0f}s waiting for {what}")
                    return False
                await asyncio.sleep(0.01)
            return True

        await wait_for(lambda: all(ua.registered for ua in agents), "the first registrations")
        for i, ua in enumerate(agents):
            ua.on("registered", lambda *_, _i=i: back_at.setdefault(_i, time.perf_counter()))
            ua.on("disconnected", lambda *_, _i=i: lost_at.setdefault(_i, time.perf_counter()))
        kam_pid = kam.pid
        killed = time.perf_counter()
        kam.kill()
        await wait_for(lambda: len(lost_at) == len(agents), "every agent to notice the crash")
        restart0 = time.perf_counter()
        kam.start()
        restarted = time.perf_counter()
        all_back = await wait_for(lambda: all(ua.registered for ua in agents), "all agents registered again")
        done = time.perf_counter()
    finally:
        await asyncio.gather(*(ua.stop() for ua in agents), return_exceptions=True)
        kam.stop()
    back = sorted(t - restarted for t in back_at.values())
    print(f"SIP re-registration after a Kamailio crash: {args.n} user agents (reconnect back-off "
          f"{args.reconnect_min:g}-{args.reconnect_max:g} s with jitter), SIGKILL of pid {kam_pid}, restart")
    print(f"{'metric':<44}{'value':>12}")
    rows = [
        ("registered again / user agents", f"{sum(ua.registered for ua in agents) if not all_back else args.n}"
                                           f"/{args.n}"),
        ("kill -> every agent saw the loss (s)", f"{max(lost_at.values(), default=killed) - killed:.3f}"),
        ("Kamailio start (s)", f"{restarted - restart0:.3f}"),
        ("restart -> first agent back (s)", f"{back[0]:.3f}" if back else "n/a"),
        ("restart -> median agent back (s)", f"{percentile(back, 0.5):.3f}" if back else "n/a"),
        ("restart -> LAST agent back (s)", f"{done - restarted:.3f}" if all_back else "not all back"),
        ("kill -> LAST agent back (s)", f"{done - killed:.3f}" if all_back else "not all back"),
        ("load average (1 min)", f"{os.getloadavg()[0]:.2f}"),
    ]
    for name, value in rows:
        print(f"{name:<44}{value:>12}")
    out_dir = ROOT / "bench" / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"sip-restart-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"n": args.n, "all_back": all_back, "back_after_restart_s": back,
                               "kill_to_last_s": done - killed, "restart_to_last_s": done - restarted,
                               "reconnect": [args.reconnect_min, args.reconnect_max]}, indent=1))
    print(f"\nraw figures: {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100, help="user agents (1-500, default 100)")
    parser.add_argument("--concurrency", type=int, default=50, help="registrations in flight at once")
    parser.add_argument("--first-extension", type=int, default=2001)
    parser.add_argument("--ws-url", help="use this registrar instead of starting Kamailio")
    parser.add_argument("--domain", default="127.0.0.1")
    parser.add_argument("--password", default="", help="password of every extension with --ws-url")
    parser.add_argument("--kamailio-children", type=int, default=2, help="Kamailio worker processes")
    parser.add_argument("--calls", type=int, default=0,
                        help="after registering, this many agent pairs call each other and hang up")
    parser.add_argument("--skip-parse", action="store_true", help="do not run bench/sip_parse.py")
    parser.add_argument("--restart", action="store_true",
                        help="scenario: self-registering agents, Kamailio SIGKILLed and restarted, time until "
                             "the last one is registered again")
    parser.add_argument("--reconnect-min", type=float, default=0.5, help="--restart: first reconnect delay (s)")
    parser.add_argument("--reconnect-max", type=float, default=30.0, help="--restart: longest reconnect delay (s)")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 500:
        parser.error("--n must be between 1 and 500")
    if args.concurrency < 1:
        parser.error("--concurrency must be >= 1")
    if args.restart:
        asyncio.run(run_restart(args))
        return
    if not args.skip_parse:
        run_parse_benchmark()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
