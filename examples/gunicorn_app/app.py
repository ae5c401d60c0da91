"""A WSGI app that authorizes card payments through a geviso Pool.

``POST /authorize`` with ``{"pan": "4111111111111111", "amount": 1250}`` (amount in
minor units; ``currency``, ``terminal`` and ``merchant`` optional) sends a 0100 and
answers ``{"approved": true, "response_code": "00", ...}``. ``GET /health`` reports the
pool's state as plain data (503 when no link is usable); ``GET /metrics`` serves
Prometheus text when prometheus-client is installed: summed over every worker under
gunicorn (see ``worker_metrics.py``), this process's pool under any other server.

One pool per worker process, created after the fork: ``gunicorn.conf.py`` calls
:func:`start_pool` from ``post_worker_init``, and :func:`pool` creates one lazily in any
process that has none yet, so the app is correct under any WSGI server too.
Configuration: ``GEVISO_HOSTS`` (comma-separated ``host:port``), ``GEVISO_TIMEOUT``.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterable
from typing import Any, Callable, Optional

import gevent.lock
from iso8583.specs import default as spec

import geviso

HOSTS = [h.strip() for h in os.environ.get("GEVISO_HOSTS", "127.0.0.1:8583").split(",") if h.strip()]
TIMEOUT = float(os.environ.get("GEVISO_TIMEOUT", "5"))
#: The ``name`` label of this app's metrics.
METRICS_NAME = "authorize"

try:
    import worker_metrics  # needs prometheus-client; multiprocess mode when its folder is set
except ImportError:
    worker_metrics = None

_pool: Optional[geviso.Pool] = None
_pool_pid: Optional[int] = None
_pools_made = 0  # pools this process has made: 1 in a healthy worker
_lock = gevent.lock.Semaphore()


def sign_on(conn: geviso.Connection) -> None:
    """0800/001 when a link opens; the pool uses the link once this returns."""
    response = conn.send({"t": "0800", "70": "001"})
    if response.get("39") != "00":
        raise geviso.errors.Declined(response.get("39", ""))
    conn.status = "online"


def sign_off(conn: geviso.Connection) -> None:
    """0800/002 before a link closes gracefully."""
    try:
        conn.send({"t": "0800", "70": "002"}, timeout=2.0)
    except geviso.GevisoError:
        pass


def multiprocess_metrics() -> bool:
    """True when the metrics are summed over pre-forked workers (gunicorn.conf.py)."""
    return worker_metrics is not None and worker_metrics.enabled()


def factory(address: Any) -> geviso.Connection:
    listeners = [worker_metrics.listener(METRICS_NAME)] if multiprocess_metrics() else []
    return geviso.Connection(
        address, spec, send_timeout=TIMEOUT, on_connect=sign_on, on_close=sign_off, listeners=listeners
    )


def pool() -> geviso.Pool:
    """This process's pool, created and connected on first use in each process."""
    global _pool, _pool_pid, _pools_made
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                new = geviso.Pool(factory, HOSTS, reconnect_wait=1.0, max_reconnect_wait=10.0, min_connections=0,
                                  filter=lambda conn: conn.status == "online")
                new.connect()
                _pool, _pool_pid = new, os.getpid()
                _pools_made += 1
                if multiprocess_metrics():
                    worker_metrics.watch(new, METRICS_NAME)
                elif worker_metrics is not None:  # one process: geviso's collector reads the pool
                    from geviso.metrics import prometheus

                    prometheus.register(new, METRICS_NAME)
    return _pool


def start_pool() -> None:
    """Connect this worker's pool now (gunicorn's ``post_worker_init``)."""
    pool()


def close_pool() -> None:
    """Sign off and close this worker's pool (gunicorn's ``worker_exit``)."""
    global _pool
    if _pool is not None and _pool_pid == os.getpid():
        _pool.close()
        _pool = None


class BadRequest(ValueError):
    """The request body is not a usable authorization."""


def authorization(body: bytes) -> dict[str, str]:
    """The 0100 for a JSON body."""
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("body is not a JSON object")
    pan = str(data.get("pan", ""))
    amount = data.get("amount")
    if not (pan.isdigit() and 12 <= len(pan) <= 19):
        raise BadRequest("pan: 12 to 19 digits")
    if not isinstance(amount, int) or isinstance(amount, bool) or not 0 < amount < 10**12:
        raise BadRequest("amount: a positive integer in minor units")
    now = datetime.datetime.now(datetime.timezone.utc)
    local = datetime.datetime.now()
    return {
        "t": "0100",
        "2": pan,
        "3": "000000",
        "4": "%012d" % amount,
        "7": now.strftime("%m%d%H%M%S"),
        "12": local.strftime("%H%M%S"),
        "13": local.strftime("%m%d"),
        "41": str(data.get("terminal", "WEB00001"))[:8].ljust(8),
        "42": str(data.get("merchant", "GEVISO-EXAMPLE"))[:15].ljust(15),
        "49": str(data.get("currency", "978"))[:3],
    }


Reply = tuple[str, dict[str, Any]]


def authorize(body: bytes) -> Reply:
    try:
        request = authorization(body)
    except BadRequest as exc:
        return "400 Bad Request", {"error": str(exc)}
    try:
        response = pool().send(request)
    except geviso.SendTimeout:
        return "504 Gateway Timeout", {"error": "the card host did not answer in time"}
    except (geviso.NoConnections, geviso.PoolClosed):
        return "503 Service Unavailable", {"error": "no link to the card host"}
    except geviso.ConnectionClosed as exc:
        return "502 Bad Gateway", {"error": "link lost", "may_have_reached_host": exc.sent}
    except geviso.GevisoError as exc:
        return "502 Bad Gateway", {"error": type(exc).__name__}
    code = response.get("39", "")
    return "200 OK", {
        "approved": code == "00",
        "response_code": code,
        "approval_code": response.get("38"),
        "stan": response.get("11"),
        "amount": int(response.get("4", request["4"])),
    }


def health() -> Reply:
    """Plain state: the worker, whether its pool is up, each address's state, counters."""
    p = pool()
    stats = p.stats
    data = {
        "pid": os.getpid(),
        "pools": _pools_made,
        "up": p.is_up,
        "degraded": p.is_degraded,
        "addresses": {a["address"]: a["state"] for a in stats["addresses"]},
        "stats": {k: v for k, v in stats.items() if k != "addresses"},
    }
    return ("200 OK" if p.is_up else "503 Service Unavailable"), data


def metrics() -> tuple[str, bytes, str]:
    """Prometheus text: (status, body, content type)."""
    if worker_metrics is None:
        return "404 Not Found", b'{"error": "prometheus-client is not installed"}', "application/json"
    p = pool()
    if multiprocess_metrics():
        worker_metrics.refresh(p, METRICS_NAME)  # this worker's gauges as of now
        body, content_type = worker_metrics.scrape()
    else:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body, content_type = generate_latest(), CONTENT_TYPE_LATEST
    return "200 OK", body, content_type


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
    content_type = "application/json"
    if (method, path) == ("POST", "/authorize"):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        status, data = authorize(environ["wsgi.input"].read(length) if length else b"")
        payload = json.dumps(data).encode()
    elif (method, path) == ("GET", "/health"):
        status, data = health()
        payload = json.dumps(data).encode()
    elif (method, path) == ("GET", "/metrics"):
        status, payload, content_type = metrics()
    else:
        status, payload = "404 Not Found", b'{"error": "POST /authorize, GET /health or GET /metrics"}'
    start_response(status, [
        ("Content-Type", content_type),
        ("Content-Length", str(len(payload))),
        ("X-Geviso-Worker", str(os.getpid())),
    ])
    return [payload]
