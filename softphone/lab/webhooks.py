"""Notifications (webhooks): the lab POSTs ``{"type", "payload"}`` to the registered URL.

Best effort, like the platform: each notification is sent in a background
task with a timeout, failures are logged and dropped, and the API call that
caused it never waits for it.  :meth:`Notifier.drain` lets tests and a clean
shutdown wait for what is in flight.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from softphone.log import get_logger

log = get_logger(__name__)

USER_STATUS = "user_status"
CALL = "call"
CALL_END = "call_end"


def url_for_log(url: str) -> str:
    """``url`` without user info, query and fragment: where tokens of a webhook URL usually sit."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{host}:{parts.port}" if parts.port is not None else host
    except ValueError:  # a port that is not a number: keep only what precedes any query
        return url.split("?", 1)[0].split("#", 1)[0]
    if not parts.scheme:
        return url.split("?", 1)[0].split("#", 1)[0]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class Notifier:
    """Sends notifications to one URL (``None``: nowhere)."""

    def __init__(self, timeout: float = 5.0):
        self.url: str | None = None
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self._tasks: set[asyncio.Task] = set()
        self._session: aiohttp.ClientSession | None = None

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue one notification; returns at once."""
        if not self.url:
            return
        task = asyncio.get_running_loop().create_task(self._send(self.url, {"type": kind, "payload": payload}))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, body: dict[str, Any]) -> None:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(url, json=body,
                                          timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                await resp.read()
                if resp.status >= 300:
                    self.failed += 1
                    log.warning("notification %s to %s: HTTP %d", body["type"], url_for_log(url), resp.status)
                    return
            self.sent += 1
            log.debug("notification %s delivered to %s", body["type"], url_for_log(url))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failed += 1
            log.warning("notification %s to %s failed: %s", body["type"], url_for_log(url), exc.__class__.__name__)

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait (bounded) for notifications in flight."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        await self.drain(timeout=self.timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None
