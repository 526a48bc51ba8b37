"""The lab's TURN server: coturn started through the project's ``turn/launch.py``.

The platform contract gives TURN the agent's ``username``/``password``; the
lab therefore renders coturn's configuration with the launcher (the same one
docker-compose and the test fixture use) and adds one long-term credential
per lab user (``user=NAME:PASS`` lines, read from ``lab_users`` at start:
the seeded users; users added to the database later need a lab restart to
become TURN users).  The lab's own media side uses a private user
(``softphone-lab`` with a random password).  On loopback, coturn must allow
loopback peers (``allow-loopback-peers``), which the launcher renders.

Without ``turnserver`` on PATH, or without the launcher (an installed wheel
carries no ``turn/``), :func:`start_turn` logs one line and returns None: the
lab then offers host candidates only.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from softphone.lab.db import Database
from softphone.log import Secret, get_logger, register_secret

log = get_logger(__name__)

LAUNCHER = Path(__file__).resolve().parents[2] / "turn" / "launch.py"
LAB_TURN_USER = "softphone-lab"
DEFAULT_REALM = "softphone.lab"
_PR_SET_PDEATHSIG = 1

try:  # loaded now, not in the forked child (dlopen after fork can deadlock)
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
except OSError:
    _LIBC = None


def _die_with_the_lab() -> None:
    """In coturn's process before exec: SIGTERM it if the lab dies without stopping it (SIGKILL)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def load_launcher(path: Path = LAUNCHER) -> ModuleType | None:
    """Import turn/launch.py by path (it is a script beside the package, not part of it)."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_softphone_turn_launch", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_softphone_turn_launch", module)
    spec.loader.exec_module(module)
    return module


@dataclass
class LabTurn:
    """A running coturn: where it listens, the lab's own credential, who may use it."""

    host: str
    port: int
    realm: str
    lab_username: str
    lab_password: Secret
    users: list[str]
    state_dir: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"turn:{host}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "turnserver.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def stop(self) -> None:
        """Stop coturn (by its process group, which only it is in) and remove its state."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 5
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            log.info("TURN server (pid %d) stopped", proc.pid)
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (TURN listens on both)."""
    bind_host = host or "0.0.0.0"
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((bind_host, 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((bind_host, port))
                except OSError:
                    continue
        return port
    raise OSError("no port free for both UDP and TCP")


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _users(db: Database) -> list[tuple[str, str]]:
    rows = await db.run_transaction(lambda tx: tx.fetchall(
        "SELECT user_name, password FROM lab_users ORDER BY user_id"), readonly=True)
    out = []
    for name, password in rows:
        name, password = str(name), str(password)
        if not name or not password or ":" in name or any(c in name + password for c in "\r\n\0"):
            log.warning("user %r cannot be a TURN user (empty, ':' in the name, or a line break)", name)
            continue
        out.append((name, password))
    return out


async def start_turn(db: Database, *, port: int = 0, listen: str = "127.0.0.1", realm: str = DEFAULT_REALM,
                     loopback: bool | None = None, timeout: float = 10.0,
                     launcher_path: Path = LAUNCHER) -> LabTurn | None:
    """Start coturn for the lab's users; None (with one log line) when it cannot run here."""
    binary = shutil.which("turnserver") or ("/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None)
    if binary is None:
        log.warning("TURN: turnserver (coturn) is not installed: no TURN server, "
                    "the lab's media offers host candidates only")
        return None
    launcher = load_launcher(launcher_path)
    if launcher is None:
        log.warning("TURN: %s not found (not a source checkout): no TURN server, host candidates only",
                    launcher_path)
        return None
    listen_ip = "" if listen in ("", "0.0.0.0", "::") else listen
    probe_host = listen_ip or "127.0.0.1"
    users = await _users(db)
    password = secrets.token_urlsafe(18)
    register_secret(password)
    state_dir = Path(tempfile.mkdtemp(prefix="softphone-lab-turn-"))
    chosen = port or _free_port(listen_ip)
    settings = launcher.TurnSettings(
        port=chosen, user=LAB_TURN_USER, password=password, realm=realm, listening_ip=listen_ip,
        loopback=_is_loopback(probe_host) if loopback is None else loopback,
        log_file=str(state_dir / "turnserver.log"))
    try:
        config = launcher.write_config(settings, state_dir)
        with open(config, "a") as f:
            f.write("\n# lab users (the Webphone's username/password are its TURN credentials)\n")
            for name, secret in users:
                f.write(f"user={name}:{secret}\n")
        command = launcher.build_command(config)
    except (launcher.LaunchError, OSError) as exc:
        shutil.rmtree(state_dir, ignore_errors=True)
        log.warning("TURN: cannot configure coturn (%s): host candidates only", exc)
        return None
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: only from the main thread.
    main_thread = threading.current_thread() is threading.main_thread()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_the_lab if main_thread else None)
    turn = LabTurn(host=probe_host, port=chosen, realm=realm, lab_username=LAB_TURN_USER,
                   lab_password=Secret(password), users=[n for n, _ in users], state_dir=state_dir, process=proc)
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            break
        try:
            await loop.run_in_executor(None, launcher.stun_binding, probe_host, chosen, 0.25)
            log.info("TURN server ready at %s (pid %d, realm %s, %d user(s))", turn.url, proc.pid, realm, len(users))
            return turn
        except (OSError, launcher.LaunchError):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
    tail = _tail(turn.log_file)
    await turn.stop()
    log.warning("TURN: coturn did not come up on %s:%d (%s): host candidates only", probe_host, chosen, tail)
    return None


def _tail(path: Path, lines: int = 3) -> Any:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:]) or "no log"
    except OSError:
        return "no log"
