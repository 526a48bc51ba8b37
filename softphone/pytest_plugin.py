"""pytest plugin: voice API tests in a few lines, against the embedded lab or a real platform.

Registered through the ``pytest11`` entry point, so installing softphone is
enough.  Nothing starts unless a test asks for a fixture::

    async def test_the_prompt(agent, prompt):
        call = await agent.expect_call(timeout=10)   # the bridge call after login
        await call.expect_prompt(prompt, within=5)

Fixtures: ``softphone_lab`` (session: the lab with its SIP edge, TURN when
coturn is installed, free loopback ports), ``agent`` (a logged-in
:class:`~softphone.Agent` on its bridge call, stopped and logged out at
teardown whatever the test did), ``agent_factory`` (``await
agent_factory(**agent_options)``, several agents), ``platform`` (the REST
client, :class:`~softphone.platform.client.PlatformClient`, as a supervisor
on the lab), ``customer`` (``customer(answer_after=0.5, play="tone:600")``: a
simulated customer's number with that behaviour), ``prompt`` (the audio file
the bridge call plays) and ``webhooks`` (a notification receiver registered
on the platform).

Options: ``--softphone-url URL`` (or ``SOFTPHONE_URL``; repeat it for several
agents) and ``--softphone-campaign ID`` run the same tests against a real
platform: ``agent`` logs in with that launch URL, ``customer`` hands out the
numbers of ``--softphone-customer-number`` (or skips saying so), ``prompt``
is ``--softphone-prompt FILE``.

The lab runs in its own thread with its own event loop, as a server would:
it lives for the whole session whatever event loop scope the tests use
(pytest-asyncio's default, one loop per test, included); tests talk to it over
loopback like any client.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import os
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from softphone.log import get_logger

log = get_logger(__name__)

#: Agents the plugin's lab seeds (user ids 1001..): more than any one test uses at once.
LAB_AGENTS = 8
SUPERVISOR_ID = 1000
#: Seconds of each call's received audio kept for expectations and their failure messages.
KEEP_AUDIO = 20.0
START_TIMEOUT = 60.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("softphone", "softphone voice API tests")
    group.addoption("--softphone-url", action="append", default=[], metavar="URL",
                    help="Webphone launch URL of a real platform (repeat for several agents); default "
                         "SOFTPHONE_URL; without it the tests run on the embedded lab")
    group.addoption("--softphone-campaign", type=int, default=None, metavar="ID",
                    help="campaign the agents log in to (default SOFTPHONE_CAMPAIGN_ID, else 1)")
    group.addoption("--softphone-customer-number", action="append", default=[], metavar="NUMBER",
                    help="real platform: a number the 'customer' fixture may hand out (repeatable)")
    group.addoption("--softphone-prompt", default=None, metavar="FILE",
                    help="real platform: the audio file its bridge call plays (the 'prompt' fixture)")


# --- where the tests run -------------------------------------------------------------


@dataclass
class Target:
    """The platform under test: the lab (``lab`` set) or a real one (``urls``)."""

    urls: list[str]
    campaign_id: int
    customer_numbers: list[str] = field(default_factory=list)
    prompt: Path | None = None
    lab: SoftphoneLab | None = None

    @property
    def real(self) -> bool:
        return self.lab is None


def _config_target(config: pytest.Config) -> tuple[list[str], int]:
    urls = list(config.getoption("softphone_url") or [])
    if not urls and os.environ.get("SOFTPHONE_URL"):
        urls = [os.environ["SOFTPHONE_URL"]]
    campaign = config.getoption("softphone_campaign")
    if campaign is None:
        campaign = int(os.environ.get("SOFTPHONE_CAMPAIGN_ID") or 1)
    return urls, campaign


def pytest_report_header(config: pytest.Config) -> str | None:
    urls, campaign = _config_target(config)
    if urls:
        return f"softphone: real platform ({len(urls)} launch URL(s)), campaign {campaign}"
    return None


# --- the lab in its own thread ---------------------------------------------------------


def write_prompt(path: Path, rate: int = 16000) -> Path:
    """A 2 s prompt that is easy to tell apart: a rising sequence of tones, then a glide, all
    clear of the tones tests like to play (350 to 1000 Hz) so a tone check never hears the prompt."""
    import wave

    import numpy as np

    parts = []
    for hz in (1300.0, 1600.0, 1900.0, 2200.0):
        t = np.arange(int(0.3 * rate)) / rate
        parts.append(0.3 * np.sin(2 * np.pi * hz * t))
    t = np.arange(int(0.8 * rate)) / rate
    parts.append(0.3 * np.sin(2 * np.pi * (2400.0 * t + 375.0 * t * t)))  # 2400 -> 3000 Hz glide
    x = np.concatenate(parts)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes((x * 32767).astype("<i2").tobytes())
    return path


def write_seed(path: Path, agents: int = LAB_AGENTS) -> Path:
    """The packaged seed with ``agents`` agent users (1001..) and the supervisor 1000."""
    from importlib import resources

    data = json.loads(resources.files("softphone.lab").joinpath("seed.json").read_text("utf-8"))
    users = [u for u in data["users"] if u.get("role") == "supervisor"]
    for n in range(1, agents + 1):
        users.append({"user_id": 1000 + n, "user_name": f"agent{n}", "password": f"agent{n}pass",
                      "customer_id": 1})
    data["users"] = users
    path.write_text(json.dumps(data), "utf-8")
    return path


class SoftphoneLab:
    """The embedded lab, served from a thread of its own (see the module docs).

    ``server`` is the :class:`~softphone.lab.server.LabServer`; read it, and run
    anything that changes it through :meth:`run` (it belongs to the lab's loop).
    """

    def __init__(self, folder: Path, *, turn: bool | None = None) -> None:
        self.folder = folder
        self.prompt = write_prompt(folder / "prompt.wav")
        self.seed_path = write_seed(folder / "seed.json")
        self.turn = shutil.which("turnserver") is not None if turn is None else turn
        self.loop = asyncio.new_event_loop()
        self.server: Any = None
        self._numbers = itertools.count(1)
        self._free_users = list(range(1001, 1001 + LAB_AGENTS))
        self._users_lock = threading.Lock()
        self._thread = threading.Thread(target=self.loop.run_forever, name="softphone-lab", daemon=True)

    def start(self) -> SoftphoneLab:
        from softphone.lab.customers import CustomerTable
        from softphone.lab.server import start_lab

        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(start_lab(
            seed=self.seed_path, turn=self.turn, prompt=str(self.prompt), customers=CustomerTable(),
            telephony_options={"decode": True}), self.loop)  # customers added later may listen
        try:
            self.server = future.result(START_TIMEOUT)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise
        log.info("softphone_lab: %s (TURN %s)", self.server.url, "on" if self.server.turn else "off")
        return self

    def close(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        if not self._thread.is_alive():
            self.loop.close()

    async def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run ``coro`` on the lab's loop and await its result from the test's loop."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    @property
    def url(self) -> str:
        return self.server.url

    def launch_url(self, user_id: int) -> str:
        return self.server.launch_url(user_id)

    # --- users and numbers ---

    def take_user(self) -> int:
        with self._users_lock:
            if not self._free_users:
                raise RuntimeError(f"softphone_lab: all {LAB_AGENTS} lab agents are in use")
            return self._free_users.pop(0)

    def give_back_user(self, user_id: int) -> None:
        with self._users_lock:
            if user_id not in self._free_users:
                self._free_users.append(user_id)

    def add_customer(self, behaviour: Any) -> str:
        """A fresh number answered with ``behaviour`` (in the dialer's customer table)."""
        number = f"0829{next(self._numbers):06d}"
        table = self.customer_table()
        self.call_in_lab(table.numbers.__setitem__, number, behaviour)
        return number

    def remove_customer(self, number: str) -> None:
        self.call_in_lab(self.customer_table().numbers.pop, number, None)

    def call_in_lab(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run a plain function on the lab's loop (its state is not shared across threads) and wait."""
        done: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            try:
                done.set_result(fn(*args))
            except BaseException as exc:
                done.set_exception(exc)

        self.loop.call_soon_threadsafe(run)
        return done.result(timeout)

    def customer_table(self) -> Any:
        gateway = getattr(self.server.lab.telephony, "gateway", None)
        if gateway is None:
            raise RuntimeError("softphone_lab: the lab's telephony has no simulated customers")
        return gateway.table

    def customer_legs(self, number: str) -> list[Any]:
        gateway = self.server.lab.telephony.gateway
        return [c for c in list(gateway.customers.values()) if c.number == number]


@pytest.fixture(scope="session")
def softphone_target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """Where ``agent`` and friends point: the real platform of ``--softphone-url``, else the lab."""
    urls, campaign = _config_target(request.config)
    if urls:
        prompt = request.config.getoption("softphone_prompt")
        yield Target(urls, campaign, list(request.config.getoption("softphone_customer_number") or []),
                     Path(prompt) if prompt else None)
        return
    lab = SoftphoneLab(tmp_path_factory.mktemp("softphone-lab")).start()
    try:
        yield Target([], campaign, lab=lab, prompt=lab.prompt)
    finally:
        lab.close()


@pytest.fixture(scope="session")
def softphone_lab(softphone_target: Target) -> SoftphoneLab:
    """The embedded lab (skips when the tests run against a real platform)."""
    if softphone_target.lab is None:
        pytest.skip("this test needs the embedded lab; --softphone-url points the tests at a real platform")
    return softphone_target.lab


@pytest.fixture
def prompt(softphone_target: Target) -> Path:
    """The audio file the bridge call plays: the lab's generated prompt, or --softphone-prompt."""
    if softphone_target.prompt is None:
        pytest.skip("give --softphone-prompt FILE: the audio the platform's bridge call plays")
    return softphone_target.prompt


# --- agents ----------------------------------------------------------------------------


AgentFactory = Callable[..., Any]


@pytest_asyncio.fixture
async def agent_factory(softphone_target: Target) -> AsyncIterator[AgentFactory]:
    """``await agent_factory(**options)``: a started, logged-in Agent (its bridge call answered).

    Options go to :meth:`softphone.Agent.from_url` (``play="tone:1000"``, ``relay_only=True``...).
    Every agent made is stopped (logout, hang-up, unregister) at teardown, whatever the test did.
    """
    from softphone import Agent

    started: list[tuple[Any, int | None]] = []
    real_urls = iter(softphone_target.urls)

    async def make(**options: Any) -> Any:
        lab = softphone_target.lab
        user_id: int | None = None
        if lab is not None:
            user_id = lab.take_user()
            url = lab.launch_url(user_id)
        else:
            url = next(real_urls, None)
            if url is None:
                pytest.skip(f"this test needs {len(started) + 1} agents: give --softphone-url once per agent")
        options.setdefault("campaign_id", softphone_target.campaign_id)
        try:
            agent = Agent.from_url(url, **options)
        except BaseException:
            if lab is not None and user_id is not None:
                lab.give_back_user(user_id)
            raise
        agent.keep_audio_seconds = KEEP_AUDIO
        started.append((agent, user_id))
        await asyncio.wait_for(agent.start(), START_TIMEOUT)
        return agent

    try:
        yield make
    finally:
        for agent, user_id in reversed(started):
            try:
                await agent.stop("test teardown")
            except Exception as exc:  # the teardown of one must not keep the others running
                log.warning("agent teardown: %s", exc)
            if softphone_target.lab is not None and user_id is not None:
                softphone_target.lab.give_back_user(user_id)


@pytest_asyncio.fixture
async def agent(agent_factory: AgentFactory) -> Any:
    """A logged-in Agent (``play="tone:1000"``); its bridge call is ``await agent.expect_call()``."""
    return await agent_factory(play="tone:1000")


@pytest_asyncio.fixture
async def platform(softphone_target: Target) -> AsyncIterator[Any]:
    """The REST client: the lab's supervisor, or the first --softphone-url's user."""
    from softphone.params import load_params
    from softphone.platform.client import PlatformClient

    if softphone_target.lab is not None:
        url = softphone_target.lab.launch_url(SUPERVISOR_ID)
    else:
        url = softphone_target.urls[0]
    params = load_params(url)
    client = PlatformClient.from_params(params, ca_file=getattr(params.derived, "ca_file", None))
    try:
        yield client
    finally:
        await client.close()


# --- customers -----------------------------------------------------------------------


class CustomerNumber(str):
    """A simulated customer's phone number (a ``str``: pass it to ``agent.dial``), with the
    lab's view of its calls: ``await customer.expect_answered()``, ``expect_tone``, ``expect_dtmf``,
    ``on_hold``.  On a real platform only the number is known and those checks skip."""

    lab: SoftphoneLab | None
    behaviour: Any

    def _need_lab(self) -> SoftphoneLab:
        if self.lab is None:
            pytest.skip("the customer's side is only observable on the embedded lab")
        return self.lab

    def legs(self) -> list[Any]:
        """The lab's live legs to this number (softphone.lab.customers.Customer)."""
        return self._need_lab().customer_legs(str(self))

    async def _until(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        from softphone.errors import ExpectationError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                found = check()
            except RuntimeError:  # the lab's thread changed what we were reading: look again
                found = None
            if found:
                return found
            if loop.time() > deadline:
                legs = self.legs()
                seen = "; ".join(f"answered={c.answered.is_set()} held={c.on_hold} "
                                 f"digits={''.join(c.digits_received) or 'none'}" for c in legs) or "no call"
                raise ExpectationError(f"customer {self}: expected {what} within {timeout:g} s; saw: {seen}")
            await asyncio.sleep(0.05)

    async def expect_answered(self, timeout: float = 10.0) -> Any:
        """A call to this number was answered by the customer; returns the lab's leg."""
        self._need_lab()
        return await self._until("an answered call", lambda: next(
            (c for c in self.legs() if c.answered.is_set()), None), timeout)

    async def expect_tone(self, hz: float, within: float = 5.0) -> None:
        """The customer hears ``hz`` (needs ``listen=(hz,)`` in the behaviour)."""
        self._need_lab()
        await self._until(f"to hear {hz:g} Hz", lambda: any(
            c.tones is not None and c.tones.heard(hz) for c in self.legs()), within)

    async def expect_dtmf(self, digits: str, timeout: float = 5.0) -> str:
        """The customer received ``digits`` (SIP INFO from the lab: what the agent pressed)."""
        self._need_lab()
        return await self._until(f"DTMF {digits!r}", lambda: next(
            (d for d in ("".join(c.digits_received) for c in self.legs()) if d.endswith(digits)), None), timeout)

    async def expect_hold(self, held: bool = True, timeout: float = 5.0) -> None:
        self._need_lab()
        await self._until("on hold" if held else "off hold", lambda: any(
            c.on_hold is held for c in self.legs()), timeout)


@pytest.fixture
def customer(softphone_target: Target) -> Iterator[Callable[..., CustomerNumber]]:
    """``customer(answer_after=0.5, play="tone:600", dtmf="12#", listen=(1000,))``: a number that
    answers that way (fields of :class:`softphone.lab.customers.Behaviour`).  Real platform: the
    next ``--softphone-customer-number`` (the behaviour is the real customer's)."""
    lab = softphone_target.lab
    made: list[str] = []
    real = iter(softphone_target.customer_numbers)

    def make(**behaviour: Any) -> CustomerNumber:
        if lab is None:
            number = next(real, None)
            if number is None:
                pytest.skip("no customer number for the real platform: give --softphone-customer-number NUMBER")
            out = CustomerNumber(number)
            out.lab, out.behaviour = None, None
            return out
        from softphone.lab.customers import parse_behaviour

        if isinstance(behaviour.get("listen"), tuple):
            behaviour["listen"] = list(behaviour["listen"])
        parsed = parse_behaviour("customer()", behaviour)
        number = lab.add_customer(parsed)
        made.append(number)
        out = CustomerNumber(number)
        out.lab, out.behaviour = lab, parsed
        return out

    yield make
    for number in made:
        assert lab is not None
        lab.remove_customer(number)


# --- webhooks --------------------------------------------------------------------------


class Webhooks:
    """Notifications the platform POSTed to this test's receiver (``received``: JSON bodies)."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self._arrived = asyncio.Event()
        self.url = ""

    async def _handle(self, request: Any) -> Any:
        from aiohttp import web

        with contextlib.suppress(ValueError):
            self.received.append(await request.json())
            self._arrived.set()
        return web.Response(status=200)

    def of_type(self, kind: str) -> list[dict]:
        return [n.get("payload", {}) for n in self.received if n.get("type") == kind]

    async def expect(self, kind: str, timeout: float = 10.0, **fields: Any) -> dict:
        """The first notification of type ``kind`` ("call_end", "call", "user_status") whose payload
        has ``fields``; returns its payload."""
        from softphone.errors import ExpectationError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for payload in self.of_type(kind):
                if all(payload.get(k) == v for k, v in fields.items()):
                    return payload
            left = deadline - loop.time()
            if left <= 0:
                seen = ", ".join(f"{n.get('type')}" for n in self.received) or "nothing"
                raise ExpectationError(f"webhooks: expected {kind} with {fields} within {timeout:g} s; "
                                       f"received: {seen}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(left, 0.5))


@pytest_asyncio.fixture
async def webhooks(softphone_target: Target, platform: Any) -> AsyncIterator[Webhooks]:
    """A receiver on loopback registered as the platform's notification endpoint (on the lab as
    its supervisor); ``await webhooks.expect("call_end", call_id=...)``."""
    if softphone_target.lab is None:
        pytest.skip("webhooks need a receiver the platform can reach: only on the embedded lab")
    from aiohttp import web

    hooks = Webhooks()
    app = web.Application()
    app.router.add_post("/hook", hooks._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hooks.url = f"http://{host}:{port}/hook"
    await platform.set_notification_endpoint(hooks.url)
    try:
        yield hooks
    finally:
        with contextlib.suppress(Exception):
            await softphone_target.lab.run(_clear_notifications(softphone_target.lab))
        await runner.cleanup()


async def _clear_notifications(lab: SoftphoneLab) -> None:
    lab.server.lab.notifier.url = None


__all__ = ["CustomerNumber", "SoftphoneLab", "Target", "Webhooks", "write_prompt", "write_seed"]
