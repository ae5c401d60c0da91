"""Prometheus export of geviso's stats (the ``prometheus`` extra, or ``pip install prometheus-client``).

A ``prometheus_client`` custom collector reads the stats of every registered
connection, pool or server at scrape time; nothing is counted twice and the hot path
pays nothing for it::

    from prometheus_client import start_http_server
    from geviso.metrics import prometheus

    prometheus.register(pool, name="acquirer")   # into prometheus_client.REGISTRY
    start_http_server(9100)

Metrics (each labelled with the ``name`` given at registration):
``geviso_requests_total{mti,outcome}`` (outcome ``ok`` or the error class),
``geviso_request_duration_seconds`` (histogram), ``geviso_in_flight``,
``geviso_connections{state}`` (a link's state; for a pool, its addresses by state:
``up``, ``connecting``, ``waiting``), ``geviso_pool_up``, and one counter per link counter:
``geviso_frames_sent_total``, ``geviso_responses_matched_total``,
``geviso_timeouts_total``, ``geviso_reconnects_total``...

A :class:`~geviso.StoreAndForward` registers the same way and exports
``geviso_saf_depth``, ``geviso_saf_dead``, ``geviso_saf_oldest_age_seconds`` and one
counter per :class:`~geviso.metrics.SafStats` counter (``geviso_saf_delivered_total``...).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from typing import Any, Callable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from . import LinkStats, SafStats, connection_states, in_flight, stats_of

log = logging.getLogger(__name__)

#: Link counter -> (metric name without ``_total``, help text).
COUNTER_METRICS = {
    "sent": ("geviso_frames_sent", "Frames written (requests and replies)."),
    "received": ("geviso_frames_received", "Frames received and decoded."),
    "matched": ("geviso_responses_matched", "Responses handed to the send() waiting for them."),
    "unmatched": ("geviso_responses_unmatched", "Responses with no pending request (late ones included)."),
    "late": ("geviso_responses_late", "Responses to requests that had already timed out."),
    "inbound": ("geviso_inbound_requests", "Requests received from the peer."),
    "replies": ("geviso_replies", "Replies written to the peer's requests."),
    "timeouts": ("geviso_timeouts", "Sends that got no response in time."),
    "rejects": ("geviso_rejects", "Sends failed by a reject."),
    "errors": ("geviso_errors", "Undecodable frames and failed handlers."),
    "keepalives": ("geviso_keepalives", "Keep-alive frames received."),
    "reconnects": ("geviso_reconnects", "Links opened again after one closed."),
}
assert set(COUNTER_METRICS) == set(LinkStats.COUNTERS)

#: Store and forward counter -> (metric name without ``_total``, help text).
SAF_COUNTER_METRICS = {
    "puts": ("geviso_saf_puts", "Messages stored durably by this process."),
    "attempts": ("geviso_saf_attempts", "Transmissions started by the forwarder."),
    "retransmissions": ("geviso_saf_retransmissions", "Transmissions under the repeat MTI."),
    "failures": ("geviso_saf_failures", "Transmissions that got no answer."),
    "delivered": ("geviso_saf_delivered", "Messages whose answer was accepted and recorded."),
    "expired": ("geviso_saf_expired", "Messages made dead letters."),
}
#: Store and forward gauge -> (metric name, help text).
SAF_GAUGE_METRICS = {
    "depth": ("geviso_saf_depth", "Messages waiting to be forwarded."),
    "dead": ("geviso_saf_dead", "Dead letters in the store."),
    "oldest_age": ("geviso_saf_oldest_age_seconds", "Age of the oldest message waiting."),
}
assert set(SAF_COUNTER_METRICS) == set(SafStats.COUNTERS)


class _Families:
    """The metric families of one scrape."""

    def __init__(self) -> None:
        self.requests = CounterMetricFamily(
            "geviso_requests", "Finished sends by request MTI and outcome.", labels=["name", "mti", "outcome"]
        )
        self.duration = HistogramMetricFamily(
            "geviso_request_duration_seconds", "Time from send() to its outcome.", labels=["name"]
        )
        self.in_flight = GaugeMetricFamily("geviso_in_flight", "Requests sent and not yet answered.", labels=["name"])
        self.connections = GaugeMetricFamily("geviso_connections", "Links by state.", labels=["name", "state"])
        self.flags = {
            "up": GaugeMetricFamily("geviso_pool_up", "1 when the pool has a usable link.", labels=["name"]),
            "degraded": GaugeMetricFamily(
                "geviso_pool_degraded", "1 when the pool has fewer usable links than addresses.", labels=["name"]
            ),
        }
        self.counters = {
            counter: CounterMetricFamily(metric, text, labels=["name"])
            for counter, (metric, text) in COUNTER_METRICS.items()
        }
        self.saf: dict[str, Metric] = {
            name: CounterMetricFamily(metric, text, labels=["name"])
            for name, (metric, text) in SAF_COUNTER_METRICS.items()
        }
        for name, (metric, text) in SAF_GAUGE_METRICS.items():
            self.saf[name] = GaugeMetricFamily(metric, text, labels=["name"])

    def all(self) -> list[Metric]:
        return [
            self.requests,
            self.duration,
            self.in_flight,
            self.connections,
            *self.flags.values(),
            *self.counters.values(),
            *self.saf.values(),
        ]

    def add(self, name: str, source: Any) -> None:
        """The samples of one connection, pool, server or store and forward."""
        saf_stats = getattr(source, "stats", None)
        if isinstance(saf_stats, SafStats):
            for stat, family in self.saf.items():
                family.add_metric([name], getattr(saf_stats, stat))  # type: ignore[attr-defined]
            return
        stats = stats_of(source)
        for (mti, outcome), n in sorted(stats.by_outcome.items()):
            self.requests.add_metric([name, mti, outcome], n)
        buckets = [(_le(bound), float(n)) for bound, n in stats.latency.cumulative()]
        self.duration.add_metric([name], buckets, stats.latency.sum)
        self.in_flight.add_metric([name], in_flight(source))
        for state, n in sorted(connection_states(source).items()):
            self.connections.add_metric([name, state], n)
        for flag, family in self.flags.items():
            value = getattr(source, "is_" + flag, None)
            if isinstance(value, bool):
                family.add_metric([name], 1 if value else 0)
        for counter, total in self.counters.items():
            total.add_metric([name], getattr(stats, counter))


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class GevisoCollector(Collector):
    """Reads registered connections, pools and servers at every scrape.

    Sources are held by weak reference where possible: a pool that is garbage
    collected drops out of the export by itself.
    """

    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Any]] = {}
        self._seq = 0

    def add(self, source: Any, name: Optional[str] = None) -> str:
        """Export ``source`` under ``name`` (default: its class name and a number)."""
        if name is None:
            self._seq += 1
            name = f"{type(source).__name__.lower()}{self._seq}"
        try:
            ref: Callable[[], Any] = weakref.ref(source)
        except TypeError:
            ref = lambda: source  # noqa: E731 - objects that refuse weak references
        self._sources[name] = ref
        return name

    def remove(self, source_or_name: Any) -> None:
        """Stop exporting a source (by object or by name)."""
        for name, ref in list(self._sources.items()):
            if name == source_or_name or ref() is source_or_name:
                del self._sources[name]

    @property
    def names(self) -> list[str]:
        """Names of the sources still alive."""
        return [name for name, ref in self._sources.items() if ref() is not None]

    def describe(self) -> list[Metric]:
        """The metric names, for the registry's duplicate check (no samples)."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        """One sample set per live source."""
        fams = _Families()
        for name, ref in list(self._sources.items()):
            source = ref()
            if source is None:
                del self._sources[name]
                continue
            try:
                fams.add(name, source)
            except Exception as exc:  # a scrape must not fail because one source is odd
                log.warning("cannot read stats of %s: %s", name, type(exc).__name__)
        yield from fams.all()


#: Keyed by the registry itself, weakly: an ``id()`` key would hand a dead registry's
#: collector (and its sources) to a new registry that happens to reuse the address.
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, GevisoCollector] = weakref.WeakKeyDictionary()


def collector(registry: CollectorRegistry = REGISTRY) -> GevisoCollector:
    """The geviso collector of ``registry``, registered with it on first use."""
    found = _collectors.get(registry)
    if found is None:
        found = _collectors[registry] = GevisoCollector()
        registry.register(found)
    return found


def register(source: Any, name: Optional[str] = None, *, registry: CollectorRegistry = REGISTRY) -> str:
    """Export a connection, pool or server's stats through ``registry``; returns the
    ``name`` label its samples carry."""
    return collector(registry).add(source, name)


def unregister(source_or_name: Any, *, registry: CollectorRegistry = REGISTRY) -> None:
    """Stop exporting a source registered with :func:`register`."""
    found = _collectors.get(registry)
    if found is not None:
        found.remove(source_or_name)


__all__ = ["COUNTER_METRICS", "GevisoCollector", "collector", "register", "unregister"]
