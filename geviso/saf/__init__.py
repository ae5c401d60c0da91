"""Store and forward: reversals and advices reach the host, whatever happens.

``saf = StoreAndForward(target, "saf.db")``; ``saf.put(advice)`` returns once the
message is durable; ``saf.reverse(request)`` stores a request's reversal. A forwarding
greenlet sends them in store order and retransmits unanswered ones under the repeat
MTI until an answer is accepted, or they expire into dead letters. See docs/saf.md.

Layers: :mod:`~geviso.saf.core` (entries, repeat MTI, retry policy, reversals; no I/O),
:mod:`~geviso.saf.store` (the store interface and shared SQL),
:mod:`~geviso.saf.sqlite` and :mod:`~geviso.saf.postgres` (backends),
:mod:`~geviso.saf.forwarder` (gevent: group commit in a thread, forwarding greenlet).
"""

from __future__ import annotations

from .core import DEAD, PENDING, Entry, Policy, build_reversal, repeat_mti
from .forwarder import StoreAndForward
from .store import Store, open_store

__all__ = [
    "DEAD",
    "PENDING",
    "Entry",
    "Policy",
    "Store",
    "StoreAndForward",
    "build_reversal",
    "open_store",
    "repeat_mti",
]
