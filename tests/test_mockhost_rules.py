"""The mock host's rules engine, with no sockets: matching, actions, and clear errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from geviso.errors import ConfigurationError
from geviso.mock import rules
from geviso.mock.host import load_rules

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.json"


def doc(mti: str = "0200", pan: str = "4111111111111111", amount: str = "000000001000", **fields: str) -> dict:
    message = {"t": mti, "2": pan, "4": amount}
    message.update(fields)
    return message


def one(rule: dict) -> rules.Rule:
    return rules.parse([rule]).rules[0]


def test_an_empty_rule_matches_everything_and_answers_as_usual():
    rule = one({})
    assert rule.matches({"t": "0800"})
    assert rule.action == rules.RESPOND and rule.code is None and rule.delay is None
    assert rule.delay_seconds() == 0.0


def test_match_on_mti_one_or_several():
    assert one({"match": {"mti": "0100"}}).matches(doc("0100"))
    assert not one({"match": {"mti": "0100"}}).matches(doc("0200"))
    several = one({"match": {"mti": ["0100", "0200"]}})
    assert several.matches(doc("0100")) and several.matches(doc("0200")) and not several.matches(doc("0400"))


def test_match_on_pan_prefix_one_or_several():
    rule = one({"match": {"pan_prefix": ["4000", "5555"]}})
    assert rule.matches(doc(pan="4000000000000002"))
    assert rule.matches(doc(pan="5555000000000000"))
    assert not rule.matches(doc(pan="4111111111111111"))
    assert not rule.matches({"t": "0800"})  # no PAN at all


def test_amount_above_and_below_are_strict_and_need_field_4():
    above = one({"match": {"amount_above": 100000}})
    assert above.matches(doc(amount="000000100001"))
    assert not above.matches(doc(amount="000000100000"))
    assert not above.matches({"t": "0200"})
    below = one({"match": {"amount_below": "500"}})
    assert below.matches(doc(amount="000000000499"))
    assert not below.matches(doc(amount="000000000500"))
    assert not below.matches({"t": "0200"})
    band = one({"match": {"amount_above": 100, "amount_below": 200}})
    assert band.matches(doc(amount="000000000150"))
    assert not band.matches(doc(amount="000000000250"))


def test_match_on_any_field_value_or_one_of_values():
    rule = one({"match": {"fields": {"41": "TERM0001", "3": ["000000", "010000"]}}})
    assert rule.matches(doc(**{"41": "TERM0001", "3": "010000"}))
    assert not rule.matches(doc(**{"41": "TERM0002", "3": "010000"}))
    assert not rule.matches(doc(**{"41": "TERM0001"}))  # field 3 missing


def test_every_condition_must_hold():
    rule = one({"match": {"mti": "0200", "pan_prefix": "4", "amount_above": 10, "fields": {"41": "T1"}}})
    assert rule.matches(doc(**{"41": "T1"}))
    assert not rule.matches(doc("0100", **{"41": "T1"}))
    assert not rule.matches(doc(**{"41": "T2"}))


def test_first_match_wins():
    rule_set = rules.parse(
        {
            "rules": [
                {"name": "specific", "match": {"pan_prefix": "4000"}, "code": "51"},
                {"name": "general", "match": {"mti": "0200"}, "code": "05"},
            ]
        }
    )
    assert rule_set.match(doc(pan="4000000000000002")).name == "specific"
    assert rule_set.match(doc(pan="4111111111111111")).name == "general"
    assert rule_set.match(doc("0100")) is None
    assert len(rule_set) == 2 and bool(rule_set)
    assert not rules.parse([])


def test_actions_and_their_options():
    assert one({"code": "51"}).code == "51"
    assert one({"action": "drop"}).action == rules.DROP
    close = one({"action": "close", "delay_ms": 50})
    assert close.action == rules.CLOSE and close.delay_seconds() == pytest.approx(0.05)
    late = one({"action": "late", "code": "91"})
    assert late.action == rules.LATE and late.code == "91"
    assert late.delay_seconds() == pytest.approx(rules.DEFAULT_LATE_MS / 1000)
    assert one({"fields": {"44": "X", "38": 123456}}).fields == {"44": "X", "38": "123456"}


def test_fixed_delay_and_random_range():
    assert one({"delay_ms": 250}).delay_seconds() == pytest.approx(0.25)
    rng = random.Random(7)
    ranged = one({"delay_ms": [50, 150]})
    draws = [ranged.delay_seconds(rng) for _ in range(200)]
    assert all(0.05 <= d <= 0.15 for d in draws)
    assert max(draws) - min(draws) > 0.05  # really a range
    again = random.Random(7)
    assert [ranged.delay_seconds(again) for _ in range(200)] == draws  # seeded: repeatable


def test_yaml_rules_load_like_json():
    text = "rules:\n  - name: decline\n    match: {pan_prefix: '4000'}\n    code: '05'\n  - action: drop\n"
    rule_set = rules.loads(text, fmt="yaml")
    assert [r.action for r in rule_set] == ["respond", "drop"]
    assert rule_set.rules[0].code == "05"


def test_the_example_rules_file_loads():
    rule_set = load_rules(EXAMPLE)
    assert len(rule_set) >= 5
    assert {r.action for r in rule_set} == {"respond", "drop", "close", "late"}


def test_format_follows_the_file_extension():
    assert rules.format_of("x.yaml") == rules.format_of("X.YML") == "yaml"
    assert rules.format_of("rules.json") == "json"


@pytest.mark.parametrize(
    ("rule", "key", "words"),
    [
        ({"cod": "05"}, "cod", "unknown key"),
        ({"action": "explode"}, "action", "not one of"),
        ({"code": "5"}, "code", "two (or three) characters"),
        ({"code": ["05"]}, "code", "two (or three) characters"),
        ({"action": "drop", "code": "05"}, "code", "no answer"),
        ({"action": "drop", "delay_ms": 10}, "delay_ms", "no delay"),
        ({"delay_ms": -1}, "delay_ms", ">= 0"),
        ({"delay_ms": [200, 100]}, "delay_ms", "min <= max"),
        ({"delay_ms": [1, 2, 3]}, "delay_ms", "[min, max]"),
        ({"delay_ms": "soon"}, "delay_ms", "milliseconds"),
        ({"match": {"pan": "4000"}}, "match.pan", "unknown condition"),
        ({"match": {"mti": "200"}}, "match.mti", "4 digits"),
        ({"match": {"mti": []}}, "match.mti", "non-empty list"),
        ({"match": {"pan_prefix": "4x"}}, "match.pan_prefix", "digits"),
        ({"match": {"amount_above": "ten"}}, "match.amount_above", "minor units"),
        ({"match": {"amount_below": 1.5}}, "match.amount_below", "minor units"),
        ({"match": {"fields": []}}, "match.fields", "field: value"),
        ({"match": {"fields": {"abc": "1"}}}, "match.fields", "not a field number"),
        ({"match": "everything"}, "match", "object of conditions"),
        ({"fields": {"39": "00"}}, "fields", "set by the host"),
        ({"fields": {"44": None}}, "fields.44", "expected a string"),
        ({"name": 3}, "name", "expected a string"),
        ("drop", "rule", "expected an object"),
    ],
)
def test_a_bad_rule_is_an_error_naming_the_rule_and_the_key(rule, key, words):
    good = {"name": "fine", "code": "00"}
    with pytest.raises(ConfigurationError) as info:
        rules.parse([good, rule], source="my.json")
    text = str(info.value)
    assert text.startswith("my.json: rules[1]")
    assert f"key {key!r}" in text
    assert words in text


def test_the_rule_name_is_in_the_error():
    with pytest.raises(ConfigurationError, match=r"rules\[0\] \('slow'\), key 'delay_ms'"):
        rules.parse([{"name": "slow", "delay_ms": "x"}])


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"rule": []}, "one key 'rules'"),
        ({"rules": {"a": 1}}, "must be a list"),
        ("rules", "must be a list"),
    ],
)
def test_a_bad_document_is_an_error(data, words):
    with pytest.raises(ConfigurationError, match=words):
        rules.parse(data)


def test_invalid_json_and_yaml_text_are_configuration_errors():
    with pytest.raises(ConfigurationError, match="r.json: not valid JSON"):
        rules.loads("[{", source="r.json")
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        rules.loads("rules: [unclosed", fmt="yaml")
    with pytest.raises(ConfigurationError, match="unknown rules format"):
        rules.loads("[]", fmt="toml")


def test_an_unreadable_rules_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_rules(tmp_path / "missing.json")
