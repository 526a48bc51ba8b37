"""The ``softphone`` command.

Each subcommand imports what it needs lazily, so ``softphone --help`` stays
fast and a broken optional dependency only breaks its own subcommand.
Exit codes: 0 success, 1 runtime failure, 2 bad input (click's usage errors
and invalid launch parameters), 130 interrupted.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from softphone import __version__
from softphone.errors import ParameterError
from softphone.log import get_logger
from softphone.params import OVERRIDES, PARAMETERS, LaunchParams, load_params

log = get_logger("softphone.cli")  # not __name__: "__main__" under python -m

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

EXIT_BAD_INPUT = 2


def launch_options(func: Callable) -> Callable:
    """Add the Webphone's launch parameters (and overrides) as flags.

    Every flag defaults to "not given" so that a URL or the environment can
    supply the value (precedence: flags > URL > environment).
    """
    options = []
    for spec in PARAMETERS:
        flag = "--" + spec.name.replace("_", "-")
        env_note = f" [env {spec.env}]"
        if spec.kind == "boolean":
            options.append(click.option(flag, spec.name, is_flag=True, flag_value=True, default=None,
                                        help=spec.help + env_note))
        else:
            options.append(click.option(flag, spec.name, default=None, metavar=spec.kind.upper(),
                                        help=spec.help + ("; prefer the environment for secrets" if spec.secret else "")
                                        + env_note))
    for ov in OVERRIDES:
        options.append(click.option("--" + ov.name.replace("_", "-"), ov.name, default=None,
                                    help=ov.help + f" [env {ov.env}]"))
    for option in reversed(options):
        func = option(func)
    return func


_LAUNCH_NAMES = [p.name for p in PARAMETERS] + [o.name for o in OVERRIDES]


def pop_launch_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the launch-parameter flags out of a command's kwargs."""
    return {name: kwargs.pop(name) for name in _LAUNCH_NAMES if name in kwargs}


def params_or_exit(url: str | None, flags: dict[str, Any]) -> LaunchParams:
    """Validated parameters, or every field error on stderr and exit status 2."""
    try:
        return load_params(url, flags=flags)
    except ParameterError as exc:
        click.echo(f"softphone: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)


def apply_debug_flags(params: LaunchParams) -> None:
    """``debug_console`` / ``debug_html`` as the Webphone honours them."""
    if params.debug_console or params.debug_html:
        from softphone.log import setup_logging

        setup_logging(debug_console=params.debug_console, debug_html=params.debug_html)


def handle_interrupt(func: Callable) -> Callable:
    """Exit 130 on Ctrl-C without a traceback (cleanup runs in the command)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except KeyboardInterrupt:
            click.echo("softphone: interrupted", err=True)
            sys.exit(130)

    return wrapper


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="softphone")
def main() -> None:
    """Headless WebRTC softphone agent for TForge OmniSense.

    Runs a Webphone agent session from its launch URL (run), a headless phone
    on any SIP-over-WebSocket server (phone), the embedded lab demo (demo);
    validates launch parameters, drives the lead archive API, and runs a local
    lab that stands in for the platform.
    """
    from softphone.log import setup_logging

    setup_logging()


@main.command("params")
@click.argument("url", required=False)
@launch_options
def params_command(url: str | None, **kwargs: Any) -> None:
    """Validate launch parameters and print them, with derived values, as JSON.

    URL is the Webphone's own URL
    (https://HOST/.../TForge-OmniSense-Webphone.html?auth_key=...&server=...)
    or a bare query string. Flags override the URL, which overrides
    SOFTPHONE_* environment variables. Secrets are printed as "***".
    Exit status 2 lists every invalid field.
    """
    flags = pop_launch_flags(kwargs)
    params = params_or_exit(url, flags)
    apply_debug_flags(params)
    log.debug("parameters validated: %r", params)
    out = {"parameters": params.as_dict(), "derived": params.derived.as_dict(),
           "warnings": list(params.warnings)}
    click.echo(json.dumps(out, indent=2))


def _call_options(func: Callable, *, ca_file: bool = True) -> Callable:
    from softphone.cli_run import call_options

    return call_options(func, ca_file=ca_file)


def _run_help(text: str) -> str:
    from softphone.cli_run import EXIT_CODES_HELP

    return text + "\n\n" + EXIT_CODES_HELP


@main.command("run", help=_run_help(
    "Run one Webphone agent session from its launch URL: authorize, obtain the extension, register "
    "over WSS, log in to --campaign, answer the platform's bridge call; play, record and send DTMF on it; "
    "on the way out (call over, --duration, Ctrl-C, SIGTERM, expire_date) log out, hang up, unregister. "
    "A live status line on a terminal (state, call time, received level, loss), plain lines otherwise, "
    "or one JSON object per event with --events json."))
@click.argument("url", required=False)
@click.option("--campaign", type=click.IntRange(min=0), default=None, metavar="ID",
              help="Campaign to log in to (User Login API); without it the agent only registers.")
@functools.partial(_call_options, ca_file="ca_file" not in _LAUNCH_NAMES)
@launch_options
@handle_interrupt
def run_command(url: str | None, campaign: int | None, **kwargs: Any) -> None:
    from softphone.cli_run import agent_run, make_options

    flags = pop_launch_flags(kwargs)
    ca_file = kwargs.pop("ca_file", None)  # only when the launch parameters have no ca_file
    insecure, relay_only = kwargs.pop("insecure"), kwargs.pop("relay_only")
    opts = make_options(**kwargs)
    sys.exit(agent_run(url, flags, campaign, opts, ca_file=ca_file, insecure=insecure, relay_only=relay_only))


@main.command("phone", help=_run_help(
    "A headless WebRTC phone for any SIP-over-WebSocket server (Asterisk, FreeSWITCH, Kamailio), "
    "no OmniSense REST API: register --user on --ws, then --call a target or wait for a call; "
    "play, record, DTMF and the status line as for 'run'."))
@click.option("--ws", required=True, metavar="URL", help="SIP WebSocket URL (ws:// or wss://).")
@click.option("--user", required=True, metavar="EXT", help="SIP user (extension), or a full sip: AOR.")
@click.option("--password", required=True, envvar="SOFTPHONE_PASSWORD",
              help="SIP digest password; prefer the environment [env SOFTPHONE_PASSWORD]")
@click.option("--domain", default=None, help="SIP domain of the AOR [the --ws host]")
@click.option("--turn", multiple=True, metavar="URL", help="TURN URL (turn:HOST:PORT?transport=udp); repeatable.")
@click.option("--turn-user", default=None, help="TURN username [--user]")
@click.option("--turn-password", default=None, envvar="SOFTPHONE_TURN_PASSWORD",
              help="TURN credential [--password] [env SOFTPHONE_TURN_PASSWORD]")
@click.option("--call", "call_target", default=None, metavar="URI", help="Call this extension or SIP URI.")
@_call_options
@handle_interrupt
def phone_command(ws: str, user: str, password: str, domain: str | None, turn: tuple[str, ...],
                  turn_user: str | None, turn_password: str | None, call_target: str | None, **kwargs: Any) -> None:
    from softphone.cli_run import make_options, phone_run
    from softphone.log import register_secret

    register_secret(password)
    register_secret(turn_password)
    ca_file, insecure, relay_only = kwargs.pop("ca_file"), kwargs.pop("insecure"), kwargs.pop("relay_only")
    opts = make_options(**kwargs)
    sys.exit(phone_run(ws, user, password, domain, turn, turn_user, turn_password, call_target, opts,
                       ca_file=ca_file, insecure=insecure, relay_only=relay_only))


class _LeadsGroup(click.Group):
    """Loads ``softphone.platform.archive_cli`` only when a leads command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["archive", "dearchive"]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from softphone.platform.archive_cli import COMMANDS

        return COMMANDS.get(name)


@main.group("leads", cls=_LeadsGroup)
def leads_group() -> None:
    """VICIdial lead archive API: archive or dearchive any number of leads, 500 per request."""


@main.command("lab")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", default=8088, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port of the REST API, the status page and ws:// (0: any free port).")
@click.option("--db", "db_url", default="sqlite:///:memory:", show_default=True, envvar="SOFTPHONE_LAB_DB",
              help="sqlite:///FILE, sqlite:///:memory: or mysql://USER:PASS@HOST:PORT/DB [env SOFTPHONE_LAB_DB]")
@click.option("--api-key", default=None, envvar="SOFTPHONE_LAB_API_KEY",
              help="System key clients must send (default: the seed's) [env SOFTPHONE_LAB_API_KEY]")
@click.option("--office-hours", multiple=True,
              help="Time condition blocking the lead archive API, e.g. 'mon-fri 08:00-17:00 Africa/Johannesburg'; "
                   "repeat or separate with ';'; default none")
@click.option("--seed", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Seed file (default: the packaged softphone/lab/seed.json)")
@click.option("--token-ttl", default=3600.0, show_default=True, type=click.FloatRange(min=1),
              help="Lifetime of user tokens in seconds.")
@click.option("--paths-file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="REST path overrides (JSON/TOML, as for the client) [env SOFTPHONE_PATHS_FILE, SOFTPHONE_PATH_*]")
@click.option("--sip/--no-sip", default=True, show_default=True,
              help="Serve SIP over WebSocket at /ws (registrar, bridge calls); --no-sip: REST only, calls simulated.")
@click.option("--wss-port", default=None, type=click.IntRange(0, 65535),
              help="TLS port of wss:// [default: 8089, the Webphone's default; any free port with --port 0]")
@click.option("--cert", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM certificate (chain) for wss:// [default: self-signed, generated at start]")
@click.option("--key", "key_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PEM private key of --cert")
@click.option("--domain", default=None,
              help="SIP domain and digest realm, the Webphone's `server` [default: the host, or 127.0.0.1]")
@click.option("--prompt", default=None, metavar="FILE|tone:HZ",
              help="What an agent hears on the bridge call [dialer default: tone:440]")
@click.option("--recordings", "recordings_dir", default=None, type=click.Path(file_okay=False),
              help="Directory for call recordings (created if missing) [default: none recorded]")
@click.option("--customers", default=None, type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON table of simulated customers per dialled number [default: built in]")
@click.option("--turn/--no-turn", default=True, show_default=True,
              help="Start coturn for the lab's users when turnserver is installed (else host candidates).")
@click.option("--turn-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="TURN port (the launch URLs' turn_port; 0: any free port). With --no-turn: the port of "
                   "a TURN server run elsewhere on the same host (docker-compose), put in the launch URLs.")
@click.option("--turn-user", default=None, envvar="SOFTPHONE_LAB_TURN_USER", metavar="NAME:PASS",
              help="With --no-turn --turn-port N: the static credential of that TURN server, used by the lab's "
                   "media and put in the launch URLs (turn_username/turn_password) [env SOFTPHONE_LAB_TURN_USER]")
@click.option("--relay-only", is_flag=True, default=False,
              help="The lab's own media offers relay candidates only (needs TURN).")
@handle_interrupt
def lab_command(host: str, port: int, db_url: str, api_key: str | None, office_hours: tuple[str, ...],
                seed: str | None, token_ttl: float, paths_file: str | None, sip: bool, wss_port: int | None,
                cert: str | None, key_file: str | None, domain: str | None, prompt: str | None,
                recordings_dir: str | None, customers: str | None, turn: bool, turn_port: int,
                turn_user: str | None, relay_only: bool) -> None:
    """Run the local stand-in of the OmniSense platform until Ctrl-C.

    REST API, status page (GET /) and SIP over WebSocket (ws:// on --port,
    wss:// on --wss-port, path /ws) with a registrar and a dialer that
    bridges calls to registered phones; coturn for TURN when installed. At
    start it prints a ready Webphone launch URL per seeded agent, the CA
    file a client should trust for wss://, and the system key.
    """
    import asyncio
    import logging
    from pathlib import Path

    from softphone.errors import ConfigurationError, LabError, TelephonyError
    from softphone.lab.server import serve_until_stopped
    from softphone.log import setup_logging
    from softphone.platform.paths import PlatformPaths

    setup_logging(level=logging.INFO)  # one line per request and per SIP/call event, secrets redacted

    def announce(server) -> None:
        click.echo(f"softphone lab: serving {server.url}")
        click.echo(f"  database:     {server.db.url.display}")
        click.echo(f"  api key from: {server.api_key_source}")
        click.echo(f"  system key:   {server.api_key.reveal()}")
        click.echo(f"  seed:         {server.seed.path}")
        click.echo(f"  office hours: {server.lab.office_hours.describe()}")
        click.echo(f"  paths:        {server.lab.paths!r}")
        click.echo(f"  openapi:      {server.url}/openapi.yaml")
        click.echo(f"  rest api:     {server.url}")
        click.echo(f"  status page:  {server.url}/")
        click.echo(f"  telephony:    {type(server.lab.telephony).__name__}")
        if server.endpoint is not None:
            click.echo(f"  sip ws:       {server.sip_ws_url}")
            if server.sip_wss_url:
                click.echo(f"  sip wss:      {server.sip_wss_url}")
                click.echo(f"  ca file:      {server.ca_file}")
                click.echo(f"  chromium:     --ignore-certificate-errors-spki-list={server.certificate.spki_pin()}")
            click.echo(f"  sip domain:   {server.domain}")
            if server.turn is not None:
                turn_line = f"{server.turn.url} (coturn pid {server.turn.pid}, {len(server.turn.users)} user(s))"
            elif server.external_turn_user is not None:
                turn_line = f"turn:{server.domain}:{server.turn_port} (run elsewhere, user {server.external_turn_user[0]})"
            else:
                turn_line = "none: host candidates only"
            click.echo(f"  turn:         {turn_line}")
        for user in server.seed.users:
            if user.get("role") == "supervisor":
                continue
            click.echo(f"  webphone {user['user_name']} (user_id {user['user_id']}): "
                       f"{server.launch_url(user['user_id'])}")
        click.echo("  Ctrl-C to stop")

    source = click.get_current_context().get_parameter_source("api_key")
    key_source = {click.core.ParameterSource.ENVIRONMENT: "environment SOFTPHONE_LAB_API_KEY",
                  click.core.ParameterSource.COMMANDLINE: "option --api-key"}.get(source)
    try:
        paths = PlatformPaths.load(paths_file)
        if recordings_dir is not None:
            Path(recordings_dir).mkdir(parents=True, exist_ok=True)
        if wss_port is None:
            wss_port = 8089 if port else 0
        asyncio.run(serve_until_stopped(announce, host=host, port=port, db_url=db_url, api_key=api_key,
                                        office_hours=list(office_hours) or None, seed=seed,
                                        token_ttl=token_ttl, api_key_source=key_source, paths=paths,
                                        sip=sip, wss_port=wss_port, cert=cert, key=key_file, domain=domain,
                                        prompt=prompt, recordings_dir=recordings_dir, customers=customers,
                                        turn=turn and sip, turn_port=turn_port, turn_user=turn_user,
                                        relay_only=relay_only))
    except (ConfigurationError, TelephonyError) as exc:
        click.echo(f"softphone lab: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except LabError as exc:
        click.echo(f"softphone lab: {exc}", err=True)
        sys.exit(1)
    click.echo("softphone lab: stopped")


@main.command("demo")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Also write an HTML report (steps and the level chart of both audio directions).")
@click.option("--turn/--no-turn", default=None,
              help="TURN through coturn, relay only [default: when turnserver is installed; else host candidates]")
@click.option("--step-timeout", default=10.0, show_default=True, type=click.FloatRange(min=1),
              help="Seconds each step may take before the demo fails naming it.")
@click.option("--debug", is_flag=True, default=False,
              help="The agent's SIP, ICE and API trace on stderr (the Webphone's debug_console; secrets redacted).")
@handle_interrupt
def demo_command(report: str | None, turn: bool | None, step_timeout: float, debug: bool) -> None:
    """Start the embedded lab and run one agent through the whole Webphone flow, step by step.

    Exit status 0 when every step passed, 1 naming the step that failed.
    """
    from softphone.demo import main as demo_main

    sys.exit(demo_main(report=report, turn=turn, step_timeout=step_timeout, debug=debug))


def _add_load_command() -> None:
    """``softphone load`` lives in the load package (its options and body)."""
    from softphone.load.cli import load_command

    main.add_command(load_command, "load")


_add_load_command()


if __name__ == "__main__":  # pragma: no cover
    main()
