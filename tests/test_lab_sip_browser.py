"""The lab's SIP edge against the real client: SIP.js 0.15.11 in headless Chromium; the status page in Chromium.

The browser reaches the lab over ws:// (no certificate to trust), and over wss:// trusting
exactly the lab's certificate by its public key (Chromium's SPKI pin flag); verification is
never switched off.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from browser_support import WebphonePage, wait_for
from lab_sip_support import extension, password, phone, running_lab, wait_until
from peers.process import PeerStartError, free_port, log_tail

from softphone.sip.null_handler import NullDescriptionHandler
from softphone.sip.session import SessionState

pytestmark = [pytest.mark.peer, pytest.mark.browser]


async def test_sipjs_registers_with_the_lab_and_answers_the_lab_s_invite(chromium):
    async with running_lab() as lab:
        unregistered: list[tuple[str, str]] = []
        lab.endpoint.on("unregistered", lambda ext, reason: unregistered.append((ext, reason)))
        async with WebphonePage(chromium, ext=extension(0), password=password(0), domain=lab.domain,
                                ws=lab.sip_ws_url) as page:
            await page.next_event("registered")
            binding = lab.endpoint.binding(extension(0))
            assert binding is not None and binding.user_agent == "SIP.js/0.15.11"
            assert binding.algorithm == "MD5"  # SIP.js answers the first challenge, MD5

            inviter = lab.endpoint.inviter(extension(0), lambda s: NullDescriptionHandler(s, webrtc=True),
                                           caller_id="omnisense")
            response = await inviter.invite()
            assert response.status == 200 and inviter.state is SessionState.ESTABLISHED
            assert await page.next_event("invite") == "omnisense"
            await page.next_event("accepted")
            await inviter.bye()
            await page.next_event("bye")
        # the page (and its WebSocket) is gone
        await wait_until(lambda: (extension(0), "websocket closed") in unregistered, timeout=30,
                         what="the lab dropping the browser's binding")


class DevToolsPage:
    """One Chromium page over the DevTools protocol, collecting console errors and exceptions."""

    def __init__(self, chromium) -> None:
        self.chromium = chromium
        self.errors: list[str] = []
        self._ids = iter(range(1, 1_000_000))
        self._pending: dict[int, asyncio.Future] = {}

    async def __aenter__(self) -> DevToolsPage:
        port = free_port()
        self.browser = self.chromium.launch("about:blank", extra=(
            f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1"))
        self.session = aiohttp.ClientSession()

        async def target() -> str | None:
            if not self.browser.alive:
                raise PeerStartError(f"chromium exited; log:\n{log_tail(self.browser.log_path)}")
            try:
                async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = await resp.json(content_type=None)
            except aiohttp.ClientError:
                return None
            return next((p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page"), None)

        self.ws = await self.session.ws_connect(await wait_for(target, "a DevTools page target", timeout=20),
                                                max_msg_size=0)
        self.reader = asyncio.get_running_loop().create_task(self._read())
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            await self.send(method)
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self._pending:
                self._pending.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                          for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                self.errors.append("exception: " + json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                self.errors.append("log: " + params["entry"].get("text", ""))

    async def send(self, method: str, params: dict | None = None) -> dict:
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.ws.send_json({"id": msg_id, "method": method, "params": params or {}})
        return await asyncio.wait_for(future, 30)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result["result"]["result"].get("value")

    async def __aexit__(self, *exc: object) -> None:
        self.reader.cancel()
        await self.ws.close()
        await self.session.close()
        self.browser.stop()


async def test_status_page_renders_registrations_and_calls_live_without_console_errors(chromium):
    async with running_lab() as lab, DevToolsPage(chromium) as page:
        await page.send("Page.navigate", {"url": lab.url + "/"})
        await wait_for(lambda: page.evaluate("document.body && document.body.dataset.ready === '1'"),
                       "the status page's first refresh", timeout=30)
        assert await page.evaluate("document.getElementById('reg-count').textContent") == "0"
        async with phone(lab, 0) as ua:
            rows = "[...document.querySelectorAll('#registrations tbody tr')].map(r => r.cells[0].textContent)"
            await wait_for(lambda: _contains(page.evaluate(rows), extension(0)),
                           "the registered extension on the page", timeout=30)
            # a live call appears with its state (the in-memory telephony answers at once)
            token = await _login_and_call(lab)
            assert token
            calls = "[...document.querySelectorAll('#calls tbody tr')].map(r => r.cells[4].textContent)"
            await wait_for(lambda: _contains(page.evaluate(calls), "answered"), "the live call on the page",
                           timeout=30)
            events = "[...document.querySelectorAll('#events tbody tr')].map(r => r.cells[2].textContent)"
            assert extension(0) in await page.evaluate(events)
            assert ua.registered
        rows_after = "document.getElementById('reg-count').textContent"
        await wait_for(lambda: _equals(page.evaluate(rows_after), "0"), "the unregistration on the page", timeout=30)
        assert page.errors == []
        # the collector itself works: an error on the page would have been seen
        await page.evaluate("console.error('probe')")
        await wait_for(lambda: page.errors, "the probe console error", timeout=10)


async def _contains(awaitable, item) -> bool:
    return item in (await awaitable or [])


async def _equals(awaitable, value) -> bool:
    return (await awaitable) == value


async def _login_and_call(lab) -> str:
    """agent1 logs in on extension 7000 and dials a number through the REST API."""
    import base64

    key = {"Authorization": f"Key={lab.api_key.reveal()}"}
    async with aiohttp.ClientSession(lab.url) as http:
        async with http.post("/omni/user/authorize", headers=key, json={
                "user_name": "agent1", "password": base64.b64encode(b"agent1pass").decode()}) as resp:
            token = (await resp.json())["token_key"]
        headers = {**key, "tokenKey": token}
        async with http.post("/omni/users/1001/login", headers=headers,
                             json={"campaign_id": 1, "extension": "9001"}) as resp:
            assert resp.status == 200, await resp.text()
        async with http.post("/omni/voice/1001/call", headers=headers,
                             json={"phone_number": "0821234567", "outbound_cli": "0100000000",
                                   "unique_id": "status-page"}) as resp:
            assert resp.status in (200, 201), await resp.text()
    return token


WSS_PAGE = """<!doctype html><html><head><meta charset="utf-8"><script src="/sip.min.js"></script></head>
<body><script>
const report = (ev, data) => fetch('/event', {method: 'POST', body: JSON.stringify({ev, data: data || ''})});
window.onerror = (msg) => report('error', String(msg));
const ua = new SIP.UA({
  uri: 'sip:%(ext)s@%(domain)s',
  transportOptions: {wsServers: ['%(ws)s'], traceSip: false},
  authorizationUser: '%(ext)s', password: '%(password)s',
  hackIpInContact: true, register: true, userAgentString: 'SIP.js/0.15.11',
  log: {builtinEnabled: false},
});
ua.on('registered', () => report('registered'));
ua.on('registrationFailed', (r, cause) => report('registrationFailed', String(cause)));
ua.on('transportError', () => report('transportError'));
</script></body></html>"""


async def test_sipjs_registers_over_wss_trusting_exactly_the_lab_certificate(chromium):
    """The Webphone's default transport is wss://; the browser trusts the lab's certificate by its key
    (SPKI pin), not by turning verification off."""
    from aiohttp import web

    async with running_lab() as lab:
        events: asyncio.Queue = asyncio.Queue()
        page = WSS_PAGE % {"ext": extension(0), "domain": lab.domain, "ws": lab.sip_wss_url, "password": password(0)}

        async def index(_request):
            return web.Response(text=page, content_type="text/html")

        async def sipjs(_request):
            return web.FileResponse(chromium.sipjs_path)

        async def event(request):
            item = json.loads(await request.text())
            events.put_nowait((item["ev"], item["data"]))
            return web.Response(text="ok")

        app = web.Application()
        app.add_routes([web.get("/", index), web.get("/sip.min.js", sipjs), web.post("/event", event)])
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        browser = chromium.launch(f"http://127.0.0.1:{runner.addresses[0][1]}/",
                                  extra=(f"--ignore-certificate-errors-spki-list={lab.certificate.spki_pin()}",))
        try:
            ev, data = await asyncio.wait_for(events.get(), 60)
            assert ev == "registered", (ev, data)
            binding = lab.endpoint.binding(extension(0))
            assert binding.connection.scheme == "wss" and binding.user_agent == "SIP.js/0.15.11"
        finally:
            browser.stop()
            await runner.cleanup()
