"""The ``burst`` workload: N concurrent sends on one link, each from a raw greenlet."""

from __future__ import annotations

import itertools
import time
from typing import Callable

import gevent
import gevent.event
from greenlet import greenlet as RawGreenlet

from ..codec import Spec
from ..connection import Connection
from ..framing import by_name as framing_by_name
from ..stan import StanGenerator
from .common import REQUEST_0800, SEND_TIMEOUT, Result, _Collector, _warm_up, burst_sender


def _burst_rounds(size: int, total: int) -> int:
    """How many bursts of ``size`` to run back to back, so each size sends ``total``
    messages, as the largest burst does. One burst of 1,000 lasts about 20 ms; a full
    collection of the cyclic GC (about 5 ms) falls inside it or not by chance, and over
    100 bursts each size pays the GC its share."""
    return max(1, total // size)


def run_burst(address: tuple[str, int], spec: Spec, framing_name: str, size: int, *, rounds: int = 1) -> Result:
    """``rounds`` bursts of ``size`` concurrent sends of 0800/11, back to back on one link,
    timed end to end; each send from a raw greenlet of its own (:func:`_time_bursts`)."""
    latencies: list[float] = []
    outcome = {"matched": 0, "failed": 0}
    with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:
        _warm_up(conn, REQUEST_0800, 200)

        one = burst_sender(conn, latencies, outcome)
        seconds, collector = _time_bursts(one, size, rounds)
        left = conn.in_flight
    return Result("burst", f"burst {size:,}", size * rounds, seconds, latencies, outcome["matched"],
                  outcome["failed"], bursts=rounds, in_flight_after=left, **collector.extra())


def run_spawn(size: int, *, rounds: int = 1) -> Result:
    """The burst's harness alone: the same greenlets, each blocking once (one trip through
    the hub, as a send waiting for its answer) and ending. What a greenlet per send
    costs without geviso: the baseline the burst's own share is measured against, as
    ``transport`` is for the connection overhead."""
    seconds, collector = _time_bursts(lambda _stan: gevent.sleep(0), size, rounds)
    return Result("burst", f"greenlets {size:,}", size * rounds, seconds, [], size * rounds, bursts=rounds,
                  **collector.extra())


def _time_bursts(one: Callable[[str], None], size: int, rounds: int) -> tuple[float, _Collector]:
    """Seconds for ``rounds`` bursts back to back, each of ``size`` raw greenlets running
    ``one(stan)`` (a STAN each, unique in the burst) and waited for; and the GC's part.

    The hub switches into each new greenlet at once, from one loop callback a burst, as
    ``gevent.spawn_raw`` does from a callback each: the goroutine moov's benchmark starts
    per send, without ``spawn_raw``'s callback, bound method and attribute dict per
    greenlet (the harness's objects, which the cyclic GC would walk too).
    """
    hub = gevent.get_hub()
    stans = list(itertools.islice(StanGenerator(), size))
    finished = gevent.event.Event()
    left = [0]

    def sender(stan: str) -> None:
        try:
            one(stan)
        finally:
            left[0] -= 1
            if not left[0]:
                finished.set()

    def start() -> None:
        for stan in stans:
            RawGreenlet(sender, hub).switch(stan)

    with _Collector() as collector:
        started = time.perf_counter()
        for _ in range(rounds):
            left[0] = size
            finished.clear()
            hub.loop.run_callback(start)
            finished.wait()
        seconds = time.perf_counter() - started
    return seconds, collector
