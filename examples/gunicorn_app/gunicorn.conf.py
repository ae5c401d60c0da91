"""gunicorn settings: gevent workers, each with one geviso Pool made after the fork.

Start a card host first (``geviso mock-host --port 8583``), then:
GEVISO_HOSTS=127.0.0.1:8583 gunicorn -c examples/gunicorn_app/gunicorn.conf.py

Metrics use prometheus_client's multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` is set
(to a new folder, unless you set it) before the workers start, and emptied first.
"""

import glob
import logging
import os
import shutil
import tempfile

chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "app:application"
bind = os.environ.get("GEVISO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GEVISO_WORKERS", "2"))
worker_class = "gevent"
worker_connections = 1000
graceful_timeout = 10
_made_folders = []  # metrics folders this config made, removed at exit


def on_starting(server):
    """In the master, before any worker: an empty folder for the workers' metrics files
    (prometheus_client wants it empty at start, and set before a worker imports it)."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for stale in glob.glob(os.path.join(folder, "*.db")):
            os.remove(stale)
    else:
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="geviso-metrics-")
        _made_folders.append(made)


def on_exit(server):
    """Remove the metrics folder this config made (not one you set)."""
    while _made_folders:
        shutil.rmtree(_made_folders.pop(), ignore_errors=True)


def child_exit(server, worker):
    """A worker ended: its live gauges no longer count (its counters still do)."""
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """In each worker, after fork and gevent's monkey-patching: log geviso's link events
    with gunicorn's, and connect this worker's pool (never in the master)."""
    import app

    geviso_log = logging.getLogger("geviso")
    geviso_log.setLevel(logging.INFO)
    for handler in worker.log.error_log.handlers:
        geviso_log.addHandler(handler)
    app.start_pool()


def worker_exit(server, worker):
    """Sign off and close the worker's links, letting in-flight requests finish."""
    import app

    app.close_pool()
