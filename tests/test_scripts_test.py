"""scripts/test, run from a scratch copy with stand-ins for apt-get, dpkg and the interpreters.

What it must do: wait for a dpkg lock another apt-get holds, install python3-venv when
the interpreter cannot make a venv, and install the Python packages into ./.venv only,
never into the interpreter it was given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STUB = """#!/usr/bin/env bash
echo "{name} $*" >> "{log}"
{body}
"""


def stub(directory: Path, name: str, log: Path, body: str = "exit 0") -> Path:
    path = directory / name
    path.write_text(STUB.format(name=name, log=log, body=body))
    path.chmod(0o755)
    return path


def scratch_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "test", root / "scripts" / "test")
    sipjs = root / "tests" / "js" / "node_modules" / "sip.js"
    (sipjs / "dist").mkdir(parents=True)
    (sipjs / "package.json").write_text('{"name": "sip.js", "version": "0.15.11"}')
    (sipjs / "dist" / "sip.min.js").write_text("")
    return root


def run(root: Path, bin_dir: Path, python: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python),
           "SOFTPHONE_SKIP_INSTALL": "0"}
    return subprocess.run([str(root / "scripts" / "test"), "--co", "-q"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_apt_waits_for_the_lock_and_packages_go_into_the_project_venv(tmp_path):
    root = scratch_checkout(tmp_path)
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # dpkg: sox and python3-venv are missing, everything else is there
    stub(bin_dir, "dpkg", log, 'case "$2" in sox|python3-venv) exit 1;; esac; exit 0')
    stub(bin_dir, "apt-get", log)
    stub(bin_dir, "npm", log)
    # the venv's interpreter: answers the version and pip checks, records what it is asked
    venv_python_body = 'case "$*" in *"pip --version"*) exit 0;; *"import sys;"*) exit 0;; -\\ *) exit 1;; esac; exit 0'
    # the given interpreter: real for the version check, no ensurepip (Debian's before python3-venv),
    # and "-m venv .venv" makes the stand-in venv
    base_body = f"""case "$*" in
  *ensurepip*) exit 1;;
  "-m venv .venv") mkdir -p .venv/bin && cat > .venv/bin/python <<'EOF'
{STUB.format(name="venv-python", log=log, body=venv_python_body)}
EOF
chmod 755 .venv/bin/python; exit 0;;
  *) exec {sys.executable} "$@";;
esac"""
    python = stub(bin_dir, "base-python", log, base_body)

    result = run(root, bin_dir, python)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    apt = [c for c in calls if c.startswith("apt-get ")]
    assert len(apt) == 2 and all("-o DPkg::Lock::Timeout=300" in c for c in apt), apt
    assert " update " in apt[0] + " " and " install " in apt[1]
    assert "sox" in apt[1] and "python3-venv" in apt[1]
    # pip ran in ./.venv only; the given interpreter was never asked to install anything
    assert "venv-python -m pip install -q -e .[test]" in calls
    assert not [c for c in calls if c.startswith("base-python") and "-m pip" in c], calls
    assert any(c.startswith("venv-python -m pytest --co -q") for c in calls)
    assert "creating ./.venv" in result.stdout
