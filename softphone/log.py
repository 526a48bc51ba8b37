"""Logging for softphone: one logger per module, secrets never printed.

Every secret the process learns (``auth_key``, ``password``, user tokens,
digest responses, nonces' answers) is registered with :func:`register_secret`.
:class:`RedactingFilter`, attached to the handlers that :func:`setup_logging`
installs (and to the root logger), replaces every registered value in every
record, whatever logger or level produced it.  Code should still avoid
logging secrets in the first place; the filter is the safety net.
"""

from __future__ import annotations

import html
import logging
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDACTED = "***"

# Secrets shorter than this are not redacted textually: replacing "1" or "ab"
# everywhere would garble logs and protect nothing.
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
_dirty = False

#: Secrets per compiled pattern while no secret contains another: a new secret recompiles
#: only its chunk.  One pattern over every secret cost 46 ms per recompile at 300 secrets
#: and 130 ms at 600 (a load worker's agents register a few each while it ramps up: the
#: event loop stalled that long on the first log line or redaction after each).
CHUNK_SECRETS = 128
_chunks: list[set[str]] = []
_chunk_patterns: list[re.Pattern[str] | None] = []
_dirty_chunks: set[int] = set()
_overlapping = False
"""Some secret contains another: one pattern over all of them (longest first), as chunks
applied one after the other could leave the tail of the longer one."""


def _trie_regex(words: set[str]) -> str:
    """A regex matching any of ``words``, longest first, shaped as a trie.

    A flat alternation of thousands of secrets costs time per secret at every
    position of every log line; a trie rejects most positions at one character.
    """
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = True

    def emit(node: dict) -> str:
        end = "" in node
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if end else body

    return emit(trie)


def _current_pattern() -> re.Pattern[str] | None:
    """The alternation of all secrets, rebuilt only after new ones arrived (one pattern)."""
    global _pattern, _dirty
    if _dirty:
        with _lock:
            if _dirty:
                _pattern = re.compile(_trie_regex(_secrets)) if _secrets else None
                _dirty = False
    return _pattern


def _current_patterns() -> list[re.Pattern[str]]:
    """What :func:`redact` applies: one pattern per chunk of secrets, or one over all of them
    once a secret contains another; chunks are recompiled only after new secrets arrived."""
    if _overlapping:
        pattern = _current_pattern()
        return [pattern] if pattern is not None else []
    if _dirty_chunks:
        with _lock:
            for i in sorted(_dirty_chunks):
                _chunk_patterns[i] = re.compile(_trie_regex(_chunks[i])) if _chunks[i] else None
            _dirty_chunks.clear()
    return [p for p in _chunk_patterns if p is not None]


def _add_secret(value: str) -> None:
    """Under ``_lock``: one new secret into the open chunk (or the single pattern)."""
    global _dirty, _overlapping
    if value in _secrets:
        return
    if not _overlapping and any(value in s or s in value for s in _secrets):
        _overlapping = True
    _secrets.add(value)
    _dirty = True
    if not _chunks or len(_chunks[-1]) >= CHUNK_SECRETS:
        _chunks.append(set())
        _chunk_patterns.append(None)
    _chunks[-1].add(value)
    _dirty_chunks.add(len(_chunks) - 1)


def register_secret(value: str | None) -> None:
    """Make ``value`` (and its common encodings) disappear from all logs."""
    if not value:
        return
    value = str(value)
    if len(value) < MIN_SECRET_LENGTH:
        return
    import base64
    from urllib.parse import quote, quote_plus

    variants = {value, quote(value, safe=""), quote_plus(value)}
    try:
        variants.add(base64.b64encode(value.encode()).decode())
    except Exception:  # pragma: no cover - str always encodes
        pass
    with _lock:  # compiled lazily: hundreds of agents register secrets at start
        for variant in variants:
            if len(variant) >= MIN_SECRET_LENGTH:
                _add_secret(variant)


def forget_secrets() -> None:
    """Drop every registered secret (tests use this between cases)."""
    global _pattern, _dirty, _overlapping
    with _lock:
        _secrets.clear()
        _pattern = None
        _dirty = False
        _chunks.clear()
        _chunk_patterns.clear()
        _dirty_chunks.clear()
        _overlapping = False


def redact(text: Any) -> str:
    """Return ``str(text)`` with every registered secret replaced by ``***``."""
    s = text if isinstance(text, str) else str(text)
    for pattern in _current_patterns():
        s = pattern.sub(REDACTED, s)
    return s


class Secret:
    """A string that will not show itself in ``repr``/``str``/f-strings.

    Use :meth:`reveal` at the single place the raw value is needed (an HTTP
    header, a digest computation).  Creating one registers it for redaction.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str):
        if isinstance(value, Secret):
            value = value.reveal()
        self._value = str(value)
        register_secret(self._value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return self._value == other._value
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __reduce__(self):  # pickling keeps the value; it is not a log path
        return (Secret, (self._value,))


def reveal(value: Secret | str | None) -> str | None:
    """The raw string behind ``value`` whether or not it is a :class:`Secret`."""
    if value is None:
        return None
    return value.reveal() if isinstance(value, Secret) else str(value)


class RedactingFilter(logging.Filter):
    """Rewrites a record's message and exception text with secrets removed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw parts
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
_DATEFMT = "%H:%M:%S"


class HtmlLogHandler(logging.Handler):
    """Writes records as rows of a self-contained HTML page.

    The browser Webphone prints its debug trace on the page when
    ``debug_html=true``; a headless agent has no page, so it writes one to
    a file that can be opened in any browser, flushed after every record.
    """

    _HEAD = (
        "<!doctype html><html><head><meta charset='utf-8'><title>softphone debug log</title>"
        "<style>body{font:13px monospace;margin:1em}table{border-collapse:collapse}"
        "td{padding:1px 6px;vertical-align:top;white-space:pre-wrap}"
        "tr.DEBUG{color:#666}tr.WARNING{background:#fff4cc}tr.ERROR,tr.CRITICAL{background:#fdd}"
        "#state{position:sticky;top:0;background:#eef;border:1px solid #99c;padding:4px 8px;margin:0 0 1em}"
        "</style><script>function st(o){var e=document.getElementById('state');"
        "if(e){e.textContent='session: '+JSON.stringify(o);}}</script>"
        "</head><body><h1>softphone debug log</h1><pre id='state'>session: (no state yet)</pre>"
        "<table><tr><th>time</th><th>level</th><th>logger</th><th>message</th></tr>\n"
    )

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("w", encoding="utf-8")
        self._file.write(self._HEAD)
        self._file.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.exc_text:
                msg += "\n" + record.exc_text
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
            row = (
                f"<tr class='{record.levelname}'><td>{when}.{int(record.msecs):03d}</td>"
                f"<td>{record.levelname}</td><td>{html.escape(record.name)}</td>"
                f"<td>{html.escape(redact(msg))}</td></tr>\n"
            )
            with self.lock:
                self._file.write(row)
                self._file.flush()
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)

    def write_state(self, state: Mapping[str, Any]) -> None:
        """Show the session's live state in the page's header box (latest wins as the page loads)."""
        import json

        text = redact(json.dumps(state, default=str, sort_keys=True)).replace("</", "<\\/")
        with self.lock:
            if not self._file.closed:
                self._file.write(f"<script>st({text})</script>\n")
                self._file.flush()

    def close(self) -> None:
        with self.lock:
            if not self._file.closed:
                self._file.write("</table></body></html>\n")
                self._file.close()
        super().close()


DEFAULT_HTML_LOG = "softphone-debug.html"


def setup_logging(
    debug_console: bool = False,
    debug_html: bool = False,
    html_path: str | Path | None = None,
    level: int | None = None,
    stream=None,
) -> list[logging.Handler]:
    """Configure the ``softphone`` logger tree; return the handlers installed.

    * ``debug_console``: DEBUG trace on stderr (otherwise WARNING and up).
    * ``debug_html``: DEBUG trace also written to ``html_path`` (default
      ``./softphone-debug.html``, or ``$SOFTPHONE_DEBUG_HTML``).

    Calling it again replaces the handlers it installed before.
    """
    import os

    root = logging.getLogger("softphone")
    for h in list(root.handlers):
        if getattr(h, "_softphone", False):
            root.removeHandler(h)
            h.close()
    redactor = RedactingFilter()
    installed: list[logging.Handler] = []

    console = logging.StreamHandler(stream or sys.stderr)
    console.setLevel(level if level is not None else (logging.DEBUG if debug_console else logging.WARNING))
    console.setFormatter(logging.Formatter(_FORMAT, _DATEFMT))
    installed.append(console)

    if debug_html:
        path = html_path or os.environ.get("SOFTPHONE_DEBUG_HTML") or DEFAULT_HTML_LOG
        hh = HtmlLogHandler(path)
        hh.setLevel(logging.DEBUG)
        installed.append(hh)

    for h in installed:
        h.addFilter(redactor)
        h._softphone = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(logging.DEBUG if (debug_console or debug_html) else (level or logging.INFO))
    # Records that propagate to handlers other code installed (pytest's
    # caplog, an application's root handler) are redacted too.
    if not any(isinstance(f, RedactingFilter) for f in root.filters):
        root.addFilter(RedactingFilter())
    return installed


def publish_state(state: Mapping[str, Any]) -> None:
    """Hand a session's live state (no secrets; redacted anyway) to the HTML debug pages."""
    for handler in logging.getLogger("softphone").handlers:
        if isinstance(handler, HtmlLogHandler):
            handler.write_state(state)


def get_logger(name: str) -> logging.Logger:
    """The logger for a module; always under ``softphone`` and redacted."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter())
    return logger
