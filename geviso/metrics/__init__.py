"""Counters and a latency histogram for links, pools and servers; no dependencies.

Every :class:`~geviso.Connection` has a :class:`LinkStats` as ``conn.stats``; read it
with :meth:`LinkStats.as_dict` for plain data. A pool or a server sums the stats of
every link it ever had with a :class:`Totals`, so its counters never go backwards when
a link closes. :func:`snapshot` turns a connection, pool or server into one plain dict.
``geviso.metrics.prometheus`` exports the same figures to Prometheus (optional extra).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from ..errors import ConfigurationError

#: Latencies of successful sends wait, per MTI, in lists of up to this many before they
#: are counted into ``LinkStats.by_outcome`` and the histogram in one pass (and whenever
#: either is read): once per request, an append costs less than a bucket search.
BIN_EVERY = 256
#: Upper bounds (seconds) of the latency histogram buckets; the last bucket is +Inf.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Histogram:
    """Latency histogram with fixed buckets (``counts[i]`` are the values <= ``bounds[i]``
    and above the previous bound; the last count is above every bound)."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Count one value (seconds)."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def add(self, other: Histogram) -> None:
        """Add ``other``'s observations to this histogram (same bounds)."""
        if other.bounds != self.bounds:
            raise ConfigurationError("cannot add histograms with different buckets")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]
        self.sum += other.sum
        self.count += other.count

    def copy(self) -> Histogram:
        """An independent copy."""
        twin = Histogram(self.bounds)
        twin.add(self)
        return twin

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, values at or under it)`` for every bucket, ending with +Inf."""
        out = []
        seen = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts):
            seen += n
            out.append((bound, seen))
        return out

    def quantile(self, q: float) -> float:
        """An upper bound of the ``q`` quantile (the bucket edge it falls under)."""
        if not self.count:
            return 0.0
        rank = q * self.count
        for bound, seen in self.cumulative():
            if seen >= rank:
                return bound
        return float("inf")

    def as_dict(self) -> dict[str, Any]:
        """Plain data: per-bucket counts keyed by upper bound, sum and count."""
        labels = [*map(str, self.bounds), "+Inf"]
        return {"buckets": dict(zip(labels, self.counts)), "sum": self.sum, "count": self.count}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        """The histogram :meth:`as_dict` described."""
        buckets = data.get("buckets", {})
        bounds = tuple(float(b) for b in buckets if b != "+Inf") or LATENCY_BUCKETS
        hist = cls(bounds)
        if buckets:
            hist.counts = [int(n) for n in buckets.values()]
        hist.sum = float(data.get("sum", 0.0))
        hist.count = int(data.get("count", 0))
        return hist


class LinkStats:
    """What one link (or, summed, a pool or server) did: requests, responses and what
    became of them. Attributes are plain ints; ``latency`` times every finished send:
    an answered one from ``send()`` to its response being read (counted by the reader,
    a ``recv`` at a time), a failed one to its error."""

    COUNTERS = (
        "sent",  # frames written (requests and replies)
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
        "reconnects",  # links a pool opened again after one closed (0 on a single link)
    )
    __slots__ = (*COUNTERS, "_latency", "_by_outcome", "_unbinned")
    BIN_EVERY = BIN_EVERY
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
    reconnects: int

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self._latency = Histogram()
        self._by_outcome: dict[tuple[str, str], int] = {}
        self._unbinned: dict[str, list[float]] = {}  # mti -> latencies of "ok" sends not yet counted

    def record(self, mti: str, outcome: str, seconds: float) -> None:
        """One finished send(): its request MTI, ``"ok"`` or the error's class name, and
        how long it took."""
        if outcome == "ok":  # counted later in a batch, as record_answered does
            waiting = self._unbinned.setdefault(mti, [])
            waiting.append(seconds)
            if len(waiting) >= BIN_EVERY:
                self._bin()
            return
        key = (mti, outcome)
        self._by_outcome[key] = self._by_outcome.get(key, 0) + 1
        self._latency.observe(seconds)

    def record_answered(self, answered: Iterable[Any], now: float) -> None:
        """Requests answered at monotonic time ``now``: each has ``mti`` and ``started``
        (when its send began). The reader calls this once per ``recv``, for every
        response it handed to its send."""
        unbinned = self._unbinned
        for request in answered:
            try:  # a subscript, and a KeyError once per MTI: fewer steps than get() and a test
                unbinned[request.mti].append(now - request.started)
            except KeyError:
                unbinned[request.mti] = [now - request.started]
        for waiting in unbinned.values():
            if len(waiting) >= BIN_EVERY:
                self._bin()
                return

    def _bin(self) -> None:
        """Count the waiting latencies into ``by_outcome`` and the histogram: sorted once,
        then each bucket's share found by one search (not one search per latency)."""
        unbinned = self._unbinned
        if not unbinned:
            return
        self._unbinned = {}
        by_outcome, latency = self._by_outcome, self._latency
        waiting: list[float] = []
        for mti, samples in unbinned.items():
            key = (mti, "ok")
            by_outcome[key] = by_outcome.get(key, 0) + len(samples)
            waiting += samples
        waiting.sort()
        counts, below = latency.counts, 0
        for i, bound in enumerate(latency.bounds):  # bucket i: the values <= bound, as observe()
            upto = bisect_right(waiting, bound, below)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(waiting) - below
        latency.sum += sum(waiting)
        latency.count += len(waiting)

    @property
    def latency(self) -> Histogram:
        """Every finished send's latency (seconds)."""
        self._bin()
        return self._latency

    @latency.setter
    def latency(self, histogram: Histogram) -> None:
        self._bin()
        self._latency = histogram

    @property
    def by_outcome(self) -> dict[tuple[str, str], int]:
        """(mti, outcome) -> count; outcome is "ok" or an error class name."""
        self._bin()
        return self._by_outcome

    @property
    def requests(self) -> int:
        """Finished sends, whatever their outcome."""
        return sum(self.by_outcome.values())

    def add(self, other: LinkStats) -> None:
        """Add ``other``'s counts to these (summing links into a pool's totals)."""
        for name in self.COUNTERS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latency.add(other.latency)
        by_outcome = self.by_outcome
        for key, n in list(other.by_outcome.items()):
            by_outcome[key] = by_outcome.get(key, 0) + n

    def copy(self) -> LinkStats:
        """An independent copy."""
        twin = LinkStats()
        twin.add(self)
        return twin

    def as_dict(self) -> dict[str, Any]:
        """Plain data: every counter, ``latency`` and ``by_outcome`` ("mti:outcome" -> n)."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        data["latency"] = self.latency.as_dict()
        data["by_outcome"] = {f"{m}:{o}": n for (m, o), n in self.by_outcome.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkStats:
        """The stats :meth:`as_dict` described (missing keys count as 0)."""
        stats = cls()
        for name in cls.COUNTERS:
            setattr(stats, name, int(data.get(name, 0)))
        if "latency" in data:
            stats.latency = Histogram.from_dict(data["latency"])
        for label, n in data.get("by_outcome", {}).items():
            mti, _, outcome = str(label).partition(":")
            stats.by_outcome[(mti, outcome)] = int(n)
        return stats

    def __repr__(self) -> str:
        busy = " ".join(f"{name}={getattr(self, name)}" for name in self.COUNTERS if getattr(self, name))
        return f"<LinkStats {busy or 'idle'}>"


class Totals:
    """The stats of every link an owner (pool, server) ever had, summed.

    The owner calls :meth:`track` with each link it opens or accepts; a link's counts
    stay in the totals after it closes, so counters never go backwards. Closed links are
    folded into one :class:`LinkStats` and forgotten, so memory does not grow with churn.
    """

    def __init__(self) -> None:
        self._retired = LinkStats()
        self._links: dict[int, Any] = {}
        #: Links opened again after one closed; the owner counts them.
        self.reconnects = 0

    def track(self, conn: Any) -> None:
        """Count ``conn`` (anything with ``stats`` and ``state``) from now on."""
        self._sweep()
        self._links[id(conn)] = conn

    def _sweep(self) -> None:
        for key, conn in list(self._links.items()):
            if conn.state == "closed":
                self._retired.add(conn.stats)
                del self._links[key]

    def stats(self) -> LinkStats:
        """A new :class:`LinkStats` with the sum over every link tracked so far."""
        self._sweep()
        total = self._retired.copy()
        for conn in list(self._links.values()):
            total.add(conn.stats)
        total.reconnects += self.reconnects
        return total

    @property
    def links(self) -> list[Any]:
        """The tracked links not yet closed."""
        return [c for c in self._links.values() if c.state != "closed"]


def stats_of(obj: Any) -> LinkStats:
    """The :class:`LinkStats` of a connection, or the totals of a pool or server: its
    :class:`Totals` (``obj.totals``) when it keeps one, else the sum over its
    ``connections``. A ``reconnects`` count in a dict ``obj.stats`` is kept."""
    totals = getattr(obj, "totals", None)
    if isinstance(totals, Totals):
        return totals.stats()  # first: a pool's ``stats`` property would sum the links again
    stats = getattr(obj, "stats", None)
    if callable(stats):
        stats = stats()
    if isinstance(stats, LinkStats):
        return stats
    if isinstance(stats, Mapping) and "latency" in stats:
        return LinkStats.from_dict(stats)
    total = LinkStats()
    for conn in _connections_of(obj):
        total.add(stats_of(conn))
    if isinstance(stats, Mapping) and not total.reconnects:
        total.reconnects = int(stats.get("reconnects", 0) or 0)
    return total


def _connections_of(obj: Any) -> list[Any]:
    conns = getattr(obj, "connections", None)
    if conns is None:
        return []
    return list(conns() if callable(conns) else conns)


def in_flight(obj: Any) -> int:
    """Requests sent and not yet answered on a connection, pool or server."""
    value = getattr(obj, "in_flight", None)
    if isinstance(value, int):
        return value
    return sum(in_flight(conn) for conn in _connections_of(obj))


def connection_states(obj: Any) -> dict[str, int]:
    """How many links of a connection, pool or server are in each state: a link's
    ``state`` (``open``, ``closed``...), or for a pool each address's (``up``,
    ``connecting``, ``waiting`` to reconnect, ``closed``)."""
    state = getattr(obj, "state", None)
    if isinstance(state, str):
        return {state: 1}
    counts: dict[str, int] = {}
    stats = getattr(obj, "stats", None)
    if isinstance(stats, Mapping) and isinstance(stats.get("addresses"), list):
        for address in stats["addresses"]:
            name = str(address.get("state", "unknown"))
            counts[name] = counts.get(name, 0) + 1
        return counts
    for conn in _connections_of(obj):
        counts[conn.state] = counts.get(conn.state, 0) + 1
    return counts


def snapshot(obj: Any, extra: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """Plain data for a connection, pool or server: every counter, ``in_flight``,
    ``connections`` (links per state), ``latency`` with p50/p99 bounds, ``by_outcome``.

    ``extra`` names further attributes to copy (e.g. ``("is_up", "is_degraded")``).
    """
    stats = stats_of(obj)
    data = stats.as_dict()
    data["requests"] = stats.requests
    data["in_flight"] = in_flight(obj)
    data["connections"] = connection_states(obj)
    data["latency"]["p50"] = stats.latency.quantile(0.5)
    data["latency"]["p99"] = stats.latency.quantile(0.99)
    for name in extra or ():
        data[name] = getattr(obj, name, None)
    return data


class SafStats:
    """What a store and forward did (counters of this process) and what its store
    holds (``depth``, ``dead``, ``oldest_age``, ``stored_attempts``: read from the
    store when the forwarder is idle, or by ``refresh_stats()``)."""

    COUNTERS = (
        "puts",  # messages stored by this process
        "attempts",  # transmissions started
        "retransmissions",  # of them, under the repeat MTI
        "failures",  # transmissions that got no answer
        "delivered",  # answers accepted (and recorded)
        "expired",  # messages made dead letters
    )
    GAUGES = ("depth", "dead", "oldest_age", "stored_attempts")
    __slots__ = (*COUNTERS, *GAUGES, "refreshed")
    puts: int
    attempts: int
    retransmissions: int
    failures: int
    delivered: int
    expired: int
    depth: int
    dead: int
    oldest_age: float
    stored_attempts: int

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        self.depth = self.dead = self.stored_attempts = 0
        self.oldest_age = 0.0
        #: When the gauges were read from the store (wall-clock seconds; 0: never).
        self.refreshed = 0.0

    def update_counts(self, counts: Mapping[str, Any], now: float) -> None:
        """Set the gauges from a store's counts (``pending``, ``dead``, ``oldest``, ``attempts``)."""
        self.depth = int(counts.get("pending", 0))
        self.dead = int(counts.get("dead", 0))
        oldest = counts.get("oldest")
        self.oldest_age = max(0.0, now - float(oldest)) if oldest is not None else 0.0
        self.stored_attempts = int(counts.get("attempts", 0))
        self.refreshed = now

    def as_dict(self) -> dict[str, Any]:
        """Plain data: every counter and gauge."""
        return {name: getattr(self, name) for name in (*self.COUNTERS, *self.GAUGES)}

    def __repr__(self) -> str:
        return "<SafStats " + " ".join(f"{k}={v}" for k, v in self.as_dict().items()) + ">"


__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "LinkStats",
    "SafStats",
    "Totals",
    "connection_states",
    "in_flight",
    "snapshot",
    "stats_of",
]
