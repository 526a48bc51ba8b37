"""RFC 3261 timer values (section 17 and table 4) in one scalable dataclass.

Every SIP state machine takes its durations from a :class:`Timers` instance
instead of module constants, so tests run the same code paths with
``Timers.scaled(0.01)`` in milliseconds instead of seconds.  Values are for a
reliable transport (WebSocket): the "wait for retransmissions" timers D, I, J
and K are zero, as RFC 3261 prescribes and as SIP.js does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class Timers:
    """Base timers in seconds; the lettered timers are derived from them."""

    t1: float = 0.5
    """RTT estimate; base of B, F, H, L, M and of the 2xx retransmission interval."""
    t2: float = 4.0
    """Maximum retransmission interval for non-INVITE requests and INVITE 2xx."""
    t4: float = 5.0
    """Maximum time a message stays in the network."""
    trying_delay: float = 0.2
    """An INVITE server transaction sends 100 Trying if the TU is slower (RFC 3261 17.2.1)."""
    glare_owner: tuple[float, float] = (2.1, 4.0)
    """491 back-off range when we own the Call-ID (RFC 3261 14.1)."""
    glare_other: tuple[float, float] = (0.0, 2.0)
    """491 back-off range when the far end owns the Call-ID."""

    @classmethod
    def scaled(cls, factor: float) -> Timers:
        """Every duration multiplied by ``factor`` (``Timers.scaled(0.01)`` for tests)."""
        if factor <= 0:
            raise ValueError(f"Timers.scaled: factor must be > 0, got {factor!r}")
        base = cls()
        return cls(
            t1=base.t1 * factor,
            t2=base.t2 * factor,
            t4=base.t4 * factor,
            trying_delay=base.trying_delay * factor,
            glare_owner=(base.glare_owner[0] * factor, base.glare_owner[1] * factor),
            glare_other=(base.glare_other[0] * factor, base.glare_other[1] * factor),
        )

    def replace(self, **changes: float) -> Timers:
        return dataclasses.replace(self, **changes)

    # Client transactions
    @property
    def timer_b(self) -> float:
        """INVITE client transaction timeout."""
        return 64 * self.t1

    @property
    def timer_d(self) -> float:
        """Wait time for response retransmissions (0 on a reliable transport)."""
        return 0.0

    @property
    def timer_f(self) -> float:
        """Non-INVITE client transaction timeout."""
        return 64 * self.t1

    @property
    def timer_k(self) -> float:
        """Wait time for response retransmissions (0 on a reliable transport)."""
        return 0.0

    @property
    def timer_m(self) -> float:
        """RFC 6026: INVITE client transaction stays Accepted to absorb 2xx retransmissions."""
        return 64 * self.t1

    # Server transactions
    @property
    def timer_h(self) -> float:
        """Wait time for the ACK of a non-2xx final response."""
        return 64 * self.t1

    @property
    def timer_i(self) -> float:
        """Wait time for ACK retransmissions (0 on a reliable transport)."""
        return 0.0

    @property
    def timer_j(self) -> float:
        """Wait time for non-INVITE request retransmissions (0 on a reliable transport)."""
        return 0.0

    @property
    def timer_l(self) -> float:
        """RFC 6026: INVITE server transaction stays Accepted to absorb INVITE retransmissions."""
        return 64 * self.t1

    @property
    def ack_timeout(self) -> float:
        """A UAS gives up on the ACK for its 2xx after 64*T1 and sends BYE (RFC 3261 13.3.1.4)."""
        return 64 * self.t1
