"""How a Server runs its ``on_inbound`` handler: greenlets reused from request to
request, a blocking handler never holding up the next request, ``max_inbound`` handlers
at most at once per link, a handler's error reported and its worker reused."""

from __future__ import annotations

from typing import Any

import gevent
import gevent.event
import pytest
from conftest import respond, wait_until
from iso8583.specs import default as spec

import geviso


def serve(handler: Any, **options: Any) -> geviso.Server:
    server = geviso.Server(("127.0.0.1", 0), spec, on_inbound=handler, **options)
    server.start()
    return server


def sends(conn: geviso.Connection, count: int, **fields: str) -> list[gevent.Greenlet]:
    return [gevent.spawn(conn.send, {"t": "0800", "70": "301", **fields}, timeout=10) for _ in range(count)]


def test_a_burst_answered_at_once_is_served_by_a_few_reused_greenlets(links):
    workers: set[Any] = set()

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        workers.add(gevent.getcurrent())
        conn.reply(respond(doc), to=doc)

    server = serve(answer)
    try:
        conn = links(server.address, spec=spec)
        for _ in range(3):
            jobs = sends(conn, 200)
            gevent.joinall(jobs, timeout=20)
            assert all(job.successful() and job.value["39"] == "00" for job in jobs)
        assert len(workers) <= 16  # not a greenlet per request (600 of them)
    finally:
        server.stop(timeout=2)


def test_a_blocking_handler_does_not_hold_up_the_requests_behind_it(links):
    gate = gevent.event.Event()

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        if doc.get("48") == "hold":
            gate.wait(10)  # answers only once a later request opened the gate
        else:
            gate.set()
        conn.reply(respond(doc), to=doc)

    server = serve(answer)
    try:
        conn = links(server.address, spec=spec)
        held = sends(conn, 5, **{"48": "hold"})
        gevent.sleep(0.05)
        assert not any(job.ready() for job in held)
        opener = sends(conn, 1)
        gevent.joinall(held + opener, timeout=10)
        assert all(job.successful() for job in held + opener)
    finally:
        server.stop(timeout=2)


def test_max_inbound_bounds_the_handlers_running_at_once_and_every_request_is_answered(links):
    running = [0, 0]  # now, most

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        running[0] += 1
        running[1] = max(running[1], running[0])
        gevent.sleep(0.002)
        running[0] -= 1
        conn.reply(respond(doc), to=doc)

    server = serve(answer, max_inbound=3)
    try:
        conn = links(server.address, spec=spec)
        jobs = sends(conn, 60)
        gevent.joinall(jobs, timeout=20)
        assert all(job.successful() for job in jobs)
        assert running[1] == 3
    finally:
        server.stop(timeout=2)


def test_a_failing_handler_is_reported_and_the_next_request_still_answered(links):
    errors: list[BaseException] = []

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        if doc.get("48") == "boom":
            raise RuntimeError("boom")
        conn.reply(respond(doc), to=doc)

    server = serve(answer, on_error=errors.append, max_inbound=1)
    try:
        conn = links(server.address, spec=spec)
        with pytest.raises(geviso.errors.SendTimeout):
            conn.send({"t": "0800", "70": "301", "48": "boom"}, timeout=0.3)
        assert conn.send({"t": "0800", "70": "301"}, timeout=10)["39"] == "00"
        assert wait_until(lambda: len(errors) == 1)
        assert isinstance(errors[0].__cause__, RuntimeError)
    finally:
        server.stop(timeout=2)


def test_max_inbound_below_one_is_refused():
    with pytest.raises(geviso.errors.ConfigurationError):
        geviso.Connection(("127.0.0.1", 1), spec, max_inbound=0)


def test_a_worker_killed_in_its_handler_leaves_the_queued_requests_to_another(links):
    doomed: list[Any] = []

    def answer(conn: geviso.Connection, doc: dict[str, str]) -> None:
        if doc.get("48") == "die":
            doomed.append(gevent.getcurrent())
            gevent.sleep(10)
        conn.reply(respond(doc), to=doc)

    server = serve(answer, max_inbound=1)
    try:
        conn = links(server.address, spec=spec)
        dying = sends(conn, 1, **{"48": "die"})
        assert wait_until(lambda: len(doomed) == 1)
        behind = sends(conn, 3)
        gevent.sleep(0.05)
        assert not any(job.ready() for job in behind)  # the one worker is busy
        doomed[0].kill(block=False)
        gevent.joinall(behind, timeout=10)
        assert all(job.successful() and job.value["39"] == "00" for job in behind)
        gevent.killall(dying, block=False)
    finally:
        server.stop(timeout=2)
