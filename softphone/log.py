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
import os
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

#: Characters of each secret the scanning patterns look for.  Every secret is at least this
#: long, so one dict lookup names the secrets that can start where a prefix was found.
PREFIX_LENGTH = MIN_SECRET_LENGTH

#: New prefixes the small pattern covers before the main pattern is rebuilt in the background.
RECENT_PREFIXES = 64

#: A prefix waits at most this long (seconds, checked when a line is redacted) in the small
#: pattern: the ramp of a load test ends with one pattern over everything.
MERGE_AFTER_SECONDS = 1.0


def _trie_regex(words: set[str] | frozenset[str]) -> str:
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


def _compile_prefixes(prefixes: set[str] | frozenset[str]) -> re.Pattern[str] | None:
    return re.compile(_trie_regex(prefixes)) if prefixes else None


class SecretRedactor:
    """Replaces registered secrets in text; cheap to add to, cheap per line with thousands.

    Why this shape: a load worker registers hundreds of agents' secrets while its event loop
    runs.  One regex over every secret costs about 3 us per line but 65-330 ms to recompile
    (600-2000 secrets), once per new secret; chunks of 128 made each recompile small but cost a
    scan per chunk on every line (22 us at 600, 106 us at 2000).  Here the patterns only find
    where a secret *may* start: a trie of the secrets' first :data:`PREFIX_LENGTH` characters
    (few and short: 10-20 times cheaper to compile than the secrets themselves, and a scan of
    a line costs what the full trie's does; ``bench/redact.py``).  A dict from prefix to secrets (longest first) then decides, so a line gets
    the leftmost, longest secret at each position whichever pattern found it: a secret that
    contains another disappears whole.  A new prefix lands in a small "recent" pattern
    (recompiled at the next line, bounded by :data:`RECENT_PREFIXES`); the main pattern over
    every prefix is rebuilt on a background thread and swapped in, so no line and no
    registration pays for compiling all of them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._words: set[str] = set()
        self._buckets: dict[str, tuple[str, ...]] = {}
        self._main_prefixes: frozenset[str] = frozenset()
        self._recent_prefixes: set[str] = set()
        self._recent_since = 0.0
        self._recent_dirty = False
        #: (main pattern, recent pattern), replaced whole so a reader never pairs a new main
        #: with a recent pattern that already dropped what only the new main covers.
        self._scan: tuple[re.Pattern[str] | None, re.Pattern[str] | None] = (None, None)
        self._merging = False
        self._generation = 0  # bumped by clear(): a merge started before it is thrown away

    def __bool__(self) -> bool:
        return bool(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def add(self, word: str) -> None:
        """Register one literal string (at least :data:`PREFIX_LENGTH` characters)."""
        if len(word) < PREFIX_LENGTH:
            raise ValueError(f"a secret for textual redaction has at least {PREFIX_LENGTH} characters")
        with self._lock:
            if word in self._words:
                return
            key = word[:PREFIX_LENGTH]
            bucket = self._buckets.get(key, ())
            self._buckets[key] = tuple(sorted((*bucket, word), key=len, reverse=True))
            self._words.add(word)
            if key in self._main_prefixes or key in self._recent_prefixes:
                return
            if not self._recent_prefixes:
                self._recent_since = time.monotonic()
            self._recent_prefixes.add(key)
            self._recent_dirty = True
            if len(self._recent_prefixes) >= RECENT_PREFIXES:
                self._start_merge_locked()

    def clear(self) -> None:
        """Forget every secret; a merge still running is thrown away when it ends."""
        with self._lock:
            self._generation += 1
            self._words.clear()
            self._buckets = {}
            self._main_prefixes = frozenset()
            self._recent_prefixes.clear()
            self._recent_dirty = False
            self._scan = (None, None)

    def merge_now(self) -> None:
        """Rebuild the main pattern over every prefix on this thread (tests, benchmarks)."""
        with self._lock:
            snapshot = frozenset(self._main_prefixes | self._recent_prefixes)
            generation = self._generation
        pattern = _compile_prefixes(snapshot)
        with self._lock:
            self._install_locked(generation, snapshot, pattern)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced by :data:`REDACTED`."""
        if not self._words:
            return text
        if self._recent_dirty:
            self._refresh_recent()
        if self._recent_prefixes and not self._merging and (
                time.monotonic() - self._recent_since >= MERGE_AFTER_SECONDS):
            with self._lock:
                self._start_merge_locked()
        main, recent = self._scan
        # Most lines hold no secret: one or two scans in C and back.
        found = main.search(text) if main is not None else None
        if recent is not None:
            other = recent.search(text)
            if other is not None and (found is None or other.start() < found.start()):
                found = other
        if found is None:
            return text
        return self._replace(text, main, recent, found.start())

    def _replace(self, text: str, main: re.Pattern[str] | None, recent: re.Pattern[str] | None,
                 start: int) -> str:
        """Leftmost, then longest, from ``start`` (where a pattern found a prefix) on."""
        buckets = self._buckets
        parts: list[str] = []
        done = 0
        at = start
        while True:
            bucket = buckets.get(text[at:at + PREFIX_LENGTH], ())
            for word in bucket:
                if text.startswith(word, at):
                    parts.append(text[done:at])
                    parts.append(REDACTED)
                    done = at = at + len(word)
                    break
            else:
                at += 1  # a prefix without its secret; candidates may overlap, so step by one
            nxt = [m.start() for m in ((main.search(text, at) if main else None),
                                       (recent.search(text, at) if recent else None)) if m is not None]
            if not nxt:
                break
            at = min(nxt)
        if not parts:
            return text
        parts.append(text[done:])
        return "".join(parts)

    def _refresh_recent(self) -> None:
        with self._lock:
            if self._recent_dirty:
                self._scan = (self._scan[0], _compile_prefixes(self._recent_prefixes))
                self._recent_dirty = False

    def _start_merge_locked(self) -> None:
        if self._merging or not self._recent_prefixes:
            return
        self._merging = True
        snapshot = frozenset(self._main_prefixes | self._recent_prefixes)
        generation = self._generation

        def merge() -> None:
            pattern = None
            try:
                pattern = _compile_prefixes(snapshot)
            finally:
                with self._lock:
                    self._merging = False
                    if pattern is not None:
                        self._install_locked(generation, snapshot, pattern)

        try:
            threading.Thread(target=merge, name="softphone-secret-patterns", daemon=True).start()
        except RuntimeError:  # no new threads (interpreter shutting down): the recent pattern still covers
            self._merging = False

    def _install_locked(self, generation: int, snapshot: frozenset[str], pattern: re.Pattern[str] | None) -> None:
        # Prefixes only grow within a generation: a smaller snapshot is an older merge.
        if generation != self._generation or len(snapshot) < len(self._main_prefixes):
            return
        self._main_prefixes = snapshot
        self._recent_prefixes -= snapshot
        # The recent pattern still covers what moved (harmless) until the next line rebuilds it.
        self._scan = (pattern, self._scan[1])
        self._recent_dirty = True
        if len(self._recent_prefixes) >= RECENT_PREFIXES:
            self._start_merge_locked()
        elif self._recent_prefixes:
            self._recent_since = time.monotonic()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._merging = False  # the thread that was merging exists only in the parent


_redactor = SecretRedactor()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_redactor._after_fork)


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
    for variant in variants:
        if len(variant) >= MIN_SECRET_LENGTH:
            _redactor.add(variant)


def forget_secrets() -> None:
    """Drop every registered secret (tests use this between cases)."""
    _redactor.clear()


def redact(text: Any) -> str:
    """Return ``str(text)`` with every registered secret replaced by ``***``."""
    return _redactor.redact(text if isinstance(text, str) else str(text))


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
        if not _redactor:
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
