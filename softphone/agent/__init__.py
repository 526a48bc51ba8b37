"""The agent session: :class:`Agent` (OmniSense), :class:`Phone` (any SIP-over-WebSocket server),
:class:`Call` (the live call) and the :class:`AgentState` machine.

Names load lazily, so ``softphone.agent.state`` stays importable without aiortc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Agent": "softphone.agent.agent",
    "Phone": "softphone.agent.phone",
    "Call": "softphone.agent.call",
    "CallState": "softphone.agent.call",
    "AgentState": "softphone.agent.state",
    "TRANSITIONS": "softphone.agent.state",
}

__all__ = ["TRANSITIONS", "Agent", "AgentState", "Call", "CallState", "Phone"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'softphone.agent' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from softphone.agent.agent import Agent
    from softphone.agent.call import Call, CallState
    from softphone.agent.phone import Phone
    from softphone.agent.state import TRANSITIONS, AgentState
