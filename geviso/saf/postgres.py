"""The PostgreSQL store, for forwarders on several machines: ``pip install
geviso[postgres]`` (psycopg 3).

Claims take due rows with ``FOR UPDATE SKIP LOCKED``, so forwarders of other processes
skip the rows one is claiming instead of waiting for them; the lease then keeps them
off other forwarders until it runs out. Commits are durable under the server's
``synchronous_commit`` (on by default).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Callable

from .. import masking
from ..errors import ConfigurationError, StoreError, StoreRefused
from .core import PENDING, Entry
from .store import COLUMNS, SCHEMA_TABLE, SCHEMA_VERSION, TABLE, OpFailed, Store, Txn, entry_of, run_each

SCHEMA = [
    f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} (version INTEGER NOT NULL)",
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        id BIGSERIAL PRIMARY KEY,
        doc TEXT NOT NULL,
        mti TEXT NOT NULL,
        stan TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created DOUBLE PRECISION NOT NULL,
        next_at DOUBLE PRECISION NOT NULL,
        lease_owner TEXT,
        lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        last_code TEXT NOT NULL DEFAULT '')""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_state ON {TABLE} (state, id)",
]
#: Serialises schema set-up between processes opening a new database at once.
_SETUP_LOCK = 0x6765_7669


def safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class _PgTxn(Txn):
    def __init__(self, cur: Any) -> None:
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self.cur.execute(sql.replace("?", "%s"), tuple(params))
        return self.cur

    def insert(self, text: str, mti: str, stan: str, now: float) -> int:
        self.execute(
            f"INSERT INTO {TABLE} (doc, mti, stan, state, created, next_at) VALUES (?, ?, ?, 'pending', ?, ?) "
            "RETURNING id",
            (text, mti, stan, now, now),
        )
        row = self.cur.fetchone()
        return int(row[0])

    def candidates(self, now: float, limit: int) -> list[Entry]:
        self.execute(
            f"SELECT {COLUMNS} FROM {TABLE} WHERE state = ? AND next_at <= ? AND lease_until <= ? "
            "ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
            (PENDING, now, now, limit),
        )
        return [entry_of(row) for row in self.cur.fetchall()]


class PostgresStore(Store):
    """A store in the PostgreSQL database at ``url`` (its tables created if missing)."""

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigurationError("a PostgreSQL store needs psycopg 3: pip install geviso[postgres]") from None
        self._psycopg = psycopg
        self.location = safe_url(url)
        try:
            self.db = psycopg.connect(url, connect_timeout=max(1, int(connect_timeout)))
        except psycopg.Error as exc:
            raise StoreError(f"store {self.location}: cannot connect: {_text(exc)}") from None
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
                cur.execute("SELECT to_regclass(%s), to_regclass(%s)", (SCHEMA_TABLE, TABLE))
                has_schema, has_table = cur.fetchone() or (None, None)
                if has_table is not None and has_schema is None:
                    raise StoreRefused(f"store {self.location}: table {TABLE} exists without {SCHEMA_TABLE}")
                version = None
                if has_schema is not None:
                    cur.execute(f"SELECT MAX(version) FROM {SCHEMA_TABLE}")
                    version = (cur.fetchone() or (None,))[0]
                if version is not None and int(version) > SCHEMA_VERSION:
                    raise StoreRefused(
                        f"store {self.location}: schema version {version} is newer than this geviso's "
                        f"({SCHEMA_VERSION}); upgrade geviso"
                    )
                if version is None:
                    for statement in SCHEMA:
                        cur.execute(statement)
                    cur.execute(f"INSERT INTO {SCHEMA_TABLE} (version) VALUES (%s)", (SCHEMA_VERSION,))
        except psycopg.Error as exc:
            self.db.close()
            raise StoreError(f"store {self.location}: cannot set it up: {_text(exc)}") from None
        except StoreRefused:
            self.db.close()
            raise
        self._closed = False

    def run(self, ops: Sequence[Callable[[Txn], Any]]) -> list[Any]:
        if self._closed:
            raise StoreError(f"store {self.location} is closed")
        psycopg = self._psycopg
        try:
            with self.db.transaction(), self.db.cursor() as cur:
                return run_each(_PgTxn(cur), ops, lambda exc: StoreError(f"PostgreSQL: {_text(exc)}"))
        except OpFailed as failed:  # leaving the block rolled the transaction back
            return [failed.error]
        except psycopg.Error as exc:
            raise StoreError(f"store {self.location}: {_text(exc)}") from None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.db.close()


def _text(exc: BaseException) -> str:
    """A driver error's first line (its message, never the statement's parameters)."""
    return masking.mask_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])  # it may quote a value


__all__ = ["PostgresStore", "safe_url"]
