"""Helpers for the lab dialer tests: a PhoneDirectory over the in-memory SIP hub, agents with real media."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyee.asyncio import AsyncIOEventEmitter

from softphone.errors import TelephonyError
from softphone.lab.telephony import CallInfo, CallState
from softphone.media.config import MediaConfig
from softphone.media.description_handler import WebRtcDescriptionHandlerFactory

try:  # where the media package keeps it (it moved from lean to testing)
    from softphone.media.testing import loopback_host_candidates
except ImportError:  # pragma: no cover - older tree
    from softphone.media.lean import loopback_host_candidates
from softphone.media.sinks import DtmfDetector, ToneDetector
from softphone.media.sources import ToneSource
from softphone.sip.inviter import Inviter
from softphone.sip.testing import LoopbackHub, hub_user_agent
from softphone.sip.user_agent import UserAgent


@pytest.fixture
def loopback_media():
    """aioice gathers host candidates on 127.0.0.1 only (restored afterwards)."""
    with loopback_host_candidates():
        yield


class HubDirectory(AsyncIOEventEmitter):
    """A PhoneDirectory over :class:`LoopbackHub`: the lab is one more user agent on the hub."""

    def __init__(self, hub: LoopbackHub) -> None:
        super().__init__()
        self.hub = hub
        self.lab_ua = hub_user_agent(hub, "lab", register=False)

    def is_registered(self, extension: str) -> bool:
        binding = self.hub.bindings.get(extension)
        return binding is not None and binding.transport.connected

    def registered_extensions(self) -> list[str]:
        return sorted(e for e in self.hub.bindings if self.is_registered(e))

    def inviter(self, extension: str, handler_factory: Any, *, caller_id: str, display_name: str | None = None,
                extra_headers: list[tuple[str, str]] | None = None) -> Inviter:
        if not self.is_registered(extension):
            raise TelephonyError(f"extension {extension} is not registered")
        return self.lab_ua.invite(f"sip:{extension}@{self.hub.domain}", handler_factory=handler_factory,
                                  extra_headers=extra_headers)


@dataclass
class Agent:
    """A softphone.sip UserAgent on the hub that sends a tone and listens for tones and DTMF."""

    ua: UserAgent
    tone: float
    ear: ToneDetector
    dtmf: list[str] = field(default_factory=list)
    digits: DtmfDetector = field(default_factory=DtmfDetector)

    @property
    def session(self) -> Any:
        return next(iter(self.ua.sessions), None)


def make_agent(hub: LoopbackHub, ext: str, tone: float, listen: tuple[float, ...],
               codecs: tuple[str, ...] = ("opus", "PCMU"), **ua_config: Any) -> Agent:
    ear = ToneDetector(listen)
    config = MediaConfig(codecs=codecs)
    agent: Agent

    def sinks(_session: Any) -> list[Any]:
        return [ear]

    factory = WebRtcDescriptionHandlerFactory(config, source_factory=lambda _s: ToneSource(tone, amplitude=0.3),
                                              sinks_factory=sinks)

    def on_invite(invitation: Any) -> None:
        invitation.on("dtmf", lambda event, *_: agent.dtmf.append(getattr(event, "digit", event)))

        def wire_handler(*_: Any) -> None:
            invitation.handler.on("dtmf", lambda event: agent.dtmf.append(event.digit))

        invitation.on("accepted", wire_handler)

    ua = hub_user_agent(hub, ext, description_handler_factory=factory, **ua_config)
    ua.on("invite", on_invite)
    agent = Agent(ua, tone, ear)
    return agent


class RecordingSink:
    """A TelephonyEvents sink that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[int, CallState, int | None, str | None]] = []
        self.bridges_ended: list[tuple[int, str]] = []
        self.changed = asyncio.Event()

    async def call_state_changed(self, call_id: int, state: CallState, sip_code: int | None = None,
                                 phone_number: str | None = None) -> None:
        self.events.append((call_id, state, sip_code, phone_number))
        self.changed.set()

    async def bridge_ended(self, user_id: int, reason: str) -> None:
        self.bridges_ended.append((user_id, reason))
        self.changed.set()

    def states(self, call_id: int) -> list[CallState]:
        return [e[1] for e in self.events if e[0] == call_id]


def call_info(call_id: int, number: str, user_id: int = 1001, alternatives: tuple[str, ...] = (),
              direction: str = "outbound", cli: str = "2711") -> CallInfo:
    return CallInfo(call_id=call_id, user_id=user_id, phone_number=number, outbound_cli=cli, extension="9001",
                    campaign_id=1, alternatives=alternatives, direction=direction)
