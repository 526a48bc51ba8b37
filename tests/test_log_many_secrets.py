"""Many secrets in one process (a load worker's agents): every one is redacted whichever
pattern found it (the main one rebuilt in the background, or the small recent one), the
longest wins where secrets overlap, and a registration never waits for the main pattern.
No timing is asserted; the patterns' contents are what is checked."""

from __future__ import annotations

import re
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from softphone import log
from softphone.log import REDACTED, SecretRedactor, redact, register_secret


def _settled(redactor: SecretRedactor, deadline: float = 30.0) -> None:
    """Wait (with a deadline) until no background merge is running."""
    end = time.monotonic() + deadline
    while redactor._merging:
        assert time.monotonic() < end, "the background merge never finished"
        time.sleep(0.01)


def _reference(words: set[str], text: str) -> str:
    """What one pattern over every secret (the slow, simple way) makes of ``text``."""
    return re.compile(log._trie_regex(words)).sub(REDACTED, text) if words else text


def test_hundreds_of_secrets_are_all_redacted_before_and_after_the_merge():
    values = [f"tok{i:05d}-{i * 7919 % 100003:06d}-secret" for i in range(600)]
    # Distinct first characters so that many prefixes are new: more than the recent pattern holds.
    values += [f"{chr(0x4e00 + i)}pw-{i:04d}" for i in range(3 * log.RECENT_PREFIXES)]
    for value in values:
        register_secret(value)
    line = " | ".join(values)
    out = redact(line)  # whatever the background merge has done by now
    assert out.count(REDACTED) == len(values) and not any(v in out for v in values)
    log._redactor.merge_now()
    _settled(log._redactor)
    assert not log._redactor._recent_prefixes and log._redactor._scan[0] is not None
    out = redact(line)
    assert out.count(REDACTED) == len(values) and not any(v in out for v in values)


def test_a_full_recent_pattern_is_merged_in_the_background():
    redactor = SecretRedactor()
    words = [f"{chr(0x4e00 + i)}secret-{i}" for i in range(log.RECENT_PREFIXES)]
    for word in words:
        redactor.add(word)
    end = time.monotonic() + 30
    while len(redactor._main_prefixes) < len(words):  # no redaction needed to start it
        assert time.monotonic() < end, "no background merge after the recent pattern filled up"
        time.sleep(0.01)
    assert redactor.redact(" ".join(words)) == " ".join([REDACTED] * len(words))


def test_a_secret_added_after_the_merge_is_redacted_at_once():
    register_secret("first-secret-value")
    assert redact("a first-secret-value b") == "a *** b"
    log._redactor.merge_now()
    register_secret("zz-new-prefix-secret")  # a prefix the main pattern lacks
    register_secret("first-secret-other")  # a prefix it has: no pattern changes
    assert "zz-n" in log._redactor._recent_prefixes and "firs" not in log._redactor._recent_prefixes
    assert redact("zz-new-prefix-secret first-secret-other first-secret-value") == "*** *** ***"


def test_the_longest_secret_wins_whichever_pattern_holds_each():
    for early, late in (("short-secret", "short-secret-and-its-tail"),  # same prefix
                        ("short-secret-and-its-tail", "short-secret"),
                        ("inner-secret", "outer-inner-secret-end"),  # contains it, other prefix
                        ("outer-inner-secret-end", "inner-secret")):
        log.forget_secrets()
        register_secret(early)
        log._redactor.merge_now()
        register_secret(late)
        line = f"x {early} y {late} z"
        assert redact(line) == "x *** y *** z", (early, late, redact(line))


def test_secrets_with_regex_metacharacters():
    values = [r"a.b*c?d+", r"(x|y)[z]{2}", r"^$\\back\slash", "50%&off=#frag"]
    for value in values:
        register_secret(value)
    for value in values:
        assert redact(f"<{value}>") == "<***>"
    assert redact("aXb*c?d+ (x|y)[z]{2 ") == "aXb*c?d+ (x|y)[z]{2 "


def test_forget_throws_away_a_merge_started_before_it():
    redactor = SecretRedactor()
    for i in range(log.RECENT_PREFIXES):  # starts a background merge
        redactor.add(f"{chr(0x4e00 + i)}old-{i}")
    redactor.clear()
    redactor.add("fresh-secret")
    _settled(redactor)
    assert redactor._main_prefixes <= {"fres"}
    assert redactor.redact(f"{chr(0x4e00)}old-0 fresh-secret") == f"{chr(0x4e00)}old-0 ***"


def test_threads_registering_and_redacting_at_once_lose_nothing():
    redactor = SecretRedactor()
    per_thread = 150
    errors: list[str] = []

    def work(t: int) -> None:
        for i in range(per_thread):
            word = f"{chr(0x4e00 + t * per_thread + i)}-t{t}-{i}-secret"
            redactor.add(word)
            if redactor.redact(f"<{word}>") != "<***>":
                errors.append(word)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _settled(redactor)
    assert not errors
    words = sorted(redactor._words)
    assert len(words) == 4 * per_thread
    assert redactor.redact(" ".join(words)) == " ".join([REDACTED] * len(words))


@settings(max_examples=200, deadline=None)
@given(secrets=st.lists(st.text(alphabet="ab+/= %x", min_size=4, max_size=9), min_size=1, max_size=8),
       merged=st.integers(min_value=0, max_value=8),
       parts=st.lists(st.text(alphabet="ab+/= %xy", max_size=12), max_size=8))
def test_same_result_as_one_pattern_over_every_secret(secrets, merged, parts):
    """Leftmost, then longest, exactly as one trie regex of all secrets would replace them,
    with any split of the secrets between the main pattern and the recent one."""
    log.forget_secrets()
    try:
        for i, s in enumerate(secrets):
            if i == merged:
                log._redactor.merge_now()
            register_secret(s)
        pads = parts + [""] * max(0, len(secrets) - len(parts))
        text = "".join(p + s for p, s in zip(pads, secrets, strict=False)) + "".join(pads[len(secrets):])
        assert redact(text) == _reference(set(log._redactor._words), text)
    finally:
        log.forget_secrets()


def test_too_short_a_word_is_refused():
    try:
        SecretRedactor().add("abc")
    except ValueError as exc:
        assert "4 characters" in str(exc)
    else:
        raise AssertionError("a 3-character word was accepted")


def test_a_quiet_spell_merges_the_recent_pattern_into_the_main_one(monkeypatch):
    monkeypatch.setattr(log, "MERGE_AFTER_SECONDS", 0.0)
    redactor = SecretRedactor()
    redactor.add("lonely-secret")
    assert redactor.redact("a lonely-secret") == "a ***"  # the recent pattern found it; a merge starts
    end = time.monotonic() + 30
    while redactor._recent_prefixes or redactor._merging:
        assert time.monotonic() < end, "no merge after a quiet spell"
        time.sleep(0.01)
    assert redactor.redact("b lonely-secret") == "b ***"
    assert redactor._scan[1] is None and redactor._main_prefixes == {"lone"}
