"""One agent's session in a load worker: the Webphone flow, then the scenario's loop.

:class:`AgentRun` drives one :class:`~softphone.agent.agent.Agent` (authorize,
extension, register, login, bridge call, audio), then the scenario's steps until the
run ends, and records into its worker's :class:`~softphone.load.results.Results`:
latencies of each stage, failures classified by cause, and one
:class:`~softphone.load.results.Leg` per call with its SIP ladder, ICE pair, quality
samples and live audio verdict (:mod:`softphone.load.verdict`), and, for a sample of talk
steps, the file of what the agent heard (:class:`~softphone.load.results.Recording`).  Locust users
(:mod:`softphone.locust`) run the same class.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from softphone.errors import (
    ConfigurationError,
    IceError,
    PlatformError,
    SessionError,
    SipError,
    SoftphoneError,
)
from softphone.load.credentials import AgentSpec
from softphone.load.results import Failure, FailureKind, Leg, QualityPoint, Recording, Session, SipLine
from softphone.load.scenario import Step, StepKind
from softphone.load.verdict import ExpectedPrompt, LegAudioCheck, recording_suffix, write_recording
from softphone.log import get_logger

if TYPE_CHECKING:
    from softphone.load.worker import Worker

log = get_logger(__name__)

QUALITY_INTERVAL = 5.0
MAX_LADDER = 60  # SIP messages kept per call for the report's ladder
_CALL_ID = re.compile(r"^(?:Call-ID|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ = re.compile(r"^CSeq[ \t]*:[ \t]*\d+[ \t]+(\S+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class _LocalRecording:
    """A talk step being recorded: the tap keeping the payloads and what the result will say."""

    check: LegAudioCheck
    own: bool            # a tap only for the recording (the scenario checks no audio): removed after
    leg: str | None
    started: float
    call_id: int | None  # the customer call on the line, if any


class CallNotAnswered(SessionError):
    """A dialled call ended before it was answered (busy, no answer, declined...).

    The voice API only says the call is gone; why is in the platform's call-end record
    (its ``sip_code``), which the runner adds when it has it (the embedded lab)."""

    def __init__(self, call_id: int) -> None:
        super().__init__(f"call {call_id} ended before it was answered")
        self.call_id = call_id


def _failure_from(exc: BaseException, step: str, at: float, agent: int, leg: str | None = None) -> Failure:
    """Classify an exception into a failure cause."""
    if isinstance(exc, CallNotAnswered):
        return Failure(FailureKind.NOT_ANSWERED, step, at, agent, str(exc), leg=leg, call_id=exc.call_id)
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
        self._recorded: dict[int, int] = {}  # pass -> recordings saved in it
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
            sampled = bool(step.record) and self.rng.random() < step.record
            if sampled and self.customer_call is not None:  # the platform records the customer call
                with contextlib.suppress(PlatformError):
                    recording = await agent.start_recording(self.customer_call.call_id)
            local = self._start_local_recording(agent) if sampled else None  # and the agent what it hears
            try:
                await self._sleep(step.seconds.draw(self.rng))
            finally:
                if local is not None:
                    await self._save_local_recording(local, step, iteration)
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

    # -- recording a sample of talk steps (what the agent heard, saved still encoded)

    def _start_local_recording(self, agent: Any) -> _LocalRecording | None:
        """Start keeping the live leg's received payloads, through its audio verdict's packet tap
        (or a tap of its own when the scenario checks no audio)."""
        directory = self.w.cfg.recording_dir
        call = agent.call
        if not directory or call is None:
            return None
        entry = self.legs.get(call.call_id)
        leg = entry[0].leg if entry is not None else None
        check = entry[1] if entry is not None else None
        own = check is None
        if check is None:
            try:
                check = LegAudioCheck(self.w.cfg.scenario.codec, leg=leg or f"a{self.n}")
                check.attach(getattr(call.handler, "receiver", None))
            except ConfigurationError as exc:
                log.warning("agent %d: cannot record %s: %s", self.n, leg, exc)
                return None
            self.w.ticker.add(check)
        check.start_recording()
        customer = self.customer_call.call_id if self.customer_call is not None else None
        return _LocalRecording(check, own, leg, self.at(), customer)

    async def _save_local_recording(self, rec: _LocalRecording, step: Step, iteration: int) -> None:
        check = rec.check
        payloads, seqs = check.take_recording()
        if rec.own:
            self.w.ticker.remove(check)
            check.detach()
        if not payloads:
            log.info("agent %d: nothing received to record in %s (pass %d)", self.n, step.name, iteration)
            return
        k = self._recorded[iteration] = self._recorded.get(iteration, 0) + 1
        name = f"agent-{self.n}-{iteration}" + (f"-{k}" if k > 1 else "") + recording_suffix(check.codec)
        path = Path(self.w.cfg.recording_dir or ".") / name
        try:  # file I/O and a PyAV call per packet: off the event loop
            await asyncio.get_running_loop().run_in_executor(None, write_recording, path, payloads, seqs,
                                                             check.codec)
        except Exception as exc:  # a recording is a sample: the run goes on without it
            log.warning("agent %d: recording %s not saved: %s", self.n, name, exc)
            return
        self.w.results.recordings.append(Recording(
            str(path), self.n, iteration, step.name, rec.leg, rec.started, self.at() - rec.started,
            len(payloads), rec.call_id))

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
                    raise CallNotAnswered(call_id)
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
