"""Smoke tests of the real peers the suite relies on, each against the running peer.

The SIP exchanges here are written by hand on purpose (a tiny WebSocket SIP
client with its own MD5 digest): they check the generated Kamailio config
independently of softphone.sip.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import aiomysql
import pytest
from aioice.stun import TransactionFailed
from aioice.turn import create_turn_endpoint
from peers.coturn import load_launcher
from peers.kamailio import Kamailio
from peers.plugin import _start_kamailio
from peers.process import PeerProcess, PeerStartError, free_port

# Tests using a peer fixture are marked `peer` by tests/peers/plugin.py; those that start a
# peer binary themselves are marked here.
BOUND = 10.0
REPO = Path(__file__).resolve().parents[1]
launch = load_launcher()


# --- coturn --------------------------------------------------------------------------------------

class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.received.put_nowait((data, addr))


async def test_turn_allocation_with_long_term_credentials_relays_datagrams(coturn):
    transport, protocol = await asyncio.wait_for(create_turn_endpoint(
        _Sink, server_addr=(coturn.host, coturn.port), username=coturn.username, password=coturn.password,
        channel_refresh_time=60, lifetime=120), BOUND)
    try:
        mapped, relayed = transport.get_extra_info("related_address"), transport.get_extra_info("sockname")
        assert mapped and relayed, f"allocation without addresses: mapped {mapped}, relayed {relayed}"
        relay_host, relay_port = relayed[:2]
        assert relay_host == "127.0.0.1" and relay_port != coturn.port
        # A datagram from a loopback peer to the relayed address reaches us through coturn.
        loop = asyncio.get_running_loop()
        peer_transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            peer_addr = peer_transport.get_extra_info("sockname")
            transport.sendto(b"open the permission", peer_addr)
            for _ in range(50):
                peer_transport.sendto(b"hello through turn", (relay_host, relay_port))
                try:
                    data, addr = await asyncio.wait_for(protocol.received.get(), 0.2)
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("nothing relayed by coturn")
            assert data == b"hello through turn" and addr[:2] == peer_addr[:2]
        finally:
            peer_transport.close()
    finally:
        transport.close()


async def test_turn_allocation_with_a_wrong_password_is_refused(coturn):
    with pytest.raises(TransactionFailed) as info:
        await asyncio.wait_for(create_turn_endpoint(
            asyncio.DatagramProtocol, server_addr=(coturn.host, coturn.port), username=coturn.username,
            password="not-" + coturn.password), BOUND)
    assert info.value.response.attributes["ERROR-CODE"][0] == 401


def test_turn_launcher_check_mode_probes_the_fixture(coturn):
    result = subprocess.run([sys.executable, str(REPO / "turn" / "launch.py"), "--check", f"127.0.0.1:{coturn.port}"],
                            capture_output=True, text=True, timeout=BOUND)
    assert result.returncode == 0, result.stderr
    assert "mapped 127.0.0.1:" in result.stdout


# --- Kamailio: a hand-written SIP-over-WebSocket client ------------------------------------------

@dataclass
class Msg:
    start: str
    headers: list[tuple[str, str]]
    body: str = ""

    @classmethod
    def parse(cls, text: str) -> Msg:
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        headers = [(n.strip(), v.strip()) for n, _, v in (line.partition(":") for line in lines[1:])]
        return cls(lines[0], headers, body)

    @property
    def status(self) -> int | None:
        return int(self.start.split()[1]) if self.start.startswith("SIP/2.0 ") else None

    @property
    def method(self) -> str:
        return self.start.split()[0] if self.status is None else self.get("CSeq").split()[1]

    def get(self, name: str) -> str:
        return next((v for n, v in self.headers if n.lower() == name.lower()), "")

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


def digest(user: str, password: str, method: str, uri: str, challenge: str) -> str:
    """RFC 2617/7616 MD5 digest with qop=auth, as SIP.js computes it."""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge.removeprefix("Digest ")))
    assert params.get("qop") == "auth" and params.get("algorithm", "MD5").upper() == "MD5", challenge
    cnonce, nc = secrets.token_hex(8), "00000001"
    ha1 = hashlib.md5(f"{user}:{params['realm']}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
    return (f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", uri="{uri}", '
            f'response="{response}", algorithm=MD5, qop=auth, cnonce="{cnonce}", nc={nc}')


@dataclass
class RawPhone:
    """Just enough SIP over WebSocket to drive Kamailio: no transactions, no retransmissions."""

    ws: aiohttp.ClientWebSocketResponse
    ext: str
    password: str
    domain: str
    host: str = field(default_factory=lambda: f"{secrets.token_hex(4)}.invalid")
    cseq: int = 1
    tag: str = field(default_factory=lambda: secrets.token_hex(4))

    @property
    def contact(self) -> str:
        return f"<sip:{self.ext}@{self.host};transport=ws>"

    def request(self, method: str, ruri: str, *, to: str | None = None, call_id: str | None = None,
                extra: list[str] = (), body: str = "", branch: str | None = None, cseq: int | None = None) -> str:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [
            f"{method} {ruri} SIP/2.0",
            f"Via: SIP/2.0/WS {self.host};branch=z9hG4bK{branch or secrets.token_hex(6)}",
            "Max-Forwards: 70",
            f"From: <sip:{self.ext}@{self.domain}>;tag={self.tag}",
            f"To: {to or f'<{ruri}>'}",
            f"Call-ID: {call_id or secrets.token_hex(8)}",
            f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}",
            *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    async def send(self, text: str) -> None:
        await self.ws.send_str(text)

    async def recv(self, *, skip_provisional: bool = False) -> Msg:
        while True:
            frame = await asyncio.wait_for(self.ws.receive(), BOUND)
            assert frame.type == aiohttp.WSMsgType.TEXT, f"{self.ext}: unexpected frame {frame.type}"
            msg = Msg.parse(frame.data)
            if skip_provisional and msg.status is not None and msg.status < 200:
                continue
            return msg

    def reply(self, req: Msg, status: int, reason: str, *, to_tag: str | None = None, body: str = "") -> str:
        to = req.get("To") + (f";tag={to_tag}" if to_tag and ";tag=" not in req.get("To") else "")
        lines = [f"SIP/2.0 {status} {reason}", *(f"Via: {v}" for v in req.all("Via")),
                 *(f"Record-Route: {v}" for v in req.all("Record-Route")),
                 f"From: {req.get('From')}", f"To: {to}", f"Call-ID: {req.get('Call-ID')}",
                 f"CSeq: {req.get('CSeq')}", f"Contact: {self.contact}"]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    async def register(self, expires: int = 300) -> tuple[Msg, Msg]:
        """REGISTER, answer the challenge; returns (challenge, final answer)."""
        call_id, uri = secrets.token_hex(8), f"sip:{self.domain}"
        to = f"<sip:{self.ext}@{self.domain}>"
        await self.send(self.request("REGISTER", uri, to=to, call_id=call_id, extra=[f"Expires: {expires}"]))
        challenge = await self.recv()
        auth = digest(self.ext, self.password, "REGISTER", uri, challenge.get("WWW-Authenticate"))
        await self.send(self.request("REGISTER", uri, to=to, call_id=call_id,
                                     extra=[f"Expires: {expires}", f"Authorization: {auth}"]))
        return challenge, await self.recv()

    async def invite(self, callee: str) -> tuple[str, str, Msg]:
        """Send an authenticated INVITE; returns (call_id, branch, the 407 challenge)."""
        ruri, call_id = f"sip:{callee}@{self.domain}", secrets.token_hex(8)
        await self.send(self.request("INVITE", ruri, call_id=call_id, body=SDP))
        challenge = await self.recv()
        assert challenge.status == 407, challenge.start
        await self.send(self.request("ACK", ruri, to=challenge.get("To"), call_id=call_id, cseq=self.cseq))
        auth = digest(self.ext, self.password, "INVITE", ruri, challenge.get("Proxy-Authenticate"))
        branch = secrets.token_hex(6)
        await self.send(self.request("INVITE", ruri, call_id=call_id, body=SDP, branch=branch,
                                     extra=[f"Proxy-Authorization: {auth}"]))
        return call_id, branch, challenge


SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n"


async def phone(session: aiohttp.ClientSession, kam, ext: str, password: str | None = None) -> RawPhone:
    ws = await asyncio.wait_for(session.ws_connect(kam.ws_url, protocols=("sip",)), BOUND)
    assert ws.protocol == "sip"
    return RawPhone(ws, ext, password if password is not None else kam.users[ext], kam.domain)


async def test_kamailio_register_over_websocket_with_md5_digest(kamailio):
    async with aiohttp.ClientSession() as session:
        alice = await phone(session, kamailio, kamailio.allocate(1)[0])
        challenge, ok = await alice.register()
        assert challenge.status == 401
        www = challenge.get("WWW-Authenticate")
        assert www.startswith("Digest ") and 'qop="auth"' in www and f'realm="{kamailio.domain}"' in www
        assert ok.status == 200, ok.start
        assert "expires=" in ok.get("Contact")
        await alice.ws.close()


async def test_kamailio_rejects_a_wrong_password_with_a_new_challenge(kamailio):
    async with aiohttp.ClientSession() as session:
        mallory = await phone(session, kamailio, kamailio.allocate(1)[0], password="wrong")
        challenge, answer = await mallory.register()
        assert challenge.status == 401 and answer.status == 401
        await mallory.ws.close()


async def test_kamailio_routes_a_call_between_registered_phones_and_rejects_unknown(kamailio_factory):
    kam = kamailio_factory(users={"alice": "wonderland"}, n_users=2)
    assert set(kam.users) == {"1001", "1002", "alice"}
    async with aiohttp.ClientSession() as session:
        a, b = await phone(session, kam, "alice"), await phone(session, kam, "1002")
        for p in (a, b):
            assert (await p.register())[1].status == 200

        # Not registered: 404 from the proxy.
        await a.invite("1001")
        assert (await a.recv(skip_provisional=True)).status == 404

        call_id, _, _ = await a.invite("1002")
        offer = await b.recv()
        assert offer.start.startswith("INVITE sip:1002@") and offer.get("Call-ID") == call_id
        assert offer.all("Record-Route") and "Proxy-Authorization" not in {n for n, _ in offer.headers}
        await b.send(b.reply(offer, 200, "OK", to_tag="btag", body=SDP))
        answer = await a.recv(skip_provisional=True)
        assert answer.status == 200 and answer.body.startswith("v=0")
        route = [f"Route: {v}" for v in reversed(answer.all("Record-Route"))]
        target = re.search(r"<([^>]+)>", answer.get("Contact")).group(1)
        await a.send(a.request("ACK", target, to=answer.get("To"), call_id=call_id, cseq=a.cseq, extra=route))
        assert (await b.recv()).method == "ACK"

        # The callee hangs up: a request routed to a WebSocket contact (handle_ruri_alias).
        caller_contact = re.search(r"<([^>]+)>", offer.get("Contact")).group(1)
        assert "alias=" in caller_contact
        b_route = [f"Route: {v}" for v in offer.all("Record-Route")]
        bye = (b.request("BYE", caller_contact, to=offer.get("From"), call_id=call_id, extra=b_route)
               .replace(f"From: <sip:1002@{kam.domain}>;tag={b.tag}", f"From: {offer.get('To')};tag=btag"))
        await b.send(bye)
        got = await a.recv()
        assert got.method == "BYE" and got.get("Call-ID") == call_id
        await a.send(a.reply(got, 200, "OK"))
        assert (await b.recv()).status == 200
        await a.ws.close()
        await b.ws.close()


async def test_kamailio_cancel_reaches_the_callee(kamailio_factory):
    kam = kamailio_factory(n_users=2)
    async with aiohttp.ClientSession() as session:
        a, b = await phone(session, kam, "1001"), await phone(session, kam, "1002")
        for p in (a, b):
            assert (await p.register())[1].status == 200
        call_id, branch, _ = await a.invite("1002")
        offer = await b.recv()
        await b.send(b.reply(offer, 180, "Ringing", to_tag="btag"))
        assert (await a.recv()).status in (100, 180)
        await a.send(a.request("CANCEL", f"sip:1002@{kam.domain}", call_id=call_id, branch=branch, cseq=a.cseq))
        cancel = await b.recv()
        assert cancel.start.startswith("CANCEL ") and cancel.get("Call-ID") == call_id
        await b.send(b.reply(cancel, 200, "OK", to_tag="btag"))
        await b.send(b.reply(offer, 487, "Request Terminated", to_tag="btag"))
        finals = {(m.method, m.status) for m in [await a.recv(skip_provisional=True) for _ in range(2)]}
        assert finals == {("CANCEL", 200), ("INVITE", 487)}
        await a.ws.close()
        await b.ws.close()


def test_kamailio_factory_restart_keeps_the_port(kamailio_factory):
    kam = kamailio_factory(n_users=1)
    port, pid = kam.port, kam.pid
    kam.restart()
    assert kam.port == port and kam.pid != pid and kam.running()
    kam.stop()
    assert not kam.running() and kam.pid is None
    kam.start()
    assert kam.running() and kam.ws_url == f"ws://127.0.0.1:{port}/ws"


# --- MariaDB ---------------------------------------------------------------------------------------

async def test_mariadb_create_insert_select(mariadb):
    assert mariadb.url.startswith(f"mysql://{mariadb.user}:") and mariadb.url.endswith(f"/{mariadb.database}")
    conn = await asyncio.wait_for(aiomysql.connect(host=mariadb.host, port=mariadb.port, user=mariadb.user,
                                                   password=mariadb.password, db=mariadb.database), BOUND)
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE TABLE smoke (id INT PRIMARY KEY, name VARCHAR(40)) ENGINE=InnoDB")
            await cur.executemany("INSERT INTO smoke VALUES (%s, %s)", [(1, "alice"), (2, "bob")])
            await conn.commit()
            await cur.execute("SELECT name FROM smoke ORDER BY id")
            assert await cur.fetchall() == (("alice",), ("bob",))
            await cur.execute("DROP TABLE smoke")
    finally:
        conn.close()


async def test_mariadb_create_database_gives_a_fresh_usable_url(mariadb):
    url = mariadb.create_database("peers_smoke")
    assert url.endswith("/peers_smoke")
    conn = await asyncio.wait_for(aiomysql.connect(host=mariadb.host, port=mariadb.port, user=mariadb.user,
                                                   password=mariadb.password, db="peers_smoke"), BOUND)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SHOW TABLES")
            assert await cur.fetchall() == ()
    finally:
        conn.close()


# --- Chromium + SIP.js ------------------------------------------------------------------------------

def test_chromium_loads_sipjs_and_sees_the_legacy_ua_api(chromium, tmp_path):
    page = tmp_path / "sipjs.html"
    page.write_text(
        "<!doctype html><html><head><script src=\"" + chromium.sipjs_path.as_uri() + "\"></script></head>"
        "<body><div id=result></div><script>"
        "document.getElementById('result').textContent = "
        "'SIP.UA:' + (typeof SIP === 'object' && typeof SIP.UA) + ' version:' + (SIP && SIP.version);"
        "</script></body></html>")
    dom = chromium.dump_dom(page.as_uri())
    assert "SIP.UA:function" in dom, dom[-2000:]
    assert "version:0.15.11" in dom


async def test_kamailio_factory_registers_a_thousand_websocket_phones(kamailio_factory):
    """The registration-benchmark size: 1000 users, 1000 open WebSocket connections at once."""
    kam = kamailio_factory(n_users=1000)
    assert len(kam.users) == 1000 and kam.users["2000"] == "pw2000"
    gate = asyncio.Semaphore(100)

    async def register(session: aiohttp.ClientSession, ext: str) -> tuple[RawPhone, int]:
        async with gate:
            p = await phone(session, kam, ext)
            return p, (await p.register())[1].status

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        results = await asyncio.gather(*(register(session, ext) for ext in kam.users))
        try:
            assert [status for _, status in results] == [200] * 1000
        finally:
            await asyncio.gather(*(p.ws.close() for p, _ in results))
    assert "ERROR" not in kam.log_path.read_text()


# --- how the fixtures fail and clean up -------------------------------------------------------------

@pytest.mark.peer
def test_a_kamailio_that_cannot_bind_fails_loudly_with_its_log(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: Kamailio's bind fails, no probe succeeds
        kam = Kamailio(tmp_path, n_users=1, port=taken.getsockname()[1])
        with pytest.raises(pytest.fail.Exception) as info:
            _start_kamailio(kam)
    message = str(info.value)
    assert message.startswith("kamailio: kamailio exited with code")
    assert f"log: {kam.log_path}" in message and "--- last lines ---" in message
    assert not kam.running()


@pytest.mark.peer
def test_a_broken_kamailio_config_is_reported_with_kamailio_c_output(tmp_path):
    kam = Kamailio(tmp_path, n_users=1)
    kam.write_config()
    kam.config_path.write_text(kam.config_path.read_text().replace("lookup(\"location\");", "lookup_nowhere();"))
    with pytest.raises(PeerStartError) as info:
        kam.check_config()
    assert "kamailio -c rejected" in str(info.value) and "lookup_nowhere" in str(info.value)


def test_kamailio_config_rejects_values_that_would_break_it(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        Kamailio(tmp_path, users={"10 01": "pw"}, n_users=0).write_config()
    with pytest.raises(ValueError, match="unsupported character"):
        Kamailio(tmp_path, users={"1001": 'pw"; drop'}, n_users=0).write_config()
    with pytest.raises(ValueError, match="n_users"):
        Kamailio(tmp_path, n_users=1001)


def test_peer_process_stop_kills_a_group_that_ignores_sigterm(tmp_path):
    script = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
              "subprocess.Popen(['sleep', '60']); print('up and', 'ignoring', flush=True); time.sleep(60)")
    proc = PeerProcess("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    proc.start()
    proc.wait_ready(lambda: "up and ignoring" in (tmp_path / "stubborn.log").read_text(), "its greeting")
    pgid = proc.pid
    proc.stop(timeout=0.5)
    assert not proc.alive() and proc.pid is None
    assert _live_group_members(pgid) == []
    assert "stopped (exit -9)" in (tmp_path / "stubborn.log").read_text()
    proc.stop()  # twice is fine


def test_peers_die_with_a_killed_test_process(tmp_path):
    """PR_SET_PDEATHSIG: a pytest killed with SIGKILL leaves no peer behind."""
    pid_file = tmp_path / "peer.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time, pathlib; sys.path.insert(0, sys.argv[1]);"
        "from peers.process import PeerProcess;"
        "p = PeerProcess('sleeper', ['sleep', '60'], pathlib.Path(sys.argv[2]) / 'sleeper.log'); p.start();"
        "pathlib.Path(sys.argv[2], 'peer.pid').write_text(str(p.pid)); time.sleep(60)"),
        str(REPO / "tests"), str(tmp_path)])
    try:
        for _ in range(500):
            if pid_file.exists() and pid_file.read_text():
                break
            assert parent.poll() is None, "the helper process died before starting its peer"
            time.sleep(0.02)
        peer_pid = int(pid_file.read_text())
    finally:
        parent.kill()
        parent.wait(BOUND)
    for _ in range(500):
        if not _alive(peer_pid):
            break
        time.sleep(0.02)
    else:
        os.kill(peer_pid, signal.SIGKILL)
        raise AssertionError("the peer outlived its killed parent")


def _live_group_members(pgid: int) -> list[int]:
    """PIDs in process group `pgid` that are not zombies (orphans' zombies wait for init)."""
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat_file.parent.name))
    return members


def _alive(pid: int) -> bool:
    """Running and not a zombie (an orphan's zombie waits for init, which may not reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_free_port_is_free_for_tcp_and_udp():
    port = free_port(udp=True)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", port))


# --- turn/launch.py ---------------------------------------------------------------------------------

def test_turn_config_has_credentials_realm_port_and_safe_defaults(tmp_path):
    settings = launch.TurnSettings(port=3479, user="agent", password="s3cret", realm="omni.test")
    text = launch.render_config(settings, tmp_path)
    lines = set(text.splitlines())
    assert {"listening-port=3479", "lt-cred-mech", "user=agent:s3cret", "realm=omni.test", "fingerprint",
            "no-cli", "no-tls", "no-dtls", "listening-ip=127.0.0.1", "relay-ip=127.0.0.1"} <= lines
    assert "allow-loopback-peers" not in lines
    assert "allow-loopback-peers" in launch.render_config(
        launch.TurnSettings(user="a", password="b", loopback=True), tmp_path).splitlines()
    everywhere = launch.render_config(launch.TurnSettings(user="a", password="b", listening_ip="0.0.0.0"), tmp_path)
    assert not any(line.startswith(("listening-ip=", "relay-ip=")) for line in everywhere.splitlines())


def test_turn_config_tls_needs_both_files(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("c")
    key.write_text("k")
    text = launch.render_config(launch.TurnSettings(user="a", password="b", tls_cert=str(cert), tls_key=str(key)),
                                tmp_path)
    assert f"cert={cert}" in text and f"pkey={key}" in text and "tls-listening-port=5349" in text
    assert "no-tls" not in text
    with pytest.raises(launch.LaunchError, match="both"):
        launch.TurnSettings(user="a", password="b", tls_cert=str(cert)).validate()
    with pytest.raises(launch.LaunchError, match="no such file"):
        launch.TurnSettings(user="a", password="b", tls_cert="/nope.pem", tls_key=str(key)).validate()


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"user": "a:b"}, "must not contain ':'"),
    ({"password": "x\nno-auth"}, "line break"),
    ({"password": ""}, "'password' is empty"),
    ({"port": 0}, "'port' is out of range"),
    ({"min_port": 60000, "max_port": 50000}, "relay range is empty"),
])
def test_turn_settings_reject_what_coturn_would_misread(kwargs, error):
    settings = launch.TurnSettings(**{"user": "agent", "password": "pw", **kwargs})
    with pytest.raises(launch.LaunchError, match=error):
        settings.validate()


def test_turn_settings_never_show_the_password():
    assert "hunter2" not in repr(launch.TurnSettings(user="a", password="hunter2"))


def test_turn_launcher_cli_writes_a_private_config_and_masks_the_password(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "turn" / "launch.py"), "--render-only", "--print-config",
         "--state-dir", str(tmp_path), "--port", "3480"],
        capture_output=True, text=True, timeout=BOUND,
        env={"PATH": os.environ["PATH"], "TURN_USER": "agent", "TURN_PASSWORD": "hunter2"})
    assert result.returncode == 0, result.stderr
    config = tmp_path / "turnserver.conf"
    assert "hunter2" not in result.stdout and "user=agent:********" in result.stdout
    assert "user=agent:hunter2" in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


def test_turn_launcher_cli_names_missing_credentials(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "turn" / "launch.py"), "--render-only"],
                            capture_output=True, text=True, timeout=BOUND, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 2 and "TURN credentials missing" in result.stderr


@pytest.mark.peer
def test_turn_launcher_background_mode_waits_for_stun_and_returns(tmp_path):
    port = free_port(udp=True)
    result = subprocess.run(
        [sys.executable, str(REPO / "turn" / "launch.py"), "--port", str(port), "--user", "agent:pw",
         "--state-dir", str(tmp_path), "--log-file", str(tmp_path / "turn.log")],
        capture_output=True, text=True, timeout=30)
    pid = int((tmp_path / "turnserver.pid").read_text()) if (tmp_path / "turnserver.pid").exists() else None
    try:
        assert result.returncode == 0, result.stderr
        assert f"ready, pid {pid}" in result.stdout
        assert launch.stun_binding("127.0.0.1", port)[0] == "127.0.0.1"
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)


# --- the Webphone's own stack against the Kamailio fixture -----------------------------------------

SIPJS_PAGE = """<!doctype html><html><head><script src="/sip.min.js"></script></head><body><script>
function report(text) { fetch('/result', {method: 'POST', body: text}); }
try {
  var ua = new SIP.UA({uri: 'sip:%(ext)s@%(domain)s', transportOptions: {wsServers: ['%(ws)s']},
    authorizationUser: '%(ext)s', password: '%(password)s', hackIpInContact: true, register: true,
    log: {builtinEnabled: false}});
  ua.on('registered', function () { report('registered'); });
  ua.on('registrationFailed', function (response, cause) { report('failed ' + cause); });
} catch (e) { report('error ' + e); }
</script></body></html>"""


async def test_sipjs_in_chromium_registers_with_the_kamailio_fixture(chromium, kamailio):
    from aiohttp import web

    results: asyncio.Queue[str] = asyncio.Queue()
    (ext,) = kamailio.allocate(1)
    page = SIPJS_PAGE % {"ext": ext, "domain": kamailio.domain, "ws": kamailio.ws_url,
                         "password": kamailio.users[ext]}

    async def result(request: web.Request) -> web.Response:
        results.put_nowait(await request.text())
        return web.Response(text="ok")

    async def index(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def sipjs(_: web.Request) -> web.FileResponse:
        return web.FileResponse(chromium.sipjs_path)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/sip.min.js", sipjs)
    app.router.add_post("/result", result)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    browser = chromium.launch(f"http://127.0.0.1:{port}/")
    try:
        outcome = await asyncio.wait_for(results.get(), 30)
        assert outcome == "registered", f"{outcome}; browser log {browser.log_path}"
    finally:
        browser.stop()
        await runner.cleanup()


def test_docker_compose_turn_service_matches_the_launcher():
    import yaml  # PyYAML comes with the test extra (schemathesis)

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    turn = compose["services"]["turn"]
    assert turn["network_mode"] == "host" and turn["build"]["context"] == "./turn"
    launcher_source = (REPO / "turn" / "launch.py").read_text()
    for name in turn["environment"]:
        assert f'"{name}"' in launcher_source, f"{name} is set by docker-compose but never read by turn/launch.py"
    dockerfile = (REPO / "turn" / "Dockerfile").read_text()
    assert "FROM coturn/coturn" in dockerfile and '"/opt/turn/launch.py", "--foreground"' in dockerfile
    for copied in re.search(r"^COPY (.+) /opt/turn/$", dockerfile, re.M).group(1).split():
        assert (REPO / "turn" / copied).is_file()


def test_kamailio_hands_each_test_its_own_extensions(tmp_path):
    """The shared instance's allocator: never the same extension twice, never the named 1001..1020."""
    kam = Kamailio(tmp_path, n_users=44)
    first, second = kam.allocate(2), kam.allocate(20)
    assert first == ["1021", "1022"] and set(first).isdisjoint(second) and len(set(second)) == 20
    assert all(kam.users[ext] == f"pw{ext}" for ext in first + second)
    with pytest.raises(PeerStartError, match="only 2 unused extension"):
        kam.allocate(3)
