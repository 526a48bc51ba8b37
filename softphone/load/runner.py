"""``softphone load``: N agent sessions in K worker processes, each one asyncio loop.

The parent process owns the run: it reads the scenario and the credentials (a CSV
of launch parameters, a URL template with ``{n}``, or ``--lab``, which starts the
embedded lab in this process with N seeded agents and coturn when installed), spawns
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
either way from what arrived, marked interrupted.  Exit status: 0, or
:data:`~softphone.load.results.EXIT_THRESHOLD_FAILED` when a threshold failed,
1 when the run could not start, 130 when aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import multiprocessing as mp
import os
import queue
import random
import re
import signal
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from softphone.errors import (
    ConfigurationError,
    IceError,
    PlatformError,
    SessionError,
    SipError,
    SoftphoneError,
)
from softphone.load.results import (
    Failure,
    FailureKind,
    Leg,
    QualityPoint,
    Resource,
    Results,
    Session,
    SipLine,
    Snapshot,
    exit_code,
)
from softphone.load.scenario import Scenario, Step, StepKind, parse_scenario
from softphone.load.verdict import ExpectedPrompt, LegAudioCheck, VerdictTicker
from softphone.log import get_logger

log = get_logger(__name__)

EXIT_RUNTIME = 1
EXIT_ABORTED = 130
STATUS_INTERVAL = 1.0
QUALITY_INTERVAL = 5.0
STOP_GRACE = 30.0  # seconds a worker may take to log everyone out after the stop
MAX_LADDER = 60  # SIP messages kept per call for the report's ladder
_CALL_ID = re.compile(r"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(r"^CSeq[ \t]*:[ \t]*\d+[ \t]+(\S+)", re.IGNORECASE | re.MULTILINE)

DEFAULT_SCENARIO = """\
name: steady-bridge
description: agents log in and stay on the bridge call (the default scenario)
play: tone:440
audio: {check: true}
iterations: 1
loop:
  - wait_bridge: {timeout: 15s}
  - talk: {seconds: 86400, name: on_bridge}
thresholds:
  - setup_success > 99.5%
"""


# --- what each agent is given ---------------------------------------------------------


@dataclass(frozen=True)
class AgentSpec:
    """One agent: its number (1..N), a launch URL and/or launch-parameter flags."""

    n: int
    url: str | None = None
    flags: dict[str, str] = field(default_factory=dict)


def specs_from_template(template: str, agents: int) -> list[AgentSpec]:
    """``{n}`` in the URL becomes 1..N (e.g. ``...&username=agent{n}&user_id=10{n:02d}``)."""
    if "{n" not in template:
        raise ConfigurationError("--url-template: needs {n} where the agent number goes")
    try:
        return [AgentSpec(n, url=template.format(n=n)) for n in range(1, agents + 1)]
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigurationError(f"--url-template: {exc}; only {{n}} (e.g. {{n:03d}}) may appear") from None


def specs_from_csv(path: Path, agents: int | None = None) -> list[AgentSpec]:
    """One row per agent; the header names launch parameters (``url`` may hold a whole launch URL)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ConfigurationError(f"--credentials {path}: {exc.strerror or exc}") from exc
    if not rows:
        raise ConfigurationError(f"--credentials {path}: no rows under the header")
    specs = []
    for i, row in enumerate(rows, start=1):
        flags = {k.strip(): v.strip() for k, v in row.items() if k and v not in (None, "") and k.strip() != "url"}
        url = (row.get("url") or "").strip() or None
        specs.append(AgentSpec(i, url=url, flags=flags))
    if agents is not None:
        if agents > len(specs):
            raise ConfigurationError(f"--credentials {path}: {len(specs)} row(s) for {agents} agents")
        specs = specs[:agents]
    return specs


@dataclass(frozen=True)
class WorkerConfig:
    worker: int
    agents: tuple[tuple[AgentSpec, float], ...]  # (spec, start offset in seconds)
    scenario: Scenario
    duration: float
    started_at: float  # time.time() of the run's start (shared clock for all workers)
    campaign_id: int | None = 1
    relay_only: bool = False
    clip_dir: str | None = None
    inject_url: str | None = None  # the lab's POST /lab/inbound, for wait_call {inject: true}
    seed: int = 0


# --- one agent session (in a worker) --------------------------------------------------


def _failure_from(exc: BaseException, step: str, at: float, agent: int, leg: str | None = None) -> Failure:
    """Classify an exception into a failure cause."""
    if isinstance(exc, TimeoutError):
        return Failure(FailureKind.TIMEOUT, step, at, agent, str(exc) or "timed out", leg=leg)
    if isinstance(exc, PlatformError):
        return Failure(FailureKind.HTTP, step, at, agent, exc.message[:200], http_status=exc.status, leg=leg)
    if isinstance(exc, IceError):
        return Failure(FailureKind.ICE, step, at, agent, str(exc)[:200], leg=leg)
    if isinstance(exc, SipError):
        code = getattr(exc, "status_code", None)
        if code is None:
            m = re.search(r"\b([3-6]\d\d)\b", str(exc))
            code = int(m.group(1)) if m else None
        return Failure(FailureKind.SIP, step, at, agent, str(exc)[:200], sip_code=code, leg=leg)
    return Failure(FailureKind.ERROR, step, at, agent, f"{type(exc).__name__}: {exc}"[:200], leg=leg)


def _ice_pair(handler: Any) -> str | None:
    """"local-type host:port <-> remote-type host:port (proto)" of the nominated pair."""
    from softphone.media.peer import selected_candidate_pair  # aioice's internals stay in media.aiortc_seam

    try:
        pair = selected_candidate_pair(handler.pc)
    except Exception:
        return None
    if pair is None:
        return None
    (lh, lp), (rh, rp) = pair.local_address, pair.remote_address
    return f"{pair.local_type} {lh}:{lp} <-> {pair.remote_type} {rh}:{rp} ({pair.local_protocol.lower()})"


class AgentRun:
    """Drives one Agent through the flow and the scenario, recording into the worker's results."""

    def __init__(self, worker: Worker, spec: AgentSpec) -> None:
        self.w = worker
        self.spec = spec
        self.n = spec.n
        self.rng = random.Random(worker.cfg.seed * 100003 + spec.n)
        self.agent: Any = None
        self.state = "new"
        self.registered = False
        self.in_call = False
        self.legs: dict[str, tuple[Leg, LegAudioCheck | None]] = {}
        self.bridge_leg: str | None = None
        self.customer_call: Any = None  # platform Call of the current customer
        self.last_call_id: int | None = None
        self.state_at: dict[str, float] = {}
        self.setup_ok = False
        self.session_cause: str | None = None
        self.logged_out: bool | None = None
        self.unregistered: bool | None = None
        self.ladders: dict[str, list[SipLine]] = {}  # SIP Call-ID -> the call's messages
        self._sip_tapped = False

    def at(self) -> float:
        return time.time() - self.w.cfg.started_at

    # -- recording helpers

    def fail(self, exc: BaseException, step: str, leg: str | None = None) -> Failure:
        failure = _failure_from(exc, step, self.at(), self.n, leg)
        self.w.results.fail(failure)
        log.info("agent %d: %s failed: %s", self.n, step, failure.detail)
        return failure

    # -- the session

    async def run(self, start_offset: float) -> None:
        from softphone.agent.agent import Agent
        from softphone.media.config import IceConfig, MediaConfig
        from softphone.params import load_params

        delay = self.w.cfg.started_at + start_offset - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self.w.stopping:
            return
        started = self.at()
        step = "authorize"
        try:
            params = load_params(self.spec.url, flags=self.spec.flags)
            ca_file = getattr(params.derived, "ca_file", None)
            codec = {"opus": "opus", "pcmu": "PCMU", "pcma": "PCMA", "g722": "G722"}[self.w.cfg.scenario.codec]
            ice = IceConfig.from_params(params, relay_only=self.w.cfg.relay_only, tls_ca_file=ca_file)
            ws_host = urlsplit(params.derived.sip_ws_url).hostname if params.derived.sip_ws_url else None
            media = MediaConfig(ice=ice.loopback_only_for(ws_host),  # all servers local: media on loopback
                                codecs=(codec,), decode=self.w.cfg.scenario.decode)
            self.agent = agent = Agent(params, campaign_id=self.w.cfg.campaign_id, play=self.w.cfg.scenario.play,
                                       media=media, debug=False)
            self._listen(agent)
            self.w.active += 1
            async with agent:
                self.setup_ok = True  # reached READY; the bridge step decides setup success
                await self._loop(agent)
        except asyncio.CancelledError:
            if not self.w.stopping:
                raise
        except SoftphoneError as exc:
            step = self._failed_step(step)
            failure = self.fail(exc, step)
            self.session_cause = failure.cause
            self.setup_ok = False
        except Exception as exc:  # a bug or an unexpected library error: count it, keep the run going
            log.exception("agent %d crashed", self.n)
            failure = self.fail(exc, self._failed_step(step))
            self.session_cause = failure.cause
            self.setup_ok = False
        finally:
            if self.agent is not None:
                self.w.active -= 1
            self._end_legs()
            ok = self.setup_ok and self.bridge_leg is not None and self.session_cause is None
            self.w.results.sessions.append(Session(
                self.n, ok, started, None if ok else (self.session_cause or "no bridge call"),
                logged_out=self.logged_out, unregistered=self.unregistered if self.registered or
                self.unregistered else None))

    def _failed_step(self, default: str) -> str:
        return {"authorizing": "authorize", "provisioning": "extension", "registering": "register",
                "logging_in": "login", "ready": "scenario"}.get(self.state, default)

    def _listen(self, agent: Any) -> None:
        agent.on("state", self._on_state)
        agent.on("registered", self._on_registered)
        agent.on("unregistered", self._on_unregistered)
        agent.on("logged_in", lambda ev: setattr(self, "logged_out", False))
        agent.on("logged_out", self._on_logged_out)
        agent.on("call_incoming", self._on_incoming)
        agent.on("call_answered", self._on_answered)
        agent.on("call_ended", self._on_ended)
        agent.on("error", self._on_error)

    def _on_error(self, ev: Any) -> None:
        """Agent errors are recorded where they surface (the step that failed); a handler of
        ours raising shows here as an exception, which must not go unseen."""
        if isinstance(ev, BaseException):
            log.error("agent %d: event handler failed: %r", self.n, ev)

    def _on_unregistered(self, ev: Any) -> None:
        self.registered = False
        self.unregistered = True

    def _on_logged_out(self, ev: Any) -> None:
        if not getattr(ev, "stale", False):
            self.logged_out = True

    def _on_state(self, ev: Any) -> None:
        now = time.monotonic()
        self.state = ev.state
        self.state_at[ev.state] = now
        if ev.previous == "authorizing":
            self.w.results.latency("authorize", now - self.state_at["authorizing"], at=self.at(), agent=self.n)

    def _on_registered(self, ev: Any) -> None:
        self.registered = True
        self.unregistered = False
        self._registered()
        if not self._sip_tapped and self.agent is not None and self.agent.ua is not None:
            self._sip_tapped = True
            self._tap_sip(self.agent.ua.transport)

    # -- the SIP ladder of each call (messages are few: a regex per message is cheap)

    def _tap_sip(self, transport: Any) -> None:
        """Both directions as text, before the stack handles them (so the ladder is in wire order)."""
        send, receive = transport.send_text, transport.receive_text

        def send_text(text: str) -> None:
            self._sip_text(text, "->")
            send(text)

        def receive_text(text: str) -> None:
            self._sip_text(text, "<-")
            receive(text)

        transport.send_text = send_text
        transport.receive_text = receive_text

    def _ladder_line(self, call_id: str | None, summary: str, direction: str, invite: bool) -> None:
        if not call_id:
            return
        ladder = self.ladders.get(call_id)
        if ladder is None:
            if not invite:
                return  # REGISTER and other dialogs: not a call
            ladder = self.ladders[call_id] = []
        if len(ladder) < MAX_LADDER:
            ladder.append(SipLine(self.at(), direction, summary))

    def _sip_text(self, text: str, direction: str) -> None:
        if len(text) < 16:
            return  # keep-alive CRLFs
        try:
            first = text.split("\r\n", 1)[0]
            m = _CALL_ID.search(text)
            if first.startswith("SIP/2.0 "):
                summary = first[8:]
                cseq = _CSEQ.search(text)
                if cseq:
                    summary += f" ({cseq.group(1)})"
                invite = False
            else:
                summary = first.split(" ", 1)[0]
                invite = summary == "INVITE"
            self._ladder_line(m.group(1) if m else None, summary[:80], direction, invite)
        except Exception:  # the ladder is a report nicety: never break the SIP path
            log.debug("agent %d: ladder line failed", self.n, exc_info=True)

    def _registered(self) -> None:
        t = self.state_at.get("registering")
        if t is not None and "register_done" not in self.state_at:
            self.state_at["register_done"] = time.monotonic()
            self.w.results.latency("register", time.monotonic() - t, at=self.at(), agent=self.n)

    def _on_incoming(self, ev: Any) -> None:
        leg = Leg(leg=f"a{self.n}-{ev.call_id[:12]}", agent=self.n, kind="bridge" if ev.bridge else "inbound",
                  started=self.at(), codec=self.w.cfg.scenario.codec)
        leg.sip = self.ladders.setdefault(ev.call_id, [SipLine(self.at(), "<-", "INVITE")])
        self.legs[ev.call_id] = (leg, None)
        if ev.bridge:
            self.bridge_leg = ev.call_id
        self.w.calls += 1
        call = self.agent.call if self.agent is not None else None
        if call is not None and call.call_id == ev.call_id:
            self.w.spawn(self._watch_ice(call, leg))

    async def _watch_ice(self, call: Any, leg: Leg) -> None:
        t0 = time.monotonic()
        while call.handler is None and call.is_live and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        handler = call.handler
        if handler is None:
            return
        done = asyncio.get_running_loop().create_future()

        def on_state(state: str) -> None:
            if state in ("connected", "failed") and not done.done():
                done.set_result(state)

        handler.on("connection_state", on_state)
        if handler.pc.connectionState in ("connected", "failed"):
            on_state(handler.pc.connectionState)
        try:
            state = await asyncio.wait_for(done, 30)
        except TimeoutError:
            return
        finally:
            handler.remove_listener("connection_state", on_state)
        if state == "connected":
            self.w.results.latency("ice_connected", time.monotonic() - t0, at=self.at(), agent=self.n)
            leg.ice_pair = _ice_pair(handler)
        else:
            leg.failure = "ICE failed"
            self.w.results.fail(Failure(FailureKind.ICE, "ice", self.at(), self.n, "ICE failed", leg=leg.leg))

    def _on_answered(self, ev: Any) -> None:
        entry = self.legs.get(ev.call_id)
        if entry is None:
            return
        leg, _ = entry
        leg.answered = self.at()
        self.in_call = True
        if ev.bridge and "logging_in" in self.state_at:
            self.w.results.latency("login_to_bridge", time.monotonic() - self.state_at["logging_in"],
                                   at=self.at(), agent=self.n)
        call = self.agent.call
        check = None
        if call is not None and call.call_id == ev.call_id and self.w.cfg.scenario.audio.check:
            check = self._attach_check(call, leg)
        self.legs[ev.call_id] = (leg, check)
        if call is not None and call.call_id == ev.call_id:
            self.w.spawn(self._watch_audio(call, leg, check, ev.bridge))

    def _attach_check(self, call: Any, leg: Leg) -> LegAudioCheck | None:
        handler = call.handler
        receiver = getattr(handler, "receiver", None)
        audio = self.w.cfg.scenario.audio
        try:
            expect = expected_prompt(audio.expect, self.w.cfg.scenario.codec) if audio.expect else None
            check = LegAudioCheck(self.w.cfg.scenario.codec, leg=leg.leg, expect=expect, gap=audio.gap,
                                  keep=audio.keep, clip_dir=Path(self.w.cfg.clip_dir) if self.w.cfg.clip_dir else None)
            check.attach(receiver)
        except ConfigurationError as exc:
            log.warning("agent %d: no audio verdict for %s: %s", self.n, leg.leg, exc)
            return None
        self.w.ticker.add(check)
        return check

    async def _watch_audio(self, call: Any, leg: Leg, check: LegAudioCheck | None, bridge: bool) -> None:
        """First audio packet latency, then quality samples every few seconds while the call lasts."""
        answered = time.monotonic()
        if check is not None:
            while check.first_packet is None and call.is_live and time.monotonic() - answered < 30:
                await asyncio.sleep(0.02)
            if check.first_packet is not None:
                self.w.results.latency("first_audio", check.first_packet - answered, at=self.at(), agent=self.n)
                if bridge and "logging_in" in self.state_at:
                    self.w.results.latency("login_to_audio", check.first_packet - self.state_at["logging_in"],
                                           at=self.at(), agent=self.n)
        while call.is_live:
            await asyncio.sleep(QUALITY_INTERVAL)
            if not call.is_live:
                break
            with contextlib.suppress(Exception):
                q = await call.stats()
                leg.quality.append(QualityPoint(self.at(), q.loss_fraction, q.jitter_ms, q.rtt_ms, q.mos))
                leg.loss, leg.jitter_ms, leg.rtt_ms, leg.mos = q.loss_fraction, q.jitter_ms, q.rtt_ms, q.mos
                leg.packets_received = q.packets_received

    def _on_ended(self, ev: Any) -> None:
        entry = self.legs.pop(ev.call_id, None)
        if entry is None:
            return
        leg, check = entry
        leg.sip.append(SipLine(self.at(), "--", f"ended: {ev.cause}" + (f" ({ev.sip_code})" if ev.sip_code else "")))
        self.ladders.pop(ev.call_id, None)  # the leg keeps its list
        self._finish_leg(leg, check)
        self.in_call = any(e[0].answered is not None for e in self.legs.values())

    def _finish_leg(self, leg: Leg, check: LegAudioCheck | None) -> None:
        leg.ended = self.at()
        if check is not None:
            self.w.ticker.remove(check)
            verdict = check.finish()
            leg.audio = verdict.to_dict()
            leg.clip = str(verdict.clip) if verdict.clip else None
            if verdict.failed and not self.w.stopping_at_end(leg):
                kind = {"one_way": FailureKind.ONE_WAY, "silent_gaps": FailureKind.SILENT_GAP}.get(
                    verdict.status.value, FailureKind.PROMPT)
                failure = Failure(kind, "audio", self.at(), self.n, verdict.reason, leg=leg.leg)
                self.w.results.fail(failure)
                leg.failure = leg.failure or failure.cause
        self.w.results.legs.append(leg)

    def _end_legs(self) -> None:
        calls = {c.call_id: c for c in (self.agent.calls if self.agent is not None else [])}
        for call_id, (leg, check) in list(self.legs.items()):
            call = calls.get(call_id)
            cause = getattr(call, "end_cause", None) or "session ended"
            leg.sip.append(SipLine(self.at(), "--", f"ended: {cause}"))
            self._finish_leg(leg, check)
        self.legs.clear()

    # -- the scenario

    async def _loop(self, agent: Any) -> None:
        scenario = self.w.cfg.scenario
        iteration = 0
        while not self.w.stopping and (scenario.iterations is None or iteration < scenario.iterations):
            iteration += 1
            for step in scenario.passes(self.rng, iteration):
                if self.w.stopping:
                    return
                try:
                    await self._step(agent, step, iteration)
                except asyncio.CancelledError:
                    raise
                except (SoftphoneError, TimeoutError) as exc:
                    failure = self.fail(exc, step.name)
                    if step.kind is StepKind.WAIT_BRIDGE:
                        self.session_cause = failure.cause
                        return  # no bridge call: nothing else in the loop can work
                    if step.kind is StepKind.DIAL:
                        break  # no customer: skip to the next pass
        # the scenario is done: stay logged in until the run ends (the duration decides)
        while not self.w.stopping:
            await asyncio.sleep(0.5)

    async def _step(self, agent: Any, step: Step, iteration: int) -> None:
        kind = step.kind
        timeout = step.timeout
        if kind is StepKind.WAIT_BRIDGE:
            await agent.wait_for_call(timeout=timeout)
        elif kind is StepKind.THINK:
            await self._sleep(step.seconds.draw(self.rng))
        elif kind is StepKind.TALK:
            call = agent.call
            if call is not None and step.play:
                call.play(step.play)
            recording = None
            if self.customer_call is not None and step.record and self.rng.random() < step.record:
                with contextlib.suppress(PlatformError):
                    recording = await agent.start_recording(self.customer_call.call_id)
            await self._sleep(step.seconds.draw(self.rng))
            if recording is not None and self.customer_call is not None:
                with contextlib.suppress(PlatformError):
                    await agent.stop_recording(self.customer_call.call_id)
        elif kind is StepKind.DIAL:
            number = step.dial_number(self.n, iteration)
            t0 = time.monotonic()
            placed = await asyncio.wait_for(agent.dial(number, outbound_cli=step.caller_id), timeout)
            self.customer_call = placed
            self.last_call_id = placed.call_id
            self.w.calls += 1
            await self._wait_answered(agent, placed.call_id, timeout - (time.monotonic() - t0) if timeout else None)
            self.w.results.latency("outbound_answered", time.monotonic() - t0, at=self.at(), agent=self.n)
        elif kind is StepKind.WAIT_CALL:
            t0 = time.monotonic()
            if step.inject:
                await self._inject_inbound(agent, iteration)
            call_id = await self._wait_inbound(agent, timeout)
            self.last_call_id = call_id
            self.w.calls += 1
            del t0
        elif kind is StepKind.DTMF:
            call = agent.call
            if call is None:
                raise TimeoutError("dtmf: no live call")
            await asyncio.wait_for(call.send_dtmf(step.digits, method=step.method,
                                                  gap_ms=int(step.interval * 1000)), timeout)
        elif kind is StepKind.EXPECT_AUDIO:
            call = agent.call
            if call is None:
                raise TimeoutError("expect_audio: no live call")
            if step.expect and step.expect.startswith("tone:"):
                await call.wait_for_tone(float(step.expect[5:]), timeout=timeout)
            else:
                log.warning("agent %d: expect_audio %r: only tone:HZ is checked live; skipped", self.n, step.expect)
        elif kind is StepKind.HOLD:
            seconds = step.seconds.draw(self.rng)
            check = self._live_check(agent)
            if check is not None:
                check.pause()  # silence on hold is expected, not a gap
            try:
                if self.customer_call is not None:
                    await asyncio.wait_for(agent.hold_call(self.customer_call.call_id), timeout)
                    await self._sleep(seconds)
                    await asyncio.wait_for(agent.retrieve_call(self.customer_call.call_id), timeout)
                elif agent.call is not None:
                    await asyncio.wait_for(agent.call.hold(), timeout)
                    await self._sleep(seconds)
                    await asyncio.wait_for(agent.call.unhold(), timeout)
            finally:
                if check is not None:
                    check.resume()
        elif kind is StepKind.HANGUP:
            if self.customer_call is not None:
                await asyncio.wait_for(agent.hangup_call(self.customer_call.call_id), timeout)
                self.customer_call = None
        elif kind is StepKind.DISPOSE:
            if self.last_call_id is not None:
                await asyncio.wait_for(agent.dispose(self.last_call_id, step.code), timeout)

    def _live_check(self, agent: Any) -> LegAudioCheck | None:
        """The audio verdict of the agent's live call, if it has one."""
        call = agent.call
        entry = self.legs.get(call.call_id) if call is not None else None
        return entry[1] if entry is not None else None

    async def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.w.stopping and time.monotonic() < end:
            await asyncio.sleep(min(0.5, end - time.monotonic()))

    async def _wait_answered(self, agent: Any, call_id: int, timeout: float | None) -> None:
        async def poll() -> None:
            while True:
                calls = await agent.active_calls()
                mine = next((c for c in calls if c.call_id == call_id), None)
                if mine is not None and mine.is_answered:
                    return
                if mine is None:
                    raise SessionError(f"call {call_id} ended before it was answered")
                await asyncio.sleep(0.25)

        await asyncio.wait_for(poll(), timeout)

    async def _inject_inbound(self, agent: Any, iteration: int) -> None:
        url = self.w.cfg.inject_url
        if not url:
            raise ConfigurationError("wait_call {inject: true} needs the lab (--lab)")
        import aiohttp

        body = {"user_id": agent.params.user_id, "phone_number": f"+1666{self.n:04d}{iteration % 100:02d}"}
        headers = {"Authorization": "Key=" + agent.params.auth_key.reveal()}
        async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as resp:
            if resp.status >= 400:
                raise PlatformError(f"lab inbound: {await resp.text()}"[:200], status=resp.status)

    async def _wait_inbound(self, agent: Any, timeout: float | None) -> int:
        async def poll() -> int:
            while True:
                for c in await agent.active_calls():
                    if (c.direction or "").startswith("in") and c.is_answered:
                        self.customer_call = c
                        return c.call_id
                await asyncio.sleep(0.25)

        return await asyncio.wait_for(poll(), timeout)


_prompts: dict[tuple[str, str], ExpectedPrompt | None] = {}


def expected_prompt(expect: str, codec: str) -> ExpectedPrompt | None:
    """The scenario's ``audio.expect`` as the verdict checks it (built once per process).

    ``tone:HZ``: a Goertzel check.  A file: the payload fingerprints of that file encoded
    for ``codec`` by the lean path's encoder (what a far end sending it pre-encoded, as
    the lab's dialer does, puts on the wire).
    """
    key = (expect, codec)
    if key not in _prompts:
        prompt = ExpectedPrompt.from_source(expect)
        if prompt is None:
            from softphone.media.lean import codec_spec, shared_cache

            audio = shared_cache().get(expect, codec_spec(codec))
            prompt = ExpectedPrompt.encoded(audio.payloads, codec, label=Path(expect).name)
        _prompts[key] = prompt
    return _prompts[key]


# --- a worker process -----------------------------------------------------------------


def _pss_bytes() -> int | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class Worker:
    """One process's agents, status reporting and results."""

    def __init__(self, cfg: WorkerConfig, out: Any, stop: Any) -> None:
        self.cfg = cfg
        self.out = out
        self.stop_event = stop
        self.results = Results(cfg.scenario.name, started_at=cfg.started_at, agents=len(cfg.agents))
        self.runs = [AgentRun(self, spec) for spec, _ in cfg.agents]
        self.ticker = VerdictTicker()
        self.stopping = False
        self.active = 0
        self.calls = 0
        self.loop_lag_ms = 0.0
        self._tasks: set[asyncio.Task] = set()
        self._end_at = cfg.started_at + cfg.duration

    def stopping_at_end(self, leg: Leg) -> bool:
        """A leg cut by the run's own end is not an audio failure (its last seconds are teardown)."""
        return self.stopping and leg.kind == "bridge" and (leg.audio or {}).get("status") == "silent_gaps" \
            and all(g["start"] + g["seconds"] >= (leg.ended or 0) - leg.started - 1.5
                    for g in (leg.audio or {}).get("gaps", []))

    def spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def status(self) -> dict[str, Any]:
        failures = Counter(f.cause for f in self.results.failures)
        return {
            "worker": self.cfg.worker, "at": time.time() - self.cfg.started_at, "active": self.active,
            "registered": sum(r.registered for r in self.runs), "in_call": sum(r.in_call for r in self.runs),
            "calls": self.calls, "failures": dict(failures), "cpu_s": time.process_time(),
            "pss_bytes": _pss_bytes(), "loop_lag_ms": self.loop_lag_ms,
        }

    async def _lag_probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.1)
            lag = (loop.time() - t - 0.1) * 1000.0
            self.loop_lag_ms = max(self.loop_lag_ms, lag)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL)
            s = self.status()
            self.results.resources.append(Resource(s["at"], self.cfg.worker, s["cpu_s"], s["pss_bytes"],
                                                   s["loop_lag_ms"], s["active"]))
            self.loop_lag_ms = 0.0
            self.out.put(("status", self.cfg.worker, s))

    async def run(self) -> None:
        # The idle baseline (imports done, no agent yet): what an agent costs is measured above it.
        self.results.resources.append(Resource(time.time() - self.cfg.started_at, self.cfg.worker,
                                               time.process_time(), _pss_bytes(), 0.0, 0))
        probes = [self.spawn(self._lag_probe()), self.spawn(self._report())]
        sessions = [asyncio.create_task(run.run(offset)) for run, (_, offset) in zip(self.runs, self.cfg.agents,
                                                                                       strict=True)]
        try:
            while time.time() < self._end_at and not self.stop_event.is_set():
                if all(t.done() for t in sessions):
                    break
                await asyncio.sleep(0.2)
            self.stopping = True
            for run in self.runs:
                if run.agent is not None:
                    run.agent.request_stop("load run ended")
            done, pending = await asyncio.wait(sessions, timeout=STOP_GRACE)
            for task in pending:
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error("agent session ended with %r", task.exception())
        finally:
            self.results.duration = time.time() - self.cfg.started_at
            self.results.interrupted = self.stop_event.is_set()
            s = self.status()
            self.results.resources.append(Resource(s["at"], self.cfg.worker, s["cpu_s"], s["pss_bytes"],
                                                   s["loop_lag_ms"], 0))
            for task in probes:
                task.cancel()
            self.ticker.close()


def worker_main(cfg: WorkerConfig, out: Any, stop: Any) -> None:
    """Entry point of a worker process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; a second Ctrl-C terminates us
    # Import the agent stack before the loop starts, so the import is not counted as loop lag.
    import softphone.agent.agent
    import softphone.media.description_handler  # noqa: F401
    worker = Worker(cfg, out, stop)
    try:
        asyncio.run(worker.run())
    except Exception as exc:  # report, never hang the parent
        log.exception("worker %d failed", cfg.worker)
        out.put(("error", cfg.worker, f"{type(exc).__name__}: {exc}"))
    out.put(("results", cfg.worker, json.dumps(worker.results.to_dict(), default=str)))


# --- the parent -----------------------------------------------------------------------


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
    """The embedded lab with N load agents; with coturn (when installed) all media is relayed
    through it on loopback, on both sides, as agents behind TURN do.  Returns the lab, the
    agents, the inbound-call URL and whether media is relayed."""
    import shutil

    from softphone.lab.server import start_lab

    seed_path, ids = _seed_file(options.agents, workdir)
    turn = shutil.which("turnserver") is not None
    server = await start_lab(db_url="sqlite:///:memory:", seed=str(seed_path), turn=turn, relay_only=turn)
    specs = []
    for n, uid in enumerate(ids, start=1):
        flags = server.launch_params(uid, secure=False)
        specs.append(AgentSpec(n, flags=flags))
    return server, specs, server.url + "/lab/inbound", turn


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
                           relay_only, str(clip_dir), inject_url, options.seed)
        p = ctx.Process(target=worker_main, args=(cfg, out_q, stop), name=f"softphone-load-{k}", daemon=False)
        p.start()
        procs.append(p)
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
        for p in procs:
            p.join(timeout=STOP_GRACE if not aborted else 5)
            if p.is_alive():
                p.kill()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
        if lab is not None:
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
                    loop_lag_ms=max((s["loop_lag_ms"] for s in statuses.values()), default=0.0))
    return snap, wstat
