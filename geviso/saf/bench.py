"""The ``saf`` workload of ``geviso bench``: durable puts per second, forwards per
second, latency from put to acknowledgement, and the p99 of concurrent sends in the
same process with and without a store and forward storing and forwarding 1,000
messages a second; beside the senders a ticker greenlet sleeps 1 ms again and again
and records how late it wakes: the hub's stalls (a store call that blocked the hub
would show as one as long as the call).

The store is a SQLite file in a temporary directory (on the disk of ``TMPDIR``); the
mock host runs in another process, so the measured process holds only the client side.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import TYPE_CHECKING, Any, Callable

import gevent

from ..codec import Spec
from ..connection import Connection
from ..framing import by_name as framing_by_name
from .core import original_data
from .forwarder import StoreAndForward

if TYPE_CHECKING:
    from ..bench import Result

#: The stored message: a 0420 reversal advice with the usual fields (field 11 filled at put).
ADVICE_0420 = {
    "t": "0420",
    "2": "4761739001010010",
    "3": "000000",
    "4": "000000010000",
    "7": "1207023400",
    "12": "023400",
    "13": "1207",
    "32": "412345",
    "37": "612345000001",
    "39": "68",
    "41": "TERM0001",
    "42": "MERCHANT0000001",
    "49": "840",
    "90": original_data("0100", "000001", "1207023300", "412345"),
}
#: Messages in flight for the forwarding rows.
WINDOW = 64
#: The SAF's rate while the p99 of sends is measured, and how long each round lasts.
BACKGROUND_RATE = 1000
ROUND_SECONDS = 3.0
#: The ticker's sleep: its lateness on waking is how long the hub could not run it.
TICK = 0.001


def _saf(target: Any, path: str, spec: Spec, **options: Any) -> StoreAndForward:
    return StoreAndForward(target, path, spec=spec, window=WINDOW, poll_interval=0.05, **options)


def durable_puts(spec: Spec, messages: int, concurrency: int) -> Result:
    """``concurrency`` greenlets put ``messages`` in all; each put returns once durable."""
    from ..bench import Result

    with tempfile.TemporaryDirectory() as tmp:
        saf = _saf(None, os.path.join(tmp, "saf.db"), spec, forward=False)
        latencies: list[float] = []

        def putter(count: int) -> None:
            for _ in range(count):
                started = time.perf_counter()
                saf.put(ADVICE_0420)
                latencies.append(time.perf_counter() - started)

        share, extra = divmod(messages, concurrency)
        started, cpu = time.perf_counter(), _cpu()
        gevent.joinall([gevent.spawn(putter, share + (i < extra)) for i in range(concurrency)], raise_error=True)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        saf.close()
    return Result("saf", f"durable puts C={concurrency}", messages, seconds, latencies, len(latencies),
                  concurrency=concurrency, cpu_us_per_msg=round(cpu / messages * 1e6, 1))  # fmt: skip


def forwards(address: tuple[str, int], spec: Spec, framing_name: str, messages: int) -> list[Result]:
    """Forward ``messages`` stored beforehand, ``WINDOW`` in flight."""
    from ..bench import Result

    results = []
    with tempfile.TemporaryDirectory() as tmp, _link(address, spec, framing_name) as conn:
        path = os.path.join(tmp, "saf.db")
        stored = _saf(None, path, spec, forward=False)
        gevent.joinall([gevent.spawn(_put_many, stored, messages // 100) for _ in range(100)], raise_error=True)
        stored.close()
        saf = _saf(conn, path, spec, forward=False)
        started, cpu = time.perf_counter(), _cpu()
        saf.start()
        saf.drain(600)
        seconds, cpu = time.perf_counter() - started, _cpu() - cpu
        saf.close()
        total = (messages // 100) * 100
        cpu_us = round(cpu / max(1, total) * 1e6, 1)
        results.append(Result("saf", f"forwards window={WINDOW}", total, seconds, [], saf.stats.delivered,
                              total - saf.stats.delivered, cpu_us_per_msg=cpu_us))  # fmt: skip

    return results


def _cpu() -> float:
    """CPU seconds of this process, its threads included (the store's thread too)."""
    times = os.times()
    return times.user + times.system


def _put_many(saf: StoreAndForward, count: int) -> None:
    for _ in range(count):
        saf.put(ADVICE_0420)


class _link:
    """A connected link, closed on exit."""

    def __init__(self, address: tuple[str, int], spec: Spec, framing_name: str) -> None:
        self.conn = Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=30.0)

    def __enter__(self) -> Connection:
        return self.conn.connect()

    def __exit__(self, *exc_info: Any) -> None:
        self.conn.close()


def sends_p99(
    address: tuple[str, int],
    spec: Spec,
    framing_name: str,
    request: dict[str, str],
    rounds: int = 3,
    seconds: float = ROUND_SECONDS,
) -> list[Result]:
    """Interleaved rounds of 10 closed-loop senders on one link for ``seconds`` each,
    alone and beside a store and forward putting and forwarding :data:`BACKGROUND_RATE`
    messages a second."""
    from ..bench import Result

    alone: list[list[float]] = []
    beside: list[list[float]] = []
    stalls: dict[str, list[list[float]]] = {"alone": [], "beside": []}
    rates: list[float] = []
    begun: dict[str, float] = {}
    to_ack: list[float] = []

    def delivered(entry: Any, response: Any) -> None:
        to_ack.append(time.perf_counter() - begun.pop(entry.doc["11"]))

    with tempfile.TemporaryDirectory() as tmp, _link(address, spec, framing_name) as conn, \
            _link(address, spec, framing_name) as saf_conn:  # fmt: skip
        for i in range(rounds):
            with _ticker(stalls["alone"]):
                alone.append(_closed_loop(conn, request, seconds))
            saf = _saf(saf_conn, os.path.join(tmp, f"saf{i}.db"), spec, on_delivered=delivered)
            pacer = gevent.spawn(_paced_puts, saf, BACKGROUND_RATE, seconds + 0.5, begun)
            gevent.sleep(0.25)
            with _ticker(stalls["beside"]):
                beside.append(_closed_loop(conn, request, seconds))
            pacer.join()
            rates.append(saf.stats.delivered / (seconds + 0.5))
            saf.drain(30)
            saf.close()
    out = []
    for label, runs in (("sends alone", alone), (f"sends beside SAF {BACKGROUND_RATE}/s", beside)):
        p99s = sorted(_p99(run) for run in runs)
        latencies = [x for run in runs for x in run]
        out.append(Result("saf", f"{label} C=10", len(latencies), rounds * seconds, latencies, len(latencies),
                          p99_rounds_us=[round(p * 1e6) for p in p99s],
                          saf_delivered_per_s=[round(r) for r in rates] if runs is beside else None))  # fmt: skip
    for label, key in (("hub stalls alone", "alone"), (f"hub stalls beside SAF {BACKGROUND_RATE}/s", "beside")):
        late = [x for run in stalls[key] for x in run]
        out.append(Result("saf", label, len(late), rounds * seconds, late, len(late),
                          longest_us=round(max(late, default=0.0) * 1e6),
                          longest_rounds_us=[round(max(run, default=0.0) * 1e6) for run in stalls[key]]))  # fmt: skip
    out.append(Result("saf", f"put to acknowledgement at {BACKGROUND_RATE}/s", len(to_ack), rounds * seconds,
                      to_ack, len(to_ack)))  # fmt: skip
    return out


class _ticker:
    """A greenlet that sleeps :data:`TICK` again and again while the block runs, and
    appends to ``rounds`` the list of how late (seconds) it woke each time."""

    def __init__(self, rounds: list[list[float]]) -> None:
        self.late: list[float] = []
        rounds.append(self.late)

    def _run(self) -> None:
        late, clock, sleep = self.late, time.perf_counter, gevent.sleep
        while True:
            started = clock()
            sleep(TICK)
            late.append(max(0.0, clock() - started - TICK))

    def __enter__(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def __exit__(self, *exc_info: Any) -> None:
        self.greenlet.kill()


def summary(results: list[Result]) -> list[str]:
    """The hub's stalls beside the store and forward against those without it."""
    rows = {r.label: r for r in results if r.workload == "saf"}
    alone, beside = rows.get("hub stalls alone"), rows.get(f"hub stalls beside SAF {BACKGROUND_RATE}/s")
    if alone is None or beside is None:
        return []
    return [f"longest hub stall beside SAF at {BACKGROUND_RATE}/s: {beside.extra['longest_us'] / 1000:.1f} ms "
            f"(p99 {beside.p99 * 1000:.2f} ms); without it: {alone.extra['longest_us'] / 1000:.1f} ms "
            f"(p99 {alone.p99 * 1000:.2f} ms)"]  # fmt: skip


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


def _closed_loop(conn: Connection, request: dict[str, str], seconds: float, senders: int = 10) -> list[float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    def sender() -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            conn.send(request_without_stan)
            latencies.append(time.perf_counter() - started)

    request_without_stan = {k: v for k, v in request.items() if k != "11"}
    gevent.joinall([gevent.spawn(sender) for _ in range(senders)], raise_error=True)
    return latencies


def _paced_puts(saf: StoreAndForward, rate: int, seconds: float, begun: dict[str, float]) -> None:
    """``rate`` puts a second for ``seconds``: a batch every 10 ms, each put its own
    greenlet; ``begun`` gets the start of each put by STAN."""
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    started = time.perf_counter()
    ticks = 0
    puts: list[gevent.Greenlet] = []

    def put() -> None:
        doc = dict(ADVICE_0420)
        doc["11"] = saf.stan.next()
        begun[doc["11"]] = time.perf_counter()
        saf.put(doc)

    while time.perf_counter() - started < seconds:
        puts.extend(gevent.spawn(put) for _ in range(per_tick))
        ticks += 1
        gevent.sleep(max(0.0, started + ticks * tick - time.perf_counter()))
    gevent.joinall(puts, raise_error=True)


def run_saf(
    spec: Spec,
    framing_name: str,
    messages: int,
    levels: list[int],
    start_host: Callable[[], Any],
    request: dict[str, str],
) -> list[Result]:
    """Every row of the ``saf`` workload."""
    results = [durable_puts(spec, messages, level) for level in levels]
    with start_host() as (address, _pid):
        results += forwards(address, spec, framing_name, messages)
        seconds = min(ROUND_SECONDS, max(0.3, messages / 6000))  # 3 s at 20,000 messages; less for a quick run
        results += sends_p99(address, spec, framing_name, request, seconds=seconds)
    return results


__all__ = ["run_saf", "summary"]
