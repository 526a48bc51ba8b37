"""Agent sessions as Locust users, for load tests spread over many machines.

Each Locust user is one agent session (the same flow and scenario steps as
``softphone load``, :class:`softphone.load.agent_run.AgentRun`).  The sessions of a Locust
process run on one asyncio loop in one *real* OS thread; every step is reported to
Locust's ``request`` event (request_type ``API``, ``SIP`` or ``WEBRTC``, name = the
step, response time in ms, failures with their cause), so Locust's UI, CSV files and
its master/worker aggregation show them.  ``locustfile.py``::

    from softphone.locust import SoftphoneUser

    class Agent(SoftphoneUser):
        credentials = "agents.csv"          # or: url_template = "https://...&user_id=10{n:02d}..."
        scenario = "steady_bridge.yaml"     # None: stay on the bridge call, audio checked
        worker_stride = 1000                # row/agent = worker_index * stride + i (+ first_agent)

    locust -f locustfile.py --master --headless -u 100 -r 10 --run-time 5m
    locust -f locustfile.py --worker --master-host 10.0.0.1

Living with gevent: Locust calls ``gevent.monkey.patch_all()`` (its master/worker
messaging needs it), which turns ``threading`` and ``_thread`` into greenlets and
``selectors`` into gevent's.  So the loop thread is started with the *original*
``_thread.start_new_thread`` and runs an epoll selector loop
(:class:`RealThreadLoop`), whose ``run_in_executor`` (aiortc encodes audio there) uses
a few original OS threads and a C ``SimpleQueue`` instead of a thread pool built on
patched primitives; the agent stack is imported in the main thread (an import in
another thread can fork a helper, which gevent only allows from its default loop).
Steps cross back through a ``deque`` drained by a greenlet in Locust's hub.
"""

from __future__ import annotations

import sys

from softphone.log import get_logger

log = get_logger(__name__)

if "locust" not in sys.modules:
    # Importing locust monkey-patches the whole process with gevent: never as a side effect
    # (a tool walking the package, a test run).  The locust command imports it first.
    raise ImportError("softphone.locust is for locustfiles run by the locust command "
                      "(import locust first; importing it patches the process with gevent)")

import _queue  # noqa: E402
import asyncio  # noqa: E402
import collections  # noqa: E402
import csv  # noqa: E402
import ipaddress  # noqa: E402
import itertools  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.monkey import get_original  # noqa: E402
from locust import User, constant, task  # noqa: E402

import softphone.agent.agent  # noqa: E402  (imported here, in the main thread: see the module docs)
import softphone.media.description_handler  # noqa: E402, F401
from softphone.errors import ConfigurationError  # noqa: E402
from softphone.gc_freezer import GcFreezer  # noqa: E402
from softphone.load.agent_run import AgentRun  # noqa: E402
from softphone.load.credentials import AgentSpec  # noqa: E402
from softphone.load.results import Failure, FailureKind, Results  # noqa: E402
from softphone.load.scenario import DEFAULT_SCENARIO, Scenario, load_scenario, parse_scenario  # noqa: E402
from softphone.load.verdict import VerdictTicker  # noqa: E402
from softphone.load.worker import SETUP_GRACE, Worker, WorkerConfig  # noqa: E402

#: request_type of each step Locust shows.
STEP_TYPES = {
    "authorize": "API", "register": "SIP", "login_to_bridge": "SIP", "ice_connected": "WEBRTC",
    "first_audio": "WEBRTC", "login_to_audio": "WEBRTC", "outbound_answered": "API",
}
_FAILURE_TYPES = {FailureKind.HTTP: "API", FailureKind.SIP: "SIP", FailureKind.ICE: "WEBRTC",
                  FailureKind.ONE_WAY: "WEBRTC", FailureKind.SILENT_GAP: "WEBRTC", FailureKind.PROMPT: "WEBRTC"}
STOP_TIMEOUT = 30.0
EXECUTOR_THREADS = 4

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_EpollSelector = get_original("selectors", "EpollSelector")
_OriginalSocket = get_original("socket", "socket")


class StepFailure(Exception):
    """What Locust records as a failed step: the cause ("SIP 503", "timeout: dial") and detail."""


class RealThreadLoop(asyncio.SelectorEventLoop):
    """An epoll event loop whose executor is made of original OS threads (see the module docs)."""

    def __init__(self, threads: int = EXECUTOR_THREADS) -> None:
        super().__init__(_EpollSelector())
        self._threads = threads
        self._jobs = _queue.SimpleQueue()
        for _ in range(threads):
            _start_new_thread(self._work, ())

    async def create_datagram_endpoint(self, protocol_factory: Any, local_addr: Any = None,
                                       remote_addr: Any = None, **kw: Any) -> Any:
        """UDP endpoints on *original* sockets: gevent's socket class (what ``socket.socket`` is
        after the patch) wraps every ``send``/``recvfrom`` in Python, on every media packet.
        What this does not handle (a given ``sock``, broadcast, reuse_port) takes asyncio's path."""
        if kw.get("sock") is not None or kw.get("reuse_port") or kw.get("allow_broadcast") \
                or (local_addr is None and remote_addr is None):
            return await super().create_datagram_endpoint(protocol_factory, local_addr=local_addr,
                                                          remote_addr=remote_addr, **kw)
        family = _literal_family(remote_addr if remote_addr is not None else local_addr)
        if family is None or (local_addr is not None and _literal_family(local_addr) != family):
            # a host name to resolve: asyncio's own path (resolving in a thread of ours would wake gevent's)
            return await super().create_datagram_endpoint(protocol_factory, local_addr=local_addr,
                                                          remote_addr=remote_addr, **kw)
        sock = _OriginalSocket(family, socket.SOCK_DGRAM, kw.get("proto", 0))
        try:
            sock.setblocking(False)
            if local_addr is not None:
                sock.bind(local_addr)
            if remote_addr is not None:
                sock.connect(remote_addr)
        except BaseException:
            sock.close()
            raise
        return await super().create_datagram_endpoint(protocol_factory, sock=sock)

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future:
        fut = self.create_future()
        self._jobs.put((fut, func, args))
        return fut

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fut, func, args = job
            try:
                result = func(*args)
            except BaseException as exc:
                self.call_soon_threadsafe(_deliver, fut, None, exc)
            else:
                self.call_soon_threadsafe(_deliver, fut, result, None)

    def close(self) -> None:
        for _ in range(self._threads):
            self._jobs.put(None)
        super().close()


def _literal_family(addr: Any) -> int | None:
    """AF_INET / AF_INET6 for an address tuple whose host is an IP literal, else None."""
    try:
        return socket.AF_INET6 if ipaddress.ip_address(addr[0]).version == 6 else socket.AF_INET
    except (ValueError, TypeError, IndexError):
        return None


def _deliver(fut: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if fut.cancelled():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


class _LoopThread:
    """The process's asyncio loop in a real OS thread (never a greenlet)."""

    def __init__(self) -> None:
        self.loop: RealThreadLoop | None = None
        self.ticker: VerdictTicker | None = None
        self.events: collections.deque[tuple] = collections.deque()  # thread-safe appends/pops
        self.last_start = 0.0  # time.monotonic() of the latest user's start
        self._freezer: asyncio.Task | None = None
        _start_new_thread(self._run, ())

    def _run(self) -> None:
        loop = RealThreadLoop()
        asyncio.set_event_loop(loop)
        self.ticker = VerdictTicker()
        self.loop = loop  # last: callers wait for it
        loop.run_forever()

    def submit(self, coro: Any) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def note_start(self) -> None:
        """A user is starting: while users keep starting, what they build is frozen out of the
        collector's reach (full collections over the growing heap stall the loop, as in a
        ``softphone load`` worker)."""
        assert self.loop is not None
        self.last_start = time.monotonic()
        self.loop.call_soon_threadsafe(self._ensure_freezer)

    def _growing(self) -> bool:
        return time.monotonic() - self.last_start < SETUP_GRACE

    def _ensure_freezer(self) -> None:
        if self._freezer is None or self._freezer.done():
            self._freezer = asyncio.get_running_loop().create_task(GcFreezer(self._growing).run())


_loop_lock = _allocate_lock()
_loop: _LoopThread | None = None
_drainer: Any = None


def _loop_thread() -> _LoopThread:
    """The process's loop thread, started on first use; waits (cooperatively) until it runs."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = _LoopThread()
    while _loop.loop is None:
        gevent.sleep(0.01)
    return _loop


class _ReportingResults(Results):
    """Results that also queue every step for Locust's request event."""

    def __init__(self, sink: collections.deque, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._sink = sink

    def latency(self, metric: str, seconds: float, *, at: float, agent: int) -> None:
        super().latency(metric, seconds, at=at, agent=agent)
        self._sink.append((STEP_TYPES.get(metric, "SIP"), metric, seconds * 1000.0, None))

    def fail(self, failure: Failure) -> None:
        super().fail(failure)
        request_type = _FAILURE_TYPES.get(failure.kind, STEP_TYPES.get(failure.step, "SIP"))
        self._sink.append((request_type, failure.step, 0.0, StepFailure(f"{failure.cause}: {failure.detail}")))


class _UserContext:
    """What an :class:`AgentRun` needs from its worker, for one Locust user."""

    stopping_at_end = Worker.stopping_at_end

    def __init__(self, cfg: WorkerConfig, loop: _LoopThread) -> None:
        self.cfg = cfg
        self.results = _ReportingResults(loop.events, cfg.scenario.name, started_at=cfg.started_at, agents=1)
        assert loop.ticker is not None
        self.ticker = loop.ticker
        self.stopping = False
        self.active = 0
        self.calls = 0
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro: Any) -> asyncio.Task:
        return Worker.spawn(self, coro)  # type: ignore[arg-type]


def _drain(environment: Any, loop: _LoopThread) -> None:
    """Fire Locust's request event for every queued step (in a greenlet of Locust's hub)."""
    while True:
        while loop.events:
            request_type, name, ms, exc = loop.events.popleft()
            environment.events.request.fire(request_type=request_type, name=name, response_time=ms,
                                            response_length=0, exception=exc, context={})
        gevent.sleep(0.2)


class SoftphoneUser(User):
    """One agent session per Locust user; subclass it and set where the credentials come from."""

    abstract = True
    wait_time = constant(1)
    #: Launch URL with ``{n}`` for the agent number, or a CSV of launch parameters (one row per agent).
    url_template: str | None = None
    credentials: str | None = None
    #: Scenario file (YAML); None: stay on the bridge call with the audio verdict on.
    scenario: str | None = None
    first_agent: int = 1
    worker_stride: int = 1000
    campaign_id: int | None = 1
    relay_only: bool = False
    clip_dir: str | None = None

    _numbers = itertools.count()
    _scenario_cache: dict[str | None, Scenario] = {}

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self._run: AgentRun | None = None
        self._ctx: _UserContext | None = None
        self._future: Any = None

    # -- which agent this user is

    def _agent_number(self) -> tuple[int, int]:
        """(agent number n, index into the credentials rows) of this user, unique across workers."""
        worker_index = getattr(getattr(self.environment, "runner", None), "worker_index", 0) or 0
        local = next(type(self)._numbers)
        index = worker_index * self.worker_stride + local
        return self.first_agent + index, index

    def _spec(self) -> AgentSpec:
        n, index = self._agent_number()
        if self.url_template:
            return AgentSpec(n, url=self.url_template.format(n=n))
        if self.credentials:
            with open(self.credentials, newline="") as f:
                rows = list(csv.DictReader(f))
            if index >= len(rows):
                raise ConfigurationError(f"credentials {self.credentials}: no row {index + 1} for this user "
                                         f"({len(rows)} rows; worker_stride {self.worker_stride})")
            row = rows[index]
            url = (row.get("url") or "").strip() or None
            flags = {k: v for k, v in row.items() if k and k != "url" and v not in (None, "")}
            return AgentSpec(n, url=url, flags=flags)
        raise ConfigurationError("SoftphoneUser: set url_template or credentials")

    def _load_scenario(self) -> Scenario:
        cache = type(self)._scenario_cache
        if self.scenario not in cache:
            cache[self.scenario] = (load_scenario(Path(self.scenario)) if self.scenario else
                                    parse_scenario(DEFAULT_SCENARIO, source="<default scenario>"))
        return cache[self.scenario]

    # -- Locust's hooks

    def on_start(self) -> None:
        global _drainer
        loop = _loop_thread()
        if _drainer is None:
            _drainer = gevent.spawn(_drain, self.environment, loop)
        spec = self._spec()
        cfg = WorkerConfig(worker=0, agents=((spec, 0.0),), scenario=self._load_scenario(), duration=1e9,
                           started_at=time.time(), campaign_id=self.campaign_id, relay_only=self.relay_only,
                           clip_dir=self.clip_dir or os.environ.get("SOFTPHONE_CLIP_DIR"), seed=spec.n)
        self._ctx = _UserContext(cfg, loop)
        self._run = AgentRun(self._ctx, spec)  # type: ignore[arg-type]
        loop.note_start()
        self._future = loop.submit(self._run.run(0.0))

    @task
    def stay(self) -> None:
        """The session runs on the loop thread; the user only waits (and notices if it ended)."""
        if self._future is not None and self._future.done():
            exc = self._future.exception()
            if exc is not None:
                log.error("agent session ended with %r", exc)
            self._future = None

    def on_stop(self) -> None:
        if self._ctx is None or self._run is None:
            return
        self._ctx.stopping = True
        run, loop = self._run, _loop_thread()
        if run.agent is not None and loop.loop is not None:
            loop.loop.call_soon_threadsafe(run.agent.request_stop, "locust user stopped")
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._future is not None and not self._future.done() and time.monotonic() < deadline:
            gevent.sleep(0.1)
        if loop.events:
            gevent.sleep(0.3)  # let the drainer fire the last steps
