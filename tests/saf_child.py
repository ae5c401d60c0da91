"""A forwarding process for the store and forward crash and sharing tests.

``python saf_child.py STORE PORT LOGDIR TOTAL [--no-put] [--exit-when-done] [--lease=S]
[--timeout=S] [--die-in=PHASE:N] [--accepted=CODE] [--max-attempts=N] [--put-limit=N]``:
connects to the mock host on PORT, forwards STORE and (unless ``--no-put``) stores messages
0..TOTAL-1 of :func:`safhost.advice` (at most ``--put-limit`` of them), resuming after
the last one a previous run began. It logs to
LOGDIR/puts.log ``begin i`` before and ``done i`` after each put, and to
LOGDIR/delivered.log ``STAN monotonic-time pid`` once a delivery is recorded; writes
go straight to the kernel, so a SIGKILL loses none. With ``--exit-when-done`` it exits
0 once everything is stored and the store is empty. ``--lease`` (default 1 s, short so
that a killed forwarder's messages are taken over quickly) sets the forwarder's lease,
``--timeout`` (default 0.3 s) its wait for each answer.

The store is wrapped (:class:`PhaseStore`): each acknowledgement also writes, in the
same transaction, the STANs it removes and the time to a table ``acked`` of the store
file, so the test knows exactly when each answer was recorded. ``--die-in=PHASE:N``
makes the process SIGKILL itself once it was N times in PHASE (a batch of rows counts
one per row): ``put`` (a put's row is
written and its transaction not yet committed), ``send`` (the attempt is counted in the
store and the forwarder is in the link's send), ``ack`` (the acknowledgement's rows are
deleted and its transaction not yet committed). Before dying it appends ``PHASE pid``
to LOGDIR/phases.log.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable

import gevent
from iso8583.specs import default as spec
from safhost import advice

import geviso
from geviso.saf.store import TABLE, Store, Txn, open_store

ACKED = "acked"


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


class Killer:
    """SIGKILLs this process the N-th time it reaches PHASE (after logging it)."""

    def __init__(self, spec_text: str, log: str) -> None:
        self.phase, _, count = spec_text.partition(":")
        self.left = int(count or 0)
        self.log = log

    def reached(self, phase: str, count: int = 1) -> None:
        """In ``phase`` for ``count`` messages (a batch's rows count one each: however
        the commits group them, a run acknowledges its N messages)."""
        if phase != self.phase or self.left <= 0:
            return
        self.left -= count
        if self.left <= 0:
            append(self.log, f"{phase} {os.getpid()}")
            os.kill(os.getpid(), signal.SIGKILL)


class PhaseTxn(Txn):
    """The open transaction, with the test's hooks around puts and acknowledgements."""

    def __init__(self, inner: Txn, killer: Killer) -> None:
        self.inner, self.killer = inner, killer

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.inner.execute(sql, params)

    def insert(self, text: str, mti: str, stan: str, now: float) -> int:
        return self.insert_many([(text, mti, stan, now)])[0]

    def insert_many(self, rows: Sequence[tuple[str, str, str, float]]) -> list[int]:
        ids = self.inner.insert_many(rows)
        self.killer.reached("put", len(rows))
        return ids

    def candidates(self, now: float, limit: int) -> list[geviso.saf.Entry]:
        return self.inner.candidates(now, limit)

    def ack_many(self, ids: Sequence[int]) -> int:
        marks = ", ".join("?" * len(ids))
        cur = self.inner.execute(f"SELECT stan FROM {TABLE} WHERE id IN ({marks})", ids)
        stans = [row[0] for row in cur.fetchall()]
        removed = self.inner.ack_many(ids)
        at = time.monotonic()
        for stan in stans:
            self.inner.execute(f"INSERT INTO {ACKED} (stan, at, pid) VALUES (?, ?, ?)", (stan, at, os.getpid()))
        self.killer.reached("ack", len(stans))
        return removed


class PhaseStore(Store):
    def __init__(self, inner: Store, killer: Killer) -> None:
        self.inner, self.killer = inner, killer
        self.location = inner.location
        columns = "stan TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, pid INTEGER NOT NULL"
        inner.call(lambda txn: txn.execute(f"CREATE TABLE IF NOT EXISTS {ACKED} ({columns})"))

    def run(self, ops: Sequence[Callable[[Txn], Any]]) -> list[Any]:
        killer = self.killer
        return self.inner.run([lambda txn, op=op: op(PhaseTxn(txn, killer)) for op in ops])

    def close(self) -> None:
        self.inner.close()


class PhaseTarget:
    """The link, with the test's hook before each send."""

    def __init__(self, conn: geviso.Connection, killer: Killer) -> None:
        self.conn, self.killer = conn, killer
        self.spec, self.stan = conn.spec, conn.stan

    def send(self, doc: dict[str, str], **options: Any) -> dict[str, str]:
        self.killer.reached("send")
        return self.conn.send(doc, **options)


def option(argv: list[str], name: str, default: str = "") -> str:
    return next((arg.split("=", 1)[1] for arg in argv if arg.startswith(f"--{name}=")), default)


def main(argv: list[str]) -> int:
    store, port, logdir, total = argv[0], int(argv[1]), argv[2], int(argv[3])
    puts_log, delivered_log = os.path.join(logdir, "puts.log"), os.path.join(logdir, "delivered.log")
    pid = os.getpid()
    killer = Killer(option(argv, "die-in"), os.path.join(logdir, "phases.log"))
    accepted = option(argv, "accepted")
    max_attempts = option(argv, "max-attempts")

    def delivered(entry: geviso.saf.Entry, response: dict[str, str]) -> None:
        append(delivered_log, f"{entry.doc['11']} {time.monotonic():.6f} {pid}")

    conn = geviso.Connection(("127.0.0.1", port), spec, connect_timeout=5).connect()
    saf = geviso.StoreAndForward(
        PhaseTarget(conn, killer), PhaseStore(open_store(store), killer),
        timeout=float(option(argv, "timeout", "0.3")), retry_wait=0.05, max_wait=0.2,
        lease=float(option(argv, "lease", "1")), window=8, poll_interval=0.05, on_delivered=delivered,
        accepted_codes=[accepted] if accepted else None, max_attempts=int(max_attempts) if max_attempts else None,
    )  # fmt: skip
    rng = random.Random()

    first = next_to_put(puts_log)
    last = min(total, first + int(option(argv, "put-limit", str(total))))

    def putter() -> None:
        for i in range(first, last):
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
