"""Shared fixtures. Real peers (coturn, Kamailio, MariaDB, Chromium) live in tests/peers/."""

from __future__ import annotations

import pytest

from softphone import log

pytest_plugins = ["peers.plugin"]  # tests/peers: real coturn, Kamailio, MariaDB, Chromium fixtures


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Each test starts with no registered secrets."""
    log.forget_secrets()
    yield
    log.forget_secrets()
