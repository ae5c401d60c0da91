"""``geviso saf list|show|retry|purge`` as real processes on a store made by the test:
masked output, exit codes, and what each action changes."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safhost import advice

from geviso.cli import main
from geviso.saf import DEAD, PENDING
from geviso.saf.core import dumps
from geviso.saf.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent


def geviso_saf(*args: str) -> subprocess.CompletedProcess[str]:
    """``geviso saf ARGS`` run by the command's own entry point in this process (one
    test runs it as a real process)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(["saf", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_the_command_runs_as_a_process(store):
    done = subprocess.run(
        [sys.executable, "-m", "geviso", "saf", "list", "--store", store],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "pending=1 dead=2"


@pytest.fixture
def store(tmp_path: Path) -> str:
    """Three messages: 1 pending, 2 and 3 dead letters. Message 1 carries track data."""
    path = str(tmp_path / "saf.db")
    with SqliteStore(path) as opened:
        for i in range(3):
            doc = {**advice(i), "35": "4111111111111111=29121010000000"}
            opened.call(lambda txn, doc=doc: txn.insert(dumps(doc), doc["t"], doc["11"], time.time()))
        opened.call(lambda txn: txn.dead(2, "no accepted answer after 5 attempts (last answer 96)", "96"))
        opened.call(lambda txn: txn.dead(3, "expired after 86400s (SendTimeout)"))
    return path


def test_list_shows_every_message_masked_with_counts(store):
    done = geviso_saf("list", "--store", store)
    assert done.returncode == 0, done.stderr
    assert "4111111111111111" not in done.stdout and "=2912" not in done.stdout
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ID", "STATE", "MTI", "STAN", "TRIES", "AGE_S", "REASON"]
    assert [line.split()[:4] for line in lines[1:4]] == [
        ["1", PENDING, "0420", "000001"],
        ["2", DEAD, "0420", "000002"],
        ["3", DEAD, "0420", "000003"],
    ]
    assert "last answer 96" in lines[2]
    assert lines[-1] == "pending=1 dead=2"
    as_json = [
        json.loads(line)
        for line in geviso_saf("list", "--store", store, "--state", "dead", "--json").stdout.splitlines()
    ]
    assert [e["id"] for e in as_json] == [2, 3] and as_json[0]["message"]["2"] == "411111******1111"
    assert as_json[0]["message"]["35"] == "[redacted]"


def test_show_prints_one_message_masked_and_fails_for_an_unknown_id(store):
    done = geviso_saf("show", "2", "--store", store)
    assert done.returncode == 0
    data = json.loads(done.stdout)
    assert data["state"] == DEAD and data["last_code"] == "96" and data["message"]["2"] == "411111******1111"
    missing = geviso_saf("show", "99", "--store", store)
    assert missing.returncode == 1 and missing.stderr.strip() == "geviso saf: no message 99 in the store"


def test_retry_makes_dead_letters_pending_again(store):
    done = geviso_saf("retry", "2", "--store", store)
    assert done.returncode == 0 and done.stdout.strip() == "1 message(s) due for forwarding now"
    with SqliteStore(store) as opened:
        states = {e.id: (e.state, e.reason) for e in opened.call(lambda txn: txn.entries())}
    assert states[2] == (PENDING, "") and states[3][0] == DEAD
    assert geviso_saf("retry", "--all", "--store", store).stdout.strip() == "1 message(s) due for forwarding now"


def test_purge_deletes_dead_letters_only_unless_asked(store):
    assert geviso_saf("purge", "1", "--store", store).returncode == 1  # pending: kept
    done = geviso_saf("purge", "--all", "--store", store)
    assert done.returncode == 0 and done.stdout.strip() == "2 message(s) deleted"
    assert geviso_saf("purge", "1", "--pending", "--store", store).stdout.strip() == "1 message(s) deleted"
    with SqliteStore(store) as opened:
        assert opened.call(lambda txn: txn.entries()) == []


def test_usage_errors_and_refused_stores_exit_2_with_one_line(store, tmp_path):
    both = geviso_saf("purge", "2", "--all", "--store", store)
    assert both.returncode == 2 and "not both or neither" in both.stderr
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    refused = geviso_saf("list", "--store", str(garbage))
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "not a SQLite file" in refused.stderr and "Traceback" not in refused.stderr
    assert geviso_saf("list").returncode == 2  # --store is required
