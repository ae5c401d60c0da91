"""The ``transport`` workload: a bare gevent client and a geviso client against the
same framed echo process."""

from __future__ import annotations

import gc
import itertools
import signal
import socket as _stdlib_socket
import time
from collections.abc import Iterator
from typing import Any, Optional

import gevent
import gevent.event
import gevent.server
from gevent import socket

from ..codec import Codec, Spec
from .closed_loop import run_closed_loop
from .common import REQUEST_0200, Result


# -- the transport baseline -----------------------------------------------------------------
def _frames(buffer: bytearray) -> Iterator[tuple[int, int]]:
    """(start, end) of each complete 2-byte-length frame at the head of ``buffer``."""
    size, pos = len(buffer), 0
    while size - pos >= 2:
        end = pos + 2 + ((buffer[pos] << 8) | buffer[pos + 1])
        if end > size:
            return
        yield pos, end
        pos = end


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
            pos = 0
            for start, pos in _frames(buffer):
                if pos - start > 4:
                    buffer[start + 4] |= 1
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
            pos = 0
            for start, pos in _frames(buffer):
                frame = bytes(buffer[start:pos])
                waiting.pop(frame[key_at : key_at + 12]).set(frame)
            del buffer[:pos]

    def close(self) -> None:
        for loop in self.loops:
            loop.kill()
        self.sock.close()


def run_transport(address: tuple[str, int], spec: Spec, concurrency: int, messages: int) -> Result:
    """The closed loop of :func:`run_closed_loop` over a bare gevent echo: no codec.

    Each request is the framed 0200 with a unique field 37, the key its echo is
    matched by. As there, the requests are built, and the answers checked, outside the
    timed part."""
    payload = Codec(spec).encode(REQUEST_0200)
    frame = len(payload).to_bytes(2, "big") + payload
    key_at = frame.index(REQUEST_0200["37"].encode())
    head, tail = frame[:key_at], frame[key_at + 12 :]
    answer_head = frame[:4] + bytes([frame[4] | 1])  # length, then "021": what the echo sends back
    latencies: list[float] = []
    answered: list[tuple[bytes, bytes]] = []
    counter = itertools.count(1)
    per_sender = max(1, messages // concurrency)
    client = _EchoClient(address, key_at)

    def build(count: int) -> list[tuple[bytes, bytes]]:
        keys = [b"%012d" % next(counter) for _ in range(count)]
        return [(head + key + tail, key) for key in keys]

    def sender(mine: list[tuple[bytes, bytes]]) -> None:
        trip, clock, took, got = client.round_trip, time.perf_counter, latencies.append, answered.append
        for request, key in mine:
            started = clock()
            response = trip(request, key)
            took(clock() - started)
            got((request, response))

    warm_up = [build(2) for _ in range(100)]
    requests = [build(per_sender) for _ in range(concurrency)]
    try:
        gevent.joinall([gevent.spawn(sender, mine) for mine in warm_up], raise_error=True)
        latencies.clear()
        answered.clear()
        gc.collect()
        started = time.perf_counter()
        gevent.joinall([gevent.spawn(sender, mine) for mine in requests], raise_error=True)
        seconds = time.perf_counter() - started
    finally:
        client.close()
    matched = sum(response == answer_head + request[len(answer_head) :] for request, response in answered)
    return Result("transport", f"C={concurrency} bare client", per_sender * concurrency, seconds, latencies,
                  matched, concurrency=concurrency)


def run_transport_geviso(address: tuple[str, int], spec: Spec, concurrency: int, messages: int,
                         host_pid: Optional[int] = None) -> Result:
    """:func:`run_closed_loop` with a geviso client against the same bare echo: the
    difference to :func:`run_transport` is the connection layer (and its codec)."""
    result = run_closed_loop(address, spec, "binary2", concurrency, messages, host_pid)
    result.workload, result.label = "transport", f"C={concurrency} geviso client"
    return result
