"""Concurrent bridged calls through the lab, media on the lean path: audio verified both ways, CPU per call-second.

The lab runs in a child process (``start_lab`` with the SIP edge and
``SipTelephony``, ``decode=False``: the lab sends pre-encoded prompt and
customer audio and only counts what the phones send), so its CPU is measured
on its own (``/proc/PID/stat``).  This process plays N agents: a softphone.sip
user agent per agent registered over ws://, lean media (a pre-encoded 1000 Hz
tone out, a counting receiver in), REST login (the lab INVITEs the phone:
the bridge call), then one outbound call each to a customer who answers at
once and plays 600 Hz.  In the measuring window, a call counts as verified
when the phone received at least half of the expected packets from the lab and
the lab received at least half from the phone.  Everything stays on 127.0.0.1.

    python bench/lab_calls.py --n 50,100,150 --seconds 10

Prints a table (and ``--json``); no asserts: this measures.  The goal is 150
calls verified on this machine; the CPU figure is the lab process's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

PHONE_PASSWORD = "bench-phone-{i}"
FIRST_USER, FIRST_EXTENSION = 50_000, 70_000
PACKETS_PER_SECOND = 50


@dataclass
class BridgedCallsResult:
    n: int
    seconds: float
    registered: int = 0
    bridged: int = 0
    answered: int = 0
    verified_both: int = 0
    phone_rx_packets: int = 0
    lab_rx_packets: int = 0
    expected_packets_each_way: int = 0
    setup_seconds: float = 0.0
    lab_cpu_seconds: float = 0.0
    lab_cpu_per_call_second: float = 0.0
    phones_cpu_seconds: float = 0.0
    lab_senders_stopped: int = 0
    lab_frames_skipped: int = 0    # frames a starved event loop skipped sending (the lab's prompt/customer audio)
    phone_frames_skipped: int = 0
    error: str | None = None


def bench_seed(n: int) -> Any:
    from softphone.lab.seed import Seed, load_seed

    base = load_seed()
    users = [{"user_id": FIRST_USER + i, "user_name": f"bench{i}", "password": PHONE_PASSWORD.format(i=i),
              "customer_id": 1, "extension": str(FIRST_EXTENSION + i)} for i in range(n)]
    return Seed(path="bench seed", api_key=base.api_key, customers=base.customers, users=users,
                campaigns=base.campaigns, leads=[])


# --- the lab process ------------------------------------------------------------------------


async def serve_lab(n: int) -> None:
    """Child process: a lab for ``n`` phones; prints its URLs as one JSON line, stops when stdin closes."""
    from softphone.lab.customers import Behaviour, CustomerTable
    from softphone.lab.server import start_lab
    if os.environ.get("LAB_CALLS_LOG"):
        import logging

        logging.basicConfig(filename=os.environ["LAB_CALLS_LOG"], level=logging.INFO,
                            format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with loopback_candidates():
        customers = CustomerTable(default=Behaviour(answer_after=0.0, play="tone:600"))
        async with await start_lab(seed=bench_seed(n), turn=False, customers=customers,
                                   telephony_options={"decode": False, "answer_timeout": 60.0,
                                                      "ring_wait": 5.0}) as lab:
            print(json.dumps({"url": lab.url, "ws": lab.sip_ws_url, "domain": lab.domain,
                              "key": lab.api_key.reveal()}), flush=True)
            loop = asyncio.get_running_loop()
            stats_request = asyncio.Event()

            async def report() -> None:
                while True:
                    await stats_request.wait()
                    stats_request.clear()
                    tel = lab.lab.telephony
                    rx = {}
                    for user_id, bridge in tel.bridges.items():
                        handler = bridge.handler
                        rx[user_id] = handler.receiver.report().received if handler and not handler.closed else 0
                    answered = sum(1 for c in tel.calls.values() if c.winner is not None)
                    stopped = sum(1 for b in tel.bridges.values() if b.handler and b.handler.sending_stopped)
                    skipped = sum(getattr(b.handler.source, "frames_skipped", 0) for b in tel.bridges.values()
                                  if b.handler is not None)
                    print(json.dumps({"rx": rx, "answered": answered, "senders_stopped": stopped,
                                      "frames_skipped": skipped}), flush=True)

            reporter = loop.create_task(report())
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := await reader.readline():
                if line.strip() == b"stats":
                    stats_request.set()
            reporter.cancel()


def loopback_candidates() -> Any:
    """aioice host candidates on 127.0.0.1 only (the media package's test helper, wherever it lives)."""
    try:
        from softphone.media.testing import loopback_host_candidates
    except ImportError:
        from softphone.media.lean import loopback_host_candidates
    return loopback_host_candidates()


def proc_cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- the phones --------------------------------------------------------------------------------


class LabChild:
    def __init__(self, n: int) -> None:
        self.n = n
        self.proc: asyncio.subprocess.Process | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, os.path.abspath(__file__), "--serve-lab", str(self.n),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError("the lab process ended before it was ready")
        self.info = json.loads(line)

    async def stats(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(b"stats\n")
        await self.proc.stdin.drain()
        return json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30))

    def cpu(self) -> float:
        return proc_cpu_seconds(self.proc.pid) if self.proc else 0.0

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def lean_phone(ws_url: str, domain: str, i: int) -> Any:
    from softphone.media.config import MediaConfig
    from softphone.media.description_handler import WebRtcDescriptionHandlerFactory
    from softphone.media.lean import PreEncodedAudioTrack, Tone
    from softphone.sip.timers import Timers
    from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
    from softphone.sip.user_agent import UserAgent, UserAgentConfig

    factory = WebRtcDescriptionHandlerFactory(MediaConfig(decode=False),
                                              source_factory=lambda _s: PreEncodedAudioTrack(Tone(1000.0)))
    return UserAgent(UserAgentConfig(
        ws_url=ws_url, aor=f"sip:{FIRST_EXTENSION + i}@{domain}", password=PHONE_PASSWORD.format(i=i),
        description_handler_factory=factory, reconnect=Reconnect(enabled=False),
        keep_alive=KeepAlive(mode=KeepAliveMode.NONE), timers=Timers()))


def phone_skipped(ua: Any) -> int:
    session = next(iter(ua.sessions), None)
    handler = getattr(session, "_handler", None) if session is not None else None
    return getattr(getattr(handler, "source", None), "frames_skipped", 0) if handler is not None else 0


def phone_rx(ua: Any) -> int:
    session = next(iter(ua.sessions), None)
    handler = getattr(session, "_handler", None) if session is not None else None
    if handler is None or handler.closed:
        return 0
    return handler.receiver.report().received


async def bridged_calls(n: int, seconds: float = 10.0, warmup: float = 2.0,
                        concurrency: int = 25) -> BridgedCallsResult:
    """Run ``n`` agents with one bridged customer call each through a lab process; the figures."""
    from softphone.platform.client import PlatformClient

    result = BridgedCallsResult(n=n, seconds=seconds)
    child = LabChild(n)
    phones: list[Any] = []
    clients: list[Any] = []
    gate = asyncio.Semaphore(concurrency)
    t0 = time.monotonic()
    with loopback_candidates():
        try:
            await child.start()
            info = child.info
            phones = [lean_phone(info["ws"], info["domain"], i) for i in range(n)]

            async def bring_up(i: int) -> None:
                async with gate:
                    await phones[i].start()
                    result.registered += 1
                    api = PlatformClient(info["url"], info["key"], username=f"bench{i}",
                                         password=PHONE_PASSWORD.format(i=i), allow_http=True, timeout=60)
                    clients.append(api)
                    await api.login(1, str(FIRST_EXTENSION + i))
                    result.bridged += 1
                    await api.call(f"08200{i:05d}", outbound_cli="27110000000", unique_id=f"bench-{i}")

            outcomes = await asyncio.gather(*(bring_up(i) for i in range(n)), return_exceptions=True)
            errors = [o for o in outcomes if isinstance(o, BaseException)]
            if errors:
                result.error = f"{len(errors)} agent(s) failed to start: {errors[0]!r}"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                stats = await child.stats()
                if stats["answered"] >= result.bridged:
                    break
                await asyncio.sleep(0.5)
            result.answered = stats["answered"]
            result.setup_seconds = time.monotonic() - t0
            await asyncio.sleep(warmup)

            before_lab = (await child.stats())["rx"]
            before_phone = [phone_rx(ua) for ua in phones]
            cpu0, own0, w0 = child.cpu(), time.process_time(), time.monotonic()
            await asyncio.sleep(seconds)
            final = await child.stats()
            after_lab = final["rx"]
            result.lab_senders_stopped = final.get("senders_stopped", 0)
            result.lab_frames_skipped = final.get("frames_skipped", 0)
            result.phone_frames_skipped = sum(phone_skipped(ua) for ua in phones)
            after_phone = [phone_rx(ua) for ua in phones]
            cpu1, own1, w1 = child.cpu(), time.process_time(), time.monotonic()
            window = w1 - w0
            result.expected_packets_each_way = int(window * PACKETS_PER_SECOND)
            half = result.expected_packets_each_way // 2
            for i in range(n):
                user = str(FIRST_USER + i)
                lab_rx = after_lab.get(user, 0) - before_lab.get(user, 0)
                phone_got = after_phone[i] - before_phone[i]
                result.lab_rx_packets += lab_rx
                result.phone_rx_packets += phone_got
                if lab_rx >= half and phone_got >= half:
                    result.verified_both += 1
            result.lab_cpu_seconds = cpu1 - cpu0
            result.phones_cpu_seconds = own1 - own0
            if result.verified_both:
                result.lab_cpu_per_call_second = result.lab_cpu_seconds / (result.verified_both * window)
        except Exception as exc:  # a bench reports, it does not crash half way
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            for api in clients:
                with contextlib.suppress(Exception):
                    await api.logout()
                with contextlib.suppress(Exception):
                    await api.close()
            await asyncio.gather(*(ua.stop() for ua in phones), return_exceptions=True)
            await child.stop()
    return result


def bench_bridged_calls(ns: list[int], seconds: float, warmup: float = 2.0,
                        concurrency: int = 25) -> list[BridgedCallsResult]:
    """Run each N in turn and print the table (what bench/lab.py calls for its "bridged calls" part)."""
    results = []
    print(f"{'calls':>6} {'verified':>9} {'answered':>9} {'lab rx/exp':>11} {'phone rx/exp':>13} "
          f"{'lab CPU s':>10} {'lab CPU ms/call-s':>18} {'phones CPU s':>13} {'setup s':>8}")
    for n in ns:
        r = asyncio.run(bridged_calls(n, seconds, warmup, concurrency))
        results.append(r)
        exp = max(1, r.expected_packets_each_way * max(1, n))
        print(f"{r.n:>6} {r.verified_both:>9} {r.answered:>9} {r.lab_rx_packets / exp:>11.2f} "
              f"{r.phone_rx_packets / exp:>13.2f} {r.lab_cpu_seconds:>10.2f} "
              f"{r.lab_cpu_per_call_second * 1000:>18.2f} {r.phones_cpu_seconds:>13.2f} {r.setup_seconds:>8.1f}"
              + (f"  ({r.error})" if r.error else ""), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="50,150", help="comma-separated numbers of concurrent calls")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=25, help="agents starting at the same time")
    parser.add_argument("--json", action="store_true", help="print the results as JSON too")
    parser.add_argument("--serve-lab", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_lab is not None:
        asyncio.run(serve_lab(args.serve_lab))
        return 0
    results = bench_bridged_calls([int(x) for x in args.n.split(",") if x.strip()], args.seconds, args.warmup,
                                  args.concurrency)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
