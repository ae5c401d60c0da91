"""Connection.send over real loopback sockets: matching, keys, STANs, limits, outcomes."""

from __future__ import annotations

import random
import socket
import time

import gevent
import gevent.event
import pytest
from conftest import respond, wait_until

import geviso
from geviso import errors, keys

PAN = "4111111111111111"


def test_out_of_order_responses_reach_their_own_callers(echo_host, held, links):
    conn = links(echo_host.address)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i, "37": "RRN%09d" % i}) for i in range(20)]
    assert wait_until(lambda: len(held.items) == 20)
    assert held.release(reverse=True) == 20
    gevent.joinall(jobs, raise_error=True)
    for i, job in enumerate(jobs):
        assert job.value["t"] == "0210"
        assert job.value["37"] == "RRN%09d" % i and job.value["4"] == "%012d" % i
    assert conn.stats.matched == 20 and conn.in_flight == 0


def test_ten_thousand_concurrent_sends_on_one_link_each_matched(echo_host, links):
    count = 10_000
    conn = links(echo_host.address, send_timeout=60.0)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i, "37": "%012d" % i}) for i in range(count)]
    gevent.joinall(jobs, raise_error=True)
    for i, job in enumerate(jobs):
        assert job.value["37"] == "%012d" % i and job.value["4"] == "%012d" % i
    assert len({job.value["11"] for job in jobs}) == count
    assert conn.stats.matched == count and conn.stats.unmatched == 0 and conn.in_flight == 0
    # many frames went out per sendall, and the host received them all
    assert len(echo_host.received) == count


def test_late_response_goes_to_on_inbound_and_is_counted_late(echo_host, held, links):
    inbound = []
    conn = links(echo_host.address, on_inbound=lambda c, doc: inbound.append(doc))
    with pytest.raises(geviso.SendTimeout) as info:
        conn.send({"t": "0100", "11": "000777", "4": "000000000100"}, timeout=0.1)
    assert isinstance(info.value, TimeoutError)
    held.release()
    assert wait_until(lambda: len(inbound) == 1)
    assert inbound[0]["t"] == "0110" and inbound[0]["11"] == "000777"
    assert conn.stats.late == 1 and conn.stats.unmatched == 1 and conn.stats.timeouts == 1
    job = gevent.spawn(conn.send, {"t": "0800", "70": "301"})  # nothing stuck
    assert wait_until(lambda: held.items)
    held.release()
    assert job.get(timeout=5)["t"] == "0810"


def test_unmatched_response_without_on_inbound_goes_to_on_error(echo_host, held, links):
    reported = []
    conn = links(echo_host.address, on_error=reported.append)
    with pytest.raises(geviso.SendTimeout):
        conn.send({"t": "0100", "2": PAN, "11": "000001"}, timeout=0.1)
    held.release()
    assert wait_until(lambda: reported)
    assert isinstance(reported[0], errors.RemoteProtocolError)
    assert "unmatched" in str(reported[0]) and PAN not in str(reported[0])


def test_peers_request_with_our_pending_stan_is_inbound_not_our_response(echo_host, held, links):
    inbound = []
    conn = links(echo_host.address, on_inbound=lambda c, doc: inbound.append(doc))
    job = gevent.spawn(conn.send, {"t": "0800", "11": "000001", "70": "301"})
    assert wait_until(lambda: held.items)
    host_link, _ = held.items[0]
    host_link.reply({"t": "0800", "11": "000001", "70": "001"})  # the peer's own sign-on, same STAN
    assert wait_until(lambda: inbound)
    assert inbound[0]["t"] == "0800" and inbound[0]["70"] == "001"
    assert not job.ready() and conn.in_flight == 1
    held.release()
    assert job.get(timeout=5)["t"] == "0810"
    assert conn.stats.inbound == 1 and conn.stats.matched == 1


def test_response_races_timeout_every_request_resolved_exactly_once(echo_host, links):
    """Answers land around the timeout: each send gets its answer or SendTimeout, and every
    answer is either matched or counted late, never both, never lost."""
    rng = random.Random(8583)

    def answer(conn, doc):
        gevent.sleep(rng.uniform(0.0, 0.1))
        conn.reply(respond(doc))

    echo_host.answer = answer
    inbound = []
    conn = links(echo_host.address, on_inbound=lambda c, doc: inbound.append(doc))
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}, timeout=0.05) for i in range(300)]
    gevent.joinall(jobs, timeout=30)
    assert all(job.ready() for job in jobs)
    ok = [job for job in jobs if job.successful()]
    timeouts = [job for job in jobs if isinstance(job.exception, geviso.SendTimeout)]
    assert len(ok) + len(timeouts) == 300
    assert wait_until(lambda: conn.stats.matched + conn.stats.unmatched == 300, 10)
    assert wait_until(lambda: len(inbound) == conn.stats.unmatched)  # handlers run in their own greenlets
    assert conn.stats.matched == len(ok)
    assert conn.stats.late == conn.stats.unmatched == len(timeouts) == len(inbound)
    assert conn.in_flight == 0


def test_duplicate_key_in_flight_is_refused_and_writes_nothing(echo_host, held, links):
    conn = links(echo_host.address)
    first = gevent.spawn(conn.send, {"t": "0100", "11": "000042"})
    assert wait_until(lambda: held.items)
    sent = conn.stats.sent
    with pytest.raises(geviso.DuplicateKey):
        conn.send({"t": "0100", "11": "000042", "4": "000000000001"})
    with pytest.raises(geviso.DuplicateKey):  # 0110 maps to the same key as 0100
        conn.send({"t": "0110", "11": "000042"})
    assert conn.stats.sent == sent and not conn._outbox and conn.in_flight == 1
    held.release()
    assert first.get(timeout=5)["11"] == "000042"
    gevent.sleep(0.05)
    assert len(echo_host.received) == 1  # the refused duplicates never reached the host


def test_missing_stan_is_assigned_rolling_over_and_never_000000(echo_host, links):
    conn = links(echo_host.address, stan=geviso.StanGenerator(start=999_998))
    stans = [conn.send({"t": "0800", "70": "301"})["11"] for _ in range(3)]
    assert stans == ["999998", "999999", "000001"]
    assert [d["11"] for d in echo_host.received] == stans


def test_assigned_stan_skips_keys_still_in_flight(echo_host, held, links):
    gen = geviso.StanGenerator()
    conn = links(echo_host.address, key=keys.stan_only, stan=gen)
    pending = [gevent.spawn(conn.send, {"t": "0100", "11": s}) for s in ("000001", "000002")]
    assert wait_until(lambda: len(held.items) == 2)
    job = gevent.spawn(conn.send, {"t": "0800", "70": "301"})
    assert wait_until(lambda: len(held.items) == 3)
    assert held.items[2][1]["11"] == "000003"
    held.release()
    assert job.get(timeout=5)["11"] == "000003"
    gevent.joinall(pending, raise_error=True)


def test_assigned_stan_may_reuse_a_stan_whose_key_differs(echo_host, held, links):
    """With the default key a pending 0100 does not block STAN 000001 for an 0800."""
    conn = links(echo_host.address)
    auth = gevent.spawn(conn.send, {"t": "0100", "11": "000001"})
    assert wait_until(lambda: held.items)
    echo = gevent.spawn(conn.send, {"t": "0800", "70": "301"})
    assert wait_until(lambda: len(held.items) == 2)
    held.release(reverse=True)
    assert echo.get(timeout=5)["t"] == "0810" and echo.value["11"] == "000001"
    assert auth.get(timeout=5)["t"] == "0110"


def test_a_shared_stan_generator_keeps_stans_unique_across_links(echo_host, links):
    gen = geviso.StanGenerator()
    one = links(echo_host.address, stan=gen)
    two = links(echo_host.address, stan=gen)
    got = [c.send({"t": "0800", "70": "301"})["11"] for c in (one, two, one, two)]
    assert got == ["000001", "000002", "000003", "000004"]


def test_default_key_lets_a_reversal_reuse_a_pending_auths_stan(echo_host, held, links):
    conn = links(echo_host.address)
    auth = gevent.spawn(conn.send, {"t": "0100", "11": "000005", "4": "000000000100"})
    assert wait_until(lambda: held.items)
    reversal = gevent.spawn(conn.send, {"t": "0400", "11": "000005", "4": "000000000100"})
    assert wait_until(lambda: len(held.items) == 2)
    held.release(reverse=True)  # 0410 first, then 0110
    assert reversal.get(timeout=5)["t"] == "0410"
    assert auth.get(timeout=5)["t"] == "0110"


def test_stan_only_key_refuses_a_reversal_reusing_a_pending_stan(echo_host, held, links):
    conn = links(echo_host.address, key=keys.stan_only)
    auth = gevent.spawn(conn.send, {"t": "0100", "11": "000005"})
    assert wait_until(lambda: held.items)
    with pytest.raises(geviso.DuplicateKey):
        conn.send({"t": "0400", "11": "000005"})
    held.release()
    assert auth.get(timeout=5)["t"] == "0110"


def test_fields_key_tells_terminals_with_the_same_stan_apart(echo_host, held, links):
    conn = links(echo_host.address, key=keys.fields("41", "11"))
    jobs = [gevent.spawn(conn.send, {"t": "0100", "41": term, "11": "000001"}) for term in ("TERM0001", "TERM0002")]
    assert wait_until(lambda: len(held.items) == 2)
    held.release(reverse=True)
    assert [j.get(timeout=5)["41"] for j in jobs] == ["TERM0001", "TERM0002"]


def test_key_function_missing_field_fails_clearly_and_writes_nothing(echo_host, links):
    conn = links(echo_host.address, key=keys.fields("41", "11"))
    with pytest.raises(errors.LocalProtocolError, match="field 41 is missing"):
        conn.send({"t": "0100", "11": "000001"})
    assert conn.stats.sent == 0
    assert conn.send({"t": "0100", "41": "TERM0001"})["t"] == "0110"


def test_send_does_not_change_the_callers_dict(echo_host, links):
    conn = links(echo_host.address)
    doc = {"t": "0200", "2": PAN, "4": "000000000100", "65": "1" * 8}
    before = dict(doc)
    response = conn.send(doc)
    assert doc == before  # no "11", no "p", "65" still there
    assert response is not doc and response["11"] == "000001"


def test_encode_error_fails_only_that_caller_and_shows_no_pan(echo_host, links):
    conn = links(echo_host.address)
    with pytest.raises(geviso.EncodeError) as info:
        conn.send({"t": "0200", "2": PAN + "9999999", "11": "000001"})  # PAN too long
    assert PAN not in str(info.value) and PAN not in repr(info.value)
    assert conn.in_flight == 0 and conn.state == "open"
    assert conn.send({"t": "0200", "2": PAN, "11": "000001"})["2"] == PAN  # the STAN is free again


def test_message_over_the_framing_maximum_fails_that_caller_and_writes_nothing(echo_host, links):
    framing = geviso.framing.binary(2, max_length=64)
    echo_host.options["framing"] = framing
    conn = links(echo_host.address, framing=framing)
    with pytest.raises(geviso.EncodeError, match="over the maximum of 64") as info:
        conn.send({"t": "0200", "2": PAN, "11": "000001", "43": "A" * 40})
    assert PAN not in str(info.value)
    assert conn.stats.sent == 0 and conn.in_flight == 0 and conn.state == "open"
    assert conn.send({"t": "0800", "11": "000002", "70": "301"})["t"] == "0810"


def test_send_timeout_default_and_per_call(echo_host, held, links):
    conn = links(echo_host.address, send_timeout=0.1)
    with pytest.raises(geviso.SendTimeout, match="0.1s"):
        conn.send({"t": "0800", "70": "301"})
    with pytest.raises(geviso.SendTimeout, match="0.05s"):
        conn.send({"t": "0800", "70": "301"}, timeout=0.05)
    assert conn.in_flight == 0 and conn.stats.timeouts == 2 and conn.state == "open"
    held.release()


def test_staggered_sends_each_time_out_at_their_own_deadline(echo_host, held, links):
    """One reaper per link times out waiting sends one deadline at a time: a send made
    later expires later, not with the first one."""
    conn = links(echo_host.address, send_timeout=0.4)
    started = time.monotonic()
    ended: dict[int, float] = {}

    def send(i: int) -> None:
        with pytest.raises(geviso.SendTimeout, match="0.4s"):
            conn.send({"t": "0800", "11": "%06d" % i, "70": "301"})
        ended[i] = time.monotonic() - started

    jobs = []
    for i in range(1, 4):
        jobs.append(gevent.spawn(send, i))
        gevent.sleep(0.2)
    gevent.joinall(jobs, timeout=10, raise_error=True)
    # Each one no sooner than its own 0.4 s after it was sent (0.0, 0.2, 0.4 s), whatever the
    # load; the generous upper bound only proves none waits for another.
    for i, sent_at in ((1, 0.0), (2, 0.2), (3, 0.4)):
        assert sent_at + 0.4 <= ended[i] < sent_at + 0.4 + 3.0
    assert ended[1] < ended[2] < ended[3]
    assert conn.stats.timeouts == 3 and conn.in_flight == 0
    held.release()


def test_short_timeout_behind_a_long_one_times_out_on_time(echo_host, held, links):
    """A send whose deadline is earlier than one already waiting (a shorter per-call
    timeout) still times out at its own deadline, and the long one keeps waiting."""
    conn = links(echo_host.address, send_timeout=30.0)
    long_wait = gevent.spawn(conn.send, {"t": "0100", "11": "000001", "4": "000000000100"})
    assert wait_until(lambda: len(held.items) == 1)
    started = time.monotonic()
    with pytest.raises(geviso.SendTimeout, match="0.1s"):
        conn.send({"t": "0800", "11": "000002", "70": "301"}, timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 5.0
    assert not long_wait.ready() and conn.in_flight == 1
    assert held.release() == 2
    assert long_wait.get(timeout=5)["t"] == "0110"
    assert wait_until(lambda: conn.stats.late == 1) and conn.stats.timeouts == 1


def test_shorter_timeout_after_a_longer_answered_one_times_out_at_its_own_deadline(echo_host, held, links):
    """Once nothing is waiting, a send with a shorter timeout than the last one is timed
    out at its own deadline, not the earlier, longer one's."""
    conn = links(echo_host.address)
    echo_host.answer = lambda c, d: c.reply(respond(d))
    assert conn.send({"t": "0800", "11": "000001", "70": "301"}, timeout=30.0)["t"] == "0810"
    echo_host.answer = held
    started = time.monotonic()
    with pytest.raises(geviso.SendTimeout, match="0.1s"):
        conn.send({"t": "0800", "11": "000002", "70": "301"}, timeout=0.1)
    assert 0.1 <= time.monotonic() - started < 5.0
    held.release()


def test_sender_killed_while_waiting_leaves_nothing_pending(echo_host, held, links):
    """A caller's own gevent.Timeout (or a kill) ends its wait: its request is no longer
    in flight, and the link's later sends still time out and get answers."""
    conn = links(echo_host.address, send_timeout=0.2)
    with pytest.raises(gevent.Timeout):
        with gevent.Timeout(0.05):
            conn.send({"t": "0800", "11": "000001", "70": "301"})
    assert conn.in_flight == 0
    with pytest.raises(geviso.SendTimeout):
        conn.send({"t": "0800", "11": "000002", "70": "301"})
    echo_host.answer = lambda c, d: c.reply(respond(d))
    assert conn.send({"t": "0800", "11": "000003", "70": "301"})["t"] == "0810"
    assert conn.stats.timeouts == 1 and conn.in_flight == 0
    held.release()


def test_a_waiting_sender_woken_by_something_else_keeps_waiting_for_its_own_answer(echo_host, held, links):
    """Another switch into a waiting caller (from any greenlet or callback, with any
    value) is not its answer: it waits on, gets its own response, and leaves nothing
    pending; woken so while its answer is already on its way, it still gets it once."""
    conn = links(echo_host.address)
    job = gevent.spawn(conn.send, {"t": "0800", "11": "000001", "70": "301"})
    assert wait_until(lambda: len(held.items) == 1)
    hub = gevent.get_hub()
    for value in ("stray", None):
        hub.loop.run_callback(job.switch, value)
        gevent.sleep(0.01)
    assert not job.ready() and conn.in_flight == 1
    held.release()
    hub.loop.run_callback(job.switch, "stray, after the answer")  # may run before or after it
    assert job.get(timeout=5)["11"] == "000001"
    assert conn.in_flight == 0 and conn.stats.matched == 1


def test_a_caller_greenlet_dying_with_an_error_does_not_keep_the_others_waiting(echo_host, held, links):
    """Answers that arrive together wake their callers in turn; a raw greenlet that ends
    with an error right after its answer (the error is raised in its parent, the hub)
    is reported, and the callers after it still get theirs."""
    conn = links(echo_host.address)
    answered: list[str] = []

    def caller(i: int) -> None:
        answered.append(conn.send({"t": "0800", "11": "%06d" % (i + 1), "70": "301"})["11"])
        if i == 0:
            raise RuntimeError("a bug in the caller, after its answer")

    for i in range(10):
        gevent.spawn_raw(caller, i)
    assert wait_until(lambda: len(held.items) == 10)
    assert held.release() == 10
    assert wait_until(lambda: len(answered) == 10), answered
    assert sorted(answered) == ["%06d" % (i + 1) for i in range(10)]


def test_reject_fails_the_pending_send_with_rejected(echo_host, held, links):
    conn = links(echo_host.address)
    job = gevent.spawn(conn.send, {"t": "0100", "11": "000009"})
    assert wait_until(lambda: held.items)
    assert conn.reject({"t": "0620", "11": "000009"}, "0620 reject advice") is False  # other class: no match
    assert conn.reject({"t": "0110", "11": "000009"}, "format error in field 4") is True
    with pytest.raises(geviso.Rejected) as info:
        job.get(timeout=5)
    assert info.value.reason == "format error in field 4"
    assert conn.reject({"t": "0110", "11": "000009"}, "again") is False  # resolved once only
    assert conn.stats.rejects == 1 and conn.in_flight == 0


def test_max_in_flight_makes_senders_wait_for_a_slot(echo_host, held, links):
    conn = links(echo_host.address, max_in_flight=3)
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(10)]
    assert wait_until(lambda: len(held.items) == 3)
    gevent.sleep(0.05)
    assert len(held.items) == 3 and conn.in_flight == 3
    while not all(j.ready() for j in jobs):
        assert conn.in_flight <= 3
        held.release()
        gevent.sleep(0.01)
    assert [j.get()["4"] for j in jobs] == ["%012d" % i for i in range(10)]


def test_max_in_flight_slot_wait_is_bounded_by_the_timeout(echo_host, held, links):
    conn = links(echo_host.address, max_in_flight=1)
    first = gevent.spawn(conn.send, {"t": "0800", "70": "301"})
    assert wait_until(lambda: held.items)
    with pytest.raises(geviso.SendTimeout, match="in-flight slot"):
        conn.send({"t": "0800", "70": "301"}, timeout=0.1)
    held.release()
    first.get(timeout=5)
    assert len(echo_host.received) == 1


def test_write_sends_raw_bytes_through_the_writer(echo_host, links):
    inbound = []
    conn = links(echo_host.address, on_inbound=lambda c, doc: inbound.append(doc))
    frame = conn.framing.encode(conn.codec.encode({"t": "0800", "11": "123456", "70": "301"}))
    conn.write(conn.framing.keepalive())
    conn.write(frame)
    assert wait_until(lambda: inbound)
    assert inbound[0]["t"] == "0810" and inbound[0]["11"] == "123456"  # untracked, so inbound
    host_link = echo_host.links[0]
    assert host_link.stats.keepalives == 1 and host_link.stats.errors == 0


def test_reply_answers_a_request_from_the_peer(echo_host, links):
    conn = links(echo_host.address, on_inbound=lambda c, doc: c.reply(respond(doc, **{"39": "00"})))
    conn.send({"t": "0800", "70": "001"})  # sign on, so the host link exists
    host_link = echo_host.links[0]
    answer = host_link.send({"t": "0800", "11": "000001", "70": "301"}, timeout=5)  # the host asks us
    assert answer["t"] == "0810" and answer["39"] == "00"
    assert conn.stats.inbound == 1 and conn.stats.replies == 1


def test_inbound_handler_error_is_reported_and_reading_goes_on(echo_host, links):
    reported = []

    def on_inbound(conn, doc):
        raise RuntimeError("handler bug")

    conn = links(echo_host.address, on_inbound=on_inbound, on_error=reported.append)
    conn.send({"t": "0800", "70": "001"})
    echo_host.links[0].reply({"t": "0800", "11": "000050", "70": "301"})
    assert wait_until(lambda: reported)
    assert isinstance(reported[0], geviso.GevisoError)
    assert isinstance(reported[0].__cause__, RuntimeError)
    assert conn.send({"t": "0800", "70": "301"})["t"] == "0810"


def test_writer_backpressure_bounds_the_queue_and_times_out(raw_peer, links):
    """A peer that never reads: the queue stops at max_write_buffer and send times out."""
    stop = gevent.event.Event()
    peer = raw_peer(lambda sock: stop.wait())
    peer.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited on accept
    conn = links(peer.address, max_write_buffer=64 * 1024)
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = {"t": "0200", "48": "x" * 999}
    most_queued = 0

    def watch():
        nonlocal most_queued
        while True:
            most_queued = max(most_queued, conn._outbox_bytes)
            gevent.sleep(0.005)

    watcher = gevent.spawn(watch)
    jobs = [gevent.spawn(conn.send, dict(body, **{"4": "%012d" % i}), timeout=1.0) for i in range(600)]
    gevent.joinall(jobs, timeout=20)
    watcher.kill()
    stop.set()
    assert all(j.ready() for j in jobs)
    assert all(isinstance(j.exception, geviso.SendTimeout) for j in jobs)
    assert any("write buffer stayed full" in str(j.exception) for j in jobs)  # backpressure, not just no answer
    assert 0 < most_queued <= 64 * 1024 + 1100
    assert conn.state == "open"
