"""Start, probe and stop one peer process; shared by every real-peer fixture.

A peer runs in its own session (process group), logs to a file under the
test's tmp dir, is watched by PID only, and dies with the test run even if
pytest itself is killed (PR_SET_PDEATHSIG). Failures carry the log path and
its tail, so a broken peer explains itself in the pytest report.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


class PeerStartError(Exception):
    """A peer did not come up; the message names the peer, its log and the log's tail."""


def log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log file)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(log is empty)"


def fail(peer: str, what: str, log_path: Path | None = None, extra: str = "") -> None:
    """Fail the test loudly (never skip) with everything needed to debug the peer."""
    message = f"{peer}: {what}"
    if extra:
        message += f"\n{extra}"
    if log_path is not None:
        message += f"\nlog: {log_path}\n--- last lines ---\n{log_tail(log_path)}"
    pytest.fail(message, pytrace=False)


def _port_is_free(port: int, udp: bool) -> bool:
    kinds = [socket.SOCK_STREAM] + ([socket.SOCK_DGRAM] if udp else [])
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(udp: bool = False, avoid: Sequence[int] = ()) -> int:
    """A loopback port the kernel just handed out for TCP (and, with `udp`, also free for UDP)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid and _port_is_free(port, udp):
            return port
    raise PeerStartError("no free loopback port found after 200 tries")


try:  # loaded here, not in the forked child: dlopen after fork can deadlock
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the test process goes away."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def preexec_for_this_thread() -> Callable[[], None] | None:
    """PR_SET_PDEATHSIG fires when the *thread* that forked exits: only tie peers to the main
    thread; a peer started from a worker thread (run_in_executor) would die with that thread."""
    return die_with_parent if threading.current_thread() is threading.main_thread() else None


class PeerProcess:
    """One running peer: started in its own process group, stopped by PID (TERM, then KILL)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, cwd: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                env=self.env, start_new_session=True, preexec_fn=preexec_for_this_thread(),
            )

    def wait_ready(self, probe: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
        """Poll `probe` until true; fail with the log tail if the peer exits or the bound passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise PeerStartError(f"{self.name} exited with code {code} before {what}")
            if probe():
                return
            time.sleep(0.02)
        raise PeerStartError(f"{self.name} not ready within {timeout:.0f} s ({what})")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pgid = proc.pid  # start_new_session: the peer leads its own group
        # SIGTERM goes to the leader only: it shuts its workers down in order (Kamailio's main
        # process hangs when every worker is signalled at once). SIGKILL goes to the whole group.
        for sig, bound in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                if sig == signal.SIGTERM:
                    proc.send_signal(sig)
                else:
                    os.killpg(pgid, sig)
            try:
                proc.wait(bound)
            except subprocess.TimeoutExpired:
                continue
        # Children that outlive the leader (kamailio workers, chromium helpers) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with open(self.log_path, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} stopped (exit {proc.returncode})\n".encode())
