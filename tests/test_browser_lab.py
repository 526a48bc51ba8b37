"""The Webphone's stack as the agent's phone on the embedded lab (not Kamailio).

SIP.js 0.15.11 in headless Chromium registers the agent's extension on the
lab's SIP edge (ws://.../ws), the REST client logs the agent in, and the lab
places the bridge call to the browser as the platform does: the browser hears
the lab's prompt, then a customer dialled by the REST API, and the customer
hears the browser's microphone. The relay variant runs both the lab's media and
the browser relay-only through the lab's own coturn, the browser logging in to it
with the agent's username and password as the Webphone does.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from browser_support import BROWSER_TONE, WebphonePage, wait_for
from lab_sip_support import extension, password, seed_with_phones

from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.platform.client import PlatformClient

pytestmark = [pytest.mark.peer, pytest.mark.browser]

PROMPT, CUSTOMER_TONE = 440.0, 600.0
CUSTOMER = "0821234567"


@pytest.mark.parametrize("relay", [False, True], ids=["host", "relay-through-lab-coturn"])
async def test_browser_is_the_agent_phone_on_the_lab(tmp_path, chromium, relay):
    customers = CustomerTable().with_numbers({
        CUSTOMER: Behaviour(answer_after=0.3, play=f"tone:{CUSTOMER_TONE:g}", listen=(BROWSER_TONE,)),
    })
    async with await start_lab(seed=seed_with_phones(1), turn=relay, relay_only=relay, prompt=f"tone:{PROMPT:g}",
                               recordings_dir=tmp_path, customers=customers,
                               telephony_options={"ring_wait": 0.5}) as lab:
        turn = None
        if relay:
            assert lab.turn is not None, "the lab did not start coturn"
            turn = SimpleNamespace(url=lab.turn.url, username="phone0", password=password(0))
        async with WebphonePage(chromium, ext=extension(0), password=password(0), domain=lab.domain,
                                ws=lab.sip_ws_url, turn=turn) as page, \
                PlatformClient(lab.url, lab.api_key, username="phone0", password=password(0),
                               allow_http=True) as api:
            await page.next_event("registered")
            await api.login(1, extension(0))
            await page.next_event("invite")  # the bridge call, auto-answered like the Webphone
            await page.hears(PROMPT)
            if relay:
                counters = await wait_for(page.counters, "the browser's selected candidate pair")
                assert counters.get("localCandidateType") == "relay", counters
                lab_sdp = await page.evaluate("window.session.sessionDescriptionHandler.peerConnection"
                                              ".remoteDescription.sdp")
                lab_candidates = [x for x in lab_sdp.splitlines() if x.startswith("a=candidate:")]
                assert lab_candidates and all(" typ relay" in x for x in lab_candidates), lab_candidates

            call = await api.call(CUSTOMER, outbound_cli="27110001111", unique_id="browser-lab-1")
            calls = lab.lab.telephony.calls
            await wait_for(lambda: call.call_id in calls and calls[call.call_id].winner is not None,
                           "the customer to answer")
            customer = calls[call.call_id].winner.customer
            await page.hears(CUSTOMER_TONE)
            await customer.tones.wait_for(BROWSER_TONE, timeout=30)  # the browser's microphone reached them

            await customer.hangup()
            await page.hears(PROMPT)  # back on the bridge
            await api.logout()
            await page.next_event("bye")
