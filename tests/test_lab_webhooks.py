"""Webhook notifications delivered to a real local aiohttp receiver."""

from __future__ import annotations

import asyncio
import base64
import socket

import aiohttp
import pytest
import yaml
from aiohttp import web

from softphone.lab.app import openapi_text
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony

KEY = {"Authorization": "Key=lab-system-key"}


PAYLOAD_SCHEMAS = {"user_status": "UserStatusPayload", "call": "CallPayload", "call_end": "CallEndPayload"}


def check_against_openapi(notification: dict) -> None:
    """The notification matches the document's Notification schema and its type's payload schema."""
    from openapi_schema_validator import OAS30Validator
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT4

    registry = Registry().with_resource(
        "urn:lab", Resource.from_contents(yaml.safe_load(openapi_text()), default_specification=DRAFT4))
    for ref, value in (("Notification", notification),
                       (PAYLOAD_SCHEMAS[notification["type"]], notification["payload"])):
        OAS30Validator({"$ref": f"urn:lab#/components/schemas/{ref}"}, registry=registry).validate(value)


class Receiver:
    """A local HTTP server that records every POST; ``gate`` can hold answers back."""

    def __init__(self) -> None:
        self.received: list[dict] = []
        self.arrived = asyncio.Event()
        self.gate = asyncio.Event()
        self.gate.set()
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.received.append(await request.json())
        self.arrived.set()
        await asyncio.wait_for(self.gate.wait(), 30)
        return web.Response(status=self.status)

    async def wait_for(self, count: int) -> list[dict]:
        async def until() -> None:
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(until(), 10)
        return self.received


@pytest.fixture
async def receiver():
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    yield rec
    rec.gate.set()
    await runner.cleanup()


@pytest.fixture
async def client():
    async with await start_lab(notification_timeout=2, telephony=InMemoryTelephony()) as lab, aiohttp.ClientSession(lab.url) as session:
        async with session.post("/omni/user/authorize", headers=KEY, json={
                "user_name": "agent1", "password": base64.b64encode(b"agent1pass").decode()}) as resp:
            token = (await resp.json())["token_key"]
        async with session.post("/omni/user/authorize", headers=KEY, json={
                "user_name": "supervisor1", "password": base64.b64encode(b"supervisor1pass").decode()}) as resp:
            session.supervisor_token = (await resp.json())["token_key"]
        session.headers.update({**KEY, "tokenKey": token})
        session.lab = lab
        yield session


async def set_endpoint(session, url: str) -> None:
    """Only a supervisor's token may set the notification endpoint."""
    async with session.post("/omni/notifications/endpoint", json={"url": url},
                            headers={"tokenKey": session.supervisor_token}) as resp:
        assert resp.status == 200, await resp.text()


async def post(session, path, body=None):
    async with session.post(path, json=body) as resp:
        data = await resp.json()
        assert resp.status == 200, data
        return data


async def test_user_status_call_and_call_end(client, receiver):
    await set_endpoint(client, receiver.url)
    await post(client, "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"})
    call = await post(client, "/omni/voice/1001/call", {"phone_number": "0821234567", "outbound_cli": "27110001111",
                                                      "unique_id": "ref-77", "lead_id": 12})
    call_id = call["call_id"]
    await post(client, f"/omni/voice/1001/calls/{call_id}/recording/start")
    await post(client, f"/omni/voice/1001/calls/{call_id}/dispose", {"disposition_code": "SALE"})
    await post(client, f"/omni/voice/1001/calls/{call_id}/hangup")
    await post(client, "/omni/users/1001/logout")
    got = await receiver.wait_for(4)
    for notification in got:
        check_against_openapi(notification)
    by_type = {}
    for n in got:
        by_type.setdefault(n["type"], []).append(n["payload"])
    assert sorted(by_type) == ["call", "call_end", "user_status"]
    # delivery is concurrent and best effort: order is not promised
    assert sorted(p["status_id"] for p in by_type["user_status"]) == [0, 1]
    login = next(p for p in by_type["user_status"] if p["status_id"] == 1)
    assert login == {"user_id": 1001, "campaign_id": 1, "status_id": 1, "status": "Available", "break_name": None}
    assert by_type["call"] == [{"call_id": call_id, "phone_number": "0821234567", "reference_id": "ref-77",
                                "call_direction": "outbound", "user_id": 1001, "campaign_id": 1, "list_id": 101,
                                "call_type": "manual"}]
    cdr = by_type["call_end"][0]
    assert set(cdr) == {"call_id", "phone_number", "caller_id", "reference_id", "call_direction", "dispostion_code",
                        "sip_code", "user_id", "campaign_id", "list_id", "call_type", "recording_url",
                        "start_date_time", "end_time_time", "ivr_time", "ring_time", "talk_time", "user_time",
                        "hold_time", "wrapup_time"}
    assert (cdr["call_id"], cdr["caller_id"], cdr["dispostion_code"], cdr["sip_code"]) == (
        call_id, "27110001111", "SALE", 200)
    assert cdr["recording_url"].endswith(f"/recordings/call-{call_id}.wav")
    assert all(isinstance(cdr[k], int) and cdr[k] >= 0
               for k in ("ivr_time", "ring_time", "talk_time", "user_time", "hold_time", "wrapup_time"))


async def test_slow_receiver_never_blocks_the_api(client, receiver):
    await set_endpoint(client, receiver.url)
    receiver.gate.clear()  # the receiver holds every answer until the test says so
    # if login waited for its webhook, this would hang until wait_for gives up
    await asyncio.wait_for(post(client, "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"}), 10)
    await receiver.wait_for(1)
    receiver.gate.set()
    await client.lab.lab.notifier.drain()
    assert client.lab.lab.notifier.sent == 1


async def test_unreachable_or_failing_receiver_is_best_effort(client, receiver):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    await set_endpoint(client, f"http://127.0.0.1:{dead_port}/hook")
    await post(client, "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"})
    notifier = client.lab.lab.notifier
    await notifier.drain()
    assert (notifier.sent, notifier.failed) == (0, 1)
    receiver.status = 500
    await set_endpoint(client, receiver.url)
    await post(client, "/omni/users/1001/logout")
    await notifier.drain()
    assert (notifier.sent, notifier.failed) == (0, 2)
    assert len(receiver.received) == 1


async def test_no_endpoint_no_notifications(client):
    await post(client, "/omni/users/1001/login", {"campaign_id": 1, "extension": "9001"})
    notifier = client.lab.lab.notifier
    await notifier.drain()
    assert (notifier.sent, notifier.failed) == (0, 0)
