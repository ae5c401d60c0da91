"""The SQLite store: what it refuses at open (and leaves untouched), a full disk, and
several processes sharing one file under leases."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gevent
import pytest
from safhost import JournalHost, advice, prefill
from test_saf_crash import HERE, SHARING, child, lines, wait_exit

import geviso
from geviso.errors import StoreRefused
from geviso.saf import PENDING
from geviso.saf.core import dumps
from geviso.saf.sqlite import SqliteStore
from geviso.saf.store import SCHEMA_TABLE


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def put_one(store: SqliteStore, i: int = 0) -> int:
    doc = advice(i)
    return store.call(lambda txn: txn.insert(dumps(doc), doc["t"], doc["11"], time.time()))


def test_a_new_file_gets_the_schema_in_wal_mode_with_full_sync(tmp_path):
    with SqliteStore(str(tmp_path / "saf.db")) as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        put_one(store)
    with SqliteStore(str(tmp_path / "saf.db")) as again:  # reopened: same schema, data kept
        assert [e.doc["11"] for e in again.call(lambda txn: txn.entries())] == ["000001"]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"this is not a database at all" * 40, "not a SQLite file"),
        (b"SQLite format 3\x00" + b"\xff" * 4000, "damaged|cannot open"),
    ],
)
def test_a_corrupt_file_is_refused_at_open_and_left_untouched(tmp_path, content, problem):
    path = tmp_path / "saf.db"
    path.write_bytes(content)
    before = snapshot(tmp_path)
    with pytest.raises(StoreRefused, match=problem) as caught:
        geviso.StoreAndForward(None, str(path), forward=False)
    assert "\n" not in str(caught.value)
    assert snapshot(tmp_path) == before


def test_a_truncated_store_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "saf.db"
    with SqliteStore(str(path)) as store:
        for i in range(200):
            put_one(store, i)
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path.write_bytes(path.read_bytes()[: 3 * 4096 + 100])
    before = snapshot(tmp_path)
    with pytest.raises(StoreRefused):
        SqliteStore(str(path))
    assert snapshot(tmp_path) == before


def test_a_store_of_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "saf.db"
    SqliteStore(str(path)).close()
    db = sqlite3.connect(str(path))
    db.execute(f"UPDATE {SCHEMA_TABLE} SET version = 99")
    db.commit()
    db.close()
    before = snapshot(tmp_path)
    with pytest.raises(StoreRefused, match="schema version 99 is newer"):
        SqliteStore(str(path))
    assert snapshot(tmp_path) == before


def test_another_applications_database_is_refused(tmp_path):
    path = tmp_path / "app.db"
    db = sqlite3.connect(str(path))
    db.execute("CREATE TABLE customers (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(StoreRefused, match="something else"):
        SqliteStore(str(path))


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import gevent
    import geviso
    from safhost import advice
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    saf = geviso.StoreAndForward(None, sys.argv[1], forward=False)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    stored = 0
    for i in range(100000):
        doc = advice(i)
        doc["48"] = "X" * 900
        try:
            saf.put(doc)
        except geviso.StoreError as exc:
            print("refused", stored, str(exc).splitlines()[0])
            break
        stored += 1
    else:
        print("never refused", stored)
    """
)


def test_a_full_disk_makes_put_raise_and_what_was_stored_stays(tmp_path):
    path = tmp_path / "saf.db"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    word, stored, *why = done.stdout.split()
    assert word == "refused" and int(stored) > 10, done.stdout
    assert "full" in " ".join(why) or "disk" in " ".join(why) or "I/O" in " ".join(why), done.stdout
    with SqliteStore(str(path)) as store:  # every put that returned is there
        assert len(store.call(lambda txn: txn.entries(PENDING, limit=100_000))) == int(stored)


def test_processes_sharing_one_file_forward_each_message_once(tmp_path):
    host = JournalHost(rules=[{"delay_ms": [0, 20]}])
    host.start()
    store = tmp_path / "saf.db"
    prefill(str(store), 300)
    try:
        flags = ("--no-put", "--exit-when-done", *SHARING)
        procs = [child(store, host.address[1], tmp_path, 300, *flags) for _ in range(3)]
        for proc in procs:
            assert wait_exit(proc, 120) == 0, proc.stderr.read().decode(errors="replace")[-2000:]
    finally:
        host.stop()
    stans = sorted(doc["11"] for _, doc in host.heard)
    assert stans == [f"{i + 1:06d}" for i in range(300)]  # each exactly once
    forwarders = {pid for _, _, pid in lines(tmp_path / "delivered.log")}
    assert len(forwarders) >= 2  # the work was shared


def test_a_crashed_forwarders_lease_runs_out_and_another_takes_over(tmp_path):
    host = JournalHost(rules=[{"drop_first": 1}])  # the first attempt of each gets no answer
    host.start()
    store = tmp_path / "saf.db"
    prefill(str(store), 5)
    try:
        first = child(store, host.address[1], tmp_path, 5, "--no-put")
        deadline = time.monotonic() + 30
        while len(host.heard) < 5 and time.monotonic() < deadline:
            gevent.sleep(0.02)
        first.kill()  # SIGKILL while its sends wait for answers that never come
        wait_exit(first, 10)
        second = child(store, host.address[1], tmp_path, 5, "--no-put", "--exit-when-done")
        assert wait_exit(second, 60) == 0
    finally:
        host.stop()
    for i in range(5):
        assert host.receipts(f"{i + 1:06d}")[0] == "0420"
        assert set(host.receipts(f"{i + 1:06d}")[1:]) == {"0421"}
    delivered_by = {stan: pid for stan, _, pid in lines(tmp_path / "delivered.log")}
    assert sorted(delivered_by) == [f"{i + 1:06d}" for i in range(5)]
    assert str(second.pid) in delivered_by.values()  # the second process took over the leases
