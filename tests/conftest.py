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


@pytest.fixture
def fast_path(request):
    """``MediaConfig.fast_path`` for ``media_support.relay_config``: "on"/"off" when parametrized
    indirectly (``media_support.FAST_PATH_ON_AND_OFF``), else "auto"; restored after the test."""
    import media_support

    previous = media_support.fast_path_mode
    media_support.fast_path_mode = getattr(request, "param", "auto")
    try:
        yield media_support.fast_path_mode
    finally:
        media_support.fast_path_mode = previous
