"""GET /lab/status (what the status page shows) and the lab's one log line per platform event."""

from __future__ import annotations

import base64
import logging

import aiohttp
from lab_sip_support import extension, phone, running_lab, wait_until


async def status(lab) -> dict:
    async with aiohttp.ClientSession() as http, http.get(lab.url + "/lab/status") as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        return await resp.json()


async def test_status_lists_registrations_live_calls_and_events(caplog):
    async with running_lab() as lab:
        empty = await status(lab)
        assert empty["registrations"] == [] and empty["calls"] == [] and empty["telephony"] == "InMemoryTelephony"
        async with phone(lab, 0, secure=True):
            key = {"Authorization": f"Key={lab.api_key.reveal()}"}
            with caplog.at_level(logging.INFO, logger="softphone.lab.status_page"):
                async with aiohttp.ClientSession(lab.url) as http:
                    async with http.post("/omni/user/authorize", headers=key, json={
                            "user_name": "agent1", "password": base64.b64encode(b"agent1pass").decode()}) as resp:
                        headers = {**key, "tokenKey": (await resp.json())["token_key"]}
                    async with http.post("/omni/users/1001/login", headers=headers,
                                         json={"campaign_id": 1, "extension": "9001"}) as resp:
                        assert resp.status == 200
                    async with http.post("/omni/voice/1001/call", headers=headers, json={
                            "phone_number": "0821234567", "outbound_cli": "0100000000",
                            "unique_id": "status"}) as resp:
                        call_id = (await resp.json())["call_id"]
                    now = await status(lab)
                    async with http.post(f"/omni/voice/1001/calls/{call_id}/hangup", headers=headers) as resp:
                        assert resp.status == 200
            (reg,) = now["registrations"]
            assert reg["extension"] == extension(0) and reg["transport"] == "wss" and reg["algorithm"] == "SHA-256"
            assert 0 < reg["expires_in_s"] <= 600 and reg["user_agent"].startswith("softphone/")
            (call,) = now["calls"]
            assert call["call_id"] == call_id and call["state"] == "answered" and call["duration_s"] >= 0
            kinds = [e["kind"] for e in now["events"]]
            assert "registered" in kinds and "user_status" in kinds and "call" in kinds
            after = await status(lab)
            assert after["calls"] == [] and after["recent_calls"][0]["call_id"] == call_id
            assert any(e["kind"] == "call_end" and f"call_id={call_id}" in e["text"] for e in after["events"])
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event ")]
        assert any(line.startswith("event call_end: call_id=") for line in lines)
        assert not any("agent1pass" in line for line in lines)
        await wait_until(lambda: not lab.endpoint.registered_extensions(), what="unregistered")
        assert (await status(lab))["events"][-1]["kind"] == "unregistered"


async def test_status_page_is_self_contained_html():
    async with running_lab() as lab, aiohttp.ClientSession() as http:
        async with http.get(lab.url + "/") as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            html = await resp.text()
    assert "/lab/status" in html and "http://" not in html and "https://" not in html
    assert "innerHTML" not in html  # rows are built with textContent only
