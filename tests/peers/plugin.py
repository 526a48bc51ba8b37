"""pytest plugin with the real-peer fixtures; loaded by tests/conftest.py (`pytest_plugins`).

Every peer gets a free loopback port, a generated config and a log file under
the test's tmp dir (`pytest --basetemp=DIR` to keep them somewhere known),
is probed by a real connection before the test runs, and is stopped by PID at
teardown. A peer that cannot start fails the test with its log tail; nothing
is ever skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .chromium import Chromium
from .coturn import Coturn
from .kamailio import Kamailio
from .mariadb import MariaDB
from .process import PeerStartError, fail, log_tail


@pytest.fixture(scope="session")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    """coturn with long-term credentials and loopback peers allowed, for the whole session."""
    turn = Coturn(tmp_path_factory.mktemp("coturn"))
    try:
        turn.start()
    except PeerStartError as exc:
        turn.stop()
        fail("coturn", str(exc), turn.log_path)
    yield turn
    turn.stop()


def _start_kamailio(kam: Kamailio) -> Kamailio:
    try:
        kam.start()
    except PeerStartError as exc:
        kam.stop()
        fail("kamailio", str(exc), kam.log_path, extra=f"config: {kam.config_path}")
    return kam


#: Users of the session's shared Kamailio: enough for every test to take its own extensions.
SHARED_USERS = 200


@pytest.fixture(scope="session")
def kamailio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kamailio]:
    """A shared registrar/proxy with users 1001..1200 (passwords pw1001..). Do not stop it in a test.

    Take extensions with ``kamailio.allocate(n)``: each test gets its own, never used by another."""
    kam = _start_kamailio(Kamailio(tmp_path_factory.mktemp("kamailio"), n_users=SHARED_USERS))
    yield kam
    kam.stop()


@pytest.fixture
def kamailio_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Kamailio]]:
    """Start private Kamailio instances a test may stop, restart or fill with up to 1000 users.

    `kamailio_factory(users=None, n_users=20, domain="127.0.0.1", children=2, ...)` returns a
    started instance; all of them are stopped at teardown.
    """
    started: list[Kamailio] = []

    def make(users: dict[str, str] | None = None, n_users: int = 20, **kwargs) -> Kamailio:
        kam = Kamailio(tmp_path_factory.mktemp("kamailio"), users=users, n_users=n_users, **kwargs)
        started.append(kam)
        return _start_kamailio(kam)

    make.started = started  # type: ignore[attr-defined]  # for the failure report below
    yield make
    for kam in started:
        kam.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariaDB]:
    """A private mariadbd with database `softphone` and a password user; `.create_database(name)`."""
    db = MariaDB(tmp_path_factory.mktemp("mariadb"))
    try:
        db.start()
    except PeerStartError as exc:
        db.stop()
        fail("mariadb", str(exc), db.log_path)
    yield db
    db.stop()


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    """Headless Chromium and the SIP.js 0.15.11 bundle (installed by scripts/test); browsers
    started with `.launch(url)` are stopped at the end of the session."""
    browser = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        browser.check()
    except PeerStartError as exc:
        fail("chromium", str(exc))
    yield browser
    browser.stop_all()


PEER_FIXTURES = ("coturn", "kamailio", "kamailio_factory", "mariadb")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """When a test that used a peer fails, show where each peer's log is, with its last lines."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "setup":
        return
    funcargs = getattr(item, "funcargs", {})
    peers = []
    for name in PEER_FIXTURES:
        value = funcargs.get(name)
        peers += getattr(value, "started", []) if name == "kamailio_factory" else [value] if value else []
    lines = []
    for peer in peers:
        lines += [f"{peer!r}", f"--- {peer.log_path} (last lines) ---", log_tail(peer.log_path, 15), ""]
    if lines:
        report.sections.append(("peer logs", "\n".join(lines)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a real peer `peer`, so `-m "not peer"` runs only the fast rest,
    and every test that uses Chromium `browser` (`-m "not browser"` leaves them out)."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & {*PEER_FIXTURES, "chromium"}:
            item.add_marker(pytest.mark.peer)
        if "chromium" in fixtures:
            item.add_marker(pytest.mark.browser)
