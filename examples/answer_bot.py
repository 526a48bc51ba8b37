"""A headless answering bot on softphone's front door, for any SIP-over-WebSocket server.

It registers an extension (``softphone.Phone``: no OmniSense REST API needed),
answers every call, plays a prompt, records what the caller says (one file per
call), logs DTMF however it arrives (RFC 4733, SIP INFO or in-band tones: one
``DtmfEvent`` each) and hangs up when the caller presses ``#``.

    SOFTPHONE_PASSWORD=... python examples/answer_bot.py --ws wss://pbx.example:8089/ws --user 9001 \\
        --turn turn:pbx.example:3478 --prompt hello.wav --record-dir calls/
    # the TURN credential is the SIP password unless SOFTPHONE_TURN_PASSWORD is set
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from softphone import Call, CallAnswered, CallEnded, DtmfEvent, Phone
from softphone.log import get_logger, setup_logging

log = get_logger("softphone.examples.answer_bot")


class AnswerBot:
    """Answers calls on one phone (``answer="auto"``, ``play=`` the prompt); one recording per call."""

    def __init__(self, phone: Phone, record_dir: Path):
        self.phone, self.record_dir = phone, record_dir
        self.recordings: list[Path] = []
        self.digits: list[tuple[str, str]] = []  # (digit, how it arrived)
        self.finished: asyncio.Queue[CallEnded] = asyncio.Queue()
        phone.on("call_answered", self._answered)
        phone.on("call_ended", self.finished.put_nowait)

    def _call(self, call_id: str) -> Call:
        return next(c for c in self.phone.calls if c.call_id == call_id)

    def _answered(self, event: CallAnswered) -> None:
        call = self._call(event.call_id)
        path = self.record_dir / f"call-{len(self.recordings) + 1}.wav"
        self.recordings.append(path)
        call.record(path)
        call.on("dtmf", lambda ev: self._digit(call, ev))

    def _digit(self, call: Call, event: DtmfEvent) -> None:
        log.info("call %s: DTMF %s (%s, %d ms)", call.call_id, event.digit, event.via, event.duration_ms)
        self.digits.append((event.digit, event.via))
        if event.digit == "#":
            asyncio.get_running_loop().create_task(call.hangup())

    async def __aenter__(self) -> AnswerBot:
        await self.phone.__aenter__()  # connects and registers
        return self

    async def __aexit__(self, *exc) -> None:
        await self.phone.__aexit__(*exc)  # hangs up, unregisters, closes the WebSocket


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ws", required=True, help="SIP WebSocket URL")
    ap.add_argument("--user", required=True, help="SIP user (extension), or sip:EXT@DOMAIN")
    ap.add_argument("--turn", action="append", default=[], help="turn:HOST:PORT (repeat for more)")
    ap.add_argument("--turn-user", default=None, help="TURN username [the SIP user]")
    ap.add_argument("--prompt", type=Path, required=True)
    ap.add_argument("--record-dir", type=Path, default=Path("."))
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    setup_logging(debug_console=args.debug, level=None if args.debug else 20)
    phone = Phone.connect(args.ws, args.user, os.environ["SOFTPHONE_PASSWORD"], turn=args.turn,
                          turn_username=args.turn_user, turn_password=os.environ.get("SOFTPHONE_TURN_PASSWORD"),
                          answer="auto", play=args.prompt)
    async with AnswerBot(phone, args.record_dir) as bot:
        print(f"registered as {phone.ua_config.aor}; Ctrl-C to stop")
        while True:
            ended = await bot.finished.get()
            print(f"call {ended.call_id} ended ({ended.cause}); recordings: {[str(p) for p in bot.recordings]}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
