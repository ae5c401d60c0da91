"""geviso.keys and geviso.stan: request keys and STAN generation (pure)."""

from __future__ import annotations

import pytest

from geviso import keys, stan


def test_default_key_pairs_request_and_response():
    assert keys.default({"t": "0100", "11": "000001"}) == keys.default({"t": "0110", "11": "000001"})
    assert keys.default({"t": "0420", "11": "000001"}) == keys.default({"t": "0430", "11": "000001"})
    assert keys.default({"t": "0421", "11": "000001"}) == keys.default({"t": "0430", "11": "000001"})
    assert keys.default({"t": "0800", "11": "000001"}) == keys.default({"t": "0810", "11": "000001"})


def test_default_key_keeps_classes_apart():
    auth = keys.default({"t": "0100", "11": "000001"})
    assert auth != keys.default({"t": "0400", "11": "000001"})  # a reversal reusing the STAN
    assert auth != keys.default({"t": "0800", "11": "000001"})
    assert auth != keys.default({"t": "0100", "11": "000002"})
    # advice (0120) and its response (0130) pair, apart from the request/response pair
    assert keys.default({"t": "0120", "11": "1"}) == keys.default({"t": "0130", "11": "1"})
    assert keys.default({"t": "0120", "11": "1"}) != auth


def test_default_key_takes_a_stan_of_another_type_as_its_text():
    assert keys.default({"t": "0100", "11": 7}) == keys.default({"t": "0110", "11": "7"})  # type: ignore[dict-item]


def test_default_key_remembers_a_bounded_number_of_mtis():
    """A peer sending endless distinct garbage MTIs cannot grow the prefix cache, and
    each still gets its key."""
    for n in range(1000):
        mti = "9%03d" % n
        assert keys.default({"t": mti, "11": "000001"}) == keys.default({"t": mti, "11": "000001"})
    assert len(keys._PREFIXES) <= keys._PREFIXES_KEPT


def test_missing_mti_is_a_key_error_naming_it():
    with pytest.raises(KeyError, match="t"):
        keys.default({"11": "000001"})


def test_missing_stan_is_a_key_error_naming_field_11():
    with pytest.raises(KeyError, match="11"):
        keys.default({"t": "0100"})


def test_stan_only_and_fields():
    assert keys.stan_only({"t": "0100", "11": "000009"}) == "000009"
    key = keys.fields("41", "11")
    assert key({"t": "0100", "41": "TERM0001", "11": "000001"}) == ("TERM0001", "000001")
    assert key({"41": "TERM0001", "11": "000001"}) != key({"41": "TERM0002", "11": "000001"})
    assert key.__name__ == "fields_41_11"
    with pytest.raises(KeyError):
        key({"11": "000001"})
    with pytest.raises(ValueError):
        keys.fields()


def test_stan_generator_counts_from_one_and_rolls_over_skipping_zero():
    gen = stan.StanGenerator()
    assert [gen.next() for _ in range(3)] == ["000001", "000002", "000003"]
    gen = stan.StanGenerator(start=999_998)
    assert [next(gen) for _ in range(4)] == ["999998", "999999", "000001", "000002"]
    assert gen.peek() == "000003"
    with pytest.raises(ValueError):
        stan.StanGenerator(start=0)
    with pytest.raises(ValueError):
        stan.StanGenerator(start=1_000_000)


def test_stan_generator_never_yields_zero_over_a_full_cycle():
    gen = stan.StanGenerator(start=500_000)
    seen = {gen.next() for _ in range(stan.MAX_STAN)}
    assert len(seen) == stan.MAX_STAN and "000000" not in seen


def test_parse():
    assert stan.parse("000042") == 42
    assert stan.parse(None) is None and stan.parse("42") is None and stan.parse("abcdef") is None
