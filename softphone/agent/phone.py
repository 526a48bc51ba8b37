"""A headless WebRTC phone on any SIP-over-WebSocket server: the part of an agent without the platform.

``async with Phone.connect(ws_url, user, password, turn=[...]) as phone:``
registers, answers (or rejects, or leaves ringing) incoming calls, places
calls with :meth:`Phone.invite`, and on the way out hangs up, unregisters and
closes, in that order, also when the block raised or was cancelled (the
shutdown is shielded and bounded).  :class:`~softphone.agent.agent.Agent`
builds on it with the OmniSense REST steps around it.

Stopping from outside the block (a signal handler, a watchdog) goes through
:meth:`Phone.request_stop`: it cancels the task running the ``async with``
block, whose exit then cleans up and swallows that one cancellation (the
block ended because it was asked to).

Events (pyee, payloads from :mod:`softphone.events`): ``state``,
``registered``, ``unregistered``, ``reconnecting``, ``call_incoming``,
``call_answered``, ``call_ended``, ``dtmf``, ``hold``, ``unhold``, ``error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyee.asyncio import AsyncIOEventEmitter

from softphone.agent.call import Call, CallState, make_source
from softphone.agent.expect import PhoneExpectations
from softphone.agent.state import AgentState, check_move
from softphone.errors import AgentError, ConfigurationError, SoftphoneError
from softphone.events import (
    CallIncoming,
    ErrorEvent,
    Event,
    Reconnecting,
    Registered,
    StateChanged,
    Unregistered,
)
from softphone.log import Secret, get_logger, publish_state
from softphone.media.config import IceConfig, MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler
from softphone.sip.invitation import AnswerPolicy, Invitation
from softphone.sip.session import Session
from softphone.sip.user_agent import UserAgent, UserAgentConfig

log = get_logger(__name__)

ANSWER_MODES = ("auto", "manual", "reject")
#: Upper bound of the whole shutdown (logout, hang-up, unregister, close).
STOP_TIMEOUT = 20.0


class Phone(PhoneExpectations, AsyncIOEventEmitter):
    """One registered SIP user with WebRTC media; calls are :class:`Call` objects.

    ``answer``: "auto" (answer every incoming call), "manual" (leave it ringing:
    ``call.answer()``/``call.reject()``) or "reject" (486).  ``play``: what each
    call sends from its start (file, ``"tone:440"``, None for silence).
    ``record``: a file each call's received audio is written to (``{n}`` in the
    name numbers the calls; without it later calls get ``-2``, ``-3``...).
    ``call_errors_fatal``: a call that cannot be set up (no media path, say) ends the
    session with that error, as the bridge call does for an Agent (what a one-call
    command wants).  A ``play`` source object is shared by every call: give a file or
    a tone string to have one per call.
    """

    keep_audio_seconds: float = 0.0
    """Seconds of each call's received audio kept for ``call.recording`` and the ``expect_*``
    failure messages from the call's start (0: only from the first use; the pytest plugin sets it)."""

    keep_ended_calls: int = 16
    """Ended calls kept in :attr:`calls` (newest first kept) for a look after the fact; older
    ones are dropped with their media so a long-running phone does not grow."""

    lean_play: bool = True
    """Send tones, silence and files pre-encoded, shared by every call in the process (the lean
    path); False encodes everything per call (an A/B lever for measurements)."""

    def __init__(self, ua_config: UserAgentConfig | None = None, media: MediaConfig | None = None, *,
                 answer: str = "auto", play: Any = None, record: str | os.PathLike | None = None,
                 inband_dtmf: bool = True, stop_timeout: float = STOP_TIMEOUT,
                 call_errors_fatal: bool = False) -> None:
        super().__init__()
        if answer not in ANSWER_MODES:
            raise ConfigurationError(f"answer: must be one of {', '.join(ANSWER_MODES)}, got {answer!r}")
        if play is not None and not isinstance(play, str | os.PathLike | int | float) and \
                not hasattr(play, "recv"):
            raise ConfigurationError(f"play: expected a file, tone:HZ or a source, got {play!r}")
        if isinstance(play, str | os.PathLike) and not os.fspath(play).startswith(("tone:", "dtmf:")) and \
                os.fspath(play) != "silence" and not Path(play).is_file():
            raise ConfigurationError(f"play: {os.fspath(play)!r} is not a readable file")
        if record is not None and not Path(record).parent.is_dir():
            raise ConfigurationError(f"record: directory {Path(record).parent} does not exist")
        self.ua_config = ua_config
        self.media = media or MediaConfig()
        self.answer = answer
        self.play_spec = play
        self.record_spec = record
        self.inband_dtmf = inband_dtmf
        self.stop_timeout = stop_timeout
        self.call_errors_fatal = call_errors_fatal
        self.state = AgentState.NEW
        self.ua: UserAgent | None = None
        self.calls: list[Call] = []
        """Live calls and the latest ended ones (at most :attr:`keep_ended_calls` of those)."""
        self.calls_started = 0
        self.call: Call | None = None
        """The live call (the latest one still up), or None."""
        self.failure: BaseException | None = None
        """What made the session fail (start error, bridge call that could not be set up)."""
        self.stop_reason: str | None = None
        self._by_session: dict[Session, Call] = {}
        self._block_task: asyncio.Task | None = None
        self._cancelled_block = False
        self._stop_task: asyncio.Task | None = None
        self._stop_requested = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._call_waiters: list[asyncio.Future] = []

    @classmethod
    def connect(cls, ws_url: str, user: str, password: str | Secret, *, domain: str | None = None,
                turn: Iterable[str] = (), turn_username: str | None = None,
                turn_password: str | Secret | None = None, relay_only: bool = False,
                ca_file: str | None = None, insecure: bool = False, **options: Any) -> Phone:
        """A phone for ``user`` on ``ws_url``; the SIP domain defaults to the URL's host.

        TURN credentials default to the SIP user and password (as the Webphone does).
        """
        from urllib.parse import urlsplit

        if not str(user).strip():
            raise ConfigurationError("user: the SIP user (extension) is required")
        password = password if isinstance(password, Secret) else Secret(str(password))
        host = domain or urlsplit(ws_url).hostname
        if not host:
            raise ConfigurationError(f"ws: {ws_url!r} has no host")
        aor = user if str(user).startswith(("sip:", "sips:")) else f"sip:{user}@{host}"
        ua = UserAgentConfig(ws_url=ws_url, aor=aor, password=password, ca_file=ca_file, insecure=insecure)
        turn = tuple(turn)
        ice = IceConfig(turn_urls=turn, username=(turn_username or aor.split(":", 1)[1].split("@")[0])
                        if turn else None,
                        credential=(turn_password or password) if turn else None, relay_only=relay_only,
                        tls_ca_file=ca_file, tls_insecure=insecure).loopback_only_for(urlsplit(ws_url).hostname)
        return cls(ua, MediaConfig(ice=ice), **options)

    def __repr__(self) -> str:
        aor = self.ua_config.aor if self.ua_config else "?"
        return f"{type(self).__name__}({aor!r}, state={self.state.value})"

    # --- state --------------------------------------------------------------------------

    def _move(self, new: AgentState) -> None:
        """The one place the session's state changes (``state`` event, debug page)."""
        if new is self.state:
            return
        check_move(self.state, new)
        previous, self.state = self.state, new
        log.info("%s: %s -> %s", self.name, previous.value, new.value)
        self._emit(StateChanged(new.value, previous.value))
        self._publish()

    @property
    def name(self) -> str:
        return self.ua_config.aor if self.ua_config else type(self).__name__.lower()

    @property
    def extension(self) -> str | None:
        if self.ua_config is None:
            return None
        return self.ua_config.aor.split(":", 1)[1].split("@", 1)[0]

    def snapshot(self) -> dict[str, Any]:
        """The session's live state for status lines and the debug page (no secrets)."""
        call = self.call
        return {
            "state": self.state.value,
            "aor": self.ua_config.aor if self.ua_config else None,
            "registered": bool(self.ua and self.ua.registered),
            "call": None if call is None else {
                "call_id": call.call_id, "state": call.state.value, "remote": call.remote,
                "duration": round(call.duration, 1), "bridge": call.bridge,
                "digits": "".join(e.digit for e in call.digits),
            },
            "calls": self.calls_started,
        }

    def _publish(self) -> None:
        publish_state(self.snapshot())

    def _emit(self, event: Event) -> None:
        if event.EVENT == "error" and not self.listeners("error"):
            log.error("%s: %s", event.where, event.message)  # type: ignore[attr-defined]
            return
        self.emit(event.EVENT, event)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- start ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register; on failure everything is closed again and the error raised."""
        try:
            await self._start_steps()
        except BaseException as exc:
            self.failure = exc if isinstance(exc, Exception) else None
            if isinstance(exc, SoftphoneError):
                self._emit(ErrorEvent(self._step_name(), str(exc), type(exc).__name__, fatal=True))
            # asked to stop while starting (Ctrl-C): an orderly stop, not a failure
            interrupted = isinstance(exc, asyncio.CancelledError) and self.stop_reason is not None
            await self._shutdown(failed=not interrupted)
            raise

    def _step_name(self) -> str:
        return self.state.value

    async def _start_steps(self) -> None:
        self._move(AgentState.REGISTERING)
        await self._register()
        self._move(AgentState.READY)

    async def _register(self) -> None:
        if self.ua_config is None:
            raise AgentError("no SIP configuration to register with")
        config = dataclasses.replace(self.ua_config, description_handler_factory=self._handler_for,
                                     answer_policy=AnswerPolicy(decide=self._decide))
        self.ua = ua = UserAgent(config)
        ua.on("registered", lambda expires: self._emit(Registered(self.extension or "?", config.aor, expires)))
        ua.on("unregistered", lambda reason: self._emit(Unregistered(self.extension or "?", str(reason))))
        ua.on("reconnecting", lambda attempt, delay: self._emit(Reconnecting(attempt, delay)))
        ua.on("invite", self._on_invite)
        await ua.start()

    # --- calls ------------------------------------------------------------------------

    def _is_bridge(self, invitation: Invitation) -> bool:
        """Hook: the Agent marks the platform's call to a logged-in agent."""
        return False

    def _new_call(self, session: Session, *, bridge: bool = False, play: Any = None) -> Call:
        call = Call(session, bridge=bridge, play=play if play is not None else self.play_spec,
                    inband_dtmf=self.inband_dtmf, keep_audio=self.keep_audio_seconds, lean=self.lean_play)
        self._by_session[session] = call
        self.calls.append(call)
        self.calls_started += 1
        self.call = call
        for name in ("call_answered", "call_ended", "dtmf", "hold", "unhold", "error"):
            call.on(name, lambda event, _name=name, _call=call: self._on_call_event(_call, _name, event))
        if self.record_spec is not None:
            call.record(self._record_path(self.calls_started))
        self._publish()
        return call

    def _forget_ended_calls(self) -> None:
        """Keep only the latest ended calls: each holds its session and peer connection, so a
        bot or load agent answering calls for hours would otherwise keep every one alive."""
        ended = [c for c in self.calls if not c.is_live]
        for old in ended[:max(0, len(ended) - self.keep_ended_calls)]:
            self.calls.remove(old)

    def _record_path(self, n: int) -> Path:
        text = os.fspath(self.record_spec)  # type: ignore[arg-type]
        if "{n}" in text:
            return Path(text.format(n=n))
        path = Path(text)
        return path if n == 1 else path.with_name(f"{path.stem}-{n}{path.suffix}")

    def _on_call_event(self, call: Call, name: str, event: Event) -> None:
        if name == "call_ended":
            self._by_session.pop(call.session, None)
            if self.call is call:
                live = [c for c in self.calls if c.is_live]
                self.call = live[-1] if live else None
            self._forget_ended_calls()
        if name == "call_answered":
            for fut in self._call_waiters:
                if not fut.done():
                    fut.set_result(call)
        if name == "error" and self.call_errors_fatal and not event.fatal:  # type: ignore[attr-defined]
            event = dataclasses.replace(event, fatal=True)  # type: ignore[type-var]
        self._emit(event)
        self._publish()
        if name == "error" and getattr(event, "fatal", False):
            self.failure = call.error.__cause__ or call.error if call.error else None
            self.request_stop(f"{'bridge ' if call.bridge else ''}call failed: {event.message}")  # type: ignore[attr-defined]

    def _handler_for(self, session: Session, options: Any = None) -> WebRtcDescriptionHandler:
        """The description handler factory the user agent calls: one peer connection per call."""
        call = self._by_session.get(session) or self._new_call(session)
        handler = WebRtcDescriptionHandler(self.media, source=call.track, sinks=[call.audio], session=session)
        call._attach(handler)
        return handler

    def _on_invite(self, invitation: Invitation) -> None:
        bridge = self._is_bridge(invitation)
        self._new_call(invitation, bridge=bridge)
        log.info("incoming call %s from %s%s", invitation.call_id, invitation.remote_identity,
                 " (bridge)" if bridge else "")
        self._emit(CallIncoming(invitation.call_id, invitation.remote_identity, bridge))

    def _decide(self, invitation: Invitation) -> AnswerPolicy | None:
        """The answer policy: auto-answer ourselves (so a failure is seen), reject, or leave it."""
        if self.state is not AgentState.READY and not self._accepts_calls_now():
            return AnswerPolicy.reject(480, "Temporarily Unavailable")
        call = self._by_session.get(invitation)
        mode = "auto" if call is not None and call.bridge else self.answer
        if mode == "reject":
            return AnswerPolicy.reject(486)
        if mode == "auto" and call is not None:
            self._spawn(call._auto_answer())
        return None

    def _accepts_calls_now(self) -> bool:
        return False

    async def invite(self, target: str, *, play: Any = None, timeout: float = 60.0,
                     extra_headers: list[tuple[str, str]] | None = None) -> Call:
        """Call ``target`` (an extension or a SIP URI) and wait until answered; returns the Call."""
        if self.state is not AgentState.READY or self.ua is None:
            raise AgentError(f"invite: the phone is {self.state.value}, not ready")
        inviter = self.ua.invite(target, extra_headers=extra_headers, no_answer_timeout=timeout)
        call = self._new_call(inviter, play=play)
        try:
            await inviter.invite()
        except SoftphoneError as exc:
            call.error = exc
            raise
        return call

    async def wait_for_call(self, timeout: float | None = None) -> Call:
        """The live answered call, or the next one to be answered (:class:`TimeoutError` after ``timeout``)."""
        if self.call is not None and self.call.state in (CallState.ANSWERED, CallState.HELD):
            return self.call
        fut = asyncio.get_running_loop().create_future()
        self._call_waiters.append(fut)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._call_waiters.remove(fut)

    # --- stop -------------------------------------------------------------------------

    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the session to end (safe from signal handlers and callbacks).

        Inside ``async with``, the block's task is cancelled and the exit cleans up;
        otherwise the shutdown runs in a task of its own.
        """
        if self.stop_reason is None:
            self.stop_reason = reason
            log.info("%s: stopping (%s)", self.name, reason)
        self._stop_requested.set()
        block = self._block_task
        if block is not None and not block.done():
            if block is not asyncio.current_task() and not self._cancelled_block:
                self._cancelled_block = True
                block.cancel()
        elif not self.state.terminal and self._stop_task is None:
            self._spawn(self.stop(reason))

    async def wait_stop_requested(self) -> str:
        """Until something asked the session to stop; returns why (for run-until-stopped loops)."""
        await self._stop_requested.wait()
        return self.stop_reason or "stop requested"

    async def stop(self, reason: str | None = None) -> None:
        """Log out (Agent), hang up, unregister, close, in that order; bounded and shielded."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        await self._shutdown(failed=False)

    async def _shutdown(self, *, failed: bool) -> None:
        if self._stop_task is None:
            if self.state.terminal:
                return
            self._stop_task = asyncio.get_running_loop().create_task(self._stop_sequence(failed))
        await wait_shielded(self._stop_task, self.stop_timeout)

    async def _stop_sequence(self, failed: bool) -> None:
        self._move(AgentState.STOPPING)
        self._stop_requested.set()
        try:
            await self._teardown()
        finally:
            for task in list(self._tasks):
                if task is not asyncio.current_task():
                    task.cancel()
            self._move(AgentState.FAILED if failed or self.failure is not None else AgentState.STOPPED)

    async def _teardown(self) -> None:
        """Hang up every call, unregister, close the WebSocket (Agent logs out before)."""
        for call in list(self.calls):
            if call.is_live:
                await call.hangup()
        if self.ua is not None:
            try:
                await self.ua.stop()
            except Exception as exc:
                log.warning("%s: stopping the user agent: %s", self.name, exc)
        for call in self.calls:
            with contextlib.suppress(Exception):
                await call.audio.stop()

    # --- async with -------------------------------------------------------------------

    async def __aenter__(self):
        self._block_task = asyncio.current_task()
        try:
            await self.start()
        except asyncio.CancelledError:
            if not self._cancelled_block or self._block_task is None:
                raise
            # request_stop() during the start: the session stopped in order; say so as an error
            self._block_task.uncancel()
            self._block_task = None
            raise AgentError(f"stopped while starting: {self.stop_reason}") from None
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        swallow = False
        if exc_type is asyncio.CancelledError and self._cancelled_block and self._block_task is not None:
            self._block_task.uncancel()
            swallow = True
        elif exc is not None and not isinstance(exc, asyncio.CancelledError):
            if self.stop_reason is None:
                self.stop_reason = f"error in the session block: {type(exc).__name__}"
            self._emit(ErrorEvent("block", str(exc) or type(exc).__name__, type(exc).__name__, fatal=True))
        self._block_task = None
        await self._shutdown(failed=False)
        self._after_block()
        if swallow and self.failure is not None:
            raise self.failure  # what ended the block (e.g. the bridge call could not be set up)
        return swallow

    def _after_block(self) -> None:
        """Hook: the Agent raises SessionExpiredError here when expire_date ended the block."""


async def wait_shielded(task: asyncio.Task, bound: float) -> None:
    """Wait for ``task`` even through cancellation (re-raised after), at most ``bound`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    cancelled = False
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.error("shutdown did not finish within %.0f s", bound)
            break
        try:
            await asyncio.wait_for(asyncio.shield(task), remaining)
        except asyncio.CancelledError:
            cancelled = True
        except TimeoutError:
            log.error("shutdown did not finish within %.0f s", bound)
            break
        except Exception:
            break
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.error("shutdown failed: %s", task.exception())
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["ANSWER_MODES", "Phone", "make_source", "wait_shielded"]
