"""A bounded log of the SIP messages a transport carried, for "what happened on this call".

Every :class:`~softphone.sip.transport.Transport` keeps one :class:`Ladder`
(the last :data:`LADDER_SIZE` messages, both directions): a failed test
expectation prints the messages of its call as a compact ladder::

    +0.000  -> INVITE sip:9001@127.0.0.1 (CSeq 1 INVITE)
    +0.004  <- 100 Trying (CSeq 1 INVITE)
    +0.310  <- 200 OK (CSeq 1 INVITE)

Only the start line and CSeq are kept: never a body or a header that could
carry a secret (digest responses live in Authorization headers, not kept).
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass

#: Messages kept per transport (both directions).
LADDER_SIZE = 400

_CALL_ID_RE = re.compile(r"^(?:call-id|i)\s*:\s*(\S+)", re.IGNORECASE | re.MULTILINE)
_CSEQ_RE = re.compile(r"^cseq\s*:\s*([^\r\n]+)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class LadderEntry:
    at: float
    """time.monotonic() when the message was sent or received."""
    outgoing: bool
    start_line: str
    call_id: str | None
    cseq: str | None

    def line(self, origin: float) -> str:
        arrow = "->" if self.outgoing else "<-"
        cseq = f" (CSeq {self.cseq})" if self.cseq else ""
        return f"{self.at - origin:+8.3f}  {arrow} {self.start_line}{cseq}"


class Ladder:
    """The last ``size`` messages of one transport."""

    def __init__(self, size: int = LADDER_SIZE) -> None:
        self.entries: deque[LadderEntry] = deque(maxlen=size)

    def add_text(self, text: str, outgoing: bool) -> None:
        """Keep the start line, Call-ID and CSeq of one frame (cheap: regexes on the head only)."""
        head = text.split("\r\n\r\n", 1)[0]
        start = head.split("\r\n", 1)[0].strip()
        if start.startswith("SIP/2.0 "):
            start = start[8:]
        else:
            start = start.rsplit(" SIP/2.0", 1)[0]
        call_id = _CALL_ID_RE.search(head)
        cseq = _CSEQ_RE.search(head)
        self.entries.append(LadderEntry(time.monotonic(), outgoing, start[:120],
                                        call_id.group(1) if call_id else None,
                                        cseq.group(1).strip() if cseq else None))

    def of_call(self, call_id: str | None) -> list[LadderEntry]:
        return [e for e in self.entries if call_id is not None and e.call_id == call_id]

    def render(self, call_id: str | None, limit: int = 40) -> str:
        """The call's messages, one a line, times relative to its first (the last ``limit``)."""
        entries = self.of_call(call_id)
        if not entries:
            return "    (no SIP messages of this call kept)"
        origin = entries[0].at
        skipped = len(entries) - limit
        lines = [f"    {e.line(origin)}" for e in entries[-limit:]]
        if skipped > 0:
            lines.insert(0, f"    ... {skipped} earlier message(s)")
        return "\n".join(lines)


__all__ = ["LADDER_SIZE", "Ladder", "LadderEntry"]
