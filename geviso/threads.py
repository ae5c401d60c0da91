"""Which thread a gevent object belongs to, and a clear error for any other thread.

A link, pool, server or store runs its greenlets in the hub of the thread that started
it. Used from another thread, gevent fails deep inside (``Cannot switch to a different
thread``) or waits forever for a wake-up that never comes; :func:`check` says so first.
"""

from __future__ import annotations

import threading

from .errors import WrongThread


def owner() -> int:
    """The calling thread's id: keep it as the owner of an object being built."""
    return threading.get_ident()


def check(owner_id: int, what: object) -> None:
    """Raise :class:`WrongThread` unless called from the thread ``owner_id``."""
    if threading.get_ident() != owner_id:
        raise WrongThread(
            f"{what} belongs to another thread: use it from the thread that started it "
            "(with gevent, give each thread its own links, pools and servers)"
        )


__all__ = ["check", "owner"]
