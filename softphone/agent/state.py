"""The agent session's states and the one table of moves between them.

A Webphone session goes up step by step (authorize, extension, register,
log in) and down in a fixed order (log out, hang up, unregister, close).
A :class:`~softphone.agent.phone.Phone` without the platform's REST API
skips the platform steps (``NEW -> REGISTERING``).  Any state before
``STOPPING`` may be left for ``STOPPING`` (Ctrl-C, an error, ``expire_date``);
``STOPPING`` ends in ``STOPPED`` (clean) or ``FAILED`` (the start failed or
the session broke).
"""

from __future__ import annotations

import enum

from softphone.errors import AgentError


class AgentState(enum.Enum):
    NEW = "new"
    AUTHORIZING = "authorizing"
    PROVISIONING = "provisioning"
    REGISTERING = "registering"
    LOGGING_IN = "logging_in"
    READY = "ready"
    """Registered (and logged in, for an Agent): calls come and go."""
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (AgentState.STOPPED, AgentState.FAILED)


_S = AgentState

#: The one table of allowed moves.
TRANSITIONS: dict[AgentState, frozenset[AgentState]] = {
    _S.NEW: frozenset({_S.AUTHORIZING, _S.REGISTERING, _S.STOPPING}),
    _S.AUTHORIZING: frozenset({_S.PROVISIONING, _S.REGISTERING, _S.STOPPING}),
    _S.PROVISIONING: frozenset({_S.REGISTERING, _S.STOPPING}),
    _S.REGISTERING: frozenset({_S.LOGGING_IN, _S.READY, _S.STOPPING}),
    _S.LOGGING_IN: frozenset({_S.READY, _S.STOPPING}),
    _S.READY: frozenset({_S.STOPPING}),
    _S.STOPPING: frozenset({_S.STOPPED, _S.FAILED}),
    _S.STOPPED: frozenset(),
    _S.FAILED: frozenset(),
}


def check_move(current: AgentState, new: AgentState) -> None:
    """Raise :class:`AgentError` unless :data:`TRANSITIONS` allows ``current -> new``."""
    if new not in TRANSITIONS[current]:
        raise AgentError(f"agent cannot go from {current.value} to {new.value}")
