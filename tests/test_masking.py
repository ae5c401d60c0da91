"""geviso.masking: the only way message content reaches logs, reprs and error texts."""

from __future__ import annotations

from geviso import masking

PAN = "4111111111111111"


def test_mask_pan_shows_at_most_first_six_and_last_four():
    assert masking.mask_pan(PAN) == "411111******1111"
    assert masking.mask_pan("5500000000000004321") == "550000*********4321"
    assert masking.mask_pan("123456") == "******"  # too short to show anything


def test_mask_doc_redacts_track_data_and_pin_block_and_masks_the_pan():
    doc = {
        "t": "0200",
        "2": PAN,
        "35": PAN + "=25121010000000000000",
        "36": "0123456789",
        "45": "B" + PAN + "^DOE/JOHN^2512101",
        "52": "1234567890ABCDEF",
        "11": "000001",
    }
    safe = masking.mask_doc(doc)
    text = repr(safe)
    assert PAN not in text
    for secret in ("35", "36", "45", "52"):
        assert safe[secret] == "[redacted]"
        assert doc[secret] not in text
    assert safe["2"] == "411111******1111"
    assert safe["11"] == "000001" and safe["t"] == "0200"
    assert doc["2"] == PAN  # the original is untouched


def test_mask_text_masks_anything_that_looks_like_a_pan():
    text = f"refused {PAN} and 5500000000000004321, stan 000001, amount 000000001000"
    masked = masking.mask_text(text)
    assert PAN not in masked and "5500000000000004321" not in masked
    assert "411111******1111" in masked and "000000001000" in masked


def test_describe_is_short_and_safe():
    assert masking.describe({"t": "0100", "11": "000007", "2": PAN, "35": "x"}) == (
        "mti=0100 stan=000007 pan=411111******1111"
    )
    assert masking.describe({}) == "mti=?"
