"""The lab's status page: ``GET /`` (HTML) polling ``GET /lab/status`` (JSON) every second.

What an operator wants to see while phones and bots use the lab: registered
extensions (where from, until when), live calls with state and duration
(the ``lab_calls`` table, plus what the telephony reports through an optional
``live_calls()``), and the last events of the SIP edge and the telephony
(an optional ``recent_events()``).  The page has no external asset (inline
CSS and script) and builds its rows with ``textContent`` only: what phones
send (User-Agent strings) is never interpreted as HTML.
"""

from __future__ import annotations

import inspect
import json
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from softphone.lab.telephony import CallState
from softphone.lab.webhooks import Notifier
from softphone.log import get_logger

log = get_logger(__name__)

STATUS_PATH = "/lab/status"
MAX_CALLS = 200
RECENT_ENDED = 10
#: Fields of a platform notification shown in its one-line description, in this order.
_EVENT_FIELDS = ("call_id", "user_id", "campaign_id", "status", "phone_number", "call_direction", "sip_code",
                 "ring_time", "talk_time", "hold_time", "dispostion_code", "recording_url")
EventLog = deque  # of (epoch seconds, kind, text), newest last


def describe_event(payload: dict[str, Any]) -> str:
    """``call_id=3 user_id=1001 sip_code=200 talk_time=5230`` from a notification payload."""
    return " ".join(f"{name}={payload[name]}" for name in _EVENT_FIELDS if payload.get(name) is not None)


class ObservedNotifier(Notifier):
    """The lab's webhook sender, which also logs one line per platform event and keeps the last ones.

    Every call and agent event the platform reports (``user_status``, ``call``,
    ``call_end`` with real ring/talk/hold times) passes here, whether or not a
    notification URL is set: the lab's log and status page show them all.
    """

    def __init__(self, events: EventLog, timeout: float = 5.0) -> None:
        super().__init__(timeout)
        self.events = events

    def notify(self, kind: str, payload: dict[str, Any]) -> None:
        text = describe_event(payload)
        self.events.append((time.time(), kind, text))
        log.info("event %s: %s", kind, text)
        super().notify(kind, payload)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _json_safe(value: Any) -> Any:
    """Whatever the telephony returns, as JSON (unknown objects by their str)."""
    return json.loads(json.dumps(value, default=str))


class StatusBoard:
    """Collects the lab's state for the status page."""

    def __init__(self, lab: Any, endpoint: Any | None, events: EventLog | None = None) -> None:
        self.lab = lab
        self.endpoint = endpoint
        self.events: EventLog = events if events is not None else deque(maxlen=200)
        """Platform events (see :class:`ObservedNotifier`)."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page, name="status_page")
        app.router.add_get(STATUS_PATH, self.status_json, name="status_json")

    async def snapshot(self) -> dict[str, Any]:
        now = self.lab.clock()
        ended = CallState.ENDED.value

        async def read(tx: Any) -> tuple[list[tuple], list[tuple]]:
            cols = "call_id, user_id, phone_number, direction, call_state, start_time, answer_time, end_time"
            live = await tx.fetchall(f"SELECT {cols} FROM lab_calls WHERE call_state <> ? "
                                     f"ORDER BY call_id DESC LIMIT {MAX_CALLS}", (ended,))
            recent = await tx.fetchall(f"SELECT {cols} FROM lab_calls WHERE call_state = ? "
                                       f"ORDER BY call_id DESC LIMIT {RECENT_ENDED}", (ended,))
            return live, recent

        live, recent = await self.lab.db.run_transaction(read, readonly=True)

        def call_row(r: tuple, until: float) -> dict[str, Any]:
            start, answer = float(r[5]), (None if r[6] is None else float(r[6]))
            return {"call_id": int(r[0]), "user_id": int(r[1]), "phone_number": r[2], "direction": r[3],
                    "state": r[4], "started": _iso(start),
                    "duration_s": round(max(0.0, until - (answer or start)), 1),
                    "talking": answer is not None}

        out: dict[str, Any] = {
            "now": _iso(now),
            "calls": [call_row(r, now) for r in live],
            "recent_calls": [call_row(r, float(r[7]) if r[7] is not None else now) for r in recent],
            "registrations": [],
            "connections": 0,
            "events": [],
            "telephony": type(self.lab.telephony).__name__,
        }
        recorded = list(self.events)[-50:]
        if self.endpoint is not None:
            out.update(self.endpoint.status())
            recorded += list(self.endpoint.events)[-50:]
        out["events"] = [{"time": _iso(t), "kind": kind, "text": text, "ts": t} for t, kind, text in recorded]
        telephony = self.lab.telephony
        for name, key in (("live_calls", "telephony_calls"), ("recent_events", "telephony_events")):
            method = getattr(telephony, name, None)
            if callable(method):
                try:
                    result = method()
                    if inspect.isawaitable(result):
                        result = await result
                    out[key] = _json_safe(result)
                except Exception as exc:  # the page must render even if the telephony cannot say
                    log.warning("status page: telephony %s() failed: %s", name, exc)
        events = out["events"] + [e for e in out.get("telephony_events", []) if isinstance(e, dict)]
        out["events"] = sorted(events, key=lambda e: (e.get("ts") or 0, str(e.get("time", ""))))[-50:]
        out["generated_ms"] = round((self.lab.clock() - now) * 1000, 1)
        return out

    async def status_json(self, request: web.Request) -> web.Response:
        return web.json_response(await self.snapshot(), headers={"Cache-Control": "no-store"})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store"})


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>softphone lab</title>
<link rel="icon" href="data:,">
<style>
 body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
 h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.4em; }
 table { border-collapse: collapse; min-width: 40em; }
 th, td { text-align: left; padding: .25em .8em; border-bottom: 1px solid #ddd; }
 th { background: #f3f3f3; } .muted { color: #888; } #error { color: #b00; }
 .state-answered, .state-connected { color: #070; } .state-hold { color: #a60; }
</style>
</head>
<body>
<h1>softphone lab</h1>
<p class="muted">Refreshed every second. <span id="updated"></span> <span id="error"></span></p>
<h2>Registered extensions (<span id="reg-count">0</span>; <span id="conn-count">0</span> connections)</h2>
<table id="registrations"><thead><tr><th>extension</th><th>from</th><th>transport</th><th>user agent</th>
<th>expires in</th><th>provisioned until</th></tr></thead><tbody></tbody></table>
<h2>Live calls (<span id="call-count">0</span>)</h2>
<table id="calls"><thead><tr><th>call</th><th>user</th><th>number</th><th>direction</th><th>state</th>
<th>duration</th></tr></thead><tbody></tbody></table>
<h2>Recently ended</h2>
<table id="recent"><thead><tr><th>call</th><th>user</th><th>number</th><th>direction</th><th>state</th>
<th>duration</th></tr></thead><tbody></tbody></table>
<h2>Last events</h2>
<table id="events"><thead><tr><th>time</th><th>event</th><th>detail</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
function fill(id, rows, cells, cls) {
  const body = document.querySelector("#" + id + " tbody");
  const out = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    if (cls) tr.className = cls(row);
    for (const cell of cells(row)) {
      const td = document.createElement("td");
      td.textContent = cell === null || cell === undefined ? "" : String(cell);
      tr.appendChild(td);
    }
    out.appendChild(tr);
  }
  body.replaceChildren(out);
}
function seconds(s) {
  s = Math.round(s); const m = Math.floor(s / 60);
  return m ? m + " min " + (s % 60) + " s" : s + " s";
}
function callCells(c) { return [c.call_id, c.user_id, c.phone_number, c.direction, c.state, seconds(c.duration_s)]; }
async function refresh() {
  try {
    const response = await fetch("/lab/status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const s = await response.json();
    const regs = s.registrations || [];
    document.getElementById("reg-count").textContent = regs.length;
    document.getElementById("conn-count").textContent = s.connections || 0;
    fill("registrations", regs, r => [r.extension, r.peer, r.transport, r.user_agent,
                                       seconds(r.expires_in_s), r.provisioned_until]);
    document.getElementById("call-count").textContent = s.calls.length;
    fill("calls", s.calls, callCells, c => "state-" + c.state);
    fill("recent", s.recent_calls, callCells);
    fill("events", (s.events || []).slice().reverse(), e => [e.time, e.kind, e.text]);
    document.getElementById("updated").textContent = "Last update " + s.now + ".";
    document.getElementById("error").textContent = "";
    document.body.dataset.ready = "1";
  } catch (err) {
    document.getElementById("error").textContent = "status unavailable (" + err.message + ")";
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body>
</html>
"""
