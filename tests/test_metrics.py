"""Counters, the latency histogram, totals over links, and the Prometheus export."""

from __future__ import annotations

import json
import urllib.request
from types import SimpleNamespace

import gevent
import pytest
from conftest import respond, wait_until
from iso8583.specs import default as spec

import geviso
from geviso.metrics import LATENCY_BUCKETS, Histogram, LinkStats, Totals, snapshot

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from geviso.metrics import prometheus as geviso_prometheus  # noqa: E402


def test_histogram_counts_each_value_in_its_bucket():
    hist = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 0.5, 5.0):
        hist.observe(value)
    assert hist.counts == [2, 1, 1, 1]
    assert hist.cumulative() == [(0.01, 2), (0.1, 3), (1.0, 4), (float("inf"), 5)]
    assert hist.count == 5 and hist.sum == pytest.approx(5.565)
    assert hist.quantile(0.5) == 0.1
    assert hist.quantile(1.0) == float("inf")


def test_histogram_add_and_plain_data_round_trip():
    one, two = Histogram(), Histogram()
    one.observe(0.002)
    two.observe(0.2)
    two.observe(0.3)
    one.add(two)
    assert one.count == 3
    again = Histogram.from_dict(json.loads(json.dumps(one.as_dict())))
    assert again.counts == one.counts and again.sum == pytest.approx(one.sum) and again.bounds == one.bounds
    with pytest.raises(ValueError):
        one.add(Histogram((1.0,)))


def test_link_stats_add_copy_and_round_trip():
    a, b = LinkStats(), LinkStats()
    a.sent, a.matched, b.sent, b.timeouts = 3, 2, 4, 1
    a.record("0200", "ok", 0.01)
    b.record("0200", "ok", 0.02)
    b.record("0200", "SendTimeout", 2.0)
    total = a.copy()
    total.add(b)
    assert (total.sent, total.matched, total.timeouts, total.requests) == (7, 2, 1, 3)
    assert total.by_outcome == {("0200", "ok"): 2, ("0200", "SendTimeout"): 1}
    assert a.sent == 3 and a.requests == 1  # the copy is independent
    again = LinkStats.from_dict(json.loads(json.dumps(total.as_dict())))
    assert again.as_dict() == total.as_dict()


def test_link_stats_count_every_recorded_send_across_batches():
    """Successful sends are counted in batches: whenever the stats are read, every send
    recorded so far is in ``by_outcome`` and the histogram, on either side of a batch."""
    stats = LinkStats()
    oks = LinkStats.BIN_EVERY + 44
    for i in range(oks):
        stats.record("0200", "ok", 0.0001 if i % 2 else 0.003)
        if i < 5:
            stats.record("0100", "ok", 0.02)
    stats.record("0200", "SendTimeout", 30.0)
    assert stats.by_outcome == {("0200", "ok"): oks, ("0100", "ok"): 5, ("0200", "SendTimeout"): 1}
    assert stats.requests == stats.latency.count == oks + 6
    assert stats.latency.counts[0] == oks // 2  # the 0.1 ms ones, in the first bucket
    assert stats.latency.sum == pytest.approx(oks // 2 * 0.0001 + oks // 2 * 0.003 + 5 * 0.02 + 30.0)
    stats.record("0200", "ok", 0.003)
    assert stats.by_outcome[("0200", "ok")] == oks + 1 and stats.latency.count == oks + 7


def test_answers_the_reader_records_count_with_their_latency_from_the_send():
    stats = LinkStats()
    answered = [SimpleNamespace(mti="0200", started=10.0), SimpleNamespace(mti="0100", started=10.5)]
    stats.record_answered(answered, now=11.0)
    stats.record("0200", "SendTimeout", 30.0)
    assert stats.by_outcome == {("0200", "ok"): 1, ("0100", "ok"): 1, ("0200", "SendTimeout"): 1}
    assert stats.latency.count == 3 and stats.latency.sum == pytest.approx(1.0 + 0.5 + 30.0)


def test_batched_latencies_fall_in_the_buckets_observe_puts_them_in():
    values = [*LATENCY_BUCKETS, *(b * 1.01 for b in LATENCY_BUCKETS), 0.0, 1e-9, 99.0]
    stats, hist = LinkStats(), Histogram()
    for value in values * 3:
        stats.record("0800", "ok", value)
        hist.observe(value)
    assert stats.latency.counts == hist.counts and stats.latency.count == hist.count
    assert stats.latency.sum == pytest.approx(hist.sum)


def test_connection_counts_sends_timeouts_and_late_responses(echo_host):
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        for _ in range(20):
            conn.send({"t": "0800", "70": "301"})
        late = []

        def answer_late(c, doc):
            late.append(doc)
            gevent.sleep(0.3)
            c.reply(respond(doc))

        echo_host.answer = answer_late
        with pytest.raises(geviso.SendTimeout):
            conn.send({"t": "0200", "3": "000000", "4": "000000000100"}, timeout=0.05)
        assert wait_until(lambda: conn.stats.late == 1)
        stats = conn.stats
        assert stats.matched == 20
        assert stats.timeouts == 1
        assert stats.unmatched == 1
        assert stats.by_outcome == {("0800", "ok"): 20, ("0200", "SendTimeout"): 1}
        assert stats.latency.count == 21
        assert stats.sent == 21 and stats.received == 21
        data = snapshot(conn)
        json.dumps(data)  # plain data
        assert data["in_flight"] == 0
        assert data["connections"] == {"open": 1}
        assert data["requests"] == 21


def test_totals_keep_the_counts_of_closed_links(echo_host):
    totals = Totals()
    for round_ in range(3):
        with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
            totals.track(conn)
            conn.send({"t": "0800", "70": "301"})
            conn.send({"t": "0800", "70": "301"})
            assert totals.links == [conn]
            assert totals.stats().matched == 2 * (round_ + 1)
    totals.reconnects = 2
    total = totals.stats()
    assert total.matched == 6
    assert total.by_outcome == {("0800", "ok"): 6}
    assert total.reconnects == 2
    assert totals.links == []  # closed links are folded, not kept


class FakePool:
    """Stands for anything with ``connections`` (pool or server) and pool flags."""

    def __init__(self, links: list[geviso.Connection]) -> None:
        self.connections = links
        self.is_up = True
        self.is_degraded = False


def _scrape(registry) -> dict[str, list]:
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def test_prometheus_collector_exports_the_usual_names(echo_host):
    registry = prometheus_client.CollectorRegistry()
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as one, geviso.Connection(
        echo_host.address, spec, send_timeout=5
    ) as two:
        pool = FakePool([one, two])
        name = geviso_prometheus.register(pool, "acquirer", registry=registry)
        assert name == "acquirer"
        gevent.joinall([gevent.spawn(c.send, {"t": "0800", "70": "301"}) for c in (one, two, one)])
        echo_host.answer = lambda c, d: None  # never answer: one request stays in flight
        stuck = gevent.spawn(two.send, {"t": "0100", "3": "000000", "4": "000000000100"}, timeout=5)
        assert wait_until(lambda: two.in_flight == 1)
        families = _scrape(registry)
        stuck.kill()

    requests = {(s.labels["mti"], s.labels["outcome"]): s.value for s in families["geviso_requests"]}
    assert requests == {("0800", "ok"): 3.0}
    duration = {s.name: s for s in families["geviso_request_duration_seconds"]}
    assert duration["geviso_request_duration_seconds_count"].value == 3.0
    inf = [s for s in families["geviso_request_duration_seconds"] if s.labels.get("le") == "+Inf"]
    assert inf[0].value == 3.0
    assert [s.value for s in families["geviso_in_flight"]] == [1.0]
    assert {s.labels["state"]: s.value for s in families["geviso_connections"]} == {"open": 2.0}
    assert [s.value for s in families["geviso_pool_up"]] == [1.0]
    assert [s.value for s in families["geviso_responses_matched"] if s.name.endswith("_total")] == [3.0]
    assert all(s.labels["name"] == "acquirer" for samples in families.values() for s in samples)


def test_prometheus_scrape_over_http(echo_host):
    registry = prometheus_client.CollectorRegistry()
    with geviso.Connection(echo_host.address, spec, send_timeout=5) as conn:
        geviso_prometheus.register(conn, registry=registry)
        for _ in range(5):
            conn.send({"t": "0800", "70": "301"})
        server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            url = f"http://127.0.0.1:{server.server_port}/metrics"
            body = urllib.request.urlopen(url, timeout=10).read().decode()
        finally:
            server.shutdown()
            server.server_close()
    assert 'geviso_requests_total{mti="0800",name="connection1",outcome="ok"} 5.0' in body
    assert 'geviso_connections{name="connection1",state="open"} 1.0' in body
    assert "geviso_request_duration_seconds_bucket" in body


def test_collector_drops_sources_that_are_gone(echo_host):
    registry = prometheus_client.CollectorRegistry()
    collector = geviso_prometheus.collector(registry)
    conn = geviso.Connection(echo_host.address, spec)
    geviso_prometheus.register(conn, "gone", registry=registry)
    assert collector.names == ["gone"]
    del conn
    assert collector.names == []
    assert "geviso_in_flight" in _scrape(registry)
    conn = geviso.Connection(echo_host.address, spec)
    geviso_prometheus.register(conn, "kept", registry=registry)
    geviso_prometheus.unregister(conn, registry=registry)
    assert collector.names == []


class Recorder:
    """A tracing listener that keeps what it was told."""

    def __init__(self) -> None:
        self.started: list[dict[str, str]] = []
        self.ended: list[tuple[int, object, object]] = []

    def request_start(self, conn, request):
        self.started.append(dict(request))
        return len(self.started)

    def request_end(self, token, response, error):
        self.ended.append((token, response, error))


def test_tracing_listeners_see_every_send_and_its_outcome(echo_host):
    recorder = Recorder()
    calls = []
    callbacks = geviso.tracing.CallbackListener(
        on_request_end=lambda token, response, error: calls.append((token, type(error).__name__ if error else "ok"))
    )
    with geviso.Connection(echo_host.address, spec, send_timeout=5, listeners=[recorder, callbacks]) as conn:
        response = conn.send({"t": "0800", "70": "301"})
        echo_host.answer = lambda c, d: None
        with pytest.raises(geviso.SendTimeout) as info:
            conn.send({"t": "0100", "3": "000000", "4": "000000000100"}, timeout=0.05)
    assert [r["t"] for r in recorder.started] == ["0800", "0100"]
    assert recorder.ended[0] == (1, response, None)
    assert recorder.ended[1] == (2, None, info.value)
    assert calls == [(None, "ok"), (None, "SendTimeout")]


def test_a_failing_listener_is_counted_and_the_send_goes_on(echo_host, caplog):
    class Broken:
        def request_start(self, conn, request):
            raise RuntimeError("boom")

        def request_end(self, token, response, error):
            raise RuntimeError("boom")

    with geviso.Connection(echo_host.address, spec, send_timeout=5, listeners=[Broken()]) as conn:
        for _ in range(3):
            assert conn.send({"t": "0800", "70": "301"})["39"] == "00"
        assert conn.stats.errors == 6
    warnings = [r for r in caplog.records if r.name == "geviso.tracing"]
    assert len(warnings) == 1 and "Broken" in warnings[0].getMessage()


def test_pool_and_server_stats_count_every_link_they_ever_had():
    host = geviso.MockHost(("127.0.0.1", 0), spec)
    host.start()
    try:
        pool = geviso.Pool(lambda a: geviso.Connection(a, spec, send_timeout=5), [host.address],
                           reconnect_wait=0.05)
        with pool.connect():
            for _ in range(5):
                pool.send({"t": "0800", "70": "301"})
            first = pool.connections[0]
            first.fail("dropped for the test")
            assert wait_until(lambda: pool.connections and pool.connections[0] is not first)
            for _ in range(3):
                pool.send({"t": "0200", "3": "000000", "4": "000000000100"})
            stats = json.loads(json.dumps(pool.stats))
            assert stats["matched"] == 8 and stats["reconnects"] == 1 and stats["in_flight"] == 0
            assert stats["by_outcome"] == {"0800:ok": 5, "0200:ok": 3}
            data = snapshot(pool, extra=("is_up", "is_degraded"))
            assert data["matched"] == 8 and data["reconnects"] == 1
            assert data["connections"] == {"up": 1} and data["is_up"] is True
            registry = prometheus_client.CollectorRegistry()
            geviso_prometheus.register(pool, "pool", registry=registry)
            geviso_prometheus.register(host, "host", registry=registry)
            families = _scrape(registry)
        def totals(metric: str) -> dict:
            return {s.labels["name"]: s.value for s in families[metric] if s.name.endswith("_total")}

        assert totals("geviso_responses_matched") == {"pool": 8.0, "host": 0.0}
        assert totals("geviso_replies") == {"pool": 0.0, "host": 8.0}
        assert totals("geviso_reconnects") == {"pool": 1.0, "host": 0.0}
        assert {s.labels["name"]: s.value for s in families["geviso_pool_up"]} == {"pool": 1.0}
        assert snapshot(host)["inbound"] == 8
    finally:
        host.stop()


def test_import_geviso_needs_no_optional_dependency():
    import subprocess
    import sys

    code = (
        "import sys, geviso, geviso.metrics, geviso.tracing; "
        "print(sorted(m for m in ('prometheus_client', 'locust', 'opentelemetry') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
