"""A fault-injecting TCP proxy for the fault tests: real sockets, gevent, ISO 8583 frames.

:class:`FaultProxy` listens on loopback, dials ``upstream`` for every client and forwards
whole frames both ways. On command (:meth:`FaultProxy.arm`, :meth:`FaultProxy.cut`,
:meth:`FaultProxy.stall`) or at random with a seed (``rates``: a probability per frame
for each kind, for each direction), it injects faults and counts them by kind in :attr:`FaultProxy.counts`:

- ``latency``: hold a frame back for a random time (and everything behind it);
- ``fin`` / ``rst``: cut the link with a clean FIN, or with a reset (SO_LINGER 0);
- ``stall``: stop forwarding and keep both sockets open: a half-open link;
- ``split``: write a frame one byte at a time; ``merge``: write several frames at once;
- ``duplicate``: write a frame twice; ``corrupt``: garble a byte of the MTI, so the frame
  is certainly undecodable (a quietly altered STAN is a mismatch no link can detect);
- ``garbage``: write random bytes; ``oversize``: write a length header over the framing's
  ``max_length`` (needs a framing whose ``max_length`` is below what the header can say).

Also here, for leak checks: :func:`live_greenlets` and :func:`open_sockets`.
"""

from __future__ import annotations

import collections
import gc
import os
import random
import socket as _stdlib_socket
import struct
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import gevent
import gevent.event
import gevent.queue
import gevent.server
import greenlet
from gevent import socket

import geviso
from geviso.errors import ConfigurationError, FramingError
from geviso.framing import TPDU_SIZE, Framing

KINDS = ("latency", "fin", "rst", "stall", "split", "merge", "duplicate", "corrupt", "garbage", "oversize")
LINK_KINDS = frozenset({"fin", "rst", "stall"})
TO_CLIENT, TO_HOST = "client", "host"
_EOF = object()


def split_frames(framing: Framing, buf: bytearray) -> list[bytes]:
    """Take every complete raw frame (header included) off the front of ``buf``."""
    frames = []
    hsize = framing.header_size
    pos = 0
    while len(buf) - pos >= hsize:
        length = max(0, framing.unpack_length(bytes(buf[pos : pos + hsize])))
        if framing.include_header:
            length = max(0, length - hsize)
        end = pos + hsize + length
        if end > len(buf):
            break
        frames.append(bytes(buf[pos:end]))
        pos = end
    del buf[:pos]
    return frames


class Link:
    """One proxied client: two sockets, a reader and a writer greenlet per direction."""

    def __init__(self, proxy: FaultProxy, client: Any, host: Any) -> None:
        self.proxy = proxy
        self.sockets = {TO_CLIENT: client, TO_HOST: host}
        self.queues: dict[str, gevent.queue.Queue[Any]] = {d: gevent.queue.Queue() for d in (TO_CLIENT, TO_HOST)}
        self.stalled = False
        self.cut_at: Optional[str] = None
        self.done = gevent.event.Event()
        self._eof: set[str] = set()
        self.greenlets = [
            gevent.spawn(self._pump, client, TO_HOST),
            gevent.spawn(self._pump, host, TO_CLIENT),
            gevent.spawn(self._writer, TO_HOST),
            gevent.spawn(self._writer, TO_CLIENT),
        ]

    @property
    def forwarding(self) -> bool:
        return not (self.stalled or self.cut_at or self.done.is_set())

    def _pump(self, src: Any, direction: str) -> None:
        buf = bytearray()
        raw = False
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if not self.forwarding:
                    continue  # stalled or cut: read and drop, so we still see the EOF
                if raw:
                    self.queues[direction].put(("plain", bytes(data), 0.0))
                    continue
                buf += data
                try:
                    frames = split_frames(self.proxy.framing, buf)
                except FramingError:
                    raw = True  # not our framing (a test's garbage): pass it through
                    frames = [bytes(buf)]
                    buf.clear()
                for frame in frames:
                    if not self.forwarding:
                        break
                    self.proxy._route(self, direction, frame)
        except OSError:
            self.close()
            return
        self.queues[direction].put(_EOF)

    def _writer(self, direction: str) -> None:
        dst = self.sockets[direction]
        queue = self.queues[direction]
        carry: Any = None
        try:
            while True:
                item, carry = (carry, None) if carry is not None else (queue.get(), None)
                if item is _EOF:
                    self._half_close(direction)
                    return
                if not self.forwarding:
                    continue
                mode, data, delay = item
                if delay:
                    gevent.sleep(delay)
                if mode == "split":
                    for i in range(len(data)):
                        dst.sendall(data[i : i + 1])
                        gevent.sleep(0)
                    continue
                if mode == "merge":
                    parts = [data]
                    wanted = self.proxy.rng.randint(*self.proxy.merge)
                    with gevent.Timeout(self.proxy.merge_wait, False):
                        while len(parts) < wanted:
                            nxt = queue.get()
                            if nxt is _EOF or nxt[2]:
                                carry = nxt  # an EOF or a delayed frame ends the batch
                                break
                            parts.append(nxt[1])
                    data = b"".join(parts)
                if self.forwarding:
                    dst.sendall(data)
        except OSError:
            self.close()

    def _half_close(self, direction: str) -> None:
        """The sender of ``direction``'s bytes closed: pass the FIN on; close when both did."""
        self._eof.add(direction)
        try:
            self.sockets[direction].shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            pass
        if len(self._eof) == 2:
            self.close()

    def stall(self) -> None:
        """Stop forwarding both ways, keep both sockets open (half-open to each peer)."""
        self.stalled = True

    def cut(self, *, rst: bool = False) -> None:
        """Cut the link: a FIN to both peers (they may still send; we drop it), or a reset."""
        if self.done.is_set():
            return
        if rst:
            self.close(rst=True)
            return
        self.cut_at = "fin"
        for sock in self.sockets.values():
            try:
                sock.shutdown(_stdlib_socket.SHUT_WR)
            except OSError:
                pass
        # The pumps read until the peers close too; a peer that never does is dropped.
        self.greenlets.append(gevent.spawn_later(5.0, self.close))

    def close(self, *, rst: bool = False) -> None:
        if self.done.is_set():
            return
        self.done.set()
        for sock in self.sockets.values():
            try:
                if rst:
                    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
        current = gevent.getcurrent()
        for g in self.greenlets:
            if g is not current:
                g.kill(block=False)
        if self in self.proxy.links:
            self.proxy.links.remove(self)


class FaultProxy:
    """A TCP proxy to ``upstream`` that injects faults on command or at random.

    ``rates`` maps a fault kind to its probability per frame travelling to the client
    (responses), ``host_rates`` the same for frames to the host (requests); ``seed``
    makes the random choices repeatable. ``framing`` is the links' framing: the proxy
    splits frames with it, and ``oversize`` writes a header over its ``max_length``.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        framing: Optional[Framing] = None,
        seed: Optional[int] = None,
        rates: Optional[Mapping[str, float]] = None,
        host_rates: Optional[Mapping[str, float]] = None,
        latency: tuple[float, float] = (0.005, 0.05),
        merge: tuple[int, int] = (2, 8),
        merge_wait: float = 0.02,
        garbage_size: tuple[int, int] = (1, 64),
    ) -> None:
        self.upstream = upstream
        self.framing = framing if framing is not None else geviso.framing.binary(2)
        self.rng = random.Random(seed)
        self.rates = {TO_CLIENT: dict(rates or {}), TO_HOST: dict(host_rates or {})}
        for kind in (*self.rates[TO_CLIENT], *self.rates[TO_HOST]):
            self._check_kind(kind)
        self.latency = latency
        self.merge = merge
        self.merge_wait = merge_wait
        self.garbage_size = garbage_size
        #: Faults injected so far, by kind; and by (direction, kind) for those on frames.
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_direction: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Frames forwarded so far, by direction.
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.accepted = 0
        self.links: list[Link] = []
        self._armed: dict[str, collections.deque[str]] = {TO_CLIENT: collections.deque(), TO_HOST: collections.deque()}
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ConfigurationError(f"unknown fault {kind!r}; choose from {', '.join(KINDS)}")
        framing = self.framing
        most = framing.header_limit - (framing.header_size if framing.include_header else 0)
        if kind == "oversize" and framing.max_length >= most:
            raise ConfigurationError("oversize needs a framing whose max_length is below its header limit")

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self.server.start()
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_port)

    def stop(self) -> None:
        """Stop accepting and drop every link."""
        for link in list(self.links):
            link.close()
        self.server.stop(timeout=1)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _handle(self, client: Any, address: Any) -> None:
        self.accepted += 1
        try:
            host = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        for sock in (client, host):
            sock.settimeout(None)
            sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
        link = Link(self, client, host)
        self.links.append(link)
        link.done.wait()

    # -- commands ---------------------------------------------------------------------
    def arm(self, kind: str, *, to: str = TO_CLIENT, count: int = 1) -> None:
        """Inject ``kind`` on the next ``count`` frames travelling ``to`` the client or host.

        A link fault (fin, rst, stall) armed this way strikes when that frame arrives,
        which is how a test cuts a link while a request is in flight.
        """
        self._check_kind(kind)
        self._armed[to].extend([kind] * count)

    def cut(self, *, rst: bool = False) -> int:
        """Cut every current link now (FIN, or RST); how many were cut."""
        links = list(self.links)
        for link in links:
            link.cut(rst=rst)
            self.counts["rst" if rst else "fin"] += 1
        return len(links)

    def stall(self) -> int:
        """Stall every current link now; how many were stalled."""
        links = [link for link in self.links if not link.stalled]
        for link in links:
            link.stall()
            self.counts["stall"] += 1
        return len(links)

    def wait_links(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` links are open through the proxy."""
        with gevent.Timeout(timeout, False):
            while len(self.links) < n:
                gevent.sleep(0.005)
        return len(self.links) >= n

    # -- the faults -------------------------------------------------------------------
    def _faults_for(self, direction: str) -> list[str]:
        kinds = []
        armed = self._armed[direction]
        if armed:
            kinds.append(armed.popleft())
        rates = self.rates[direction]
        if rates:
            rnd = self.rng.random
            kinds.extend(kind for kind, rate in rates.items() if rnd() < rate)
        return kinds

    def _route(self, link: Link, direction: str, frame: bytes) -> None:
        kinds = self._faults_for(direction)
        queue = link.queues[direction]
        if not kinds:
            self.forwarded[direction] += 1
            queue.put(("plain", frame, 0.0))
            return
        for kind in kinds:
            if kind in LINK_KINDS:
                self._count(direction, kind)
                if kind == "stall":
                    link.stall()
                else:
                    link.cut(rst=kind == "rst")
                return
        count = self._count
        mode, delay = "plain", 0.0
        if "corrupt" in kinds:
            count(direction, "corrupt")
            frame = self._corrupt(frame)
        if "latency" in kinds:
            count(direction, "latency")
            delay = self.rng.uniform(*self.latency)
        if "split" in kinds:
            count(direction, "split")
            mode = "split"
        elif "merge" in kinds:
            count(direction, "merge")
            mode = "merge"
        self.forwarded[direction] += 1
        queue.put((mode, frame, delay))
        if "duplicate" in kinds:
            count(direction, "duplicate")
            queue.put(("plain", frame, 0.0))
        if "garbage" in kinds:
            count(direction, "garbage")
            size = self.rng.randint(*self.garbage_size)
            queue.put(("plain", bytes(self.rng.getrandbits(8) for _ in range(size)), 0.0))
        if "oversize" in kinds:
            count(direction, "oversize")
            queue.put(("plain", self.framing.pack_length(self.framing.header_limit), 0.0))

    def _count(self, direction: str, kind: str) -> None:
        self.counts[kind] += 1
        self.by_direction[direction, kind] += 1

    def _corrupt(self, frame: bytes) -> bytes:
        """The frame with one MTI byte replaced by 0xFF (never valid ASCII)."""
        start = self.framing.header_size + (TPDU_SIZE if self.framing.tpdu is not None else 0)
        if len(frame) <= start:
            return frame
        pos = start + self.rng.randrange(min(4, len(frame) - start))
        return frame[:pos] + b"\xff" + frame[pos + 1 :]


# -- leak checks ------------------------------------------------------------------------
def live_greenlets() -> list[Any]:
    """Every greenlet in the process that has started and not finished (after a gc)."""
    gc.collect()
    return [g for g in gc.get_objects() if isinstance(g, greenlet.greenlet) and not g.dead]


def _tcp_table() -> dict[int, tuple[tuple[str, int], tuple[str, int], int]]:
    """Socket inode -> (local address, remote address, TCP state) from /proc/net/tcp."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, state, inode = cols[1], cols[2], int(cols[3], 16), int(cols[9])

            def addr(text: str) -> tuple[str, int]:
                host, port = text.split(":")
                return host, int(port, 16)

            table[inode] = (addr(local), addr(remote), state)
    return table


def open_fds() -> list[int]:
    """File descriptors this process has open."""
    return sorted(int(fd) for fd in os.listdir("/proc/self/fd"))


def open_sockets() -> Iterator[tuple[int, tuple[str, int], tuple[str, int], int]]:
    """(fd, local address, remote address, TCP state) for each TCP socket we hold."""
    table = _tcp_table()
    for fd in open_fds():
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inode = int(target[8:-1])
            if inode in table:
                local, remote, state = table[inode]
                yield fd, local, remote, state


def sockets_to(port: int) -> list[int]:
    """Our file descriptors of TCP sockets connected to ``port`` on loopback."""
    return [fd for fd, _, remote, state in open_sockets() if remote[1] == port and state != 10]
