"""A lab for Agent tests: the lab's REST API with a telephony that calls the agent through Kamailio.

Until the lab has its own SIP edge, :class:`KamailioTelephony` stands in for the
platform's phone system: on login it INVITEs the agent's extension from a
"platform" phone registered on Kamailio (playing a 440 Hz prompt, media relayed
by coturn), on logout it hangs that bridge call up.  It keeps a journal of
what the lab saw (login, logout, the bridge call's answer and end) so tests
can check the agent's stop order from the platform's side.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from softphone.agent.call import Call
from softphone.agent.phone import Phone
from softphone.lab.server import LabServer, start_lab
from softphone.lab.store import AgentStatus
from softphone.lab.telephony import InMemoryTelephony

BOUND = 30.0
PLATFORM_EXT = "8000"
PROMPT_HZ = 440.0

#: Kamailio users: the seed's agents' provisioned extensions (9000 + user_id % 1000, password = the
#: agent's password) and the platform's phone.
KAMAILIO_USERS = {"9001": "agent1pass", "9002": "agent2pass", "9003": "agent3pass",
                  PLATFORM_EXT: "platform-pw-8000"}
SEED_USERS = {1001: ("agent1", "agent1pass"), 1002: ("agent2", "agent2pass"), 1003: ("agent3", "agent3pass")}


@dataclass
class Journal:
    entries: list[tuple[str, float, Any]] = field(default_factory=list)

    def add(self, what: str, detail: Any = None) -> None:
        self.entries.append((what, time.monotonic(), detail))

    def names(self) -> list[str]:
        return [e[0] for e in self.entries]

    def time_of(self, what: str) -> float:
        return next(t for name, t, _ in self.entries if name == what)


class KamailioTelephony(InMemoryTelephony):
    """InMemoryTelephony (all the REST bookkeeping) plus a real bridge call over Kamailio."""

    def __init__(self, kam: Any, coturn: Any, *, prompt: str = f"tone:{PROMPT_HZ:g}") -> None:
        super().__init__()
        self.journal = Journal()
        self.platform = Phone.connect(kam.ws_url, PLATFORM_EXT, KAMAILIO_USERS[PLATFORM_EXT], domain=kam.domain,
                                      turn=[coturn.url], turn_username=coturn.username,
                                      turn_password=coturn.password, relay_only=True, play=prompt)
        self.bridge_calls: dict[int, Call] = {}
        self.bridge_errors: list[BaseException] = []
        self.bridge = True
        """False: log agents in without calling them (a platform that never bridges)."""
        self.login_delay = 0.0
        """Seconds the login takes before it bridges (to interrupt an agent while it logs in)."""
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.platform.start()

    async def on_login(self, user_id: int, extension: str, campaign_id: int) -> None:
        if self.login_delay:
            self.journal.add("login started", user_id)
            await asyncio.sleep(self.login_delay)
        await super().on_login(user_id, extension, campaign_id)
        self.journal.add("login", user_id)
        if not self.bridge:
            return
        task = asyncio.get_running_loop().create_task(self._bridge(user_id, extension))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bridge(self, user_id: int, extension: str) -> None:
        try:
            call = await self.platform.invite(extension, timeout=20.0)
        except Exception as exc:  # the agent refused or could not set the call up
            self.journal.add("bridge failed", repr(exc))
            self.bridge_errors.append(exc)
            return
        self.bridge_calls[user_id] = call
        self.journal.add("bridge answered", user_id)
        call.on("call_ended", lambda ev: self.journal.add("bridge ended", ev.cause))

    async def on_logout(self, user_id: int) -> None:
        self.journal.add("logout", user_id)
        call = self.bridge_calls.pop(user_id, None)
        if call is not None and call.is_live:
            await call.hangup()
        await super().on_logout(user_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.platform.stop()
        await super().close()


@dataclass
class AgentLab:
    server: LabServer
    kam: Any
    coturn: Any
    telephony: KamailioTelephony

    def launch(self, user_id: int = 1001, *, expire_in: float = 3600.0, **extra: Any) -> dict[str, str]:
        """The launch parameters (with overrides pointing at this lab, Kamailio and coturn)."""
        username, password = SEED_USERS[user_id]
        expire = datetime.now(UTC) + timedelta(seconds=expire_in)
        turn_port = self.coturn.url.rsplit(":", 1)[1].split("?")[0]
        params = {
            "auth_key": self.server.api_key.reveal(), "server": "127.0.0.1", "turn_port": turn_port,
            "customer_id": "1", "user_id": str(user_id), "username": username, "password": password,
            "expire_date": expire.isoformat(timespec="seconds"),
            "api_url": self.server.url, "sip_ws_url": self.kam.ws_url, "sip_domain": self.kam.domain,
            "turn_urls": self.coturn.url, "turn_username": self.coturn.username,
            "turn_password": self.coturn.password,
        }
        params.update({k: str(v) for k, v in extra.items()})
        return params

    def url(self, user_id: int = 1001, **kwargs: Any) -> str:
        query = urlencode(self.launch(user_id, **kwargs), quote_via=quote)
        return f"https://127.0.0.1/TForge-OmniSense-Webphone.html?{query}"

    async def agent_status(self, user_id: int = 1001) -> AgentStatus:
        user = await self.server.lab.store.user(user_id)
        assert user is not None
        return user.status

    async def registered(self, extension: str = "9001") -> bool:
        """Whether Kamailio still has a binding for ``extension`` (the platform phone calls it)."""
        try:
            call = await self.telephony.platform.invite(extension, timeout=5.0)
        except Exception:
            return False
        await call.hangup()
        return True


async def start_agent_lab(kam: Any, coturn: Any) -> AgentLab:
    telephony = KamailioTelephony(kam, coturn)
    await telephony.start()
    try:
        server = await start_lab(db_url="sqlite:///:memory:", telephony=telephony, **_no_sip_edge())
    except BaseException:
        await telephony.close()
        raise
    return AgentLab(server, kam, coturn, telephony)


def _no_sip_edge() -> dict[str, Any]:
    """start_lab's switch for its own SIP edge, when it has one (this lab uses Kamailio)."""
    import inspect

    return {"sip": False} if "sip" in inspect.signature(start_lab).parameters else {}


class Proc:
    """A `softphone` subprocess whose stdout lines are read as they come."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lines: list[str] = []
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, *args: str, env: dict | None = None) -> Proc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "softphone.cli", *args, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})})
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._new.set()

    def events(self) -> list[dict]:
        out = []
        for line in self.lines:
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    async def wait_event(self, name: str, timeout: float = BOUND) -> dict:
        async def find() -> dict:
            while True:
                for ev in self.events():
                    if ev["event"] == name:
                        return ev
                if self.proc.returncode is not None and self._reader.done():
                    raise AssertionError(f"process exited {self.proc.returncode} before {name!r}: {self.lines}")
                self._new.clear()
                try:
                    await asyncio.wait_for(self._new.wait(), 0.5)
                except TimeoutError:
                    pass

        return await asyncio.wait_for(find(), timeout)

    async def finish(self, timeout: float = BOUND) -> tuple[int, str]:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(self._reader, timeout)
        assert self.proc.stderr is not None
        err = (await self.proc.stderr.read()).decode()
        return code, err
