"""Helpers for tests of `softphone lab` as a user runs it: the process and its banner, TURN relays."""

from __future__ import annotations

import asyncio
import os
import sys

import aioice
from aioice.ice import TransportPolicy

CLI = [sys.executable, "-m", "softphone.cli", "lab"]


async def start(*args: str, env: dict | None = None) -> tuple[asyncio.subprocess.Process, dict[str, str], list[str]]:
    """Run `softphone lab ARGS` until its banner is printed: the process, the banner's
    ``key: value`` lines (plus ``url`` from the "serving" line) and every line read."""
    proc = await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})})
    banner: dict[str, str] = {}
    lines: list[str] = []

    async def read_banner() -> None:
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("softphone lab exited: " + (await proc.stderr.read()).decode())
            lines.append(line)
            if line.startswith("softphone lab: serving "):
                banner["url"] = line.split()[-1]
            elif ":" in line and line.startswith("  "):
                k, _, v = line.strip().partition(":")
                banner[k.strip()] = v.strip()
            if "Ctrl-C" in line:
                return

    try:
        await asyncio.wait_for(read_banner(), 60)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc, banner, lines


async def relay_candidates(port: int, username: str, password: str) -> list[aioice.Candidate]:
    """The relay candidates a TURN server on 127.0.0.1:PORT gives these credentials."""
    conn = aioice.Connection(ice_controlling=True, turn_server=("127.0.0.1", port), turn_username=username,
                             turn_password=password, use_ipv6=False, transport_policy=TransportPolicy.RELAY)
    try:
        await asyncio.wait_for(conn.gather_candidates(), 15)
        return [c for c in conn.local_candidates if c.type == "relay"]
    finally:
        await conn.close()
