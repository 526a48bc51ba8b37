"""SIP dialogs (RFC 3261 section 12): the peer-to-peer state of an INVITE session.

A dialog remembers what every in-dialog request needs: Call-ID and tags,
local and remote CSeq, the remote target (Contact) and the route set
(Record-Route, reversed on the UAC side).  It builds in-dialog requests with
loose routing (and strict routing for old proxies, 12.2.1.1), checks the
order of incoming requests, and refreshes the remote target on re-INVITE.
"""

from __future__ import annotations

import enum
import random
from typing import Any

from softphone.errors import SipError
from softphone.log import get_logger
from softphone.sip.message import CSeq, Headers, NameAddr, SipRequest

log = get_logger(__name__)

DialogId = tuple[str, str, str]
"""(Call-ID, local tag, remote tag)."""

TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


def _name_addr(value: str) -> Any:
    return NameAddr.parse(value)


def _uri_params(uri: Any) -> dict:
    params = getattr(uri, "params", None)
    return params if isinstance(params, dict) else {}


class Dialog:
    """One dialog; create with :meth:`uac` or :meth:`uas`."""

    _allowed = {
        DialogState.EARLY: frozenset({DialogState.CONFIRMED, DialogState.TERMINATED}),
        DialogState.CONFIRMED: frozenset({DialogState.TERMINATED}),
        DialogState.TERMINATED: frozenset(),
    }

    def __init__(
        self,
        *,
        call_id: str,
        local_tag: str,
        remote_tag: str,
        local_uri: str,
        remote_uri: str,
        remote_target: Any,
        route_set: list[str],
        local_seq: int | None,
        remote_seq: int | None,
        local_contact: str,
        state: DialogState,
        secure: bool = False,
    ) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_tag = remote_tag
        self.local_uri = local_uri
        self.remote_uri = remote_uri
        self.remote_target = remote_target
        self.route_set = list(route_set)
        self.local_seq = local_seq
        self.remote_seq = remote_seq
        self.local_contact = local_contact
        self.state = state
        self.secure = secure

    # --- creation ------------------------------------------------------------------

    @classmethod
    def uac(cls, request: Any, response: Any, local_contact: str | None = None) -> Dialog:
        """From our dialog-forming request and a 1xx-with-To-tag or 2xx (12.1.2)."""
        to = _name_addr(response.headers.get("To"))
        if not to.tag:
            raise SipError(f"{response.status} response to {request.method} has no To tag: cannot form a dialog")
        contacts = response.contact
        if not contacts:
            if 200 <= response.status < 300:
                raise SipError(f"{response.status} response to {request.method} has no Contact header")
            target = request.uri  # early dialog without Contact: keep the request URI for now
        else:
            target = contacts[0].uri
        route_set = list(reversed(response.headers.get_all("Record-Route")))
        from_ = _name_addr(request.headers.get("From"))
        return cls(
            call_id=request.call_id,
            local_tag=from_.tag or "",
            remote_tag=to.tag,
            local_uri=_without_tag(request.headers.get("From")),
            remote_uri=_without_tag(request.headers.get("To")),
            remote_target=target,
            route_set=route_set,
            local_seq=request.cseq.seq,
            remote_seq=None,
            local_contact=local_contact or request.headers.get("Contact") or "",
            state=DialogState.CONFIRMED if 200 <= response.status < 300 else DialogState.EARLY,
            secure=str(request.uri).startswith("sips:"),
        )

    @classmethod
    def uas(cls, request: Any, local_tag: str, local_contact: str, confirmed: bool = False) -> Dialog:
        """From a dialog-forming request we answer with a tagged 1xx/2xx (12.1.1)."""
        contacts = request.contact
        if not contacts:
            raise SipError(f"{request.method} has no Contact header: cannot form a dialog")
        from_ = _name_addr(request.headers.get("From"))
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=from_.tag or "",
            local_uri=_without_tag(request.headers.get("To")),
            remote_uri=_without_tag(request.headers.get("From")),
            remote_target=contacts[0].uri,
            route_set=list(request.headers.get_all("Record-Route")),
            local_seq=None,
            remote_seq=request.cseq.seq,
            local_contact=local_contact,
            state=DialogState.CONFIRMED if confirmed else DialogState.EARLY,
            secure=str(request.uri).startswith("sips:"),
        )

    # --- identity and state -----------------------------------------------------------

    @property
    def id(self) -> DialogId:
        return (self.call_id, self.local_tag, self.remote_tag)

    @staticmethod
    def id_of_incoming(request: Any) -> DialogId | None:
        """Dialog id an incoming request belongs to; None if it has no To tag."""
        to_tag = _name_addr(request.headers.get("To")).tag
        if not to_tag:
            return None
        from_tag = _name_addr(request.headers.get("From")).tag or ""
        return (request.call_id, to_tag, from_tag)

    @property
    def early(self) -> bool:
        return self.state is DialogState.EARLY

    def _move(self, state: DialogState) -> None:
        if state is self.state:
            return
        if state not in self._allowed[self.state]:
            raise SipError(f"dialog {self.call_id}: cannot go from {self.state.value} to {state.value}")
        log.debug("dialog %s: %s -> %s", self.call_id, self.state.value, state.value)
        self.state = state

    def confirm(self) -> None:
        self._move(DialogState.CONFIRMED)

    def terminate(self) -> None:
        self._move(DialogState.TERMINATED)

    # --- requests ------------------------------------------------------------------

    def next_cseq(self) -> int:
        """CSeq for our next in-dialog request; starts random if we never sent one (12.2.1.1)."""
        if self.local_seq is None:
            self.local_seq = random.randint(1, 2**16)
        else:
            self.local_seq += 1
        return self.local_seq

    def create_request(
        self,
        method: str,
        *,
        body: str = "",
        content_type: str | None = None,
        extra_headers: list[tuple[str, str]] | None = None,
        cseq: int | None = None,
    ) -> Any:
        """An in-dialog request without Via (the core adds it when sending)."""
        if self.state is DialogState.TERMINATED and method not in ("ACK", "BYE"):
            raise SipError(f"dialog {self.call_id} is terminated: cannot send {method}")
        headers = Headers()
        uri, routes = self._routing()
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("To", self._with_tag(self.remote_uri, self.remote_tag))
        headers.add("From", self._with_tag(self.local_uri, self.local_tag))
        headers.add("Call-ID", self.call_id)
        if cseq is None:
            cseq = self.next_cseq()
        headers.add("CSeq", str(CSeq(cseq, method)))
        if method in TARGET_REFRESH_METHODS and self.local_contact:
            headers.add("Contact", self.local_contact)
        for name, value in extra_headers or []:
            headers.add(name, value)
        if body:
            headers.add("Content-Type", content_type or "application/sdp")
        headers.add("Content-Length", str(len(body.encode("utf-8"))))
        return SipRequest(method, uri, headers, body)

    def create_ack(self, invite_cseq: int, body: str = "", content_type: str | None = None) -> Any:
        """The ACK for a 2xx (13.2.2.4): same CSeq number as the INVITE, a new transaction."""
        return self.create_request("ACK", body=body, content_type=content_type, cseq=invite_cseq)

    def _routing(self) -> tuple[Any, list[str]]:
        """Request-URI and Route headers per RFC 3261 12.2.1.1."""
        if not self.route_set:
            return self.remote_target, []
        first = _name_addr(self.route_set[0])
        if "lr" in _uri_params(first.uri):
            return self.remote_target, list(self.route_set)
        # Strict router: it goes in the Request-URI, the remote target at the end.
        strict_uri = first.uri.copy() if hasattr(first.uri, "copy") else first.uri
        return strict_uri, [*self.route_set[1:], f"<{self.remote_target}>"]

    @staticmethod
    def _with_tag(value: str, tag: str) -> str:
        addr = _name_addr(value)
        if tag:
            addr.tag = tag
        return str(addr)

    # --- incoming ------------------------------------------------------------------

    def receive_request(self, request: Any) -> bool:
        """Check and record an in-dialog request's CSeq; False means answer 500 (12.2.2).

        ACK and CANCEL carry the CSeq of the INVITE and are not ordered here.
        """
        if request.method in ("ACK", "CANCEL"):
            return True
        seq = request.cseq.seq
        if self.remote_seq is not None and seq <= self.remote_seq:
            log.warning("dialog %s: %s with CSeq %d not above %d", self.call_id, request.method, seq,
                        self.remote_seq)
            return False
        self.remote_seq = seq
        if request.method in TARGET_REFRESH_METHODS:
            contacts = request.contact
            if contacts:
                self.remote_target = contacts[0].uri
        return True

    def receive_response(self, response: Any, method: str) -> None:
        """Apply an in-dialog response: target refresh on 2xx, early -> confirmed."""
        if 200 <= response.status < 300:
            if method in TARGET_REFRESH_METHODS and response.contact:
                self.remote_target = response.contact[0].uri
            if method == "INVITE" and self.state is DialogState.EARLY:
                self.confirm()

    def __repr__(self) -> str:
        return f"<Dialog {self.call_id} {self.state.value} local={self.local_tag} remote={self.remote_tag}>"


def _without_tag(value: str) -> str:
    addr = _name_addr(value)
    addr.tag = None
    return str(addr)
