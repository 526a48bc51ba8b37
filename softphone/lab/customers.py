"""Simulated customers: who answers which number, and how, behind the lab's PSTN trunk.

A customer leg is real SIP: the lab's trunk (a ``softphone.sip`` user agent)
INVITEs ``sip:NUMBER@pstn.lab`` across an in-memory transport pair to a
gateway user agent that plays the customers, so ringing, 486, CANCEL, BYE and
INFO DTMF are real SIP messages (all kept in :attr:`PstnGateway.log` for
tests).  The customer's *media* stays in process, as behind a PSTN gateway:
the SDP is signalling-only (:class:`~softphone.sip.null_handler.NullDescriptionHandler`)
and audio is exchanged with the agent's bridge directly (:mod:`softphone.lab.bridge`),
which keeps a lab with hundreds of calls cheap.

Behaviour per number comes from a :class:`CustomerTable`: exact numbers,
then ``fnmatch`` patterns (``"*486"``), then the default.  Built in (and
overridable): ``*486`` busy, ``*480`` no answer, ``*603`` reject; anything
else answers after 1 s and plays a 600 Hz tone.  A table file (``--customers``,
YAML or JSON)::

    default: {answer_after: 1, play: "tone:600"}
    numbers:
      "0821234567": {answer_after: 0.5, play: "tone:700", listen: [1000], hangup_after: 20}
      "*555": {outcome: reject, status: 603}
      "0829999999": {play: echo, dtmf: "12#", dtmf_after: 1}

Fields: ``outcome`` (answer | busy | no_answer | reject), ``answer_after``
(seconds ringing before the answer / busy / reject), ``status`` (reject code,
default 603), ``ring_timeout`` (no_answer: the customer side gives up with 480
after it, 45 s by default; the lab CANCELs first, 487, if its own
``no_answer_timeout`` is shorter), ``play``
("tone:HZ", "silence", "echo" or an audio file), ``dtmf`` (digits sent after
the answer, as SIP INFO on the customer leg; the lab relays them to the agent
as RFC 4733), ``dtmf_after``, ``hangup_after`` (the customer sends BYE),
``listen`` (true, or tone frequencies: detect tones and DTMF in what the
customer hears).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import fnmatch
import itertools
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import ConfigurationError, SessionError, SipError, TransportError
from softphone.log import get_logger
from softphone.sip.invitation import AnswerMode, AnswerPolicy, Invitation
from softphone.sip.message import parse_message
from softphone.sip.null_handler import NullDescriptionHandler
from softphone.sip.session import SessionState
from softphone.sip.timers import Timers
from softphone.sip.transport import Reconnect, Transport, TransportState
from softphone.sip.user_agent import UserAgent, UserAgentConfig

log = get_logger(__name__)

PSTN_DOMAIN = "pstn.lab.invalid"
LAB_DOMAIN = "lab.invalid"
MAX_SECONDS = 24 * 3600.0


class Outcome(enum.Enum):
    ANSWER = "answer"
    BUSY = "busy"            # 486 Busy Here
    NO_ANSWER = "no_answer"  # rings until cancelled, 480 after ring_timeout
    REJECT = "reject"        # 603 Decline (or ``status``)


@dataclass(frozen=True)
class Behaviour:
    """What one simulated customer does (see the module docstring for the fields)."""

    outcome: Outcome = Outcome.ANSWER
    answer_after: float = 1.0
    status: int = 603
    ring_timeout: float = 45.0
    play: str = "tone:600"
    dtmf: str = ""
    dtmf_after: float = 1.0
    hangup_after: float | None = None
    listen: tuple[float, ...] | bool = False

    @property
    def final_status(self) -> int | None:
        """The SIP status the customer ends the INVITE with when it does not answer."""
        return {Outcome.BUSY: 486, Outcome.NO_ANSWER: 480, Outcome.REJECT: self.status}.get(self.outcome)

    @property
    def tone(self) -> float | None:
        return float(self.play[5:]) if self.play.startswith("tone:") else None


DEFAULT_BEHAVIOUR = Behaviour()
BUILTIN_NUMBERS: dict[str, Behaviour] = {
    "*486": Behaviour(outcome=Outcome.BUSY, answer_after=0.2),
    "*480": Behaviour(outcome=Outcome.NO_ANSWER),
    "*603": Behaviour(outcome=Outcome.REJECT, answer_after=0.2),
}
_FIELDS = {"outcome", "answer_after", "status", "ring_timeout", "play", "dtmf", "dtmf_after", "hangup_after",
           "listen"}
_DTMF = set("0123456789*#ABCD")


def _seconds(where: str, name: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_SECONDS:
        raise ConfigurationError(f"{where}.{name}: must be a number of seconds from 0 to {MAX_SECONDS:g}, "
                                 f"got {value!r}")
    return float(value)


def parse_play(where: str, value: Any, base: Path | None = None) -> str:
    """Validate a ``play`` value: ``tone:HZ``, ``silence``, ``echo`` or an existing audio file."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{where}: must be \"tone:HZ\", \"silence\", \"echo\" or a file path, got {value!r}")
    if value.startswith("tone:"):
        try:
            hz = float(value[5:])
        except ValueError:
            hz = -1.0
        if not 20 <= hz <= 4000:
            raise ConfigurationError(f"{where}: tone frequency must be 20 to 4000 Hz, got {value!r}")
        return f"tone:{hz:g}"
    if value in ("silence", "echo"):
        return value
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    if not path.is_file():
        raise ConfigurationError(f"{where}: audio file {value!r} does not exist")
    return os.fspath(path)


def parse_behaviour(where: str, data: Any, base: Behaviour = DEFAULT_BEHAVIOUR,
                    folder: Path | None = None) -> Behaviour:
    """A :class:`Behaviour` from a table entry; errors name ``where`` and the field."""
    if not isinstance(data, dict):
        raise ConfigurationError(f"{where}: must be a mapping of behaviour fields, got {type(data).__name__}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ConfigurationError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(sorted(_FIELDS))})")
    values: dict[str, Any] = {}
    if "outcome" in data:
        try:
            values["outcome"] = Outcome(str(data["outcome"]).lower().replace("-", "_"))
        except ValueError:
            raise ConfigurationError(f"{where}.outcome: must be one of "
                                     f"{', '.join(o.value for o in Outcome)}, got {data['outcome']!r}") from None
    for name in ("answer_after", "ring_timeout", "dtmf_after"):
        if name in data:
            values[name] = _seconds(where, name, data[name])
    if "hangup_after" in data:
        values["hangup_after"] = _seconds(where, "hangup_after", data["hangup_after"], optional=True)
    if "status" in data:
        status = data["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 699:
            raise ConfigurationError(f"{where}.status: must be a SIP final status from 400 to 699, got {status!r}")
        values["status"] = status
    if "play" in data:
        values["play"] = parse_play(f"{where}.play", data["play"], folder)
    if "dtmf" in data:
        digits = data["dtmf"]
        if not isinstance(digits, str) or any(d not in _DTMF for d in digits.upper()):
            raise ConfigurationError(f"{where}.dtmf: must be digits 0-9 * # A-D, got {digits!r}")
        values["dtmf"] = digits.upper()
    if "listen" in data:
        listen = data["listen"]
        if isinstance(listen, bool):
            values["listen"] = listen
        elif isinstance(listen, list) and listen and all(
                isinstance(f, int | float) and not isinstance(f, bool) and 20 <= f <= 4000 for f in listen):
            values["listen"] = tuple(float(f) for f in listen)
        else:
            raise ConfigurationError(f"{where}.listen: must be true/false or a list of tone frequencies "
                                     f"(20 to 4000 Hz), got {listen!r}")
    return replace(base, **values)


@dataclass
class CustomerTable:
    """Behaviour per dialled number: exact entries, then patterns (in order), then the default."""

    default: Behaviour = DEFAULT_BEHAVIOUR
    numbers: dict[str, Behaviour] = field(default_factory=lambda: dict(BUILTIN_NUMBERS))

    def lookup(self, number: str) -> Behaviour:
        exact = self.numbers.get(number)
        if exact is not None:
            return exact
        for pattern, behaviour in self.numbers.items():
            if any(c in pattern for c in "*?[") and fnmatch.fnmatchcase(number, pattern):
                return behaviour
        return self.default

    def needs_agent_audio(self) -> bool:
        """Whether some customer listens to or echoes the agent (the lab must decode what agents send)."""
        return any(b.listen or b.play == "echo" for b in (self.default, *self.numbers.values()))

    def with_numbers(self, numbers: dict[str, Behaviour]) -> CustomerTable:
        """A copy where ``numbers`` come first (tests add their own customers)."""
        return CustomerTable(self.default, {**numbers, **self.numbers})

    @classmethod
    def from_data(cls, data: Any, source: str = "customers", folder: Path | None = None) -> CustomerTable:
        if not isinstance(data, dict):
            raise ConfigurationError(f"{source}: must be a mapping with 'default' and/or 'numbers'")
        unknown = sorted(set(data) - {"default", "numbers"})
        if unknown:
            raise ConfigurationError(f"{source}: unknown key(s) {', '.join(map(str, unknown))} "
                                     "(known: default, numbers)")
        default = DEFAULT_BEHAVIOUR
        if data.get("default") is not None:
            default = parse_behaviour(f"{source}: default", data["default"], folder=folder)
        numbers: dict[str, Behaviour] = {}
        raw = data.get("numbers")
        raw = {} if raw is None else raw
        if not isinstance(raw, dict):
            raise ConfigurationError(f"{source}: numbers must be a mapping of number (or pattern) to behaviour")
        for key, entry in raw.items():
            number = str(key)
            if not number or any(c not in "0123456789+*?[]!-" for c in number):
                raise ConfigurationError(f"{source}: numbers[{key!r}]: must be digits (optional +) or a "
                                         "pattern with * ? [...]")
            numbers[number] = parse_behaviour(f"{source}: numbers[{number!r}]", entry, default, folder)
        for pattern, behaviour in BUILTIN_NUMBERS.items():
            numbers.setdefault(pattern, behaviour)
        return cls(default, numbers)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CustomerTable:
        """Read a YAML or JSON table (``.json``: JSON, anything else: YAML)."""
        p = Path(path)
        try:
            text = p.read_text("utf-8")
        except OSError as exc:
            raise ConfigurationError(f"customers file {p}: {exc.strerror or exc}") from None
        try:
            if p.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except ValueError as exc:  # json.JSONDecodeError and yaml.YAMLError's messages
            raise ConfigurationError(f"customers file {p}: not valid: {exc}") from None
        except Exception as exc:  # yaml.YAMLError
            raise ConfigurationError(f"customers file {p}: not valid YAML: {exc}") from None
        return cls.from_data(data or {}, f"customers file {p}", p.parent)


# --- the in-memory SIP trunk -------------------------------------------------------------


class PipeTransport(Transport):
    """One end of an in-memory SIP connection; frames arrive on a later loop iteration."""

    def __init__(self, name: str, record: Callable[[str, str], None]) -> None:
        super().__init__()
        self.name = name
        self.peer: PipeTransport | None = None
        self._record = record

    @property
    def via_transport(self) -> str:
        return "WS"

    async def connect(self) -> None:
        if self._state is TransportState.CLOSED:
            raise TransportError(f"pipe {self.name} is closed")
        self._set_state(TransportState.CONNECTED)
        self.emit("connected")

    async def close(self) -> None:
        if self._state is TransportState.CLOSED:
            return
        self._set_state(TransportState.CLOSED)
        self.emit("closed")

    def send_text(self, text: str) -> None:
        if not self.connected or self.peer is None:
            raise TransportError(f"pipe {self.name} is {self._state.value}")
        self._record(self.name, text)
        asyncio.get_running_loop().call_soon(self.peer._arrive, text)

    def _arrive(self, text: str) -> None:
        if self.connected:
            self.receive_text(text)


@dataclass
class SipLogEntry:
    source: str  # "trunk" (the lab) or "pstn" (the customers)
    message: Any

    @property
    def label(self) -> str:
        return getattr(self.message, "method", None) or str(getattr(self.message, "status", ""))


_customer_ids = itertools.count(1)


class Customer(AsyncIOEventEmitter):
    """One simulated customer on one call (the gateway's side of the leg).

    Events: ``answered``, ``ended`` (reason).  ``ear`` holds the sinks fed with
    what the customer hears (the bridge writes decoded frames into them).
    """

    def __init__(self, number: str, behaviour: Behaviour, session: Invitation | Any,
                 direction: str = "outbound") -> None:
        super().__init__()
        self.id = next(_customer_ids)
        self.number = number
        self.behaviour = behaviour
        self.session = session
        self.direction = direction
        self.ear: list[Any] = []
        self.tones = None
        self.dtmf = None
        self.answered = asyncio.Event()
        self.ended = asyncio.Event()
        #: digits the agent sent (RFC 4733 on the bridge call, relayed by the lab as SIP INFO)
        self.digits_received: list[str] = []
        session.on("dtmf", lambda event, *_: self.digits_received.append(getattr(event, "digit", event)))
        self._tasks: set[asyncio.Task] = set()
        if behaviour.listen:
            from softphone.media.sinks import DtmfDetector, ToneDetector

            freqs = behaviour.listen if isinstance(behaviour.listen, tuple) else ()
            self.tones = ToneDetector(freqs)
            self.dtmf = DtmfDetector()
            self.ear = [self.tones, self.dtmf]
        session.on("established", self._on_established)
        session.on("terminated", self._on_terminated)

    @property
    def call_id(self) -> str | None:
        return self.session.call_id

    @property
    def on_hold(self) -> bool:
        """The lab put this leg on hold (its re-INVITE made us recvonly/inactive)."""
        return bool(self.session.remote_hold)

    def hear(self, frame: Any) -> None:
        """A decoded frame of what reaches the customer (the bridge sends hold music or silence on hold)."""
        for sink in self.ear:
            sink.write(frame)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_established(self) -> None:
        self.answered.set()
        self.emit("answered")
        b = self.behaviour
        if b.dtmf:
            self._spawn(self._send_dtmf_later(b.dtmf, b.dtmf_after))
        if b.hangup_after is not None:
            self._spawn(self._hangup_later(b.hangup_after))

    async def _send_dtmf_later(self, digits: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.session.state is SessionState.ESTABLISHED:
            try:
                await self.session.send_dtmf(digits, method="info")
            except SipError as exc:
                log.info("customer %s: DTMF not sent: %s", self.number, exc)

    async def _hangup_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.hangup()

    async def hangup(self) -> None:
        """The customer hangs up (BYE, or CANCEL for its own outgoing call)."""
        s = self.session
        if s.state is SessionState.ESTABLISHED:
            await s.bye("customer hung up")
        elif hasattr(s, "cancel") and s.state is SessionState.ESTABLISHING:
            await s.cancel("customer hung up")

    def _on_terminated(self, reason: str | None = None, status: int | None = None) -> None:
        for sink in self.ear:
            sink.close()
        for task in list(self._tasks):
            task.cancel()
        self.ended.set()
        self.emit("ended", reason)

    def __repr__(self) -> str:
        return f"Customer({self.number!r}, {self.behaviour.outcome.value})"


class PstnGateway:
    """The lab's trunk and the simulated customers behind it, joined by a :class:`PipeTransport` pair.

    ``trunk`` is the lab's user agent (it dials customers and receives their
    inbound calls); ``pstn`` answers as the customers do per ``table``.
    """

    LOG_SIZE = 20_000

    def __init__(self, table: CustomerTable | None = None, *, timers: Timers | None = None) -> None:
        self.table = table or CustomerTable()
        #: the trunk's SIP messages, newest last (bounded: a long-running lab keeps the last LOG_SIZE)
        self.log: collections.deque[SipLogEntry] = collections.deque(maxlen=self.LOG_SIZE)
        self.customers: dict[str, Customer] = {}
        self.keep_log = True
        trunk_t = PipeTransport("trunk", self._record)
        pstn_t = PipeTransport("pstn", self._record)
        trunk_t.peer, pstn_t.peer = pstn_t, trunk_t
        no_reconnect = Reconnect(enabled=False)
        common: dict[str, Any] = {"register": False, "reconnect": no_reconnect, "timers": timers or Timers()}
        self.trunk = UserAgent(UserAgentConfig(
            ws_url="ws://trunk.lab.invalid/", aor=f"sip:lab@{LAB_DOMAIN}", display_name="OmniSense lab",
            description_handler_factory=_null_handler, answer_policy=AnswerPolicy.manual(), **common),
            transport=trunk_t)
        self.pstn = UserAgent(UserAgentConfig(
            ws_url="ws://pstn.lab.invalid/", aor=f"sip:pstn@{PSTN_DOMAIN}",
            description_handler_factory=_null_handler,
            answer_policy=AnswerPolicy(decide=self._decide), **common), transport=pstn_t)
        self._waiters: dict[str, asyncio.Future] = {}

    def _record(self, source: str, text: str) -> None:
        if self.keep_log:
            try:
                self.log.append(SipLogEntry(source, parse_message(text)))
            except SipError:
                log.warning("pstn trunk: unparsable frame from %s", source)

    def messages(self, label: str | None = None, source: str | None = None,
                 call_id: str | None = None) -> list[Any]:
        """Logged messages: ``label`` is a method ("CANCEL") or a status ("486")."""
        return [e.message for e in self.log
                if (label is None or e.label == label) and (source is None or e.source == source)
                and (call_id is None or e.message.call_id == call_id)]

    async def start(self) -> None:
        await self.trunk.start()
        await self.pstn.start()

    async def close(self) -> None:
        await self.trunk.stop()
        await self.pstn.stop()
        self.customers.clear()

    # --- the customers' side --------------------------------------------------------

    def _decide(self, invitation: Invitation) -> AnswerPolicy:
        number = invitation.request.uri.user or ""
        behaviour = self.table.lookup(number)
        customer = Customer(number, behaviour, invitation)
        self._track(customer)
        log.info("customer %s rings (%s)", number, behaviour.outcome.value)
        if behaviour.outcome is Outcome.ANSWER:
            return AnswerPolicy.answer(behaviour.answer_after)
        if behaviour.outcome is Outcome.NO_ANSWER:
            return AnswerPolicy(AnswerMode.REJECT, delay=behaviour.ring_timeout, reject_status=480,
                                reject_reason="Temporarily Unavailable", ring=True)
        reason = "Busy Here" if behaviour.outcome is Outcome.BUSY else None
        return AnswerPolicy.reject(behaviour.final_status or 603, reason, delay=behaviour.answer_after)

    def _track(self, customer: Customer) -> None:
        call_id = customer.call_id or ""
        self.customers[call_id] = customer
        customer.on("ended", lambda *_: self.customers.pop(call_id, None))
        waiter = self._waiters.pop(call_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(customer)

    async def customer(self, call_id: str, timeout: float = 5.0) -> Customer:
        """The customer on the leg with SIP Call-ID ``call_id`` (waits for its INVITE to arrive)."""
        found = self.customers.get(call_id)
        if found is not None:
            return found
        fut = self._waiters.setdefault(call_id, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            raise SessionError(f"no customer leg with Call-ID {call_id}") from None

    # --- the lab's side -------------------------------------------------------------------

    def dial(self, number: str, caller_id: str, *, no_answer_timeout: float = 120.0):
        """The trunk's Inviter to ``number`` (call ``invite()`` on it)."""
        inviter = self.trunk.invite(f"sip:{number}@{PSTN_DOMAIN}", no_answer_timeout=no_answer_timeout,
                                    extra_headers=[("P-Asserted-Identity", f"<sip:{caller_id}@{LAB_DOMAIN}>")])
        return inviter

    async def inbound(self, number: str, dnis: str, timeout: float = 10.0) -> tuple[Customer, Invitation]:
        """A customer ``number`` calls the lab's ``dnis``: returns the customer and the trunk's Invitation."""
        behaviour = self.table.lookup(number)
        arrived: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_invite(invitation: Invitation) -> None:
            if not arrived.done() and invitation.request.uri.user == dnis:
                arrived.set_result(invitation)

        self.trunk.on("invite", on_invite)
        try:
            inviter = self.pstn.invite(f"sip:{dnis}@{LAB_DOMAIN}")
            inviter.extra_headers.append(("P-Asserted-Identity", f"<sip:{number}@{PSTN_DOMAIN}>"))
            customer = Customer(number, behaviour, inviter, direction="inbound")
            customer._spawn(_invite_quietly(inviter))
            invitation = await asyncio.wait_for(arrived, timeout)
        finally:
            self.trunk.remove_listener("invite", on_invite)
        self.customers[invitation.call_id] = customer
        customer.on("ended", lambda *_: self.customers.pop(invitation.call_id, None))
        return customer, invitation


async def _invite_quietly(inviter: Any) -> None:
    try:
        await inviter.invite()
    except SipError as exc:
        log.info("inbound customer call ended before answer: %s", exc)


def _null_handler(session: Any = None, options: Any = None) -> NullDescriptionHandler:
    return NullDescriptionHandler(session, options)
