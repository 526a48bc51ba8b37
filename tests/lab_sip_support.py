"""Helpers for tests of the lab's SIP edge: a lab with N provisioned extensions, phones, raw WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp

from softphone.lab.seed import Seed, load_seed
from softphone.lab.server import LabServer, start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
from softphone.sip.user_agent import UserAgent, UserAgentConfig

FIRST_USER = 5000
FIRST_EXTENSION = 7000


def seed_with_phones(n: int) -> Seed:
    """The packaged seed plus ``n`` users whose extensions (7000, 7001, ...) are pre-provisioned."""
    base = load_seed()
    users = list(base.users) + [
        {"user_id": FIRST_USER + i, "user_name": f"phone{i}", "password": f"phone{i}-pass", "customer_id": 1,
         "extension": str(FIRST_EXTENSION + i)}
        for i in range(n)]
    return Seed(path="test seed", api_key=base.api_key, customers=base.customers, users=users,
                campaigns=base.campaigns, leads=[])


def extension(i: int) -> str:
    return str(FIRST_EXTENSION + i)


def password(i: int) -> str:
    return f"phone{i}-pass"


@contextlib.asynccontextmanager
async def running_lab(phones: int = 3, **options: Any) -> AsyncIterator[LabServer]:
    options.setdefault("seed", seed_with_phones(phones))
    # The edge is under test: the dialer (media) is left out unless a test asks for it.
    options.setdefault("telephony", InMemoryTelephony())
    lab = await start_lab(**options)
    try:
        yield lab
    finally:
        await lab.close()


def phone(lab: LabServer, i: int, *, secure: bool = False, secret: str | None = None, expires: int = 600,
          **config: Any) -> UserAgent:
    """Our SIP user agent for extension ``i`` of the lab (not started)."""
    url = lab.sip_wss_url if secure else lab.sip_ws_url
    assert url is not None
    config.setdefault("reconnect", Reconnect(enabled=False))
    config.setdefault("keep_alive", KeepAlive(mode=KeepAliveMode.NONE))
    config.setdefault("timers", Timers.scaled(0.2))
    config.setdefault("ca_file", lab.ca_file if secure else None)
    return UserAgent(UserAgentConfig(ws_url=url, aor=f"sip:{extension(i)}@{lab.domain}",
                                     password=secret if secret is not None else password(i),
                                     register_expires=expires, **config))


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` every 10 ms; fail naming ``what`` after ``timeout`` (a generous bound)."""
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


class Events:
    """Records a SipEndpoint's ``registered``/``unregistered`` events."""

    def __init__(self, endpoint: Any) -> None:
        self.registered: list[str] = []
        self.unregistered: list[tuple[str, str]] = []
        endpoint.on("registered", self.registered.append)
        endpoint.on("unregistered", lambda ext, reason: self.unregistered.append((ext, reason)))


@contextlib.asynccontextmanager
async def raw_ws(url: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    """A bare WebSocket with sub-protocol sip, to send what no well-behaved phone would."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, protocols=("sip",), **kwargs) as ws:
            yield ws


def register_text(ext: str, domain: str, *, contact: str | None = "<sip:raw@raw.invalid;transport=ws>",
                  from_user: str | None = None, extra: str = "", cseq: int = 1,
                  call_id: str = "raw-call-1") -> str:
    """A REGISTER as text (to break on purpose)."""
    to = f"sip:{ext}@{domain}" if ext else f"sip:{domain}"
    lines = [
        f"REGISTER sip:{domain} SIP/2.0",
        "Via: SIP/2.0/WS raw.invalid;branch=z9hG4bK" + call_id.replace("-", "") + str(cseq),
        f"To: <{to}>",
        f"From: <{f'sip:{from_user}@{domain}' if from_user else to}>;tag=rawtag",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    if contact:
        lines.append(f"Contact: {contact}")
    if extra:
        lines.append(extra)
    lines.append("Content-Length: 0")
    return "\r\n".join(lines) + "\r\n\r\n"


async def receive_text(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> str:
    """The next text frame (keep-alive pongs skipped)."""
    while True:
        msg = await asyncio.wait_for(ws.receive(), timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} ({msg.data!r})")
        if msg.data.strip():
            return msg.data
