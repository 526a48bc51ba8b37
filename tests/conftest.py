"""Shared fixtures. Real peers (coturn, Kamailio, MariaDB, Chromium) live in tests/peers/."""

from __future__ import annotations

import sys

import pytest

from softphone import log

pytest_plugins = ["peers.plugin"]  # tests/peers: real coturn, Kamailio, MariaDB, Chromium fixtures


@pytest.fixture(autouse=True)
def _forget_secrets():
    """Each test starts with no registered secrets."""
    log.forget_secrets()
    yield
    log.forget_secrets()


@pytest.fixture(autouse=True)
def _no_leaked_fast_clock():
    """aiortc's clock is process-wide: the media fast path swaps it only while fast calls are open.
    A test that ends with it swapped (a call left open, a patch not undone) fails here, and the
    stock clock is put back so the next test does not run on it."""
    seam = sys.modules.get("softphone.media.aiortc_seam")  # not imported: nothing could swap it
    before = seam is not None and seam.fast_clock_installed()
    yield
    seam = sys.modules.get("softphone.media.aiortc_seam")
    if seam is not None and not before and seam.fast_clock_installed():
        seam.uninstall_fast_clock(force=True)
        pytest.fail("the test left aiortc's fast clock installed (a fast-path call still open?); restored")


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
