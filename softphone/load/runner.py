"""``softphone load``: N agent sessions in K worker processes, each one asyncio loop.

The parent process owns the run: it reads the scenario and the credentials (a CSV
of launch parameters, a URL template with ``{n}``, or ``--lab``, which starts the
embedded lab in this process with N seeded agents and coturn when installed; the
``--lab-*`` options set its customers, bridge prompt and recordings), spawns
K workers (``multiprocessing`` with *spawn*, so no event loop or socket is inherited),
draws the live progress from the workers' once-a-second status messages, and at
the end merges the workers' :class:`~softphone.load.results.Results`, evaluates the
scenario's thresholds and writes JSON, CSV, JUnit XML and the HTML report.

Each worker starts its agents on the ramp (agent ``i`` at ``i / ramp`` seconds),
each the full Webphone flow (authorize, extension, register, login, bridge call,
audio), then the scenario's loop until the run's duration ends, then logout.  Media
is the lean path: received audio is not decoded unless the scenario has
``expect_audio`` steps; every call leg gets a live audio verdict
(:mod:`softphone.load.verdict`) from the undecoded payloads.

Ctrl-C: the first asks every worker to stop (each agent logs out and unregisters:
the Agent's own shutdown), the second aborts the workers; the report is written
either way from what arrived, marked interrupted.  A worker still silent
:data:`RESULTS_GRACE` seconds after its own stop grace is stuck: it prints every
thread's stack (faulthandler, SIGUSR1) and is terminated; the report is written from the others.  Exit status: 0, or
:data:`~softphone.load.results.EXIT_THRESHOLD_FAILED` when a threshold failed,
1 when the run could not start, 130 when aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import multiprocessing as mp
import os
import queue
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softphone.errors import ConfigurationError
from softphone.gc_freezer import GcFreezer
from softphone.load.credentials import AgentSpec
from softphone.load.results import FailureKind, Results, Snapshot, exit_code
from softphone.load.scenario import DEFAULT_SCENARIO, Scenario, parse_scenario
from softphone.load.worker import SETUP_GRACE, STATUS_INTERVAL, STOP_GRACE, WorkerConfig, worker_main
from softphone.log import get_logger

log = get_logger(__name__)

EXIT_RUNTIME = 1
EXIT_ABORTED = 130
RESULTS_GRACE = 30.0  # seconds past the workers' own stop grace before a silent worker is stopped
#: Why a dialled call ended unanswered, by the SIP code of the platform's call-end record.
SIP_REASONS = {486: "busy", 600: "busy everywhere", 480: "no answer", 487: "no answer (cancelled)",
               408: "no answer (timeout)", 603: "declined", 404: "not found"}


@dataclass
class LoadOptions:
    agents: int
    ramp: float = 10.0
    duration: float = 60.0
    workers: int | None = None
    scenario: Scenario | None = None
    specs: list[AgentSpec] | None = None
    lab: bool = False
    campaign_id: int | None = 1
    relay_only: bool = False
    out_dir: Path = Path("load-results")
    quiet: bool = False
    progress_file: Any = None
    force_terminal: bool | None = None
    seed: int = 0
    prometheus: str | None = None  # "[HOST:]PORT" for the live metrics
    # What the embedded lab does (--lab only), as ``softphone lab``'s --customers, --prompt, --recordings:
    lab_customers: Path | None = None  # customer behaviours per dialled number (YAML/JSON)
    lab_prompt: str | None = None      # what agents hear on the bridge call: tone:HZ, silence or a file
    lab_recordings: Path | None = None  # where the lab keeps its call recordings

    def validate(self) -> None:
        if self.agents < 1:
            raise ConfigurationError(f"--agents: at least 1, got {self.agents}")
        if not self.ramp > 0:
            raise ConfigurationError(f"--ramp: agents per second must be > 0, got {self.ramp}")
        if not self.duration > 0:
            raise ConfigurationError(f"--duration: seconds must be > 0, got {self.duration}")
        if self.workers is not None and self.workers < 1:
            raise ConfigurationError(f"--workers: at least 1, got {self.workers}")
        if not self.lab and not self.specs:
            raise ConfigurationError("credentials: give --url-template, --credentials or --lab")
        for option, value in (("--lab-customers", self.lab_customers), ("--lab-prompt", self.lab_prompt),
                              ("--lab-recordings", self.lab_recordings)):
            if value is not None and not self.lab:
                raise ConfigurationError(f"{option}: only with --lab (it sets what the embedded lab does)")
        if self.lab_customers is not None:
            lab_customers(self.lab_customers)
        if self.lab_prompt is not None:
            lab_prompt(self.lab_prompt)
        if self.lab_recordings is not None and self.lab_recordings.exists() and not self.lab_recordings.is_dir():
            raise ConfigurationError(f"--lab-recordings: {self.lab_recordings} is not a directory")


# --- the embedded lab (--lab) ---------------------------------------------------------


def lab_customers(path: Path) -> Any:
    """The ``--lab-customers`` table (a :class:`~softphone.lab.customers.CustomerTable`); errors name the option."""
    from softphone.lab.customers import CustomerTable

    try:
        return CustomerTable.load(path)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--lab-customers: {exc}") from None


def lab_prompt(value: str) -> str:
    """The ``--lab-prompt`` value checked as the lab's dialer checks its prompt; errors name the option."""
    from softphone.lab.customers import parse_play

    if value.strip() == "echo":
        raise ConfigurationError("--lab-prompt: must be \"tone:HZ\", \"silence\" or an audio file, not echo")
    return parse_play("--lab-prompt", value)


def _seed_file(agents: int, directory: Path) -> tuple[Path, list[int]]:
    """The lab's default seed plus ``agents`` load agents (user_id 20001...)."""
    from importlib import resources

    seed = json.loads(resources.files("softphone.lab").joinpath("seed.json").read_text())
    ids = [20000 + n for n in range(1, agents + 1)]
    seed["users"] = [u for u in seed["users"] if u["user_id"] not in ids] + [
        {"user_id": uid, "user_name": f"load{uid - 20000}", "password": f"load-pass-{uid}",
         "customer_id": seed["users"][0]["customer_id"]} for uid in ids]
    path = directory / "load-seed.json"
    path.write_text(json.dumps(seed))
    return path, ids


async def _start_lab(options: LoadOptions, workdir: Path) -> tuple[Any, list[AgentSpec], str, bool]:
    """The embedded lab with N load agents; with coturn (when installed) the agents' media is
    relayed through it, as the Webphone's is, and the lab's media server answers on its host
    address, as a platform's does (relaying both sides doubled coturn's work and the lab's,
    which share the machine with the agents).  Returns the lab, the agents, the inbound-call URL
    and whether the agents' media is relayed."""
    import shutil

    from softphone.lab.server import start_lab

    seed_path, ids = _seed_file(options.agents, workdir)
    turn = shutil.which("turnserver") is not None
    customers = lab_customers(options.lab_customers) if options.lab_customers is not None else None
    prompt = lab_prompt(options.lab_prompt) if options.lab_prompt is not None else None
    if options.lab_recordings is not None:
        options.lab_recordings.mkdir(parents=True, exist_ok=True)
    server = await start_lab(db_url="sqlite:///:memory:", seed=str(seed_path), turn=turn, relay_only=False, media_turn=False,
                             customers=customers, prompt=prompt, recordings_dir=options.lab_recordings)
    specs = []
    for n, uid in enumerate(ids, start=1):
        flags = server.launch_params(uid, secure=False)
        specs.append(AgentSpec(n, flags=flags))
    return server, specs, server.url + "/lab/inbound", turn


async def _lab_call_outcomes(lab: Any, results: Results) -> None:
    """Dialled calls that ended unanswered get the lab's reason (the call-end record's SIP code:
    486 busy, 480/487 no answer, 603 declined), which the voice API does not give the agent."""
    store = lab.lab.store
    for i, failure in enumerate(results.failures):
        if failure.kind is not FailureKind.NOT_ANSWERED or failure.call_id is None or failure.sip_code:
            continue
        try:
            record = await store.call(failure.call_id)
        except Exception as exc:  # the outcome is a nicety: the failure stands as it is
            log.warning("lab call %d: %s", failure.call_id, exc)
            continue
        code = getattr(record, "sip_code", None)
        if code:
            reason = SIP_REASONS.get(code)
            results.failures[i] = dataclasses.replace(
                failure, sip_code=code, detail=f"{failure.detail}: SIP {code}" + (f" {reason}" if reason else ""))


def _plan(specs: list[AgentSpec], workers: int, ramp: float) -> list[list[tuple[AgentSpec, float]]]:
    """Round-robin agents over workers; agent i starts at i / ramp seconds."""
    plan: list[list[tuple[AgentSpec, float]]] = [[] for _ in range(workers)]
    for i, spec in enumerate(specs):
        plan[i % workers].append((spec, i / ramp))
    return plan


def run_load(options: LoadOptions) -> int:
    """Run the load test; returns the exit status (see the module docstring)."""
    options.validate()
    scenario = options.scenario or parse_scenario(DEFAULT_SCENARIO, source="<default scenario>")
    return asyncio.run(_run(options, scenario))


async def _run(options: LoadOptions, scenario: Scenario) -> int:
    from softphone.load.progress import LiveProgress, RunStatus, WorkerStatus
    from softphone.load.report import write_report

    out_dir = options.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    clip_dir = out_dir / "clips"
    workdir = Path(tempfile.mkdtemp(prefix="softphone-load-"))
    lab = None
    inject_url = None
    specs = options.specs
    relay_only = options.relay_only
    if options.lab:
        lab, specs, inject_url, relayed = await _start_lab(options, workdir)
        relay_only = relay_only or relayed
    assert specs is not None
    specs = specs[: options.agents]
    if len(specs) < options.agents:
        raise ConfigurationError(f"credentials: {len(specs)} agent(s) given for --agents {options.agents}")
    workers = options.workers or max(1, min(os.cpu_count() or 1, len(specs)))
    workers = min(workers, len(specs))
    exporter = None
    if options.prometheus:
        from softphone.load.prometheus import PrometheusExporter, parse_listen

        exporter = PrometheusExporter(*parse_listen(options.prometheus))
        try:
            log.warning("prometheus metrics at %s", await exporter.start())
        except ConfigurationError:
            if lab is not None:
                await lab.close()
            raise
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    stop = ctx.Event()
    started_at = time.time() + 1.0  # give the workers a second to import
    procs = []
    for k, part in enumerate(_plan(specs, workers, options.ramp)):
        cfg = WorkerConfig(k, tuple(part), scenario, options.duration, started_at, options.campaign_id,
                           relay_only, str(clip_dir), inject_url, options.seed,
                           recording_dir=str(out_dir / "recordings"))
        p = ctx.Process(target=worker_main, args=(cfg, out_q, stop), name=f"softphone-load-{k}", daemon=False)
        p.start()
        procs.append(p)
    freezer = None
    if lab is not None:
        # The embedded lab grows with the agents (registrations, bridge calls, their media): its
        # full collections stalled this loop, and the lab's media to the agents, ~100 ms each.
        ramp_ends = started_at + len(specs) / options.ramp + SETUP_GRACE
        freezer = asyncio.create_task(GcFreezer(lambda: time.time() < ramp_ends and not stop.is_set()).run())
    results = Results(scenario.name, started_at=started_at, agents=len(specs), workers=workers)
    statuses: dict[int, dict[str, Any]] = {}
    got: set[int] = set()
    interrupts = 0
    aborted = False
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        nonlocal interrupts, aborted
        interrupts += 1
        if interrupts == 1:
            log.warning("stopping: every agent logs out (Ctrl-C again to abort)")
            stop.set()
        else:
            aborted = True
            for p in procs:
                if p.is_alive():
                    p.terminate()

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    progress = LiveProgress(quiet=options.quiet, file=options.progress_file, force_terminal=options.force_terminal,
                            title=f"softphone load: {scenario.name}")
    last_cpu: dict[int, tuple[float, float, float]] = {}
    results_deadline = started_at + options.duration + STOP_GRACE + RESULTS_GRACE
    try:
        with progress:
            next_snapshot = time.time()
            while len(got) < len(procs):
                try:
                    kind, worker, payload = await loop.run_in_executor(None, out_q.get, True, 0.5)
                except queue.Empty:
                    kind = None
                if kind == "status":
                    statuses[worker] = payload
                elif kind == "results":
                    got.add(worker)
                    results.merge(Results.from_dict(json.loads(payload)))
                elif kind == "error":
                    log.error("worker %d: %s", worker, payload)
                if kind is None and all(not p.is_alive() for p in procs):
                    # dead without results (aborted or killed): stop waiting for them
                    break
                if kind is None and time.time() > results_deadline:
                    # alive but silent long after the run's end (stuck): never wait for ever
                    stuck = [k for k, p in enumerate(procs) if k not in got and p.is_alive()]
                    log.error("worker(s) %s sent no results %.0f s after the run's end: stopping them "
                              "(their stacks go to stderr)", stuck, time.time() - started_at - options.duration)
                    for k in stuck:
                        with contextlib.suppress(OSError):
                            os.kill(procs[k].pid, signal.SIGUSR1)  # faulthandler: its stacks on stderr
                    await asyncio.sleep(1.0)
                    for k in stuck:
                        procs[k].terminate()
                    break
                now = time.time()
                if now >= next_snapshot and statuses:
                    next_snapshot = now + STATUS_INTERVAL
                    snap, wstat = _snapshot(now - started_at, statuses, last_cpu)
                    results.snapshots.append(snap)
                    causes: Counter[str] = Counter()
                    for s in statuses.values():
                        causes.update(s["failures"])
                    run_status = RunStatus(elapsed=max(0.0, now - started_at), duration=options.duration,
                                           target_agents=len(specs), active=snap.active_agents,
                                           registered=snap.registered, in_call=snap.in_call, calls=snap.calls,
                                           failures=dict(causes), stopping=stop.is_set(),
                                           workers=tuple(WorkerStatus(**w) for w in wstat))
                    progress.update(run_status)
                    if exporter is not None:
                        exporter.update(run_status, cpu_cores=snap.cpu_cores, pss_bytes=snap.pss_mb * 1024 ** 2)
    finally:
        if freezer is not None:
            freezer.cancel()
        for p in procs:
            p.join(timeout=STOP_GRACE if not aborted else 5)
            if p.is_alive():
                p.kill()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if lab is not None:
            try:
                await _lab_call_outcomes(lab, results)
            finally:
                await lab.close()
        if exporter is not None:
            await exporter.close()
    results.interrupted = results.interrupted or interrupts > 0
    results.duration = max(results.duration, time.time() - started_at)
    outcomes = scenario.evaluate(results)
    results.write_json(out_dir / "results.json", outcomes)
    results.write_csv(out_dir / "csv")
    results.write_junit(out_dir / "junit.xml", outcomes)
    report = write_report(out_dir / "report.html", results, outcomes)
    # The summary, also with --quiet (which only silences the live progress).
    print(f"{len(specs)} agents, {len(results.legs)} call legs, failures: "
          + (", ".join(f"{c}: {n}" for c, n in results.failures_by_cause().items()) or "none"))
    for o in outcomes:
        print(o.describe())
    print(f"report: {report}")
    if aborted:
        return EXIT_ABORTED
    return exit_code(outcomes)


def _snapshot(at: float, statuses: dict[int, dict[str, Any]],
              last_cpu: dict[int, tuple[float, float, float]]) -> tuple[Snapshot, list[dict[str, Any]]]:
    """The run now, from each worker's latest status; CPU % between a worker's last two statuses."""
    cores = 0.0
    wstat = []
    for w, s in sorted(statuses.items()):
        prev = last_cpu.get(w)
        pct = prev[2] if prev is not None else 0.0  # no newer status yet: the last figure stands
        if prev is None or s["at"] > prev[0]:
            if prev is not None:
                pct = (s["cpu_s"] - prev[1]) / (s["at"] - prev[0]) * 100.0
            last_cpu[w] = (s["at"], s["cpu_s"], pct)
        cores += pct / 100.0
        wstat.append({"worker": w, "agents": s["active"], "cpu_percent": pct,
                      "memory_mb": (s["pss_bytes"] or 0) / 1024 ** 2, "loop_lag_ms": s["loop_lag_ms"]})
    total_failures = sum(sum(s["failures"].values()) for s in statuses.values())
    snap = Snapshot(at=at, active_agents=sum(s["active"] for s in statuses.values()),
                    registered=sum(s["registered"] for s in statuses.values()),
                    in_call=sum(s["in_call"] for s in statuses.values()),
                    calls=sum(s["calls"] for s in statuses.values()), failures=total_failures,
                    cpu_cores=cores, pss_mb=sum((s["pss_bytes"] or 0) for s in statuses.values()) / 1024 ** 2,
                    loop_lag_ms=max((s["loop_lag_ms"] for s in statuses.values()), default=0.0),
                    gc_pause_ms=max((s["gc_pause_ms"] for s in statuses.values()), default=0.0))
    return snap, wstat
