"""Crashes lose nothing: a real forwarding process is killed with SIGKILL, many times in
a row, against a mock host that journals every message it receives, and restarted each
time. The kills are steered to each phase in turn, and the test checks that each landed
there: during a put (its row written, the commit not done), during a send (the attempt
counted in the store, the forwarder in the link's send), between send and answer (the
host got the request and kills the process instead of answering), and during the
acknowledgement write (the rows deleted, the commit not done); every fifth kill comes at
a random moment instead.

At the end, exactly what must hold: every message whose put returned was received at
least once; every receipt after a message's first carries the repeat MTI; nothing was
sent again once its answer was recorded (the store records, in the acknowledgement's own
transaction, when); and nothing is left in the store but the dead letters the host's
refusals make by design. `make soak` runs many more kills.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from safhost import JournalHost

from geviso.codec import is_response
from geviso.saf import DEAD, PENDING
from geviso.saf.core import is_repeat
from geviso.saf.store import open_store

HERE = Path(__file__).resolve().parent

#: For the sharing tests: a lease and a wait for each answer that no stall of a loaded
#: machine outlasts, so a message is neither taken over from a live process nor sent
#: again by its own (the crash tests' short wait retransmits a slow answer by design),
#: and each is received exactly once.
SHARING = ("--lease=60", "--timeout=20")
#: Where the kills are steered, in turn ("random": after a random time instead).
PHASES = ("put", "send", "answer", "ack", "random")
#: The host refuses (code 05) messages i % REFUSED_EVERY == 3; the forwarder accepts only
#: 00 and gives up after MAX_ATTEMPTS: they are the dead letters by design.
REFUSED_EVERY = 7
MAX_ATTEMPTS = 8
#: Messages a killed process stores at most: the puts never run out before the last
#: kill (a kill steered to a put needs one), and the last process only forwards.
PUTS_PER_RUN = 40


def child(store: object, port: int, logdir: Path, total: int, *flags: str) -> gevent.subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    command = [sys.executable, str(HERE / "saf_child.py"), str(store), str(port), str(logdir), str(total), *flags]
    return gevent.subprocess.Popen(command, env=env, stderr=gevent.subprocess.PIPE)


def wait_exit(proc: gevent.subprocess.Popen, timeout: float, what: str = "forwarding process") -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        gevent.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"{what} still running after {timeout:g}s")
    return int(proc.returncode)


def lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


class KillingHost(JournalHost):
    """A JournalHost that, once armed with (pid, n), SIGKILLs that process on receiving
    its n-th request, instead of answering it: the kill between send and answer."""

    victim: tuple[int, int] | None = None
    kills_between_send_and_answer = 0

    def _answer(self, conn, doc):
        if self.victim is not None and not is_response(doc.get("t", "")):
            pid, left = self.victim
            self.victim = (pid, left - 1) if left > 1 else None
            if left == 1:
                self.heard.append((time.monotonic(), dict(doc)))  # received, and never answered
                os.kill(pid, signal.SIGKILL)
                self.kills_between_send_and_answer += 1
                return
        super()._answer(conn, doc)


def check_invariants(host: JournalHost, logdir: Path, store: str, refused: frozenset[str] = frozenset()) -> dict:
    """The issue's end checks; ``refused``: STANs the host never accepts."""
    puts = lines(logdir / "puts.log")
    done = {f"{int(i) + 1:06d}" for word, i in puts if word == "done"}
    begun = {f"{int(i) + 1:06d}" for word, i in puts if word == "begin"}
    receipts: dict[str, list[tuple[float, str]]] = {}
    for at, doc in host.heard:
        receipts.setdefault(doc["11"], []).append((at, doc["t"]))
    with open_store(store) as opened:
        left = opened.call(lambda txn: txn.entries(limit=1_000_000))
        acked_rows = opened.call(lambda txn: txn.execute("SELECT stan, at FROM acked").fetchall())
    acked: dict[str, float] = {}
    for stan, at in acked_rows:
        assert stan not in acked, f"STAN {stan}: its answer was recorded twice"
        acked[str(stan)] = float(at)
    for stan in done:
        assert stan in receipts, f"STAN {stan} was stored and never reached the host"
    for stan, seen in receipts.items():
        assert stan in begun, f"the host got STAN {stan}, never stored"
        assert all(is_repeat(mti) for _, mti in seen[1:]), f"STAN {stan}: a later receipt without the repeat MTI"
        if stan in acked:
            late = [at for at, _ in seen if at > acked[stan]]
            assert not late, f"STAN {stan} was sent again after its answer was recorded"
    assert not [e for e in left if e.state == PENDING], "messages left pending"
    dead = {e.doc["11"] for e in left if e.state == DEAD}
    assert dead <= refused, f"dead letters not made by design: {sorted(dead - refused)[:5]}"
    assert done & refused <= dead, "a refused message is neither pending nor a dead letter"
    assert done <= set(acked) | dead, "a stored message was neither acknowledged nor made a dead letter"
    return {"stored": len(done), "receipts": len(host.heard), "repeats": len(host.heard) - len(receipts),
            "dead": len(dead)}  # fmt: skip


def wait_no_links(host: JournalHost, timeout: float = 30.0) -> None:
    """Until the host has read everything a killed process sent, and closed its link."""
    deadline = time.monotonic() + timeout
    while host.connections and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert not host.connections, f"the host still has the killed process's link after {timeout:g}s"


def crash_run(tmp_path: Path, kills: int, total: int, seed: int) -> dict:
    rng = random.Random(seed)
    amount = [f"{1000 + i:012d}" for i in range(total)]
    refused = [i for i in range(total) if i % REFUSED_EVERY == 3]
    host = KillingHost(
        rules=[
            {"name": "refused", "match": {"fields": {"4": [amount[i] for i in refused]}}, "code": "05"},
            {"name": "lost answers", "match": {"fields": {"4": amount[::5]}}, "drop_first": 1},
            {"name": "slow issuer", "delay_ms": [0, 40]},
        ]  # fmt: skip
    )
    host.start()
    store, logdir = tmp_path / "saf.db", tmp_path
    flags = ("--accepted=00", f"--max-attempts={MAX_ATTEMPTS}")
    assert total >= kills * PUTS_PER_RUN
    hit = dict.fromkeys(PHASES, 0)
    try:
        for k in range(kills):
            phase, nth = PHASES[k % len(PHASES)], rng.randint(1, 6)
            steer = (f"--die-in={phase}:{nth}",) if phase in ("put", "send", "ack") else ()
            wait_no_links(host)
            proc = child(store, host.address[1], logdir, total, *flags, f"--put-limit={PUTS_PER_RUN}", *steer)
            if phase == "answer":
                host.victim = (proc.pid, nth)
            elif phase == "random":
                gevent.sleep(rng.uniform(0.3, 1.2))  # the interpreter takes ~0.3 s to start
                proc.kill()
            returncode = wait_exit(proc, 60, f"a process to be killed ({phase} #{nth})")
            assert returncode == -signal.SIGKILL, proc.stderr.read().decode(errors="replace")[-2000:]
            if phase in ("put", "send", "ack"):  # it marked the phase it killed itself in
                assert lines(logdir / "phases.log")[-1] == [phase, str(proc.pid)]
            elif phase == "answer":
                assert host.victim is None and host.kills_between_send_and_answer == hit["answer"] + 1
            hit[phase] += 1
        wait_no_links(host)
        proc = child(store, host.address[1], logdir, total, *flags, "--no-put", "--exit-when-done")
        returncode = wait_exit(proc, 180)
        assert returncode == 0, proc.stderr.read().decode(errors="replace")[-2000:]
        figures = check_invariants(host, logdir, str(store), frozenset(f"{i + 1:06d}" for i in refused))
    finally:
        host.stop()
    assert all(hit.values()), hit  # every phase was hit
    return {**figures, **hit}


def test_sigkill_in_each_phase_in_turn_loses_nothing_and_flags_every_repeat(tmp_path):
    figures = crash_run(tmp_path, kills=15, total=15 * PUTS_PER_RUN, seed=1)  # three kills in each phase
    assert figures["stored"] > 0 and figures["repeats"] > 0 and figures["dead"] > 0


@pytest.mark.slow
def test_soak_many_sigkills_lose_nothing(tmp_path):
    figures = crash_run(tmp_path, kills=150, total=150 * PUTS_PER_RUN, seed=2)
    assert figures["stored"] > 0 and figures["repeats"] > 0
