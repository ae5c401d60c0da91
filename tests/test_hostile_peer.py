"""A hostile peer on a real socket: card data in every field a log line might quote,
newlines and terminal escapes in its fields, floods of bad frames, stray responses and
unanswerable requests. Whatever it sends, geviso's log lines (DEBUG included) and stderr
hold no PAN, track data or PIN block, no raw control character, and the peer drives a
bounded number of lines above DEBUG, not one per message."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from conftest import wait_until
from gevent import socket
from iso8583.specs import default as spec

import geviso
from geviso.codec import Codec

pytestmark = pytest.mark.timeout(60)

PAN = "4111111111111111"
TRACK2 = PAN + "=25121010000012345678"
TRACK1 = "B" + PAN + "^CARDHOLDER/JANE^2512101000000000000"
PIN = "A1B2C3D4E5F60718"
FORGED = "\nCRITICAL forged line \x1b[31m"
#: Each kind of bad message a peer sends this many times.
FLOOD = 150
#: Lines above DEBUG a whole flood may cause (one per kind and link, and their summaries).
MAX_LOUD_LINES = 8

CODEC = Codec(spec)
FRAMING = geviso.framing.binary(2)


def frame(doc: dict[str, Any]) -> bytes:
    return FRAMING.encode(CODEC.encode(doc))


def with_card_data(mti: str, stan: int) -> dict[str, Any]:
    """A message with card data wherever a field can hold it, and forged-line text."""
    return {
        "t": mti,
        "2": PAN,
        "11": "%06d" % stan,
        "35": TRACK2,
        "41": "T\n\x1b[2J12",
        "43": ("AT " + PAN + FORGED).ljust(40)[:40],
        "45": TRACK1,
        "48": PAN + " " + TRACK2 + FORGED,
        "52": PIN,
    }


def hostile_flood() -> bytes:
    """Requests the host cannot answer, stray responses, then undecodable frames."""
    wire = bytearray()
    for stan in range(1, FLOOD + 1):
        wire += frame(with_card_data("0\n00", stan))  # an MTI no answer can be built for
        wire += frame(with_card_data("0210", stan))  # a response nobody asked for
    return bytes(wire)


@pytest.fixture
def captured(caplog: Any, capfd: Any) -> Iterator[Any]:
    caplog.set_level(logging.DEBUG, logger="geviso")
    yield caplog


def check_logs(caplog: Any, capfd: Any) -> None:
    records = [r for r in caplog.records if r.name.startswith("geviso")]
    assert records, "nothing was logged: the check would prove nothing"
    err = capfd.readouterr().err
    for text in [r.getMessage() for r in records] + [err]:
        assert PAN not in text and "=2512101" not in text and "CARDHOLDER" not in text, text
        assert "a1b2c3d4" not in text.lower(), text
    for record in records:
        line = record.getMessage()
        assert "\n" not in line and "\x1b" not in line, line
    loud = [r.getMessage() for r in records if r.levelno > logging.DEBUG]
    assert len(loud) <= MAX_LOUD_LINES, loud
    assert "Traceback" not in err, err


def test_a_hostile_client_cannot_put_card_data_or_forged_lines_in_the_host_logs(captured, capfd):
    host = geviso.MockHost(("127.0.0.1", 0), spec, rules=[{"match": {"mti": "0100"}, "delay_ms": 50}])
    host.start()
    try:
        sock = socket.create_connection(host.address)
        sock.sendall(hostile_flood())
        sock.sendall(frame(with_card_data("0100", 999_999)))  # answered late, from a greenlet of its own
        assert wait_until(lambda: host.stats.received == FLOOD + 1 and host.stats.unmatched == FLOOD, timeout=20)
        sock.settimeout(10)
        assert sock.recv(4096)  # the 0110
        sock.sendall(FRAMING.encode(b"\xff" * 40) * FLOOD)  # then frames that do not decode
        assert wait_until(lambda: sum(link.stats.errors for link in host.connections) >= FLOOD, timeout=20)
        sock.close()
        assert wait_until(lambda: not host.connections, timeout=20)
    finally:
        host.stop(timeout=2)
    check_logs(captured, capfd)


def test_a_hostile_host_cannot_put_card_data_or_forged_lines_in_the_client_logs(captured, capfd):
    flood = hostile_flood()

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        conn.write(flood)  # junk and stray responses first...
        conn.write(FRAMING.encode(b"\xff" * 40) * FLOOD)  # ...frames that do not decode...
        conn.reply({**with_card_data("0810", int(doc["11"])), "39": "00"})  # ...then the answer

    with geviso.Server(("127.0.0.1", 0), spec, on_inbound=answer) as server:
        with geviso.Connection(server.address, spec, send_timeout=10) as conn:
            response = conn.send({"t": "0800", "70": "301"})
            assert response["2"] == PAN  # the caller gets the data; the logs never do
            assert wait_until(lambda: conn.stats.unmatched == FLOOD and conn.stats.errors >= FLOOD, timeout=20)
            assert conn.stats.inbound == FLOOD  # the unanswerable "requests", with no on_inbound
    check_logs(captured, capfd)


def test_a_forwarding_greenlet_that_dies_never_prints_its_message(captured, capfd, tmp_path):
    """A strategy that raises quoting the message: the store and forward attempt's
    greenlet dies, and gevent would print it with its arguments (the entry, PAN included)."""

    def strategy(links: Any, doc: dict[str, str]) -> Any:
        raise ValueError(f"cannot route {doc}")

    with geviso.MockHost(("127.0.0.1", 0), spec) as host:
        pool = geviso.Pool(lambda a: geviso.Connection(a, spec, send_timeout=5), [host.address], strategy=strategy)
        with pool.connect():
            saf = geviso.StoreAndForward(pool, str(tmp_path / "saf.db"), retry_wait=0.05, timeout=1)
            try:
                saf.put({"t": "0420", "2": PAN, "35": TRACK2, "4": "000000001000"})
                assert wait_until(lambda: saf.stats.attempts >= 1 and not saf._in_flight, timeout=10)
            finally:
                saf.close(timeout=2)
    gevent.sleep(0)
    check_logs(captured, capfd)
    assert any("ValueError" in r.getMessage() for r in captured.records)  # reported, masked
