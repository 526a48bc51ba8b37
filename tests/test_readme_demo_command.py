"""README command 1, exactly as written, in a fresh copy of the repository with a fresh ./.venv.

On this box Debian 12's own /usr/bin/python3 is the interpreter (PATH as on a fresh Debian): it is
externally managed (PEP 668), so `pip install .` into it is refused and the command must go
through a venv.  pip may use its cache; nothing else is shared with the working tree.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEBIAN_PYTHON = Path("/usr/bin/python3")
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def setup_commands() -> list[str]:
    """The command lines of the README's "Two commands" block (comments dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README: no ```sh block under '## Two commands'"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_has_exactly_two_setup_commands_demo_first():
    assert setup_commands() == ["scripts/demo", "scripts/test"]
    readme = (ROOT / "README.md").read_text()
    assert "docs/platform.md" in readme
    assert "/shared/" not in readme


def test_no_project_file_points_outside_the_repository_for_the_platform_contract():
    """A clone holds only the repository: the platform contract is docs/platform.md, inside it."""
    if not (ROOT / ".git").exists():  # pragma: no cover - an unpacked source tree
        pytest.skip("needs the git checkout to list the project's files")
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    needle = "../" + "shared/"  # spelt apart so that this file does not match itself
    offenders = []
    for name in names:
        path = ROOT / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".html", ".cfg", ""} and path.is_file():
            if needle in path.read_text(errors="replace"):
                offenders.append(name)
    assert not offenders, f"files linking outside the repository: {offenders}"
    assert (ROOT / "docs" / "platform.md").is_file()


def _fresh_copy(dest: Path) -> Path:
    """The repository's files (tracked and new, not ignored: no .venv, no node_modules) copied to ``dest``."""
    if (ROOT / ".git").exists():
        names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                               cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
        for name in filter(None, names):
            src = ROOT / name
            if src.is_file():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
    else:  # pragma: no cover - an unpacked source tree
        shutil.copytree(ROOT, dest, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv", "node_modules", "__pycache__", "*.egg-info"))
    return dest


def _externally_managed(python: Path) -> bool:
    probe = ("import os, sys, sysconfig; sys.exit(0 if os.path.exists(os.path.join("
             "sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')) else 1)")
    return subprocess.run([str(python), "-c", probe]).returncode == 0


@pytest.mark.slow
@pytest.mark.peer  # the demo uses coturn when it is installed
def test_readme_command_1_installs_and_runs_the_demo_in_a_fresh_copy(tmp_path):
    command = setup_commands()[0]
    copy = _fresh_copy(tmp_path / "softphone")
    assert not (copy / ".venv").exists()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SOFTPHONE_", "PYENV", "VIRTUAL_ENV", "PYTHON", "CONDA"))}
    debian = DEBIAN_PYTHON.exists() and subprocess.run(
        [str(DEBIAN_PYTHON), "-c", "import sys; sys.exit(sys.version_info < (3, 11))"]).returncode == 0
    if debian:
        env["PATH"] = DEBIAN_PATH  # python3 is Debian's, as on a fresh machine
    else:  # pragma: no cover - not a Debian box: this interpreter stands in
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    proc = subprocess.run(["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{command!r} exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "softphone demo: OK" in proc.stdout
    venv = (copy / ".venv" / "pyvenv.cfg").read_text()
    if debian:
        assert "home = /usr/bin" in venv  # the venv was made from Debian's interpreter ...
        assert _externally_managed(DEBIAN_PYTHON)  # ... which refuses `pip install .` (PEP 668)
    assert (copy / ".venv" / "bin" / "softphone").exists()
