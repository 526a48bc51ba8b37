"""A private coturn on a free loopback port, started through turn/launch.py like in production."""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path
from types import ModuleType

from .process import PeerProcess, PeerStartError, free_port

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "turn" / "launch.py"


def load_launcher() -> ModuleType:
    """Import turn/launch.py by path: it is a script, not part of the softphone package."""
    spec = importlib.util.spec_from_file_location("_turn_launch", LAUNCHER)
    if spec is None or spec.loader is None:
        raise PeerStartError(f"cannot load the TURN launcher {LAUNCHER}")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("_turn_launch", module)
    spec.loader.exec_module(module)
    return module


class Coturn:
    """coturn with long-term credentials and loopback peers allowed (`--loopback`)."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path, *, username: str = "softphone", password: str | None = None,
                 realm: str = "softphone.test") -> None:
        self.workdir = workdir
        self.username = username
        self.password = password or "pw-" + secrets.token_hex(8)
        self.realm = realm
        self.port = 0
        self.log_path = workdir / "turnserver.log"
        self._process: PeerProcess | None = None

    def __repr__(self) -> str:
        return f"Coturn(url={self.url!r}, username={self.username!r}, pid={self.pid}, log={self.log_path})"

    @property
    def url(self) -> str:
        return f"turn:{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, attempts: int = 3) -> None:
        """Start on a free UDP+TCP port; a port taken in the meantime means another try."""
        launcher = load_launcher()
        error: PeerStartError | None = None
        for _ in range(attempts):
            self.port = free_port(udp=True)
            argv = [
                sys.executable, str(LAUNCHER), "--foreground", "--loopback",
                "--port", str(self.port), "--realm", self.realm, "--listening-ip", self.host,
                "--state-dir", str(self.workdir / "state"), "--log-file", str(self.log_path),
            ]
            env = {k: v for k, v in os.environ.items() if not k.startswith("TURN_")}
            env.update(TURN_USER=self.username, TURN_PASSWORD=self.password)
            self._process = PeerProcess("coturn", argv, self.log_path, env=env)
            self._process.start()
            try:
                self._process.wait_ready(lambda: self._answers_stun(launcher), f"STUN answer on port {self.port}")
                return
            except PeerStartError as exc:
                error = exc
                self.stop()
                if "Address already in use" not in self.log_path.read_text(errors="replace"):
                    break
        raise error or PeerStartError("coturn did not start")

    def _answers_stun(self, launcher: ModuleType) -> bool:
        try:
            launcher.stun_binding(self.host, self.port, timeout=0.2)
            return True
        except (OSError, launcher.LaunchError):
            return False

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop()
