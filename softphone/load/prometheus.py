"""``--prometheus [HOST:]PORT``: the run's live counters for Prometheus (and so Grafana).

A plain-text exposition (format 0.0.4) at ``/metrics``, served by the parent process
from the same once-a-second figures the progress shows, with aiohttp (already a
dependency; ``prometheus_client`` would add a package for a dozen lines of text).
Per-sample latency histograms stay in the run's results and report: workers send
counts, not samples, while the run goes.

Metrics (all prefixed ``softphone_load_``): ``agents_target``, ``agents_active``,
``agents_registered``, ``agents_in_call``, ``calls_total``, ``failures_total{cause}``,
``cpu_cores``, ``pss_bytes``, ``loop_lag_seconds`` (worst worker),
``worker_cpu_ratio{worker}``, ``worker_agents{worker}``, ``worker_loop_lag_seconds{worker}``,
``worker_pss_bytes{worker}``, ``elapsed_seconds``, ``stopping``.
"""

from __future__ import annotations

from aiohttp import web

from softphone.errors import ConfigurationError
from softphone.load.progress import RunStatus
from softphone.log import get_logger

log = get_logger(__name__)

PREFIX = "softphone_load_"


def parse_listen(text: str) -> tuple[str, int]:
    """``"9464"`` or ``"0.0.0.0:9464"`` -> (host, port); the host defaults to loopback."""
    host, _, port = str(text).rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise ConfigurationError(f"--prometheus: expected PORT or HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise ConfigurationError(f"--prometheus: port {number} is out of range")
    return (host.strip("[]") or "127.0.0.1"), number


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(status: RunStatus | None, *, cpu_cores: float = 0.0, pss_bytes: float = 0.0) -> str:
    """The exposition text for one moment of the run."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}{name} {help_}")
        lines.append(f"# TYPE {PREFIX}{name} {kind}")
        for labels, value in samples:
            lines.append(f"{PREFIX}{name}{labels} {value:.6g}")

    s = status or RunStatus(elapsed=0.0, duration=0.0, target_agents=0)
    metric("agents_target", "gauge", "Agent sessions the run starts.", [("", s.target_agents)])
    metric("agents_active", "gauge", "Agent sessions running now.", [("", s.active)])
    metric("agents_registered", "gauge", "Agents registered with the SIP registrar.", [("", s.registered)])
    metric("agents_in_call", "gauge", "Agents with an answered call.", [("", s.in_call)])
    metric("calls_total", "counter", "Calls started (bridge, outbound, inbound).", [("", s.calls)])
    metric("failures_total", "counter", "Failures by cause (SIP code, HTTP status, ICE, timeout, audio).",
           [(f'{{cause="{_label(cause)}"}}', n) for cause, n in sorted(s.failures.items())])
    metric("cpu_cores", "gauge", "CPU of all workers, in cores.", [("", cpu_cores)])
    metric("pss_bytes", "gauge", "Proportional set size of all workers.", [("", pss_bytes)])
    metric("loop_lag_seconds", "gauge", "Worst event-loop lag of the workers in the last second.",
           [("", max((w.loop_lag_ms for w in s.workers), default=0.0) / 1000.0)])
    metric("worker_cpu_ratio", "gauge", "CPU of one worker (1 = one core).",
           [(f'{{worker="{w.worker}"}}', w.cpu_percent / 100.0) for w in s.workers])
    metric("worker_agents", "gauge", "Agent sessions in one worker.",
           [(f'{{worker="{w.worker}"}}', w.agents) for w in s.workers])
    metric("worker_loop_lag_seconds", "gauge", "Event-loop lag of one worker.",
           [(f'{{worker="{w.worker}"}}', w.loop_lag_ms / 1000.0) for w in s.workers])
    metric("worker_pss_bytes", "gauge", "Proportional set size of one worker.",
           [(f'{{worker="{w.worker}"}}', w.memory_mb * 1024 ** 2) for w in s.workers])
    metric("elapsed_seconds", "gauge", "Seconds since the run started.", [("", max(0.0, s.elapsed))])
    metric("stopping", "gauge", "1 while the agents log out after a stop.", [("", 1.0 if s.stopping else 0.0)])
    return "\n".join(lines) + "\n"


class PrometheusExporter:
    """Serves :func:`render` of the latest :meth:`update` at ``http://HOST:PORT/metrics``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9464) -> None:
        self.host, self.port = host, port
        self._status: RunStatus | None = None
        self._cpu = 0.0
        self._pss = 0.0
        self._runner: web.AppRunner | None = None

    def update(self, status: RunStatus, *, cpu_cores: float, pss_bytes: float) -> None:
        self._status, self._cpu, self._pss = status, cpu_cores, pss_bytes

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=render(self._status, cpu_cores=self._cpu, pss_bytes=self._pss),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigurationError(f"--prometheus {self.host}:{self.port}: {exc.strerror or exc}") from exc
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        url = f"http://{self.host}:{self.port}/metrics"
        log.info("prometheus metrics at %s", url)
        return url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
