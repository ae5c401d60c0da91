"""Counters and a latency histogram for links, pools and servers; no dependencies.

Every :class:`~geviso.Connection` has a :class:`LinkStats` as ``conn.stats``; read it
with :meth:`LinkStats.as_dict` for plain data.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

#: Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Cumulative-friendly latency histogram with fixed buckets."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile (the bucket edge it falls under)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        seen = 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            seen += n
            if seen >= rank:
                return bound
        return float("inf")

    def as_dict(self) -> dict[str, Any]:
        labels = [*map(str, self.bounds), "+Inf"]
        return {"buckets": dict(zip(labels, self.counts)), "sum": self.sum, "count": self.count}


class LinkStats:
    """What one link did: requests, responses and what became of them."""

    COUNTERS = (
        "sent",  # requests written by send()
        "received",  # frames decoded
        "matched",  # responses handed to their send()
        "unmatched",  # responses with no pending request (late ones included)
        "late",  # responses to a request that had already timed out
        "inbound",  # requests from the peer
        "replies",  # reply() calls
        "timeouts",
        "rejects",
        "errors",  # decode errors and handler failures
        "keepalives",  # zero-length / session-control frames received
    )
    __slots__ = (*COUNTERS, "latency", "by_outcome")
    sent: int
    received: int
    matched: int
    unmatched: int
    late: int
    inbound: int
    replies: int
    timeouts: int
    rejects: int
    errors: int
    keepalives: int

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.latency = Histogram()
        #: (mti, outcome) -> count; outcome is "ok" or an error class name.
        self.by_outcome: dict[tuple[str, str], int] = {}

    def record(self, mti: str, outcome: str, seconds: float) -> None:
        """One finished send()."""
        key = (mti, outcome)
        self.by_outcome[key] = self.by_outcome.get(key, 0) + 1
        self.latency.observe(seconds)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        data["latency"] = self.latency.as_dict()
        data["by_outcome"] = {f"{m}:{o}": n for (m, o), n in self.by_outcome.items()}
        return data
