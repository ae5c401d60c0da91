"""Server.stop under every interleaving hypothesis reaches: requests whose handlers take
any time, sent before, during and after the stop, from several real loopback clients.

Invariants: stop returns within its timeout (plus slack); every send resolves exactly
once, with its own answer or an error; a request whose handler was running when the stop
began, and could finish within the timeout, gets its answer; once stop returned and its
links closed, nothing is left: no link, no handler."""

from __future__ import annotations

import time
from typing import Any, Optional

import gevent
import pytest
from conftest import outcome_of, respond, stateful_tests, wait_until
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from iso8583.specs import default as spec

import geviso

pytestmark = pytest.mark.timeout(300)

SLACK = 1.5  # seconds a loaded machine may add to a bound


class ServerStop(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.handled: dict[str, dict[str, Any]] = {}  # STAN -> when its handler started, delay
        self.server = geviso.Server(("127.0.0.1", 0), spec, on_inbound=self._answer)
        self.server.start()
        self.clients = [
            geviso.Connection(("127.0.0.1", self.server.server_port), spec, send_timeout=10).connect()
            for _ in range(2)
        ]
        self.sends: list[tuple[str, float, gevent.Greenlet]] = []  # STAN, delay, its greenlet
        self.stan = 0
        self.stopped_at: Optional[float] = None
        self.stop_timeout = 0.0

    def _answer(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        delay = int(doc["37"]) / 1000.0
        self.handled[doc["11"]] = {"started": time.monotonic(), "delay": delay}
        gevent.sleep(delay)
        conn.reply(respond(doc))

    @rule(client=st.integers(0, 1), delay_ms=st.sampled_from([150, 0, 50, 400, 3000]))
    def send(self, client: int, delay_ms: int) -> None:
        self.stan += 1
        stan = "%06d" % self.stan
        doc = {"t": "0200", "11": stan, "37": "%012d" % delay_ms}
        self.sends.append((stan, delay_ms / 1000.0, gevent.spawn(outcome_of, self.clients[client].send, doc)))
        gevent.sleep(0.01)  # time to reach the server, mostly: the handler runs before the next step

    @rule(ms=st.sampled_from([0, 10, 50]))
    def wait(self, ms: int) -> None:
        gevent.sleep(ms / 1000.0)

    @precondition(lambda self: self.stopped_at is None)
    @rule(timeout=st.sampled_from([1.0, 0.5]))
    def stop(self, timeout: float) -> None:
        self.stop_timeout = timeout
        self.stopped_at = began = time.monotonic()
        running = {stan for stan, info in self.handled.items() if info["started"] <= began}
        self.server.stop(timeout=timeout)
        assert time.monotonic() - began <= timeout + SLACK
        assert not self.server.connections
        assert gevent.joinall([g for _, _, g in self.sends], timeout=5 + SLACK) is not None
        for stan, delay, greenlet in self.sends:
            assert greenlet.dead, f"send {stan} never resolved"
            outcome = greenlet.value
            if isinstance(outcome, dict):
                assert outcome["11"] == stan  # its own answer, never another's
            else:
                assert isinstance(outcome, geviso.GevisoError), repr(outcome)
            handler_ran = stan in running
            if handler_ran and delay + 0.1 < timeout and began - self.handled[stan]["started"] >= 0:
                assert isinstance(outcome, dict), f"{stan}: handler running at stop got {outcome!r}"
        assert wait_until(lambda: self.server._running == 0, 2 + SLACK)

    @invariant()
    def every_resolved_send_has_its_own_answer_or_an_error(self) -> None:
        for stan, _, greenlet in self.sends:
            if greenlet.dead:
                outcome = greenlet.value
                assert (isinstance(outcome, dict) and outcome["11"] == stan) or isinstance(
                    outcome, geviso.GevisoError
                ), repr(outcome)

    def teardown(self) -> None:
        if self.stopped_at is None:
            self.stop(0.5)
        for conn in self.clients:
            if not conn.closed:
                conn.fail("test over")


TestServerStop, TestServerStopSoak = stateful_tests(ServerStop, 10, steps=12)
