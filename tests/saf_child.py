"""A forwarding process for the store and forward crash and sharing tests.

``python saf_child.py STORE PORT LOGDIR TOTAL [--no-put] [--exit-when-done] [--lease=S]``: connects
to the mock host on PORT, forwards STORE and (unless ``--no-put``) stores messages
0..TOTAL-1 of :func:`safhost.advice`, resuming after the last one a previous run began.
It logs to LOGDIR/puts.log ``begin i`` before and ``done i`` after each put, and to
LOGDIR/delivered.log ``STAN monotonic-time pid`` once a delivery is recorded; writes
go straight to the kernel, so a SIGKILL loses none. With ``--exit-when-done`` it exits
0 once everything is stored and the store is empty. ``--lease`` (default 1 s, short so
that a killed forwarder's messages are taken over quickly) sets the forwarder's lease.
"""

from __future__ import annotations

import os
import random
import sys
import time

import gevent
from iso8583.specs import default as spec
from safhost import advice

import geviso


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def next_to_put(path: str) -> int:
    try:
        with open(path) as fh:
            begun = [int(line.split()[1]) for line in fh if line.startswith("begin ")]
    except FileNotFoundError:
        return 0
    return max(begun) + 1 if begun else 0


def main(argv: list[str]) -> int:
    store, port, logdir, total = argv[0], int(argv[1]), argv[2], int(argv[3])
    puts_log, delivered_log = os.path.join(logdir, "puts.log"), os.path.join(logdir, "delivered.log")
    pid = os.getpid()
    lease = next((float(arg.split("=", 1)[1]) for arg in argv if arg.startswith("--lease=")), 1.0)

    def delivered(entry: geviso.saf.Entry, response: dict[str, str]) -> None:
        append(delivered_log, f"{entry.doc['11']} {time.monotonic():.6f} {pid}")

    conn = geviso.Connection(("127.0.0.1", port), spec, connect_timeout=5).connect()
    saf = geviso.StoreAndForward(
        conn, store, timeout=0.3, retry_wait=0.05, max_wait=0.2, lease=lease, window=8,
        poll_interval=0.05, on_delivered=delivered,
    )  # fmt: skip
    rng = random.Random()

    def putter() -> None:
        for i in range(next_to_put(puts_log), total):
            append(puts_log, f"begin {i}")
            saf.put(advice(i, mti=("0420", "0220", "0120")[i % 3]))
            append(puts_log, f"done {i}")
            gevent.sleep(rng.uniform(0, 0.01))

    if "--no-put" not in argv:
        gevent.spawn(putter).join()
    if "--exit-when-done" in argv:
        if not saf.drain(120):
            return 1
        saf.close()
        conn.close()
        return 0
    gevent.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
