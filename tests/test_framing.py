"""geviso.framing: pure length-prefix framing, bytes in and frames out (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geviso import framing
from geviso.errors import ConfigurationError, FramingError

PAYLOADS = [b"x", b"0800" + b"\x00" * 8 + b"hello", bytes(range(256)) * 3]

#: name -> (factory, header of a 115-byte body)
HEADERS = {
    "binary2": (lambda: framing.binary(2), b"\x00\x73"),
    "binary4": (lambda: framing.binary(4), b"\x00\x00\x00\x73"),
    "ascii4": (lambda: framing.ascii(4), b"0115"),
    "ascii6": (lambda: framing.ascii(6), b"000115"),
    "bcd2": (lambda: framing.bcd(2), b"\x01\x15"),
    "hex4": (lambda: framing.hex(4), b"0073"),
    "vmlh": (framing.vmlh, b"\x00\x73\x00\x00"),
}


@pytest.mark.parametrize("name", list(HEADERS))
def test_header_bytes_match_the_wire_format(name):
    make, header = HEADERS[name]
    assert make().encode(b"a" * 115) == header + b"a" * 115


@pytest.mark.parametrize("name", list(HEADERS))
@pytest.mark.parametrize("payload", PAYLOADS, ids=["1B", "17B", "768B"])
def test_round_trip(name, payload):
    f = HEADERS[name][0]()
    assert f.decoder().feed(f.encode(payload)) == [payload]


@pytest.mark.parametrize("name", list(HEADERS))
def test_one_byte_at_a_time(name):
    f = HEADERS[name][0]()
    wire = b"".join(f.encode(p) for p in PAYLOADS)
    decoder = f.decoder()
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == PAYLOADS
    assert decoder.buffered == 0


@pytest.mark.parametrize("name", list(HEADERS))
def test_many_frames_in_one_chunk_and_a_partial_tail(name):
    f = HEADERS[name][0]()
    frames = [b"%05d" % i for i in range(500)]
    wire = b"".join(f.encode(p) for p in frames)
    decoder = f.decoder()
    tail = f.encode(b"the next one")
    assert decoder.feed(wire + tail[:3]) == frames
    assert decoder.buffered == 3
    assert decoder.feed(tail[3:]) == [b"the next one"]


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=300), max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=30),
    name=st.sampled_from(sorted(HEADERS)),
)
def test_any_chunking_gives_the_same_frames(payloads, cuts, name):
    f = HEADERS[name][0]()
    wire = b"".join(f.encode(p) for p in payloads)
    decoder = f.decoder()
    out = []
    start = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts) + [len(wire)]:
        out += decoder.feed(wire[start:cut])
        start = max(start, cut)
    assert out == payloads


def test_zero_length_keepalives_never_reach_the_caller():
    f = framing.binary(2)
    decoder = f.decoder()
    wire = f.keepalive() + f.encode(b"msg") + f.keepalive() + f.keepalive()
    assert f.keepalive() == b"\x00\x00"
    assert decoder.feed(wire) == [b"msg"]
    assert decoder.keepalives == 3


def test_vmlh_session_control_frames_are_skipped_with_or_without_a_body():
    f = framing.vmlh()
    decoder = f.decoder()
    assert f.keepalive() == b"\x00\x00\x00\x20"
    control_with_body = b"\x00\x03\x00\x20abc"
    wire = f.keepalive() + f.encode(b"real") + control_with_body + f.encode(b"next")
    assert decoder.feed(wire) == [b"real", b"next"]
    assert decoder.keepalives == 2


def test_vmlh_maximum_is_2048():
    f = framing.vmlh()
    assert f.max_length == 2048
    with pytest.raises(FramingError):
        f.encode(b"x" * 2049)
    with pytest.raises(FramingError):
        f.decoder().feed(b"\x08\x01\x00\x00")


@pytest.mark.parametrize("name", ["binary2", "ascii4", "bcd2", "hex4"])
def test_include_header_counts_the_header_in_the_length(name):
    make = HEADERS[name][0]
    plain = make()
    f = type(plain)(plain.header_size, include_header=True)
    wire = f.encode(b"a" * 115)
    assert wire[: f.header_size] == plain.pack_length(115 + f.header_size)
    assert f.decoder().feed(wire) == [b"a" * 115]
    # a keep-alive whose length is just the header
    decoder = f.decoder()
    assert decoder.feed(f.keepalive() + wire) == [b"a" * 115]
    assert decoder.keepalives == 1


def test_include_header_length_below_the_header_is_a_framing_error():
    f = framing.binary(2, include_header=True)
    with pytest.raises(FramingError, match="smaller than the header"):
        f.decoder().feed(b"\x00\x01")


def test_tpdu_is_added_stripped_remembered_and_swapped():
    tpdu = b"\x60\x00\x01\x00\x02"
    f = framing.binary(2, tpdu=tpdu)
    wire = f.encode(b"body")
    assert wire == b"\x00\x09" + tpdu + b"body"
    decoder = f.decoder()
    incoming = b"\x60\x00\x07\x00\x09"
    assert decoder.feed(f.encode(b"req", tpdu=incoming)) == [b"req"]
    assert decoder.last_tpdu == incoming
    swapped = framing.Framing.swap_tpdu(incoming)
    assert swapped == b"\x60\x00\x09\x00\x07"
    assert f.encode(b"resp", tpdu=swapped)[2:7] == swapped


def test_tpdu_frame_shorter_than_the_tpdu_is_a_framing_error():
    f = framing.binary(2, tpdu=b"\x60\x00\x01\x00\x02")
    with pytest.raises(FramingError):
        f.decoder().feed(b"\x00\x03abc")


def test_bad_tpdu_size_is_a_configuration_error():
    with pytest.raises(ConfigurationError):
        framing.binary(2, tpdu=b"\x60")


def test_oversized_header_is_an_error_not_an_allocation():
    f = framing.binary(4)  # default maximum 64 KiB
    decoder = f.decoder()
    with pytest.raises(FramingError, match="outside"):
        decoder.feed(b"\x7f\xff\xff\xff" + b"x" * 10)
    assert decoder.buffered == 0  # nothing kept, nothing allocated for the claimed 2 GiB
    with pytest.raises(FramingError):  # the stream cannot be resynchronised
        decoder.feed(f.encode(b"ok"))


def test_max_length_is_configurable_and_applies_to_encode():
    f = framing.binary(2, max_length=10)
    assert f.encode(b"x" * 10)
    with pytest.raises(FramingError):
        f.encode(b"x" * 11)
    with pytest.raises(FramingError):
        f.decoder().feed(b"\x00\x0b")


@pytest.mark.parametrize(
    "make, header",
    [
        (lambda: framing.ascii(4), b"01a5"),
        (lambda: framing.ascii(4), b" 115"),
        (lambda: framing.ascii(4), b"-001"),
        (lambda: framing.hex(4), b"00G1"),
        (lambda: framing.hex(4), b"-001"),
        (lambda: framing.hex(4), b"0x1F"),
        (lambda: framing.hex(4), b" 1f "[:4]),
        (lambda: framing.hex(4), b"1_00"),
        (lambda: framing.bcd(2), b"\x0a\x15"),
        (lambda: framing.bcd(2), b"\xff\xff"),
    ],
)
def test_garbage_length_headers_are_framing_errors(make, header):
    with pytest.raises(FramingError):
        make().decoder().feed(header)  # the header alone must be refused


def test_frames_before_a_bad_header_are_still_delivered_then_the_error_sticks():
    f = framing.ascii(4)
    decoder = f.decoder()
    frames = decoder.feed(f.encode(b"first") + f.encode(b"second") + b"zzzz")
    assert frames == [b"first", b"second"]
    assert isinstance(decoder.error, FramingError)
    with pytest.raises(FramingError):
        decoder.feed(b"")


def test_header_too_small_for_the_length_is_refused_at_encode():
    f = framing.bcd(1)  # 2 digits: up to 99
    assert f.max_length == 99
    with pytest.raises(FramingError):
        f.encode(b"x" * 100)


def test_by_name_and_unknown_names():
    for name in framing.BY_NAME:
        f = framing.by_name(name)
        assert f.decoder().feed(f.encode(b"abc")) == [b"abc"]
    with pytest.raises(ConfigurationError, match="unknown framing"):
        framing.by_name("nope")
    with pytest.raises(ConfigurationError):
        framing.binary(3)


def test_a_custom_framing_needs_only_pack_and_unpack():
    class Decimal3(framing.Framing):
        header_limit = 999

        def pack_length(self, length: int) -> bytes:
            return b"%03d" % length

        def unpack_length(self, header: bytes) -> int:
            if not header.isdigit():
                raise FramingError("not digits")
            return int(header)

    f = Decimal3(3)
    assert f.encode(b"abcd") == b"004abcd"
    decoder = f.decoder()
    assert [p for b in f.encode(b"ab") + f.encode(b"cde") for p in decoder.feed(bytes([b]))] == [b"ab", b"cde"]
