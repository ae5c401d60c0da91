"""The ``moov`` workload: moov-io/iso8583-connection's own benchmark shape, and
``--compare-moov``, which runs moov's benchmark binary and this workload in turn.

One client link and the host in this process, an 0800 with field 11 only, a burst of N
concurrent sends, each from ``gevent.spawn`` (moov starts a goroutine per send), timed
end to end. The host is the inline :class:`~geviso.mock.host.MockHost` or a
:class:`~geviso.server.Server` whose ``on_inbound`` handler answers.
"""

from __future__ import annotations

import itertools
import re
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable

import gevent

from ..codec import Message, Spec
from ..connection import Connection
from ..framing import by_name as framing_by_name
from ..server import Server
from ..stan import StanGenerator
from .common import (
    REQUEST_0800,
    SEND_TIMEOUT,
    Result,
    _Collector,
    _local_mock_host,
    _warm_up,
    answer_of,
    burst_sender,
)

#: Burst sizes of moov's BenchmarkProcessN that the comparison runs.
SIZES = (1_000, 10_000, 100_000)
HOSTS = ("mock", "server")
#: Seconds one run of moov's benchmark binary may take.
MOOV_TIMEOUT = 600.0
_NS_PER_OP = re.compile(r"^BenchmarkProcess(\d+)\S*\s+\d+\s+([\d.]+) ns/op", re.MULTILINE)


def _answer(conn: Connection, doc: Message) -> None:
    """The server host's ``on_inbound``: approve at once."""
    conn.reply(answer_of(dict(doc)), to=doc)


@contextmanager
def local_host(spec: Spec, framing_name: str, host: str) -> Iterator[tuple[str, int]]:
    """The address of a host in this process: ``mock`` (MockHost) or ``server``
    (``Server(on_inbound=handler)``)."""
    if host == "mock":
        with _local_mock_host(spec, framing_name) as (address, _):
            yield address
        return
    server = Server(("127.0.0.1", 0), spec, framing=framing_by_name(framing_name), on_inbound=_answer)
    server.start()
    try:
        yield ("127.0.0.1", int(server.server_port))
    finally:
        server.stop(timeout=1.0)


def run_moov(address: tuple[str, int], spec: Spec, framing_name: str, size: int, host: str) -> Result:
    """One burst of ``size`` concurrent sends, a ``gevent.spawn`` each, on one link."""
    latencies: list[float] = []
    outcome = {"matched": 0, "failed": 0}
    stans = list(itertools.islice(StanGenerator(), size))
    with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:
        _warm_up(conn, REQUEST_0800, 200)

        one = burst_sender(conn, latencies, outcome)
        with _Collector() as collector:
            started = time.perf_counter()
            gevent.joinall([gevent.spawn(one, stan) for stan in stans])
            seconds = time.perf_counter() - started
    return Result("moov", f"moov {size:,} {host}", size, seconds, latencies, outcome["matched"],
                  outcome["failed"], host=host, **collector.extra())


def sizes_up_to(largest: int) -> list[int]:
    """moov's burst sizes no larger than ``largest`` (or ``largest`` alone if all are)."""
    return [size for size in SIZES if size <= largest] or [largest]


def moov_rates(binary: str, sizes: Sequence[int]) -> dict[int, float]:
    """Messages per second of moov's ``BenchmarkProcessN`` for each size, one run of the
    binary (``-test.benchtime 1x``: one burst each)."""
    pattern = "BenchmarkProcess(" + "|".join(str(size) for size in sizes) + ")$"
    args = [binary, "-test.run", "xxx", "-test.bench", pattern, "-test.benchtime", "1x"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=MOOV_TIMEOUT, check=False)
    except OSError as exc:
        raise SystemExit(f"geviso bench: cannot run {binary}: {exc.strerror}") from None
    rates = {int(n): int(n) / (float(ns) / 1e9) for n, ns in _NS_PER_OP.findall(done.stdout)}
    missing = [size for size in sizes if size not in rates]
    if missing:
        raise RuntimeError(f"moov's benchmark gave no BenchmarkProcess{missing[0]} figure (status {done.returncode})")
    return rates


def compare(binary: str, spec: Spec, framing_name: str, sizes: Sequence[int], hosts: Sequence[str], rounds: int,
            say: Callable[[str], None]) -> dict[str, Any]:
    """``rounds`` rounds, each moov's binary then this workload with each host; the
    median ratio (geviso msg/s over moov's) per size and host."""
    ratios: dict[str, list[float]] = {}
    for number in range(1, rounds + 1):
        moov = moov_rates(binary, sizes)
        for host in hosts:
            with local_host(spec, framing_name, host) as address:
                for size in sizes:
                    result = run_moov(address, spec, framing_name, size, host)
                    if not result.ok:
                        raise RuntimeError(f"moov {size:,} {host}: {result.failed} sends failed")
                    ratio = result.rate / moov[size]
                    ratios.setdefault(f"{size} {host}", []).append(ratio)
                    say(f"round {number}: burst {size:,} {host:<6} geviso {result.rate:>9,.0f} msg/s  "
                        f"moov {moov[size]:>9,.0f} msg/s  {ratio:.2f}x")
    medians = {key: statistics.median(values) for key, values in ratios.items()}
    for key, value in medians.items():
        size_text, host = key.split()
        say(f"median of {rounds} rounds: burst {int(size_text):,} {host:<6} {value:.2f}x moov")
    return {"rounds": rounds, "ratios": ratios, "medians": medians}
