"""scripts/demo from a scratch copy with stand-ins for apt-get and the interpreters.

The real thing (Debian's python3, a real venv and the demo) is tests/test_readme_demo_command.py;
this checks the steps a fresh Debian 12 needs that this box cannot undo safely: python3-venv
missing (the interpreter has no ensurepip), apt waiting for the dpkg lock, pip run only inside
./.venv, arguments passed to `softphone demo`, coturn installed only when asked.
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


def stub(path: Path, name: str, log: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB.format(name=name, log=log, body=body))
    path.chmod(0o755)
    return path


def scratch(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """(checkout, bin dir, call log, stand-in base interpreter) for one run."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "demo", root / "scripts" / "demo")
    log = tmp_path / "calls.log"
    bin_dir = tmp_path / "bin"
    venv_installed = tmp_path / "python3-venv-installed"
    stub(bin_dir / "apt-get", "apt-get", log,
         f'case "$*" in *" install "*python3-venv*) touch "{venv_installed}";; esac; exit 0')
    stub(bin_dir / "apt-cache", "apt-cache", log)
    # the venv's interpreter: new enough, has pip, softphone not installed yet (the check exits 1)
    venv_python = 'case "$*" in *"pip --version"*) exit 0;; *"import sys;"*) exit 0;; -\\ *) exit 1;; esac; exit 0'
    # the given interpreter: real for version checks, no ensurepip until apt installed python3-venv,
    # and `-m venv DIR` makes the stand-in venv (python and the softphone entry point)
    base = f"""case "$*" in
  *ensurepip*) [ -e "{venv_installed}" ] && exit 0; exit 1;;
  "-m venv "*) mkdir -p "$3/bin" && cat > "$3/bin/python" <<'EOF'
{STUB.format(name="venv-python", log=log, body=venv_python)}
EOF
cat > "$3/bin/softphone" <<'EOF'
{STUB.format(name="softphone", log=log, body="exit 0")}
EOF
chmod 755 "$3/bin/python" "$3/bin/softphone"; exit 0;;
  *) exec {sys.executable} "$@";;
esac"""
    python = stub(bin_dir / "base-python", "base-python", log, base)
    return root, bin_dir, log, python


def run(root: Path, bin_dir: Path, python: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path or f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(python)}
    return subprocess.run([str(root / "scripts" / "demo"), *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_fresh_debian_python3_venv_installed_then_pip_in_the_venv_then_the_demo(tmp_path):
    root, bin_dir, log, python = scratch(tmp_path)
    result = run(root, bin_dir, python, "--report", "demo.html")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    apt = [c for c in calls if c.startswith("apt-get ")]
    assert len(apt) == 2 and all("-o DPkg::Lock::Timeout=300" in c for c in apt), apt
    assert " update" in apt[0] and " install " in apt[1] and "python3-venv" in apt[1]
    assert "coturn" not in " ".join(apt)  # not asked for
    assert any(c.startswith("base-python -m venv ") and c.endswith("/.venv") for c in calls), calls
    assert "venv-python -m pip install -q -e ." in calls
    assert not [c for c in calls if c.startswith("base-python") and "pip install" in c], calls
    assert calls[-1] == "softphone demo --report demo.html"  # the arguments reach the demo
    assert "creating" in result.stderr and "installing Debian package(s): python3-venv" in result.stderr


def test_install_coturn_is_consumed_and_installs_coturn_when_turnserver_is_missing(tmp_path):
    root, bin_dir, log, python = scratch(tmp_path)
    (tmp_path / "python3-venv-installed").touch()  # the interpreter can make venvs already
    tools = tmp_path / "tools"  # a PATH with what the script needs and no turnserver
    tools.mkdir()
    for tool in ("bash", "env", "dirname", "id", "rm", "mkdir", "cat", "chmod", "touch"):
        (tools / tool).symlink_to(shutil.which(tool))
    result = run(root, bin_dir, python, "--install-coturn", "--no-turn", path=f"{bin_dir}:{tools}")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    apt_installs = [c for c in calls if c.startswith("apt-get ") and " install " in c]
    assert len(apt_installs) == 1 and apt_installs[0].endswith(" coturn"), apt_installs
    assert calls[-1] == "softphone demo --no-turn"  # --install-coturn is the script's, not the demo's


def test_an_existing_venv_is_reused(tmp_path):
    root, bin_dir, log, python = scratch(tmp_path)
    assert run(root, bin_dir, python).returncode == 0
    log.write_text("")
    result = run(root, bin_dir, python)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = log.read_text().splitlines()
    assert not [c for c in calls if c.startswith(("apt-get", "base-python -m venv"))], calls
    assert calls[-1] == "softphone demo"
