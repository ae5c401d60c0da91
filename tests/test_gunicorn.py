"""The gunicorn example for real: gunicorn -k gevent -w 2 in front of two mock hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import gevent
import pytest
from gevent import socket
from iso8583.specs import default as spec

import geviso

pytest.importorskip("gunicorn")
from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "examples" / "gunicorn_app" / "gunicorn.conf.py"
WORKERS = 2
REQUESTS = 200
DECLINE_ABOVE = 100_000


def http(port: int, method: str, path: str, body: Optional[dict] = None) -> tuple[int, dict, Any]:
    """One HTTP/1.1 request on its own gevent socket: (status, headers, JSON body)."""
    data = json.dumps(body).encode() if body is not None else b""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    raw_head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(payload) if payload else None


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        gevent.sleep(0.05)


@pytest.fixture
def hosts():
    rules = [{"name": "decline big", "match": {"amount_above": DECLINE_ABOVE}, "code": "51"}]
    started = [geviso.MockHost(("127.0.0.1", 0), spec, rules=rules) for _ in range(2)]
    for host in started:
        host.start()
    yield started
    for host in started:
        host.stop(timeout=2)


@pytest.fixture
def gunicorn(hosts, tmp_path):
    log_path = tmp_path / "gunicorn.log"
    env = dict(
        os.environ,
        GEVISO_HOSTS=",".join("%s:%d" % h.address for h in hosts),
        GEVISO_BIND="127.0.0.1:0",
        GEVISO_WORKERS=str(WORKERS),
        GEVISO_TIMEOUT="10",
    )
    args = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "-k", "gevent", "-w", str(WORKERS)]
    if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS):
        args.append("--no-control-socket")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    state: dict[str, Any] = {"proc": proc, "log": log_path}

    def log_text() -> str:
        return log_path.read_text(errors="replace")

    state["log_text"] = log_text
    try:
        wait_for(lambda: "Listening at: http://127.0.0.1:" in log_text() or proc.poll() is not None, 30, "gunicorn")
        assert proc.poll() is None, log_text()
        state["port"] = int(re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", log_text()).group(1))
        # Both workers booted and connected their pools (two links each, one per host).
        wait_for(lambda: sum(h.stats.accepted for h in hosts) >= 2 * WORKERS, 30, "the workers' pools")
        wait_for(lambda: http(state["port"], "GET", "/health")[0] == 200, 30, "/health")
        yield state
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                gevent.sleep(0.05)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_gunicorn_gevent_workers_authorize_through_one_pool_each(gunicorn, hosts):
    port = gunicorn["port"]
    amounts = [1 + i * 997 for i in range(REQUESTS)]  # some above DECLINE_ABOVE
    jobs = [
        gevent.spawn(http, port, "POST", "/authorize", {"pan": "4111111111111111", "amount": amount})
        for amount in amounts
    ]
    gevent.joinall(jobs, timeout=60)
    workers = set()
    for amount, job in zip(amounts, jobs):
        assert job.successful(), job.exception
        status, headers, body = job.value
        assert status == 200, body
        assert body["amount"] == amount  # the answer to this request, not another one
        expected = "51" if amount > DECLINE_ABOVE else "00"
        assert body["response_code"] == expected
        assert body["approved"] is (expected == "00")
        assert (body["approval_code"] is not None) is (expected == "00")
        workers.add(headers["x-geviso-worker"])
    assert 1 <= len(workers) <= WORKERS

    # Health: plain state; the pool is up, its counters saw the traffic, and each worker
    # made one pool.
    for _ in range(10):
        status, headers, body = http(port, "GET", "/health")
        assert status == 200 and body["up"] and not body["degraded"]
        assert str(body["pid"]) == headers["x-geviso-worker"] and body["pools"] == 1
        assert sorted(body["addresses"].values()) == ["up", "up"]
        assert sorted(body["addresses"]) == sorted("%s:%d" % h.address for h in hosts)
        assert body["stats"]["usable"] == 2 and body["stats"]["timeouts"] == 0
        assert "pool" not in body and "<" not in json.dumps(body)  # no object ids, no reprs

    # Every request reached a host exactly once; no worker built a second pool, and the
    # master built none: 2 workers x 2 addresses links in all.
    assert sum(h.stats.accepted for h in hosts) == 2 * WORKERS
    authorizations = sum(h.stats.codes.get("00", 0) + h.stats.codes.get("51", 0) for h in hosts)
    sign_ons = 2 * WORKERS
    assert authorizations == REQUESTS + sign_ons
    assert all(h.stats.received > 0 for h in hosts)  # round robin used both hosts

    # SIGTERM: workers sign off and close their links, gunicorn exits 0.
    proc = gunicorn["proc"]
    proc.send_signal(signal.SIGTERM)
    wait_for(lambda: proc.poll() is not None, 20, "gunicorn to exit")
    assert proc.returncode == 0, gunicorn["log_text"]()
    wait_for(lambda: not any(h.connections for h in hosts), 10, "the links to close")
    log = gunicorn["log_text"]()
    assert log.count("pool: link to") >= 2 * WORKERS  # geviso's INFO link events in gunicorn's log
    assert "4111111111111111" not in log


def test_bad_requests_get_clear_answers(gunicorn):
    port = gunicorn["port"]
    assert http(port, "POST", "/authorize", {"pan": "12", "amount": 5})[0] == 400
    assert http(port, "POST", "/authorize", {"pan": "4111111111111111", "amount": "5"})[0] == 400
    status, _, body = http(port, "GET", "/nowhere")
    assert status == 404 and "authorize" in body["error"]


def http_text(port: int, path: str) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text as {(metric, labels): value}, whatever the order of the labels."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            found[(match.group(1), labels)] = float(match.group(3))
    return found


def test_metrics_are_summed_over_the_workers_on_every_scrape(gunicorn):
    pytest.importorskip("prometheus_client")
    port = gunicorn["port"]
    count = 40
    jobs = [gevent.spawn(http, port, "POST", "/authorize", {"pan": "4111111111111111", "amount": 42 + i})
            for i in range(count)]
    gevent.joinall(jobs, timeout=60, raise_error=True)
    assert {job.value[0] for job in jobs} == {200}
    requests = ("geviso_requests_total", frozenset({("name", "authorize"), ("mti", "0100"), ("outcome", "ok")}))
    up = ("geviso_connections", frozenset({("name", "authorize"), ("state", "up")}))
    # Each scrape, whichever worker answers it,
    # sees all the workers' requests, and both workers' links up (refreshed each second).
    wait_for(lambda: samples(http_text(port, "/metrics")[1]).get(up) == 2 * WORKERS, 10, "the gauges")
    for _ in range(8):
        status, text = http_text(port, "/metrics")
        assert status == 200
        found = samples(text)
        assert found[requests] == count and found[up] == 2 * WORKERS, text
        assert ("geviso_request_duration_seconds_count", frozenset({("name", "authorize")})) in found

