"""``softphone demo``: the embedded lab and one agent through the whole Webphone flow, step by step.

What a new user runs first (README command 1): no platform, no configuration.
It starts the lab in this process (SQLite in memory, SIP over secure
WebSocket, coturn when ``turnserver`` is installed, else host candidates on
loopback), then drives one :class:`softphone.Agent` with the launch
parameters the lab prints for its first seeded agent, exactly as
``softphone run URL`` would, and checks each step from both ends:

authorize, extension, register, login, bridge call answered, prompt heard
(tone detected), an outbound call to a simulated customer, audio both ways
(each side detects the other's tone), DTMF both ways (the agent's RFC 4733
digits reach the customer as SIP INFO; the customer's SIP INFO digits reach
the agent as RFC 4733),
hold and retrieve (the customer leg is re-INVITEd; the agent hears silence,
then the customer again), hang-up, dispose, logout, unregister.

The demo plays the customer's part through the lab's objects (it runs in the
same process): that is the only thing it does that ``softphone run`` cannot.
Output: one line per step with its time (:mod:`softphone.demo_runner`), a
one-screen summary, and with ``--report`` an HTML page with the level chart
of both audio directions.  Exit status 0 when every step passed, 1 naming
the step that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from softphone.demo_runner import DemoFailed, StepRunner, format_summary, write_demo_report
from softphone.errors import SoftphoneError
from softphone.log import get_logger

log = get_logger(__name__)

#: The seeded agent the demo runs (user 1001 "agent1" in softphone/lab/seed.json) and its campaign.
DEMO_USER_ID = 1001
DEMO_CAMPAIGN_ID = 1
#: The simulated customer the agent calls, and what each side sends.
CUSTOMER_NUMBER = "0821234567"
PROMPT_HZ = 440.0      # the lab's prompt on the bridge call
AGENT_HZ = 1000.0      # what the agent plays
CUSTOMER_HZ = 600.0    # what the customer plays
AGENT_DIGITS = "123"   # agent -> lab, RFC 4733
CUSTOMER_DIGITS = "45#"  # customer -> agent, SIP INFO on the customer leg, RFC 4733 to the agent
DISPOSITION = "DEMO"

STEPS: tuple[str, ...] = (
    "lab", "authorize", "extension", "register", "login", "bridge call answered", "prompt heard",
    "outbound call", "agent hears customer", "customer hears agent", "DTMF agent -> customer",
    "DTMF customer -> agent", "hold", "retrieve", "hang-up", "dispose", "logout", "unregister",
)


@dataclass
class DemoOptions:
    """What ``softphone demo`` takes: ``report`` (HTML file), ``turn`` (None: when coturn is
    installed, False: never), ``step_timeout`` (seconds per step)."""

    report: Path | None = None
    turn: bool | None = None
    step_timeout: float = 10.0
    echo: Callable[[str], None] = print
    customer_number: str = CUSTOMER_NUMBER
    debug: bool = False
    """The agent runs with ``debug_console=true``: its SIP, ICE and API trace on stderr."""
    """The number dialled; the lab's customer table answers only :data:`CUSTOMER_NUMBER` (others get
    the lab's defaults, e.g. ``*486`` busy)."""


class Milestones:
    """Futures resolved by the agent's events, each failing with the start's error if that comes first."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future] = {}

    def future(self, name: str) -> asyncio.Future:
        if name not in self._futures:
            self._futures[name] = asyncio.get_running_loop().create_future()
        return self._futures[name]

    def reach(self, name: str, value: Any = None) -> None:
        fut = self.future(name)
        if not fut.done():
            fut.set_result(value)

    async def wait(self, name: str, start: asyncio.Task | None = None) -> Any:
        """The milestone's value; the start task's exception if it fails before."""
        fut = self.future(name)
        if start is None or fut.done():
            return await fut
        await asyncio.wait({fut, start}, return_when=asyncio.FIRST_COMPLETED)
        if fut.done():
            return fut.result()
        exc = start.exception()
        if exc is not None:
            raise exc
        return await fut


async def wait_until(condition: Callable[[], Any], what: str, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (for lab state with no event to await)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


#: Steps marked on the level charts: short label, and whether the mark is where the step began (an
#: action: what follows is its effect) or where it ended (a detection: when it was heard).
CHART_MARKS = {"prompt heard": ("prompt heard", "ended"), "outbound call": ("dial", "started"),
               "DTMF agent -> customer": ("DTMF out", "started"), "DTMF customer -> agent": ("DTMF in", "started"),
               "hold": ("hold", "started"), "retrieve": ("retrieve", "started"),
               "hang-up": ("hang-up", "started")}


#: A pause longer than this between two received frames is drawn as a gap in the level chart.
GAP_SECONDS = 0.1


def wall_clock_levels(clock: Callable[[], float], name: str) -> Any:
    """A sink keeping each frame's RMS/peak stamped with ``clock()``: both directions and the steps
    then share one time axis (a LevelMeter counts stream time, which stops while no audio comes)."""
    import collections

    from softphone.media import tones
    from softphone.media.sinks import AudioSink, LevelSample, frame_to_mono

    class WallClockLevels(AudioSink):
        def __init__(self) -> None:
            super().__init__()
            self.name = name
            self.history: collections.deque = collections.deque(maxlen=60_000)

        def _write(self, frame: Any) -> None:
            x = frame_to_mono(frame)
            now = clock()
            if self.history and now - self.history[-1].t > GAP_SECONDS:
                # no audio came (RFC 4733 digits replace it, or the stream stalled): show a gap, not a ramp
                floor = tones.DB_FLOOR
                self.history.append(LevelSample(self.history[-1].t + 0.001, floor, floor))
                self.history.append(LevelSample(now - 0.001, floor, floor))
            self.history.append(LevelSample(now, tones.rms_dbfs(x), tones.peak_dbfs(x)))

    return WallClockLevels()


def chart_marks(runner: StepRunner) -> list[tuple[float, str]]:
    return [(getattr(r, CHART_MARKS[r.name][1]), CHART_MARKS[r.name][0]) for r in runner.records
            if r.name in CHART_MARKS]


def _dbfs(value: float) -> str:
    return f"{value:.0f} dBFS"


def _quality(q: Any) -> str:
    parts = [f"loss {q.loss_fraction * 100:.1f} %" if getattr(q, "loss_fraction", None) is not None else None,
             f"jitter {q.jitter_ms:.1f} ms" if getattr(q, "jitter_ms", None) is not None else None,
             f"RTT {q.rtt_ms:.0f} ms" if getattr(q, "rtt_ms", None) is not None else None,
             f"MOS {q.mos:.2f}" if getattr(q, "mos", None) is not None else "MOS n/a"]
    return ", ".join(p for p in parts if p)


def demo_customers() -> Any:
    """The lab's customer table with the demo's customer: answers at once, plays a tone, listens."""
    from softphone.lab.customers import Behaviour, CustomerTable

    return CustomerTable().with_numbers({CUSTOMER_NUMBER: Behaviour(
        answer_after=0.2, play=f"tone:{CUSTOMER_HZ:g}", listen=(AGENT_HZ,))})


async def run_demo(options: DemoOptions) -> int:
    """The whole demo; the exit status (0 every step passed, 1 a step failed)."""
    runner = StepRunner(echo=options.echo, default_timeout=options.step_timeout, planned=STEPS)
    meters: dict[str, Any] = {}
    options.echo(f"softphone demo: the lab and one agent through the Webphone flow ({len(STEPS)} steps)")
    try:
        await _flow(runner, options, meters)
    except DemoFailed as exc:
        log.debug("demo failed: %s", exc)
    finally:
        options.echo(format_summary(runner))
        if options.report is not None and meters:
            try:
                marks = chart_marks(runner)
                path = write_demo_report(options.report, runner, {k: v.history for k, v in meters.items()},
                                         {name: marks for name in meters})
                options.echo(f"report: {path}")
            except SoftphoneError as exc:
                options.echo(f"softphone demo: {exc}")
                return 1
    return 0 if runner.ok else 1


async def _flow(runner: StepRunner, options: DemoOptions, meters: dict[str, Any]) -> None:
    from softphone.errors import LabError
    from softphone.lab.server import start_lab

    installed = shutil_which("turnserver") is not None
    turn = installed if options.turn is None else options.turn
    why_not = ["--no-turn" if options.turn is False else "coturn not installed"]

    async def open_lab() -> Any:
        common = {"customers": demo_customers(), "prompt": f"tone:{PROMPT_HZ:g}"}
        if turn:
            try:  # both ends relay only: every packet through coturn on loopback
                return await start_lab(turn=True, relay_only=True, **common)
            except LabError as exc:
                if "needs TURN" not in str(exc):
                    raise
                why_not[0] = "coturn did not start"
        return await start_lab(turn=False, **common)

    def detail(server: Any) -> str:
        return _lab_detail(server, why_not[0])

    server = await runner.step("lab", open_lab, timeout=max(options.step_timeout, 20.0), detail=detail)
    runner.fact("lab", f"{server.url} (REST API), {server.sip_wss_url or server.sip_ws_url} (SIP)")
    runner.fact("media", f"TURN {server.turn.url} (coturn), both ends relay only" if server.turn is not None
                else f"host candidates on loopback, no TURN ({why_not[0]})")
    try:
        await _agent_flow(runner, server, meters, options)
    finally:
        await server.close()


def shutil_which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def _lab_detail(server: Any, why_not: str) -> str:
    media = "TURN through coturn" if server.turn is not None else f"no TURN ({why_not})"
    scheme = "wss" if server.sip_wss_url else "ws"
    return f"REST on SQLite in memory, SIP over {scheme}, {media}"


async def _agent_flow(runner: StepRunner, server: Any, meters: dict[str, Any], options: DemoOptions) -> None:
    from softphone import Agent, load_params
    from softphone.media.config import LOOPBACK_HOSTS, IceConfig, MediaConfig

    launch = server.launch_params(DEMO_USER_ID)
    ca_file = launch.pop("ca_file", None)
    if options.debug:
        launch["debug_console"] = "true"
    params = load_params(None, flags=launch, environ={})
    # without TURN: host candidates, on 127.0.0.1 only (the lab is in this process)
    media = None if server.turn is not None else MediaConfig(ice=IceConfig(host_addresses=LOOPBACK_HOSTS))
    agent = Agent(params, campaign_id=DEMO_CAMPAIGN_ID, play=f"tone:{AGENT_HZ:g}", ca_file=ca_file,
                  relay_only=server.turn is not None, media=media, debug=options.debug)
    runner.fact("agent", f"user {params.user_id} {params.username}, campaign {DEMO_CAMPAIGN_ID}")
    marks = Milestones()
    agent.on("state", lambda ev: (marks.reach(f"left:{ev.previous}"), marks.reach(f"reached:{ev.state}")))
    agent.on("registered", lambda ev: marks.reach("registered", ev))
    agent.on("logged_in", lambda ev: marks.reach("logged_in", ev))
    agent.on("logged_out", lambda ev: None if ev.stale else marks.reach("logged_out", ev))
    agent.on("unregistered", lambda ev: marks.reach("unregistered", ev))

    start = asyncio.get_running_loop().create_task(agent.start())
    try:
        await runner.step("authorize", lambda: marks.wait("left:authorizing", start),
                          detail=lambda _: f"token for {params.username} (user_id {params.user_id})")
        await runner.step("extension", lambda: marks.wait("reached:registering", start),
                          detail=lambda _: f"extension {agent.extension} "
                                           f"{'given' if params.derived.extension else 'provisioned'} until "
                                           f"{params.expire_date:%Y-%m-%d %H:%M %Z}")
        reg = await runner.step("register", lambda: marks.wait("registered", start),
                                detail=lambda ev: f"{ev.aor} over {agent.params.derived.sip_ws_url.split(':')[0]}"
                                                  f", expires {ev.expires} s")
        runner.fact("extension", f"{agent.extension} ({reg.aor})")
        await runner.step("login", lambda: marks.wait("logged_in", start),
                          detail=lambda ev: f"campaign {ev.campaign_id} on extension {ev.extension}")

        async def bridge_call() -> Any:
            await start  # the platform calls while the login is in flight
            return await agent.wait_for_call()

        call = await runner.step("bridge call answered", bridge_call, detail=lambda c:
                                 f"from {c.remote.split(';tag=')[0]}, auto-answered")
    except BaseException:
        if not start.done():
            start.cancel()
            with contextlib.suppress(BaseException):
                await start
        await agent.stop("demo failed")
        runner.echo(await _after_failure(server, agent))
        raise
    try:
        agent_ear = meters["agent hears (lab -> agent)"] = wall_clock_levels(runner.now, "agent hears")
        call.audio.add(agent_ear)
        bridge = server.lab.telephony.bridges[DEMO_USER_ID]
        lab_ear = meters["lab hears (agent -> lab)"] = wall_clock_levels(runner.now, "lab hears")
        bridge.add_listener("demo-meter", lab_ear.write)
        lab_digits: list[Any] = []
        bridge.handler.on("dtmf", lab_digits.append)
        await _call_flow(runner, agent, call, server, lab_digits, options.customer_number)
    finally:
        stop = asyncio.get_running_loop().create_task(agent.stop("demo finished"))
        try:
            if runner.failed is None:
                await runner.step("logout", lambda: _logged_out(marks, server), detail=str)
                await runner.step("unregister", lambda: _unregistered(marks, server, agent), detail=str)
        finally:
            await stop
            if runner.failed is not None:  # what the failure left behind, as the lab sees it
                runner.echo(await _after_failure(server, agent))


async def _unregistered(marks: Milestones, server: Any, agent: Any) -> str:
    event = await marks.wait("unregistered")
    await wait_until(lambda: not server.endpoint.is_registered(agent.extension),
                     "the lab still holds a binding", 5)
    return f"extension {event.extension} ({event.reason}); the lab holds no binding"


async def _after_failure(server: Any, agent: Any) -> str:
    from softphone.lab.store import AgentStatus

    user = await server.lab.store.user(DEMO_USER_ID)
    logged_in = user is not None and user.status is AgentStatus.LOGGED_IN
    registered = bool(agent.extension) and server.endpoint.is_registered(agent.extension)
    return (f"cleanup: the lab has user {DEMO_USER_ID} {'still logged in' if logged_in else 'logged out'}, "
            f"extension {agent.extension or '-'} {'still registered' if registered else 'not registered'}")


async def _logged_out(marks: Milestones, server: Any) -> str:
    from softphone.lab.store import AgentStatus

    event = await marks.wait("logged_out")
    user = await server.lab.store.user(event.user_id)
    if user is None or user.status is not AgentStatus.LOGGED_OUT:
        raise SoftphoneError(f"the lab still has user {event.user_id} logged in")
    return f"User Logout API; the lab has user {event.user_id} logged out"


async def _call_flow(runner: StepRunner, agent: Any, call: Any, server: Any, lab_digits: list[Any],
                     number: str) -> None:
    tone = await runner.step("prompt heard", lambda: call.wait_for_tone(PROMPT_HZ),
                             detail=lambda ev: f"{ev.freq:g} Hz at {_dbfs(ev.level_dbfs)} (the lab's prompt)")
    runner.fact("bridge call", f"prompt {tone.freq:g} Hz heard at {_dbfs(tone.level_dbfs)}")

    placed = await runner.step("outbound call", lambda: _dial(agent, server, number), detail=lambda pc:
                               f"call_id {pc[0].call_id} to {number}: answered by the customer")
    platform_call, customer = placed
    call_id = platform_call.call_id
    heard = await runner.step("agent hears customer", lambda: call.wait_for_tone(CUSTOMER_HZ),
                              detail=lambda ev: f"{ev.freq:g} Hz at {_dbfs(ev.level_dbfs)}")
    their = await runner.step("customer hears agent",
                              lambda: customer.tones.wait_for(AGENT_HZ, include_past=True),
                              detail=lambda ev: f"{ev.freq:g} Hz at {_dbfs(ev.level_dbfs)}")
    runner.fact("audio", f"agent heard {heard.freq:g} Hz ({_dbfs(heard.level_dbfs)}), customer heard "
                         f"{their.freq:g} Hz ({_dbfs(their.level_dbfs)})")

    async def dtmf_out() -> str:
        used = await call.send_dtmf(AGENT_DIGITS, method="rfc4733")
        await wait_until(lambda: len(customer.digits_received) >= len(AGENT_DIGITS), "the customer's digits", 5)
        got = "".join(customer.digits_received)
        if got != AGENT_DIGITS or "".join(ev.digit for ev in lab_digits) != AGENT_DIGITS:
            raise SoftphoneError(f"the customer received {got!r}, the agent sent {AGENT_DIGITS!r}")
        return f"{got!r} sent as {used}, the customer got them (SIP INFO from the lab)"

    await runner.step("DTMF agent -> customer", dtmf_out, detail=str)

    async def dtmf_in() -> str:
        await customer.session.send_dtmf(CUSTOMER_DIGITS, method="info")
        got = await call.wait_for_dtmf(len(CUSTOMER_DIGITS), timeout=5)
        if got != CUSTOMER_DIGITS:
            raise SoftphoneError(f"the agent received {got!r}, the customer sent {CUSTOMER_DIGITS!r}")
        vias = sorted({ev.via for ev in call.digits[-len(CUSTOMER_DIGITS):]})
        return f"{got!r} from the customer (SIP INFO), the agent got them ({'/'.join(vias)})"

    await runner.step("DTMF customer -> agent", dtmf_in, detail=str)
    runner.fact("DTMF", f"agent -> customer {AGENT_DIGITS!r}, customer -> agent {CUSTOMER_DIGITS!r}")

    async def hold() -> str:
        await agent.hold_call(call_id)
        await wait_until(lambda: customer.on_hold, "the customer leg on hold", 5)
        level = await wait_until(lambda: _quiet(call), "silence at the agent", 5)
        return f"customer leg re-INVITEd, the agent hears {_dbfs(level)}"

    await runner.step("hold", hold, detail=str)

    async def retrieve() -> str:
        await agent.retrieve_call(call_id)
        await wait_until(lambda: not customer.on_hold, "the customer leg off hold", 5)
        await wait_until(lambda: call.received_level_dbfs(0.2) > -40, "the customer's audio again", 5)
        return f"the agent hears the customer again ({_dbfs(call.received_level_dbfs(0.2))})"

    await runner.step("retrieve", retrieve, detail=str)
    quality = await call.stats()
    runner.fact("quality", _quality(quality))

    async def hangup() -> str:
        result = await agent.hangup_call(call_id)
        await asyncio.wait_for(customer.ended.wait(), 5)
        return f"{result.detail}; the customer leg ended"

    await runner.step("hang-up", hangup, detail=str)
    disposed = await runner.step("dispose", lambda: agent.dispose(call_id, DISPOSITION),
                                 detail=lambda r: r.detail)
    record = await server.lab.store.call(call_id)
    runner.fact("call record", f"call_id {call_id}: state {record.call_state.value if record else '?'}, "
                               f"disposition {getattr(record, 'disposition_code', None) or disposed.detail}")


def _quiet(call: Any) -> float | None:
    level = call.received_level_dbfs(0.2)
    return level if level < -50 else None


async def _dial(agent: Any, server: Any, number: str) -> tuple[Any, Any]:
    """Voice API call to ``number``; the lab's customer once it answered (fails as soon as the call ends)."""
    placed = await agent.dial(number)
    tel = server.lab.telephony
    while True:
        lab_call = tel.calls.get(placed.call_id)
        if lab_call is None:  # the lab forgot it: the customer did not answer
            record = await server.lab.store.call(placed.call_id)
            code = getattr(record, "sip_code", None)
            raise SoftphoneError(f"call_id {placed.call_id} to {number} ended before an answer"
                                 + (f" (SIP {code})" if code else ""))
        winner = lab_call.winner
        if winner is not None and winner.customer is not None and winner.customer.answered.is_set():
            return placed, winner.customer
        await asyncio.sleep(0.05)


def main(report: str | None = None, turn: bool | None = None, step_timeout: float = 10.0,
         debug: bool = False) -> int:
    """``softphone demo``: run the demo in a fresh event loop; the exit status."""
    import click

    options = DemoOptions(report=Path(report) if report else None, turn=turn, step_timeout=step_timeout,
                          echo=click.echo, debug=debug)
    return asyncio.run(run_demo(options))


__all__ = ["STEPS", "DemoOptions", "main", "run_demo"]
