"""The SQLite store: one file, WAL mode, ``synchronous=FULL`` (a commit returns once it
is on disk), shared by the processes of one machine.

Opening checks the file before writing anything to it: a file that is not SQLite, is
damaged, holds other tables, or has a newer schema is refused with
:class:`~geviso.errors.StoreRefused` and left as it was.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from typing import Any, Callable

from ..errors import StoreError, StoreRefused
from .store import SCHEMA_TABLE, SCHEMA_VERSION, TABLE, OpFailed, Store, Txn, run_each

log = logging.getLogger(__name__)

SQLITE_MAGIC = b"SQLite format 3\x00"
#: How long a writer waits for another process's transaction (milliseconds).
BUSY_TIMEOUT_MS = 10_000

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        doc TEXT NOT NULL,
        mti TEXT NOT NULL,
        stan TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        next_at REAL NOT NULL,
        lease_owner TEXT,
        lease_until REAL NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        last_code TEXT NOT NULL DEFAULT '')""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_state ON {TABLE} (state, id)",
]


class _SqliteTxn(Txn):
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql, params)

    def insert(self, text: str, mti: str, stan: str, now: float) -> int:
        cur = self.db.execute(
            f"INSERT INTO {TABLE} (doc, mti, stan, state, created, next_at) VALUES (?, ?, ?, 'pending', ?, ?)",
            (text, mti, stan, now, now),
        )
        return int(cur.lastrowid or 0)

    def insert_many(self, rows: Sequence[tuple[str, str, str, float]]) -> list[int]:
        """One ``executemany``: the ids are the last ones given (a transaction holds the
        write lock, and AUTOINCREMENT ids only grow)."""
        if len(rows) < 2:
            return [self.insert(*row) for row in rows]
        self.db.executemany(
            f"INSERT INTO {TABLE} (doc, mti, stan, state, created, next_at) VALUES (?, ?, ?, 'pending', ?, ?)",
            [(text, mti, stan, now, now) for text, mti, stan, now in rows],
        )
        last = int(self.db.execute("SELECT last_insert_rowid()").fetchone()[0])
        return list(range(last - len(rows) + 1, last + 1))


def _failed(exc: Exception) -> Exception:
    """A driver error as a :class:`StoreError` (the text is SQLite's, no message data)."""
    return StoreError(f"SQLite: {exc}")


def check_existing(path: str) -> bool:
    """Refuse ``path`` unless it is absent, empty, or a SQLite file holding a geviso
    store of a schema this code knows; read only. True when it holds a store already."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StoreRefused(f"store {path}: cannot read it: {exc.strerror or exc}") from None
    if not head:
        return False
    if head != SQLITE_MAGIC:
        raise StoreRefused(f"store {path}: not a SQLite file; refusing to touch it")
    # With no write-ahead log beside it, read it as immutable: a read-only open of a WAL
    # file would create the -wal and -shm files. With one, the log holds committed data.
    flags = "mode=ro" if os.path.exists(path + "-wal") else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{urllib.parse.quote(path)}?{flags}", uri=True)
    except sqlite3.Error as exc:
        raise StoreRefused(f"store {path}: cannot open it read-only: {exc}") from None
    try:
        ok = db.execute("PRAGMA quick_check").fetchone()
        if not ok or ok[0] != "ok":
            raise StoreRefused(f"store {path}: the file is damaged (quick_check: {ok[0] if ok else '?'})")
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables - {"sqlite_sequence"}:
            return False
        if SCHEMA_TABLE not in tables:
            raise StoreRefused(f"store {path}: a SQLite file of something else (no {SCHEMA_TABLE} table)")
        row = db.execute(f"SELECT MAX(version) FROM {SCHEMA_TABLE}").fetchone()
    except sqlite3.DatabaseError as exc:
        raise StoreRefused(f"store {path}: the file is damaged or not a store: {exc}") from None
    finally:
        db.close()
    version = row[0] if row else None
    if version is None:
        return False
    if int(version) > SCHEMA_VERSION:
        raise StoreRefused(
            f"store {path}: schema version {version} is newer than this geviso's ({SCHEMA_VERSION}); upgrade geviso"
        )
    return True


class SqliteStore(Store):
    """A store in the SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = os.fspath(path)
        self.location = self.path
        check_existing(self.path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreRefused(f"store {self.path}: cannot open it: {exc}") from None
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise StoreRefused(f"store {self.path}: the file system does not allow WAL mode")
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                self.db.execute(statement)
            row = self.db.execute(f"SELECT MAX(version) FROM {SCHEMA_TABLE}").fetchone()
            if row is None or row[0] is None:
                self.db.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (?)", (SCHEMA_VERSION,))
            elif int(row[0]) > SCHEMA_VERSION:  # another process upgraded it meanwhile
                raise StoreRefused(f"store {self.path}: schema version {row[0]} is newer than this geviso's")
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self.db.close()
            raise StoreError(f"store {self.path}: cannot set it up: {exc}") from None
        except StoreRefused:
            self._rollback()
            self.db.close()
            raise
        self._txn = _SqliteTxn(self.db)
        self._closed = False

    def _rollback(self) -> None:
        try:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def run(self, ops: Sequence[Callable[[Txn], Any]]) -> list[Any]:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        try:
            self.db.execute("BEGIN IMMEDIATE")
            results = run_each(self._txn, ops, _failed)
            self.db.execute("COMMIT")
        except OpFailed as failed:
            self._rollback()
            return [failed.error]
        except sqlite3.Error as exc:
            self._rollback()
            raise StoreError(f"store {self.path}: {exc}") from None
        except BaseException:  # an op of its own failed otherwise: nothing of the batch stays
            self._rollback()
            raise
        return results

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.db.close()


__all__ = ["SqliteStore", "check_existing"]
