"""The lab calls registered phones: SipEndpoint.inviter() over the phone's own WebSocket."""

from __future__ import annotations

import asyncio

import pytest
from lab_sip_support import extension, phone, running_lab, wait_until

from softphone.errors import TelephonyError
from softphone.sip.invitation import AnswerPolicy
from softphone.sip.null_handler import NullDescriptionHandler
from softphone.sip.session import SessionState


def null_factory(session):
    return NullDescriptionHandler(session)


async def test_inviter_calls_the_registered_phone_and_either_side_can_hang_up():
    async with running_lab() as lab:
        async with phone(lab, 0) as ua, phone(lab, 1, secure=True) as ua2:
            incoming = []
            ua.on("invite", incoming.append)
            inviter = lab.endpoint.inviter(extension(0), null_factory, caller_id="omnisense",
                                           display_name="Omni Sense", extra_headers=[("X-Lab-Call", "bridge")])
            response = await inviter.invite()
            assert response.status == 200 and inviter.state is SessionState.ESTABLISHED
            await wait_until(lambda: incoming and incoming[0].state is SessionState.ESTABLISHED,
                             what="the phone's side established")
            request = incoming[0].request
            assert request.from_.uri.user == "omnisense" and request.from_.display_name == "Omni Sense"
            assert request.headers.get("X-Lab-Call") == "bridge"
            assert str(request.uri) == str(lab.endpoint.binding(extension(0)).contact_uri)
            await inviter.bye()
            await wait_until(lambda: incoming[0].state is SessionState.TERMINATED, what="BYE reaching the phone")

            # the phone on wss hangs up itself
            other = []
            ua2.on("invite", other.append)
            inviter2 = lab.endpoint.inviter(extension(1), null_factory, caller_id="0821234567")
            await inviter2.invite()
            await wait_until(lambda: other and other[0].state is SessionState.ESTABLISHED, what="wss call up")
            await other[0].bye()
            await wait_until(lambda: inviter2.state is SessionState.TERMINATED, what="the lab side ended")


async def test_a_phone_that_refuses_the_call_is_reported_with_its_status():
    async with running_lab() as lab:
        async with phone(lab, 0, answer_policy=AnswerPolicy.reject(486)):
            inviter = lab.endpoint.inviter(extension(0), null_factory, caller_id="omnisense")
            with pytest.raises(Exception) as info:
                await inviter.invite()
            assert getattr(info.value, "status_code", None) == 486


async def test_inviter_for_an_unregistered_extension_raises_telephony_error():
    async with running_lab() as lab:
        with pytest.raises(TelephonyError, match="extension 7000 is not registered"):
            lab.endpoint.inviter(extension(0), null_factory, caller_id="omnisense")
        ua = phone(lab, 0)
        await ua.start()
        await ua.stop()
        await wait_until(lambda: not lab.endpoint.is_registered(extension(0)), what="unregistered")
        with pytest.raises(TelephonyError):
            lab.endpoint.inviter(extension(0), null_factory, caller_id="omnisense")


async def test_invite_from_a_phone_is_refused_without_a_listener_and_handed_over_with_one():
    async with running_lab() as lab:
        async with phone(lab, 0) as ua:
            from softphone.errors import SessionError

            with pytest.raises(SessionError) as info:
                await ua.call("0821234567")
            assert info.value.status_code == 403
            handed = []

            def answer(ext, invitation):
                handed.append((ext, invitation))
                asyncio.get_running_loop().create_task(invitation.accept())

            lab.endpoint.on("invite", answer)
            call = await ua.call("0821234567")
            assert call.state is SessionState.ESTABLISHED
            assert handed[0][0] == extension(0)
            assert handed[0][1].request.uri.user == "0821234567"
            await call.bye()


async def test_invite_from_a_phone_that_is_not_registered_gets_403():
    async with running_lab() as lab:
        lab.endpoint.on("invite", lambda ext, inv: asyncio.get_running_loop().create_task(inv.accept()))
        ua = phone(lab, 0, register=False)
        async with ua:
            from softphone.errors import SessionError

            with pytest.raises(SessionError) as info:
                await ua.call("0821234567")
            assert info.value.status_code == 403
