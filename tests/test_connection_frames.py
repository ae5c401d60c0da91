"""What arrives on a link: every framing end to end, keep-alives, TPDU, bad frames and headers."""

from __future__ import annotations

import logging

import gevent
import gevent.socket
import iso8583
import iso8583.specs
import pytest
from conftest import EchoHost, wait_until

import geviso
from geviso import framing

PAN = "4111111111111111"
ECHO = {"t": "0800", "70": "301"}
#: A framed-looking message carrying a PAN, whose field 3 is cut short: it cannot decode.
UNDECODABLE = b"0110" + bytes.fromhex("6000000000000000") + b"16" + PAN.encode() + b"12"


@pytest.fixture
def host_with():
    hosts = []

    def start(**options):
        host = EchoHost(**options)
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.stop()


@pytest.mark.parametrize("name", sorted(framing.BY_NAME))
def test_every_framing_carries_concurrent_sends(name, host_with, links):
    host = host_with(framing=framing.by_name(name))
    conn = links(host.address, framing=framing.by_name(name))
    jobs = [gevent.spawn(conn.send, {"t": "0200", "4": "%012d" % i}) for i in range(200)]
    gevent.joinall(jobs, raise_error=True)
    assert [j.value["4"] for j in jobs] == ["%012d" % i for i in range(200)]


def test_include_header_framing_end_to_end(host_with, links):
    host = host_with(framing=framing.ascii(4, include_header=True))
    conn = links(host.address, framing=framing.ascii(4, include_header=True))
    assert conn.send(ECHO)["t"] == "0810"


def test_tpdu_is_swapped_on_the_reply(host_with, links):
    ours = b"\x60\x00\x01\x00\x02"
    host = host_with(framing=framing.binary(2, tpdu=b"\x60\x00\x00\x00\x00"))
    conn = links(host.address, framing=framing.binary(2, tpdu=ours))
    assert conn.send(ECHO)["t"] == "0810"
    assert host.links[0]._decoder.last_tpdu == ours
    assert conn._decoder.last_tpdu == b"\x60\x00\x02\x00\x01"  # destination and source exchanged


def test_keepalives_are_counted_and_never_reach_the_codec(echo_host, links):
    reported = []
    conn = links(echo_host.address, on_error=reported.append)
    conn.send(ECHO)
    host_link = echo_host.links[0]
    for _ in range(5):
        host_link.write(host_link.framing.keepalive())
    assert conn.send(ECHO)["t"] == "0810"
    assert wait_until(lambda: conn.stats.keepalives == 5)
    assert conn.stats.errors == 0 and reported == []


def test_vmlh_session_control_frames_on_a_link(host_with, links):
    host = host_with(framing=framing.vmlh())
    reported = []
    conn = links(host.address, framing=framing.vmlh(), on_error=reported.append)
    conn.send(ECHO)
    host.links[0].write(b"\x00\x00\x00\x20")  # keep-alive
    host.links[0].write(b"\x00\x02\x00\x20ok")  # session control with a body
    assert conn.send(ECHO)["t"] == "0810"
    assert wait_until(lambda: conn.stats.keepalives == 2)
    assert reported == [] and conn.state == "open"


def test_undecodable_frame_reports_a_safe_error_and_reading_goes_on(echo_host, links, caplog):
    def answer(conn, doc):
        conn.write(conn.framing.encode(UNDECODABLE))
        conn.reply(dict(doc, t="0810", **{"39": "00"}))

    echo_host.answer = answer
    reported = []
    conn = links(echo_host.address, on_error=reported.append)
    with caplog.at_level(logging.DEBUG, logger="geviso"):
        response = conn.send(ECHO)
    assert response["t"] == "0810"  # the frame after the bad one still arrived
    assert wait_until(lambda: reported)
    err = reported[0]
    assert isinstance(err, geviso.DecodeError) and isinstance(err, geviso.SafeError)
    assert PAN not in str(err) and PAN not in repr(err) and "field 3" in str(err)
    assert isinstance(err.__cause__, iso8583.DecodeError)
    assert conn.state == "open" and conn.stats.errors == 1
    assert PAN not in caplog.text


def test_undecodable_frame_without_on_error_is_logged_safely(echo_host, links, caplog):
    def answer(conn, doc):
        conn.write(conn.framing.encode(UNDECODABLE))
        conn.reply(dict(doc, t="0810"))

    echo_host.answer = answer
    conn = links(echo_host.address)
    with caplog.at_level(logging.DEBUG, logger="geviso"):
        conn.send(ECHO)
        assert wait_until(lambda: "cannot decode" in caplog.text)
    assert PAN not in caplog.text


def test_messages_with_a_pan_never_reach_the_debug_log_in_full(echo_host, links, caplog):
    conn = links(echo_host.address)
    with caplog.at_level(logging.DEBUG, logger="geviso"):
        conn.send({"t": "0200", "2": PAN, "35": PAN + "=2512", "4": "000000000100"})
        conn.close()
    assert "411111******1111" in caplog.text  # the debug log does describe the message
    assert PAN not in caplog.text


def _fails_the_link(peer_bytes, raw_peer, links, **options):
    """A peer answers any request with ``peer_bytes``: the link must fail, fast, with
    a FramingError reported to on_error and on_failed, and the pending send closed."""
    def handle(sock):
        sock.recv(65536)
        sock.sendall(peer_bytes)
        gevent.sleep(10)

    peer = raw_peer(handle)
    reported, failed = [], []
    conn = links(peer.address, send_timeout=30, on_error=reported.append,
                 on_failed=lambda c, e: failed.append(e), **options)
    with gevent.Timeout(5):
        with pytest.raises(geviso.ConnectionClosed) as info:
            conn.send(ECHO)
    assert isinstance(info.value.__cause__, geviso.FramingError)
    assert wait_until(lambda: reported and failed)
    assert isinstance(reported[0], geviso.FramingError)
    assert isinstance(failed[0], geviso.FramingError) and isinstance(conn.failure, geviso.FramingError)
    assert conn.state == "closed"
    return reported[0]


def test_oversized_length_header_fails_the_link(raw_peer, links):
    err = _fails_the_link(b"\x7f\xff\xff\xff", raw_peer, links, framing=framing.binary(4))
    assert "outside" in str(err)


def test_garbage_length_header_fails_the_link(raw_peer, links):
    err = _fails_the_link(b"GET / HTTP/1.1\r\n", raw_peer, links, framing=framing.ascii(4))
    assert "not decimal" in str(err)


def test_frames_before_a_bad_header_in_one_chunk_are_still_delivered(raw_peer, links):
    """A response and then garbage in the same segment: the response is matched first."""

    def handle(sock):
        data = sock.recv(65536)
        codec = geviso.codec.codec_for(conn.spec)
        request = codec.decode(data[4:])
        answer = codec.encode({"t": "0810", "11": request["11"], "70": "301"})
        sock.sendall(framing.ascii(4).encode(answer) + b"zzzz")
        gevent.sleep(10)

    peer = raw_peer(handle)
    conn = links(peer.address, framing=framing.ascii(4), on_error=lambda e: None)
    assert conn.send(ECHO)["t"] == "0810"
    assert wait_until(lambda: conn.state == "closed")
    assert isinstance(conn.failure, geviso.FramingError)


def test_each_reply_carries_the_tpdu_of_the_request_it_answers(raw_peer, links):
    """Two terminals' requests with different TPDUs in one segment, answered in reverse
    order and late: each answer goes back with its own request's TPDU, swapped."""
    tpdus = [b"\x60\x00\x11\x00\x01", b"\x60\x00\x22\x00\x01"]
    fr = framing.binary(2, tpdu=b"\x60\x00\x01\x00\x00")
    codec = geviso.codec.codec_for(iso8583.specs.default)
    received = []

    def handle(sock):
        sock.sendall(_two_terminals_one_segment(fr, codec, tpdus))
        decoder = fr.decoder(keep_tpdu=True)
        while len(received) < 2:
            data = sock.recv(65536)
            if not data:
                return
            received.extend(decoder.feed(data))
        gevent.sleep(10)

    held = []
    peer = raw_peer(handle)
    links(peer.address, framing=fr, on_inbound=lambda c, d: held.append((c, d)))
    assert wait_until(lambda: len(held) == 2)
    assert [d.tpdu for _, d in held] == tpdus  # each message carries its own TPDU
    gevent.sleep(0.05)
    for conn, doc in reversed(held):  # out of order, after both arrived
        conn.reply({"t": "0210", "11": doc["11"], "41": doc["41"], "39": "00"}, to=doc)
    assert wait_until(lambda: len(received) == 2)
    by_terminal = {codec.decode(r[5:])["41"]: r[:5] for r in received}
    assert by_terminal == {"TERM000%d" % i: framing.Framing.swap_tpdu(t) for i, t in enumerate(tpdus)}


def _two_terminals_one_segment(fr, codec, tpdus):
    return b"".join(
        fr.encode(codec.encode({"t": "0200", "11": "%06d" % (i + 1), "41": "TERM000%d" % i}), tpdu=tpdu)
        for i, tpdu in enumerate(tpdus)
    )


def test_the_mock_host_answers_each_terminal_with_its_own_tpdu():
    """One link, two terminals' requests in one segment; the first one's answer is
    delayed past the second's: each still carries its own request's TPDU."""
    fr = framing.binary(2, tpdu=b"\x60\x00\x00\x00\x00")
    codec = geviso.codec.codec_for(iso8583.specs.default)
    tpdus = [b"\x60\x00\x11\x00\x01", b"\x60\x00\x22\x00\x01"]
    rules = [{"match": {"fields": {"41": "TERM0000"}}, "delay_ms": 100}]
    host = geviso.MockHost(("127.0.0.1", 0), framing=fr, rules=rules)
    host.start()
    try:
        with gevent.Timeout(10):
            sock = gevent.socket.create_connection(host.address)
            sock.sendall(_two_terminals_one_segment(fr, codec, tpdus))
            decoder, answers = fr.decoder(keep_tpdu=True), []
            while len(answers) < 2:
                answers.extend(decoder.feed(sock.recv(65536)))
            sock.close()
    finally:
        host.stop(timeout=2)
    by_terminal = {codec.decode(a[5:])["41"]: a[:5] for a in answers}
    assert codec.decode(answers[0][5:])["41"] == "TERM0001"  # the delayed one came second
    assert by_terminal == {"TERM000%d" % i: framing.Framing.swap_tpdu(t) for i, t in enumerate(tpdus)}


def test_a_flood_of_bad_frames_gives_a_counted_summary_not_a_log_line_each(raw_peer, links, caplog):
    """Undecodable frames and stray responses whose STAN forges a log line: counted in
    stats, at most one WARNING line for the lot, and no peer value unescaped."""
    codec = geviso.codec.codec_for(iso8583.specs.default)
    stray = framing.binary(2).encode(codec.encode({"t": "0110", "11": "\nFAKE:", "39": "00"}))
    bad = framing.binary(2).encode(UNDECODABLE)

    def handle(sock):
        sock.sendall((stray + bad) * 1000)
        gevent.sleep(10)

    peer = raw_peer(handle)
    with caplog.at_level(logging.INFO, logger="geviso"):
        conn = links(peer.address)
        assert wait_until(lambda: conn.stats.errors == 1000 and conn.stats.unmatched == 1000, timeout=20)
        conn.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 3, [r.getMessage() for r in warnings]
    assert any("1999" in r.getMessage() or "more errors" in r.getMessage() for r in warnings)
    for record in caplog.records:
        assert "\n" not in record.getMessage()
    assert PAN not in caplog.text
