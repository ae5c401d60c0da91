"""The ``closed-loop`` workload: C senders on one link, each sending on each answer."""

from __future__ import annotations

import gc
import itertools
import time
from typing import Any, Optional

import gevent

from ..codec import Spec, response_mti
from ..connection import Connection
from ..framing import by_name as framing_by_name
from .common import REQUEST_0200, SEND_TIMEOUT, Result, _cpu_seconds, _matches, _warm_up


def run_closed_loop(address: tuple[str, int], spec: Spec, framing_name: str, concurrency: int, messages: int,
                    host_pid: Optional[int] = None) -> Result:
    """``concurrency`` senders on one link, each sending its next 0200 on each answer."""
    latencies: list[float] = []
    outcome = {"matched": 0, "failed": 0}
    answer_mti = response_mti(REQUEST_0200["t"])
    counter = itertools.count(1)
    per_sender = max(1, messages // concurrency)
    total = per_sender * concurrency
    with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:
        _warm_up(conn, REQUEST_0200, 200)

        def sender() -> None:
            send, clock, took = conn.send, time.perf_counter, latencies.append
            for _ in range(per_sender):
                seq = next(counter)
                stan, rrn = "%06d" % (seq % 999_999 + 1), "%012d" % seq
                request = {**REQUEST_0200, "11": stan, "37": rrn}
                started = clock()
                try:
                    response = send(request)
                except Exception:
                    outcome["failed"] += 1
                    continue
                took(clock() - started)
                if _matches(request, response, answer_mti):
                    outcome["matched"] += 1

        gc.collect()
        cpu0, host0 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(sender) for _ in range(concurrency)])
        seconds = time.perf_counter() - started
        cpu1, host1 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        left = conn.in_flight
    extra: dict[str, Any] = {"concurrency": concurrency, "in_flight_after": left}
    if cpu0 is not None and cpu1 is not None:
        extra["client_cpu"] = round((cpu1 - cpu0) / seconds, 2)
    if host0 is not None and host1 is not None:
        extra["host_cpu"] = round((host1 - host0) / seconds, 2)
    return Result("closed-loop", f"C={concurrency}", total, seconds, latencies, outcome["matched"],
                  outcome["failed"], **extra)
