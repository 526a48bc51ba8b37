"""Headless Chromium with the flags that work on this machine, and the SIP.js 0.15.11 bundle.

Two ways to use it: `dump_dom(url)` for a page that writes its verdict into
the DOM (one short-lived browser), and `launch(url)` for a browser that stays
up while the test talks to the page (e.g. over a loopback aiohttp server);
every launched browser is stopped by PID when the fixture ends. Each browser
gets a fresh --user-data-dir, so runs never share profile state.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
from pathlib import Path

from .process import PeerProcess, PeerStartError, log_tail, preexec_for_this_thread

REPO = Path(__file__).resolve().parents[2]
SIPJS = REPO / "tests" / "js" / "node_modules" / "sip.js" / "dist" / "sip.min.js"
HEADLESS_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--disable-dev-shm-usage", "--mute-audio",
)
FAKE_MEDIA_FLAGS = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")


class Chromium:
    """Where the browser and SIP.js are, plus launch helpers; see the module docstring."""

    def __init__(self, workdir: Path, binary: str | None = None, sipjs_path: Path = SIPJS) -> None:
        self.workdir = workdir
        self.binary = binary or shutil.which("chromium") or "/usr/bin/chromium"
        self.sipjs_path = sipjs_path
        self._counter = itertools.count(1)
        self._launched: list[PeerProcess] = []

    def __repr__(self) -> str:
        return f"Chromium(binary={self.binary!r}, sipjs_path={str(self.sipjs_path)!r})"

    def check(self) -> None:
        """Fail early and clearly when the browser or the SIP.js bundle is missing."""
        if not Path(self.binary).exists():
            raise PeerStartError(f"chromium not found at {self.binary} (Debian package: chromium; run scripts/test)")
        if not self.sipjs_path.is_file():
            raise PeerStartError(f"SIP.js bundle missing: {self.sipjs_path} (scripts/test installs sip.js@0.15.11)")
        result = subprocess.run([self.binary, "--version"], capture_output=True, text=True, timeout=30,
                                stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise PeerStartError(f"{self.binary} --version failed: {result.stderr.strip()[-500:]}")
        self.version = result.stdout.strip()

    def flags(self, *, fake_audio_wav: Path | None = None, name: str = "") -> list[str]:
        """Headless flags, fake media devices and a fresh profile dir under the fixture's tmp dir."""
        profile = self.workdir / f"profile-{name or next(self._counter)}"
        profile.mkdir(parents=True, exist_ok=True)
        flags = [*HEADLESS_FLAGS, *FAKE_MEDIA_FLAGS, f"--user-data-dir={profile}"]
        if fake_audio_wav is not None:
            flags.append(f"--use-file-for-fake-audio-capture={fake_audio_wav}")
        return flags

    def dump_dom(self, url: str, *, timeout: float = 60.0, fake_audio_wav: Path | None = None,
                 virtual_time_budget_ms: int | None = None, extra: tuple[str, ...] = ()) -> str:
        """Load `url`, let its scripts run, and return the serialized DOM (`--dump-dom`)."""
        n = next(self._counter)
        argv = [self.binary, *self.flags(fake_audio_wav=fake_audio_wav, name=f"dump-{n}"), *extra]
        if virtual_time_budget_ms is not None:
            argv.append(f"--virtual-time-budget={virtual_time_budget_ms}")
        argv += ["--dump-dom", url]
        log_path = self.workdir / f"dump-{n}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True, preexec_fn=preexec_for_this_thread())
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired as exc:
                raise PeerStartError(f"chromium --dump-dom {url} took longer than {timeout:.0f} s; "
                                     f"log {log_path}:\n{log_tail(log_path)}") from exc
            finally:
                # Helpers (zygote, utility processes) must not outlive the dump.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc.returncode != 0:
            raise PeerStartError(f"chromium --dump-dom {url} exited {proc.returncode}; "
                                 f"log {log_path}:\n{log_tail(log_path)}")
        return out.decode(errors="replace")

    def launch(self, url: str, *, fake_audio_wav: Path | None = None, extra: tuple[str, ...] = ()) -> PeerProcess:
        """Start a browser on `url` that runs until `.stop()` (or the fixture's teardown)."""
        n = next(self._counter)
        argv = [self.binary, *self.flags(fake_audio_wav=fake_audio_wav, name=f"page-{n}"), *extra, url]
        proc = PeerProcess("chromium", argv, self.workdir / f"page-{n}.log")
        proc.start()
        self._launched.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self._launched:
            proc.stop()
        self._launched.clear()
