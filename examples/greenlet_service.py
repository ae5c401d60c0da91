"""A minimal switch: geviso embedded in a service next to the service's own greenlets.

Terminals connect to a :class:`geviso.Server`. Each request they send goes upstream
through a :class:`geviso.Pool` under a STAN of the switch's own, and the answer goes
back to the terminal carrying the terminal's STAN. Terminal network management (0800)
is answered locally. A stats greenlet reports now and then. On SIGTERM or SIGINT the
switch stops taking terminals, lets the requests in flight finish, closes the
terminals' links and the pool, prints its totals and exits 0.

Run:  python examples/greenlet_service.py          (with an embedded upstream mock host)
      python examples/greenlet_service.py --listen 0.0.0.0:9583 --upstream h1:8583,h2:8583
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any, Optional

import gevent
import gevent.event
from iso8583.specs import default as spec

import geviso
from geviso import masking
from geviso.codec import response_mti

log = logging.getLogger("switch")

#: Field 39 when the upstream cannot answer: 91, issuer or switch inoperative.
ISSUER_UNAVAILABLE = "91"


def _local_answer(doc: dict[str, str], code: str) -> dict[str, str]:
    """The switch's own answer to ``doc`` with field 39 ``code`` (its stale bitmaps are rebuilt)."""
    return dict(doc, t=response_mti(doc["t"]), **{"39": code})


class Switch:
    """Forwards terminals' requests to the upstream hosts and their answers back."""

    def __init__(self, listen: str, upstreams: list[str], *, timeout: float = 5.0, report_every: float = 10.0) -> None:
        self.timeout = timeout
        self.report_every = report_every
        self.pool = geviso.Pool(self._upstream_link, upstreams, reconnect_wait=0.5, max_reconnect_wait=10.0,
                                min_connections=0)
        self.server = geviso.Server(listen, spec, on_inbound=self.forward, send_timeout=timeout)
        self.forwarded = self.answered = self.failed = 0
        self._active = 0
        self._idle = gevent.event.Event()
        self._idle.set()
        self._stop = gevent.event.Event()

    def _upstream_link(self, address: Any) -> geviso.Connection:
        return geviso.Connection(address, spec, send_timeout=self.timeout, on_connect=self._sign_on)

    @staticmethod
    def _sign_on(conn: geviso.Connection) -> None:
        if conn.send({"t": "0800", "70": "001"}).get("39") != "00":
            raise geviso.errors.Declined("sign-on refused")

    # -- the switching ----------------------------------------------------------------
    def forward(self, terminal: geviso.Connection, doc: dict[str, str]) -> None:
        """A terminal's request (in its own greenlet): answer it from upstream."""
        self._active += 1
        self._idle.clear()
        try:
            terminal.reply(self._answer(doc))
        except geviso.GevisoError as exc:
            log.info("cannot answer %s: %s", masking.describe(doc), type(exc).__name__)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    def _answer(self, doc: dict[str, str]) -> dict[str, str]:
        if doc["t"] in ("0800", "0820"):  # the terminal's own sign-on or echo
            return _local_answer(doc, "00")
        upstream = {k: v for k, v in doc.items() if k != "11"}  # the pool's link gives its own STAN
        self.forwarded += 1
        try:
            response = self.pool.send(upstream, timeout=self.timeout)
        except geviso.GevisoError as exc:
            # A real switch would also reverse a timed-out 0100/0200 upstream (0400).
            self.failed += 1
            log.debug("upstream failed for %s: %s", masking.describe(doc), type(exc).__name__)
            return _local_answer(doc, ISSUER_UNAVAILABLE)
        self.answered += 1
        return dict(response, **{"11": doc["11"]})  # back under the terminal's STAN

    # -- the service ------------------------------------------------------------------
    def _report(self) -> None:
        """The service's own greenlet, next to geviso's."""
        while not self._stop.wait(self.report_every):
            print(self.summary(), flush=True)

    def summary(self) -> str:
        return (f"terminals={len(self.server.connections)} forwarded={self.forwarded} answered={self.answered} "
                f"failed={self.failed} upstream_usable={len(self.pool.usable)}")

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT, then shut down cleanly."""
        self.pool.connect()
        self.server.start()
        host, port = self.server.address
        print(f"switch listening on {host}:{port}, upstream {', '.join(self.pool.addresses)}", flush=True)
        for signum in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(signum, self._stop.set)
        reporter = gevent.spawn(self._report)
        self._stop.wait()
        print("switch stopping", flush=True)
        self.server.close()  # no new terminals
        self._idle.wait(self.timeout + 1.0)  # requests in flight get their answers
        self.server.stop(timeout=2.0)
        self.pool.close()
        reporter.kill()
        print(f"switch stopped: {self.summary()}", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT for terminals (default 127.0.0.1:0)")
    parser.add_argument("--upstream", help="comma-separated HOST:PORT of the card hosts (default: embedded mock)")
    parser.add_argument("--timeout", type=float, default=5.0, help="upstream send timeout, seconds")
    parser.add_argument("--report-every", type=float, default=10.0, help="seconds between stats lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    mock: Optional[geviso.MockHost] = None
    if args.upstream:
        upstreams = [u.strip() for u in args.upstream.split(",") if u.strip()]
    else:
        mock = geviso.MockHost(("127.0.0.1", 0), spec)
        mock.start()
        upstreams = ["127.0.0.1:%d" % mock.address[1]]
    started = time.monotonic()
    Switch(args.listen, upstreams, timeout=args.timeout, report_every=args.report_every).run()
    if mock is not None:
        mock.stop()
    log.info("ran %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
