"""Shared fixtures: a real echo host on loopback, and TLS certificates made per run."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import gevent
import gevent.server
import pytest
import trustme
from iso8583.specs import default as default_spec

import geviso


def respond(doc: dict[str, str], **fields: str) -> dict[str, str]:
    """The response to ``doc``: response MTI, same fields, code 00 unless given."""
    response = {k: v for k, v in doc.items() if k not in ("p", "1")}
    response["t"] = geviso.codec.response_mti(doc["t"])
    response.setdefault("39", "00")
    response.update(fields)
    return response


class EchoHost:
    """A loopback host made of server-side Connections; answers by ``answer(conn, doc)``.

    The default answer replies at once with :func:`respond`. Tests swap ``answer`` to
    delay, reorder, drop or close.
    """

    def __init__(self, spec: Any = default_spec, ssl_context: Any = None, **options: Any) -> None:
        self.spec = spec
        self.options = options
        self.answer: Callable[[geviso.Connection, dict[str, str]], None] = lambda c, d: c.reply(respond(d))
        self.links: list[geviso.Connection] = []
        self.received: list[dict[str, str]] = []
        tls = {"ssl_context": ssl_context} if ssl_context is not None else {}
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle, **tls)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_port)

    def _inbound(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        self.received.append(doc)
        self.answer(conn, doc)

    def _handle(self, sock: Any, address: Any) -> None:
        options = {"on_inbound": self._inbound, **self.options}
        conn = geviso.Connection.from_socket(sock, self.spec, **options)
        self.links.append(conn)
        conn.wait_closed()

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for link in self.links:
            link.fail("host stopped")


@pytest.fixture
def echo_host() -> Iterator[EchoHost]:
    host = EchoHost()
    yield host
    host.stop()


@dataclass
class Certs:
    """Files of a CA made for this run, a server certificate for 127.0.0.1/localhost,
    and a client certificate; plus a second, unrelated CA."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca: str
    authority: Optional[trustme.CA] = None


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    path: Path = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client@geviso.test")
    other = trustme.CA()

    def write(name: str, blob: Any) -> str:
        target = path / name
        blob.write_to_path(str(target))
        return str(target)

    return Certs(
        ca=write("ca.pem", ca.cert_pem),
        server_cert=write("server.pem", server.cert_chain_pems[0]),
        server_key=write("server.key", server.private_key_pem),
        client_cert=write("client.pem", client.cert_chain_pems[0]),
        client_key=write("client.key", client.private_key_pem),
        other_ca=write("other-ca.pem", other.cert_pem),
        authority=ca,
    )


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` cooperatively until it is true or ``timeout`` passes."""
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.01)
        return True
    return bool(predicate())


class RawPeer:
    """A loopback TCP peer that hands each accepted socket to ``handle(sock)``: for
    bytes no Connection would send (garbage headers, stalls, abrupt closes)."""

    def __init__(self, handle: Callable[[Any], None]) -> None:
        self.handle = handle
        self.socks: list[Any] = []
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_port)

    def _handle(self, sock: Any, address: Any) -> None:
        self.socks.append(sock)
        self.handle(sock)

    def stop(self) -> None:
        self.server.stop(timeout=1)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def raw_peer() -> Iterator[Callable[[Callable[[Any], None]], RawPeer]]:
    """``raw_peer(handle)`` starts a :class:`RawPeer`; all are stopped after the test."""
    peers: list[RawPeer] = []

    def start(handle: Callable[[Any], None]) -> RawPeer:
        peer = RawPeer(handle)
        peers.append(peer)
        return peer

    yield start
    for peer in peers:
        peer.stop()


class Held:
    """An EchoHost ``answer`` that holds every request until the test answers it."""

    def __init__(self) -> None:
        self.items: list[tuple[geviso.Connection, dict[str, str]]] = []

    def __call__(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        self.items.append((conn, doc))

    def release(self, *, reverse: bool = False, **fields: str) -> int:
        """Answer every held request (last first with ``reverse``); how many were answered."""
        items, self.items = self.items, []
        for conn, doc in reversed(items) if reverse else items:
            conn.reply(respond(doc, **fields))
        return len(items)


@pytest.fixture
def held(echo_host: EchoHost) -> Held:
    """Make ``echo_host`` hold requests until ``held.release()``."""
    holder = Held()
    echo_host.answer = holder
    return holder


def loops_ended(conn: geviso.Connection, timeout: float = 5.0) -> bool:
    """True once the reader, writer and timer greenlets of ``conn`` have all ended."""
    return wait_until(lambda: all(g.dead for g in conn._greenlets), timeout)


@pytest.fixture
def links() -> Iterator[Callable[..., geviso.Connection]]:
    """``links(address, connect=True, **options)``: a client Connection (default spec,
    5 s send timeout) failed at teardown if still open; its loops must have ended."""
    made: list[geviso.Connection] = []

    def make(address: Any, connect: bool = True, spec: Any = default_spec, **options: Any) -> geviso.Connection:
        options.setdefault("send_timeout", 5.0)
        conn = geviso.Connection(address, spec, **options)
        made.append(conn)
        return conn.connect() if connect else conn

    yield make
    for conn in made:
        if conn.state not in ("new", "closed"):
            conn.fail("test over")
    for conn in made:
        assert loops_ended(conn), f"{conn!r} left greenlets running"


@pytest.fixture(autouse=True)
def _geviso_log_levels() -> Iterator[None]:
    """Give every test geviso's logger levels as they were: a test that runs the CLI
    in-process (which quiets ``geviso.connection``) must not hide later tests' logs."""
    import logging

    def levels() -> dict[str, int]:
        return {
            name: logger.level
            for name, logger in logging.root.manager.loggerDict.items()
            if name.startswith("geviso") and isinstance(logger, logging.Logger)
        }

    before = levels()
    yield
    for name in levels():
        logging.getLogger(name).setLevel(before.get(name, logging.NOTSET))


def outcome_of(send: Callable[..., Any], doc: dict[str, str], **options: Any) -> Any:
    """``send(doc, **options)``'s response, or the GevisoError it raised (returned): for
    sends run in greenlets whose outcomes a test checks afterwards."""
    try:
        return send(doc, **options)
    except geviso.GevisoError as exc:
        return exc


def stateful_tests(machine: Any, examples: int, *, steps: int) -> tuple[type, type]:
    """A hypothesis state machine's test case for ``make test`` (``examples`` runs) and a
    ``slow`` one for ``make soak`` (``GEVISO_SOAK_EXAMPLES``, default 200)."""
    from hypothesis import HealthCheck, settings

    def make(runs: int) -> settings:
        return settings(
            max_examples=runs,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )

    fast = type(f"Test{machine.__name__}", (machine.TestCase,), {"settings": make(examples)})
    soak = type(f"Test{machine.__name__}Soak", (machine.TestCase,), {"settings": make(_soak_examples())})
    return fast, pytest.mark.slow(soak)


def _soak_examples() -> int:
    import os

    return int(os.environ.get("GEVISO_SOAK_EXAMPLES", "200"))
