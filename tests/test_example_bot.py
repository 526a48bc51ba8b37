"""examples/answer_bot.py (on the front door's Phone) works as the README says: through real Kamailio and coturn."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

from media_support import SineTrack, ToneMeter, relay_config

from softphone import Phone
from softphone.media.description_handler import WebRtcDescriptionHandlerFactory
from softphone.media.report import analyze_recording
from softphone.media.sources import generate_tone_file
from softphone.sip.timers import Timers
from softphone.sip.user_agent import UserAgent, UserAgentConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "answer_bot.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("answer_bot", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _near(value: float, target: float) -> bool:
    return abs(value - target) <= 0.02 * target


async def test_answer_bot_plays_records_and_hangs_up_on_hash(kamailio, coturn, tmp_path):
    answer_bot = _load_example()
    prompt = generate_tone_file(tmp_path / "prompt.wav", 600.0, duration=5.0)
    bot_ext, caller_ext = kamailio.allocate(2)
    phone = Phone(UserAgentConfig(ws_url=kamailio.ws_url, aor=f"sip:{bot_ext}@{kamailio.domain}",
                                  password=kamailio.users[bot_ext], timers=Timers.scaled(0.2)),
                  relay_config(coturn, codecs=("PCMU",)), answer="auto", play=prompt)
    bot = answer_bot.AnswerBot(phone, tmp_path)
    heard = ToneMeter()
    caller = UserAgent(UserAgentConfig(
        ws_url=kamailio.ws_url, aor=f"sip:{caller_ext}@{kamailio.domain}", password=kamailio.users[caller_ext],
        timers=Timers.scaled(0.2),
        description_handler_factory=WebRtcDescriptionHandlerFactory(
            relay_config(coturn, codecs=("PCMU",)), source_factory=lambda s: SineTrack(1000.0),
            sinks_factory=lambda s: [heard])))
    async with bot:
        await asyncio.wait_for(caller.start(), 10)
        try:
            call = await asyncio.wait_for(caller.call(bot_ext), 15)
            await heard.wait_frames(40)
            assert _near(heard.dominant_frequency(), 600.0)  # the prompt
            assert await asyncio.wait_for(call.send_dtmf("5", method="rtp"), 10) == "rtp"
            await asyncio.sleep(0.5)
            assert await asyncio.wait_for(call.send_dtmf("#", method="info"), 10) == "info"
            ended = await asyncio.wait_for(bot.finished.get(), 10)  # the bot hung up on '#'
            assert ended.call_id == call.call_id and ended.cause == "local hangup"
            await asyncio.wait_for(call.wait_terminated(10), 11)
        finally:
            await asyncio.wait_for(caller.stop(), 10)
    assert ("5", "rfc4733") in bot.digits and ("#", "info") in bot.digits
    assert bot.recordings == [tmp_path / "call-1.wav"]
    analysis = analyze_recording(bot.recordings[0])
    assert analysis.seconds > 0.5
    assert _near(analysis.dominant_hz, 1000.0)  # the caller's tone was recorded
