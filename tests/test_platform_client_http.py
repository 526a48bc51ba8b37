"""The REST client never sends the system key in clear text to another machine without saying so."""

from __future__ import annotations

import logging
import warnings

import pytest

from softphone.platform.client import PlatformClient

KEY = "sys-key-0123"


@pytest.mark.parametrize("url", ["http://10.1.2.3", "http://pbx.example.com:8080/api", "http://[2001:db8::1]"])
def test_plain_http_to_another_host_warns(url, caplog):
    caplog.set_level(logging.WARNING, logger="softphone")
    with pytest.warns(UserWarning, match="clear text"):
        PlatformClient(url, KEY)
    assert "clear text" in caplog.text and KEY not in caplog.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost", "http://[::1]:9",
                                 "https://pbx.example.com"])
def test_loopback_or_https_is_quiet(url, caplog):
    caplog.set_level(logging.WARNING, logger="softphone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PlatformClient(url, KEY)
    assert "clear text" not in caplog.text


def test_allow_http_silences_the_warning(caplog):
    caplog.set_level(logging.WARNING, logger="softphone")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PlatformClient("http://10.1.2.3", KEY, allow_http=True)
    assert "clear text" not in caplog.text
