"""Prometheus metrics summed over gunicorn's workers: prometheus_client's multiprocess mode.

Each worker is a process with its own counters, so a scrape answered by one worker
would see that worker alone. ``gunicorn.conf.py`` points ``PROMETHEUS_MULTIPROC_DIR`` at
an empty folder before the workers start; each worker then records into files there
(prometheus_client's metrics do that by themselves in this mode), and ``/metrics`` adds
up every worker's files. Every scrape counts every request once, whichever worker
answers it.

Recorded: ``geviso_requests_total{name,mti,outcome}`` and
``geviso_request_duration_seconds{name}`` by a tracing listener on each link, and the
gauges ``geviso_connections{name,state}``, ``geviso_in_flight{name}`` and
``geviso_pool_up{name}`` summed over the live workers, each worker refreshing its own
every second and before each scrape it answers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Optional

import gevent
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

import geviso
from geviso.metrics import connection_states, in_flight
from geviso.tracing import CallbackListener

REQUESTS = Counter("geviso_requests", "Finished sends by request MTI and outcome.", ["name", "mti", "outcome"])
DURATION = Histogram("geviso_request_duration_seconds", "Time from send() to its outcome.", ["name"])
IN_FLIGHT = Gauge("geviso_in_flight", "Requests sent and not yet answered.", ["name"], multiprocess_mode="livesum")
CONNECTIONS = Gauge(
    "geviso_connections", "The pools' addresses by state, over the live workers.", ["name", "state"],
    multiprocess_mode="livesum",
)
POOL_UP = Gauge("geviso_pool_up", "Live workers whose pool has a usable link.", ["name"], multiprocess_mode="livesum")
#: Every state a pool's address can be in, so a state no address is in any more reads 0.
STATES = ("up", "connecting", "waiting", "closed")
REFRESH_EVERY = 1.0


def enabled() -> bool:
    """True when prometheus_client runs in multiprocess mode (the folder is set)."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def listener(name: str) -> CallbackListener:
    """A link listener that counts and times every send under ``name``."""

    def start(conn: geviso.Connection, request: Mapping[str, str]) -> tuple[str, float]:
        return request.get("t", ""), time.perf_counter()

    def end(token: tuple[str, float], response: Optional[Mapping[str, str]], error: Optional[BaseException]) -> None:
        mti, started = token
        REQUESTS.labels(name, mti, "ok" if error is None else type(error).__name__).inc()
        DURATION.labels(name).observe(time.perf_counter() - started)

    return CallbackListener(start, end)


def refresh(pool: geviso.Pool, name: str) -> None:
    """Set this worker's gauges from its pool."""
    states = connection_states(pool)
    for state in sorted(set(STATES) | set(states)):
        CONNECTIONS.labels(name, state).set(states.get(state, 0))
    IN_FLIGHT.labels(name).set(in_flight(pool))
    POOL_UP.labels(name).set(1 if pool.is_up else 0)


def watch(pool: geviso.Pool, name: str) -> gevent.Greenlet:
    """Refresh the gauges every second until the pool closes."""

    def loop() -> None:
        while not pool.closed:
            refresh(pool, name)
            gevent.sleep(REFRESH_EVERY)
        refresh(pool, name)

    return gevent.spawn(loop)


def scrape() -> tuple[bytes, str]:
    """The text of every live and dead worker's metrics, summed: (body, content type)."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def worker_exited(pid: int) -> None:
    """Drop a dead worker's gauges (its counters still count: the requests happened)."""
    multiprocess.mark_process_dead(pid)


