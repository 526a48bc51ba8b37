"""softphone.media.aiortc_seam: the only module touching aiortc/aioice internals, its check and the fallback."""

from __future__ import annotations

import ast
import logging
import re
import tomllib
from pathlib import Path

import pytest

from softphone.errors import AiortcCompatibilityError
from softphone.media import aiortc_seam as seam
from softphone.media.config import MediaConfig

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "softphone"
SEAM = PACKAGE / "media" / "aiortc_seam.py"

#: aiortc/aioice private names with no other meaning in this package.
PRIVATE = {
    "_connection", "_nominated", "_rtp_router", "_rx_srtp", "_tx_srtp", "_handle_rtp_data", "_handle_rtcp_data",
    "_handle_rtp_packet", "_handle_rtcp_packet", "_send_rtp", "_run_rtp", "_run_rtcp", "_retransmit",
    "_next_encoded_frame", "_register_rtp_receiver", "_register_rtp_sender", "_rtp_header_extensions_map",
    "_codecs", "_ssrc", "_role", "_network_host", "_protocols", "_transport_policy", "getDefaultIceServers",
    "get_host_addresses", "turn_ssl",
}
#: Private names aiortc uses that our own classes may also use on ``self``.
GENERIC = {"_enabled", "_track", "_queue", "_state", "_send"}
MANGLED = re.compile(r"^_(RTC\w+|TurnTransport|Connection|StunProtocol|StunTransaction)__\w+$")
PRIVATE_MODULES = ("aioice", "pylibsrtp", "aiortc.clock")


def _is_private(name: str) -> bool:
    return name in PRIVATE or bool(MANGLED.match(name))


def private_accesses(source: str, filename: str = "<string>") -> list[str]:
    """What in ``source`` touches aiortc/aioice private state (empty: nothing)."""
    tree = ast.parse(source, filename=filename)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            if _is_private(node.attr) or (node.attr in GENERIC and not on_self):
                found.append(f"{where} .{node.attr}")
            if node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                found.append(f"{where} class swap")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if _is_private(node.value) or node.value in GENERIC:
                found.append(f"{where} {node.value!r}")
        elif isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if a.name.startswith(PRIVATE_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found += [f"{where} from {n}" for n in names if n.startswith(PRIVATE_MODULES)][:1]
    return found


def test_no_module_but_the_seam_touches_aiortc_internals():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != SEAM:
            found += private_accesses(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "private aiortc/aioice access outside aiortc_seam.py:\n" + "\n".join(found)


def test_the_checker_sees_each_kind_of_access():
    source = '''
"""_connection in a docstring is fine."""
import aioice.ice
from aiortc import clock
from pylibsrtp import Session

def f(receiver, dtls, self):
    receiver._RTCRtpReceiver__codecs[0] = 1
    dtls.transport._connection._nominated.get(1)
    getattr(receiver, "_rtp_router", None)
    receiver.__class__ = object
    receiver._enabled
    self._enabled = True
'''
    found = sorted(f.split(" ", 1)[1] for f in private_accesses(source))
    assert found == sorted(["import aioice.ice", "from aiortc.clock", "from pylibsrtp", "._RTCRtpReceiver__codecs",
                            "._nominated", "._connection", "'_rtp_router'", "class swap", "._enabled"])


def test_the_pins_are_exactly_the_tested_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {re.split(r"[=<>!~ \[]", d, maxsplit=1)[0].lower(): d for d in project["dependencies"]}
    for package, versions in seam.TESTED_VERSIONS.items():
        (only,) = versions  # one release line each; widen the pin and this together
        assert deps[package].replace(" ", "") == f"{package}=={only[0]}.{only[1]}.*"
    assert "pylibsrtp" in deps  # imported directly by the seam


def test_the_installed_versions_pass_the_check():
    assert seam.problems() == []
    seam.check()
    assert seam.fast_path_enabled("auto") and seam.fast_path_enabled("on")
    assert not seam.fast_path_enabled("off")


@pytest.fixture
def untested_version(monkeypatch):
    """As if pip had resolved an aiortc the seam was never tested with (restored by monkeypatch)."""
    monkeypatch.setitem(seam.TESTED_VERSIONS, "aiortc", ((1, 15),))
    monkeypatch.setattr(seam, "_fallback_warned", False)


async def test_auto_falls_back_to_stock_aiortc_with_one_warning(untested_version, caplog):
    from aiortc import RTCRtpReceiver

    from softphone.media.description_handler import WebRtcDescriptionHandler
    from softphone.media.lean import PreEncodedAudioTrack, Tone

    caplog.set_level(logging.WARNING, logger="softphone.media.aiortc_seam")
    handlers = [WebRtcDescriptionHandler(MediaConfig(), source=PreEncodedAudioTrack(Tone(440, 0.2)), decode=False)
                for _ in range(3)]
    try:
        for handler in handlers:
            assert handler.fast_path is False
            assert type(handler.receiver) is RTCRtpReceiver  # no class swap
            assert "_run_rtp" not in handler.sender.__dict__  # aiortc's own send loop
        warnings = [r for r in caplog.records if "fast path off" in r.getMessage()]
        assert len(warnings) == 1
        assert "aiortc 1.16" in warnings[0].getMessage() and "tested: 1.15" in warnings[0].getMessage()
    finally:
        for handler in handlers:
            await handler.close()


async def test_on_raises_when_the_version_is_untested(untested_version):
    from softphone.media.description_handler import WebRtcDescriptionHandler

    with pytest.raises(AiortcCompatibilityError, match=r"aiortc 1\.16\.\d+ \(tested: 1\.15\)"):
        WebRtcDescriptionHandler(MediaConfig(fast_path="on"))


def test_fast_path_mode_is_validated():
    from softphone.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="fast_path"):
        MediaConfig(fast_path="yes")
