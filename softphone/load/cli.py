"""The ``softphone load`` command (registered by :mod:`softphone.cli`); the work is in the runner.

Exit status: 0 every threshold passed, 3 a threshold failed
(:data:`~softphone.load.results.EXIT_THRESHOLD_FAILED`), 2 bad input (scenario,
credentials, options), 1 the run could not start, 130 aborted by a second Ctrl-C.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from softphone.errors import ConfigurationError, SoftphoneError
from softphone.load.scenario import parse_duration

EXIT_BAD_INPUT = 2


def _ramp(value: str) -> float:
    text = str(value).strip().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise click.BadParameter(f"agents per second, e.g. 10 or 10/s; got {value!r}") from None
    if not rate > 0:
        raise click.BadParameter(f"must be above 0, got {value!r}")
    return rate


def _duration(value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not seconds > 0:
        raise click.BadParameter("must be above 0")
    return seconds


@click.command("load")
@click.option("--agents", "-n", type=click.IntRange(min=1), required=True, help="Agent sessions to run.")
@click.option("--ramp", default="10/s", show_default=True, help="Agents started per second (R or R/s).")
@click.option("--duration", default="60s", show_default=True,
              help="How long the run lasts from its start (30, 90s, 5m); then every agent logs out.")
@click.option("--workers", "-k", type=click.IntRange(min=1), default=None,
              help="Worker processes [default: one per core, at most one per agent].")
@click.option("--scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Scenario file (YAML) [default: stay on the bridge call, audio checked].")
@click.option("--url-template", default=None, help="Launch URL with {n} for the agent number (1..N).")
@click.option("--credentials", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="CSV, one row per agent; the header names launch parameters (or a 'url' column).")
@click.option("--lab", is_flag=True, help="Start the embedded lab with N seeded agents (and coturn when installed).")
@click.option("--lab-customers", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              metavar="FILE", help="With --lab: YAML/JSON table of simulated customers per dialled number (busy, "
              "no_answer, reject, what they play...), as `softphone lab --customers` [default: built in: *486 busy, "
              "*480 no answer, *603 reject, others answer with tone:600].")
@click.option("--lab-prompt", default=None, metavar="FILE|tone:HZ",
              help="With --lab: what the platform plays to agents on the bridge call while no customer is on the "
              "line: tone:HZ, silence or an audio file [default: tone:440].")
@click.option("--lab-recordings", type=click.Path(file_okay=False, path_type=Path), default=None, metavar="DIR",
              help="With --lab: the lab records bridge calls and the calls a talk step's `record` asks for into "
              "DIR (created if missing; the lab then decodes what agents send) [default: none recorded].")
@click.option("--campaign-id", type=click.IntRange(min=0), default=1, show_default=True,
              help="Campaign the agents log in to.")
@click.option("--relay-only", is_flag=True, help="Agents' media through TURN only.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("load-results"),
              show_default=True, help="Where results.json, csv/, junit.xml, report.html, clips/ and recordings/ go.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the scenarios' draws.")
@click.option("--quiet", "-q", is_flag=True, help="No live progress (the summary is still printed).")
@click.option("--prometheus", metavar="[HOST:]PORT", default=None,
              help="Serve the live counters at http://HOST:PORT/metrics (host default 127.0.0.1).")
def load_command(agents: int, ramp: str, duration: str, workers: int | None, scenario: Path | None,
                 url_template: str | None, credentials: Path | None, lab: bool, campaign_id: int,
                 lab_customers: Path | None, lab_prompt: str | None, lab_recordings: Path | None,
                 relay_only: bool, out_dir: Path, seed: int, quiet: bool, prometheus: str | None) -> None:
    """Run N agent sessions (full Webphone flow, then the scenario) and report on them.

    With --lab the embedded lab stands in for the platform; --lab-customers,
    --lab-prompt and --lab-recordings set what it does (who answers which number,
    what agents hear on the bridge call, where its recordings go).
    """
    from softphone.load.credentials import specs_from_csv, specs_from_template
    from softphone.load.runner import LoadOptions, run_load
    from softphone.load.scenario import load_scenario

    sources = [name for name, given in (("--url-template", url_template), ("--credentials", credentials),
                                        ("--lab", lab)) if given]
    if len(sources) != 1:
        raise click.UsageError("give exactly one of --url-template, --credentials or --lab"
                               + (f" (got {', '.join(sources)})" if sources else ""))
    try:
        ramp_rate = _ramp(ramp)
        seconds = _duration(duration)
    except click.BadParameter as exc:
        raise click.UsageError(str(exc)) from None
    try:
        specs = (specs_from_template(url_template, agents) if url_template else
                 specs_from_csv(credentials, agents) if credentials else None)
        options = LoadOptions(agents=agents, ramp=ramp_rate, duration=seconds, workers=workers,
                              scenario=load_scenario(scenario) if scenario else None, specs=specs, lab=lab,
                              lab_customers=lab_customers, lab_prompt=lab_prompt, lab_recordings=lab_recordings,
                              campaign_id=campaign_id, relay_only=relay_only, out_dir=out_dir, quiet=quiet,
                              seed=seed, prometheus=prometheus)
        options.validate()
        if prometheus:
            from softphone.load.prometheus import parse_listen

            parse_listen(prometheus)
    except ConfigurationError as exc:
        click.echo(f"softphone load: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    try:
        code = run_load(options)
    except ConfigurationError as exc:
        click.echo(f"softphone load: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except SoftphoneError as exc:
        click.echo(f"softphone load: {exc}", err=True)
        sys.exit(1)
    sys.exit(code)
