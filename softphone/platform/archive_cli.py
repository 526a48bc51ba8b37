"""``softphone leads archive|dearchive``: the command-line face of :mod:`archive`.

Kept out of ``softphone/cli.py`` so that ``softphone --help`` does not import
aiohttp; cli.py's ``leads`` group loads these commands on first use.
Exit status: 0 every batch processed; 1 a batch failed or the job stopped
(server message printed); 2 bad input (nothing sent); 130 interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import warnings
from typing import Any

import click

from softphone.errors import ConfigurationError, PlatformError, PlatformValidationError
from softphone.log import Secret, get_logger
from softphone.platform.archive import (
    ArchiveJob,
    ArchiveReport,
    BatchOutcome,
    BatchStatus,
    JobState,
    Operation,
    parse_ids,
)
from softphone.platform.client import MAX_ARCHIVE_IDS, PlatformClient
from softphone.platform.paths import PlatformPaths

log = get_logger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _read_ids(sources: list[tuple[str, str]]) -> list[int]:
    ids: list[int] = []
    for name, text in sources:
        ids.extend(parse_ids(text, name))
    return ids


def _collect_sources(source: str | None, ids: tuple[str, ...], ids_files: tuple[str, ...]) -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    for n, text in enumerate(ids, start=1):
        sources.append((f"--ids #{n}" if len(ids) > 1 else "--ids", text))
    files = list(ids_files)
    if source is not None:
        if source != "-":
            raise click.UsageError(f"unexpected argument {source!r}: use --ids, --ids-file FILE or '-' for stdin")
        files.append("-")
    for f in files:
        if f == "-":
            sources.append(("stdin", click.get_text_stream("stdin").read()))
        else:
            try:
                with open(f, encoding="utf-8") as fh:
                    sources.append((f, fh.read()))
            except OSError as exc:
                raise click.BadParameter(f"cannot read {f}: {exc.strerror or exc}",
                                         param_hint="--ids-file") from None
            except UnicodeDecodeError:
                raise click.BadParameter(f"{f} is not UTF-8 text", param_hint="--ids-file") from None
    if not sources:
        raise click.UsageError("no lead ids: give --ids 1,2,3, --ids-file FILE or '-' (stdin)")
    return sources


def _base_url(server: str | None, api_url: str | None) -> str:
    if api_url:
        return api_url
    if not server:
        raise click.UsageError("no server: pass --server HOST|URL (or SOFTPHONE_SERVER / SOFTPHONE_API_URL)")
    return server if "://" in server else f"https://{server}"


def _batch_line(b: BatchOutcome, total: int) -> str:
    head = f"batch {b.index}/{total} ids {b.ids[0]}..{b.ids[-1]} ({len(b.ids)})"
    if b.status is BatchStatus.OK and b.result is not None:
        r = b.result
        extra = f" after {r.attempts} attempts" if r.attempts > 1 else ""
        if b.missing_ids:
            extra += f" ({len(b.missing_ids)} missing id(s) left out)"
        if b.done_ids:
            extra += f" ({len(b.done_ids)} id(s) already done by an earlier run)"
        return (f"{head}: ok select={r.select_count} insert={r.insert_count} update={r.update_count} "
                f"delete={r.delete_count}{extra}")
    if b.status is BatchStatus.OK:
        return f"{head}: ok, {b.message}"
    if b.status is BatchStatus.DRY_RUN:
        return f"{head}: dry run, not sent"
    status = f"HTTP {b.http_status}: " if b.http_status else ""
    ids = ""
    if b.offending_ids:
        shown = ", ".join(map(str, b.offending_ids[:20]))
        more = f" (+{len(b.offending_ids) - 20} more)" if len(b.offending_ids) > 20 else ""
        ids = f" [ids: {shown}{more}]"
    return f"{head}: {b.status.value.upper()} {status}{b.message}{ids}"


def _totals_line(report: ArchiveReport) -> str:
    t = report.totals
    unconfirmed = f" unconfirmed={t['batches_unconfirmed']}" if t["batches_unconfirmed"] else ""
    unconfirmed += f" missing={t['missing']}" if t["missing"] else ""
    unconfirmed += f" already_done={t['already_done']}" if t["already_done"] else ""
    return (f"total: {t['ids']} ids in {len(report.batches)} batches: ok={t['batches_ok']} "
            f"failed={t['batches_failed']} skipped={t['batches_skipped']}{unconfirmed}; select={t['select_count']} "
            f"insert={t['insert_count']} update={t['update_count']} delete={t['delete_count']}")


def run_command(operation: Operation, *, source: str | None, ids: tuple[str, ...],
                ids_files: tuple[str, ...], no_insert: bool, no_update: bool, no_delete: bool,
                server: str | None, api_url: str | None, auth_key: str | None, ca_file: str | None,
                insecure: bool, paths_file: str | None, report: str | None, dry_run: bool,
                wait_outside_office_hours: bool, poll_interval: float, max_wait: float | None,
                batch_size: int, timeout: float, retries: int, debug: bool = False,
                skip_missing: bool = False, remaining: str | None = None, allow_http: bool = False) -> None:
    """Body shared by both commands (click has parsed and typed the options)."""
    if debug:
        from softphone.log import setup_logging

        setup_logging(debug_console=True)
    if operation is Operation.DEARCHIVE and no_update:
        raise click.UsageError("--no-update does not apply to dearchive: dearchive has no update step "
                               "(it inserts back into vicidial_list, then deletes from the archive)")
    if ca_file and insecure:
        raise click.UsageError("--ca-file and --insecure are exclusive")
    ctx = click.get_current_context()
    given = {n for n in ("poll_interval", "max_wait")
             if ctx.get_parameter_source(n) is not click.core.ParameterSource.DEFAULT}
    if given and not wait_outside_office_hours:
        raise click.UsageError("--poll-interval/--max-wait only make sense with --wait-outside-office-hours")
    if not 1 <= batch_size <= MAX_ARCHIVE_IDS:
        raise click.BadParameter(f"must be 1..{MAX_ARCHIVE_IDS}", param_hint="--batch-size")
    if no_insert and no_delete and (no_update or operation is Operation.DEARCHIVE):
        raise click.UsageError("every step is disabled (--no-insert --no-update --no-delete): nothing to do")

    try:
        raw_ids = _read_ids(_collect_sources(source, ids, ids_files))
    except PlatformValidationError as exc:
        click.echo(f"softphone: {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    try:
        # the client is attached once the command knows it will send
        job = ArchiveJob(None, operation, raw_ids, insert=not no_insert, update=not no_update,
                         delete=not no_delete, batch_size=batch_size,
                         wait_office_hours=wait_outside_office_hours, poll_interval=poll_interval,
                         max_wait=max_wait, on_wait=_echo_wait, skip_missing=skip_missing)
    except PlatformValidationError as exc:
        click.echo(f"softphone: {exc.message}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    if job.report.duplicates:
        d = job.report.duplicates
        click.echo(f"softphone: warning: {len(d)} duplicate lead id(s) removed: "
                   f"{', '.join(map(str, d[:20]))}{' ...' if len(d) > 20 else ''}", err=True)
    total = len(job.report.batches)
    n_ids = sum(len(b.ids) for b in job.report.batches)
    flags = ", ".join(f"{k}={v}" for k, v in job.flags.items())
    click.echo(f"{operation.value}: {n_ids} lead ids in {total} batch(es) of <= {batch_size} ({flags})", err=True)

    for option, target in (("--report", report), ("--remaining", remaining)):
        if target:
            try:  # fail before sending anything, not after the first batch
                if option == "--report":
                    job.report.write(target)
                else:
                    _write_remaining(target, [])
            except OSError as exc:
                click.echo(f"softphone: {option} {target}: cannot write: {exc.strerror or exc}", err=True)
                sys.exit(EXIT_BAD_INPUT)

    if dry_run:
        final = job.dry_run()
        for b in final.batches:
            click.echo(_batch_line(b, total))
        click.echo(_totals_line(final))
        if report:
            final.write(report)
        if remaining:  # nothing was processed: every id is still to do
            _write_remaining(remaining, [i for b in final.batches for i in b.ids])
        return

    if not auth_key:
        raise click.UsageError("no system key: pass --auth-key or set SOFTPHONE_AUTH_KEY")
    base = _base_url(server, api_url)
    try:
        paths = PlatformPaths.load(paths_file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # --insecure / plain http are announced by the client's log warning
            client = PlatformClient(base, Secret(auth_key), ca_file=ca_file, insecure=insecure,
                                    timeout=timeout, retries=retries, paths=paths, allow_http=allow_http)
    except ConfigurationError as exc:
        click.echo(f"softphone: {exc}", err=True)
        sys.exit(EXIT_BAD_INPUT)

    job.client = client
    final = asyncio.run(_run(job, total, n_ids, report))
    click.echo(_totals_line(final))
    left = final.remaining_ids()
    if remaining:
        _write_remaining(remaining, left)
    if left:
        hint = f"written to {remaining} (pass it back with --ids-file)" if remaining else \
            "rerun with --remaining FILE to save them"
        click.echo(f"softphone: {len(left)} lead id(s) not confirmed processed; {hint}", err=True)
        unknown = [b for b in final.batches if b.status is BatchStatus.UNCONFIRMED]
        if unknown:
            click.echo(f"softphone: {len(unknown)} batch(es) unconfirmed: the server may have processed them; "
                       "a rerun recognises ids already done", err=True)
    if final.state is JobState.INTERRUPTED:
        click.echo(f"softphone: interrupted: {final.stop_reason}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if final.state is JobState.STOPPED:
        click.echo(f"softphone: stopped: {final.stop_reason}", err=True)
    if not final.ok:
        failed = [b for b in final.batches if b.status is BatchStatus.FAILED]
        if failed and final.state is not JobState.STOPPED:
            click.echo(f"softphone: {len(failed)} batch(es) failed; first: {failed[0].message}", err=True)
        sys.exit(EXIT_FAILED)


def _write_remaining(path: str, ids: list[int]) -> None:
    """One id per line, written atomically: a file --ids-file reads back."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(f"{i}\n" for i in ids))
    os.replace(tmp, path)


def _echo_wait(b: BatchOutcome, interval: float) -> None:
    click.echo(f"batch {b.index}: outside office hours only ({b.message}); retrying in {interval:g}s "
               f"(wait #{b.office_hours_waits})", err=True)


async def _run(job: ArchiveJob, total: int, n_ids: int, report_path: str | None) -> ArchiveReport:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    with click.progressbar(length=n_ids, label="leads", file=sys.stderr, show_pos=True) as bar:

        def echo_batch(b: BatchOutcome) -> None:
            bar.update(len(b.ids))
            click.echo(_batch_line(b, total))
            if report_path:  # keep the report current: a crash still leaves what was done
                job.report.write(report_path)

        job.on_batch = echo_batch
        assert job.client is not None
        client = job.client
        presses = 0

        def on_sigint() -> None:
            nonlocal presses
            presses += 1
            if presses == 1:
                click.echo("\nsoftphone: stopping after the current batch (Ctrl-C again to abort now)", err=True)
                job.request_stop()
            elif task is not None:
                task.cancel()

        handler_installed = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGINT, on_sigint)
            handler_installed = True
        try:
            async with client:
                await job.run()
        except asyncio.CancelledError:
            pass  # second Ctrl-C: the report below says which batches were not confirmed
        except PlatformError as exc:  # pragma: no cover - the job records platform errors itself
            job.report.stop_reason = str(exc)
            job.report.state = JobState.STOPPED
        finally:
            if handler_installed:
                loop.remove_signal_handler(signal.SIGINT)
            if report_path:
                job.report.write(report_path)
                click.echo(f"report written to {report_path}", err=True)
    return job.report


def common_options(func: Any) -> Any:
    """The options both commands take (``--no-update`` is refused by dearchive)."""
    options = [
        click.argument("source", required=False, metavar="[-]"),
        click.option("--ids", "ids", multiple=True, metavar="LIST",
                     help="lead ids separated by commas, spaces or newlines (repeatable)"),
        click.option("--ids-file", "ids_files", multiple=True, metavar="FILE",
                     help="file of lead ids ('-' = stdin; repeatable)"),
        click.option("--no-insert", is_flag=True, help="skip the insert step"),
        click.option("--no-update", is_flag=True, help="skip the update step (archive only)"),
        click.option("--no-delete", is_flag=True, help="skip the delete step"),
        click.option("--server", envvar="SOFTPHONE_SERVER", metavar="HOST|URL",
                     help="platform host (https://HOST) or base URL [env SOFTPHONE_SERVER]"),
        click.option("--api-url", envvar="SOFTPHONE_API_URL", metavar="URL",
                     help="REST API base URL, overrides --server [env SOFTPHONE_API_URL]"),
        click.option("--auth-key", envvar="SOFTPHONE_AUTH_KEY", metavar="KEY",
                     help="system key; prefer the environment [env SOFTPHONE_AUTH_KEY]"),
        click.option("--ca-file", type=click.Path(exists=True, dir_okay=False),
                     help="CA bundle to verify the server's TLS certificate"),
        click.option("--insecure", is_flag=True, help="do NOT verify TLS certificates (like curl -k)"),
        click.option("--allow-http", is_flag=True,
                     help="accept a plain http:// URL to another host (the system key travels in clear text)"),
        click.option("--paths-file", envvar="SOFTPHONE_PATHS_FILE", type=click.Path(exists=True, dir_okay=False),
                     help="JSON/TOML file overriding REST paths [env SOFTPHONE_PATHS_FILE]"),
        click.option("--report", type=click.Path(dir_okay=False, writable=True),
                     help="write a JSON report (per batch and totals) to this file"),
        click.option("--remaining", type=click.Path(dir_okay=False, writable=True),
                     help="write the ids not confirmed processed (failed, skipped, interrupted), one per line"),
        click.option("--skip-missing", is_flag=True,
                     help="on 'lead_ids does not exist', re-send the batch without those ids (listed in the report)"),
        click.option("--dry-run", is_flag=True, help="validate and print the batches; send nothing"),
        click.option("--wait-outside-office-hours", is_flag=True,
                     help="on 403 office hours, retry the batch until the server allows it"),
        click.option("--poll-interval", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
                     metavar="S", help="seconds between office-hours retries"),
        click.option("--max-wait", type=click.FloatRange(min=0), default=None, metavar="S",
                     help="give up after waiting S seconds in total for office hours to end"),
        click.option("--batch-size", type=click.IntRange(1, MAX_ARCHIVE_IDS), default=MAX_ARCHIVE_IDS,
                     show_default=True, help="ids per request (the API takes at most 500)"),
        click.option("--timeout", type=click.FloatRange(min=0.001), default=60.0, show_default=True,
                     metavar="S", help="seconds to wait for each answer"),
        click.option("--retries", type=click.IntRange(0, 10), default=2, show_default=True,
                     help="retries after a lost connection, timeout or 502/503/504 (archive is idempotent)"),
        click.option("--debug", is_flag=True, help="debug trace on stderr (each request: method, path, status, "
                                                   "latency; secrets redacted)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command("archive")
@common_options
def archive_command(**kwargs: Any) -> None:
    """Archive leads: copy to vicidial_list_archive, refresh, then safe-delete from vicidial_list.

    Ids come from --ids, --ids-file or stdin ('-'), any number of them; they
    are sent in batches of 500. The API refuses to run during office hours
    (403): the command stops, or waits with --wait-outside-office-hours.
    Ctrl-C stops after the batch in flight and still writes --report.
    """
    run_command(Operation.ARCHIVE, **kwargs)


@click.command("dearchive")
@common_options
def dearchive_command(**kwargs: Any) -> None:
    """Dearchive leads: copy back into vicidial_list, then safe-delete from the archive.

    Same input, batching, report and exit status as `leads archive`;
    allowed during office hours. --no-update does not apply.
    """
    run_command(Operation.DEARCHIVE, **kwargs)


COMMANDS: dict[str, click.Command] = {"archive": archive_command, "dearchive": dearchive_command}
