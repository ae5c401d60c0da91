"""Captures: the format (masked by default, versioned), recording through a proxying
mock host, playing a capture back, and replaying it as load, all on loopback."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from iso8583.specs import default as spec

import geviso
from geviso import capture
from geviso.capture import refresh, replay
from geviso.errors import CaptureError, ConfigurationError
from geviso.mock import playback, proxy

PAN = "4111111111111111"
DECLINED_PAN = "4000000000000051"
TRACK2 = PAN + "=28122011234567890"
RULES = [
    {"name": "declined card", "match": {"pan_prefix": "4000000000000051"}, "code": "51"},
    {"name": "big amounts", "match": {"mti": ["0100", "0200"], "amount_above": 100000}, "code": "05"},
    {"name": "never answered", "match": {"pan_prefix": "4000000000000000"}, "action": "drop"},
]


def traffic() -> list[dict[str, str]]:
    """Requests of several kinds: approved, declined, over the limit, reversal, echo."""
    docs = []
    for i in range(12):
        pan = DECLINED_PAN if i % 4 == 1 else PAN
        amount = "000000500000" if i % 4 == 2 else "%012d" % (1000 + i)
        docs.append({
            "t": "0200" if i % 2 else "0100", "2": pan, "3": "000000", "4": amount, "7": "1207023000",
            "12": "023000", "13": "1207", "35": TRACK2, "37": "%012d" % (700 + i), "41": "TERM%04d" % (i % 3),
            "52": "0123456789ABCDEF",
        })
    docs.append({"t": "0400", "2": PAN, "3": "000000", "4": "000000001003", "37": "%012d" % 703,
                 "41": "TERM0000", "90": "0200000004" + "1207023000" + "0" * 22})
    docs.append({"t": "0800", "7": "1207023000", "70": "301"})
    return docs


def started(host: geviso.MockHost) -> geviso.MockHost:
    host.start()
    return host


@pytest.fixture
def hosts() -> Any:
    made: list[geviso.MockHost] = []

    def make(**options: Any) -> geviso.MockHost:
        host = started(geviso.MockHost(("127.0.0.1", 0), spec, **options))
        made.append(host)
        return host

    yield make
    for host in made:
        host.stop(timeout=1)


def address(host: geviso.MockHost) -> tuple[str, int]:
    return ("127.0.0.1", int(host.server_port))


def record(hosts: Any, path: Path, **options: Any) -> list[dict[str, str]]:
    """Send :func:`traffic` through a recording proxy in front of a rules host; the answers."""
    real = hosts(rules=RULES)
    proxy = hosts(proxy_to=address(real), record=str(path), **options)
    answers = []
    with geviso.Connection(address(proxy), spec, send_timeout=5) as conn:
        for doc in traffic():
            answers.append(conn.send(doc))
    proxy.stop(timeout=2)
    return answers


# -- the format ------------------------------------------------------------------------------
def test_a_capture_round_trips_through_its_file(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    exchange = capture.Exchange(time=1.5, request={"t": "0800", "11": "000001", "70": "301"},
                                answer={"t": "0810", "11": "000001", "39": "00", "70": "301"}, latency_ms=0.25,
                                link="127.0.0.1:4000", framing="binary2")
    with capture.CaptureWriter(path, capture.Header()) as writer:
        writer.write(exchange)
        writer.write(capture.Exchange(time=2.0, request={"t": "0800", "11": "000002"}, error="SendTimeout"))
    header, exchanges = capture.read(path)
    assert header.version == capture.VERSION and header.masked and header.framing == "binary2"
    assert json.loads(path.read_text().splitlines()[0])["format"] == "geviso-capture"
    first, second = exchanges
    assert first.request == exchange.request and first.answer == exchange.answer and first.latency_ms == 0.25
    assert bytes.fromhex(first.request_hex or "") == geviso.codec.codec_for(spec).encode(exchange.request)
    assert second.answer is None and second.latency_ms is None and second.error == "SendTimeout"
    assert capture.validate(path) == (header, 2)


def test_card_data_is_masked_by_default_and_the_masked_frames_still_decode(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    doc = {"t": "0200", "2": PAN, "35": TRACK2, "52": "0123456789ABCDEF", "11": "000001"}
    with capture.CaptureWriter(path, capture.Header()) as writer:
        writer.write(capture.Exchange(time=1.0, request=doc))
    text = path.read_text()
    assert PAN not in text and "0123456789ABCDEF" not in text and "=2812" not in text
    assert PAN.encode().hex() not in text
    _, (exchange,) = capture.read(path)
    assert exchange.request["2"] == "411111******1111"
    assert exchange.request["35"] == "*" * len(TRACK2) and exchange.request["52"] == "0" * 16
    decoded = geviso.codec.codec_for(spec).decode(bytes.fromhex(exchange.request_hex or ""))
    assert capture.fields_of(decoded) == exchange.request


def test_card_data_only_when_asked_then_the_file_is_private_and_a_warning_is_logged(
    tmp_path: Path, caplog: Any
) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text("old")
    os.chmod(path, 0o644)
    with pytest.raises(CaptureError, match="record_card_data"):
        capture.CaptureWriter(path, capture.Header(masked=False))
    caplog.set_level(logging.WARNING, logger="geviso")
    with capture.CaptureWriter(path, capture.Header(), record_card_data=True) as writer:
        writer.write(capture.Exchange(time=1.0, request={"t": "0200", "2": PAN}))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "card data" in caplog.text
    header, (exchange,) = capture.read(path)
    assert not header.masked and exchange.request["2"] == PAN


@pytest.mark.parametrize(
    ("first_line", "message"),
    [
        ('{"format": "geviso-capture", "version": 2}', "version 2 capture; this geviso reads versions up to 1"),
        ('{"format": "geviso-capture", "version": "one"}', "not a positive whole number"),
        ('{"format": "something-else", "version": 1}', "not a geviso capture"),
        ("not json at all", "not a geviso capture"),
        ("", "not a geviso capture"),
    ],
)
def test_an_unknown_or_foreign_header_is_a_clear_error(tmp_path: Path, first_line: str, message: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(first_line + "\n")
    with pytest.raises(CaptureError, match=message):
        capture.read(path)


def test_a_bad_line_is_named_by_its_number(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    good = json.dumps({"time": 1, "request": {"fields": {"t": "0800"}}, "answer": None})
    path.write_text(json.dumps(capture.Header().as_dict()) + "\n" + good + "\n" + '{"time": "x"}\n')
    with pytest.raises(CaptureError, match=r"line 3: time is not a number"):
        capture.read(path)
    path.write_bytes(path.read_bytes().replace(b'{"time": "x"}', b"\xff\xfe"))
    with pytest.raises(CaptureError, match="line 3"):
        capture.read(path)
    with pytest.raises(CaptureError, match="cannot read it"):
        capture.read(tmp_path / "missing.jsonl")


# -- record, play back, replay ------------------------------------------------------------------
def test_record_play_back_and_replay_with_zero_differences(hosts: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    answers = record(hosts, path)
    assert [a["39"] for a in answers[:4]] == ["00", "51", "05", "00"]
    header, exchanges = capture.read(path)
    assert header.masked and header.spec == "default" and len(exchanges) == len(traffic())
    assert PAN not in path.read_text() and DECLINED_PAN not in path.read_text()
    assert all(ex.latency_ms is not None and ex.latency_ms >= 0 for ex in exchanges)
    assert {ex.link for ex in exchanges} == {exchanges[0].link}

    # Playback answers as recorded; a request with no recording falls through to the rules.
    played = hosts(playback=str(path), match=["2", "3", "4", "41"], response_code="96")
    with geviso.Connection(address(played), spec, send_timeout=5) as conn:
        for i, (doc, answer) in enumerate(zip(traffic(), answers)):
            fresh = dict(doc, **{"11": "%06d" % (500 + i), "7": "1208101010"})
            got = conn.send(fresh)
            assert got["39"] == answer["39"] and got["t"] == answer["t"]
            assert got["11"] == fresh["11"] and got["7"] == "1208101010"  # the request's STAN and date echoed
        other = conn.send({"t": "0200", "2": "5555555555554444", "3": "000000", "4": "000000000100"})
        assert other["39"] == "96"  # no recording: the rules (here the default code) answer
    assert played.front is not None and played.front.playback.misses == 1  # type: ignore[attr-defined]

    # Replaying the capture against the playback host: the same answers.
    result = replay.Replayer(address(played), spec, speed=None, concurrency=4, compare=["38"]).run(exchanges)
    assert result.failed == 0 and result.sent == len(exchanges)
    assert result.diff.differ == 0 and result.diff.same == len(exchanges), result.diff.lines()


def test_replay_against_another_host_reports_the_differences_masked(hosts: Any, tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    record(hosts, path, record_card_data=True)
    _, exchanges = capture.read(path)
    assert exchanges[0].request["2"] == PAN  # card data kept, as asked
    other = hosts(response_code="00")  # no rules: approves everything
    result = replay.Replayer(address(other), spec, speed=None, concurrency=2, timeout=5).run(exchanges)
    assert result.failed == 0
    assert result.diff.code == 6  # 3 declined and 3 over-the-limit were recorded, all approved now
    text = "\n".join(result.diff.lines())
    assert "39 recorded 51 got 00" in text and "39 recorded 05 got 00" in text
    assert PAN not in text and DECLINED_PAN not in text and "400000******0051" in text


def test_replayed_requests_get_fresh_stans_rrns_and_dates(hosts: Any) -> None:
    seen: list[dict[str, str]] = []

    class Spy(proxy.Front):
        def answer(self, conn: geviso.Connection, doc: dict[str, str]) -> bool:
            seen.append(dict(doc))
            return False  # the rules answer

    host = hosts(front=Spy())
    recorded_at = 1796610000.0  # 2026-12-07 02:20:00 UTC
    sale = {"t": "0200", "2": PAN, "7": "1207022000", "11": "000042", "12": "212000", "13": "1206",
            "37": "634100000042", "4": "000000001000"}
    reversal = {"t": "0400", "2": PAN, "11": "000043", "37": "634100000042",
                "90": "0200000042" + "1207022000" + "0" * 22}
    exchanges = [capture.Exchange(time=recorded_at, request=sale), capture.Exchange(time=recorded_at + 1,
                                                                                    request=reversal)]
    replay.Replayer(address(host), spec, speed=None, concurrency=1).run(exchanges)
    sent_sale, sent_reversal = seen
    assert sent_sale["11"] != "000042" and sent_reversal["11"] != sent_sale["11"]
    assert sent_sale["37"] != "634100000042" and sent_reversal["37"] == sent_sale["37"]
    assert sent_sale["7"] != "1207022000" and sent_sale["13"] + sent_sale["12"] != "1206212000"
    assert sent_reversal["90"][4:10] == sent_sale["11"] and sent_reversal["90"][10:20] == sent_sale["7"]


def test_shifting_dates_keeps_the_terminals_offset_and_leaves_non_dates_alone() -> None:
    doc = {"7": "1231235959", "12": "185959", "13": "1231"}
    refresh.shift_dates(doc, 2, 1798761599.0)  # 2026-12-31 23:59:59 UTC
    assert doc == {"7": "0101000001", "12": "190001", "13": "1231"}
    odd = {"7": "1331999999", "12": "ab", "13": "0230"}
    refresh.shift_dates(odd, 60, 1798761599.0)
    assert odd == {"7": "1331999999", "12": "ab", "13": "0230"}


def test_paced_replay_keeps_the_recorded_gaps(hosts: Any) -> None:
    host = hosts()
    exchanges = [capture.Exchange(time=100.0 + 0.2 * i, request={"t": "0800", "11": "%06d" % i, "70": "301"},
                                  answer={"t": "0810", "39": "00"}) for i in range(4)]
    slow = replay.Replayer(address(host), spec, speed=1.0).run(exchanges)
    fast = replay.Replayer(address(host), spec, speed=4.0).run(exchanges)
    assert slow.diff.differ == 0 and fast.diff.differ == 0
    assert 0.55 <= slow.seconds < 5.0  # 0.6 s of recorded gaps; generous above
    assert fast.seconds < slow.seconds


def test_split_keeps_each_recorded_link_in_one_share() -> None:
    exchanges = [capture.Exchange(time=float(i), request={"t": "0800"}, link=f"l{i % 3}") for i in range(9)]
    shares = replay.split(exchanges, 2)
    assert sorted(len(s) for s in shares) == [3, 6]
    assert all(len({ex.link for ex in share}) == len({ex.link for ex in share}) for share in shares)
    assert {ex.link for ex in shares[0]}.isdisjoint({ex.link for ex in shares[1]})
    assert [len(s) for s in replay.split(exchanges[:2], 4)] == [1, 1, 0, 0]


def test_playback_latency_and_unanswered_recordings(hosts: Any) -> None:
    header = capture.Header()
    recorded = [
        capture.Exchange(time=1.0, request={"t": "0100", "2": "411111******1111", "4": "000000000100"},
                         answer={"t": "0110", "39": "00", "7": "0101000000"}, latency_ms=300.0),
        capture.Exchange(time=2.0, request={"t": "0100", "2": "411111******1111", "4": "000000000200"}),
    ]
    host = hosts(playback=playback.Playback((header, recorded), match=["2", "4"]), playback_latency=True)
    with geviso.Connection(address(host), spec, send_timeout=5) as conn:
        import time

        began = time.monotonic()
        answer = conn.send({"t": "0100", "2": PAN, "4": "000000000100", "11": "000007"})
        assert time.monotonic() - began >= 0.25
        assert answer["39"] == "00" and answer["2"] == PAN and answer["11"] == "000007"
        assert answer["7"] != "0101000000"  # a fresh field 7: the request had none
        with pytest.raises(geviso.SendTimeout):
            conn.send({"t": "0100", "2": PAN, "4": "000000000200"}, timeout=0.3)
    assert host.stats.dropped == 1


def test_bad_keywords_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="proxy_to"):
        geviso.MockHost(("127.0.0.1", 0), spec, record=str(tmp_path / "c.jsonl"))
    with pytest.raises(ConfigurationError, match="not both"):
        geviso.MockHost(("127.0.0.1", 0), spec, proxy_to="127.0.0.1:1", playback=str(tmp_path / "c.jsonl"))
    with pytest.raises(ConfigurationError, match="field numbers"):
        playback.parse_match("2,pan")
    with pytest.raises(ConfigurationError, match="speed"):
        replay.parse_speed("fast")
    assert replay.parse_speed("MAX") is None and replay.parse_speed("2") == 2.0
