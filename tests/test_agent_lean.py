"""An Agent's tone, silence and file go out pre-encoded (the lean path) and are heard right.

Through the lab (its SIP edge, dialer and a simulated customer listening for tones) and
its coturn, relay only: what the agent plays is heard by the customer at the right
frequency while aiortc's encoder is never asked for one of the agent's frames
(a probe on :func:`softphone.media.aiortc_seam.next_encoded_frame`, the only way a
non-pre-encoded track reaches aiortc's encoder from the lean sender); in-band DTMF,
which needs live encoding, still works in between.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from pyee.asyncio import AsyncIOEventEmitter

from softphone import Agent, CallState
from softphone.agent.call import Call
from softphone.errors import AgentError
from softphone.lab.customers import Behaviour, CustomerTable
from softphone.lab.server import start_lab
from softphone.media import aiortc_seam as seam
from softphone.media.lean_playback import LeanPlayback, lean_playback
from softphone.media.lean_sender import LeanState, lean_sender_of
from softphone.media.sources import SwitchableSource, write_wav
from softphone.media.tones import DB_FLOOR

BOUND = 20.0
PROMPT_HZ, CUSTOMER_HZ, AGENT_HZ, FILE_HZ = 440.0, 600.0, 1000.0, 700.0
NUMBER = "0829990002"


async def wait_until(predicate, timeout: float = BOUND, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"{what} not reached in time")
        await asyncio.sleep(0.05)


def test_what_goes_on_the_lean_path():
    assert lean_playback("tone:440").label == "tone 440 Hz"
    assert lean_playback(1000).label == "tone 1000 Hz"
    assert lean_playback(None).label == lean_playback("silence").label == "silence"
    assert lean_playback(None).level_dbfs == DB_FLOOR
    assert -20 < lean_playback("tone:440").level_dbfs < -10  # amplitude 0.25: about -15 dBFS
    for live in ("dtmf:12#", "tone:350+440", "/no/such/file.wav", "tone:x", SwitchableSource()):
        assert lean_playback(live) is None, live


@pytest.mark.peer
async def test_agent_tone_file_and_silence_go_pre_encoded_and_are_heard(tmp_path, monkeypatch):
    encoded_for: list = []
    original = seam.next_encoded_frame

    async def probe(sender, codec):
        encoded_for.append(sender)
        return await original(sender, codec)

    monkeypatch.setattr(seam, "next_encoded_frame", probe)
    rate = 8000
    t = np.arange(int(rate * 1.5)) / rate
    wav = write_wav(tmp_path / "file.wav", (0.3 * np.sin(2 * np.pi * FILE_HZ * t)).astype(np.float32), rate)
    customers = CustomerTable().with_numbers({NUMBER: Behaviour(
        answer_after=0.2, play=f"tone:{CUSTOMER_HZ:g}", listen=(AGENT_HZ, FILE_HZ))})
    async with await start_lab(turn=True, relay_only=True, prompt=f"tone:{PROMPT_HZ:g}",
                               customers=customers) as server:
        agent = Agent.from_url(server.launch_url(1001), campaign_id=1, relay_only=True,
                               play=f"tone:{AGENT_HZ:g}")
        async with agent:
            bridge = await agent.wait_for_call(timeout=BOUND)
            assert isinstance(bridge.track, LeanPlayback) and bridge.handler.source is bridge.track
            await bridge.wait_for_tone(PROMPT_HZ, timeout=BOUND)
            await agent.dial(NUMBER)
            gateway = server.lab.telephony.gateway
            await wait_until(lambda: gateway.customers, what="the customer's leg")
            customer = next(iter(gateway.customers.values()))
            await asyncio.wait_for(customer.answered.wait(), BOUND)
            await asyncio.wait_for(customer.tones.wait_for(AGENT_HZ), BOUND)  # the lean tone, heard
            lean = lean_sender_of(bridge.handler.sender)
            assert lean is not None and lean.state is LeanState.SENDING and lean.track is bridge.track
            sent = lean.packets
            assert sent > 0 and bridge.handler.sender not in encoded_for
            assert bridge.sent_level_dbfs() > -30

            # a file: pre-encoded too, heard, then silence (the call stays up)
            played = bridge.play(wav)
            assert isinstance(played, LeanPlayback) and bridge.handler.source is played
            await asyncio.wait_for(customer.tones.wait_for(FILE_HZ, include_past=False), BOUND)
            assert await played.played(timeout=BOUND) is True
            await wait_until(lambda: FILE_HZ not in customer.tones.present(), what="silence after the file")
            assert bridge.sent_level_dbfs() == DB_FLOOR
            assert bridge.handler.sender not in encoded_for and lean.packets > sent

            # in-band DTMF needs live encoding: the live source, through aiortc's encoder
            bridge.play("dtmf:7")
            assert isinstance(bridge.track, SwitchableSource) and bridge.handler.source is bridge.source
            await asyncio.wait_for(customer.dtmf.wait_digits(1), BOUND)
            assert customer.dtmf.digits.endswith("7")
            assert bridge.handler.sender in encoded_for

            # ... and back to the lean path: the tone again, no more frames encoded
            tone = bridge.play(f"tone:{AGENT_HZ:g}")
            assert isinstance(tone, LeanPlayback)
            await asyncio.wait_for(customer.tones.wait_for(AGENT_HZ, include_past=False), BOUND)
            await wait_until(lambda: lean_sender_of(bridge.handler.sender).track is tone,
                             what="the lean sender sending the tone")
            encoded = len(encoded_for)
            bridge.play("silence")
            await wait_until(lambda: AGENT_HZ not in customer.tones.present(), what="silence")
            assert len(encoded_for) == encoded  # nothing more went through the encoder
            assert bridge.state is CallState.ANSWERED and bridge.is_live and not bridge.handler.sending_stopped


class _Session(AsyncIOEventEmitter):
    direction = "outgoing"
    call_id = "unit"


class _Handler(AsyncIOEventEmitter):
    decode = False
    closed = False

    def __init__(self) -> None:
        super().__init__()
        self.sources: list = []

    def replace_source(self, track) -> None:
        self.sources.append(track)


async def test_play_picks_the_lean_or_the_live_track_and_listening_needs_decoding(tmp_path):
    call = Call(_Session(), play="tone:440")
    assert isinstance(call.track, LeanPlayback)
    assert isinstance(Call(_Session(), play="dtmf:1").track, SwitchableSource)
    assert isinstance(Call(_Session(), play="tone:440", lean=False).track, SwitchableSource)
    handler = _Handler()
    call._attach(handler)
    call.play("dtmf:5")
    assert handler.sources == [call.source]
    silence = call.play(None)
    assert handler.sources[-1] is silence and call.sent_level_dbfs() == DB_FLOOR
    with pytest.raises(AgentError, match="does not decode"):
        await call.wait_for_tone(440, timeout=1)
    with pytest.raises(AgentError, match="does not decode"):
        call.record(tmp_path / "x.wav")
