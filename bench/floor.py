"""The CPU floor of one agent's media in pure Python, with none of the WebRTC stack.

What the cheapest possible Python agent would spend per agent-second, as evidence
beside the load runner's agents (about 0.0045-0.005 CPU-s per agent-second: one
call each, 50 packets/s each way, SRTP, relayed through TURN) and SIP.js in headless
Chromium (about 0.041-0.054).  Nothing of aiortc, aioice or the softphone runs here:
no ICE, DTLS, RTCP, jitter handling, NACK history, audio verdict or signalling.

Each agent is one connected UDP socket (an asyncio datagram endpoint) that sends an
RTP packet every 20 ms (12-byte header + ``--payload`` bytes) and receives 50
packets/s, reading each one's sequence number.  One ``call_at`` timer per 20 ms tick
sends every agent's packet in a batch (the cheapest scheduling).  Variants, run one
after another in this process at each N:

* srtp: each packet protected / unprotected with pylibsrtp, a ``Session`` per
  direction per agent, AES_CM_128_HMAC_SHA1_80 (what WebRTC negotiates);
* plain: the same without SRTP;
* srtp+turn: SRTP plus TURN ChannelData framing (a 4-byte header added on send,
  checked and stripped on receive), what a relayed agent adds;
* srtp uvloop: srtp on uvloop's loop, only if uvloop is installed;
* srtp 256K recv (on request): srtp with asyncio's own ``recvfrom(262144)``.  glibc
  serves each such buffer with an mmap, mremap and munmap (three syscalls per
  datagram) until something raises its dynamic mmap threshold, so this row's cost
  depends on the process's allocation history; the others ask for 2048 bytes.

Each row runs in a process of its own (no row inherits another's heap or allocator
state).  The far end (sending each agent 50 packets/s, swallowing what the agents send) is a
separate process whose CPU is not counted.  The agents' figure is this process's
CPU (``time.process_time``) over a steady window after a warm-up, per agent-second.
A row whose received fraction is not ~100 % measured less work and is void.
No asserts: this measures.

    python bench/floor.py                       # 75 and 150 agents, 80-byte payload (Opus ~32 kbit/s)
    python bench/floor.py --agents 150,300 --payload 160 --seconds 20   # PCMU
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pylibsrtp import Policy, Session

try:
    import uvloop
except ImportError:  # optional: variant d runs only where it is already installed
    uvloop = None

PTIME = 0.020
RTP_HEADER = struct.Struct("!BBHII")
CHANNEL_HEADER = struct.Struct("!HH")
CHANNEL = 0x4000  # the first TURN channel number
ASYNCIO_RECV_SIZE = 256 * 1024  # asyncio's datagram transports call recvfrom() with this
# Figures this floor is set against (bench/README.md, 2026-12-02, CPU-s per agent-second).
LOAD_RUNNER = (0.0045, 0.005)
CHROMIUM = (0.041, 0.054)


@dataclass(frozen=True)
class Variant:
    name: str
    srtp: bool
    turn: bool = False
    uvloop: bool = False
    recv_size: int | None = None  # None: --recv-size


VARIANTS = [Variant("srtp", True), Variant("plain", False), Variant("srtp+turn", True, turn=True),
            Variant("srtp uvloop", True, uvloop=True)]
# On request only: asyncio's own receive size (what aioice's endpoints use), see --recv-size.
EXTRA_VARIANTS = [Variant("srtp 256K recv", True, recv_size=ASYNCIO_RECV_SIZE)]


def srtp_session(direction: str, index: int, outbound: bool) -> Session:
    """A session keyed the same in both processes (key and salt from the agent's index)."""
    key = hashlib.sha256(f"{direction} {index}".encode()).digest()[:30]
    return Session(Policy(key=key, srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
                          ssrc_type=Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND))


def payload_type(payload: int) -> tuple[int, int]:
    """(RTP payload type, timestamp step per packet): PCMU for 160 bytes, else Opus."""
    return (0, 160) if payload == 160 else (111, 960)


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests, all CPUs summed (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


# --- the agents (measured) ---------------------------------------------------------


class Agent(asyncio.DatagramProtocol):
    """One agent's media: a connected UDP socket, an SRTP session per direction."""

    def __init__(self, index: int, variant: Variant) -> None:
        self.tx = srtp_session("up", index, True) if variant.srtp else None
        self.rx = srtp_session("down", index, False) if variant.srtp else None
        self.turn = variant.turn
        self.ssrc = 0x10000000 + index
        self.seq = index * 7919 & 0xFFFF
        self.timestamp = index * 104729
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0
        self.last_seq = -1

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        if self.turn:
            if data[0] & 0xC0 != 0x40:
                return
            data = data[4:4 + ((data[2] << 8) | data[3])]
        if self.rx is not None:
            data = self.rx.unprotect(data)
        self.last_seq = (data[2] << 8) | data[3]
        self.received += 1


class Agents:
    """N agents and the one timer that sends a packet for each of them every 20 ms."""

    def __init__(self, agents: list[Agent], payload: int) -> None:
        self.agents = agents
        self.payload = bytes(payload)
        self.pt, self.step = payload_type(payload)
        self.sent = 0
        self.lateness: list[float] | None = None  # filled during the measuring window
        self.running = False
        self.due = 0.0
        self.loop = asyncio.get_running_loop()

    def start(self) -> None:
        self.running = True
        self.due = self.loop.time() + PTIME
        self.loop.call_at(self.due, self.tick)

    def tick(self) -> None:
        if not self.running:
            return
        if self.lateness is not None:
            self.lateness.append(self.loop.time() - self.due)
        header, payload, pt, step = RTP_HEADER.pack, self.payload, self.pt, self.step
        for a in self.agents:
            a.seq = (a.seq + 1) & 0xFFFF
            a.timestamp = (a.timestamp + step) & 0xFFFFFFFF
            packet = header(0x80, pt, a.seq, a.timestamp, a.ssrc) + payload
            if a.tx is not None:
                packet = a.tx.protect(packet)
            if a.turn:
                packet = CHANNEL_HEADER.pack(CHANNEL, len(packet)) + packet
            a.transport.sendto(packet)
        self.sent += len(self.agents)
        self.due += PTIME
        self.loop.call_at(self.due, self.tick)

    def received(self) -> int:
        return sum(a.received for a in self.agents)


@dataclass
class Result:
    agents: int
    variant: str
    seconds: float
    cpu_seconds: float
    cores: float
    cpu_per_agent_second: float
    cpu_us_per_packet: float
    received_fraction: float
    sent_fraction: float
    far_end_got_fraction: float
    lag_p99_ms: float
    far_end_cores: float
    steal_percent: float | None
    load_average: float
    ratio_to_srtp: float | None = None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_agents(n: int, variant: Variant, payload: int, warmup: float, seconds: float,
                     recv_size: int) -> Result:
    load_average = os.getloadavg()[0]
    far = subprocess.Popen([sys.executable, __file__, "--far-end"], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        far_port = json.loads(far.stdout.readline())["port"]
        loop = asyncio.get_running_loop()
        agents = []
        for i in range(n):
            _, agent = await loop.create_datagram_endpoint(
                lambda i=i: Agent(i, variant), local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", far_port))
            agents.append(agent)
            if variant.recv_size or recv_size:
                agent.transport.max_size = variant.recv_size or recv_size
        ports = [a.transport.get_extra_info("sockname")[1] for a in agents]
        far.stdin.write(json.dumps({"ports": ports, "payload": payload, "srtp": variant.srtp,
                                    "turn": variant.turn}) + "\n")
        sender = Agents(agents, payload)
        sender.start()
        await asyncio.sleep(warmup)

        gc.collect()
        far.stdin.write("mark\n")
        steal0, cpu0, wall0 = steal_seconds(), time.process_time(), time.perf_counter()
        received0, sent0 = sender.received(), sender.sent
        sender.lateness = []
        await asyncio.sleep(seconds)
        cpu1, wall1 = time.process_time(), time.perf_counter()
        received1, sent1 = sender.received(), sender.sent
        far.stdin.write("mark\n")
        steal1 = steal_seconds()
        lateness, sender.lateness = sender.lateness, None

        sender.running = False
        await asyncio.sleep(0.1)
        far.stdin.write("stop\n")
        mark0, mark1 = json.loads(far.stdout.readline()), json.loads(far.stdout.readline())
        far.wait(timeout=10)
        for a in agents:
            a.transport.close()
    finally:
        if far.poll() is None:
            far.kill()
            far.wait()

    wall, cpu = wall1 - wall0, cpu1 - cpu0
    nominal = n * wall / PTIME
    sent, received = sent1 - sent0, received1 - received0
    return Result(
        agents=n, variant=variant.name, seconds=round(wall, 3), cpu_seconds=round(cpu, 4),
        cores=cpu / wall, cpu_per_agent_second=cpu / (n * wall),
        cpu_us_per_packet=1e6 * cpu / max(1, sent + received),
        received_fraction=received / nominal, sent_fraction=sent / nominal,
        far_end_got_fraction=(mark1["received"] - mark0["received"]) / max(1, sent),
        lag_p99_ms=1000 * percentile(lateness, 0.99),
        far_end_cores=(mark1["cpu"] - mark0["cpu"]) / max(1e-9, mark1["wall"] - mark0["wall"]),
        steal_percent=None if steal0 is None or steal1 is None
        else 100 * (steal1 - steal0) / (wall * (os.cpu_count() or 1)),
        load_average=load_average)


def agent_process(spec: dict) -> Result:
    """One row, in this (fresh) process: the agents' side, measured."""
    variant = Variant(**spec["variant"])
    coro = run_agents(spec["n"], variant, spec["payload"], spec["warmup"], spec["seconds"], spec["recv_size"])
    if variant.uvloop:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


def run_variant(n: int, variant: Variant, args: argparse.Namespace) -> Result:
    """Each row in a process of its own, so no row inherits another's heap, allocator or GC state."""
    spec = {"n": n, "variant": asdict(variant), "payload": args.payload, "warmup": args.warmup,
            "seconds": args.seconds, "recv_size": args.recv_size}
    proc = subprocess.run([sys.executable, __file__, "--agent-process", json.dumps(spec)],
                          stdout=subprocess.PIPE, text=True, check=True)
    return Result(**json.loads(proc.stdout.splitlines()[-1]))


# --- the far end (another process, not counted) --------------------------------------


class Lines:
    """Lines from a pipe read with ``os.read``, so nothing hides in a file object's buffer."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, b""

    def available(self) -> list[str]:
        chunk = os.read(self.fd, 4096)
        if not chunk:
            return ["stop"]
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return [line.decode() for line in lines]

    def one(self) -> str:
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 4096)
            if not chunk:
                raise SystemExit(0)
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


def far_end() -> None:
    """Send each agent 50 packets/s from one socket, count what the agents send.

    Prints its port, reads the agents' ports and the variant, then answers each
    ``mark`` line with its counters and CPU; ``stop`` (or end of input) ends it.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    lines = Lines(sys.stdin.fileno())
    config = json.loads(lines.one())
    addrs = [("127.0.0.1", port) for port in config["ports"]]
    sessions = [srtp_session("down", i, True) if config["srtp"] else None for i in range(len(addrs))]
    turn = config["turn"]
    payload = bytes(config["payload"])
    pt, step = payload_type(config["payload"])
    state = {"received": 0, "sent": 0}
    marks: list[dict] = []
    seqs = [0] * len(addrs)

    loop = asyncio.new_event_loop()
    done = loop.create_future()

    def on_readable() -> None:
        count = 0
        try:
            while True:
                sock.recv(2048)
                count += 1
        except BlockingIOError:
            pass
        state["received"] += count

    def on_command() -> None:
        for line in lines.available():
            if line == "mark":
                marks.append({"received": state["received"], "sent": state["sent"],
                              "cpu": time.process_time(), "wall": time.perf_counter()})
            elif line == "stop" and not done.done():
                done.set_result(None)

    due = loop.time()

    def tick() -> None:
        nonlocal due
        header, sendto = RTP_HEADER.pack, sock.sendto
        for i, addr in enumerate(addrs):
            seq = seqs[i] = (seqs[i] + 1) & 0xFFFF
            packet = header(0x80, pt, seq, (seq * step) & 0xFFFFFFFF, 0x20000000 + i) + payload
            if sessions[i] is not None:
                packet = sessions[i].protect(packet)
            if turn:
                packet = CHANNEL_HEADER.pack(CHANNEL, len(packet)) + packet
            try:
                sendto(packet, addr)
            except BlockingIOError:
                continue
            state["sent"] += 1
        due += PTIME
        loop.call_at(due, tick)

    loop.add_reader(sock.fileno(), on_readable)
    loop.add_reader(sys.stdin.fileno(), on_command)
    loop.call_soon(tick)
    loop.run_until_complete(done)
    for mark in marks:
        print(json.dumps(mark), flush=True)
    loop.close()


# --- the report ----------------------------------------------------------------------

COLUMNS = [  # (header, field, format)
    ("agents", "agents", "{}"), ("variant", "variant", "{}"), ("cores", "cores", "{:.3f}"),
    ("CPU-s/agent-s", "cpu_per_agent_second", "{:.5f}"), ("vs srtp", "ratio_to_srtp", "{:.2f}"),
    ("CPU µs/pkt", "cpu_us_per_packet", "{:.1f}"), ("received %", "received_fraction", "{:.1%}"),
    ("sent %", "sent_fraction", "{:.1%}"), ("far end got %", "far_end_got_fraction", "{:.1%}"),
    ("lag p99 ms", "lag_p99_ms", "{:.1f}"), ("far-end cores", "far_end_cores", "{:.2f}"),
    ("steal %", "steal_percent", "{:.1f}"), ("load", "load_average", "{:.2f}"),
]


def table(results: list[Result]) -> str:
    rows = [[h for h, _, _ in COLUMNS]]
    for r in results:
        values = asdict(r)
        rows.append(["-" if values[f] is None else fmt.format(values[f]) for _, f, fmt in COLUMNS])
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def void(r: Result) -> bool:
    """Less than 99 % of the nominal 50 packets/s arrived (one packet per agent of slack at the edges)."""
    return r.received_fraction < 0.99 - PTIME / r.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The CPU floor of one agent's media (RTP every 20 ms each way, SRTP) in pure Python "
                    "on asyncio, none of the WebRTC stack; the far end runs in another process, not counted.",
        epilog="Variants per N: srtp, plain (no SRTP), srtp+turn (TURN ChannelData framing), "
               "srtp uvloop (if uvloop is installed).  A row whose received % is not ~100 is void.")
    parser.add_argument("--agents", default="75,150", help="comma-separated agent counts (default 75,150)")
    parser.add_argument("--payload", type=int, default=80,
                        help="RTP payload bytes: 80 is Opus at ~32 kbit/s (default), 160 is PCMU")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring window per row (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before the window (default 2)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated, of: " + ", ".join(v.name for v in VARIANTS + EXTRA_VARIANTS)
                        + " (default: all but the last)")
    parser.add_argument("--recv-size", type=int, default=2048,
                        help="bytes asked of each recvfrom() (default 2048; 0 keeps asyncio's 262144, "
                             "which glibc serves with an mmap, mremap and munmap per datagram until "
                             "its dynamic mmap threshold has been raised; see the 256K variant)")
    parser.add_argument("--no-turn", action="store_true", help="skip the srtp+turn variant")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="directory for floor-<time>.json (default bench/out)")
    parser.add_argument("--far-end", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--agent-process", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.far_end:
        far_end()
        return 0
    if args.agent_process:
        print(json.dumps(asdict(agent_process(json.loads(args.agent_process)))))
        return 0

    counts = [int(n) for n in args.agents.split(",") if n.strip()]
    variants = VARIANTS
    if args.variants:
        wanted = {name.strip() for name in args.variants.split(",")}
        unknown = wanted - {v.name for v in VARIANTS + EXTRA_VARIANTS}
        if unknown:
            parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
        variants = [v for v in VARIANTS + EXTRA_VARIANTS if v.name in wanted]
    if args.no_turn:
        variants = [v for v in variants if not v.turn]
    if uvloop is None and any(v.uvloop for v in variants):
        print("uvloop is not installed: the srtp uvloop variant is skipped")
        variants = [v for v in variants if not v.uvloop]

    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, payload {args.payload} B, "
          f"window {args.seconds:g} s after {args.warmup:g} s, recvfrom {args.recv_size or ASYNCIO_RECV_SIZE} B, "
          f"load average {os.getloadavg()[0]:.2f}")
    results: list[Result] = []
    for n in counts:
        row = {}
        for variant in variants:
            row[variant.name] = r = run_variant(n, variant, args)
            results.append(r)
            print(f"  {n} agents, {variant.name}: {r.cpu_per_agent_second:.5f} CPU-s/agent-s, "
                  f"received {r.received_fraction:.1%}", flush=True)
        if "srtp" in row:
            for r in row.values():
                r.ratio_to_srtp = r.cpu_per_agent_second / row["srtp"].cpu_per_agent_second
    print()
    print(table(results))
    for r in results:
        if void(r):
            print(f"VOID: {r.agents} agents {r.variant}: received {r.received_fraction:.1%} of 50 packets/s")
    for r in results:
        if r.variant not in ("srtp", "srtp+turn") or void(r):
            continue
        f = r.cpu_per_agent_second
        print(f"{r.agents} agents, {r.variant} floor {f:.5f}: the load runner's agents "
              f"({LOAD_RUNNER[0]}-{LOAD_RUNNER[1]}) are {LOAD_RUNNER[0] / f:.1f}-{LOAD_RUNNER[1] / f:.1f}x it, "
              f"Chromium ({CHROMIUM[0]}-{CHROMIUM[1]}) {CHROMIUM[0] / f:.0f}-{CHROMIUM[1] / f:.0f}x; "
              f"Chromium / 40 = {CHROMIUM[0] / 40:.4f}-{CHROMIUM[1] / 40:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"floor-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({
        "meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": os.cpu_count(),
                 "python": sys.version.split()[0], "payload": args.payload, "seconds": args.seconds,
                 "warmup": args.warmup, "recv_size": args.recv_size, "loadavg": list(os.getloadavg()), "uvloop": uvloop is not None},
        "results": [asdict(r) for r in results]}, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
