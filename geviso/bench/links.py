"""The ``links`` workload: the same closed-loop senders over 1 link and over many.

A client with many links (one per terminal, or a pool) should not pay much more per
message than one link carrying the same traffic: with 1,000 links each carries about
one message per wake-up, so what a link costs per ``recv``, ``send`` and greenlet switch
is no longer shared by many messages.
"""

from __future__ import annotations

import gc
import itertools
import time
from typing import Any, Optional

import gevent

from ..codec import Message, Spec, response_mti
from ..connection import Connection
from ..framing import by_name as framing_by_name
from .closed_loop import _request, cpu_shares, send_each
from .common import REQUEST_0200, SEND_TIMEOUT, Result, _cpu_seconds, _matches

#: Links at each row, and senders shared by them (closed loop), by default.
DEFAULT_LINKS = (1, 1000)
DEFAULT_SENDERS = 1000
#: The cost per message at the most links may be at most this many times one link's.
TARGET_RATIO = 2.0


def open_links(address: tuple[str, int], spec: Spec, framing_name: str, count: int,
               connect_timeout: float = 10.0) -> list[Connection]:
    """``count`` connected links to ``address``, dialled a few at a time."""
    framing = framing_by_name(framing_name)
    links = [Connection(address, spec, framing=framing, send_timeout=SEND_TIMEOUT, connect_timeout=connect_timeout)
             for _ in range(count)]
    for first in range(0, count, 50):  # the host's accept backlog need not hold them all
        gevent.joinall([gevent.spawn(conn.connect) for conn in links[first : first + 50]], raise_error=True)
    return links


def run_links(address: tuple[str, int], spec: Spec, framing_name: str, links: int, senders: int, messages: int,
              host_pid: Optional[int] = None) -> Result:
    """``senders`` closed-loop senders of 0200s spread evenly over ``links`` links; the
    requests are built, and the answers checked, outside the timed part."""
    latencies: list[float] = []
    outcome = {"matched": 0, "failed": 0}
    answered: list[tuple[dict[str, str], Message]] = []
    counter = itertools.count(1)
    per_sender = max(1, messages // senders)
    total = per_sender * senders
    warm_up = [[_request(next(counter))] for _ in range(senders)]
    requests = [[_request(next(counter)) for _ in range(per_sender)] for _ in range(senders)]
    conns = open_links(address, spec, framing_name, links)
    try:
        # Warm up: one round trip per sender (every link carries some), not counted.
        gevent.joinall([gevent.spawn(send_each, conns[i % links], mine, [], [], outcome)
                        for i, mine in enumerate(warm_up)])
        outcome["failed"] = 0
        gc.collect()
        cpu0, host0 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(send_each, conns[i % links], mine, latencies, answered, outcome)
                        for i, mine in enumerate(requests)])
        seconds = time.perf_counter() - started
        cpu1, host1 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
        left = sum(conn.in_flight for conn in conns)
    finally:
        gevent.joinall([gevent.spawn(conn.close, 5.0) for conn in conns])
    answer_mti = response_mti(REQUEST_0200["t"])
    outcome["matched"] = sum(_matches(request, response, answer_mti) for request, response in answered)
    extra: dict[str, Any] = {"links": links, "concurrency": senders, "in_flight_after": left}
    extra.update(cpu_shares(seconds, (cpu0, cpu1), (host0, host1), total))
    return Result("links", f"{links:,} links, C={senders:,}", total, seconds, latencies, outcome["matched"],
                  outcome["failed"], **extra)
