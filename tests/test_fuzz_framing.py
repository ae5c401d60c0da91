"""Hypothesis fuzzing of every framing decoder, and round trips through every framing.

On any byte stream cut at any chunk boundaries, a decoder either returns frames no
longer than the framing's maximum or raises :class:`FramingError`: never another
exception, never an oversized frame, never a buffer beyond one incomplete frame. How the
stream is cut changes nothing but how many frames come out before an error.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from iso8583.specs import default as spec

import geviso
from geviso.codec import Codec
from geviso.errors import FramingError
from geviso.framing import Framing

TPDU = b"\x60\x00\x01\x00\x02"

FRAMINGS: dict[str, Framing] = {
    "binary2": geviso.framing.binary(2),
    "binary4": geviso.framing.binary(4),
    "ascii4": geviso.framing.ascii(4),
    "bcd2": geviso.framing.bcd(2),
    "hex4": geviso.framing.hex(4),
    "vmlh": geviso.framing.vmlh(),
    "binary2-max64": geviso.framing.binary(2, max_length=64),
    "binary2-include-header": geviso.framing.binary(2, include_header=True),
    "ascii4-tpdu": geviso.framing.ascii(4, tpdu=TPDU),
    "bcd2-tpdu-include-header": geviso.framing.bcd(2, tpdu=TPDU, include_header=True),
}
NAMES = sorted(FRAMINGS)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cut(data: bytes, points: list[int]) -> list[bytes]:
    """``data`` in chunks, cut at ``points`` (any order, any value)."""
    bounds = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def decode(framing: Framing, chunks: list[bytes]) -> tuple[list[bytes], bool]:
    """Feed ``chunks``; the frames out, and whether a FramingError ended the stream.

    Checks on the way the bounds every decoder must keep."""
    decoder = framing.decoder()
    frames: list[bytes] = []
    for chunk in chunks:
        try:
            out = decoder.feed(chunk)
        except FramingError:
            return frames, True
        assert all(isinstance(f, bytes) and len(f) <= framing.max_length for f in out)
        frames.extend(out)
        if getattr(decoder, "error", None) is not None:
            # The frames before a bad header come out once; the error stays.
            with pytest.raises(FramingError):
                decoder.feed(b"")
            return frames, True
        assert decoder.buffered < framing.header_size + framing.max_length
    return frames, False


def check_any_cut(framing: Framing, data: bytes, points: list[int]) -> tuple[list[bytes], bool]:
    """Decoding in chunks agrees with decoding one byte at a time."""
    one_by_one, error_ref = decode(framing, [data[i : i + 1] for i in range(len(data))])
    frames, error = decode(framing, cut(data, points))
    assert error == error_ref
    if error:
        # A chunk that holds both good frames and the bad header loses the good ones.
        assert frames == one_by_one[: len(frames)]
    else:
        assert frames == one_by_one
    return frames, error


@FUZZ
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=600), points=st.lists(st.integers(0, 600), max_size=20))
def test_arbitrary_bytes(name: str, data: bytes, points: list[int]) -> None:
    check_any_cut(FRAMINGS[name], data, points)


def pieces(framing: Framing) -> st.SearchStrategy[bytes]:
    """Valid frames, keep-alives, raw header bytes and plain garbage."""
    limit = min(framing.max_length - (5 if framing.tpdu else 0), 300)
    return st.one_of(
        st.binary(max_size=limit).map(framing.encode),
        st.just(framing.keepalive()),
        st.binary(min_size=framing.header_size, max_size=framing.header_size),
        st.binary(max_size=8),
    )


@FUZZ
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_frames_mixed_with_garbage(data: Any, name: str) -> None:
    framing = FRAMINGS[name]
    stream = b"".join(data.draw(st.lists(pieces(framing), max_size=12)))
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    check_any_cut(framing, stream, points)


@FUZZ
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_valid_frames_at_any_cut(data: Any, name: str) -> None:
    framing = FRAMINGS[name]
    limit = min(framing.max_length - (5 if framing.tpdu else 0), 300)
    payloads = data.draw(st.lists(st.binary(min_size=1, max_size=limit), max_size=12))
    keepalives = data.draw(st.lists(st.booleans(), min_size=len(payloads), max_size=len(payloads)))
    stream = b"".join(framing.encode(p) + (framing.keepalive() if k else b"") for p, k in zip(payloads, keepalives))
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    frames, error = check_any_cut(framing, stream, points)
    assert not error
    assert frames == payloads


def test_oversized_header_is_refused_without_allocating() -> None:
    for name, framing in FRAMINGS.items():
        if framing.max_length >= framing.header_limit - (framing.header_size if framing.include_header else 0):
            continue  # the header cannot say more than the maximum
        decoder = framing.decoder()
        with pytest.raises(FramingError):
            decoder.feed(framing.pack_length(framing.header_limit))
        assert decoder.buffered <= framing.header_size, name


# -- round trips of random valid messages ------------------------------------------
FIELDS = [str(n) for n in range(2, 129) if n != 65]


def field_value(number: str) -> st.SearchStrategy[str]:
    """A value that fits the default spec's field ``number``."""
    field = spec[number]
    fixed = field["len_type"] == 0
    size = field["max_len"]
    lengths = st.just(size) if fixed else st.integers(0, min(size, 60))
    if field["data_enc"] == "b":
        return lengths.flatmap(lambda n: st.binary(min_size=n, max_size=n)).map(lambda b: b.hex().upper())
    alphabet = st.characters(min_codepoint=32, max_codepoint=126)
    return lengths.flatmap(lambda n: st.text(alphabet, min_size=n, max_size=n))


@st.composite
def messages(draw: Any) -> dict[str, str]:
    mti = draw(st.sampled_from(["0100", "0110", "0200", "0210", "0400", "0430", "0800", "0810"]))
    numbers = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=12))
    return {"t": mti, **{n: draw(field_value(n)) for n in numbers}}


@FUZZ
@given(data=st.data(), name=st.sampled_from(NAMES))
def test_random_messages_round_trip(data: Any, name: str) -> None:
    framing = FRAMINGS[name]
    codec = Codec(spec)
    docs = data.draw(st.lists(messages(), min_size=1, max_size=6))
    payloads = [codec.encode(doc) for doc in docs]
    assume(all(len(p) + (5 if framing.tpdu else 0) <= framing.max_length for p in payloads))
    stream = b"".join(framing.encode(p) for p in payloads)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    decoder = framing.decoder()
    frames = [f for chunk in cut(stream, points) for f in decoder.feed(chunk)]
    assert frames == payloads
    for doc, frame in zip(docs, frames):
        back = codec.decode(frame)
        assert {k: v for k, v in back.items() if k not in ("p", "1")} == doc
    if framing.tpdu is not None:
        assert decoder.last_tpdu == framing.tpdu
