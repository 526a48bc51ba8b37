"""Each layer imports only the layers below it (DEVELOPERS.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "softphone"

BOTTOM = {"softphone", "softphone.errors", "softphone.log", "softphone.params", "softphone.events"}
ALLOWED = {
    "bottom": BOTTOM,
    "sip": BOTTOM | {"softphone.sip"},
    "media": BOTTOM | {"softphone.sip", "softphone.media"},
    "platform": BOTTOM | {"softphone.platform"},
    "lab": BOTTOM | {"softphone.sip", "softphone.media", "softphone.platform", "softphone.lab"},
    "agent": BOTTOM | {"softphone.sip", "softphone.media", "softphone.platform", "softphone.agent"},
}
FORBIDDEN_THIRD_PARTY = {"sip": {"aiortc", "av", "aioice", "numpy"}, "platform": {"aiortc", "av"}}


def _layer(path: Path) -> str | None:
    rel = path.relative_to(ROOT)
    if len(rel.parts) == 1:
        return "bottom" if rel.stem in {"errors", "log", "params", "events", "__init__"} else None
    return rel.parts[0]


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for type checkers, never run)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _allowed(module: str, allowed: set[str]) -> bool:
    if not module.startswith("softphone"):
        return True
    return any(module == a or module.startswith(a + ".") for a in allowed if a != "softphone") or module == "softphone"


FILES = sorted(p for p in ROOT.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layer_imports(path: Path):
    layer = _layer(path)
    imports = _imports(path)
    bad = sorted(m for m in imports if not _allowed(m, ALLOWED[layer]))
    assert not bad, f"{path.relative_to(ROOT)} ({layer}) imports {bad}"
    third = {m.split(".")[0] for m in imports} & FORBIDDEN_THIRD_PARTY.get(layer, set())
    assert not third, f"{path.relative_to(ROOT)} ({layer}) must not import {sorted(third)}"
