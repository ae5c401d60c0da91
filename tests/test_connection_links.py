"""Many links, few messages each: a sender writes its frame itself when the writer is
idle, and the reader waits for readability after a short recv. Frames stay whole and in
order whatever the socket takes at once; TLS links still carry everything."""

from __future__ import annotations

import socket
import struct

import gevent
import gevent.event
from conftest import EchoHost, wait_until

import geviso
from geviso import tls

ECHO = {"t": "0800", "70": "301"}


def frame(number: int, size: int) -> bytes:
    """A binary2-framed frame of ``size`` body bytes that says its number."""
    body = struct.pack(">I", number) + bytes([number % 251]) * (size - 4)
    return struct.pack(">H", len(body)) + body


class SlowReader:
    """A loopback peer with a small receive window that reads nothing until told to,
    then reads ``expected`` bytes, ``chunk`` bytes at a time with a pause after each."""

    def __init__(self, raw_peer, expected: int, chunk: int = 1 << 20, pause: float = 0.0) -> None:
        self.go = gevent.event.Event()
        self.data = gevent.event.AsyncResult()
        self.expected, self.chunk, self.pause = expected, chunk, pause
        self.peer = raw_peer(self._handle)
        # On the listener, so that the window is agreed small from the handshake on.
        self.peer.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)

    def _handle(self, sock) -> None:
        self.go.wait(10)
        chunks, left = [], self.expected
        try:
            while left:
                chunk = sock.recv(min(left, self.chunk))
                assert chunk, f"peer closed with {left} bytes missing"
                chunks.append(chunk)
                left -= len(chunk)
                gevent.sleep(self.pause)
            self.data.set(b"".join(chunks))
        except BaseException as exc:  # noqa: B036 - handed to the test
            self.data.set_exception(exc)


def test_a_frame_bigger_than_the_socket_buffers_arrives_whole_before_the_frames_written_after_it(raw_peer, links):
    big = b"\x07" * (16 << 20)  # raw bytes through write(): more than loopback buffers take at once
    smalls = [frame(i, 40) for i in range(1, 4)]
    reader = SlowReader(raw_peer, len(big) + sum(map(len, smalls)))
    conn = links(reader.peer.address)
    with gevent.Timeout(10):
        conn.write(big)  # never waits for the peer: the rest goes to the writer
        for small in smalls:  # queued behind the rest of the big one, never into it
            gevent.spawn(conn.write, small).join()
    assert conn.stats.sent < 4  # the big frame is not all out yet
    reader.go.set()
    assert reader.data.get(timeout=30) == big + b"".join(smalls)
    assert wait_until(lambda: conn.stats.sent == 4)
    conn.close()


def test_frames_written_by_many_greenlets_over_many_loop_turns_arrive_whole_in_the_order_written(raw_peer, links):
    # Sizes from 10 bytes to 60 KB, to a peer reading 4 KB at a time: the socket takes
    # some frames whole, some in part, some not at all; no frame is cut by another.
    order: list[bytes] = []
    writers, rounds = 4, 100
    sizes = [10, 60_000, 30_000, 60_000, 300]
    total = sum(len(frame(w * rounds + r, sizes[(w + r) % len(sizes)])) for w in range(writers) for r in range(rounds))
    reader = SlowReader(raw_peer, total, chunk=16384, pause=0.001)
    reader.go.set()
    conn = links(reader.peer.address, max_write_buffer=64 << 20)

    def writer(w: int) -> None:
        for r in range(rounds):
            data = frame(w * rounds + r, sizes[(w + r) % len(sizes)])
            order.append(data)
            conn.write(data)
            gevent.sleep(0.001)  # the next frame in another loop turn: each may be written at once

    with gevent.Timeout(20):
        gevent.joinall([gevent.spawn(writer, w) for w in range(writers)], raise_error=True)
    assert reader.data.get(timeout=30) == b"".join(order)
    assert wait_until(lambda: conn.stats.sent == writers * rounds)
    conn.close()


def test_concurrent_senders_over_many_links_each_get_their_own_answer(links):
    host = EchoHost()
    try:
        conns = [links(host.address) for _ in range(50)]
        answers: list[bool] = []

        def sender(conn: geviso.Connection, n: int) -> None:
            for r in range(5):
                rrn = "%012d" % (n * 10 + r)
                answers.append(conn.send(dict(ECHO, **{"37": rrn}))["37"] == rrn)

        with gevent.Timeout(30):
            gevent.joinall([gevent.spawn(sender, conns[n % 50], n) for n in range(200)], raise_error=True)
        assert answers == [True] * 1000
        assert sum(conn.stats.sent for conn in conns) == 1000
    finally:
        host.stop()


def test_a_tls_link_carries_many_small_frames_both_ways(certs, links):
    # TLS records of one frame each, several per recv: none is left undecrypted.
    server_ctx = tls.server_context(certfile=certs.server_cert, keyfile=certs.server_key)
    host = EchoHost(ssl_context=server_ctx)
    try:
        client_ctx = tls.client_context(cafile=certs.ca)
        conns = [links(host.address, tls=client_ctx) for _ in range(3)]
        results: list[bool] = []

        def sender(conn: geviso.Connection, n: int) -> None:
            for r in range(10):
                rrn = "%012d" % (n * 100 + r)
                results.append(conn.send(dict(ECHO, **{"37": rrn}))["37"] == rrn)
                if r % 3 == 0:
                    gevent.sleep(0)

        with gevent.Timeout(30):
            gevent.joinall([gevent.spawn(sender, conns[n % 3], n) for n in range(300)], raise_error=True)
        assert results == [True] * 3000
    finally:
        host.stop()
