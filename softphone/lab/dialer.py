"""The lab's real telephony: bridge calls to registered phones, simulated customers, real audio.

:class:`SipTelephony` implements :class:`~softphone.lab.telephony.Telephony`
over a :class:`~softphone.lab.telephony.PhoneDirectory` (the lab's SIP edge):

* login INVITEs the agent's registered extension from the lab's own aiortc
  endpoint (:class:`~softphone.lab.bridge.AgentBridge`); the phone hears the
  prompt until a customer is on the line, and the lab records what the phone
  sends when ``recordings_dir`` is set.  Not registered, refused or
  unanswered: :class:`~softphone.errors.TelephonyError` naming why (the
  REST layer answers 409 ``{"success": false, "detail": ...}``); logout BYEs;
* an outbound call INVITEs the customer over the lab's PSTN trunk
  (:class:`~softphone.lab.customers.PstnGateway`, real SIP, in-process media);
  shotgun dials every number at once, the first answer wins and the other
  legs are CANCELled; the customer's answer, busy/no-answer/reject and
  hang-up reach the REST layer through :class:`~softphone.lab.telephony.TelephonyEvents`;
* hold re-INVITEs the customer leg (sendonly) and silences both directions,
  retrieve restores them; a second call while one is up is a conference
  (the agent hears the mix, every customer hears the agent); connect joins
  two customers (each hears the other) and drops the agent;
* an injected inbound call (``POST /lab/inbound``) is a customer INVITE
  arriving on the trunk, answered by the lab and bridged to the agent at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from softphone.errors import ConfigurationError, SessionError, SipError, TelephonyError
from softphone.lab.bridge import AgentBridge, pcm_source
from softphone.lab.customers import Customer, CustomerTable, PstnGateway
from softphone.lab.telephony import CallInfo, CallState, PhoneDirectory, TelephonyEvents
from softphone.log import get_logger
from softphone.media.config import MediaConfig
from softphone.sip.session import SessionState
from softphone.sip.timers import Timers

log = get_logger(__name__)

#: recordings are 8 kHz mono WAV, as a phone system keeps them (16 KB a second)
RECORDING_RATE = 8000


@dataclass
class TelephonyOptions:
    """How the lab's phone system behaves.

    ``prompt``: what an agent hears on the bridge call with no customer
    ("tone:HZ" or an audio file); ``hold_music``: what a held customer hears
    ("silence", the default, "tone:HZ" or an audio file).  ``recordings_dir``: where bridge-call and
    call recordings go (None: nothing is recorded); ``recording_base_url``:
    the URL prefix they are served under.  ``decode``: decode what the agents
    send, needed for recordings and for customers that listen or echo; None (the
    default) decodes only when there is a recordings directory or such a customer
    in the table, else the lab only counts the agents' packets (the lean path).  ``answer_timeout``: a bridge call
    not answered within it fails the login.  ``ring_wait``: how long a dial
    request waits for the customer to answer (it then answers ``answered``; a
    customer still ringing gives ``ringing``, its answer is reported later).
    ``no_answer_timeout``: the lab CANCELs a customer leg still ringing after it.
    """

    prompt: str = "tone:440"
    hold_music: str = "silence"
    recordings_dir: Path | None = None
    recording_base_url: str = "http://127.0.0.1/recordings"
    customers: CustomerTable = field(default_factory=CustomerTable)
    media: MediaConfig = field(default_factory=MediaConfig)
    caller_id: str = "omnisense"
    display_name: str = "OmniSense"
    decode: bool | None = None
    answer_timeout: float = 30.0
    ring_wait: float = 2.0
    no_answer_timeout: float = 60.0
    trunk_timers: Timers | None = None

    def __post_init__(self) -> None:
        from softphone.lab.customers import parse_play

        if self.prompt in ("echo",):
            raise ConfigurationError("prompt: must be \"tone:HZ\", \"silence\" or an audio file, not echo")
        self.prompt = parse_play("prompt", self.prompt)
        if self.hold_music == "echo":
            raise ConfigurationError("hold_music: must be \"silence\", \"tone:HZ\" or an audio file, not echo")
        self.hold_music = parse_play("hold_music", self.hold_music)
        if self.recordings_dir is not None:
            self.recordings_dir = Path(self.recordings_dir)
            if not self.recordings_dir.is_dir():
                raise ConfigurationError(f"recordings_dir: {self.recordings_dir} is not a directory")
        self.recording_base_url = self.recording_base_url.rstrip("/")
        if self.decode is None:
            self.decode = self.recordings_dir is not None or self.customers.needs_agent_audio()
        for name in ("answer_timeout", "ring_wait", "no_answer_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name}: must be > 0 seconds, got {getattr(self, name)!r}")


@dataclass
class Leg:
    """One customer leg of a lab call (a shotgun call has several while ringing)."""

    number: str
    session: Any  # Inviter (outbound) or Invitation (inbound), on the trunk
    customer: Customer | None = None
    status: int | None = None


class Phase(enum.Enum):
    """Where one lab call is, as the phone system sees it."""

    DIALING = "dialing"      # its legs ring (several for a shotgun)
    ANSWERED = "answered"    # one customer is bridged to the agent
    CONNECTED = "connected"  # joined to another customer, the agent gone
    ENDING = "ending"        # the REST layer hangs it up: nothing more is reported
    ENDED = "ended"


#: The one table of phase moves.
PHASE_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.DIALING: frozenset({Phase.ANSWERED, Phase.ENDING, Phase.ENDED}),
    Phase.ANSWERED: frozenset({Phase.CONNECTED, Phase.ENDING, Phase.ENDED}),
    Phase.CONNECTED: frozenset({Phase.ENDING, Phase.ENDED}),
    Phase.ENDING: frozenset({Phase.ENDED}),
    Phase.ENDED: frozenset(),
}


@dataclass
class LabCall:
    info: CallInfo
    legs: list[Leg] = field(default_factory=list)
    winner: Leg | None = None
    phase: Phase = Phase.DIALING
    connected_to: LabCall | None = None  # CONNECTED: the other customer's call
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # answered, or every leg failed
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def call_id(self) -> int:
        return self.info.call_id

    @property
    def ending(self) -> bool:
        """The REST layer ended it (or it is over): report nothing more."""
        return self.phase in (Phase.ENDING, Phase.ENDED)

    def move(self, phase: Phase) -> bool:
        """Move to ``phase`` if :data:`PHASE_MOVES` allows it; whether it moved."""
        if phase is self.phase:
            return False
        if phase not in PHASE_MOVES[self.phase]:
            log.debug("call %d: %s -> %s ignored", self.call_id, self.phase.value, phase.value)
            return False
        log.debug("call %d: %s -> %s", self.call_id, self.phase.value, phase.value)
        self.phase = phase
        return True


class SipTelephony:
    """:class:`~softphone.lab.telephony.Telephony` with SIP and audio (see the module docstring)."""

    def __init__(self, directory: PhoneDirectory, options: TelephonyOptions | None = None) -> None:
        self.directory = directory
        self.options = options or TelephonyOptions()
        self.gateway = PstnGateway(self.options.customers, timers=self.options.trunk_timers)
        self.bridges: dict[int, AgentBridge] = {}
        self.calls: dict[int, LabCall] = {}
        self.bridge_recordings: dict[int, Path] = {}
        self._sink: TelephonyEvents | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._recorders: dict[tuple[str, int], Any] = {}  # ("bridge", user_id) / ("call", call_id)
        directory.on("unregistered", self._on_unregistered)

    # --- plumbing ------------------------------------------------------------------------

    def attach(self, sink: TelephonyEvents) -> None:
        self._sink = sink

    @property
    def recordings_dir(self) -> Path | None:
        return self.options.recordings_dir

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if not self._started:
                await self.gateway.start()
                self._started = True

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _report(self, call: LabCall, state: CallState, sip_code: int | None = None,
                phone_number: str | None = None) -> None:
        if call.ending or self._sink is None:
            return
        log.info("call %d: %s%s", call.call_id, state.value, f" ({sip_code})" if sip_code else "")
        self._spawn(self._deliver(call.call_id, state, sip_code, phone_number))

    async def _deliver(self, call_id: int, state: CallState, sip_code: int | None,
                       phone_number: str | None) -> None:
        assert self._sink is not None
        try:
            await self._sink.call_state_changed(call_id, state, sip_code, phone_number)
        except Exception:
            log.exception("reporting call %d %s failed", call_id, state.value)

    def _bridge(self, user_id: int) -> AgentBridge:
        bridge = self.bridges.get(user_id)
        if bridge is None or bridge.closing:
            raise TelephonyError(f"user {user_id} has no bridge call")
        return bridge

    def _call(self, info: CallInfo) -> LabCall:
        call = self.calls.get(info.call_id)
        if call is None:
            raise TelephonyError(f"call {info.call_id} is not up in the phone system")
        return call

    # --- the bridge call ---------------------------------------------------------------

    async def on_login(self, user_id: int, extension: str, campaign_id: int) -> None:
        opts = self.options
        if not self.directory.is_registered(extension):
            raise TelephonyError(f"extension {extension} is not registered")
        old = self.bridges.pop(user_id, None)
        if old is not None:
            await self._end_bridge(old)
        bridge = AgentBridge(user_id, extension, prompt=opts.prompt, media=opts.media, decode=bool(opts.decode),
                             hold_music=opts.hold_music)
        inviter = self.directory.inviter(extension, bridge.handler_factory(), caller_id=opts.caller_id,
                                         display_name=opts.display_name,
                                         extra_headers=[("X-Campaign-Id", str(campaign_id))])
        inviter.no_answer_timeout = opts.answer_timeout
        bridge.bind(inviter)
        if bridge.handler is not None:
            bridge.handler.on("connection_state", lambda state: state == "failed" and log.warning(
                "bridge call to extension %s: media connection failed (ICE/DTLS)", extension))
            bridge.handler.on("dtmf", lambda event: self._spawn(self._agent_dtmf(bridge, event.digit)))
        inviter.on("dtmf", lambda event, *_: self._spawn(
            self._agent_dtmf(bridge, getattr(event, "digit", event))))
        if opts.recordings_dir is not None and opts.decode:
            from softphone.media.recorder import Recorder

            path = opts.recordings_dir / f"bridge-{extension}-{user_id}-{int(time.time())}.wav"
            recorder = Recorder(path, rate=RECORDING_RATE)
            bridge.add_listener("bridge-recording", recorder.write)
            self._recorders[("bridge", user_id)] = recorder
            self.bridge_recordings[user_id] = path
        try:
            await inviter.invite()
        except SipError as exc:
            self._close_recorder(("bridge", user_id))
            stray = self.bridge_recordings.pop(user_id, None)
            if stray is not None:
                stray.unlink(missing_ok=True)  # no bridge call, no recording
            status = getattr(exc, "status_code", None)
            unanswered = f"did not answer within {opts.answer_timeout:g} s"
            why = {408: unanswered, 487: unanswered, 480: "is unavailable", 486: "is busy",
                   603: "declined"}.get(status or 0, "refused the bridge call")
            raise TelephonyError(f"extension {extension} {why} ({exc})") from None
        self.bridges[user_id] = bridge
        inviter.on("terminated", lambda reason=None, status=None: self._bridge_terminated(bridge, reason))
        log.info("bridge call to extension %s for user %d up", extension, user_id)

    def _bridge_terminated(self, bridge: AgentBridge, reason: str | None) -> None:
        self._close_recorder(("bridge", bridge.user_id))
        if bridge.closing or self.bridges.get(bridge.user_id) is not bridge:
            return
        bridge.closing = True
        self.bridges.pop(bridge.user_id, None)
        log.info("bridge call of user %d ended by the phone: %s", bridge.user_id, reason)
        if self._sink is not None:
            self._spawn(self._sink.bridge_ended(bridge.user_id, reason or "bridge call ended"))

    def _on_unregistered(self, extension: str, reason: str = "unregistered") -> None:
        """The phone of a bridge call went away (unregistered, WebSocket closed, extension expired)."""
        for bridge in list(self.bridges.values()):
            if bridge.extension == extension and not bridge.closing:
                self._bridge_terminated(bridge, f"extension {extension} unregistered: {reason}")
                self._spawn(self._end_bridge(bridge))

    async def _end_bridge(self, bridge: AgentBridge) -> None:
        try:
            await bridge.hangup()
        except SipError as exc:
            log.info("ending the bridge call of user %d: %s", bridge.user_id, exc)
        self._close_recorder(("bridge", bridge.user_id))

    async def on_logout(self, user_id: int) -> None:
        bridge = self.bridges.pop(user_id, None)
        if bridge is not None:
            await self._end_bridge(bridge)

    # --- customer legs -----------------------------------------------------------------

    async def place_call(self, call: CallInfo) -> CallState:
        bridge = self._bridge(call.user_id)
        await self._ensure_started()
        lab_call = LabCall(call)
        self.calls[call.call_id] = lab_call
        numbers = [call.phone_number, *[n for n in call.alternatives if n != call.phone_number]]
        for number in numbers:
            inviter = self.gateway.dial(number, call.outbound_cli,
                                        no_answer_timeout=self.options.no_answer_timeout)
            leg = Leg(number, inviter)
            lab_call.legs.append(leg)
            task = asyncio.get_running_loop().create_task(self._run_leg(bridge, lab_call, leg))
            lab_call._tasks.add(task)
            task.add_done_callback(lab_call._tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(lab_call.settled.wait(), self.options.ring_wait)
        if lab_call.winner is not None:
            return CallState.ANSWERED
        if any(leg.session.state is SessionState.ESTABLISHING for leg in lab_call.legs):
            ringing = any(leg.session.outgoing is not None and leg.session.outgoing.provisional_received
                          for leg in lab_call.legs)
            return CallState.RINGING if ringing else CallState.DIALING
        return CallState.DIALING  # all failed already: the ENDED report follows

    async def _run_leg(self, bridge: AgentBridge, call: LabCall, leg: Leg) -> None:
        inviter = leg.session
        try:
            await inviter.invite()
        except SipError as exc:
            leg.status = getattr(exc, "status_code", None) or 500
            log.info("call %d: customer %s: %s", call.call_id, leg.number, exc)
            if call.winner is None and all(lg.status is not None for lg in call.legs):
                call.settled.set()
                failed = next((lg for lg in call.legs if lg.number == call.info.phone_number), leg)
                self._forget(call)
                self._report(call, CallState.ENDED, failed.status)
                call.move(Phase.ENDED)
            return
        leg.status = 200
        if call.winner is not None or call.ending:
            await inviter.bye("another number answered first" if call.winner else "call ended")
            return
        call.winner = leg
        call.move(Phase.ANSWERED)
        call.settled.set()
        inviter.on("terminated", lambda reason=None, status=None: self._leg_ended(call, leg, reason))
        for other in call.legs:
            if other is not leg and other.session.state is SessionState.ESTABLISHING:
                await other.session.cancel("answered elsewhere")
        try:
            leg.customer = await self.gateway.customer(inviter.call_id)
        except SessionError as exc:
            log.warning("call %d: %s", call.call_id, exc)
        if inviter.state is not SessionState.ESTABLISHED:
            return  # the customer hung up at once: _leg_ended has reported it
        if self.bridges.get(call.info.user_id) is not bridge or call.ending:
            await _quiet_hangup(inviter)  # the agent went away (or hung up) while the customer answered
            return
        self._join(bridge, call, leg)
        phone = leg.number if leg.number != call.info.phone_number else None
        self._report(call, CallState.ANSWERED, phone_number=phone)

    def _join(self, bridge: AgentBridge, call: LabCall, leg: Leg) -> None:
        """Patch the customer's audio into the agent's bridge call."""
        customer = leg.customer
        voice = customer.behaviour.play if customer is not None else "silence"
        bridge.add_party(call.call_id, voice, customer.hear if customer is not None else None)
        leg.session.on("dtmf", lambda event, *_: self._spawn(
            self._relay_dtmf(bridge, call, getattr(event, "digit", event))))

    async def _agent_dtmf(self, bridge: AgentBridge, digit: str) -> None:
        """The agent pressed a key (RFC 4733 or INFO on the bridge call): every customer on the
        line (not held) gets it as SIP INFO, as a gateway would pass it on."""
        for call in list(self.calls.values()):
            leg = call.winner
            if leg is None or call.call_id not in bridge.voices or call.call_id in bridge.held:
                continue
            if leg.session.state is SessionState.ESTABLISHED:
                try:
                    await leg.session.send_dtmf(digit, method="info")
                except SipError as exc:
                    log.info("call %d: DTMF %s not passed to the customer: %s", call.call_id, digit, exc)

    async def _relay_dtmf(self, bridge: AgentBridge, call: LabCall, digit: str) -> None:
        if call.call_id in bridge.voices and not await bridge.send_dtmf(digit):
            log.info("call %d: DTMF %s not relayed (no RFC 4733 on the bridge call)", call.call_id, digit)

    def _leg_ended(self, call: LabCall, leg: Leg, reason: str | None) -> None:
        for bridge in self.bridges.values():
            bridge.remove_party(call.call_id)
            bridge.remove_listener(("recording", call.call_id))
        self._close_recorder(("call", call.call_id))
        partner = call.connected_to
        if partner is not None:
            # connected customers: when one hangs up, the lab hangs the other up
            partner.move(Phase.ENDING)
            partner.connected_to = None
            if partner.winner is not None:
                self._spawn(_quiet_hangup(partner.winner.session))
            self._forget(partner)
        self._forget(call)
        if partner is None:
            log.info("call %d: customer %s hung up (%s)", call.call_id, leg.number, reason)
            self._report(call, CallState.ENDED, 200)
        call.move(Phase.ENDED)

    def _forget(self, call: LabCall) -> None:
        self.calls.pop(call.call_id, None)
        self._close_recorder(("call", call.call_id))

    async def hangup(self, call: CallInfo) -> int:
        lab_call = self.calls.get(call.call_id)
        if lab_call is None:
            return 200
        lab_call.move(Phase.ENDING)
        if lab_call.connected_to is not None:
            return 200  # the agent leaves; the two customers stay connected
        self._forget(lab_call)
        code = 200 if lab_call.winner is not None else 487
        for leg in lab_call.legs:
            await _quiet_hangup(leg.session)
        for bridge in self.bridges.values():
            bridge.remove_party(call.call_id)
        for leg in lab_call.legs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leg.session.terminated_event.wait(), 5.0)
        lab_call.move(Phase.ENDED)
        return code

    async def hold(self, call: CallInfo) -> None:
        await self._set_hold(call, True)

    async def retrieve(self, call: CallInfo) -> None:
        await self._set_hold(call, False)

    async def _set_hold(self, call: CallInfo, held: bool) -> None:
        lab_call = self._call(call)
        if lab_call.winner is None:
            raise TelephonyError(f"call {call.call_id} is not answered")
        session = lab_call.winner.session
        try:
            if held:
                await session.hold()
            else:
                await session.unhold()
        except SipError as exc:
            raise TelephonyError(f"call {call.call_id}: {'hold' if held else 'retrieve'} failed: {exc}") from None
        bridge = self.bridges.get(call.user_id)
        if bridge is not None:
            bridge.set_held(call.call_id, held)

    async def start_recording(self, call: CallInfo) -> str | None:
        self._call(call)  # a call the phone system knows, or TelephonyError
        opts = self.options
        if opts.recordings_dir is None or not opts.decode:
            log.info("call %d: not recorded (the lab has no recordings directory or does not decode)",
                     call.call_id)
            return None
        from softphone.media.recorder import Recorder

        name = f"call-{call.call_id}.wav"
        recorder = Recorder(opts.recordings_dir / name, rate=RECORDING_RATE)
        self._recorders[("call", call.call_id)] = recorder
        bridge = self._bridge(call.user_id)
        key = call.call_id

        def record(frame: Any) -> None:
            # both sides: the agent's audio with the customer's voice mixed in (not while held)
            live = [key] if key in bridge.voices and key not in bridge.held and bridge.voices[key] != "echo" else []
            recorder.write(bridge.mixed(frame, live, ("recording", key)) if live else frame)

        bridge.add_listener(("recording", key), record)
        return f"{opts.recording_base_url}/{name}"

    async def stop_recording(self, call: CallInfo) -> None:
        for bridge in self.bridges.values():
            bridge.remove_listener(("recording", call.call_id))
        self._close_recorder(("call", call.call_id))

    def _close_recorder(self, key: tuple[str, int]) -> None:
        recorder = self._recorders.pop(key, None)
        if recorder is not None:
            with contextlib.suppress(Exception):
                recorder.close()

    async def connect(self, first: CallInfo, second: CallInfo) -> None:
        a, b = self._call(first), self._call(second)
        for c in (a, b):
            if c.winner is None or c.winner.customer is None:
                raise TelephonyError(f"call {c.call_id} is not answered")
        for c in (a, b):
            if c.winner.session.local_hold:
                with contextlib.suppress(SipError):
                    await c.winner.session.unhold()
        a.connected_to, b.connected_to = b, a
        a.move(Phase.CONNECTED)
        b.move(Phase.CONNECTED)
        for bridge in self.bridges.values():
            bridge.remove_party(a.call_id)
            bridge.remove_party(b.call_id)
        ca, cb = a.winner.customer, b.winner.customer
        assert ca is not None and cb is not None
        for speaker, hearer, owner in ((ca, cb, a), (cb, ca, b)):
            task = asyncio.get_running_loop().create_task(_patch(speaker, hearer))
            owner._tasks.add(task)
            task.add_done_callback(owner._tasks.discard)
        log.info("calls %d and %d connected (%s <-> %s)", a.call_id, b.call_id, ca.number, cb.number)

    async def place_inbound(self, call: CallInfo) -> CallState:
        bridge = self._bridge(call.user_id)
        await self._ensure_started()
        try:
            customer, invitation = await self.gateway.inbound(call.phone_number, call.outbound_cli)
        except (TimeoutError, SipError) as exc:
            raise TelephonyError(f"inbound call from {call.phone_number} did not reach the lab: {exc}") from None
        lab_call = LabCall(call)
        leg = Leg(call.phone_number, invitation, customer)
        lab_call.legs.append(leg)
        self.calls[call.call_id] = lab_call
        try:
            await invitation.accept()
        except SipError as exc:
            self._forget(lab_call)
            raise TelephonyError(f"inbound call from {call.phone_number} could not be answered: {exc}") from None
        lab_call.winner = leg
        lab_call.move(Phase.ANSWERED)
        self._join(bridge, lab_call, leg)
        invitation.on("terminated", lambda reason=None, status=None: self._leg_ended(lab_call, leg, reason))
        return CallState.ANSWERED

    async def close(self) -> None:
        for call in list(self.calls.values()):
            call.move(Phase.ENDING)
            for leg in call.legs:
                await _quiet_hangup(leg.session)
        self.calls.clear()
        for bridge in list(self.bridges.values()):
            await self._end_bridge(bridge)
        self.bridges.clear()
        for key in list(self._recorders):
            self._close_recorder(key)
        if self._started:
            await self.gateway.close()
        for task in list(self._tasks):
            task.cancel()


async def _quiet_hangup(session: Any) -> None:
    """End a trunk leg whatever its state and direction (BYE, CANCEL, or 480 to a ringing inbound call)."""
    with contextlib.suppress(SipError):
        if session.state is SessionState.ESTABLISHED:
            await session.bye()
        elif hasattr(session, "cancel"):
            await session.cancel()
        elif session.state is SessionState.ESTABLISHING:
            await session.reject(480, "Temporarily Unavailable")


async def _patch(speaker: Customer, hearer: Customer) -> None:
    """Connected customers: ``hearer`` hears what ``speaker`` plays, in real time (20 ms frames)."""
    source = pcm_source(speaker.behaviour.play)
    source.realtime = True
    try:
        while not speaker.ended.is_set() and not hearer.ended.is_set():
            hearer.hear(await source.recv())
    finally:
        source.stop()
