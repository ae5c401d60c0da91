"""The PostgreSQL store against a throwaway server (see pgserver.py): forwarding,
retransmission, dead letters, schema checks, and several processes sharing one
database (``FOR UPDATE SKIP LOCKED`` and leases), crashes included."""

from __future__ import annotations

from pathlib import Path

import gevent
import pytest
from iso8583.specs import default as spec
from pgserver import PostgresServer, postgres  # noqa: F401 - the fixture
from safhost import JournalHost, advice, prefill
from test_saf_crash import SHARING, check_invariants, child, lines, wait_exit

import geviso
from geviso.errors import StoreRefused
from geviso.saf import DEAD
from geviso.saf.postgres import PostgresStore, safe_url
from geviso.saf.store import SCHEMA_TABLE


@pytest.fixture
def url(postgres: PostgresServer) -> str:  # noqa: F811
    return postgres.new_database()


@pytest.fixture
def host():
    mock = JournalHost()
    mock.start()
    yield mock
    mock.stop()


def test_messages_are_stored_forwarded_retransmitted_and_dead_lettered(url, host):
    host.rules = [
        {"match": {"fields": {"41": "TERMDEAD"}}, "code": "96"},
        {"drop_first": 1},
    ]
    conn = geviso.Connection(host.address, spec).connect()
    options = dict(timeout=0.3, retry_wait=0.05, max_wait=0.1, poll_interval=0.05, window=4)
    with geviso.StoreAndForward(conn, url, accepted_codes={"00"}, max_attempts=2, **options) as saf:
        saf.put(advice(0))
        saf.put(advice(1, mti="0220", terminal="TERMDEAD"))
        assert saf.drain(15)
        [dead] = saf.entries(DEAD)
    conn.close()
    assert host.receipts("000001") == ["0420", "0421"]
    assert host.receipts("000002") == ["0220", "0221"]
    assert dead.doc["11"] == "000002" and dead.reason.startswith("no accepted answer after 2 attempts")


def test_a_database_of_a_newer_schema_is_refused(url):
    PostgresStore(url).close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"UPDATE {SCHEMA_TABLE} SET version = 99")
    with pytest.raises(StoreRefused, match="schema version 99 is newer"):
        PostgresStore(url)


def test_an_unreachable_server_is_a_clear_store_error_without_the_password(postgres):  # noqa: F811
    bad = f"postgresql://postgres:s3cret@127.0.0.1:{postgres.port + 1 if postgres.port < 65535 else 1}/x"
    with pytest.raises(geviso.StoreError) as caught:
        PostgresStore(bad, connect_timeout=2)
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
    assert safe_url("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"


def test_processes_sharing_one_database_forward_each_message_once(url, host, tmp_path: Path):
    host.rules = [{"delay_ms": [0, 20]}]
    prefill(url, 200)
    flags = ("--no-put", "--exit-when-done", *SHARING)
    procs = [child(url, host.address[1], tmp_path, 200, *flags) for _ in range(3)]
    for proc in procs:
        assert wait_exit(proc, 120) == 0, proc.stderr.read().decode(errors="replace")[-2000:]
    assert sorted(doc["11"] for _, doc in host.heard) == [f"{i + 1:06d}" for i in range(200)]
    assert len({pid for _, _, pid in lines(tmp_path / "delivered.log")}) >= 2


def test_sigkilled_forwarders_lose_nothing_with_postgresql(url, host, tmp_path: Path):
    host.rules = [{"match": {"fields": {"4": [f"{1000 + i:012d}" for i in range(0, 150, 4)]}}, "drop_first": 1}]
    for seconds in (0.5, 0.8, 0.6, 1.0, 0.7):
        proc = child(url, host.address[1], tmp_path, 150)
        gevent.sleep(seconds)
        proc.kill()
        wait_exit(proc, 10)
    proc = child(url, host.address[1], tmp_path, 150, "--exit-when-done")
    assert wait_exit(proc, 120) == 0, proc.stderr.read().decode(errors="replace")[-2000:]
    figures = check_invariants(host, tmp_path, url)
    assert figures["stored"] > 0
