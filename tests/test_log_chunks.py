"""Secrets in chunks: many agents' secrets in one process are all redacted, and a new one
recompiles only its chunk (no timing asserted: the chunk count is what is checked)."""

from __future__ import annotations

from softphone import log
from softphone.log import redact, register_secret


def test_hundreds_of_secrets_are_all_redacted_in_chunks():
    log.forget_secrets()
    try:
        values = [f"tok{i:05d}-{i * 7919 % 100003:06d}-secret" for i in range(3 * log.CHUNK_SECRETS)]
        for value in values:
            register_secret(value)
        line = " | ".join(values)
        out = redact(line)
        assert not any(value in out for value in values)
        assert out.count(log.REDACTED) == len(values)
        assert len(log._chunks) >= 3 and not log._overlapping
    finally:
        log.forget_secrets()


def test_a_secret_containing_an_earlier_one_in_another_chunk_disappears_whole():
    log.forget_secrets()
    try:
        register_secret("short-secret")
        for i in range(log.CHUNK_SECRETS + 5):  # the next secret lands in a later chunk
            register_secret(f"filler-{i:06d}-value")
        register_secret("short-secret-and-its-tail")
        assert log._overlapping
        out = redact("x short-secret-and-its-tail y short-secret z")
        assert out == "x *** y *** z", out
    finally:
        log.forget_secrets()
