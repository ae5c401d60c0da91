"""Which thread a gevent object belongs to, and a clear error for any other thread.

A link, pool, server or store runs its greenlets in the hub of the thread that started
it. Used from another thread, gevent fails deep inside (``Cannot switch to a different
thread``) or waits forever for a wake-up that never comes; :func:`check` says so first.
The owner is the operating system's thread id, read with the unpatched
``_thread.get_ident``: with gevent's monkey-patching (gunicorn's gevent workers, Locust)
``threading.get_ident()`` names the current greenlet instead.
"""

from __future__ import annotations

from gevent.monkey import get_original

from .errors import WrongThread

#: The calling thread's id (a C function: cheap enough to check on every send).
ident = get_original("_thread", "get_ident")


def owner() -> int:
    """The calling thread's id: keep it as the owner of an object being built."""
    return int(ident())


def check(owner_id: int, what: object) -> None:
    """Raise :class:`WrongThread` unless called from the thread ``owner_id``."""
    if ident() != owner_id:
        raise WrongThread(
            f"{what} belongs to another thread: use it from the thread that started it "
            "(with gevent, give each thread its own links, pools and servers)"
        )


__all__ = ["check", "ident", "owner"]
