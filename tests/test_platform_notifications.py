"""NotificationReceiver: the lab's real webhooks, plus malformed bodies and timeouts."""

from __future__ import annotations

import aiohttp
import pytest

from softphone.errors import PlatformError, PlatformTimeoutError
from softphone.lab.server import start_lab
from softphone.lab.telephony import InMemoryTelephony
from softphone.platform.client import PlatformClient
from softphone.platform.notifications import (
    CallEnd,
    CallNotification,
    NotificationReceiver,
    NotificationType,
    ReceiverState,
    UserStatus,
)


async def test_lab_webhooks_for_a_whole_call():
    lab = await start_lab(db_url="sqlite:///:memory:", telephony=InMemoryTelephony())
    try:
        async with NotificationReceiver() as rx, \
                PlatformClient(lab.url, "lab-system-key", username="agent1", password="agent1pass") as c:
            async with PlatformClient(lab.url, "lab-system-key", username="supervisor1",
                                      password="supervisor1pass") as supervisor:
                await supervisor.set_notification_endpoint(rx.url)
            await c.login(1, "9001")
            status = (await rx.wait_for(NotificationType.USER_STATUS)).typed()
            assert isinstance(status, UserStatus)
            assert (status.user_id, status.campaign_id, status.status_id) == (1001, 1, 1)
            call = await c.call("0821234567", outbound_cli="0110001111", unique_id="ref-42", lead_id=7)
            placed = (await rx.wait_for("call", lambda n: n.payload.get("call_id") == call.call_id)).typed()
            assert isinstance(placed, CallNotification)
            assert (placed.phone_number, placed.reference_id, placed.call_direction) == (
                "0821234567", "ref-42", "outbound")
            assert placed.list_id == 101 and placed.user_id == 1001
            await c.dispose(call.call_id, "SALE")
            await c.hangup(call.call_id)
            end = await rx.wait_for(NotificationType.CALL_END, lambda n: n.payload.get("call_id") == call.call_id)
            cdr = end.typed()
            assert isinstance(cdr, CallEnd)
            assert cdr.disposition_code == "SALE" and "dispostion_code" in end.payload  # the contract's spelling
            assert cdr.end_date_time and cdr.start_date_time and cdr.sip_code == 200
            assert set(cdr.durations_ms) == {"ivr_time", "ring_time", "talk_time", "user_time", "hold_time",
                                             "wrapup_time"}
            await c.logout()
            out = await rx.wait_for("user_status", lambda n: n.payload.get("status_id") == 0, since=end.sequence)
            assert out.sequence > end.sequence
        assert [n.type for n in rx.notifications][:2] == ["user_status", "call"]
        assert rx.state is ReceiverState.CLOSED and rx.rejected == 0
    finally:
        await lab.close()


async def test_malformed_bodies_are_rejected_and_counted():
    seen = []

    def broken_callback(note):
        seen.append(note.type)
        raise RuntimeError("callback bug")

    async with NotificationReceiver(path="/hooks/omni", on_notification=broken_callback) as rx, \
            aiohttp.ClientSession() as http:
        assert rx.url.endswith("/hooks/omni")
        for body in (b"not json", b"[1, 2]", b'{"payload": {}}', b'{"type": "call", "payload": 5}'):
            async with http.post(rx.url, data=body) as resp:
                assert resp.status == 400
        async with http.post(rx.url, json={"type": "custom_event", "payload": {"x": 1}}) as resp:
            assert resp.status == 200  # delivered although the callback raised
        note = await rx.wait_for("custom_event", timeout=5)
        assert note.kind is None and note.typed() is None and note.payload == {"x": 1}
    assert rx.rejected == 4 and seen == ["custom_event"]


async def test_wait_for_times_out_with_a_clear_error():
    async with NotificationReceiver() as rx:
        with pytest.raises(PlatformTimeoutError, match=r"no notification of type 'call_end' within 0.05s \(0"):
            await rx.wait_for("call_end", timeout=0.05)


async def test_url_before_start_and_restart_refused():
    rx = NotificationReceiver()
    with pytest.raises(PlatformError, match="not listening"):
        _ = rx.url
    await rx.start()
    await rx.close()
    with pytest.raises(PlatformError, match="closed"):
        await rx.start()
    with pytest.raises(PlatformError, match="must start with '/'"):
        NotificationReceiver(path="hooks")
