"""Request bookkeeping on a live link: STANs handed out, keys refused, bad messages
refused, timeouts at their own deadline whatever the interleaving."""

from __future__ import annotations

import socket
import time

import gevent
import gevent.event
import pytest
from conftest import respond, wait_until

import geviso
from geviso import keys
from geviso.stan import StanGenerator

PAN = "4111111111111111"


def test_a_timed_out_stan_is_not_handed_out_again_while_its_late_answer_may_come(echo_host, held, links):
    """After the counter wraps, the late answer to a timed-out request must not resolve
    the new request that would otherwise get the same STAN."""
    conn = links(echo_host.address, stan=StanGenerator(start=999_999))
    with pytest.raises(geviso.SendTimeout):
        conn.send({"t": "0200", "4": "000000000100"}, timeout=0.1)
    assert held.items[0][1]["11"] == "999999"
    conn.stan = StanGenerator(start=999_999)  # the counter has come round again
    second = gevent.spawn(conn.send, {"t": "0200", "4": "000000000200"})
    assert wait_until(lambda: len(held.items) == 2)
    assert held.items[1][1]["11"] == "000001"  # 999999 skipped: its answer may still come
    held.release()  # the late answer to the first, then the second's own
    assert second.get(timeout=5)["4"] == "000000000200"
    assert wait_until(lambda: conn.stats.late == 1)


def test_a_late_answer_frees_its_stan_again(echo_host, held, links):
    conn = links(echo_host.address, stan=StanGenerator(start=7))
    with pytest.raises(geviso.SendTimeout):
        conn.send({"t": "0800", "70": "301"}, timeout=0.05)
    held.release()
    assert wait_until(lambda: conn.stats.late == 1)
    echo_host.answer = lambda c, d: c.reply(respond(d))
    conn.stan = StanGenerator(start=7)
    assert conn.send({"t": "0800", "70": "301"})["11"] == "000007"


def test_timed_out_keys_remembered_are_bounded(echo_host, held, links):
    conn = links(echo_host.address)
    for key in range(geviso.connection.LATE_KEYS_KEPT + 10):
        conn._remember_timeout(key)
    assert len(conn._timed_out) == geviso.connection.LATE_KEYS_KEPT


def test_duplicate_key_without_stan_in_the_key_is_refused_taking_at_most_one_stan(echo_host, held, links):
    stan = StanGenerator(start=500)
    conn = links(echo_host.address, key=keys.fields("41"), stan=stan)
    first = gevent.spawn(conn.send, {"t": "0200", "41": "TERM0001"})
    assert wait_until(lambda: len(held.items) == 1)
    before = int(stan.peek())
    with pytest.raises(geviso.DuplicateKey):
        conn.send({"t": "0200", "41": "TERM0001"})
    assert int(stan.peek()) - before <= 1
    assert len(held.items) == 1  # nothing written
    held.release()
    assert first.get(timeout=5)["41"] == "TERM0001"


BAD_MESSAGES = [
    ({"t": 200}, "field t", "str"),
    ({"t": None}, "field t", "str"),
    ({"t": ["0200"]}, "field t", "str"),
    ({"t": "01²0"}, "field t", "ascii"),
    (None, "mapping", "NoneType"),
    ({"t": "0200", "4": 100}, "field 4", "exactly 12"),
    ({"t": "0200", "4": "1" * 13}, "field 4", "exactly 12"),
    ({"t": "0200", "2": PAN + "12345"}, "field 2", "at most 19"),
    ({"t": "0200", "2": PAN[:8] + "é" + PAN[9:]}, "field 2", "ascii"),
    ({"t": "0200", "zz": "1"}, "field zz", "not in the spec"),
    ({"t": "0200", "200": "1"}, "field 200", "not in the spec"),
    ({"t": "0200", 4: "000000000100"}, "field names are str", "int"),
    ({"t": "0200", "4 ": "000000000100"}, "field 4 ", "not in the spec"),
]


@pytest.mark.parametrize(("doc", "where", "expected"), BAD_MESSAGES, ids=[repr(m[0])[:40] for m in BAD_MESSAGES])
def test_a_bad_message_is_an_encode_error_naming_the_field_and_what_was_expected(
    echo_host, links, doc, where, expected
):
    conn = links(echo_host.address)
    with pytest.raises(geviso.EncodeError) as info:
        conn.send(doc)
    text = str(info.value)
    assert isinstance(info.value, geviso.GevisoError)
    assert where in text and expected in text, text
    assert PAN[:8] not in text and "01²0" not in text and "1" * 13 not in text
    assert "\n" not in text
    assert conn.in_flight == 0 and conn.state == "open"
    assert conn.send({"t": "0800", "70": "301"})["t"] == "0810"  # the link is unharmed


def test_encode_error_keeps_pyiso8583s_cause_but_not_its_words_with_values(echo_host, links):
    import iso8583

    conn = links(echo_host.address)
    with pytest.raises(geviso.EncodeError) as info:
        conn.send({"t": "0200", "2": PAN * 2})
    assert PAN not in str(info.value) and PAN not in repr(info.value)
    assert isinstance(info.value.__cause__, iso8583.EncodeError)


def test_a_short_timeout_filed_while_a_long_one_waits_for_room_fires_at_its_own_deadline(raw_peer, links):
    """A send with a long timeout waits for room in a full write buffer; when room comes,
    a send with a short timeout gets in before the long one wakes: it still times out at
    its own deadline, not at the long one's."""
    reading = gevent.event.Event()

    def reader(sock):
        reading.wait()
        while True:
            try:
                if not sock.recv(65536):
                    return
            except OSError:
                return

    peer = raw_peer(reader)
    peer.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited on accept
    conn = links(peer.address, max_write_buffer=4096)
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.write(bytes(1 << 16))  # zero-length frames: the writer blocks in sendall...
    gevent.sleep(0.05)
    conn.write(bytes(4096))  # ...and these fill the write buffer
    long_one = gevent.spawn(conn.send, {"t": "0800", "11": "000001", "70": "301"}, timeout=5.0)
    gevent.sleep(0.05)
    assert not long_one.ready()
    reading.set()
    with gevent.Timeout(10):
        while conn._outbox_bytes >= conn.max_write_buffer:  # the writer has not taken it yet
            gevent.sleep(0)  # a callback queued before the one waking the long send
    started = time.monotonic()
    with pytest.raises(geviso.SendTimeout):
        conn.send({"t": "0800", "11": "000002", "70": "301"}, timeout=0.2)
    took = time.monotonic() - started
    assert 0.2 <= took < 2.5, took
    long_one.kill()
