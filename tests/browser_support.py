"""The Webphone's stack with media: SIP.js 0.15.11 in headless Chromium, driven over DevTools.

:class:`WebphonePage` serves ``tests/js/webphone_media.html`` (the legacy
``SIP.UA`` as the Webphone uses it, with an AnalyserNode on the remote audio)
from a loopback aiohttp server, starts one Chromium for it with its own
fake-microphone WAV (the capture file is a per-process flag, so every page
gets its own browser), and talks to the page through the DevTools protocol:
:meth:`WebphonePage.evaluate` runs JavaScript in the page and returns its
value; page events (``registered``, ``accepted``, ``dtmf``, ``tonechange``...)
are drained from ``window.__events``.

Our side is a plain :class:`softphone.sip.user_agent.UserAgent` with
:class:`softphone.media.description_handler.WebRtcDescriptionHandlerFactory`, a
:class:`ToneSource` and a :class:`ToneDetector` (:func:`media_user_agent`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from peers.process import PeerStartError, free_port, log_tail

from softphone.media import tones
from softphone.media.config import IceConfig, MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandler, WebRtcDescriptionHandlerFactory
from softphone.media.sinks import ToneDetector
from softphone.media.sources import ToneSource
from softphone.sip.timers import Timers
from softphone.sip.transport import KeepAlive, KeepAliveMode, Reconnect
from softphone.sip.user_agent import UserAgent, UserAgentConfig

PAGE = Path(__file__).resolve().parent / "js" / "webphone_media.html"
BOUND = 30.0
#: The browser's microphone and our source: distinct, not harmonics of each other.
BROWSER_TONE = 1200.0
OUR_TONE = 700.0


def write_tone_wav(path: Path, freq: float, seconds: float = 2.0, rate: int = 48000) -> Path:
    """A mono 16-bit WAV of a sine with whole periods, so Chromium's looping of it is seamless."""
    n = round(seconds * rate)
    periods = max(1, round(freq * n / rate))
    freq_exact = periods * rate / n
    pcm = tones.float_to_pcm16(tones.sine_mix((freq_exact,), n, rate, amplitude=0.3))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return path


def close_to(freq: float, expected: float, tolerance: float = 0.02) -> bool:
    return abs(freq - expected) <= tolerance * expected


async def wait_for(probe: Callable[[], Any], what: str, timeout: float = BOUND, interval: float = 0.1) -> Any:
    """Poll an async or plain ``probe`` until it returns something truthy; fail naming ``what``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last: Any = None
    while True:
        last = probe()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


class PageError(AssertionError):
    """The page reported an error or a SIP failure."""


class WebphonePage:
    """One SIP.js page in its own headless Chromium; see the module docstring.

    ``turn`` (a coturn fixture) makes the browser relay-only through it
    (``iceTransportPolicy: 'relay'`` with the fixture's long-term credentials).
    """

    _ids = itertools.count(1)

    def __init__(self, chromium, *, ext: str, password: str, domain: str, ws: str, tone: float = BROWSER_TONE,
                 turn=None) -> None:
        self.chromium = chromium
        self.tone = tone
        self.config = {"ext": ext, "password": password, "domain": domain, "ws": ws}
        if turn is not None:
            self.config["turn"] = {"url": turn.url, "username": turn.username, "credential": turn.password}
        self.events: list[tuple[str, str]] = []
        self._cursor = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._browser = None
        self._msg_id = itertools.count(1)

    async def __aenter__(self) -> WebphonePage:
        config_js = "window.CFG = " + json.dumps(self.config) + ";"

        async def index(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(PAGE)

        async def config(request: web.Request) -> web.Response:
            return web.Response(text=config_js, content_type="application/javascript")

        async def sipjs(request: web.Request) -> web.StreamResponse:
            return web.FileResponse(self.chromium.sipjs_path)

        app = web.Application()
        app.add_routes([web.get("/", index), web.get("/config.js", config), web.get("/sip.min.js", sipjs)])
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/"
        n = next(self._ids)
        wav = write_tone_wav(self.chromium.workdir / f"mic-{n}-{self.tone:.0f}hz.wav", self.tone)
        port = free_port()
        self._browser = self.chromium.launch(url, fake_audio_wav=wav, extra=(
            f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
            "--autoplay-policy=no-user-gesture-required"))
        self._session = aiohttp.ClientSession()
        try:
            await self._attach(port, url)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _attach(self, port: int, url: str) -> None:
        """Find the page's DevTools target and open its WebSocket."""
        assert self._session is not None

        async def target() -> str | None:
            if not self._browser.alive:
                raise PeerStartError(f"chromium exited; log:\n{log_tail(self._browser.log_path)}")
            try:
                async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = await resp.json(content_type=None)
            except aiohttp.ClientError:
                return None
            return next((p["webSocketDebuggerUrl"] for p in pages
                         if p.get("type") == "page" and p.get("url", "").startswith(url)), None)

        ws_url = await wait_for(target, "Chromium's DevTools page target", timeout=20.0)
        self._ws = await self._session.ws_connect(ws_url, max_msg_size=0)
        await wait_for(lambda: self.evaluate("typeof window.call === 'function' && !!window.__events"),
                       "the page's script", timeout=20.0)

    async def __aexit__(self, *exc_info: Any) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._browser is not None:
            self._browser.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def evaluate(self, expression: str) -> Any:
        """Run ``expression`` in the page (promises awaited) and return its JSON value."""
        assert self._ws is not None, "page not open"
        msg_id = next(self._msg_id)
        await self._ws.send_json({"id": msg_id, "method": "Runtime.evaluate", "params": {
            "expression": expression, "awaitPromise": True, "returnByValue": True}})
        while True:
            msg = await asyncio.wait_for(self._ws.receive(), BOUND)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise PageError(f"DevTools connection closed ({msg.type}); browser log:\n"
                                f"{log_tail(self._browser.log_path)}")
            data = json.loads(msg.data)
            if data.get("id") != msg_id:
                continue
            if "error" in data:
                raise PageError(f"{expression!r}: {data['error']}")
            result = data["result"]
            if "exceptionDetails" in result:
                details = result["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                raise PageError(f"{expression!r} threw: {text}")
            return result["result"].get("value")

    async def poll_events(self) -> list[tuple[str, str]]:
        new = [tuple(e) for e in await self.evaluate("window.__events.splice(0)")]
        for ev, data in new:
            if ev in ("error", "registrationFailed", "failed", "reinviteFailed"):
                raise PageError(f"page reported {ev}: {data} (events so far: {self.events + new})")
        self.events += new
        return new

    async def next_event(self, name: str, timeout: float = BOUND) -> str:
        """The data of the next ``name`` event not yet consumed by an earlier call."""

        async def probe() -> tuple[str] | None:
            await self.poll_events()
            for i in range(self._cursor, len(self.events)):
                if self.events[i][0] == name:
                    self._cursor = i + 1
                    return (self.events[i][1],)
            return None

        return (await wait_for(probe, f"page event {name!r} (seen: {self.events})", timeout, 0.05))[0]

    async def events_named(self, name: str) -> list[str]:
        await self.poll_events()
        return [data for ev, data in self.events if ev == name]

    async def dominant(self) -> dict:
        return await self.evaluate("window.dominant()")

    async def hears(self, freq: float, timeout: float = BOUND) -> dict:
        """Wait until the page's analyser has ``freq`` (within 2 %) as its strongest frequency."""
        last: dict = {}

        async def probe() -> dict | None:
            nonlocal last
            last = await self.dominant()
            return last if last["level"] is not None and last["level"] > -70 and close_to(last["freq"], freq) \
                else None

        try:
            return await wait_for(probe, f"the browser to hear {freq} Hz", timeout, 0.1)
        except AssertionError:
            raise AssertionError(f"browser never heard {freq} Hz; its analyser last said {last}") from None

    async def silent(self, below_dbfs: float = -90.0) -> bool:
        """Whether the analyser's strongest bin is below ``below_dbfs`` (-Infinity when nothing plays)."""
        level = (await self.dominant())["level"]
        return level is None or level < below_dbfs

    async def counters(self) -> dict:
        return await self.evaluate("window.rtpCounters()")


# --- our side ----------------------------------------------------------------------------------


class OurMedia:
    """What our UA's calls send (a tone) and how they listen (a ToneDetector per call)."""

    def __init__(self, config: MediaConfig, tone: float = OUR_TONE, listen: tuple[float, ...] = ()) -> None:
        self.tone = tone
        self.listen = listen
        self.detectors: list[ToneDetector] = []
        self.factory = WebRtcDescriptionHandlerFactory(config, self._source, self._sinks)

    def _source(self, session: Any) -> ToneSource:
        return ToneSource(self.tone, amplitude=0.3)

    def _sinks(self, session: Any) -> list[ToneDetector]:
        detector = ToneDetector(self.listen, analysis_seconds=0.5)
        self.detectors.append(detector)
        return [detector]

    @property
    def detector(self) -> ToneDetector:
        return self.detectors[-1]

    async def hears(self, freq: float, timeout: float = BOUND) -> float:
        """Wait until the latest call's remote audio has ``freq`` (within 2 %) as its strongest tone."""
        last: tuple[float, float] = (0.0, tones.DB_FLOOR)

        def probe() -> float | None:
            nonlocal last
            if not self.detectors:
                return None
            last = self.detector.dominant_frequency()
            return last[0] if last[1] > -50 and close_to(last[0], freq) else None

        try:
            return await wait_for(probe, f"us to hear {freq} Hz", timeout, 0.05)
        except AssertionError:
            raise AssertionError(f"we never heard {freq} Hz; our detector last said {last}") from None


def media_config(coturn=None) -> MediaConfig:
    """Opus first like the Webphone; with ``coturn``, relay-only through it."""
    if coturn is None:
        return MediaConfig()
    return MediaConfig(ice=IceConfig(turn_urls=(coturn.url,), username=coturn.username,
                                     credential=coturn.password, relay_only=True))


def media_user_agent(kam, ext: str, media: OurMedia) -> UserAgent:
    return UserAgent(UserAgentConfig(
        ws_url=kam.ws_url, aor=f"sip:{ext}@{kam.domain}", password=kam.users[ext],
        timers=Timers.scaled(0.2), keep_alive=KeepAlive(KeepAliveMode.CRLF, interval=5.0, timeout=3.0),
        reconnect=Reconnect(min_delay=0.05, max_delay=0.5),
        description_handler_factory=media.factory,
    ))


def webrtc_handler(session: Any) -> WebRtcDescriptionHandler:
    handler = session.handler
    assert isinstance(handler, WebRtcDescriptionHandler), handler
    return handler
