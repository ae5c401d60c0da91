"""The request journal, scenarios and near misses as pure logic: no sockets."""

from __future__ import annotations

import pytest

from geviso.errors import ConfigurationError
from geviso.mock import journal as journal_mod
from geviso.mock import rules
from geviso.mock.journal import Journal, compile_match
from geviso.mock.nearmiss import Explainer
from geviso.mock.scenarios import STARTED, Scenarios

PAN = "4111111111111111"


def sale(stan: str = "000001", mti: str = "0200", **fields: str) -> dict[str, str]:
    doc = {"t": mti, "p": "7234054128C08000", "2": PAN, "4": "000000001000", "11": stan, "41": "TERM0001"}
    doc.update(fields)
    return doc


def test_entries_are_masked_and_keep_no_track_data_or_pin_block():
    journal = Journal(10)
    entry = journal.record(sale(**{"35": PAN + "=2512101", "52": "0123456789ABCDEF", "45": "B" + PAN + "^X^25"}))
    entry.answered({"t": "0210", "2": PAN, "39": "00"})
    data = entry.as_dict()
    assert data["request"]["2"] == "411111******1111"
    assert data["answer"]["2"] == "411111******1111"
    for field in ("35", "45", "52"):
        assert data["request"][field] == "[redacted]"
    assert PAN not in repr(data) and "0123456789ABCDEF" not in repr(data)
    assert "p" not in data["request"]  # bitmaps say nothing
    assert data["outcome"] == journal_mod.ANSWERED and data["code"] == "00" and data["latency_ms"] >= 0


def test_the_journal_is_bounded_and_lists_newest_last():
    journal = Journal(3)
    for n in range(1, 6):
        journal.record(sale(f"{n:06d}"))
    assert [e.request["11"] for e in journal.entries()] == ["000003", "000004", "000005"]
    assert [e.request["11"] for e in journal.entries(limit=2)] == ["000004", "000005"]
    assert journal.clear() == 3 and len(journal) == 0
    assert len(Journal(0).entries()) == 0
    with pytest.raises(ConfigurationError):
        Journal(-1)


def test_queries_by_mti_field_rule_link_and_time():
    journal = Journal(10)
    first = journal.record(sale("000001"), link=1)
    first.decided_by(rules.parse([{"name": "declines", "code": "51"}]).rules[0])
    journal.record(sale("000002", mti="0100", **{"37": "RRN000000002"}), link=2)
    third = journal.record(sale("000003", mti="0400", **{"37": "RRN000000002"}), link=2)
    assert [e.seq for e in journal.entries(mti="0100")] == [2]
    assert [e.seq for e in journal.entries(fields={"37": "RRN000000002"})] == [2, 3]
    assert [e.seq for e in journal.entries(fields={"2": "411111******1111"})] == [1, 2, 3]  # masked values
    assert [e.seq for e in journal.entries(rule="declines")] == [1]
    assert [e.seq for e in journal.entries(rule="0")] == [1]  # or its position
    assert [e.seq for e in journal.entries(link=2)] == [2, 3]
    assert [e.seq for e in journal.entries(since=third.time)] == [3]
    assert [e.seq for e in journal.entries(until=first.time)] == [1]


def test_count_takes_a_match_written_as_in_a_rules_file():
    journal = Journal(10)
    journal.record(sale("000001", mti="0400", **{"37": "RRN1"}))
    journal.record(sale("000002", mti="0400", **{"37": "RRN2"}))
    journal.record(sale("000003", mti="0200", **{"37": "RRN1"}))
    assert journal.count(compile_match({"mti": "0400", "fields": {"37": "RRN1"}})) == 1
    assert journal.count(compile_match({"mti": ["0200", "0400"]})) == 3
    assert journal.count(compile_match({"pan_prefix": "411111"})) == 3  # up to 6 digits: masked PAN
    assert journal.count(compile_match({})) == 3
    with pytest.raises(ConfigurationError, match=r"key 'match.mti': '04' is not 4 digits"):
        compile_match({"mti": "04"})
    with pytest.raises(ConfigurationError, match=r"match.color"):
        compile_match({"color": "red"})


def test_latency_quantiles_come_from_answered_entries():
    journal = Journal(10)
    assert journal.latency_quantiles() == {"p50": None, "p90": None, "p99": None}
    for n in range(4):
        journal.record(sale(f"{n:06d}")).answered({"t": "0210", "39": "00"})
    journal.record(sale("000009")).ended(journal_mod.DROPPED)
    quantiles = journal.latency_quantiles()
    assert set(quantiles) == {"p50", "p90", "p99"} and all(v is not None and v >= 0 for v in quantiles.values())


def test_scenario_rules_apply_in_their_state_and_move_it():
    rule_set = rules.parse(
        [
            {"name": "first", "scenario": "auth", "state": STARTED, "new_state": "declined", "code": "00"},
            {"name": "second", "scenario": "auth", "state": "declined", "new_state": "approved", "code": "51"},
        ]
    )
    scenarios = Scenarios()
    codes = []
    for _ in range(3):
        rule = rule_set.match(sale(), scenarios.states)
        codes.append(rule.code if rule else None)
        if rule is not None:
            scenarios.fired(rule)
    assert codes == ["00", "51", None]
    assert scenarios.as_dict(rule_set) == {"auth": {"state": "approved", "states": [STARTED, "declined", "approved"]}}
    scenarios.set("auth", "declined")
    assert rule_set.match(sale(), scenarios.states).name == "second"
    scenarios.reset()
    assert scenarios.state("auth") == STARTED


def test_scenario_keys_are_checked_like_any_rule_key():
    with pytest.raises(ConfigurationError, match=r"rules\[0\], key 'state': a state needs a 'scenario'"):
        rules.parse([{"state": "x"}])
    with pytest.raises(ConfigurationError, match=r"key 'scenario': expected a non-empty string"):
        rules.parse([{"scenario": ""}])
    with pytest.raises(ConfigurationError, match=r"key 'enabled': expected true or false"):
        rules.parse([{"enabled": "no"}])


def test_a_disabled_rule_stays_listed_and_never_matches():
    rule_set = rules.parse([{"name": "off", "enabled": False, "code": "05"}, {"name": "on", "code": "51"}])
    assert len(rule_set) == 2
    assert rule_set.match(sale()).name == "on"
    assert rule_set.specs()[0] == {"name": "off", "enabled": False, "code": "05"}


def test_near_misses_list_the_closest_rules_and_what_they_missed():
    rule_set = rules.parse(
        [
            {"name": "far", "match": {"mti": "0100", "pan_prefix": "5555", "fields": {"41": "OTHER"}}},
            {"name": "close", "match": {"mti": "0200", "amount_above": 500000}},
            {"name": "stateful", "scenario": "auth", "state": "declined", "match": {"mti": "0200"}},
        ]
    )
    misses = Explainer(rule_set).explain(sale(), {})
    assert [m["name"] for m in misses] == ["close", "stateful", "far"]
    assert misses[0]["reasons"] == ["field 4 is 000000001000, not above 500000"]
    assert misses[1]["reasons"] == ["scenario 'auth' is in state 'Started', not 'declined'"]
    assert misses[2]["missed"] == 3
    assert "field 2 is 411111******1111, not from 5555" in misses[2]["reasons"]
    assert PAN not in repr(misses)
