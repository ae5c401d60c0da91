"""The compiled codec gives pyiso8583's bytes, dicts and errors, over random specs.

Each property draws a spec (random fields, encodings, length prefixes, padding,
bitmaps, header), a document for it, and compares :class:`CompiledCodec` with the
reference :class:`Codec` (plain pyiso8583): equal bytes, equal dicts, or the same error
with the same cause. Each codec is used twice: the first message of a shape goes
through the generic generated code, later ones through the function specialised for
that shape (key order for encode, bitmap for decode); both must agree.
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import iso8583
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from iso8583.specs import default, default_ascii

from geviso import errors
from geviso.codec import Codec, CompiledCodec, codec_for
from geviso.compiled import MAX_HEADS, MAX_SPECIALISED, TABLE_SIZE, compile_spec

PAN = "4111111111111111"
TEXT_ENCODINGS = ["ascii", "latin-1", "cp500", "utf-8"]
LENGTH_ENCODINGS = ["b", "bcd", "ascii", "cp500"]
PADS = ["", "0", "F", "f", "0F"]
PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies -------------------------------------------------------------------------
@st.composite
def field_specs(draw: st.DrawFn, min_len: int = 0) -> dict[str, Any]:
    fs: dict[str, Any] = {
        "data_enc": draw(st.sampled_from(["b", *TEXT_ENCODINGS])),
        "len_enc": draw(st.sampled_from(LENGTH_ENCODINGS)),
        "len_type": draw(st.sampled_from([0, 0, 1, 2, 3, 4])),
        "max_len": draw(st.one_of(st.integers(min_len, 40), st.sampled_from([99, 255, 999]))),
        "desc": "field",
    }
    if draw(st.booleans()):
        fs["len_count"] = draw(st.sampled_from(["bytes", "nibbles"]))
    if draw(st.booleans()):
        fs["left_pad"] = draw(st.sampled_from(PADS))
    if draw(st.booleans()):
        fs["right_pad"] = draw(st.sampled_from(PADS))
    return fs


def bitmap_spec(data_enc: str) -> dict[str, Any]:
    return {"data_enc": data_enc, "len_enc": "ascii", "len_type": 0, "max_len": 8 if data_enc == "b" else 16}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, dict[str, Any]]:
    spec: dict[str, dict[str, Any]] = {}
    if draw(st.booleans()):
        spec["h"] = draw(field_specs(min_len=1))
    else:
        spec["h"] = {"data_enc": "ascii", "len_enc": "ascii", "len_type": 0, "max_len": 0}
    spec["t"] = {"data_enc": draw(st.sampled_from(["b", "ascii", "cp500"])), "len_enc": "ascii",
                 "len_type": 0, "max_len": 4}
    spec["p"] = bitmap_spec(draw(st.sampled_from(["b", "ascii", "cp500"])))
    if draw(st.integers(0, 4)):
        spec["1"] = bitmap_spec(draw(st.sampled_from(["b", "ascii", "cp500"])))
    for number in draw(st.sets(st.integers(2, 128), min_size=1, max_size=10)):
        spec[str(number)] = draw(field_specs())
    return spec


def length_limit(fs: dict[str, Any]) -> int:
    """The longest value pyiso8583 can write for ``fs`` (in its length unit)."""
    if fs["len_type"] == 0:
        return int(fs["max_len"])
    width = fs["len_type"]
    cap = {"b": 256**width - 1, "bcd": 10 ** (2 * width) - 1}.get(fs["len_enc"], 10**width - 1)
    return int(min(fs["max_len"], cap))


@st.composite
def values(draw: st.DrawFn, fs: dict[str, Any]) -> str:
    """A value of the right kind and (mostly) a length pyiso8583 accepts."""
    top = length_limit(fs)
    nibbles = fs.get("len_count") == "nibbles"
    fixed = fs["len_type"] == 0
    if fs["data_enc"] == "b":
        units = top if fixed else draw(st.one_of(st.integers(0, min(top, 24)), st.just(top)))
        digits = units if nibbles else 2 * units
        return draw(st.text(alphabet="0123456789ABCDEFabcdef", min_size=digits, max_size=digits))
    chars = top // 2 if nibbles else top
    size = chars if fixed else draw(st.one_of(st.integers(0, min(chars, 24)), st.just(chars)))
    alphabet = st.characters(min_codepoint=32, max_codepoint=126)
    if fs["data_enc"] == "utf-8" and draw(st.integers(0, 9)) == 0:
        alphabet = st.characters(min_codepoint=32, max_codepoint=0x2FF)
    return draw(st.text(alphabet=alphabet, min_size=size, max_size=size))


@st.composite
def documents(draw: st.DrawFn, spec: dict[str, dict[str, Any]]) -> dict[str, str]:
    numbers = [key for key in spec if key.isdigit() and key != "65"]
    doc: dict[str, str] = {}
    if spec["h"]["max_len"] > 0:
        doc["h"] = draw(values(spec["h"]))
    doc["t"] = draw(st.sampled_from(["0200", "0210", "0800", "0810", "1100"]))
    chosen = draw(st.lists(st.sampled_from(numbers), unique=True, max_size=len(numbers))) if numbers else []
    for key in chosen:
        doc[key] = draw(values(spec[key]))
    return doc


@st.composite
def spec_and_doc(draw: st.DrawFn) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    spec = draw(specs())
    return spec, draw(documents(spec))


def outcome(call: Callable[[Any], Any], arg: Any) -> tuple[Any, ...]:
    """What a codec call did: its result, or its error's class, text and cause."""
    try:
        return ("ok", call(arg))
    except (errors.EncodeError, errors.DecodeError) as exc:
        cause = exc.__cause__
        return ("error", type(exc), str(exc), type(cause), str(cause))


# -- properties -------------------------------------------------------------------------
@PROPERTY
@given(spec_and_doc())
def test_valid_documents_give_pyiso8583s_bytes_and_dicts_without_fallback(case):
    spec, doc = case
    before = copy.deepcopy(doc)
    fast, reference = CompiledCodec(spec), Codec(spec)
    expected = outcome(reference.encode, doc)
    assert outcome(fast.encode, doc) == expected  # generic
    assert outcome(fast.encode, doc) == expected  # specialised for these keys
    assert doc == before
    if expected[0] == "ok":
        assert fast.fallbacks == 0, "the compiled encoder left a covered document to pyiso8583"
        raw = expected[1]
        decoded = outcome(reference.decode, raw)
        assert outcome(fast.decode, raw) == decoded  # generic
        assert outcome(fast.decode, raw) == decoded  # specialised for this bitmap
        if decoded[0] == "ok":
            assert fast.fallbacks == 0, "the compiled decoder left a covered frame to pyiso8583"
            assert list(fast.decode(raw)) == list(decoded[1])  # same key order too
            assert fast.decode(bytearray(raw)) == decoded[1]


@PROPERTY
@given(spec_and_doc(), st.data())
def test_damaged_frames_fail_or_decode_like_pyiso8583(case, data):
    spec, doc = case
    reference, fast = Codec(spec), CompiledCodec(spec)
    try:
        raw = reference.encode(doc)
    except errors.EncodeError:
        assume(False)
    outcome(fast.decode, raw)  # the good frame's bitmap gets its specialised decoder
    how = data.draw(st.sampled_from(["truncate", "extend", "replace", "random"]))
    if how == "truncate":
        bad = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "extend":
        bad = raw + data.draw(st.binary(min_size=1, max_size=8))
    elif how == "replace":
        at = data.draw(st.integers(0, len(raw) - 1))
        bad = raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1 :]
    else:
        bad = data.draw(st.binary(max_size=64))
    assert outcome(fast.decode, bad) == outcome(reference.decode, bad)


@st.composite
def same_shape(draw: st.DrawFn, spec: dict[str, dict[str, Any]], doc: dict[str, str]) -> dict[str, str]:
    """Another document with ``doc``'s keys in the same order: new values, often another MTI."""
    other = {key: draw(values(spec[key])) for key in doc if key not in ("t", "h")}
    mti = draw(st.one_of(st.just(doc["t"]), st.sampled_from(["0100", "0110", "0420", "0430", "9999"])))
    return {key: mti if key == "t" else (draw(values(spec["h"])) if key == "h" else other[key]) for key in doc}


@settings(PROPERTY, max_examples=100)
@given(spec_and_doc(), st.data())
def test_later_messages_of_a_shape_take_its_specialised_functions_and_agree(case, data):
    """The specialised functions hold a shape's MTI, bitmap and offsets: messages of that
    shape with other values (other lengths, another MTI, header) still give pyiso8583's
    bytes and dicts, with no fallback."""
    spec, first = case
    fast, reference = CompiledCodec(spec), Codec(spec)
    try:
        raw = reference.encode(first)
    except errors.EncodeError:
        assume(False)
    decoded = outcome(reference.decode, raw)  # pyiso8583 may refuse its own bytes (pads)
    for _ in range(2):  # generic, then the specialised functions have been made
        assert fast.encode(first) == raw
        assert outcome(fast.decode, raw) == decoded
    refused = 2 if decoded[0] == "error" else 0  # an error comes from pyiso8583: each one is a fallback
    for doc in data.draw(st.lists(same_shape(spec, first), min_size=1, max_size=4)):
        expected = outcome(reference.encode, doc)
        assert outcome(fast.encode, doc) == expected
        if expected[0] == "error":
            refused += 1
            continue
        decoded = outcome(reference.decode, expected[1])
        assert outcome(fast.decode, expected[1]) == decoded
        if decoded[0] == "error":
            refused += 1
        else:
            assert list(fast.decode(expected[1])) == list(decoded[1])
    assert fast.fallbacks == refused


def test_one_shape_with_many_mtis_stays_exact_beyond_the_kept_heads():
    codec, reference = CompiledCodec(default), Codec(default)
    mtis = [f"{n:04d}" for n in range(100, 100 + 3 * MAX_HEADS)]
    for _ in range(2):
        for mti in mtis:
            doc = dict(REQUEST, t=mti)
            raw = codec.encode(doc)
            assert raw == reference.encode(doc)
            assert codec.decode(raw) == reference.decode(raw)
    assert codec.fallbacks == 0


ODD_KEYS = ["0", "011", "129", "193", "x", "65", "1", "p", "h", "t", 11, "²"]
ODD_VALUES = st.one_of(st.text(max_size=30), st.binary(max_size=8), st.integers(), st.none())


@PROPERTY
@given(spec_and_doc(), st.data())
def test_invalid_documents_raise_the_same_encode_error(case, data):
    spec, doc = case
    fast = CompiledCodec(spec)
    outcome(fast.encode, doc)  # the good document's keys get their specialised encoder
    doc = dict(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        change = data.draw(st.sampled_from(["value", "key", "drop"]))
        if change == "value" and doc:
            doc[data.draw(st.sampled_from(sorted(doc, key=str)))] = data.draw(ODD_VALUES)
        elif change == "key":
            doc[data.draw(st.sampled_from(ODD_KEYS))] = data.draw(st.one_of(ODD_VALUES, st.just("0000")))
        elif doc:
            del doc[data.draw(st.sampled_from(sorted(doc, key=str)))]
    assert outcome(fast.encode, doc) == outcome(Codec(spec).encode, doc)


# -- examples -----------------------------------------------------------------------------
REQUEST = {"t": "0200", "2": PAN, "3": "000000", "4": "000000010000", "7": "0612103000", "11": "000001",
           "12": "103000", "13": "0612", "22": "051", "25": "00", "37": "000000000001", "41": "TERM0001",
           "42": "MERCHANT0000001", "49": "840", "70": "301", "102": "123456"}


@pytest.mark.parametrize("spec", [default, default_ascii], ids=["default", "default_ascii"])
def test_codec_for_compiles_the_bundled_specs(spec):
    codec = codec_for(spec)
    assert isinstance(codec, CompiledCodec) and not codec.compiled.uncovered
    raw = codec.encode(REQUEST)
    assert raw == bytes(iso8583.encode(dict(REQUEST), spec)[0])
    assert codec.decode(raw) == iso8583.decode(raw, spec)[0]
    assert codec.fallbacks == 0


def test_codec_for_uses_pyiso8583_when_the_mti_is_not_compilable():
    spec = {**default, "t": {**default["t"], "data_enc": "no-such-codec"}}
    assert compile_spec(spec) is None
    assert type(codec_for(spec)) is Codec


def test_codec_for_reuses_the_compiled_functions_but_keeps_each_spec():
    first, second = copy.deepcopy(default), copy.deepcopy(default)
    a, b = codec_for(first), codec_for(second)
    assert isinstance(a, CompiledCodec) and isinstance(b, CompiledCodec)
    assert a.compiled is b.compiled
    assert a.spec is first and b.spec is second


def test_an_uncovered_field_goes_through_pyiso8583():
    spec = {**default, "48": {**default["48"], "len_count": "weird"}}
    codec = CompiledCodec(spec)
    assert codec.compiled.uncovered == frozenset({"48"})
    doc = {"t": "0100", "11": "000001", "48": "abc"}
    raw = codec.encode(doc)
    assert raw == Codec(spec).encode(doc) and codec.fallbacks == 1
    assert codec.decode(raw) == Codec(spec).decode(raw) and codec.fallbacks == 2
    assert codec.decode(codec.encode({"t": "0100", "11": "000002"}))["11"] == "000002"
    assert codec.fallbacks == 2  # messages without field 48 stay compiled


def test_a_value_longer_than_the_tables_goes_through_pyiso8583():
    spec = {**default, "48": {**default["48"], "len_type": 4, "max_len": 5000}}
    codec = CompiledCodec(spec)
    doc = {"t": "0100", "11": "000001", "48": "x" * (TABLE_SIZE + 10)}
    raw = codec.encode(doc)
    assert raw == Codec(spec).encode(doc)
    assert codec.decode(raw) == Codec(spec).decode(raw)
    assert codec.fallbacks == 2


def test_errors_are_safe_and_keep_pyiso8583s_cause_without_other_context():
    codec = codec_for(default)
    with pytest.raises(errors.EncodeError) as info:
        codec.encode({"t": "0200", "2": PAN + "1234567", "11": "000001"})
    assert PAN not in str(info.value) and PAN not in repr(info.value)
    assert isinstance(info.value.__cause__, iso8583.EncodeError)
    assert info.value.__context__ is info.value.__cause__  # nothing from the compiled attempt
    raw = codec.encode({"t": "0200", "2": PAN, "11": "000001"})
    with pytest.raises(errors.DecodeError) as dinfo:
        codec.decode(raw[:-3])
    assert PAN not in str(dinfo.value)
    assert isinstance(dinfo.value.__cause__, iso8583.DecodeError)
    assert dinfo.value.__context__ is dinfo.value.__cause__


def test_decode_refuses_what_pyiso8583_refuses():
    codec = codec_for(default)
    raw = codec.encode({"t": "0800", "11": "000001"})
    for bad in (memoryview(raw), "0800", None):
        assert outcome(codec.decode, bad) == outcome(Codec(default).decode, bad)


def test_specialised_functions_are_bounded_and_agree_with_the_generic_ones():
    spec = default
    codec = CompiledCodec(spec)
    reference = Codec(spec)
    shapes = [key for key in REQUEST if key not in ("t", "11")]
    docs = []
    for mask in range(1, 100):  # 99 different field sets
        doc = dict(REQUEST)
        for bit, key in enumerate(shapes):
            if mask >> bit & 1:
                del doc[key]
        docs.append(doc)
    for _ in range(2):
        for doc in docs:
            raw = codec.encode(doc)
            assert raw == reference.encode(doc)
            assert codec.decode(raw) == reference.decode(raw)
    namespace = codec.compiled.encode.__globals__
    assert len(namespace["ENCODE_BY_KEYS"]) == len(namespace["DECODE_BY_HEAD"]) == MAX_SPECIALISED
    assert codec.fallbacks == 0
