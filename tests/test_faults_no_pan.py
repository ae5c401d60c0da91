"""No PAN, track data or PIN block in any output, whatever goes wrong.

The fault scenarios run again with card data in every message and every log record at
DEBUG captured on the root logger (formatted with tracebacks, as a real handler would
write them), plus stderr (gevent prints greenlets that die). Then: no full test PAN, no
track data and no PIN block in any record, any error text or repr, or any stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from conftest import EchoHost, respond, wait_until
from faultproxy import FaultProxy
from iso8583.specs import default as spec
from test_faults_chaos import chaos

import geviso
import geviso.keepalive
from geviso.errors import GevisoError

PAN = "4111111111111111"
TRACK_PAN = "5500000000000004"
TRACK2 = TRACK_PAN + "=25121011234567890"
TRACK1 = "B" + TRACK_PAN + "^CARDHOLDER/TEST^2512101000000000"
PIN = "9A3F5C7E1B2D4F60"
CARD = {"2": PAN, "35": TRACK2, "45": TRACK1, "52": PIN}
SECRETS = (PAN, TRACK_PAN, "=2512101", "CARDHOLDER", PIN)
FRAMING = geviso.framing.binary(2, max_length=4096)


class Everything(logging.Handler):
    """Keeps every record as the text a real handler would write, traceback included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(self.format(record))


class Seen:
    """Every text that reached the outside: log records, errors, reprs."""

    def __init__(self) -> None:
        self.handler = Everything()
        self.texts: list[str] = []

    def error(self, exc: BaseException) -> None:
        """Keep what a user would print of an error (str and repr), down its geviso chain."""
        while isinstance(exc, GevisoError):
            self.texts += [str(exc), repr(exc)]
            exc = exc.__cause__  # type: ignore[assignment]
            if exc is None:
                break

    def objects(self, *objs: Any) -> None:
        self.texts += [repr(o) for o in objs]

    def leaks(self, extra: str = "") -> list[str]:
        texts = self.handler.texts + self.texts + [extra]
        return [f"{secret!r} in {text[:300]!r}" for text in texts for secret in SECRETS if secret in text.upper()]


@pytest.fixture
def seen(capfd: pytest.CaptureFixture[str]) -> Iterator[Seen]:
    watcher = Seen()
    root = logging.getLogger()
    level = root.level
    root.addHandler(watcher.handler)
    root.setLevel(logging.DEBUG)
    geviso_level = logging.getLogger("geviso").level
    logging.getLogger("geviso").setLevel(logging.DEBUG)
    try:
        yield watcher
    finally:
        root.removeHandler(watcher.handler)
        root.setLevel(level)
        logging.getLogger("geviso").setLevel(geviso_level)
    out, err = capfd.readouterr()
    assert watcher.handler.texts, "logging was captured"
    leaks = watcher.leaks(out + err)
    assert not leaks, leaks[:5]


def card(**fields: str) -> dict[str, str]:
    return {"t": "0200", "4": "000000001000", **CARD, **fields}


def test_chaos_with_card_data(seen: Seen) -> None:
    out = chaos(2000, concurrency=50, fields=CARD)
    assert not out.mismatches and not out.hangs
    assert sum(out.faults.values()) > 10


def test_every_proxy_fault_with_card_data(seen: Seen, echo_host: EchoHost) -> None:
    """Each fault once, on a link whose errors go to on_error (kept) and to the log."""
    echo_host.answer = lambda conn, doc: conn.reply(respond(doc))  # echoes every field back
    with FaultProxy(echo_host.address, framing=FRAMING, seed=3) as proxy:
        for kind in ("corrupt", "duplicate", "garbage", "oversize", "split", "merge", "latency", "fin", "rst", "stall"):
            check = geviso.keepalive.echo_handler(0.3)
            conn = geviso.Connection(
                proxy.address,
                spec,
                framing=FRAMING,
                send_timeout=0.5,
                read_timeout=0.3,
                on_read_timeout=check,
                on_error=seen.error,
            ).connect()
            proxy.arm(kind)
            for _ in range(3):
                try:
                    conn.send(card(**{"37": kind[:12].ljust(12, "0")}))
                except GevisoError as exc:
                    seen.error(exc)
            seen.objects(conn, conn.stats)
            conn.close(timeout=0.5)
        assert len(proxy.counts) == 10


def test_errors_about_a_message_never_show_it(seen: Seen, echo_host: EchoHost) -> None:
    conn = geviso.Connection(echo_host.address, spec, send_timeout=0.3, key=geviso.keys.fields("2", "11"))
    conn.connect()
    # Encoding errors: a PAN too long, track data that is not ASCII.
    for bad in ({"2": PAN + "1234"}, {"35": TRACK2 + "é"}, {"52": "not hex " + PIN}):
        with pytest.raises(geviso.EncodeError) as info:
            conn.send(card(**bad))
        seen.error(info.value)
    # A duplicate key that is made of the PAN.
    echo_host.answer = lambda c, d: None
    first = gevent.spawn(conn.send, card(**{"11": "000001"}))
    gevent.sleep(0.05)
    with pytest.raises(geviso.DuplicateKey) as dup:
        conn.send(card(**{"11": "000001"}))
    seen.error(dup.value)
    first.join()
    seen.error(first.exception)  # type: ignore[arg-type]
    # A late answer, after its send timed out.
    echo_host.answer = lambda c, d: gevent.spawn_later(0.5, c.reply, respond(d))
    with pytest.raises(geviso.SendTimeout) as late:
        conn.send(card(**{"11": "000002"}))
    seen.error(late.value)
    gevent.sleep(0.4)
    seen.objects(conn, conn.stats)
    conn.close(timeout=0.5)


def test_handlers_that_fail_with_card_data_in_their_error(seen: Seen, echo_host: EchoHost) -> None:
    def nosy(conn: geviso.Connection, doc: dict[str, str]) -> None:
        raise ValueError(f"cannot handle {doc}")

    conn = geviso.Connection(echo_host.address, spec, send_timeout=2, on_inbound=nosy).connect()
    # The host sends us requests (to on_inbound, which fails) and answers ours.
    assert wait_until(lambda: echo_host.links)
    host_link = echo_host.links[0]
    host_link.on_error = seen.error
    for stan in ("000101", "000102"):
        try:
            host_link.send(card(**{"11": stan}), timeout=0.2)
        except GevisoError as exc:
            seen.error(exc)
    conn.send(card())
    conn.close()


def test_sign_on_failing_with_card_data_in_a_pool(seen: Seen, echo_host: EchoHost) -> None:
    def sign_on(conn: geviso.Connection) -> None:
        raise RuntimeError(f"sign-on refused for {CARD}")

    pool = geviso.Pool(
        lambda address: geviso.Connection(address, spec, on_connect=sign_on),
        [echo_host.address],
        reconnect_wait=0.05,
        min_connections=0,
        on_error=seen.error,
    )
    pool.connect()
    gevent.sleep(0.2)
    with pytest.raises(geviso.NoConnections) as info:
        pool.send(card())
    seen.error(info.value)
    seen.objects(pool, pool.stats)
    pool.close()


def test_server_bad_input_with_card_data(seen: Seen) -> None:
    host = geviso.MockHost(("127.0.0.1", 0), spec, framing=FRAMING, on_error=seen.error)
    host.start()
    try:
        codec = geviso.codec.Codec(spec)
        good = codec.encode(card(**{"11": "000001"}))
        with gevent.socket.create_connection(host.address) as sock:
            sock.sendall(FRAMING.encode(b"\xff" + good))  # undecodable, card data inside
            sock.sendall(FRAMING.encode(good)[:-5])  # truncated
        with gevent.socket.create_connection(host.address) as sock:
            sock.sendall(good)  # no length header: the MTI is read as one
        assert wait_until(lambda: host.stats.received == 0 and len(seen.texts) >= 3)
        seen.objects(host, host.stats)
    finally:
        host.stop(timeout=1)
