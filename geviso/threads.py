"""Which thread a gevent object belongs to, and a clear error for any other thread.

A link, pool, server or store runs its greenlets in the hub of the thread that started
it. Used from another thread, gevent fails deep inside (``Cannot switch to a different
thread``) or waits forever for a wake-up that never comes; :func:`check` says so first.
The owner is the thread's hub, not its id: with gevent's monkey-patching (gunicorn's
gevent workers, Locust) ``threading.get_ident()`` names the current greenlet.
"""

from __future__ import annotations

from typing import Any

from gevent.hub import get_hub

from .errors import WrongThread


def owner() -> Any:
    """The calling thread's hub: keep it as the owner of an object being built."""
    return get_hub()


def check(owner_hub: Any, what: object) -> None:
    """Raise :class:`WrongThread` unless called from the thread whose hub is ``owner_hub``."""
    if get_hub() is not owner_hub:
        raise WrongThread(
            f"{what} belongs to another thread: use it from the thread that started it "
            "(with gevent, give each thread its own links, pools and servers)"
        )


__all__ = ["check", "owner"]
