"""gunicorn settings: gevent workers, each with one geviso Pool made after the fork.

Run: GEVISO_HOSTS=127.0.0.1:8583 gunicorn -c examples/gunicorn_app/gunicorn.conf.py
"""

import logging
import os

chdir = os.path.dirname(os.path.abspath(__file__))
wsgi_app = "app:application"
bind = os.environ.get("GEVISO_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("GEVISO_WORKERS", "2"))
worker_class = "gevent"
worker_connections = 1000
graceful_timeout = 10


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
