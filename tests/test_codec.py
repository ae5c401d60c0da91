"""geviso.codec: encode a copy, decode, safe errors, MTI classification."""

from __future__ import annotations

import iso8583
import pytest
from iso8583.specs import default as spec

from geviso import codec, errors

PAN = "4111111111111111"


def test_encode_leaves_the_callers_dict_alone_and_decodes_back():
    c = codec.codec_for(spec)
    doc = {"t": "0200", "2": PAN, "3": "000000", "4": "000000001000", "11": "000042", "65": "x" * 8}
    before = dict(doc)
    raw = c.encode(doc)
    assert doc == before  # pyiso8583 would have added "p" and popped "65"'s bitmap fields
    back = c.decode(raw)
    assert {k: back[k] for k in ("t", "2", "3", "4", "11")} == {k: doc[k] for k in ("t", "2", "3", "4", "11")}


def test_decode_error_is_safe_and_keeps_the_pyiso8583_cause():
    raw = b"0100" + bytes.fromhex("6000000000000000") + b"16" + PAN.encode() + b"12"  # field 3 cut short
    with pytest.raises(errors.DecodeError) as info:
        codec.Codec(spec).decode(raw)
    err = info.value
    assert isinstance(err, errors.SafeError)
    assert PAN not in str(err) and PAN not in repr(err)
    assert "field 3" in str(err)
    assert isinstance(err.__cause__, iso8583.DecodeError)
    assert err.__cause__.doc_dec["2"] == PAN  # the cause holds data: that is why it is never shown


def test_encode_error_is_safe_and_keeps_the_cause():
    doc = {"t": "0200", "2": PAN + "1234567", "11": "000001"}  # PAN too long for LLVAR 19
    with pytest.raises(errors.EncodeError) as info:
        codec.Codec(spec).encode(doc)
    assert PAN not in str(info.value) and PAN not in repr(info.value)
    assert isinstance(info.value.__cause__, iso8583.EncodeError)
    assert isinstance(info.value, errors.LocalProtocolError)


def test_is_response_examples():
    assert codec.is_response("0110") and codec.is_response("0810") and codec.is_response("0230")
    assert not codec.is_response("0100") and not codec.is_response("0800") and not codec.is_response("0420")
    assert not codec.is_response("") and not codec.is_response("08")


@pytest.mark.parametrize(
    "mti, answer", [("0100", "0110"), ("0200", "0210"), ("0400", "0410"), ("0420", "0430"), ("0421", "0430"),
                    ("0800", "0810"), ("1100", "1110")]
)
def test_response_mti(mti, answer):
    assert codec.response_mti(mti) == answer


def test_response_mti_refuses_garbage():
    with pytest.raises(ValueError):
        codec.response_mti("08")


def test_decode_error_says_what_was_wrong_but_not_the_data():
    raw = b"0110" + bytes.fromhex("6000000000000000") + b"16" + PAN.encode() + b"12"
    with pytest.raises(errors.DecodeError) as info:
        codec.codec_for(spec).decode(raw)
    text = str(info.value)
    assert "field 3" in text and "expecting 6" in text and PAN not in text
