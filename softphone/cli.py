"""The ``softphone`` command.

Each subcommand imports what it needs lazily, so ``softphone --help`` stays
fast and a broken optional dependency only breaks its own subcommand.
Exit codes: 0 success, 1 runtime failure, 2 bad input (click's usage errors
and invalid launch parameters), 130 interrupted.
"""

from __future__ import annotations

import click

from softphone import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="softphone")
def main() -> None:
    """Headless WebRTC softphone agent for TForge OmniSense.

    Registers like the browser Webphone (SIP.js over WebSocket, TURN), logs an
    agent in, answers the bridge call, plays and records audio, and drives the
    platform's REST API; plus a local lab that stands in for the platform.
    """


if __name__ == "__main__":  # pragma: no cover
    main()
