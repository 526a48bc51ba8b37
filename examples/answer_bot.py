"""A headless call bot from softphone's building blocks.

It registers an extension over SIP/WebSocket, answers every call, plays a
prompt, records what the caller says, logs DTMF however it arrives (RFC 4733,
SIP INFO or in-band tones) and hangs up when the caller presses ``#``.

    python examples/answer_bot.py --ws wss://pbx.example:8089/ws --aor sip:9001@pbx.example \\
        --turn turn:pbx.example:3478 --prompt hello.wav --record-dir calls/
    # password and TURN credential from SOFTPHONE_PASSWORD (and SOFTPHONE_TURN_PASSWORD)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
from pathlib import Path

from softphone.log import Secret, get_logger, setup_logging
from softphone.media.config import IceConfig, MediaConfig
from softphone.media.handler import WebRtcDescriptionHandlerFactory
from softphone.media.recorder import Recorder
from softphone.media.sinks import DtmfDetector
from softphone.media.sources import FileSource
from softphone.sip.user_agent import UserAgent, UserAgentConfig

log = get_logger("softphone.examples.answer_bot")


class AnswerBot:
    """Answers calls on one extension; one recording file per call."""

    def __init__(self, ua_config: UserAgentConfig, media: MediaConfig, prompt: Path, record_dir: Path):
        self.prompt, self.record_dir = prompt, record_dir
        self.calls = 0
        self.recordings: list[Path] = []
        self.digits: list[tuple[str, str]] = []  # (digit, how it arrived)
        self.finished: asyncio.Queue = asyncio.Queue()
        factory = WebRtcDescriptionHandlerFactory(media, source_factory=self._source, sinks_factory=self._sinks)
        self.ua = UserAgent(dataclasses.replace(ua_config, description_handler_factory=factory))
        self.ua.on("invite", self._on_invite)

    def _source(self, session):
        return FileSource(self.prompt)  # goes silent after the prompt; the call stays up

    def _sinks(self, session):
        self.calls += 1
        path = self.record_dir / f"call-{self.calls}.wav"
        self.recordings.append(path)
        detector = DtmfDetector()
        detector.on("dtmf", lambda ev: self._digit(session, ev.digit, ev.via))
        return [Recorder(path), detector]

    def _on_invite(self, invitation) -> None:
        invitation.on("dtmf", lambda ev: self._digit(invitation, ev.digit, ev.via))
        invitation.on("established", lambda: invitation.handler.on(
            "dtmf", lambda event: self._digit(invitation, event.digit, event.via)))
        invitation.on("terminated", lambda reason, status: self.finished.put_nowait(invitation))

    def _digit(self, session, digit: str, via: str) -> None:
        log.info("call %s: DTMF %s (%s)", session.call_id, digit, via)
        self.digits.append((digit, via))
        if digit == "#":
            asyncio.get_running_loop().create_task(session.bye("caller pressed #"))

    async def __aenter__(self) -> AnswerBot:
        await self.ua.start()  # connects and registers; the default answer policy answers at once
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ua.stop()  # hangs up, unregisters, closes the WebSocket


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ws", required=True, help="SIP WebSocket URL")
    ap.add_argument("--aor", required=True, help="sip:EXTENSION@DOMAIN")
    ap.add_argument("--turn", required=True, help="turn:HOST:PORT")
    ap.add_argument("--turn-user", default=None, help="TURN username [the extension]")
    ap.add_argument("--prompt", type=Path, required=True)
    ap.add_argument("--record-dir", type=Path, default=Path("."))
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    setup_logging(debug_console=args.debug, level=None if args.debug else 20)
    password = Secret(os.environ["SOFTPHONE_PASSWORD"])
    turn_password = Secret(os.environ.get("SOFTPHONE_TURN_PASSWORD") or password.reveal())
    ext = args.aor.split(":", 1)[1].split("@", 1)[0]
    media = MediaConfig(ice=IceConfig(turn_urls=(args.turn,), username=args.turn_user or ext,
                                      credential=turn_password))
    bot = AnswerBot(UserAgentConfig(ws_url=args.ws, aor=args.aor, password=password), media,
                    args.prompt, args.record_dir)
    async with bot:
        print(f"registered as {args.aor}; Ctrl-C to stop")
        while True:
            call = await bot.finished.get()
            print(f"call {call.call_id} ended; recordings: {[str(p) for p in bot.recordings]}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
