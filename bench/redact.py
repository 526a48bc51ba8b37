"""Log redaction with many secrets: cost per log line and worst cost of one new secret.

A load worker registers hundreds of agents' secrets (password, tokens, each with its
URL-encoded and base64 forms) while its event loop runs and logs.  For N registered values
this compares, in one run, three ways of redacting them:

- ``one regex``: one trie-shaped pattern over every secret, recompiled after new ones
  (softphone before chunks: cheap lines, a stall per new secret that grows with N);
- ``chunks``: one pattern per 128 secrets (the previous softphone: cheap adds, one scan
  per chunk on every line);
- ``prefixes``: :class:`softphone.log.SecretRedactor` (patterns over the secrets' first
  characters, a small recent one and a main one rebuilt on a background thread).

An *add* is one ``register_secret`` (2-4 literal forms) followed by one redacted line, as in
a worker where the next log line pays for a lazy recompile; its wall time is measured on the
calling thread, so time spent waiting for the GIL while the background thread compiles is
in it.  ``ramp CPU`` is the process's CPU for all N adds (background compiles included).
Lines without a secret (four log lines of SIP, ICE and agent state) are redacted after the
ramp (``line us (ramp)``: as the last add left things) and once settled (the prefixes' main
pattern covers all, as it does about a second after the last new secret); ``secret line``
is one line holding a registered secret, settled.  No asserts: this measures.

    python bench/redact.py
    python bench/redact.py --n 600,2000 --repeat 3
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import re
import string
import sys
import threading
import time
import timeit
from pathlib import Path
from urllib.parse import quote, quote_plus

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from softphone import log  # noqa: E402

REDACTED = log.REDACTED

LINES = [
    "12:00:01.123 DEBUG   softphone.sip.transport: sent REGISTER sip:lab.example SIP/2.0 "
    "Via: SIP/2.0/WSS 127.0.0.1:5060;branch=z9hG4bK776asdhds Call-ID: a84b4c76e66710 CSeq: 314159 REGISTER",
    "12:00:01.124 DEBUG   softphone.sip.ua: recv SIP/2.0 401 Unauthorized WWW-Authenticate: Digest "
    'realm="lab", nonce="5f3a9c0e1b7d4e2fa8c6b3d9e0f1a2b3", algorithm=MD5, qop="auth" '
    "To: <sip:1001@lab>;tag=8f2c1d0e9b7a6f5e",
    "12:00:02.001 INFO    softphone.agent: agent 1001 state LOGGED_IN campaign 17 extension 1001",
    "12:00:02.350 DEBUG   softphone.media.peer: ice state checking -> connected (relay 127.0.0.1:49152)",
]


def secret_values(n: int, seed: int = 1) -> list[str]:
    """N values shaped like an agent's: hex tokens, passwords with URL-special characters, JWT-like tokens."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append("".join(rnd.choice("0123456789abcdef") for _ in range(32)))
        elif kind == 1:
            out.append("Pw!" + "".join(rnd.choice(string.ascii_letters + string.digits + "+/=&") for _ in range(12)))
        else:
            out.append("eyJ" + "".join(rnd.choice(string.ascii_letters + string.digits + "-_") for _ in range(40)))
    return out


def forms(value: str) -> set[str]:
    """What ``register_secret`` registers for one value."""
    out = {value, quote(value, safe=""), quote_plus(value), base64.b64encode(value.encode()).decode()}
    return {f for f in out if len(f) >= log.MIN_SECRET_LENGTH}


class OneRegex:
    """Softphone before chunks: one trie over every secret, rebuilt at the next line after an add."""

    def __init__(self) -> None:
        self.words: set[str] = set()
        self.pattern: re.Pattern[str] | None = None
        self.dirty = False

    def add(self, word: str) -> None:
        if word not in self.words:
            self.words.add(word)
            self.dirty = True

    def redact(self, text: str) -> str:
        if self.dirty:
            self.pattern = re.compile(log._trie_regex(self.words))
            self.dirty = False
        return self.pattern.sub(REDACTED, text) if self.pattern is not None else text


class Chunks:
    """The previous softphone: 128 secrets per pattern, only the changed chunk rebuilt (one
    pattern over all once a secret contains another, which these values never do)."""

    CHUNK = 128

    def __init__(self) -> None:
        self.words: set[str] = set()
        self.chunks: list[set[str]] = []
        self.patterns: list[re.Pattern[str] | None] = []
        self.dirty: set[int] = set()
        self.lock = threading.Lock()

    def add(self, word: str) -> None:
        with self.lock:
            if word in self.words:
                return
            self.words.add(word)
            if not self.chunks or len(self.chunks[-1]) >= self.CHUNK:
                self.chunks.append(set())
                self.patterns.append(None)
            self.chunks[-1].add(word)
            self.dirty.add(len(self.chunks) - 1)

    def redact(self, text: str) -> str:
        if self.dirty:
            with self.lock:
                for i in sorted(self.dirty):
                    self.patterns[i] = re.compile(log._trie_regex(self.chunks[i]))
                self.dirty.clear()
        for pattern in self.patterns:
            if pattern is not None:
                text = pattern.sub(REDACTED, text)
        return text


IMPLEMENTATIONS = {"one regex": OneRegex, "chunks": Chunks, "prefixes": log.SecretRedactor}


def line_cost_us(redactor, lines: list[str], repeat: int) -> float:
    """Best mean microseconds per line over ``repeat`` passes."""
    number = max(1, 4000 // len(lines))

    def once() -> None:
        for line in lines:
            redactor.redact(line)

    return min(timeit.repeat(once, number=number, repeat=repeat)) / (number * len(lines)) * 1e6


def settle(redactor) -> None:
    """Let the prefixes' redactor reach its steady state the way a worker's does: a line
    redacted a second after the last new secret starts the merge; wait for it."""
    if not isinstance(redactor, log.SecretRedactor):
        return
    deadline = time.monotonic() + 60
    while redactor._recent_prefixes or redactor._merging:
        if time.monotonic() > deadline:
            raise SystemExit("the background merge did not finish in 60 s")
        time.sleep(0.05 if redactor._merging else log.MERGE_AFTER_SECONDS)
        redactor.redact(LINES[0])
    redactor.redact(LINES[0])


def run(name: str, values: list[str], repeat: int, sample: int = 0) -> dict:
    """One implementation, N values; with ``sample``, only the last ``sample`` adds are timed
    (the rest registered at once: one regex would take minutes to ramp to 2000 one by one)."""
    redactor = IMPLEMENTATIONS[name]()
    secret_line = f"{LINES[2]} token={values[len(values) // 2]}"
    adds: list[float] = []
    timed = values
    if sample and len(values) > sample:
        for value in values[:-sample]:
            for word in forms(value):
                redactor.add(word)
        redactor.redact(LINES[0])
        timed = values[-sample:]
    cpu0 = time.process_time()
    for value in timed:
        t0 = time.perf_counter()
        for word in forms(value):
            redactor.add(word)
        redactor.redact(LINES[0])
        adds.append(time.perf_counter() - t0)
    ramp_cpu = time.process_time() - cpu0
    ramp_line = line_cost_us(redactor, LINES, repeat)
    settle(redactor)
    line = line_cost_us(redactor, LINES, repeat)
    secret = line_cost_us(redactor, [secret_line], repeat)
    out = redactor.redact(secret_line)
    assert values[len(values) // 2] not in out and REDACTED in out  # the bench measures working code
    adds.sort()
    return {
        "impl": name, "n": len(values), "words": len(redactor.words if hasattr(redactor, "words") else redactor._words),
        "worst_add_ms": adds[-1] * 1e3, "p99_add_ms": adds[int(0.99 * (len(adds) - 1))] * 1e3,
        "ramp_cpu_ms": None if timed is not values else ramp_cpu * 1e3, "sampled_adds": len(timed),
        "line_ramp_us": ramp_line, "line_us": line, "secret_line_us": secret,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="1,128,600,2000", help="registered values per run (comma-separated)")
    ap.add_argument("--repeat", type=int, default=5, help="timing passes per line figure (best is kept)")
    ap.add_argument("--one-regex-max", type=int, default=600,
                    help="above this N, only one regex's last 20 adds are timed (its ramp is quadratic)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    rows = []
    for n in [int(x) for x in args.n.split(",") if x]:
        values = secret_values(n)
        for name in IMPLEMENTATIONS:
            sample = 20 if name == "one regex" and n > args.one_regex_max else 0
            rows.append(run(name, values, args.repeat, sample))
    load_after = os.getloadavg()[0]

    print(f"log redaction, load average {load_before:.2f} -> {load_after:.2f}, "
          f"python {sys.version.split()[0]}")
    print(f"{'N':>5} {'forms':>6} {'impl':<10} {'worst add ms':>12} {'p99 add ms':>10} {'ramp CPU ms':>11} "
          f"{'line us (ramp)':>14} {'line us':>8} {'secret line us':>14}")
    for r in rows:
        ramp = "-" if r["ramp_cpu_ms"] is None else f"{r['ramp_cpu_ms']:.0f}"
        note = "" if r["sampled_adds"] == r["n"] else f"  (last {r['sampled_adds']} adds timed)"
        print(f"{r['n']:>5} {r['words']:>6} {r['impl']:<10} {r['worst_add_ms']:>12.2f} {r['p99_add_ms']:>10.2f} "
              f"{ramp:>11} {r['line_ramp_us']:>14.2f} {r['line_us']:>8.2f} {r['secret_line_us']:>14.2f}{note}")
    print("\nratios, previous / prefixes (above 1: prefixes is cheaper)")
    print(f"{'N':>5} {'vs':<10} {'worst add':>10} {'ramp CPU':>9} {'line':>7} {'secret line':>12}")
    by = {(r["n"], r["impl"]): r for r in rows}
    ratios = []
    for n in sorted({r["n"] for r in rows}):
        new = by[(n, "prefixes")]
        for old in ("chunks", "one regex"):
            r = by[(n, old)]
            ramp_cpu = None if r["ramp_cpu_ms"] is None else r["ramp_cpu_ms"] / max(new["ramp_cpu_ms"], 1e-9)
            ratio = {"n": n, "vs": old, "worst_add": r["worst_add_ms"] / new["worst_add_ms"],
                     "ramp_cpu": ramp_cpu, "line": r["line_us"] / new["line_us"],
                     "secret_line": r["secret_line_us"] / new["secret_line_us"]}
            ratios.append(ratio)
            ramp = "-" if ramp_cpu is None else f"{ramp_cpu:.1f}"
            print(f"{n:>5} {old:<10} {ratio['worst_add']:>10.1f} {ramp:>9} {ratio['line']:>7.2f} "
                  f"{ratio['secret_line']:>12.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "redact.json"
    path.write_text(json.dumps({"load_average": [load_before, load_after], "rows": rows, "ratios": ratios},
                               indent=2))
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
