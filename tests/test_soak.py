"""Soak (``make soak``, marked slow): 1,000,000 requests at full speed through a Pool to
a mock host in its own process. Every request is answered with its own response, and the
client's memory and greenlet count stay flat (measured after a warm-up, at every tenth).

Figures are printed: ``python -m pytest -q -s -m slow tests/test_soak.py``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import gevent
import gevent.pool
import pytest
from faultproxy import live_greenlets
from iso8583.specs import default as spec

import geviso

REQUESTS = int(os.environ.get("GEVISO_SOAK_REQUESTS", "1000000"))
CONCURRENCY = 400
LINKS = 4
CHECKPOINTS = 10  # samples at every tenth but the last
#: Growth of the resident set allowed between the first checkpoint and the last.
RSS_SLACK = 16 * 1024 * 1024


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture
def host_address() -> Iterator[tuple[str, int]]:
    """``geviso mock-host`` in a subprocess (its own core), and the address it announced."""
    command = [sys.executable, "-m", "geviso", "mock-host", "--port", "0", "--log-level", "WARNING"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (\S+):(\d+)", line)
        assert match, line
        yield match.group(1), int(match.group(2))
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_a_million_requests_flat_memory_and_greenlets(host_address: tuple[str, int]) -> None:
    pool = geviso.Pool(
        lambda address: geviso.Connection(address, spec, send_timeout=30), [host_address] * LINKS
    ).connect()
    counter = iter(range(REQUESTS))
    answered = 0
    mismatched = 0
    step = REQUESTS // CHECKPOINTS
    samples: list[tuple[int, float, int, int]] = []  # (answered, seconds, rss, greenlets)
    started = time.monotonic()

    def worker() -> None:
        nonlocal answered, mismatched
        for n in counter:
            rrn = "%012d" % n
            response = pool.send({"t": "0200", "4": "000000001000", "37": rrn})
            if response.get("37") != rrn or response.get("t") != "0210":
                mismatched += 1
            answered += 1
            if answered % step == 0 and answered < REQUESTS:  # the last one: workers are leaving
                samples.append((answered, time.monotonic() - started, rss(), len(live_greenlets())))

    workers = gevent.pool.Pool(CONCURRENCY)
    for _ in range(CONCURRENCY):
        workers.spawn(worker)
    workers.join(raise_error=True)
    seconds = time.monotonic() - started
    pool.close()

    for done, at, resident, greenlets in samples:
        print(f"soak: {done:>8} answered at {at:6.1f}s  rss={resident / 2**20:6.1f} MiB  greenlets={greenlets}")
    print(f"soak: {answered} requests in {seconds:.1f}s ({answered / seconds:,.0f}/s), mismatched={mismatched}")
    assert answered == REQUESTS and mismatched == 0
    first, last = samples[0], samples[-1]
    assert last[2] - first[2] < RSS_SLACK, "memory grows"
    assert max(s[3] for s in samples) <= first[3] + LINKS, "greenlets pile up"
