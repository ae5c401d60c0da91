"""One Connection against a scripted peer on a real loopback socket, driven by a
hypothesis state machine through every interleaving it can reach: answers in any order,
late, duplicated, with a wrong MTI or STAN; peer requests reusing pending STANs; partial
frames; the link failing at any byte; mixed per-call timeouts; a full write buffer;
``max_in_flight``; the STAN counter wrapping; close during all of it.

After every step: each send resolved at most once and only with its own answer (field
37 is unique per send and echoed by the peer), no timeout early or later than its
deadline plus a generous slack, ``.sent`` never False for a request the peer read, and
once the link is closed nothing pending, queued or running. ``make test`` runs 100
sequences of 30 steps; ``make soak`` (marker ``slow``) runs 1,000 of 40 steps.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Optional

import gevent
import gevent.event
import gevent.server
import gevent.socket
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from iso8583.specs import default as spec

import geviso
from geviso import framing
from geviso.codec import codec_for, response_mti
from geviso.stan import StanGenerator

#: How late a timeout (or close) may be: generous, the machine is shared and loaded.
SLACK = 3.0
#: How early: none (the test's clock starts before send() reads its own).
EARLY = 0.0
TIMEOUTS = (0.03, 0.1, 0.3, 2.0, 30.0)
FRAMING = framing.binary(2)
CODEC = codec_for(spec)


class Send:
    """One send() in its own greenlet, and what became of it."""

    def __init__(self, machine: LinkMachine, doc: dict[str, str], timeout: float) -> None:
        self.id = doc["37"]
        self.doc = doc
        self.timeout = timeout
        self.outcomes: list[Any] = []
        self.started = time.monotonic()
        self.ended: Optional[float] = None
        self.greenlet = gevent.spawn(self._run, machine.conn)

    def _run(self, conn: geviso.Connection) -> None:
        try:
            self.outcomes.append(conn.send(self.doc, timeout=self.timeout))
        except geviso.GevisoError as exc:
            self.outcomes.append(exc)
        self.ended = time.monotonic()


class LinkMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.conn: Any = None
        self.peer: Any = None
        self.sends: list[Send] = []
        self.read_by_peer: list[dict[str, str]] = []  # requests as the peer decoded them
        self.answered: set[str] = set()  # ids the peer sent a right answer for
        # Ids answered before the STAN counter last came round: their STANs may belong to
        # new requests now, so a duplicate of their answer is indistinguishable from a
        # fresh one (in real life a duplicate 999,999 sends late), and the peer sends none.
        self.stale: set[str] = set()
        self.inbound: list[dict[str, str]] = []
        self.next_id = 0
        self.next_stan = 600_000  # explicit STANs: never reused, apart from the generator's
        self.closers: list[tuple[gevent.Greenlet, float, float]] = []
        self.peer_reading = gevent.event.Event()
        self.peer_reading.set()
        self.peer_gone = False

    # -- setup ------------------------------------------------------------------------
    @initialize(
        max_in_flight=st.sampled_from([None, None, 3]),
        small_buffers=st.booleans(),
        stan_start=st.sampled_from([1, 999_990]),
    )
    def open_link(self, max_in_flight: Optional[int], small_buffers: bool, stan_start: int) -> None:
        listener = gevent.socket.socket()
        listener.bind(("127.0.0.1", 0))
        if small_buffers:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.listen(1)
        self.conn = geviso.Connection(
            listener.getsockname(),
            spec,
            send_timeout=5.0,
            max_in_flight=max_in_flight,
            max_write_buffer=2048 if small_buffers else geviso.connection.DEFAULT_MAX_WRITE_BUFFER,
            stan=StanGenerator(start=stan_start),
            on_inbound=lambda c, d: self.inbound.append(d),
            on_error=lambda e: None,
        )
        dial = gevent.spawn(self.conn.connect)
        self.peer, _ = listener.accept()
        listener.close()
        dial.get(timeout=10)
        if small_buffers:
            self.conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.reader = gevent.spawn(self._peer_reads)

    def _peer_reads(self) -> None:
        decoder = FRAMING.decoder()
        while True:
            self.peer_reading.wait()
            try:
                data = self.peer.recv(65536)
            except OSError:
                return
            if not data:
                return
            for payload in decoder.feed(data):
                self.read_by_peer.append(CODEC.decode(payload))

    def teardown(self) -> None:
        try:
            if self.conn is not None:
                self.peer_reading.set()
                self.conn.fail("test over")
                for send in self.sends:
                    send.greenlet.join(timeout=5)
                for closer, _, _ in self.closers:
                    closer.join(timeout=SLACK + 30)
                self.check_outcomes()
                self.check_closed_is_empty()
        finally:
            if self.peer is not None:
                self.peer.close()
            if self.conn is not None:
                gevent.killall([s.greenlet for s in self.sends], timeout=2)
                self.reader.kill(timeout=2)

    # -- helpers ----------------------------------------------------------------------
    def _write(self, raw: bytes, splits: list[int]) -> None:
        """The peer writes ``raw``, cut at ``splits`` with a pause between the pieces."""
        if self.peer_gone:
            return
        cuts = sorted({c % len(raw) for c in splits if c % len(raw)})
        pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
        try:
            for i, piece in enumerate(pieces):
                if i:
                    gevent.sleep(0.002)
                self.peer.sendall(piece)
        except OSError:
            self.peer_gone = True

    def _frame(self, doc: dict[str, str]) -> bytes:
        return FRAMING.encode(CODEC.encode(doc))

    def _answer_to(self, request: dict[str, str], **change: str) -> dict[str, str]:
        answer = {"t": response_mti(request["t"]), "11": request["11"], "37": request["37"], "39": "00"}
        answer.update(change)
        return answer

    def _pick(self, index: int) -> Optional[dict[str, str]]:
        return self.read_by_peer[index % len(self.read_by_peer)] if self.read_by_peer else None

    # -- rules ------------------------------------------------------------------------
    @rule(
        mti=st.sampled_from(["0100", "0200", "0800"]),
        timeout=st.sampled_from(TIMEOUTS),
        explicit_stan=st.booleans(),
    )
    def send(self, mti: str, timeout: float, explicit_stan: bool) -> None:
        self.next_id += 1
        doc = {"t": mti, "37": "%012d" % self.next_id, "41": "TERM0001"}
        if mti == "0800":
            doc["70"] = "301"
        if explicit_stan:
            self.next_stan += 1
            doc["11"] = "%06d" % self.next_stan
        self.sends.append(Send(self, doc, timeout))
        gevent.sleep(0)

    @rule(index=st.integers(min_value=0), splits=st.lists(st.integers(min_value=1), max_size=3))
    def answer(self, index: int, splits: list[int]) -> None:
        """A right answer to any request the peer read (any order, maybe again)."""
        request = self._pick(index)
        if request is not None and request["37"] not in self.stale:
            self.answered.add(request["37"])
            self._write(self._frame(self._answer_to(request)), splits)

    @rule(index=st.integers(min_value=0), wrong=st.sampled_from(["mti", "stan", "request"]))
    def answer_wrongly(self, index: int, wrong: str) -> None:
        """A response with another MTI pair or STAN, or a request reusing a pending STAN:
        none may resolve a send."""
        request = self._pick(index)
        if request is None:
            return
        if wrong == "mti":
            doc = self._answer_to(request, t="0410" if request["t"] != "0400" else "0110")
        elif wrong == "stan":
            # A STAN never handed out here (the generator's run from 1 or 999,990 and the
            # explicit ones from 600,001 stay clear of it): a wrong STAN that is about to be
            # handed out to the next send cannot be told from that send's answer.
            doc = self._answer_to(request, **{"11": "%06d" % (500_000 + int(request["11"]) % 1000)})
        else:
            doc = {"t": request["t"], "11": request["11"], "37": "999999999999", "70": "301"}
        self._write(self._frame(doc), [])

    @rule(garbage=st.sampled_from([b"\x00\x04zzzz", b"\x00\x00"]))
    def peer_writes_garbage_or_keepalive(self, garbage: bytes) -> None:
        self._write(garbage, [])

    @rule(seconds=st.sampled_from([0.0, 0.005, 0.05, 0.15]))
    def time_passes(self, seconds: float) -> None:
        gevent.sleep(seconds)

    @rule()
    def peer_stops_reading(self) -> None:
        self.peer_reading.clear()

    @rule()
    def peer_reads_again(self) -> None:
        self.peer_reading.set()

    @rule(index=st.integers(min_value=0))
    def stan_counter_comes_round(self, index: int) -> None:
        """The generator hands out a STAN it gave before (as after 999,999 sends)."""
        request = self._pick(index)
        if request is not None and request["11"] < "600000":
            self.conn.stan = StanGenerator(start=int(request["11"]))
            self.stale |= self.answered

    @rule(index=st.integers(min_value=0), cut=st.integers(min_value=0, max_value=40))
    def link_breaks_mid_frame(self, index: int, cut: int) -> None:
        """The peer sends the first ``cut`` bytes of an answer, then its socket closes."""
        request = self._pick(index)
        if request is not None and not self.peer_gone:
            raw = self._frame(self._answer_to(request))
            self._write(raw[: min(cut, len(raw) - 1)], [])
        self.peer_gone = True
        self.peer_reading.set()
        self.peer.close()
        gevent.sleep(0.01)

    @rule(timeout=st.sampled_from([0.0, 0.05, 0.3]))
    def close(self, timeout: float) -> None:
        self.peer_reading.set()  # a graceful close may wait for the writer to drain
        started = time.monotonic()
        self.closers.append((gevent.spawn(self._close, timeout), started, timeout))
        gevent.sleep(0)

    def _close(self, timeout: float) -> None:
        try:
            self.conn.close(timeout=timeout)
        except geviso.GevisoError:
            pass

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def check_outcomes(self) -> None:
        if self.conn is None:
            return
        now = time.monotonic()
        read_ids = {doc.get("37") for doc in self.read_by_peer}
        for send in self.sends:
            assert len(send.outcomes) <= 1
            if not send.outcomes:
                if send.timeout < 30.0:
                    # still waiting, well past its deadline: a late timeout
                    assert now <= send.started + send.timeout + SLACK, f"send {send.id} not timed out"
                continue
            outcome = send.outcomes[0]
            took = (send.ended or now) - send.started
            if isinstance(outcome, dict):
                assert outcome["37"] == send.id, f"send {send.id} got the answer to {outcome['37']}"
                assert send.id in self.answered
                assert outcome["t"] == response_mti(send.doc["t"])
            elif isinstance(outcome, geviso.SendTimeout):
                assert took >= send.timeout - EARLY, f"timed out early: {took} < {send.timeout}"
                assert took <= send.timeout + SLACK, f"timed out late: {took} for {send.timeout}"
            elif isinstance(outcome, geviso.ConnectionClosed):
                if not outcome.sent:
                    assert send.id not in read_ids, f"send {send.id} was read by the peer but sent=False"
            else:
                assert isinstance(outcome, geviso.DuplicateKey), repr(outcome)
        for closer, started, timeout in self.closers:
            if not closer.dead:
                assert now <= started + timeout + SLACK, "close() past its timeout"

    @invariant()
    def check_closed_is_empty(self) -> None:
        conn = self.conn
        if conn is None or conn.state != "closed":
            return
        for send in self.sends:
            send.greenlet.join(timeout=SLACK)
            assert send.greenlet.dead, f"send {send.id} still waiting on a closed link"
        assert conn.in_flight == 0 and not conn._pending
        assert not conn._outbox and conn._reaper is None
        assert all(g.dead for g in conn._greenlets) or gevent.joinall(conn._greenlets, timeout=SLACK)
        assert all(g.dead for g in conn._greenlets)


def _run(examples: int, steps: int) -> None:
    run_state_machine_as_test(
        LinkMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_a_link_keeps_every_promise_whatever_the_peer_and_callers_do() -> None:
    _run(examples=100, steps=30)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_link_keeps_every_promise_over_many_more_sequences() -> None:
    _run(examples=1000, steps=40)
