"""Store and forward against a real mock host on loopback, with a SQLite store in a
temporary directory: puts, forwarding in order, retransmission under the repeat MTI,
dead letters, reversals, bad input, and stats."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
from iso8583.specs import default as spec
from safhost import JournalHost, advice

import geviso
from geviso.errors import ConfigurationError, EncodeError
from geviso.saf import DEAD, PENDING
from geviso.saf.sqlite import SqliteStore


@pytest.fixture
def host() -> Iterator[JournalHost]:
    mock = JournalHost()
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def conn(host: JournalHost) -> Iterator[geviso.Connection]:
    link = geviso.Connection(host.address, spec).connect()
    yield link
    link.close()


def saf_of(target, path: Path, store=None, **options) -> geviso.StoreAndForward:
    options.setdefault("timeout", 0.3)
    options.setdefault("retry_wait", 0.05)
    options.setdefault("max_wait", 0.2)
    options.setdefault("poll_interval", 0.05)
    return geviso.StoreAndForward(target, store if store is not None else str(path / "saf.db"), **options)


def test_put_returns_a_durable_entry_that_is_forwarded_and_delivered(host, conn, tmp_path):
    delivered = []
    with saf_of(conn, tmp_path, on_delivered=lambda entry, response: delivered.append((entry, response))) as saf:
        entry = saf.put(advice(0))
        assert entry.id >= 1 and entry.doc["11"] == "000001"
        assert saf.drain(10)
        gevent.sleep(0.05)  # handlers run in their own greenlets
    assert [(e.id, r["t"], r["39"]) for e, r in delivered] == [(entry.id, "0430", "00")]
    assert host.receipts("000001") == ["0420"]
    assert saf.stats.delivered == 1 and saf.stats.puts == 1 and saf.stats.depth == 0
    with SqliteStore(str(tmp_path / "saf.db")) as store:  # delivered: nothing left
        assert store.call(lambda txn: txn.entries()) == []


def test_messages_go_out_in_store_order_one_at_a_time_by_default(host, conn, tmp_path):
    saf = saf_of(conn, tmp_path, forward=False)
    for i in range(20):
        saf.put(advice(i, mti="0220" if i % 2 else "0420"))
    saf.start()
    assert saf.drain(10)
    saf.close()
    assert [doc["11"] for _, doc in host.heard] == [f"{i + 1:06d}" for i in range(20)]


def test_unanswered_attempts_are_retransmitted_under_the_repeat_mti(host, conn, tmp_path):
    host.rules = [{"match": {"mti": ["0420", "0421", "0220", "0221"]}, "drop_first": 2}]
    with saf_of(conn, tmp_path, window=4) as saf:
        saf.put(advice(0, mti="0420"))
        saf.put(advice(1, mti="0220"))
        assert saf.drain(15)
    assert host.receipts("000001") == ["0420", "0421", "0421"]
    assert host.receipts("000002") == ["0220", "0221", "0221"]
    assert saf.stats.retransmissions == 4 and saf.stats.delivered == 2 and saf.stats.failures == 4


def test_the_wait_between_attempts_grows_with_backoff(host, conn, tmp_path):
    host.rules = [{"drop_first": 3}]
    with saf_of(conn, tmp_path, timeout=0.1, retry_wait=0.1, backoff=2.0, max_wait=1.0) as saf:
        saf.put(advice(0))
        assert saf.drain(15)
    times = [t for t, _ in host.heard]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # each gap is the send timeout (0.1 s) plus the wait: 0.1, 0.2, 0.4 s
    assert gaps[0] >= 0.19 and gaps[1] >= 0.29 and gaps[2] >= 0.49


def test_answers_with_codes_not_accepted_are_retried_until_max_attempts_then_dead(host, conn, tmp_path):
    host.rules = [{"code": "96"}]
    expired = []
    with saf_of(conn, tmp_path, accepted_codes={"00"}, max_attempts=3, on_expired=expired.append) as saf:
        saf.put(advice(0))
        assert saf.drain(15)
        gevent.sleep(0.05)
        dead = saf.entries(DEAD)
    assert host.receipts("000001") == ["0420", "0421", "0421"]
    assert [e.reason for e in dead] == ["no accepted answer after 3 attempts (last answer 96)"]
    assert dead[0].last_code == "96" and dead[0].attempts == 3
    assert [e.id for e in expired] == [dead[0].id] and saf.stats.expired == 1 and saf.stats.dead == 1


def test_messages_older_than_expire_after_become_dead_letters_unsent(host, conn, tmp_path):
    saf = saf_of(conn, tmp_path, expire_after=0.2, forward=False)
    saf.put(advice(0))
    gevent.sleep(0.3)
    saf.start()
    assert saf.drain(10)
    [dead] = saf.entries(DEAD)
    saf.close()
    assert dead.reason.startswith("expired after 0.2s") and dead.attempts == 0
    assert host.heard == []


def test_a_link_that_is_down_delays_forwarding_without_using_up_attempts(host, tmp_path):
    link = geviso.Connection(host.address, spec)  # never connected: NotConnected
    saf = saf_of(link, tmp_path, max_attempts=2)
    saf.put(advice(0))
    gevent.sleep(0.5)
    saf.close()  # attempts in flight finish first
    with SqliteStore(str(tmp_path / "saf.db")) as store:
        [entry] = store.call(lambda txn: txn.entries())
    assert entry.attempts == 0 and entry.state == PENDING


def test_reverse_stores_and_forwards_a_reversal_of_the_original(host, conn, tmp_path):
    original = {**advice(41, mti="0100"), "32": "412345", "35": "4111111111111111=2912101"}
    with saf_of(conn, tmp_path) as saf:
        entry = saf.reverse(original)
        assert saf.drain(10)
    [(_, received)] = host.heard
    assert received["t"] == "0400" and received["39"] == "68" and received["11"] == entry.doc["11"]
    assert received["11"] != original["11"] and "35" not in received
    assert received["90"].startswith("0100000042")


def test_put_refuses_a_message_that_cannot_be_encoded_and_stores_nothing(host, conn, tmp_path):
    with saf_of(conn, tmp_path, forward=False) as saf:
        with pytest.raises(EncodeError) as caught:
            saf.put({**advice(0), "4": "12 34"})  # field 4 is numeric
        assert "4111111111111111" not in str(caught.value)
        with pytest.raises(ConfigurationError):
            saf.put({"t": "0430", "11": "000001"})
        assert saf.entries() == []


def test_a_missing_stan_is_filled_when_stored_and_kept_for_every_attempt(host, conn, tmp_path):
    host.rules = [{"drop_first": 1}]
    doc = advice(0)
    del doc["11"]
    with saf_of(conn, tmp_path, stan=geviso.StanGenerator(start=777)) as saf:
        entry = saf.put(doc)
        assert saf.drain(10)
    assert entry.doc["11"] == "000777" and "11" not in doc
    assert host.receipts("000777") == ["0420", "0421"]


def test_a_pool_is_a_target_too(host, tmp_path):
    pool = geviso.Pool(lambda address: geviso.Connection(address, spec), [host.address]).connect()
    with saf_of(pool, tmp_path, window=8) as saf:
        for i in range(30):
            saf.put(advice(i))
        assert saf.drain(10)
    pool.close()
    assert sorted(doc["11"] for _, doc in host.heard) == [f"{i + 1:06d}" for i in range(30)]


def test_concurrent_puts_share_commits_and_each_is_stored(host, conn, tmp_path):
    saf = saf_of(conn, tmp_path, forward=False)
    started = time.monotonic()
    puts = [gevent.spawn(saf.put, advice(i)) for i in range(500)]
    gevent.joinall(puts, raise_error=True, timeout=60)
    assert time.monotonic() - started < 60
    ids = sorted(g.value.id for g in puts)
    assert len(set(ids)) == 500
    assert len(saf.entries(PENDING, limit=1000)) == 500
    saf.close()


def test_a_failing_handler_is_logged_masked_and_forwarding_goes_on(host, conn, tmp_path, caplog):
    def boom(entry, response):
        raise RuntimeError("bad " + entry.doc["2"])

    with saf_of(conn, tmp_path, on_delivered=boom) as saf:
        saf.put(advice(0))
        saf.put(advice(1))
        assert saf.drain(10)
        gevent.sleep(0.05)
    assert "4111111111111111" not in caplog.text and "411111******1111" in caplog.text
    assert saf.stats.delivered == 2


def test_stats_count_puts_attempts_deliveries_and_the_store_depth(host, conn, tmp_path):
    saf = saf_of(conn, tmp_path, forward=False)
    for i in range(3):
        saf.put(advice(i))
    stats = saf.refresh_stats()
    assert stats.depth == 3 and stats.oldest_age >= 0 and stats.puts == 3
    saf.start()
    assert saf.drain(10)
    saf.close()
    assert saf.stats.as_dict() == {
        "puts": 3, "attempts": 3, "retransmissions": 0, "failures": 0, "delivered": 3, "expired": 0,
        "depth": 0, "dead": 0, "oldest_age": 0.0, "stored_attempts": 0,
    }  # fmt: skip


def test_a_closed_store_and_forward_refuses_puts(conn, tmp_path):
    saf = saf_of(conn, tmp_path)
    saf.close()
    saf.close()
    with pytest.raises(geviso.StoreError):
        saf.put(advice(0))


def test_prometheus_exports_the_store_and_forward_stats(host, conn, tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from geviso.metrics import prometheus

    registry = CollectorRegistry()
    host.rules = [{"drop_first": 1}]
    with saf_of(conn, tmp_path) as saf:
        prometheus.register(saf, name="reversals", registry=registry)
        saf.put(advice(0))
        assert saf.drain(10)
        text = generate_latest(registry).decode()
    for line in (
        'geviso_saf_puts_total{name="reversals"} 1.0',
        'geviso_saf_attempts_total{name="reversals"} 2.0',
        'geviso_saf_retransmissions_total{name="reversals"} 1.0',
        'geviso_saf_delivered_total{name="reversals"} 1.0',
        'geviso_saf_depth{name="reversals"} 0.0',
        'geviso_saf_dead{name="reversals"} 0.0',
        'geviso_saf_oldest_age_seconds{name="reversals"} 0.0',
    ):
        assert line in text


@pytest.mark.parametrize(
    "rule, problem",
    [
        ({"drop_first": -1}, "whole number"),
        ({"drop_first": True}, "whole number"),
        ({"action": "drop", "drop_first": 1}, "sends no answer"),
    ],
)
def test_a_bad_drop_first_rule_is_refused_naming_the_key(rule, problem):
    from geviso.mock import rules

    with pytest.raises(ConfigurationError, match=f"key 'drop_first': .*{problem}"):
        rules.parse([rule])
    assert rules.parse([{"drop_first": 3}]).rules[0].drop_first == 3


class _SlowStore(SqliteStore):
    """A store whose every commit blocks its thread for 0.6 s, as a slow disk would."""

    def run(self, ops):
        time.sleep(0.6)
        return super().run(ops)


def test_a_slow_store_never_stalls_the_hub(host, conn, tmp_path):
    store = _SlowStore(str(tmp_path / "slow.db"))
    gaps: list[float] = []

    def ticker() -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = gevent.spawn(ticker)
    with saf_of(conn, tmp_path, store=store, window=32) as saf:
        puts = [gevent.spawn(saf.put, advice(i)) for i in range(10)]
        answers = [conn.send({"t": "0800", "70": "301"}, timeout=5) for _ in range(20)]  # the link stays served
        gevent.joinall(puts, raise_error=True, timeout=30)
        assert saf.drain(30)
    ticking.kill()
    assert all(a["39"] == "00" for a in answers)
    assert len(gaps) > 50 and max(gaps) < 0.5  # each commit blocked 0.6 s, but not the hub


def test_puts_racing_close_either_are_stored_or_raise_never_hang(conn, tmp_path):
    saf = saf_of(conn, tmp_path, forward=False)
    puts = [gevent.spawn_later(i * 0.002, saf.put, advice(i)) for i in range(200)]
    gevent.sleep(0.01)
    saf.close()
    gevent.joinall(puts, timeout=30)
    assert all(p.ready() for p in puts)
    stored = [p.value.id for p in puts if p.successful()]
    assert all(isinstance(p.exception, geviso.StoreError) for p in puts if not p.successful())
    assert 0 < len(stored) < 200
    with SqliteStore(str(tmp_path / "saf.db")) as store:
        assert sorted(e.id for e in store.call(lambda txn: txn.entries(limit=1000))) == sorted(stored)


def test_entries_and_the_greenlets_geviso_spawns_with_a_message_never_show_its_pan(capfd):
    entry = geviso.saf.Entry(id=7, doc=advice(0))
    assert "4111111111111111" not in repr(entry) and "411111******1111" in repr(entry)

    def fails(doc):
        raise RuntimeError("a bug")

    from geviso import greenlets

    failing = greenlets.spawn(fails, advice(0))
    assert repr(failing).endswith(".fails>") and "4111" not in repr(failing)
    failing.join()
    printed = capfd.readouterr().err
    assert "fails> failed with RuntimeError" in printed and "4111" not in printed  # the failure, not the message


def test_the_mock_hosts_delayed_answers_never_show_the_message_in_their_repr(host, conn):
    host.rules = [{"delay_ms": 2000}]
    sending = gevent.spawn(conn.send, advice(0), timeout=0.5)
    deadline = time.monotonic() + 10
    while not host._delayed and time.monotonic() < deadline:
        gevent.sleep(0.01)
    shown = [repr(greenlet) for greenlet in host._delayed]
    assert shown and not any("4111" in text for text in shown), shown
    sending.kill()


def test_close_returns_after_on_delivered_ran_for_every_answer_it_waited_for(host, conn, tmp_path):
    host.rules = [{"delay_ms": 100}]
    delivered = []
    saf = saf_of(conn, tmp_path, window=8, on_delivered=lambda entry, response: delivered.append(entry.doc["11"]))
    for i in range(8):
        saf.put(advice(i))
    deadline = time.monotonic() + 10
    while len(host.heard) < 8 and time.monotonic() < deadline:  # all sent, no answer yet
        gevent.sleep(0.01)
    saf.close()  # waits for the answers, records them, runs on_delivered
    assert sorted(delivered) == [f"{i + 1:06d}" for i in range(8)]
