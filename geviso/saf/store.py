"""What a store and forward store does, and the SQL both backends share.

A store is blocking code (a database driver): :class:`~geviso.saf.StoreAndForward` runs
every call in a thread of its own, never in the hub. One call, :meth:`Store.run`, runs a
batch of operations in one transaction and commits it durably, so the puts of many
greenlets share one commit (group commit). An operation is a function of a
:class:`Txn`, the handle of the open transaction.

Rows live in one table; a row is a message waiting to be forwarded (``pending``) or a
dead letter (``dead``). A forwarder claims due rows under a lease (owner, until when):
another process skips leased rows until the lease runs out, so a crashed forwarder's
rows go to the next one.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar

from ..errors import GevisoError
from .core import DEAD, PENDING, Entry, loads

T = TypeVar("T")

#: The schema this code reads and writes; a store of a newer one is refused at open.
SCHEMA_VERSION = 1
TABLE = "geviso_saf"
SCHEMA_TABLE = "geviso_saf_schema"
COLUMNS = "id, doc, state, attempts, created, next_at, reason, last_code"


class Txn(abc.ABC):
    """The operations of one open transaction; placeholders are ``?`` (each backend
    rewrites them)."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; returns a cursor."""

    @abc.abstractmethod
    def insert(self, text: str, mti: str, stan: str, now: float) -> int:
        """Store a message; returns its id."""

    def insert_many(self, rows: Sequence[tuple[str, str, str, float]]) -> list[int]:
        """Store several messages (``insert``'s arguments each); their ids in order."""
        return [self.insert(*row) for row in rows]

    def candidates(self, now: float, limit: int) -> list[Entry]:
        """Pending rows due by ``now`` whose lease ran out, in store order."""
        cur = self.execute(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE state = ? AND next_at <= ? AND lease_until <= ? ORDER BY id LIMIT ?",
            (PENDING, now, now, limit),
        )
        return [entry_of(row) for row in cur.fetchall()]

    def claim(
        self, owner: str, now: float, lease_until: float, limit: int, expired: Callable[[Entry, float], str]
    ) -> tuple[list[Entry], list[Entry]]:
        """Lease up to ``limit`` due rows to ``owner`` and count an attempt of each,
        in store order. Rows ``expired(entry, now)`` names a reason for become dead
        letters instead. Returns (claimed, expired)."""
        claimed: list[Entry] = []
        dead: list[Entry] = []
        for entry in self.candidates(now, limit):
            reason = expired(entry, now)
            if reason:
                self.dead(entry.id, reason, entry.last_code)
                entry.state, entry.reason = DEAD, reason
                dead.append(entry)
            else:
                entry.attempts += 1
                claimed.append(entry)
        for start in range(0, len(claimed), 500):  # one statement per 500 rows
            ids = [entry.id for entry in claimed[start : start + 500]]
            self.execute(
                f"UPDATE {TABLE} SET attempts = attempts + 1, lease_owner = ?, lease_until = ? "
                f"WHERE id IN ({', '.join('?' * len(ids))})",
                (owner, lease_until, *ids),
            )
        return claimed, dead

    def ack(self, entry_id: int) -> bool:
        """The message was delivered: remove it. False if it was gone already."""
        return bool(self.execute(f"DELETE FROM {TABLE} WHERE id = ?", (entry_id,)).rowcount)

    def ack_many(self, ids: Sequence[int]) -> int:
        """Several messages were delivered: remove them; how many were still there."""
        removed = 0
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            removed += int(self.execute(f"DELETE FROM {TABLE} WHERE id IN ({marks})", chunk).rowcount)
        return removed

    def retry(self, entry_id: int, owner: str, next_at: float, code: str = "", *, undo: bool = False) -> bool:
        """Release ``owner``'s lease; the message is due again at ``next_at``. ``undo``:
        the attempt surely reached nobody (no link took it), so it is not counted."""
        cur = self.execute(
            f"UPDATE {TABLE} SET next_at = ?, lease_owner = NULL, lease_until = 0, last_code = ?, "
            "attempts = attempts - ? WHERE id = ? AND state = ? AND lease_owner = ?",
            (next_at, code, 1 if undo else 0, entry_id, PENDING, owner),
        )
        return bool(cur.rowcount)

    def dead(self, entry_id: int, reason: str, code: str = "") -> bool:
        """Make it a dead letter with ``reason``."""
        cur = self.execute(
            f"UPDATE {TABLE} SET state = ?, reason = ?, last_code = ?, lease_owner = NULL, lease_until = 0 "
            "WHERE id = ? AND state = ?",
            (DEAD, reason, code, entry_id, PENDING),
        )
        return bool(cur.rowcount)

    def release(self, owner: str) -> int:
        """Give up every lease of ``owner`` (a forwarder stopping)."""
        cur = self.execute(
            f"UPDATE {TABLE} SET lease_owner = NULL, lease_until = 0 WHERE lease_owner = ?",
            (owner,),
        )
        return int(cur.rowcount)

    def get(self, entry_id: int) -> Optional[Entry]:
        """The row ``entry_id``, or None."""
        cur = self.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE id = ?", (entry_id,))
        row = cur.fetchone()
        return entry_of(row) if row is not None else None

    def entries(self, state: Optional[str] = None, limit: int = 100) -> list[Entry]:
        """Rows in store order (of ``state`` if given)."""
        if state is None:
            cur = self.execute(f"SELECT {COLUMNS} FROM {TABLE} ORDER BY id LIMIT ?", (limit,))
        else:
            cur = self.execute(f"SELECT {COLUMNS} FROM {TABLE} WHERE state = ? ORDER BY id LIMIT ?", (state, limit))
        return [entry_of(row) for row in cur.fetchall()]

    def requeue(self, ids: Optional[Sequence[int]], now: float) -> int:
        """Make messages due at once: dead letters (those of ``ids``, or all of them)
        become pending again; a pending one of ``ids`` keeps its lease, if any."""
        sql = f"UPDATE {TABLE} SET state = ?, reason = '', next_at = ? WHERE state IN (?, ?)"
        return self._by_ids(sql, (PENDING, now, DEAD, PENDING if ids is not None else DEAD), ids)

    def purge(self, ids: Optional[Sequence[int]], state: Optional[str] = DEAD) -> int:
        """Delete rows (those of ``ids`` and/or of ``state``)."""
        sql = f"DELETE FROM {TABLE} WHERE 1 = 1"
        params: tuple[Any, ...] = ()
        if state is not None:
            sql += " AND state = ?"
            params = (state,)
        return self._by_ids(sql, params, ids)

    def _by_ids(self, sql: str, params: tuple[Any, ...], ids: Optional[Sequence[int]]) -> int:
        if ids is None:
            return int(self.execute(sql, params).rowcount)
        return sum(int(self.execute(sql + " AND id = ?", (*params, i)).rowcount) for i in ids)

    def any_pending(self) -> bool:
        """True while a message is pending (one index probe, not a count)."""
        return self.execute(f"SELECT 1 FROM {TABLE} WHERE state = ? LIMIT 1", (PENDING,)).fetchone() is not None

    def counts(self) -> dict[str, Any]:
        """``pending``, ``dead``, ``oldest`` (creation time of the oldest pending row, or
        None) and ``attempts`` (summed over pending rows)."""
        cur = self.execute(
            f"SELECT state, COUNT(*), MIN(created), COALESCE(SUM(attempts), 0) FROM {TABLE} GROUP BY state"
        )
        out: dict[str, Any] = {PENDING: 0, DEAD: 0, "oldest": None, "attempts": 0}
        for state, n, oldest, attempts in cur.fetchall():
            out[str(state)] = int(n)
            if state == PENDING:
                out["oldest"] = float(oldest) if oldest is not None else None
                out["attempts"] = int(attempts)
        return out


class Own:
    """An op of the forwarder's own: ``Own("ack_many", ids)`` calls ``txn.ack_many(ids)``.
    It runs without a savepoint (two statements fewer, each a hand-off of the GIL
    between the store's thread and the hub): it fails only when the database does, and
    then the whole transaction is rolled back and fails."""

    __slots__ = ("args", "name")

    def __init__(self, name: str, *args: Any) -> None:
        self.name, self.args = name, args

    def __call__(self, txn: Txn) -> Any:
        return getattr(txn, self.name)(*self.args)


class OpFailed(Exception):
    """The lone op of a transaction raised ``error``: roll back, and it is the result."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


def run_each(txn: Txn, ops: Sequence[Callable[[Txn], Any]], failed: Callable[[Exception], Exception]) -> list[Any]:
    """Run ``ops`` in ``txn``, each under a savepoint: an op that raises is undone alone
    and its result is its exception (``failed`` turns a driver's into a geviso error).
    A lone op runs without one (two statements fewer): it raises :class:`OpFailed`, and
    the backend rolls the transaction back and returns ``[error]``."""
    if len(ops) == 1:
        try:
            return [ops[0](txn)]
        except Exception as exc:
            raise OpFailed(exc if isinstance(exc, GevisoError) else failed(exc)) from None
    results: list[Any] = []
    for op in ops:
        if isinstance(op, Own):  # raises: the caller rolls everything back
            results.append(op(txn))
            continue
        txn.execute("SAVEPOINT geviso_op")
        try:
            result = op(txn)
        except Exception as exc:  # one caller's bad op must not undo the others' puts
            txn.execute("ROLLBACK TO SAVEPOINT geviso_op")
            result = exc if isinstance(exc, GevisoError) else failed(exc)
        txn.execute("RELEASE SAVEPOINT geviso_op")
        results.append(result)
    return results


def entry_of(row: Sequence[Any]) -> Entry:
    """The :class:`Entry` of a row of :data:`COLUMNS`."""
    entry_id, text, state, attempts, created, next_at, reason, code = row
    return Entry(
        id=int(entry_id),
        doc=loads(text),
        state=str(state),
        attempts=int(attempts),
        created=float(created),
        next_at=float(next_at),
        reason=str(reason or ""),
        last_code=str(code or ""),
    )


class Store(abc.ABC):
    """A durable store of messages: SQLite (:class:`~geviso.saf.sqlite.SqliteStore`) or
    PostgreSQL (:class:`~geviso.saf.postgres.PostgresStore`). Blocking; one thread at a
    time."""

    #: Where it is, for messages (a path, or a URL without its password).
    location = ""

    @abc.abstractmethod
    def run(self, ops: Sequence[Callable[[Txn], Any]]) -> list[Any]:
        """Run ``ops`` in one transaction and commit it durably; each op's result, or
        the exception it raised (that op alone is undone). Raises :class:`StoreError`
        when the transaction cannot commit: then none of them happened."""

    def call(self, op: Callable[[Txn], T]) -> T:
        """Run one operation in a transaction of its own."""
        result = self.run([op])[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection (idempotent)."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"


def open_store(location: str, **options: Any) -> Store:
    """The store at ``location``: a ``postgresql://`` (or ``postgres://``) URL, else a
    SQLite file path (``sqlite:///path`` also accepted)."""
    path = sqlite_path(location)
    if path is None:
        from .postgres import PostgresStore

        return PostgresStore(location, **options)
    from .sqlite import SqliteStore

    return SqliteStore(path, **options)


def sqlite_path(location: str) -> Optional[str]:
    """The SQLite file a store location names; None for a PostgreSQL URL."""
    if location.startswith(("postgresql://", "postgres://")):
        return None
    return location[len("sqlite://") :] if location.startswith("sqlite://") else location


__all__ = ["SCHEMA_VERSION", "OpFailed", "Own", "Store", "Txn", "open_store", "run_each", "sqlite_path"]
