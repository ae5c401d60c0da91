"""``geviso bench`` (also ``python -m geviso.bench``): throughput and latency.

Workloads (``--workload``, comma-separated; default all but ``memory``):

``burst``
    One link, the mock host in this process, 0800 with field 11 only (the shape of
    moov-io/iso8583-connection's own benchmark), bursts of 100 / 1,000 / 10,000 /
    100,000 concurrent sends timed end to end, each from its own raw greenlet. Each
    size runs back to back until it has sent ``--messages`` (default 100,000;
    ``burst 1,000 x100``). Each row also shows the cyclic GC's share of the time.
    Each size is followed by ``greenlets N``: as many raw greenlets that each block
    once, without geviso, the harness's own cost.
``closed-loop``
    ``--concurrency`` senders (default 1, 10, 100) on one link, each sending the next
    0200 (15 fields, ``iso8583.specs.default``) when its answer arrives; the mock host
    runs in another process (``geviso mock-host --port 0``), so each side has a core.
``codec``
    Encode and decode alone, for both messages, with the codec links use and with plain
    pyiso8583: the connection layer's own cost is the difference.
``transport``
    The baseline: a bare gevent framed echo between two processes (one writer, one
    reader splitting frames, one ``AsyncResult`` per request, no codec), same frames;
    then a geviso client against the same echo process. The difference, less the
    client's codec, is the connection layer's own cost.
``saf``
    Store and forward (:mod:`geviso.saf.bench`): durable puts per second on SQLite at
    each ``--concurrency``, forwards per second, put-to-acknowledgement latency, and
    the p99 of 10 closed-loop senders alone and beside a store and forward doing 1,000
    messages a second. Not part of ``all``.
``replay``
    ``geviso replay --speed max`` at each ``--concurrency``: a capture of 0200s (the
    ``closed-loop`` request, with the answers the mock host gives) replayed against the
    same mock host process, with fresh STANs, RRNs and dates and every answer compared
    with the recorded one; the summary gives its rate as a share of ``closed-loop``'s.
    Not part of ``all``.
``memory``
    1,000,000 messages against 10,000 (``--messages``): RSS, greenlets, pending
    requests and buffers must not grow. Long; not part of ``all``.

Every response is checked against its request (MTI, fields 11 and 37); the exit status
is 1 if any did not match or failed. ``--host`` aims ``burst`` and ``closed-loop`` at an
external host. Figures vary with the machine and its load: use ``--repeat`` (best of N).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import os
import platform
import signal
import socket as _stdlib_socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional

import gevent
import gevent.event
import gevent.server
import iso8583
from gevent import socket
from greenlet import greenlet as RawGreenlet

from . import specs
from .codec import Codec, CompiledCodec, Spec, codec_for, response_mti
from .connection import Connection, parse_address
from .framing import BY_NAME as FRAMINGS
from .framing import by_name as framing_by_name
from .metrics import in_flight
from .stan import StanGenerator

if TYPE_CHECKING:
    from .mockhost import MockHost

WORKLOADS = ("burst", "closed-loop", "codec", "transport", "replay", "memory", "saf")
DEFAULT_WORKLOADS = ("burst", "closed-loop", "codec", "transport")
#: Seconds to wait for a helper process (mock host, echo server) to announce its port.
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
    from .cli import LISTENING  # (cli imports this module lazily, for ``geviso bench``)

    args = [sys.executable, "-m", "geviso", "mock-host", "--port", "0", "--spec", spec_name,
            "--framing", framing_name, "--log-level", "WARNING"]
    return _process(args, LISTENING)


@contextmanager
def _local_mock_host(spec: Spec, framing_name: str) -> Iterator[tuple[tuple[str, int], MockHost]]:
    """A mock host in this process; yields its address and the host."""
    from .mockhost import MockHost

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
    answer_mti = response_mti("0800")
    with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:
        _warm_up(conn, REQUEST_0800, 200)

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


def _warm_up(conn: Connection, template: dict[str, str], count: int) -> None:
    base = 900_000
    jobs = [gevent.spawn(conn.send, dict(template, **{"11": "%06d" % (base + i)})) for i in range(count)]
    gevent.joinall(jobs, raise_error=True)


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


def replay_capture(messages: int, started: float = 1_796_600_000.0) -> list[Any]:
    """``messages`` exchanges of the ``closed-loop`` 0200 and the answer the mock host
    gives it (field 39 ``00``), 1 ms apart, as a recorded capture holds them."""
    from .capture import Exchange

    exchanges = []
    for seq in range(1, messages + 1):
        request = {**REQUEST_0200, "11": "%06d" % (seq % 999_999 + 1), "37": "%012d" % seq}
        exchanges.append(Exchange(time=started + seq / 1000.0, request=request, answer=answer_of(request),
                                  latency_ms=0.1, link="127.0.0.1:40000", framing="binary2"))
    return exchanges


def run_replay(address: tuple[str, int], spec: Spec, framing_name: str, concurrency: int, messages: int,
               host_pid: Optional[int] = None) -> Result:
    """``geviso replay --speed max --concurrency N`` of :func:`replay_capture` on one link."""
    from .replay import Replayer

    exchanges = replay_capture(messages)
    replayer = Replayer(address, spec, framing=framing_by_name(framing_name), concurrency=concurrency, speed=None,
                        timeout=SEND_TIMEOUT)
    replayer.run(replay_capture(200))  # warm up
    gc.collect()
    cpu0, host0 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
    result = replayer.run(exchanges)
    cpu1, host1 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
    extra: dict[str, Any] = {"concurrency": concurrency, "differ": result.diff.differ}
    if cpu0 is not None and cpu1 is not None and result.seconds:
        extra["client_cpu"] = round((cpu1 - cpu0) / result.seconds, 2)
    if host0 is not None and host1 is not None and result.seconds:
        extra["host_cpu"] = round((host1 - host0) / result.seconds, 2)
    return Result("replay", f"C={concurrency}", len(exchanges), result.seconds, result.latencies,
                  result.diff.same, result.failed, **extra)


def run_codec(spec: Spec, messages: int) -> list[Result]:
    """Encode and decode of both messages (and their answers), compiled and pyiso8583."""
    results = []
    reference = Codec(spec)
    fast = codec_for(spec)
    kinds: list[tuple[str, Codec]] = [("compiled", fast)] if isinstance(fast, CompiledCodec) else []
    kinds.append(("pyiso8583", reference))
    for name, doc in (("0800/11", REQUEST_0800), ("0200/15", REQUEST_0200)):
        raw = reference.encode(answer_of(doc))
        for kind, codec in kinds:
            for op, call, arg in (("encode", codec.encode, doc), ("decode", codec.decode, raw)):
                result = _time_calls(call, arg, messages)
                results.append(Result("codec", f"{op} {name} {kind}", messages, result[0], result[1], messages))
        if isinstance(fast, CompiledCodec) and fast.fallbacks:
            raise RuntimeError("the compiled codec fell back to pyiso8583 on the benchmark messages")
        if fast.decode(fast.encode(doc)) != iso8583.decode(reference.encode(doc), spec)[0]:
            raise RuntimeError("the compiled codec disagrees with pyiso8583")
    return results


def _time_calls(call: Callable[[Any], Any], arg: Any, count: int, batch: int = 100) -> tuple[float, list[float]]:
    """Total seconds for ``count`` calls, and the per-call time of each batch of 100."""
    per_call = []
    rounds = max(1, count // batch)
    clock = time.perf_counter
    total = 0.0
    for _ in range(rounds):
        started = clock()
        for _ in range(batch):
            call(arg)
        spent = clock() - started
        total += spent
        per_call.append(spent / batch)
    return total * count / (rounds * batch), per_call


# -- the transport baseline -----------------------------------------------------------------
def _echo_handle(sock: Any, _address: Any) -> None:
    """Bare framed echo: write back every complete 2-byte-length frame, in one sendall,
    its MTI's function digit made odd (0200 -> 0210: an ASCII MTI, no header), so the
    answer is a response a geviso client can match too."""
    sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    buffer = bytearray()
    try:
        while True:
            data = sock.recv(256 * 1024)
            if not data:
                return
            buffer += data
            size, pos = len(buffer), 0
            while size - pos >= 2:
                end = pos + 2 + ((buffer[pos] << 8) | buffer[pos + 1])
                if end > size:
                    break
                if end - pos > 4:
                    buffer[pos + 4] |= 1
                pos = end
            if pos:
                sock.sendall(bytes(buffer[:pos]))
                del buffer[:pos]
    except OSError:
        return
    finally:
        sock.close()


ECHO_READY = "geviso bench echo listening on"


def serve_echo() -> int:
    """The transport baseline's server process (``--serve-echo``): until SIGTERM."""
    server = gevent.server.StreamServer(("127.0.0.1", 0), _echo_handle)
    server.start()
    print(f"{ECHO_READY} 127.0.0.1:{server.server_port}", flush=True)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    gevent.signal_handler(signal.SIGINT, stop.set)
    stop.wait()
    server.stop(timeout=1)
    return 0


class _EchoClient:
    """The least a multiplexing client can do: one writer batching frames into one
    sendall, one reader splitting frames and waking each request's ``AsyncResult``
    (found by the 12 bytes at ``key_at`` in the frame)."""

    def __init__(self, address: tuple[str, int], key_at: int) -> None:
        self.key_at = key_at
        self.sock = socket.create_connection(address)
        self.sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        self.waiting: dict[bytes, gevent.event.AsyncResult] = {}
        self.outbox: list[bytes] = []
        self.wake = gevent.event.Event()
        self.loops = [gevent.spawn(self._read), gevent.spawn(self._write)]

    def round_trip(self, frame: bytes, key: bytes) -> bytes:
        result = gevent.event.AsyncResult()
        self.waiting[key] = result
        self.outbox.append(frame)
        self.wake.set()
        return bytes(result.get())

    def _write(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            batch, self.outbox = self.outbox, []
            if batch:
                self.sock.sendall(b"".join(batch))

    def _read(self) -> None:
        buffer = bytearray()
        waiting = self.waiting
        key_at = self.key_at
        while True:
            data = self.sock.recv(256 * 1024)
            if not data:
                return
            buffer += data
            size, pos = len(buffer), 0
            while size - pos >= 2:
                end = pos + 2 + ((buffer[pos] << 8) | buffer[pos + 1])
                if end > size:
                    break
                frame = bytes(buffer[pos:end])
                waiting.pop(frame[key_at : key_at + 12]).set(frame)
                pos = end
            del buffer[:pos]

    def close(self) -> None:
        for loop in self.loops:
            loop.kill()
        self.sock.close()


def run_transport(address: tuple[str, int], spec: Spec, concurrency: int, messages: int) -> Result:
    """The closed loop of :func:`run_closed_loop` over a bare gevent echo: no codec.

    Each request is the framed 0200 with a unique field 37, the key its echo is
    matched by."""
    payload = Codec(spec).encode(REQUEST_0200)
    frame = len(payload).to_bytes(2, "big") + payload
    key_at = frame.index(REQUEST_0200["37"].encode())
    head, tail = frame[:key_at], frame[key_at + 12 :]
    answer_head = frame[:4] + bytes([frame[4] | 1])  # length, then "021": what the echo sends back
    latencies: list[float] = []
    outcome = {"matched": 0}
    counter = itertools.count(1)
    per_sender = max(1, messages // concurrency)
    client = _EchoClient(address, key_at)

    def sender(count: int) -> None:
        for _ in range(count):
            key = b"%012d" % next(counter)
            request = head + key + tail
            started = time.perf_counter()
            response = client.round_trip(request, key)
            latencies.append(time.perf_counter() - started)
            if response == answer_head + request[len(answer_head) :]:
                outcome["matched"] += 1

    try:
        gevent.joinall([gevent.spawn(sender, 2) for _ in range(100)], raise_error=True)  # warm up
        latencies.clear()
        outcome["matched"] = 0
        gc.collect()
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(sender, per_sender) for _ in range(concurrency)], raise_error=True)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    return Result("transport", f"C={concurrency} bare client", per_sender * concurrency, seconds, latencies,
                  outcome["matched"], concurrency=concurrency)


def run_transport_geviso(address: tuple[str, int], spec: Spec, concurrency: int, messages: int,
                         host_pid: Optional[int] = None) -> Result:
    """:func:`run_closed_loop` with a geviso client against the same bare echo: the
    difference to :func:`run_transport` is the connection layer (and its codec)."""
    result = run_closed_loop(address, spec, "binary2", concurrency, messages, host_pid)
    result.workload, result.label = "transport", f"C={concurrency} geviso client"
    return result


# -- memory -----------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _greenlets() -> int:
    from greenlet import greenlet

    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet))


def run_memory(spec: Spec, framing_name: str, messages: int, concurrency: int = 100) -> Result:
    """Closed loop on one link, host in this process: state after 10,000 vs ``messages``."""
    done = {"matched": 0, "failed": 0, "sent": 0}
    snapshots: dict[str, dict[str, int]] = {}
    answer_mti = response_mti(REQUEST_0200["t"])
    with _local_mock_host(spec, framing_name) as (address, host):
        with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:

            def state() -> dict[str, int]:
                gc.collect()
                links = list(host.connections)
                return {
                    "rss": _rss_bytes(),
                    "greenlets": _greenlets(),
                    "pending": in_flight(conn) + in_flight(host),
                    "buffered": conn._decoder.buffered + sum(link._decoder.buffered for link in links),
                    "queued": len(conn._outbox) + sum(len(link._outbox) for link in links),
                }

            def loop(count: int) -> None:
                per_sender = count // concurrency

                def sender() -> None:
                    for _ in range(per_sender):
                        done["sent"] += 1
                        seq = done["sent"]
                        request = dict(REQUEST_0200, **{"11": "%06d" % (seq % 999_999 + 1), "37": "%012d" % seq})
                        try:
                            response = conn.send(request)
                        except Exception:
                            done["failed"] += 1
                            continue
                        if _matches(request, response, answer_mti):
                            done["matched"] += 1

                gevent.joinall([gevent.spawn(sender) for _ in range(concurrency)])

            baseline = min(10_000, messages)
            loop(baseline)
            snapshots["after_10k"] = state()
            started = time.perf_counter()
            loop(messages - baseline)
            seconds = time.perf_counter() - started
            snapshots["after_all"] = state()
    before, after = snapshots["after_10k"], snapshots["after_all"]
    grew = {key: after[key] - before[key] for key in before}
    return Result("memory", f"{messages:,} vs 10,000", done["sent"], seconds, [], done["matched"],
                  done["failed"], after_10k=before, after_all=after, growth=grew,
                  holds=grew["greenlets"] <= 0 and after["pending"] == 0 and after["queued"] == 0
                  and grew["rss"] <= 4 * 1024 * 1024)


# -- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``geviso bench`` command line."""
    parser = argparse.ArgumentParser(
        prog="geviso bench",
        description="Measure geviso's throughput and latency against a mock host, and check that every "
        "response matched its own request. Workloads: burst (N concurrent sends on one link, host in this "
        "process), closed-loop (C senders against a mock host process), codec (encode and decode alone), "
        "transport (a bare gevent client against the same echo, for comparison), memory (1,000,000 messages "
        "against 10,000; long). Exit status 1 if any response did not match.",
    )
    parser.add_argument("--workload", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated: {', '.join(WORKLOADS)} or all (default: all but memory)")
    parser.add_argument("--host", help="HOST:PORT of an external host for burst and closed-loop")
    parser.add_argument("--messages", type=int,
                        help="messages per run (default 20,000); burst: sends per row (default 100,000), in bursts of "
                             "100 to 100,000 up to it; "
                             "memory: the long run (default 1,000,000)")
    parser.add_argument("--concurrency", default="1,10,100", help="closed-loop/transport senders (default 1,10,100)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is shown")
    parser.add_argument("--spec", default="default", help="spec name or package.module:SPEC (default: default)")
    parser.add_argument("--framing", default="binary2", choices=sorted(FRAMINGS), help="(default binary2)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    return parser


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "pyiso8583": iso8583.__version__,
        "platform": platform.platform(terse=True),
    }


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(DEFAULT_WORKLOADS)
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise SystemExit(f"geviso bench: unknown workload {unknown[0] if unknown else text!r}; "
                         f"choose from {', '.join(WORKLOADS)}, all")
    return names


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise SystemExit("geviso bench: --concurrency is a comma-separated list of positive numbers")
    return levels


def _repeat(times: int, measure: Callable[..., Result], *args: Any) -> Result:
    return best([measure(*args) for _ in range(max(1, times))])


def run(args: argparse.Namespace, spec: Spec, report: Callable[[Result], None]) -> list[Result]:
    """Every asked workload on ``spec`` (``args.spec`` resolved); each result is reported
    as soon as it is measured."""
    levels = _levels(args.concurrency)
    results: list[Result] = []

    def keep(result: Result) -> None:
        results.append(result)
        report(result)

    external: Optional[tuple[str, int]] = parse_address(args.host) if args.host else None
    for workload in _workloads(args.workload):
        if workload == "burst":
            largest = args.messages or 100_000  # sends per row; a burst of over 100,000 would reuse STANs
            sizes = [size for size in (100, 1_000, 10_000, 100_000) if size <= largest] or [largest]
            with _maybe(external, lambda: _local_mock_host(spec, args.framing)) as (address, _):
                for size in sizes:
                    rounds = _burst_rounds(size, largest)
                    keep(_repeat(args.repeat, functools.partial(run_burst, rounds=rounds), address, spec,
                                 args.framing, size))
                    keep(_repeat(args.repeat, functools.partial(run_spawn, rounds=rounds), size))
        elif workload == "closed-loop":
            count = args.messages or 20_000
            with _maybe(external, lambda: mock_host_process(args.spec, args.framing)) as (address, pid):
                for level in levels:
                    keep(_repeat(args.repeat, run_closed_loop, address, spec, args.framing, level, count, pid))
        elif workload == "replay":
            count = args.messages or 20_000
            with _maybe(external, lambda: mock_host_process(args.spec, args.framing)) as (address, pid):
                for level in levels:
                    keep(_repeat(args.repeat, run_replay, address, spec, args.framing, level, count, pid))
        elif workload == "codec":
            count = args.messages or 20_000
            for result in run_codec(spec, count):
                keep(result)
        elif workload == "transport":
            count = args.messages or 20_000
            echo_args = [sys.executable, "-m", "geviso.bench", "--serve-echo"]
            with _process(echo_args, ECHO_READY) as (address, pid):
                for level in levels:
                    keep(_repeat(args.repeat, run_transport, address, spec, level, count))
                    keep(_repeat(args.repeat, run_transport_geviso, address, spec, level, count, pid))
        elif workload == "memory":
            keep(run_memory(spec, args.framing, args.messages or 1_000_000))
        elif workload == "saf":
            from .saf.bench import run_saf

            start = functools.partial(mock_host_process, args.spec, args.framing)
            for result in run_saf(spec, args.framing, args.messages or 20_000, levels, start, REQUEST_0200):
                keep(result)
    return results


@contextmanager
def _maybe(external: Optional[tuple[str, int]], start: Callable[[], Any]) -> Iterator[Endpoint]:
    """The external host's address, or a host we start (and stop)."""
    if external is not None:
        yield external, None
        return
    with start() as endpoint:
        yield endpoint


def summary(results: Sequence[Result], codec_cost_ns: Optional[float] = None) -> list[str]:
    """Ratios between the rows that say what the figures mean together: how a large
    burst compares with small ones (with the GC's and the harness's shares taken out),
    and the link's cost over a bare client's."""
    lines = []
    by_label = {(r.workload, r.label): r for r in results}
    loop100 = by_label.get(("closed-loop", "C=100"))
    if loop100 is not None:
        lines.append(f"closed-loop C=100: {loop100.rate:,.0f} round trips/s")
    b1k, b100k = by_label.get(("burst", "burst 1,000")), by_label.get(("burst", "burst 100,000"))
    if b1k is not None and b100k is not None:
        ratio = b100k.ns_per_msg / b1k.ns_per_msg
        lines.append(f"burst 100,000: {b100k.rate:,.0f} msg/s, {ratio:.2f} x 100 x the 1,000 burst's time")
        if "gc_seconds" in b1k.extra and "gc_seconds" in b100k.extra:
            outside = _outside_gc_ns(b100k) / _outside_gc_ns(b1k)
            lines.append(f"burst 100,000 less the cyclic GC's collections ({_gc_share(b100k)} of its time, "
                         f"{_gc_share(b1k)} of the 1,000 bursts'): {outside:.2f} x")
        g1k, g100k = by_label.get(("burst", "greenlets 1,000")), by_label.get(("burst", "greenlets 100,000"))
        if g1k is not None and g100k is not None and b1k.ns_per_msg > g1k.ns_per_msg:
            own = (b100k.ns_per_msg - g100k.ns_per_msg) / (b1k.ns_per_msg - g1k.ns_per_msg)
            alone = g100k.ns_per_msg / g1k.ns_per_msg
            lines.append(f"burst 100,000 less a raw greenlet per send (the harness, {g1k.ns_per_msg:,.0f} and "
                         f"{g100k.ns_per_msg:,.0f} ns each, itself {alone:.2f} x): geviso's part {own:.2f} x")
    for result in results:
        loop = by_label.get(("closed-loop", result.label)) if result.workload == "replay" else None
        if loop is not None and loop.rate:
            share = result.rate / loop.rate
            verdict = "meets" if share >= 0.8 else "misses"
            lines.append(f"replay --speed max {result.label}: {result.rate:,.0f} round trips/s = {share:.0%} of "
                         f"closed-loop's {loop.rate:,.0f} ({verdict} the 80% target)")
    codec = {r.label: r.ns_per_msg for r in results if r.workload == "codec"}
    parts = ("encode 0200/15 compiled", "decode 0200/15 compiled")
    if codec_cost_ns is None and all(p in codec for p in parts):
        codec_cost_ns = sum(codec[p] for p in parts)
    for level in sorted({int(r.extra["concurrency"]) for r in results if r.workload == "transport"}):
        bare = by_label.get(("transport", f"C={level} bare client"))
        mine = by_label.get(("transport", f"C={level} geviso client"))
        loop = by_label.get(("closed-loop", f"C={level}"))
        if bare is None or codec_cost_ns is None:
            continue
        if mine is not None:
            ratio = (mine.ns_per_msg - codec_cost_ns) / bare.ns_per_msg
            lines.append(f"connection overhead C={level}: geviso client {mine.ns_per_msg:,.0f} ns/rt - its codec "
                         f"{codec_cost_ns:,.0f} ns = {ratio:.2f} x the bare client's {bare.ns_per_msg:,.0f} ns "
                         f"on the same echo host")
        if loop is not None:
            ratio = (loop.ns_per_msg - 2 * codec_cost_ns) / bare.ns_per_msg
            lines.append(f"whole stack C={level}: geviso client and mock host {loop.ns_per_msg:,.0f} ns/rt - both "
                         f"codecs {2 * codec_cost_ns:,.0f} ns = {ratio:.2f} x the bare client and echo")
    return lines


def _outside_gc_ns(result: Result) -> float:
    """Nanoseconds a message outside the cyclic GC's collections."""
    gc_seconds: float = result.extra["gc_seconds"]
    return (result.seconds - gc_seconds) / result.messages * 1e9


def _gc_share(result: Result) -> str:
    return f"{result.extra['gc_seconds'] / result.seconds:.0%}" if result.seconds else "-"


def codec_cost(spec: Spec, count: int = 5_000) -> Optional[float]:
    """Nanoseconds a client's codec spends per round trip: encode the 0200, decode the answer."""
    fast = codec_for(spec)
    raw = fast.encode(answer_of(REQUEST_0200))
    return (_time_calls(fast.encode, REQUEST_0200, count)[0] + _time_calls(fast.decode, raw, count)[0]) / count * 1e9


def _row(result: Result) -> str:
    extra = ""
    if "client_cpu" in result.extra or "host_cpu" in result.extra:
        extra = f"  cpu client {result.extra.get('client_cpu', '?')} host {result.extra.get('host_cpu', '?')}"
    if result.workload == "memory":
        grew = result.extra["growth"]
        extra = (f"  growth rss {grew['rss'] / 1024:+,.0f} KiB greenlets {grew['greenlets']:+d} "
                 f"pending {result.extra['after_all']['pending']} queued {result.extra['after_all']['queued']} "
                 f"-> {'holds' if result.extra['holds'] else 'GROWS'}")
    if "gc_seconds" in result.extra:
        extra = f"  gc {_gc_share(result)} ({result.extra['gc_full']} full)"
    matched = "ok" if result.ok else f"MISMATCH {result.matched}/{result.messages} failed {result.failed}"
    p50, p99 = (f"{q * 1e6:>9,.1f}" if result.p99 else f"{'-':>9}" for q in (result.p50, result.p99))
    label = result.label + (f" x{result.extra['bursts']:,}" if result.extra.get("bursts", 1) > 1 else "")
    return (f"{result.workload:<12} {label:<28} {result.messages:>9,} {result.rate:>12,.0f} "
            f"{result.ns_per_msg:>10,.0f} {p50} {p99}  {matched}{extra}")


HEADER = (f"{'workload':<12} {'run':<28} {'messages':>9} {'msg/s':>12} {'ns/msg':>10} "
          f"{'p50 us':>9} {'p99 us':>9}  matched")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 when every response matched its request."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.serve_echo:
        return serve_echo()
    if args.repeat < 1 or (args.messages is not None and args.messages < 1):
        raise SystemExit("geviso bench: --repeat and --messages must be positive")
    info = machine()
    if not args.json:
        print(f"geviso bench on {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
              f"gevent {info['gevent']}, pyiso8583 {info['pyiso8583']}")
        print(HEADER, flush=True)
    spec = specs.by_name(args.spec)
    results = run(args, spec, (lambda r: None) if args.json else (lambda r: print(_row(r), flush=True)))
    has_codec = any(r.workload == "codec" for r in results)
    needs_codec = any(r.workload == "transport" for r in results)
    lines = summary(results, None if has_codec or not needs_codec else codec_cost(spec))
    ok = all(r.ok for r in results) and all(r.extra.get("holds", True) for r in results)
    if args.json:
        print(json.dumps({"machine": info, "command": ["geviso", "bench", *(argv or sys.argv[1:])],
                          "results": [r.as_dict() for r in results], "summary": lines, "ok": ok}, indent=2))
    else:
        for line in lines:
            print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
