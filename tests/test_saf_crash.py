"""Crashes lose nothing: a real forwarding process is killed with SIGKILL at random
moments (while it stores, sends, waits for answers or records them) and restarted, many
times in a row, against a mock host that journals every message it receives.

At the end: every message whose put returned was received at least once; every receipt
after a message's first carries the repeat MTI; no message was sent again after its
delivery was recorded; the store is empty. `make soak` runs many more kills.
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from safhost import JournalHost

from geviso.saf.core import is_repeat
from geviso.saf.store import open_store

HERE = Path(__file__).resolve().parent


#: For the sharing tests: a lease no stall of a loaded machine outlasts, so a message is
#: taken over only from a process that died, and each is received exactly once.
SHARING_LEASE = "--lease=60"


def child(store: object, port: int, logdir: Path, total: int, *flags: str) -> gevent.subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(HERE / "saf_child.py"), str(store), str(port), str(logdir), str(total), *flags]
    return gevent.subprocess.Popen(command, env=env, stderr=gevent.subprocess.PIPE)


def wait_exit(proc: gevent.subprocess.Popen, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        gevent.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"forwarding process still running after {timeout:g}s")
    return int(proc.returncode)


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def check_invariants(host: JournalHost, logdir: Path, store: str) -> dict[str, int]:
    puts = lines(logdir / "puts.log")
    done = {int(i) for word, i in puts if word == "done"}
    begun = {int(i) for word, i in puts if word == "begin"}
    receipts: dict[str, list[tuple[float, str]]] = {}
    for at, doc in host.heard:
        receipts.setdefault(doc["11"], []).append((at, doc["t"]))
    delivered: dict[str, float] = {}
    for stan, at, _pid in lines(logdir / "delivered.log"):
        delivered.setdefault(stan, float(at))
    for i in done:
        assert f"{i + 1:06d}" in receipts, f"message {i} was stored and never reached the host"
    for stan, seen in receipts.items():
        assert int(stan) - 1 in begun, f"the host got STAN {stan}, never stored"
        assert all(is_repeat(mti) for _, mti in seen[1:]), f"STAN {stan}: a later receipt without the repeat MTI"
        if stan in delivered:
            late = [at for at, _ in seen if at > delivered[stan]]
            assert not late, f"STAN {stan} was sent again after its delivery was recorded"
    with open_store(store) as opened:
        assert opened.call(lambda txn: txn.entries()) == [], "messages left in the store"
    return {"stored": len(done), "receipts": len(host.heard), "repeats": len(host.heard) - len(receipts)}


def crash_run(tmp_path: Path, kills: int, total: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    host = JournalHost(
        rules=[
            {
                "name": "lost answers",
                "match": {"fields": {"4": [f"{1000 + i:012d}" for i in range(0, total, 5)]}},
                "drop_first": 1,
            },
            {"name": "slow issuer", "delay_ms": [0, 40]},
        ]  # fmt: skip
    )
    host.start()
    store, logdir = tmp_path / "saf.db", tmp_path
    try:
        for _ in range(kills):
            proc = child(store, host.address[1], logdir, total)
            gevent.sleep(rng.uniform(0.3, 1.2))  # the interpreter takes ~0.3 s to start
            proc.kill()  # SIGKILL
            wait_exit(proc, 10)
        proc = child(store, host.address[1], logdir, total, "--exit-when-done")
        returncode = wait_exit(proc, 120)
        assert returncode == 0, proc.stderr.read().decode(errors="replace")[-2000:]
        return check_invariants(host, logdir, str(store))
    finally:
        host.stop()


def test_sigkill_at_random_moments_loses_nothing_and_flags_every_repeat(tmp_path):
    figures = crash_run(tmp_path, kills=15, total=400, seed=1)
    assert figures["stored"] > 0 and figures["repeats"] > 0


@pytest.mark.slow
def test_soak_many_sigkills_lose_nothing(tmp_path):
    figures = crash_run(tmp_path, kills=150, total=5000, seed=2)
    assert figures["stored"] > 0 and figures["repeats"] > 0
