"""A Pool under every interleaving hypothesis reaches: real loopback hosts killed and
restarted (links flapping), hosts that stop answering, a custom strategy returning
anything (a cached link, None, garbage, the last one), bursts of concurrent sends, close.

Invariants: every send resolves exactly once (its own answer or a GevisoError) within a
bound, so nothing spins; a request is received by at most one host (a request that may
have reached a host, ``ConnectionClosed(sent=True)``, is never sent again); after close,
nothing is left: no link open, no loop running, no host holding a link."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, Optional

import gevent
import pytest
from conftest import outcome_of, stateful_tests, wait_until
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from iso8583.specs import default as spec
from test_pool import Host

import geviso

pytestmark = pytest.mark.timeout(300)

SLACK = 2.0  # seconds a loaded machine may add to a bound
SEND_TIMEOUT = 0.3
STRATEGIES = ("first", "last", "cached", "none", "garbage", "round-robin", "primary-secondary")


class PoolUnderFlapping(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.hosts = [Host() for _ in range(2)]
        for host in self.hosts:
            host.delay = 0.1  # answers still in flight when the next step kills a host
        self.mode = "first"
        self.cached: Optional[geviso.Connection] = None
        factory_options = {"send_timeout": SEND_TIMEOUT, "connect_timeout": 1.0}
        self.pool = geviso.Pool(
            lambda address: geviso.Connection(address, spec, **factory_options),
            [h.address for h in self.hosts],
            strategy=self._strategy,
            reconnect_wait=0.01,
            max_reconnect_wait=0.05,
            jitter=0,
            min_connections=0,
        )
        self.pool.connect(timeout=2)
        self.stan = 0
        self.outcomes: list[tuple[str, Any]] = []
        self.pending: list[tuple[str, float, gevent.Greenlet]] = []

    def _strategy(self, links: list[geviso.Connection], doc: Any) -> Any:
        mode = self.mode
        if mode == "first":
            return links[0]
        if mode == "last":
            return links[-1]
        if mode == "cached":
            if self.cached is None:
                self.cached = links[0]
            return self.cached  # kept however long it has been dead
        if mode == "none":
            return None
        return "garbage"

    @rule(mode=st.sampled_from(STRATEGIES))
    def set_strategy(self, mode: str) -> None:
        self.mode = mode
        self.pool.strategy = mode if mode in geviso.pool.STRATEGIES else self._strategy

    @rule(i=st.integers(0, 1))
    def kill_host(self, i: int) -> None:
        if self.hosts[i].running:
            self.hosts[i].kill()

    @rule(i=st.integers(0, 1))
    def start_host(self, i: int) -> None:
        if not self.hosts[i].running:
            self.hosts[i].start()

    @rule(i=st.integers(0, 1), answer=st.sampled_from(["slow", "at once", "never"]))
    def host_answers(self, i: int, answer: str) -> None:
        self.hosts[i].hold = answer == "never"
        self.hosts[i].delay = 0.1 if answer == "slow" else 0.0

    @rule(ms=st.sampled_from([0, 20, 100]))
    def wait(self, ms: int) -> None:
        gevent.sleep(ms / 1000.0)

    @rule(n=st.integers(1, 6), per_call=st.booleans(), kill=st.none() | st.integers(0, 1))
    def send_burst(self, n: int, per_call: bool, kill: Optional[int]) -> None:
        """Start ``n`` sends and let them be written; they may still be waiting when a
        host is killed (``kill``, at once, or in a later step) or the pool closes."""
        for _ in range(n):
            self.stan += 1
            stan = "%06d" % self.stan
            timeout = SEND_TIMEOUT if per_call else None
            job = gevent.spawn(outcome_of, self.pool.send, {"t": "0200", "11": stan}, timeout=timeout)
            self.pending.append((stan, time.monotonic(), job))
        gevent.sleep(0.01)
        if kill is not None:
            self.kill_host(kill)

    @rule()
    def settle(self) -> None:
        """Every send started resolves within its timeout (plus slack): none spins or hangs."""
        gevent.joinall([job for _, _, job in self.pending], timeout=SEND_TIMEOUT * 3 + SLACK)
        for stan, started, job in self.pending:
            assert job.dead, f"send {stan} never resolved"
            assert time.monotonic() - started <= SEND_TIMEOUT * 3 + SLACK + 0.5
            self.outcomes.append((stan, job.value))
        self.pending = []

    @invariant()
    def each_send_resolved_once_with_its_own_answer_or_an_error(self) -> None:
        for stan, outcome in self.outcomes:
            if isinstance(outcome, dict):
                assert outcome["11"] == stan and outcome["39"] == "00"
            else:
                assert isinstance(outcome, geviso.GevisoError), repr(outcome)

    @invariant()
    def no_request_reached_two_hosts(self) -> None:
        seen = Counter(stan for host in self.hosts for stan in host.received)
        twice = [stan for stan, count in seen.items() if count > 1]
        assert not twice, f"sent twice: {twice}"

    def teardown(self) -> None:
        started = time.monotonic()
        self.pool.close(timeout=1.0)  # sends may still be in flight
        assert time.monotonic() - started <= 1.0 + SLACK
        self.settle()
        self.each_send_resolved_once_with_its_own_answer_or_an_error()
        self.no_request_reached_two_hosts()
        assert self.pool.closed and self.pool.connections == []
        assert wait_until(lambda: all(g.dead for g in self.pool._group), SLACK)
        assert wait_until(lambda: not any(h.open_links for h in self.hosts), SLACK)
        for host in self.hosts:
            if host.running:
                host.kill()


TestPoolUnderFlapping, TestPoolUnderFlappingSoak = stateful_tests(PoolUnderFlapping, 25, steps=15)
