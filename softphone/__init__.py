"""softphone: a headless WebRTC softphone agent for TForge OmniSense.

The front door::

    from softphone import Agent
    async with Agent.from_url(webphone_url, campaign_id=1) as agent:
        call = await agent.wait_for_call(timeout=10)

Layers, each importing only those below it::

    cli
    agent (Agent, Phone, Call)            lab (sip, media)
    media (aiortc, PyAV)   platform (REST client)   sip (pure protocol)
    params, errors, log, events

Importing ``softphone`` is cheap: the names below load their modules on
first use (a module ``__getattr__``, as aiohttp does), so ``softphone.params``
or the CLI's ``--help`` never import aiortc or PyAV.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> module that defines it (loaded on first access).
_LAZY: dict[str, str] = {
    "Agent": "softphone.agent.agent",
    "Phone": "softphone.agent.phone",
    "Call": "softphone.agent.call",
    "CallState": "softphone.agent.call",
    "AgentState": "softphone.agent.state",
    "LaunchParams": "softphone.params",
    "load_params": "softphone.params",
    "MediaConfig": "softphone.media.config",
    "IceConfig": "softphone.media.config",
    "CallQuality": "softphone.media.stats",
    "PlatformClient": "softphone.platform.client",
    "SoftphoneError": "softphone.errors",
    "ParameterError": "softphone.errors",
    "ConfigurationError": "softphone.errors",
    "AgentError": "softphone.errors",
    "SessionExpiredError": "softphone.errors",
    "SipError": "softphone.errors",
    "AuthenticationError": "softphone.errors",
    "MediaError": "softphone.errors",
    "PlatformError": "softphone.errors",
    "PlatformAuthError": "softphone.errors",
    "PlatformConnectionError": "softphone.errors",
    "Event": "softphone.events",
    "StateChanged": "softphone.events",
    "Registered": "softphone.events",
    "Unregistered": "softphone.events",
    "LoggedIn": "softphone.events",
    "LoggedOut": "softphone.events",
    "CallIncoming": "softphone.events",
    "CallAnswered": "softphone.events",
    "CallEnded": "softphone.events",
    "DtmfEvent": "softphone.events",
    "Hold": "softphone.events",
    "Unhold": "softphone.events",
    "Reconnecting": "softphone.events",
    "Expiring": "softphone.events",
    "ErrorEvent": "softphone.events",
}
_SUBMODULES = ("events", "errors", "params", "log")

__all__ = [
    "Agent",
    "AgentError",
    "AgentState",
    "AuthenticationError",
    "Call",
    "CallAnswered",
    "CallEnded",
    "CallIncoming",
    "CallQuality",
    "CallState",
    "ConfigurationError",
    "DtmfEvent",
    "ErrorEvent",
    "Event",
    "Expiring",
    "Hold",
    "IceConfig",
    "LaunchParams",
    "LoggedIn",
    "LoggedOut",
    "MediaConfig",
    "MediaError",
    "ParameterError",
    "Phone",
    "PlatformAuthError",
    "PlatformClient",
    "PlatformConnectionError",
    "PlatformError",
    "Reconnecting",
    "Registered",
    "SessionExpiredError",
    "SipError",
    "SoftphoneError",
    "StateChanged",
    "Unhold",
    "Unregistered",
    "__version__",
    "errors",
    "events",
    "load_params",
    "log",
    "params",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"softphone.{name}")
    raise AttributeError(f"module 'softphone' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from softphone import errors, events, log, params
    from softphone.agent.agent import Agent
    from softphone.agent.call import Call, CallState
    from softphone.agent.phone import Phone
    from softphone.agent.state import AgentState
    from softphone.errors import (
        AgentError,
        AuthenticationError,
        ConfigurationError,
        MediaError,
        ParameterError,
        PlatformAuthError,
        PlatformConnectionError,
        PlatformError,
        SessionExpiredError,
        SipError,
        SoftphoneError,
    )
    from softphone.events import (
        CallAnswered,
        CallEnded,
        CallIncoming,
        DtmfEvent,
        ErrorEvent,
        Event,
        Expiring,
        Hold,
        LoggedIn,
        LoggedOut,
        Reconnecting,
        Registered,
        StateChanged,
        Unhold,
        Unregistered,
    )
    from softphone.media.config import IceConfig, MediaConfig
    from softphone.media.stats import CallQuality
    from softphone.params import LaunchParams, load_params
    from softphone.platform.client import PlatformClient
