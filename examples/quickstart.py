"""Quickstart: a local host built from Connection.from_socket, then concurrent sends.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import time

import gevent
import gevent.server
from iso8583.specs import default as spec

import geviso


def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
    """A tiny host: answer every request with its response MTI and code 00."""
    conn.reply(dict(doc, t=geviso.codec.response_mti(doc["t"]), **{"39": "00"}))  # bitmaps are rebuilt


def handle(sock, address) -> None:  # type: ignore[no-untyped-def]
    geviso.Connection.from_socket(sock, spec, on_inbound=answer).wait_closed()


def main(count: int = 500) -> None:
    host = gevent.server.StreamServer(("127.0.0.1", 0), handle)
    host.start()
    print(f"host listening on 127.0.0.1:{host.server_port}")
    with geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=5.0) as conn:
        echo = conn.send({"t": "0800", "70": "301"})
        print(f"echo answered: mti={echo['t']} code={echo['39']} stan={echo['11']}")
        started = time.monotonic()
        jobs = [gevent.spawn(conn.send, {"t": "0200", "3": "000000", "4": "%012d" % (i + 1)}) for i in range(count)]
        gevent.joinall(jobs)
        elapsed = time.monotonic() - started
        ok = [j.value for j in jobs if j.successful()]
        matched = sum(1 for i, j in enumerate(jobs) if j.successful() and j.value["4"] == "%012d" % (i + 1))
        print(f"{count} concurrent sends on one link: {len(ok)} answered, {matched} matched to their own "
              f"request, in {elapsed:.3f}s ({count / elapsed:,.0f} msg/s)")
    host.stop()


if __name__ == "__main__":
    main()
