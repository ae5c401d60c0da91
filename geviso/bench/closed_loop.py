"""The ``closed-loop`` workload: C senders on one link, each sending on each answer."""

from __future__ import annotations

import gc
import itertools
import time
from typing import Any, Optional

import gevent

from ..codec import Message, Spec, response_mti
from ..connection import Connection
from ..framing import by_name as framing_by_name
from .common import REQUEST_0200, SEND_TIMEOUT, Result, _cpu_seconds, _matches, _warm_up


def run_closed_loop(address: tuple[str, int], spec: Spec, framing_name: str, concurrency: int, messages: int,
                    host_pid: Optional[int] = None) -> Result:
    """``concurrency`` senders on one link, each sending its next 0200 on each answer.

    The requests are built, and the answers checked, outside the timed part: the figure
    is the link's (and its host's), not the harness's."""
    latencies: list[float] = []
    outcome = {"matched": 0, "failed": 0}
    answer_mti = response_mti(REQUEST_0200["t"])
    counter = itertools.count(1)
    per_sender = max(1, messages // concurrency)
    total = per_sender * concurrency
    requests = [[_request(next(counter)) for _ in range(per_sender)] for _ in range(concurrency)]
    answered: list[tuple[dict[str, str], Message]] = []
    with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:
        _warm_up(conn, REQUEST_0200, 200)

        gc.collect()
        cpu0, host0 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(send_each, conn, mine, latencies, answered, outcome) for mine in requests])
        seconds = time.perf_counter() - started
        cpu1, host1 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        left = conn.in_flight
    outcome["matched"] = sum(_matches(request, response, answer_mti) for request, response in answered)
    extra: dict[str, Any] = {"concurrency": concurrency, "in_flight_after": left}
    extra.update(cpu_shares(seconds, (cpu0, cpu1), (host0, host1)))
    return Result("closed-loop", f"C={concurrency}", total, seconds, latencies, outcome["matched"],
                  outcome["failed"], **extra)


def _request(seq: int) -> dict[str, str]:
    """The ``seq``-th 0200 of a run: its own STAN (wrapping) and field 37."""
    return {**REQUEST_0200, "11": "%06d" % (seq % 999_999 + 1), "37": "%012d" % seq}


def send_each(conn: Connection, mine: list[dict[str, str]], latencies: list[float],
              answered: list[tuple[dict[str, str], Message]], outcome: dict[str, int]) -> None:
    """One closed-loop sender: each request of ``mine`` in turn on ``conn``, noting its
    latency and ``(request, answer)``, or counting it in ``outcome["failed"]``."""
    send, clock, took, got = conn.send, time.perf_counter, latencies.append, answered.append
    for request in mine:
        started = clock()
        try:
            response = send(request)
        except Exception:
            outcome["failed"] += 1
            continue
        took(clock() - started)
        got((request, response))


def cpu_shares(seconds: float, client: tuple[Optional[float], Optional[float]],
               host: tuple[Optional[float], Optional[float]], messages: int = 0) -> dict[str, Any]:
    """``client_cpu`` and ``host_cpu`` (cores busy) from CPU seconds before and after a run
    of ``seconds``, where known; with ``messages``, also each side's CPU ns per message."""
    extra: dict[str, Any] = {}
    for side, (before, after) in (("client", client), ("host", host)):
        if before is not None and after is not None:
            extra[f"{side}_cpu"] = round((after - before) / seconds, 2)
            if messages:
                extra[f"{side}_ns_per_msg"] = round((after - before) / messages * 1e9)
    return extra
