"""Bad rules files and mock-host options: a one-line error naming the rule and the key
(exit status 2 from the CLI), never a traceback; any JSON value is a RuleSet or a
ConfigurationError (fuzzed)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geviso
from geviso import cli
from geviso.errors import ConfigurationError
from geviso.mock import rules

JSON_LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["²", "٣", "0200", "00", "é1", "late", "drop", "close", "respond", "41", "4000"])
)
KEYS = st.sampled_from(sorted(rules.RULE_KEYS | rules.MATCH_KEYS)) | st.text(max_size=4)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=30,
)
# Documents shaped like rules, so the fuzz reaches every key's checks.
RULE_LIKE = st.dictionaries(
    st.sampled_from(sorted(rules.RULE_KEYS)),
    JSON_VALUES | st.dictionaries(st.sampled_from(sorted(rules.MATCH_KEYS)), JSON_VALUES, max_size=4),
    max_size=6,
)


def _rule_set_or_configuration_error(data):
    try:
        result = rules.parse(data, source="fuzz.json")
    except ConfigurationError as exc:
        text = str(exc)
        assert "\n" not in text and len(text) < 400
        return None
    assert isinstance(result, rules.RuleSet)
    for rule in result:  # what compiled must also run
        rule.matches({"t": "0200", "2": "4000123412341234", "4": "000000001000", "41": "T1"})
        assert 0 <= rule.delay_seconds() <= 86_400
    return result


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSON_VALUES | st.lists(RULE_LIKE, max_size=3) | st.fixed_dictionaries({"rules": st.lists(RULE_LIKE)}))
def test_any_json_value_is_a_rule_set_or_a_configuration_error(data):
    _rule_set_or_configuration_error(data)
    try:
        text = json.dumps(data)
    except ValueError:
        return
    try:
        rules.loads(text, source="fuzz.json")
    except ConfigurationError as exc:
        assert "\n" not in str(exc)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_is_a_rule_set_or_a_configuration_error(text):
    for fmt in ("json", "yaml"):
        try:
            rules.loads(text, fmt=fmt, source="fuzz")
        except ConfigurationError as exc:
            assert "\n" not in str(exc)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[{"name": "deep", "match": ' + "[" * 100_000 + "]" * 100_000 + "}]", "nested too deeply"),
        ('[{"name": "sup", "match": {"amount_above": "\u00b2"}}]', "rules[0] ('sup'), key 'match.amount_above'"),
        ('[{"name": "f", "match": {"fields": {"\u00b2": "1"}}}]', "rules[0] ('f'), key 'match.fields'"),
        ('[{"name": "f", "fields": {"\u00b2": "1"}}]', "rules[0] ('f'), key 'fields'"),
        ('[{"name": "big", "delay_ms": ' + "9" * 400 + "}]", "rules[0] ('big'), key 'delay_ms'"),
        ('[{"name": "nan", "action": "late", "delay_ms": NaN}]', "rules[0] ('nan'), key 'delay_ms'"),
        ('[{"name": "inf", "delay_ms": [0, Infinity]}]', "rules[0] ('inf'), key 'delay_ms'"),
        ('[{"name": "day", "delay_ms": 86400001}]', "rules[0] ('day'), key 'delay_ms'"),
        ('[{"name": "yes", "delay_ms": true}]', "rules[0] ('yes'), key 'delay_ms'"),
        ('[{"name": "mti", "match": {"mti": "\u00b2\u00b2\u00b2\u00b2"}}]', "rules[0] ('mti'), key 'match.mti'"),
        ('[{"name": "pan", "match": {"pan_prefix": "\u00b2"}}]', "rules[0] ('pan'), key 'match.pan_prefix'"),
        ('[{"name": "code", "code": "\u00e91"}]', "rules[0] ('code') code"),
        ('[{"name": "act", "action": ["late"]}]', "rules[0] ('act'), key 'action'"),
    ],
)
def test_a_bad_rules_file_is_one_line_naming_the_rule_and_the_key_and_exit_2(text, where, tmp_path, capsys):
    path = tmp_path / "rules.json"
    path.write_text(text, encoding="utf-8")
    assert cli.main(["mock-host", "--port", "0", "--rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("geviso mock-host: error: ")
    assert where in err, err


def test_a_deeply_nested_yaml_rules_file_is_a_configuration_error():
    pytest.importorskip("yaml")
    with pytest.raises(ConfigurationError, match="nested too deeply"):
        rules.loads("a: " + "[" * 1200, fmt="yaml")


def test_yaml_keys_that_are_not_strings_are_named_not_crashed_on():
    pytest.importorskip("yaml")
    with pytest.raises(ConfigurationError, match="unknown key"):
        rules.loads("- {1: 2, null: 3, name: x}", fmt="yaml")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "99999"], "--port must be 0..65535"),
        (["--port", "-1"], "--port must be 0..65535"),
        (["--echo-interval", "-1"], "--echo-interval must be seconds > 0"),
        (["--echo-interval", "nan"], "--echo-interval"),
        (["--echo-timeout", "inf"], "--echo-timeout"),
        (["--read-timeout", "-5"], "--read-timeout"),
        (["--max-echo-failures", "0"], "--max-echo-failures"),
        (["--response-code", "\u00e91"], "response_code '\u00e91' does not fit the spec: field 39"),
        (["--response-code", "000"], "expecting 2"),
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert '/nonexistent/cert.pem': no such file"),
    ],
)
def test_bad_mock_host_options_are_one_line_and_exit_2(args, words, capsys):
    assert cli.main(["mock-host", "--port", "0", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err


def test_a_missing_tls_key_or_client_ca_is_named(certs, capsys):
    for option in ("--tls-key", "--client-ca"):
        args = ["mock-host", "--port", "0", "--tls-cert", certs.server_cert, option, "/nonexistent/x.pem"]
        assert cli.main(args) == 2
        assert f"{option} '/nonexistent/x.pem': no such file" in capsys.readouterr().err


def test_help_documents_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["mock-host", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 2 a usage or configuration error" in out
    assert "1 a failure while running" in out
    for option in ("--read-timeout", "--max-echo-failures", "--echo-timeout"):
        assert option in out


def test_a_rule_code_or_field_the_spec_cannot_encode_stops_the_host_before_it_starts():
    from iso8583.specs import default as spec

    three = dict(spec)
    three["39"] = dict(spec["39"], max_len=3)
    with pytest.raises(ConfigurationError, match=r"response_code '00' does not fit the spec: field 39"):
        geviso.MockHost(("127.0.0.1", 0), three)
    codes = {"001": "000", "002": "000", "301": "000"}
    with pytest.raises(ConfigurationError, match=r"approval_codes '00' does not fit the spec"):
        geviso.MockHost(("127.0.0.1", 0), three, response_code="000", network_codes=codes)
    host = geviso.MockHost(("127.0.0.1", 0), three, response_code="000", network_codes=codes, approval_codes=["000"])
    with pytest.raises(ConfigurationError, match=r"rules\[0\] \('short'\) code '05' does not fit the spec: field 39"):
        host.rules = [{"name": "short", "code": "05"}]
    with pytest.raises(ConfigurationError, match=r"rules\[0\] fields.4 does not fit the spec: field 4"):
        geviso.MockHost(("127.0.0.1", 0), rules=[{"fields": {"4": "1" * 40}}])
