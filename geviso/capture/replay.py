"""Replay a capture as load: ``geviso replay capture.jsonl --host HOST:PORT``.

The recorded requests go out again with fresh STANs, RRNs and dates
(:class:`~geviso.capture.refresh.Refresher`), at the recorded pace times ``speed`` (``None``:
as fast as ``concurrency`` senders can, each sending its next request when its answer
arrives), on ``connections`` links. Each answer is compared with the recorded one
(:class:`~geviso.capture.refresh.DiffReport`). :func:`split` shares a capture between processes
by recorded link, so each link's requests (a sale and its reversal) stay in order.
"""

from __future__ import annotations

import itertools
import logging
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
import gevent.pool

from ..codec import Spec
from ..connection import Address, Connection, close_quietly, parse_address
from ..errors import ConfigurationError, GevisoError
from ..framing import Framing
from ..greenlets import QuietGreenlet
from ..options import seconds
from ..rrn import RrnGenerator
from ..stan import MAX_STAN, StanGenerator
from .format import Exchange
from .refresh import DiffReport, Refresher

log = logging.getLogger(__name__)

#: Seconds each replayed request waits for its answer unless told otherwise.
DEFAULT_TIMEOUT = 10.0


def parse_speed(text: str) -> Optional[float]:
    """``"max"`` as None, else a positive factor (``"2"``: twice the recorded pace)."""
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = 0.0
    if not speed > 0 or speed == float("inf"):
        raise ConfigurationError(f"speed {text!r}: give a positive number (1.0 = the recorded pace) or max")
    return speed


def split(exchanges: Sequence[Exchange], parts: int) -> list[list[Exchange]]:
    """``exchanges`` shared into ``parts`` lists: whole recorded links each, dealt in
    turn; by position when there are fewer links than parts. Order is kept in each."""
    if parts <= 1:
        return [list(exchanges)]
    links = list(dict.fromkeys(ex.link for ex in exchanges))
    if len(links) >= parts:
        owner = {link: i % parts for i, link in enumerate(links)}
        shares: list[list[Exchange]] = [[] for _ in range(parts)]
        for ex in exchanges:
            shares[owner[ex.link]].append(ex)
        return shares
    return [list(exchanges[i::parts]) for i in range(parts)]


def stan_start(node: int, nodes: int) -> int:
    """Where process ``node`` of ``nodes`` starts its STANs, so processes do not collide."""
    return (node * (MAX_STAN // max(1, nodes))) % MAX_STAN + 1


@dataclass
class ReplayResult:
    """What one replay did: counts, time, latencies, errors by type, and the diff."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    diff: DiffReport = field(default_factory=DiffReport)

    @property
    def rate(self) -> float:
        """Requests answered per second."""
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile of the latencies, in milliseconds."""
        ordered = sorted(self.latencies)
        if not ordered:
            return 0.0
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000.0

    def as_dict(self, latencies: bool = False) -> dict[str, Any]:
        """Plain data (JSON); with ``latencies``, every latency (to merge processes)."""
        data: dict[str, Any] = {
            "sent": self.sent,
            "answered": self.answered,
            "failed": self.failed,
            "seconds": round(self.seconds, 6),
            "rate": round(self.rate, 1),
            "p50_ms": round(self.quantile_ms(0.5), 3),
            "p99_ms": round(self.quantile_ms(0.99), 3),
            "errors": dict(self.errors),
            "diff": self.diff.as_dict(),
        }
        if latencies:
            data["latencies"] = self.latencies
        return data

    def merge(self, data: dict[str, Any]) -> None:
        """Add another process's :meth:`as_dict` (with latencies); seconds is the longest."""
        self.sent += int(data["sent"])
        self.answered += int(data["answered"])
        self.failed += int(data["failed"])
        self.seconds = max(self.seconds, float(data["seconds"]))
        self.latencies.extend(data.get("latencies", []))
        for name, n in data["errors"].items():
            self.errors[name] = self.errors.get(name, 0) + int(n)
        self.diff.merge(data["diff"])

    def summary(self) -> str:
        """One line: counts, rate and latency."""
        errors = ",".join(f"{k}:{v}" for k, v in sorted(self.errors.items())) or "-"
        return (f"{self.sent} requests in {self.seconds:.2f} s ({self.rate:,.0f}/s answered), {self.answered} "
                f"answered, {self.failed} failed (errors {errors}); latency p50 {self.quantile_ms(0.5):.2f} ms "
                f"p99 {self.quantile_ms(0.99):.2f} ms")


class Replayer:
    """Sends recorded requests to a host and compares the answers (module docstring)."""

    def __init__(
        self,
        address: Address,
        spec: Spec,
        *,
        framing: Optional[Framing] = None,
        tls: Optional[ssl.SSLContext] = None,
        server_hostname: Optional[str] = None,
        connections: int = 1,
        concurrency: int = 10,
        speed: Optional[float] = 1.0,
        timeout: float = DEFAULT_TIMEOUT,
        compare: Sequence[str] = (),
        node: int = 0,
        nodes: int = 1,
    ) -> None:
        if connections < 1 or concurrency < 1:
            raise ConfigurationError("connections and concurrency must be at least 1")
        if speed is not None and not speed > 0:
            raise ConfigurationError("speed must be positive (or None: as fast as possible)")
        self.address = parse_address(address)
        self.spec = spec
        self.framing = framing
        self.tls = tls
        self.server_hostname = server_hostname
        self.connections = connections
        self.concurrency = concurrency
        self.speed = speed
        self.timeout = seconds(timeout, "timeout", positive=True)
        self.compare = tuple(compare)
        self.refresher = Refresher(StanGenerator(stan_start(node, nodes)), RrnGenerator(node))

    def run(self, exchanges: Sequence[Exchange], *, start_at: Optional[float] = None) -> ReplayResult:
        """Replay ``exchanges`` (in recorded order); ``start_at`` (Unix seconds) is when the
        first goes out at a recorded pace (processes sharing one start)."""
        result = ReplayResult(diff=DiffReport(self.compare))
        links = [self._connect() for _ in range(self.connections)]
        try:
            if start_at is not None:
                gevent.sleep(max(0.0, start_at - time.time()))
            started = time.perf_counter()
            if self.speed is None:
                self._closed_loop(exchanges, links, result)
            else:
                self._paced(exchanges, links, result, self.speed)
            result.seconds = time.perf_counter() - started
        finally:
            for conn in links:
                close_quietly(conn, 2.0)
        return result

    def _connect(self) -> Connection:
        conn = Connection(self.address, self.spec, framing=self.framing, tls=self.tls,
                          server_hostname=self.server_hostname, send_timeout=self.timeout)
        return conn.connect()

    def _one(self, conn: Connection, exchange: Exchange, result: ReplayResult) -> None:
        """Send one recorded request, time it, compare its answer."""
        request = self.refresher.refresh(exchange.request, exchange.time)
        result.sent += 1
        started = time.perf_counter()
        answer: Optional[dict[str, str]] = None
        try:
            answer = conn.send(request, timeout=self.timeout)
        except GevisoError as exc:
            result.failed += 1
            name = type(exc).__name__
            result.errors[name] = result.errors.get(name, 0) + 1
        else:
            result.latencies.append(time.perf_counter() - started)
            result.answered += 1
        result.diff.check(exchange.answer, answer, request)

    def _closed_loop(self, exchanges: Sequence[Exchange], links: list[Connection], result: ReplayResult) -> None:
        feed: Iterator[Exchange] = iter(exchanges)
        one = self._one

        def sender(conn: Connection) -> None:
            for exchange in feed:
                one(conn, exchange, result)

        senders = [gevent.spawn(sender, links[i % len(links)]) for i in range(self.concurrency)]
        gevent.joinall(senders, raise_error=True)

    def _paced(self, exchanges: Sequence[Exchange], links: list[Connection], result: ReplayResult,
               speed: float) -> None:
        if not exchanges:
            return
        first = exchanges[0].time
        begun = time.monotonic()
        pool = gevent.pool.Pool(self.concurrency, greenlet_class=QuietGreenlet)  # reprs: no message
        turn = itertools.cycle(links)
        for exchange in exchanges:
            due = begun + max(0.0, exchange.time - first) / speed
            wait = due - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            pool.spawn(self._one, next(turn), exchange, result)  # waits while ``concurrency`` are in flight
        pool.join(raise_error=True)


__all__ = ["DEFAULT_TIMEOUT", "ReplayResult", "Replayer", "parse_speed", "split", "stan_start"]
