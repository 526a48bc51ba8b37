"""Render the coturn configuration for the OmniSense TURN service and run turnserver.

One launcher for every place TURN runs: the `coturn` test fixture
(tests/peers), docker-compose (`turn` service) and a developer's shell. Standard
library only, so it runs inside the stock coturn image.

    python turn/launch.py --port 3478 --user NAME:PASS --realm R [--loopback] [--foreground]
    python turn/launch.py --check 127.0.0.1:3478      # STUN Binding probe, exit 0 when answered
    python turn/launch.py --render-only --state-dir DIR --user NAME:PASS   # only write DIR/turnserver.conf

Every option falls back to an environment variable (TURN_PORT, TURN_USER,
TURN_PASSWORD, TURN_REALM, ...), which is how docker-compose configures it. The
password is written only to the rendered config (mode 0600), never to the
command line, where `ps` would show it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "turnserver.conf.template"
STUN_MAGIC = 0x2112A442


class LaunchError(Exception):
    """A bad option or a turnserver that did not come up; the message names the cause."""


@dataclasses.dataclass(frozen=True)
class TurnSettings:
    """Everything the rendered config depends on. `password` never appears in repr."""

    port: int = 3478
    user: str = "softphone"
    password: str = dataclasses.field(default="", repr=False)
    realm: str = "omnisense.local"
    listening_ip: str = "127.0.0.1"  # "" or "0.0.0.0": every interface
    relay_ip: str | None = None  # default: the listening IP when it is a single address
    external_ip: str | None = None
    min_port: int = 49152
    max_port: int = 65535
    loopback: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_port: int | None = None
    log_file: str | None = None
    verbose: bool = False

    def validate(self) -> None:
        """Reject values coturn would misread (its config is line-based `key=value`)."""
        for name in ("user", "password", "realm"):
            if not getattr(self, name):
                raise LaunchError(f"TURN setting {name!r} is empty")
        for name in ("user", "password", "realm", "listening_ip", "relay_ip", "external_ip"):
            value = getattr(self, name) or ""
            if any(c in value for c in "\r\n\0"):
                raise LaunchError(f"TURN setting {name!r} contains a line break or NUL")
        if ":" in self.user:
            raise LaunchError("TURN setting 'user' must not contain ':' (it separates user and password)")
        for name in ("port", "min_port", "max_port"):
            value = getattr(self, name)
            if not 1 <= value <= 65535:
                raise LaunchError(f"TURN setting {name!r} is out of range 1..65535: {value}")
        if self.min_port > self.max_port:
            raise LaunchError(f"TURN relay range is empty: min_port {self.min_port} > max_port {self.max_port}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise LaunchError("TLS needs both tls_cert and tls_key")
        for name in ("tls_cert", "tls_key"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise LaunchError(f"TURN setting {name!r}: no such file {path}")


def render_config(settings: TurnSettings, state_dir: Path) -> str:
    """The turnserver.conf text for `settings`; `state_dir` holds the pid file and user DB."""
    settings.validate()
    if settings.tls_cert:
        tls_port = settings.tls_port or 5349
        tls_lines = f"cert={settings.tls_cert}\npkey={settings.tls_key}\ntls-listening-port={tls_port}"
    else:
        tls_lines = "no-tls\nno-dtls"
    log_lines = "simple-log\n" + (f"log-file={settings.log_file}" if settings.log_file else "log-file=stdout")
    if settings.verbose:
        log_lines += "\nverbose"
    listen = "" if settings.listening_ip in ("", "0.0.0.0") else settings.listening_ip
    relay = settings.relay_ip or listen
    values = {
        "listening_ip_line": f"listening-ip={listen}" if listen else "",
        "port": settings.port,
        "relay_ip_line": f"relay-ip={relay}" if relay else "",
        "external_ip_line": f"external-ip={settings.external_ip}" if settings.external_ip else "",
        "min_port": settings.min_port,
        "max_port": settings.max_port,
        "user": settings.user,
        "password": settings.password,
        "realm": settings.realm,
        "state_dir": str(state_dir),
        "loopback_line": "allow-loopback-peers" if settings.loopback else "",
        "tls_lines": tls_lines,
        "log_lines": log_lines,
    }
    return string.Template(TEMPLATE.read_text()).substitute(values)


def write_config(settings: TurnSettings, state_dir: Path) -> Path:
    """Write the rendered config (mode 0600: it holds the password) and return its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "turnserver.conf"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(render_config(settings, state_dir))
    return path


def turnserver_binary() -> str:
    found = shutil.which("turnserver") or ("/usr/bin/turnserver" if Path("/usr/bin/turnserver").exists() else None)
    if not found:
        raise LaunchError("turnserver not found on PATH (Debian package: coturn)")
    return found


def build_command(config_path: Path) -> list[str]:
    """The turnserver command line; it carries no secret (the config file does)."""
    return [turnserver_binary(), "-c", str(config_path)]


# --- readiness probe -------------------------------------------------------------------

def stun_binding(host: str, port: int, timeout: float = 1.0) -> tuple[str, int]:
    """Send one STUN Binding request over UDP; return the XOR-MAPPED-ADDRESS seen by the server."""
    txid = secrets.token_bytes(12)
    request = struct.pack("!HHI", 0x0001, 0, STUN_MAGIC) + txid
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        data, _ = sock.recvfrom(2048)
    msg_type, length, magic = struct.unpack("!HHI", data[:8])
    if msg_type != 0x0101 or magic != STUN_MAGIC or data[8:20] != txid:
        raise LaunchError(f"unexpected STUN answer type 0x{msg_type:04x} from {host}:{port}")
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        attr_type, attr_len = struct.unpack("!HH", data[pos:pos + 4])
        value = data[pos + 4:pos + 4 + attr_len]
        if attr_type == 0x0020 and len(value) >= 8 and value[1] == 0x01:
            xport = struct.unpack("!H", value[2:4])[0] ^ (STUN_MAGIC >> 16)
            xaddr = struct.unpack("!I", value[4:8])[0] ^ STUN_MAGIC
            return socket.inet_ntoa(struct.pack("!I", xaddr)), xport
        pos += 4 + attr_len + (-attr_len % 4)
    raise LaunchError(f"STUN answer from {host}:{port} has no IPv4 XOR-MAPPED-ADDRESS")


def wait_ready(host: str, port: int, deadline: float, alive=lambda: True) -> None:
    """Poll with STUN Binding requests until answered, `alive()` turns false or `deadline` passes."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise LaunchError(f"turnserver exited before answering on {host}:{port}")
        try:
            stun_binding(host, port, timeout=0.25)
            return
        except (OSError, LaunchError) as exc:
            last = exc
            time.sleep(0.05)
    raise LaunchError(f"turnserver did not answer STUN on {host}:{port} in time (last error: {last})")


# --- command line ----------------------------------------------------------------------

def _env_bool(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="turn/launch.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=int(env("TURN_PORT", "3478")), help="TURN listening port (turn_port)")
    p.add_argument("--user", default=None, help="NAME:PASS (or TURN_USER and TURN_PASSWORD)")
    p.add_argument("--realm", default=env("TURN_REALM", "omnisense.local"))
    p.add_argument("--listening-ip", default=env("TURN_LISTEN_IP", "127.0.0.1"),
                   help='"0.0.0.0" or "" for every interface')
    p.add_argument("--relay-ip", default=env("TURN_RELAY_IP"), help="default: the listening IP")
    p.add_argument("--external-ip", default=env("TURN_EXTERNAL_IP"), help="public address behind NAT")
    p.add_argument("--min-port", type=int, default=int(env("TURN_MIN_PORT", "49152")))
    p.add_argument("--max-port", type=int, default=int(env("TURN_MAX_PORT", "65535")))
    p.add_argument("--loopback", action="store_true", default=_env_bool("TURN_ALLOW_LOOPBACK"),
                   help="allow loopback peers: local tests only, never in production")
    p.add_argument("--tls-cert", default=env("TURN_TLS_CERT"), help="PEM certificate: enables TLS/DTLS")
    p.add_argument("--tls-key", default=env("TURN_TLS_KEY"), help="PEM private key for --tls-cert")
    p.add_argument("--tls-port", type=int, default=int(env("TURN_TLS_PORT", "0")) or None)
    p.add_argument("--state-dir", default=env("TURN_STATE_DIR"), help="where the rendered config goes")
    p.add_argument("--log-file", default=env("TURN_LOG_FILE"), help="default: stdout")
    p.add_argument("--verbose", action="store_true", default=_env_bool("TURN_VERBOSE"))
    p.add_argument("--foreground", action="store_true",
                   help="replace this process with turnserver (containers, fixtures)")
    p.add_argument("--timeout", type=float, default=15.0, help="readiness bound in the background mode")
    p.add_argument("--print-config", action="store_true", help="print the rendered config (password masked)")
    p.add_argument("--render-only", action="store_true", help="write the config, print its path, do not run")
    p.add_argument("--check", metavar="HOST:PORT", help="only probe a running server with STUN and exit")
    return p.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> TurnSettings:
    if args.user:
        user, sep, password = args.user.partition(":")
        if not sep:
            raise LaunchError("--user must be NAME:PASS")
    else:
        user = os.environ.get("TURN_USER", "")
        password = os.environ.get("TURN_PASSWORD", "")
    if not user or not password:
        raise LaunchError("TURN credentials missing: give --user NAME:PASS or TURN_USER and TURN_PASSWORD")
    return TurnSettings(
        port=args.port, user=user, password=password, realm=args.realm, listening_ip=args.listening_ip,
        relay_ip=args.relay_ip or None, external_ip=args.external_ip, min_port=args.min_port,
        max_port=args.max_port, loopback=args.loopback, tls_cert=args.tls_cert, tls_key=args.tls_key,
        tls_port=args.tls_port, log_file=args.log_file, verbose=args.verbose,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.check:
            host, _, port = args.check.rpartition(":")
            try:
                mapped = stun_binding(host or "127.0.0.1", int(port), timeout=2.0)
            except OSError as exc:
                raise LaunchError(f"no STUN answer from {args.check}: {exc}") from exc
            print(f"STUN answered from {args.check}: mapped {mapped[0]}:{mapped[1]}")
            return 0
        settings = settings_from_args(args)
        state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="turn-"))
        if not args.foreground and not settings.log_file:
            settings = dataclasses.replace(settings, log_file=str(state_dir / "turnserver.log"))
        config = write_config(settings, state_dir)
        if args.print_config:
            print(render_config(dataclasses.replace(settings, password="********"), state_dir))
        if args.render_only:
            print(config)
            return 0
        command = build_command(config)
        print(f"turn: {' '.join(command)} (port {settings.port}, realm {settings.realm})", flush=True)
        if args.foreground:
            os.execv(command[0], command)
        # In the background turnserver must not hold our stdout: callers wait for its EOF.
        with open(settings.log_file or os.devnull, "ab") as out:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True)
        try:
            wait_ready(settings.listening_ip if settings.listening_ip not in ("", "0.0.0.0") else "127.0.0.1",
                       settings.port, time.monotonic() + args.timeout,
                       alive=lambda: proc.poll() is None)
        except LaunchError:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            raise
        print(f"turn: ready, pid {proc.pid}", flush=True)
        return 0
    except (LaunchError, OSError, ValueError) as exc:
        print(f"turn: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
