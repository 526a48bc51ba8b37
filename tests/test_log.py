"""Secrets never reach log output, whatever logger, level or handler."""

from __future__ import annotations

import importlib
import io
import logging
import pkgutil

import softphone
from softphone import log
from softphone.log import HtmlLogHandler, Secret, redact, register_secret, setup_logging

AUTH_KEY = "sys-key-9f8e7d6c"
PASSWORD = "pa55w0rd-agent"
TOKEN = "tok-0123456789abcdef"
DIGEST = "6629fae49393a05397450978507c4ef1"


def _all_softphone_loggers() -> list[logging.Logger]:
    """Import every module so each module logger exists, then list them."""
    for mod in pkgutil.walk_packages(softphone.__path__, "softphone."):
        try:
            importlib.import_module(mod.name)
        except Exception:  # a module with a missing optional peer still has a name
            logging.getLogger(mod.name)
    names = [n for n, lg in logging.root.manager.loggerDict.items()
             if n.startswith("softphone.") and isinstance(lg, logging.Logger)]
    return [logging.getLogger(n) for n in sorted(names)]


def test_every_module_logger_comes_from_get_logger():
    """Records propagate past parent filters, so each module logger needs its own."""
    for lg in _all_softphone_loggers():
        assert any(isinstance(f, log.RedactingFilter) for f in lg.filters), (
            f"{lg.name} uses logging.getLogger; use softphone.log.get_logger")


def test_every_logger_redacts_every_secret(tmp_path):
    for s in (AUTH_KEY, PASSWORD, TOKEN, DIGEST):
        register_secret(s)
    stream = io.StringIO()
    html_path = tmp_path / "debug.html"
    handlers = setup_logging(debug_console=True, debug_html=True, html_path=html_path, stream=stream)
    try:
        loggers = _all_softphone_loggers()
        assert loggers
        for lg in loggers:
            lg.debug("key=%s password=%s", AUTH_KEY, PASSWORD)
            lg.info(f"tokenKey: {TOKEN} response=\"{DIGEST}\"")
            lg.warning("quoted %r", PASSWORD)
            try:
                raise RuntimeError(f"failed with {PASSWORD}")
            except RuntimeError:
                lg.exception("boom %s", TOKEN)
    finally:
        for h in handlers:
            h.close()
    console = stream.getvalue()
    page = html_path.read_text()
    assert console.count("***") >= 4 * len(loggers)
    for secret in (AUTH_KEY, PASSWORD, TOKEN, DIGEST):
        assert secret not in console
        assert secret not in page
    assert "<table>" in page and "boom" in page


def test_encodings_of_secrets_are_redacted():
    register_secret("a b+c/d=")
    import base64
    from urllib.parse import quote, quote_plus

    for variant in ("a b+c/d=", quote("a b+c/d=", safe=""), quote_plus("a b+c/d="),
                    base64.b64encode(b"a b+c/d=").decode()):
        assert variant not in redact(f"x {variant} y")


def test_short_values_are_not_redacted_textually():
    register_secret("ab")
    assert redact("abc") == "abc"


def test_secret_object_never_shows_itself():
    s = Secret("hunter2-long")
    assert "hunter2-long" not in repr(s) + str(s) + f"{s}" + f"{s}"
    assert s.reveal() == "hunter2-long"
    assert s == Secret("hunter2-long") and s != Secret("other-value")


def test_caplog_and_foreign_handlers_see_redacted_records(caplog):
    register_secret(PASSWORD)
    logger = log.get_logger("softphone.test_module")
    with caplog.at_level(logging.DEBUG, logger="softphone"):
        logger.debug("password is %s", PASSWORD)
    assert PASSWORD not in caplog.text and "***" in caplog.text


def test_console_level_without_debug(tmp_path):
    stream = io.StringIO()
    handlers = setup_logging(stream=stream)
    try:
        logging.getLogger("softphone.x").debug("hidden")
        logging.getLogger("softphone.x").warning("shown")
    finally:
        for h in handlers:
            h.close()
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_html_handler_escapes(tmp_path):
    h = HtmlLogHandler(tmp_path / "x.html")
    rec = logging.LogRecord("softphone", logging.INFO, __file__, 1, "<script>%s</script>", ("x",), None)
    h.emit(rec)
    h.close()
    text = (tmp_path / "x.html").read_text()
    assert "<script>x" not in text and "&lt;script&gt;x" in text
    assert text.rstrip().endswith("</html>")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(secrets=st.lists(st.text(alphabet="ab+/= %x", min_size=4, max_size=8), min_size=1, max_size=6),
       filler=st.text(alphabet="ab+/= %xy", max_size=20))
def test_overlapping_secrets_all_disappear(secrets, filler):
    log.forget_secrets()
    for s in secrets:
        register_secret(s)
    out = redact(filler.join(secrets) + filler)
    for s in secrets:
        assert s not in out.replace(log.REDACTED, "\x00")
    log.forget_secrets()
