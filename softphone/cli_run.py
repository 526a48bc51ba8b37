"""``softphone run`` (one Webphone agent session) and ``softphone phone`` (any SIP-over-WebSocket server).

Both drive the same :class:`~softphone.agent.call.Call` facade: play a file or
a tone, record, send DTMF, show a live status line (state, call time, received
level, loss) on a terminal or plain lines otherwise, and with ``--events json``
print one JSON object per event on stdout.  SIGINT and SIGTERM stop the session
in order (log out, hang up, unregister, close) before the process exits; a
second signal exits at once.

Exit status (also in the commands' help and the README):
0 the session ended normally (call over, ``--duration`` reached, ``expire_date``),
1 the session failed, 2 bad input, 3 authentication refused, 4 network or TLS
failure (server unreachable, TLS refused, TURN unreachable), 130 interrupted
(SIGINT or SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

import click

from softphone.errors import (
    AudioFileError,
    AuthenticationError,
    ConfigurationError,
    IceError,
    ParameterError,
    PlatformAuthError,
    PlatformConnectionError,
    PlatformTimeoutError,
    SessionExpiredError,
    SoftphoneError,
    TransactionTimeoutError,
    TransportError,
)
from softphone.log import get_logger, redact

log = get_logger("softphone.cli_run")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_AUTH = 3
EXIT_NETWORK = 4
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = (
    "Exit status: 0 ended normally (call over, --duration reached, expire_date); 1 session failed; "
    "2 bad input; 3 authentication refused; 4 network/TLS failure (server or TURN unreachable); "
    "130 interrupted (SIGINT/SIGTERM, after logging out and unregistering)."
)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit status for an error that ended a session."""
    if isinstance(exc, ParameterError | ConfigurationError | AudioFileError):
        return EXIT_BAD_INPUT
    if isinstance(exc, PlatformAuthError | AuthenticationError):
        return EXIT_AUTH
    if isinstance(exc, PlatformConnectionError | PlatformTimeoutError | TransportError | IceError
                  | TransactionTimeoutError | OSError):
        return EXIT_NETWORK
    return EXIT_FAILED


def one_line(exc: BaseException) -> str:
    """An error as one line naming its cause (secrets redacted)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    cause = exc.__cause__
    if isinstance(exc, IceError) or isinstance(cause, IceError):
        text = f"media (TURN/ICE): {text}"
    return redact(text)


@dataclass
class Options:
    """What both commands share once parsed."""

    play: str | None
    record: str | None
    answer: str
    duration: float | None
    dtmf: str | None
    dtmf_method: str
    events_json: bool
    wait_call: float
    keep: bool = False


class Reporter:
    """Prints events (JSON lines or human lines) and the live status line."""

    def __init__(self, session: Any, json_events: bool, out: TextIO | None = None, err: TextIO | None = None):
        self.session = session
        self.json = json_events
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.tty = not json_events and self.out.isatty()
        self._status_shown = False
        self._last_plain = 0.0
        names = ("state", "registered", "unregistered", "logged_in", "logged_out", "call_incoming",
                 "call_answered", "call_ended", "dtmf", "hold", "unhold", "reconnecting", "expiring", "error")
        for name in names:
            session.on(name, self.event)

    def _clear(self) -> None:
        if self._status_shown:
            self.out.write("\r\x1b[2K")
            self._status_shown = False

    def event(self, ev: Any) -> None:
        if self.json:
            self.out.write(json.dumps(ev.as_dict(), default=str) + "\n")
            self.out.flush()
            return
        self._clear()
        self.out.write(f"{time.strftime('%H:%M:%S')} {self.describe(ev)}\n")
        self.out.flush()

    @staticmethod
    def describe(ev: Any) -> str:
        name = ev.EVENT
        if name == "state":
            return f"state: {ev.state}"
        if name == "registered":
            return f"registered {ev.aor} (expires {ev.expires}s)"
        if name == "unregistered":
            return f"unregistered {ev.extension} ({ev.reason})"
        if name == "logged_in":
            return f"logged in: user {ev.user_id}, campaign {ev.campaign_id}, extension {ev.extension}"
        if name == "logged_out":
            if ev.stale:
                return (f"logged out a stale session of user {ev.user_id} left by an earlier run "
                        "(the Webphone's refresh rule); logging in again")
            return f"logged out: user {ev.user_id} ({ev.reason})"
        if name == "call_incoming":
            return f"incoming call from {ev.remote}{' (bridge call)' if ev.bridge else ''}"
        if name == "call_answered":
            return f"call answered ({ev.direction}{', bridge' if ev.bridge else ''}) with {ev.remote}"
        if name == "call_ended":
            code = f", SIP {ev.sip_code}" if ev.sip_code else ""
            return f"call ended: {ev.cause}{code} after {ev.duration:.1f}s"
        if name == "dtmf":
            return f"DTMF {ev.digit} ({ev.duration_ms} ms, {ev.via})"
        if name in ("hold", "unhold"):
            return f"{name} ({ev.by})"
        if name == "reconnecting":
            return f"SIP connection lost: reconnecting (attempt {ev.attempt}, in {ev.delay:.1f}s)"
        if name == "expiring":
            return f"the session expires in {ev.seconds_left:.0f}s (expire_date {ev.expire_date.isoformat()})"
        if name == "error":
            return f"error in {ev.where}: {ev.message}"
        return str(ev.as_dict())

    def status_text(self) -> str:
        s = self.session
        call = s.call
        parts = [f"[{s.state.value}]"]
        if call is not None:
            minutes, seconds = divmod(int(call.duration), 60)
            parts.append(f"call {call.state.value} {minutes:02d}:{seconds:02d}")
            parts.append(f"tx {call.sent_level_dbfs():6.1f} rx {call.received_level_dbfs():6.1f} dBFS")
            quality = call.last_stats
            if quality is not None and quality.loss_fraction is not None:
                parts.append(f"loss {quality.loss_fraction * 100:.1f}%")
            if quality is not None and quality.mos is not None:
                parts.append(f"MOS {quality.mos:.1f}")
            if call.digits:
                parts.append("dtmf " + "".join(e.digit for e in call.digits)[-12:])
        else:
            parts.append("no call")
        return "  ".join(parts)

    async def status_loop(self) -> None:
        """Refresh the status line (a terminal) or print it every 10 s (a pipe or file)."""
        while True:
            call = self.session.call
            if call is not None and call.is_live:
                await call.stats()
            if not self.json:
                now = time.monotonic()
                if self.tty:
                    self.out.write("\r\x1b[2K" + self.status_text())
                    self.out.flush()
                    self._status_shown = True
                elif now - self._last_plain >= 10.0:
                    self._last_plain = now
                    self.out.write(f"{time.strftime('%H:%M:%S')} status: {self.status_text()}\n")
                    self.out.flush()
            await asyncio.sleep(0.5)

    def finish(self, code: int, reason: str) -> None:
        if self.json:
            self.out.write(json.dumps({"event": "exit", "code": code, "reason": reason}) + "\n")
        else:
            self._clear()
            self.out.write(f"{time.strftime('%H:%M:%S')} done: {reason} (exit {code})\n")
        self.out.flush()


async def drive_call(session: Any, call: Any, opts: Options) -> str:
    """Send the DTMF asked for, then wait for the end of the call or ``--duration``; why it ended."""
    if opts.dtmf:
        used = await call.send_dtmf(opts.dtmf, method=opts.dtmf_method)
        log.info("sent DTMF %s by %s", opts.dtmf, used)
    if opts.duration is not None:
        try:
            await asyncio.wait_for(call.wait_ended(), max(0.0, opts.duration - call.duration))
        except TimeoutError:
            await call.hangup()
            return f"--duration {opts.duration:g}s reached"
    else:
        await call.wait_ended()
    return f"call ended ({call.end_cause})"


def run_session(make_session, opts: Options, drive) -> int:
    """Run ``drive(session)`` inside ``async with session`` with signal handling; the exit status."""

    async def main() -> int:
        session = make_session()
        reporter = Reporter(session, opts.events_json)
        loop = asyncio.get_running_loop()
        interrupted: list[str] = []

        def on_signal(name: str) -> None:
            if interrupted:  # a second Ctrl-C: the user will not wait for the orderly stop
                click.echo(f"softphone: {name} again: exiting without logging out or unregistering", err=True)
                os._exit(EXIT_INTERRUPTED)
            interrupted.append(name)
            session.request_stop(f"interrupted ({name})")

        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig.name)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
                pass
        status = asyncio.ensure_future(reporter.status_loop())
        code, reason = EXIT_OK, "stopped"
        try:
            async with session:
                reason = await drive(session)
        except SessionExpiredError as exc:
            code, reason = EXIT_OK, f"session expired: {exc}"
        except asyncio.CancelledError:
            if not interrupted:
                raise
        except SoftphoneError as exc:
            code, reason = exit_code_for(exc), one_line(exc)
            if not interrupted:  # stopped while starting by Ctrl-C: not an error
                click.echo(f"softphone: error: {reason}", err=True)
        except TimeoutError:
            code, reason = EXIT_FAILED, "no call arrived in time (--wait-call)"
            click.echo(f"softphone: error: {reason}", err=True)
        finally:
            status.cancel()
            for sig in installed:
                loop.remove_signal_handler(sig)
        if interrupted:
            code, reason = EXIT_INTERRUPTED, f"interrupted by {interrupted[0]}"
        elif code == EXIT_OK and session.stop_reason and session.stop_reason != "stop requested":
            reason = session.stop_reason if reason == "stopped" else reason
        reporter.finish(code, reason)
        return code

    return asyncio.run(main())


# --- softphone run ---------------------------------------------------------------------


def agent_run(url: str | None, flags: dict[str, Any], campaign: int | None, opts: Options, *,
              ca_file: str | None, insecure: bool, relay_only: bool) -> int:
    """The body of ``softphone run``."""
    from softphone.params import load_params

    try:
        params = load_params(url, flags=flags)
    except ParameterError as exc:
        click.echo(f"softphone: {exc}", err=True)
        return EXIT_BAD_INPUT

    def make():
        from softphone.agent.agent import Agent

        return Agent(params, campaign_id=campaign, answer=opts.answer, play=opts.play, record=opts.record,
                     ca_file=ca_file, insecure=insecure, relay_only=relay_only)

    async def drive(agent) -> str:
        if campaign is None and not opts.keep:
            # no login, so no bridge call: a registered phone until a call comes (or Ctrl-C)
            log.info("no --campaign: registered only; waiting for a call")
        if opts.keep:
            return await agent.wait_stop_requested()
        call = await agent.wait_for_call(timeout=opts.wait_call if campaign is not None else None)
        return await drive_call(agent, call, opts)

    return _start(make, opts, drive)


def _start(make, opts: Options, drive) -> int:
    """Build the session now (bad options fail before any network traffic), then run it."""
    try:
        session = make()
    except SoftphoneError as exc:
        click.echo(f"softphone: error: {one_line(exc)}", err=True)
        return exit_code_for(exc)
    return run_session(lambda: session, opts, drive)


# --- softphone phone -------------------------------------------------------------------


def phone_run(ws: str, user: str, password: str, domain: str | None, turn: tuple[str, ...],
              turn_user: str | None, turn_password: str | None, call_target: str | None, opts: Options, *,
              ca_file: str | None, insecure: bool, relay_only: bool) -> int:
    """The body of ``softphone phone``."""

    def make():
        from softphone.agent.phone import Phone

        return Phone.connect(ws, user, password, domain=domain, turn=turn, turn_username=turn_user,
                             turn_password=turn_password, relay_only=relay_only, ca_file=ca_file,
                             insecure=insecure, answer=opts.answer, play=opts.play, record=opts.record,
                             call_errors_fatal=not opts.keep)

    async def drive(phone) -> str:
        if call_target:
            call = await phone.invite(call_target, timeout=opts.wait_call)
            return await drive_call(phone, call, opts)
        if opts.keep:
            return await phone.wait_stop_requested()
        call = await phone.wait_for_call(timeout=None)
        return await drive_call(phone, call, opts)

    return _start(make, opts, drive)


# --- click options shared by both commands ----------------------------------------------


def call_options(func, *, ca_file: bool = True):
    """--play/--tone, --record, --answer, --duration, --dtmf, --events, TLS and TURN switches
    (``ca_file=False`` where the launch parameters already have ``--ca-file``)."""
    options = [
        click.option("--play", "play", default=None, metavar="FILE",
                     help="Audio file each call plays (any format FFmpeg reads); the call stays up after it."),
        click.option("--tone", "tone", default=None, metavar="HZ",
                     help="Play a tone instead (e.g. 440, or 350+440)."),
        click.option("--record", "record", default=None, type=click.Path(dir_okay=False),
                     help="Record the far end's audio to this file (.wav, .ogg, .mp3, ...)."),
        click.option("--answer", type=click.Choice(["auto", "manual", "reject"]), default="auto",
                     show_default=True,
                     help="Incoming calls: answer, leave ringing, or reject with 486 (run: the bridge "
                          "call is always answered)."),
        click.option("--duration", type=click.FloatRange(min=0), default=None, metavar="S",
                     help="Hang up S seconds after the call is answered, then exit."),
        click.option("--dtmf", default=None, metavar="DIGITS", help="Send these digits once the call is answered."),
        click.option("--dtmf-method", type=click.Choice(["auto", "rfc4733", "info"]), default="auto",
                     show_default=True, help="How --dtmf is sent (auto: RFC 4733 when negotiated, else INFO)."),
        click.option("--events", type=click.Choice(["json", "text"]), default="text", show_default=True,
                     help="json: one JSON object per event on stdout (and a final {\"event\": \"exit\"})."),
        click.option("--wait-call", type=click.FloatRange(min=0.1), default=30.0, show_default=True, metavar="S",
                     help="How long to wait for the bridge call (run) or an answer (phone --call)."),
        click.option("--keep", is_flag=True, default=False,
                     help="Serve calls until interrupted instead of exiting when the call ends."),
        click.option("--insecure", is_flag=True, default=False,
                     help="Do not verify TLS certificates (explicit opt-in; a warning is logged)."),
        click.option("--relay-only", is_flag=True, default=False,
                     help="Media only through the TURN server (no host candidates)."),
    ]
    if ca_file:
        options.append(click.option("--ca-file", default=None, type=click.Path(exists=True, dir_okay=False),
                                    help="CA file to trust for wss:// and turns:// (default: the system's)."))
    for option in reversed(options):
        func = option(func)
    return func


def make_options(play: str | None, tone: str | None, record: str | None, answer: str, duration: float | None,
                 dtmf: str | None, dtmf_method: str, events: str, wait_call: float, keep: bool) -> Options:
    if play and tone:
        raise click.UsageError("give --play FILE or --tone HZ, not both")
    what = play
    if tone:
        freqs = tone.split("+")
        try:
            if not all(0 < float(f) < 8000 for f in freqs):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{tone!r}: expected HZ or HZ+HZ below 8000", param_hint="--tone") from None
        what = f"tone:{tone}"
    if dtmf is not None and (not dtmf or any(d not in "0123456789*#ABCDabcd" for d in dtmf)):
        raise click.BadParameter(f"{dtmf!r}: digits 0-9 * # A-D only", param_hint="--dtmf")
    return Options(play=what, record=record, answer=answer, duration=duration, dtmf=dtmf.upper() if dtmf else None,
                   dtmf_method=dtmf_method, events_json=events == "json", wait_call=wait_call, keep=keep)
