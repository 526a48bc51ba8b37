"""Media benchmark: stock aiortc vs the lean path, in one run.

Each call is two aiortc peer connections in one process talking over 127.0.0.1
host candidates, audio flowing both ways.

* stock: an audio-frame tone track encoded by aiortc (executor hop per frame,
  audio-level loop), aiortc's receiver with its decoder thread, and a task
  reading the decoded frames, as an application would.  Runs in a process of
  its own in which nothing of the fast path is installed (no fast clock, no
  receive/send hooks, no class swaps), so it is aiortc as pip ships it;
* off: what ``MediaConfig(fast_path="off")`` gives a load test: pre-encoded tracks
  sent by aiortc's own loop, aiortc's decoding receivers read by a task; also in
  a process of its own;
* lean: the fast path on: :class:`~softphone.media.pre_encoded_track.PreEncodedAudioTrack`
  sent by the lean sender, :class:`~softphone.media.counting_receiver.CountingRtpReceiver`
  (no decoding, RTCP kept), SRTP without coroutines.

* turn (``--turn-n``): what an agent runs, lean, through a TURN server, relay
  only: two of the softphone's own ``WebRtcDescriptionHandler`` per call (RFC 4733
  negotiated, so the DTMF tap and hook are in the path), a private coturn unless
  ``--turn-url``; the coturn's own CPU is reported too.

Scenarios run one after another: stock and off at ``--stock-n`` calls (each in a
subprocess), lean at the same N (the same-load ratios lean/stock and on/off), then
lean at ``--n``, then turn at ``--turn-n``.  For each: CPU seconds per
call-second and per peer-connection-second (``getrusage``, all threads), resident
memory per call, packets received/expected in the measuring window, event-loop
lag percentiles (a sampler task), hypervisor steal and the load average, since
the machine may be shared.  Prints a table and writes ``bench/out/media-<time>.json`` and ``.html``.
No asserts: this measures.

    python bench/media.py --stock-n 8 --n 75,150 --seconds 10 --codec PCMU
    python bench/media.py --stock-n 0 --n 0 --turn-n 40,75
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import gc
import json
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import av
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from softphone.media.config import FastPathOptions
from softphone.media.encoded_audio import Tone, shared_cache
from softphone.media.pre_encoded_track import PreEncodedAudioTrack
from softphone.media.testing import LoopbackCall, loopback_host_candidates, open_loopback_call

OUT_DIR = Path(__file__).resolve().parent / "out"
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


# --- the stock path's pieces ----------------------------------------------------------


class ToneFrameTrack(AudioStreamTrack):
    """A 440 Hz tone as raw 20 ms frames, so aiortc encodes every frame itself (stock)."""

    RATE = 8000
    SAMPLES = 160

    def __init__(self, pcm: bytes) -> None:
        super().__init__()
        self._pcm = pcm
        self._frames = len(pcm) // (2 * self.SAMPLES)
        self._n = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        else:
            wait = self._start + self._n * 0.02 - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        i = self._n % self._frames
        frame = av.AudioFrame(format="s16", layout="mono", samples=self.SAMPLES)
        frame.planes[0].update(self._pcm[i * 320:(i + 1) * 320])
        frame.sample_rate = self.RATE
        frame.pts = self._n * self.SAMPLES
        frame.time_base = fractions.Fraction(1, self.RATE)
        self._n += 1
        return frame


def tone_pcm(seconds: float = 1.0) -> bytes:
    tone = Tone(440, seconds, sample_rate=ToneFrameTrack.RATE)
    return b"".join(bytes(f.planes[0])[: 2 * f.samples] for f in tone.frames())


async def consume(track, counter: list[int]) -> None:
    """What an application does with a stock remote track: read every decoded frame."""
    try:
        while True:
            await track.recv()
            counter[0] += 1
    except (MediaStreamError, asyncio.CancelledError):
        pass


# --- measuring ---------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to others, all CPUs summed (``/proc/stat``), or None.

    A virtual machine's vCPU can be descheduled by its host: the loop then stalls
    however idle it was, and lag shows it.  Reported so a starved run can be told
    from a saturated one.
    """
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class LagSampler:
    """Event-loop lag: how late a 10 ms sleep wakes up, sampled continuously."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(self.interval)
            self.samples.append(max(0.0, loop.time() - t - self.interval))

    def start(self) -> None:
        self.samples.clear()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    def percentile(self, p: float) -> float:
        if not self.samples:
            return 0.0
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(p / 100 * len(s)))]


@dataclass
class Result:
    mode: str
    calls: int
    codec: str
    seconds: float
    connected: int = 0
    setup_seconds: float = 0.0
    cpu_seconds: float = 0.0
    cores_used: float = 0.0
    cpu_per_call_second: float = 0.0
    cpu_per_pc_second: float = 0.0
    rss_before_mib: float = 0.0
    rss_during_mib: float = 0.0
    rss_per_call_kib: float = 0.0
    packets_received: int = 0
    packets_expected: int = 0
    loss_percent: float = 0.0
    delivered_percent: float = 0.0
    cpu_us_per_packet: float = 0.0
    frames_decoded: int = 0
    lag_p50_ms: float = 0.0
    lag_p99_ms: float = 0.0
    lag_max_ms: float = 0.0
    steal_percent: float | None = None
    turn_cores: float | None = None  # the private coturn's CPU per wall second (turn mode)
    process: str = "main"  # "own": run in a subprocess of its own (stock, off)
    fast_path_installed: bool | None = None  # anything of the fast path present in that process
    loadavg_before: list[float] = field(default_factory=list)
    loadavg_after: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# --- through a TURN server, as agents run -----------------------------------------------


class HandlerLeg:
    """One side of a TURN call: the softphone's own description handler, as an agent uses it."""

    def __init__(self, handler) -> None:
        self.handler = handler

    def report(self):
        return self.handler.receiver.report()


class TurnCall:
    """Two :class:`WebRtcDescriptionHandler` peers, relay only, with RFC 4733 negotiated as agents do."""

    def __init__(self, a, b) -> None:
        self.caller, self.callee = HandlerLeg(a), HandlerLeg(b)

    @classmethod
    async def open(cls, config, tone: Tone, ptime_ms: int = 20) -> TurnCall:
        from media_support import negotiate, wait_connected  # tests/, on the path with the coturn launcher

        from softphone.media.description_handler import WebRtcDescriptionHandler

        a = WebRtcDescriptionHandler(config, source=PreEncodedAudioTrack(tone, ptime_ms=ptime_ms), decode=False)
        b = WebRtcDescriptionHandler(config, source=PreEncodedAudioTrack(tone, ptime_ms=ptime_ms), decode=False)
        try:
            await negotiate(a, b)
            await wait_connected(a, b, timeout=15.0)
        except BaseException:
            await asyncio.gather(a.close(), b.close(), return_exceptions=True)
            raise
        return cls(a, b)

    async def close(self) -> None:
        await asyncio.gather(self.caller.handler.close(), self.callee.handler.close())


class TurnServer:
    """The TURN server of the turn scenarios: a private coturn (tests/peers launcher) or a given one."""

    def __init__(self, args: argparse.Namespace, codec: str) -> None:
        self.args = args
        self.codec = codec
        self.coturn = None
        self._workdir = None

    def __enter__(self) -> TurnServer:
        sys.path.insert(0, str(TESTS_DIR))  # the coturn launcher and the offer/answer helpers
        if not self.args.turn_url:
            import tempfile

            from peers.coturn import Coturn

            self._workdir = tempfile.TemporaryDirectory(prefix="bench-coturn-")
            self.coturn = Coturn(Path(self._workdir.name))
            self.coturn.start()
            print(f"private coturn on {self.coturn.url} (pid {self.coturn.pid})")
        return self

    def __exit__(self, *exc) -> None:
        if self.coturn is not None:
            self.coturn.stop()
        if self._workdir is not None:
            self._workdir.cleanup()

    def config(self):
        from softphone.log import Secret
        from softphone.media.config import IceConfig, MediaConfig

        if self.coturn is not None:
            url, user, password = self.coturn.url, self.coturn.username, self.coturn.password
        else:
            url, user, password = self.args.turn_url, self.args.turn_user, self.args.turn_password
        ice = IceConfig(turn_urls=(url,), username=user, credential=Secret(password or ""), relay_only=True,
                        gathering_timeout=10.0)
        return MediaConfig(ice=ice, codecs=(self.codec,), fast_path="on", fast_path_options=options_of(self.args),
                           telephone_event=getattr(self.args, "rfc4733", True))

    def cpu_seconds(self) -> float | None:
        """The private coturn's CPU time so far (``/proc``), None for a server elsewhere."""
        if self.coturn is None or self.coturn.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.coturn.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None


async def stock_counts(call: LoopbackCall) -> tuple[int, int]:
    received = expected = 0
    for leg in (call.caller, call.callee):
        stats = await leg.receiver.getStats()
        for s in stats.values():
            if s.type == "inbound-rtp":
                received += s.packetsReceived
                expected += s.packetsReceived + max(0, s.packetsLost)
    return received, expected


def lean_counts(call: LoopbackCall) -> tuple[int, int]:
    a, b = call.caller.report(), call.callee.report()
    return a.received + b.received, a.expected + b.expected


async def run_scenario(mode: str, n: int, codec: str, seconds: float, warmup: float,
                       setup_batch: int, turn: TurnServer | None = None,
                       options: FastPathOptions | None = None, ptime_ms: int = 20) -> Result:
    result = Result(mode=mode, calls=n, codec=codec, seconds=seconds)
    gc.collect()
    result.loadavg_before = list(os.getloadavg())
    result.rss_before_mib = rss_bytes() / 2**20
    rss_before = rss_bytes()
    pcm = tone_pcm()
    turn_config = turn.config() if turn is not None else None
    calls: list[LoopbackCall] = []
    consumers: list[asyncio.Task] = []
    decoded = [0]

    async def open_one() -> LoopbackCall:
        if mode in ("stock", "off"):
            if mode == "stock":
                tracks = ToneFrameTrack(pcm), ToneFrameTrack(pcm)
            else:
                tone = Tone(440, 2.0)
                tracks = PreEncodedAudioTrack(tone), PreEncodedAudioTrack(tone)
            call = await open_loopback_call(codec, *tracks, fast_path=False)
            for leg in (call.caller, call.callee):
                consumers.append(asyncio.ensure_future(consume(leg.receiver.track, decoded)))
        elif mode == "turn":
            call = await TurnCall.open(turn_config, Tone(440, 2.0), ptime_ms)
        else:
            tone = Tone(440, 2.0)
            call = await open_loopback_call(codec, PreEncodedAudioTrack(tone, ptime_ms=ptime_ms),
                                            PreEncodedAudioTrack(tone, ptime_ms=ptime_ms),
                                            options=options)
        return call

    t0 = time.perf_counter()
    for start in range(0, n, setup_batch):
        batch = await asyncio.gather(*(open_one() for _ in range(min(setup_batch, n - start))),
                                     return_exceptions=True)
        for item in batch:
            if isinstance(item, BaseException):
                result.errors.append(f"setup: {item!r}")
            else:
                calls.append(item)
        print(f"\r  {mode}: {len(calls)}/{n} calls up", end="", flush=True)
    print()
    result.setup_seconds = time.perf_counter() - t0
    result.connected = len(calls)
    if mode in ("stock", "off"):
        result.fast_path_installed = fast_path_present(calls)

    await asyncio.sleep(warmup)
    counts = stock_counts if mode in ("stock", "off") else None

    async def snapshot() -> tuple[int, int]:
        r = e = 0
        for call in calls:
            got = await counts(call) if counts else lean_counts(call)
            r += got[0]
            e += got[1]
        return r, e

    sampler = LagSampler()
    rec0, exp0 = await snapshot()
    dec0 = decoded[0]
    cpu0 = cpu_seconds()
    steal0 = steal_seconds()
    turn0 = turn.cpu_seconds() if turn is not None else None
    t_start = time.perf_counter()
    sampler.start()
    await asyncio.sleep(seconds)
    await sampler.stop()
    elapsed = time.perf_counter() - t_start
    cpu1 = cpu_seconds()
    steal1 = steal_seconds()
    turn1 = turn.cpu_seconds() if turn is not None else None
    rec1, exp1 = await snapshot()
    rss_during = rss_bytes()

    result.cpu_seconds = cpu1 - cpu0
    # How much CPU the process got: one event loop caps near 1; far less means the
    # machine was busy with other work and the scenario was starved, not saturated.
    result.cores_used = result.cpu_seconds / elapsed
    call_seconds = max(1, len(calls)) * elapsed
    result.cpu_per_call_second = result.cpu_seconds / call_seconds
    result.cpu_per_pc_second = result.cpu_per_call_second / 2
    result.rss_during_mib = rss_during / 2**20
    result.rss_per_call_kib = (rss_during - rss_before) / max(1, len(calls)) / 1024
    result.packets_received = rec1 - rec0
    result.packets_expected = exp1 - exp0
    if result.packets_expected:
        result.loss_percent = 100.0 * max(0, result.packets_expected - result.packets_received) / result.packets_expected
    # Each call sends 50 packets/s each way: what share of that made it through at all
    # (an overloaded loop sends late and less, which sequence numbers cannot show as loss).
    nominal = len(calls) * 2 * elapsed / (ptime_ms / 1000 if mode in ("lean", "turn") else 0.02)
    result.delivered_percent = 100.0 * result.packets_received / nominal if nominal else 0.0
    # Every packet counted here was also sent by this process: cost of one send + one receive.
    result.cpu_us_per_packet = 1e6 * result.cpu_seconds / max(1, result.packets_received)
    result.frames_decoded = decoded[0] - dec0
    result.lag_p50_ms = sampler.percentile(50) * 1000
    result.lag_p99_ms = sampler.percentile(99) * 1000
    result.lag_max_ms = max(sampler.samples, default=0.0) * 1000
    if turn0 is not None and turn1 is not None:
        result.turn_cores = (turn1 - turn0) / elapsed
    if steal0 is not None and steal1 is not None:
        result.steal_percent = 100.0 * (steal1 - steal0) / (elapsed * (os.cpu_count() or 1))
    result.loadavg_after = list(os.getloadavg())

    for task in consumers:
        task.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    for start in range(0, len(calls), 50):
        await asyncio.gather(*(c.close() for c in calls[start:start + 50]), return_exceptions=True)
    calls.clear()
    gc.collect()
    return result


# --- output ------------------------------------------------------------------------------


COLUMNS = [
    ("mode", "mode", "{}"), ("calls", "calls", "{}"), ("pcs", None, "{}"), ("cores", "cores_used", "{:.2f}"),
    ("CPU-s/call-s", "cpu_per_call_second", "{:.4f}"), ("CPU-s/pc-s", "cpu_per_pc_second", "{:.4f}"),
    ("RSS/call KiB", "rss_per_call_kib", "{:.0f}"), ("received", "packets_received", "{}"),
    ("expected", "packets_expected", "{}"), ("loss %", "loss_percent", "{:.3f}"),
    ("delivered %", "delivered_percent", "{:.1f}"), ("CPU µs/pkt", "cpu_us_per_packet", "{:.0f}"),
    ("lag p50 ms", "lag_p50_ms", "{:.1f}"), ("lag p99 ms", "lag_p99_ms", "{:.1f}"),
    ("steal %", "steal_percent", "{:.1f}"), ("coturn cores", "turn_cores", "{:.2f}"), ("load", None, "{}"),
]


def row(r: Result) -> list[str]:
    out = []
    for _title, attr, fmt in COLUMNS:
        if _title == "pcs":
            out.append(str(2 * r.connected))
        elif _title == "load":
            out.append(f"{r.loadavg_before[0]:.1f}")
        elif getattr(r, attr) is None:
            out.append("-")
        else:
            out.append(fmt.format(getattr(r, attr)))
    return out


def print_table(results: list[Result], ratios: dict) -> None:
    rows = [[c[0] for c in COLUMNS]] + [row(r) for r in results]
    widths = [max(len(x[i]) for x in rows) for i in range(len(COLUMNS))]
    for i, cells in enumerate(rows):
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")
    for r in results:
        for e in r.errors[:3]:
            print(f"  {r.mode}@{r.calls}: {e}")


def svg_bars(results: list[Result], attr: str, title: str, unit: str) -> str:
    width, bar_h, gap, left = 560, 22, 8, 150
    values = [getattr(r, attr) for r in results]
    top = max(values) or 1.0
    height = 30 + len(results) * (bar_h + gap)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="4" y="16" font-size="13" font-weight="bold">{title}</text>']
    for i, (r, v) in enumerate(zip(results, values, strict=True)):
        y = 26 + i * (bar_h + gap)
        w = (width - left - 90) * v / top
        color = {"stock": "#c0504d", "off": "#f79646"}.get(r.mode, "#4f81bd")
        parts.append(f'<text x="4" y="{y + 15}" font-size="12">{r.mode} ×{r.calls}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        parts.append(f'<text x="{left + w + 4:.1f}" y="{y + 15}" font-size="12">{v:.4g} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def write_reports(results: list[Result], ratios: dict, meta: dict, out_dir: Path = OUT_DIR) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    data = {"meta": meta, "ratios": ratios, "results": [asdict(r) for r in results]}
    json_path = out_dir / f"media-{stamp}.json"
    json_path.write_text(json.dumps(data, indent=2))
    head = "".join(f"<th>{c[0]}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row(r)) + "</tr>" for r in results)
    ratio_items = "".join(f"<li>{k}: {v:.3f}</li>" if isinstance(v, float) else f"<li>{k}: {v}</li>"
                          for k, v in ratios.items())
    html = f"""<!doctype html><html><head><meta charset="utf-8"><title>softphone media benchmark {stamp}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Media benchmark: stock aiortc vs lean path</h1>
<p>{meta['when']} · {meta['cpus']} CPUs · Python {meta['python']} · aiortc {meta['aiortc']} ·
codec {meta['codec']} · {meta['seconds']} s measured per scenario · uvloop {meta['uvloop']} ·
load average at start {meta['loadavg'][0]:.2f} (the machine may be shared: compare ratios, not absolutes)</p>
<table><tr>{head}</tr>{body}</table><ul>{ratio_items}</ul>
{svg_bars(results, "cpu_per_pc_second", "CPU seconds per peer-connection-second", "CPU-s")}<br>
{svg_bars(results, "lag_p99_ms", "Event-loop lag p99", "ms")}<br>
{svg_bars(results, "loss_percent", "Packet loss", "%")}<br>
{svg_bars(results, "rss_per_call_kib", "Resident memory per call", "KiB")}
</body></html>"""
    html_path = out_dir / f"media-{stamp}.html"
    html_path.write_text(html)
    return json_path, html_path


# --- main --------------------------------------------------------------------------------


TARGET = "loss<0.5%, lag p99<20 ms, >99% delivered"


def meets_target(r: Result) -> bool:
    """Issue 4's target for the lean path: 150+ peer connections, loss < 0.5%, lag p99 < 20 ms, all delivered."""
    return 2 * r.connected >= 150 and r.loss_percent < 0.5 and r.lag_p99_ms < 20 and r.delivered_percent > 99.0


def miss_reason(r: Result) -> str | None:
    """Why a run probably missed: the loop ran out of CPU, or the host took the CPU away."""
    if r.cores_used >= 0.95:
        return f"saturated: {r.cores_used:.2f} cores"
    if r.steal_percent is not None and r.steal_percent >= 1.0:
        return f"hypervisor steal {r.steal_percent:.1f}%"
    cpus = os.cpu_count() or 1
    if r.loadavg_before and r.loadavg_before[0] - r.cores_used >= cpus / 2:
        # Other processes on this machine wanted half the CPUs or more: the loop waited for a core.
        return f"machine busy: load {r.loadavg_before[0]:.1f} on {cpus} CPUs"
    return None


TURN_TARGET = "cores<0.85, 0% loss, >99.5% delivered, lag p99<20 ms"


def meets_turn_target(r: Result) -> bool:
    """Issue 11's target for relayed agent legs: 200+ peer connections per process through TURN."""
    return (2 * r.connected >= 200 and r.cores_used < 0.85 and r.loss_percent == 0
            and r.delivered_percent > 99.5 and r.lag_p99_ms < 20)


def target_verdicts(results: list[Result]) -> dict[str, str]:
    """One line per lean N of 150+ and turn N of 200+ peer connections: met or not, in how many runs, why not."""
    verdicts = {}
    for mode, least, target, meets in (("lean", 150, TARGET, meets_target), ("turn", 200, TURN_TARGET, meets_turn_target)):
        for n in sorted({r.calls for r in results if r.mode == mode and 2 * r.calls >= least}):
            runs = [r for r in results if r.mode == mode and r.calls == n]
            met = [meets(r) for r in runs]
            verdict = ("met" if all(met) else "NOT met") if len(runs) == 1 else f"met in {sum(met)} of {len(runs)} runs"
            reasons = [miss_reason(r) for r, ok in zip(runs, met, strict=True) if not ok]
            if any(reasons):
                verdict += f" ({'; '.join(x or 'no steal, not saturated' for x in reasons)})"
            if len(runs) > 1:
                verdict += f"; lag p99 ms: {', '.join(f'{r.lag_p99_ms:.1f}' for r in runs)}"
            verdicts[f"{mode} x{n} ({2 * n} pcs): {target}"] = verdict
    return verdicts


def options_of(args: argparse.Namespace) -> FastPathOptions:
    """The fast path's parts as the A/B flags set them."""
    return FastPathOptions(lean_sender=getattr(args, "lean_sender", True),
                           light_parse=getattr(args, "light_parse", True), spread=getattr(args, "spread", True))


RESULT_PREFIX = "BENCH-RESULT "


def fast_path_present(calls: list[LoopbackCall]) -> bool:
    """Whether anything of the fast path is on these calls or in this process."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from softphone.media import aiortc_seam

    legs = [leg for call in calls for leg in (call.caller, call.callee)]
    return aiortc_seam.fast_clock_installed() or any(
        type(leg.receiver) is not RTCRtpReceiver or "_run_rtp" in leg.transceiver.sender.__dict__
        or aiortc_seam.fast_receive_of(leg.receiver.transport) is not None for leg in legs)


async def child_main(args: argparse.Namespace) -> None:
    """One stock-aiortc scenario in this (fresh) process; the result as one line on stdout."""
    with loopback_host_candidates():
        result = await run_scenario(args.child, args.child_n, args.codec, args.seconds, args.warmup, args.setup_batch)
    result.process = "own"
    print(RESULT_PREFIX + json.dumps(asdict(result)), flush=True)


async def run_in_own_process(mode: str, n: int, args: argparse.Namespace) -> Result:
    """Run a stock-aiortc scenario in a subprocess, so nothing of the fast path is installed there."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--child-n", str(n),
            "--codec", args.codec, "--seconds", str(args.seconds), "--warmup", str(args.warmup),
            "--setup-batch", str(args.setup_batch)]
    if args.uvloop:
        argv.append("--uvloop")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    result: Result | None = None
    assert proc.stdout is not None
    async for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if line.startswith(RESULT_PREFIX):
            result = Result(**json.loads(line[len(RESULT_PREFIX):]))
        else:
            print(line, end="", flush=True)
    code = await proc.wait()
    if result is None:
        result = Result(mode=mode, calls=n, codec=args.codec, seconds=args.seconds, process="own",
                        errors=[f"subprocess exited with {code} and no result"])
    return result


def same_load_ratios(results: list[Result]) -> dict:
    """lean vs stock aiortc, and fast path on vs off, at the same number of calls."""
    ratios: dict = {}
    lean = {r.calls: r for r in results if r.mode == "lean"}
    for base_mode, label in (("stock", "lean/stock"), ("off", "fast path on/off")):
        base = next((r for r in results if r.mode == base_mode), None)
        same = lean.get(base.calls) if base else None
        if not (base and same and base.cpu_per_call_second):
            continue
        ratios[f"{label} CPU per call-second (same N)"] = same.cpu_per_call_second / base.cpu_per_call_second
        ratios[f"{label} CPU per packet (same N)"] = same.cpu_us_per_packet / max(base.cpu_us_per_packet, 1e-9)
        if base.rss_per_call_kib > 0:
            ratios[f"{label} RSS per call (same N)"] = same.rss_per_call_kib / base.rss_per_call_kib
    return ratios


async def main(args: argparse.Namespace) -> None:
    import aiortc

    scenarios = []
    if args.stock_n > 0:
        scenarios.append(("stock", args.stock_n))
        if args.fast_path_off:
            scenarios.append(("off", args.stock_n))
        if args.same_load:
            scenarios.append(("lean", args.stock_n))
    for n in args.n:
        if n > 0 and ("lean", n) not in scenarios:
            scenarios.extend([("lean", n)] * args.repeat)
    for n in args.turn_n:
        if n > 0:
            scenarios.extend([("turn", n)] * args.repeat)
    options = options_of(args)
    meta = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "python": platform.python_version(),
        "aiortc": aiortc.__version__, "codec": args.codec, "seconds": args.seconds, "uvloop": args.uvloop,
        "lean_sender": options.lean_sender, "light_parse": options.light_parse,
        "spread": options.spread, "rfc4733": args.rfc4733, "ptime_ms": args.ptime, "repeat": args.repeat,
        "loadavg": list(os.getloadavg()), "scenarios": scenarios,
    }
    results: list[Result] = []
    with contextlib.ExitStack() as stack:
        turn = stack.enter_context(TurnServer(args, args.codec)) if any(m == "turn" for m, _ in scenarios) else None
        stack.enter_context(loopback_host_candidates())
        for mode, n in scenarios:
            where = " in a process of its own" if mode in ("stock", "off") else ""
            print(f"{mode} × {n} calls ({2 * n} peer connections), {args.codec}, {args.seconds:g} s{where} ...")
            if mode in ("stock", "off"):
                results.append(await run_in_own_process(mode, n, args))
            else:
                results.append(await run_scenario(mode, n, args.codec, args.seconds, args.warmup, args.setup_batch,
                                                  turn if mode == "turn" else None, options, args.ptime))
    ratios: dict = {"encoded cache bytes": shared_cache().memory_bytes}
    ratios.update(same_load_ratios(results))
    ratios.update(target_verdicts(results))
    print()
    print_table(results, ratios)
    json_path, html_path = write_reports(results, ratios, meta, args.out)
    print(f"\nwrote {json_path}\nwrote {html_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=lambda v: [int(x) for x in v.split(",") if x.strip()], default=[75, 150],
                   help="lean call counts for the big runs, comma-separated (default 75,150 = 150 and 300 pcs)")
    p.add_argument("--stock-n", type=int, default=8,
                   help="stock calls (default 8 = 16 pcs, about what stock carries cleanly; 0 skips)")
    p.add_argument("--no-same-load", dest="same_load", action="store_false",
                   help="skip lean at the stock N (the same-load ratios)")
    p.add_argument("--no-fast-path-off", dest="fast_path_off", action="store_false",
                   help="skip the fast_path='off' scenario (pre-encoded tracks on stock aiortc, own process)")
    p.add_argument("--child", choices=("stock", "off"), help=argparse.SUPPRESS)
    p.add_argument("--child-n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--seconds", type=float, default=10.0, help="measuring window per scenario")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds after setup before measuring")
    p.add_argument("--codec", default="PCMU", help="PCMU, PCMA, G722 or opus")
    p.add_argument("--setup-batch", type=int, default=10, help="calls set up concurrently")
    p.add_argument("--turn-n", type=lambda v: [int(x) for x in v.split(",") if x.strip()], default=[],
                   help="lean calls through a TURN server, relay only, with the agent's own description handler "
                        "(RFC 4733 negotiated), comma-separated; a private coturn is started unless --turn-url")
    p.add_argument("--turn-url", help="use this TURN server (turn:host:port) instead of a private coturn")
    p.add_argument("--turn-user", default="", help="TURN username for --turn-url")
    p.add_argument("--turn-password", default=os.environ.get("SOFTPHONE_TURN_PASSWORD", ""),
                   help="TURN password for --turn-url (or $SOFTPHONE_TURN_PASSWORD, kept out of ps)")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where the JSON and HTML reports go (default bench/out)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each --n scenario this many times (fresh calls each time) and say in how many the target held")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop (must be installed)")
    p.add_argument("--no-lean-sender", dest="lean_sender", action="store_false",
                   help="send pre-encoded tracks through aiortc's own RTP loop (A/B of softphone.media.lean_sender)")
    p.add_argument("--no-light-parse", dest="light_parse", action="store_false",
                   help="parse received RTP with aiortc's RtpPacket.parse (A/B of the fast path's light parse)")
    p.add_argument("--ptime", type=int, choices=(20, 40, 60), default=20,
                   help="packet duration of the lean and turn scenarios' pre-encoded tracks (G.711/G.722 only; "
                        "40/60 ms is a load lever that trades realism: browsers send 20 ms)")
    p.add_argument("--no-rfc4733", dest="rfc4733", action="store_false",
                   help="turn scenarios without telephone-event (no DTMF tap or hook per packet: A/B of their cost)")
    p.add_argument("--no-spread", dest="spread", action="store_false",
                   help="start every lean stream at once instead of in a slot of the send driver's choosing (A/B)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.ptime != 20 and args.codec.lower() not in ("pcmu", "pcma", "g722"):
        p.error("--ptime 40/60 needs a sample-based codec (PCMU, PCMA, G722)")
    return args


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.uvloop:
        import uvloop

        uvloop.install()
    asyncio.run(child_main(arguments) if arguments.child else main(arguments))
