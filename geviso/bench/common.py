"""What every workload shares: the requests, a measured :class:`Result`, helper
processes, the in-process mock host and the cyclic GC's share of a run."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent

from ..codec import Spec, response_mti
from ..connection import Connection, parse_address
from ..framing import by_name as framing_by_name

if TYPE_CHECKING:
    from ..mock.host import MockHost

START_TIMEOUT = 30.0
SEND_TIMEOUT = 120.0

#: The realistic request of ``closed-loop``: 15 fields, ASCII data, binary bitmap.
REQUEST_0200 = {
    "t": "0200",
    "2": "4761739001010010",
    "3": "000000",
    "4": "000000010000",
    "7": "0612103000",
    "11": "000001",
    "12": "103000",
    "13": "0612",
    "14": "2812",
    "18": "5411",
    "22": "051",
    "25": "00",
    "37": "000000000001",
    "41": "TERM0001",
    "42": "MERCHANT0000001",
    "49": "840",
}
#: The reference benchmark's message: 0800 with field 11 only.
REQUEST_0800 = {"t": "0800", "11": "000001"}


def answer_of(request: dict[str, str]) -> dict[str, str]:
    """The approved answer to ``request``: its response MTI and field 39 ``00``."""
    return dict(request, t=response_mti(request["t"]), **{"39": "00"})


# -- results ------------------------------------------------------------------------------
class Result:
    """One measured run: how many messages, how long, their latencies, how many matched."""

    def __init__(self, workload: str, label: str, messages: int, seconds: float, latencies: Sequence[float],
                 matched: int, failed: int = 0, **extra: Any) -> None:
        self.workload = workload
        self.label = label
        self.messages = messages
        self.seconds = seconds
        self.matched = matched
        self.failed = failed
        self.extra = extra
        ordered = sorted(latencies)
        self.p50 = _quantile(ordered, 0.50)
        self.p99 = _quantile(ordered, 0.99)

    @property
    def rate(self) -> float:
        """Messages (round trips, or codec operations) per second."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def ns_per_msg(self) -> float:
        """Wall-clock nanoseconds per message."""
        return self.seconds / self.messages * 1e9 if self.messages else 0.0

    @property
    def ok(self) -> bool:
        """True when every message got its own response and none failed."""
        return self.failed == 0 and self.matched == self.messages

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as ``--json`` prints it."""
        return {
            "workload": self.workload,
            "label": self.label,
            "messages": self.messages,
            "seconds": round(self.seconds, 6),
            "msg_per_s": round(self.rate, 1),
            "ns_per_msg": round(self.ns_per_msg, 1),
            "p50_us": round(self.p50 * 1e6, 1),
            "p99_us": round(self.p99 * 1e6, 1),
            "matched": self.matched,
            "failed": self.failed,
            **self.extra,
        }


def _quantile(ordered: Sequence[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def best(runs: Sequence[Result]) -> Result:
    """The fastest of repeated runs (the machine is shared: slower runs are noise)."""
    return max(runs, key=lambda r: r.rate)


# -- helper processes ---------------------------------------------------------------------
Endpoint = tuple[tuple[str, int], Optional[int]]  # (address, pid of our child serving it)


@contextmanager
def _process(args: list[str], marker: str) -> Iterator[Endpoint]:
    """Run ``args``, read ``marker HOST:PORT`` from its stdout, stop it with SIGTERM."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = ""
        with gevent.Timeout(START_TIMEOUT, RuntimeError(f"{args[2:4]} did not start in {START_TIMEOUT:g}s")):
            while marker not in line:
                line = proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"{' '.join(args[2:4])} exited before listening (status {proc.wait()})")
        yield parse_address(line.split(marker, 1)[1].split()[0]), proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def mock_host_process(spec_name: str, framing_name: str) -> Any:
    """``geviso mock-host --port 0`` in a child process; yields its address."""
    from ..mock.cli import LISTENING

    args = [sys.executable, "-m", "geviso", "mock-host", "--port", "0", "--spec", spec_name,
            "--framing", framing_name, "--log-level", "WARNING"]
    return _process(args, LISTENING)


@contextmanager
def _local_mock_host(spec: Spec, framing_name: str) -> Iterator[tuple[tuple[str, int], MockHost]]:
    """A mock host in this process; yields its address and the host."""
    from ..mock.host import MockHost

    # No request journal: the host shares this process, and only geviso's links are measured.
    host = MockHost(("127.0.0.1", 0), spec, framing=framing_by_name(framing_name), journal_size=0)
    host.start()
    try:
        yield ("127.0.0.1", int(host.server_port)), host
    finally:
        host.stop(timeout=1.0)


def _cpu_seconds(pid: Optional[int] = None) -> Optional[float]:
    """CPU time (user + system) of this process or of ``pid`` (Linux /proc)."""
    if pid is None:
        times = os.times()
        return times.user + times.system
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


# -- the workloads -----------------------------------------------------------------------
def _matches(request: dict[str, str], response: dict[str, str], answer_mti: str) -> bool:
    """The answer to ``request``: its MTI, the same field 11, and field 37 if both have one."""
    return (
        response.get("t") == answer_mti
        and response.get("11") == request["11"]
        and ("37" not in request or response.get("37", request["37"]) == request["37"])
    )


class _Collector:
    """Time the cyclic GC spends collecting while installed (``gc.callbacks``), and how
    many full (generation 2) collections it ran: what of a burst is Python's collector."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._began = 0.0

    def _track(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._began
            self.full += info["generation"] == 2

    def __enter__(self) -> _Collector:
        gc.collect()  # start every measurement from the same heap
        gc.callbacks.append(self._track)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        gc.callbacks.remove(self._track)

    def extra(self) -> dict[str, Any]:
        """As a :class:`Result`'s extra fields."""
        return {"gc_seconds": round(self.seconds, 6), "gc_full": self.full}


def _warm_up(conn: Connection, template: dict[str, str], count: int) -> None:
    base = 900_000
    jobs = [gevent.spawn(conn.send, dict(template, **{"11": "%06d" % (base + i)})) for i in range(count)]
    gevent.joinall(jobs, raise_error=True)


def burst_sender(conn: Connection, latencies: list[float], outcome: dict[str, int]) -> Callable[[str], None]:
    """``one(stan)``: send the 0800/11 with that STAN on ``conn``, note its latency and
    whether its answer matched (``outcome["matched"]``) or the send failed."""
    answer_mti = response_mti("0800")

    def one(stan: str) -> None:
        request = {"t": "0800", "11": stan}
        started = time.perf_counter()
        try:
            response = conn.send(request)
        except Exception:
            outcome["failed"] += 1
            return
        latencies.append(time.perf_counter() - started)
        if _matches(request, response, answer_mti):
            outcome["matched"] += 1

    return one
