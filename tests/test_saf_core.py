"""Store and forward's core, no I/O: repeat MTIs, the retry schedule, outcomes,
reversals and what put accepts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from geviso.errors import ConfigurationError
from geviso.saf.core import (
    DELIVERED,
    EXPIRE,
    RETRY,
    Entry,
    Policy,
    build_reversal,
    check_doc,
    dumps,
    is_repeat,
    loads,
    repeat_mti,
)

AUTH = {
    "t": "0100",
    "2": "4111111111111111",
    "3": "000000",
    "4": "000000001500",
    "7": "1207023400",
    "11": "000123",
    "22": "051",
    "32": "412345",
    "35": "4111111111111111=29121011000000000000",
    "37": "612345000001",
    "41": "TERM0001",
    "42": "MERCHANT0000001",
    "49": "840",
    "52": "0123456789ABCDEF",
}


@pytest.mark.parametrize(
    "mti, repeat", [("0400", "0401"), ("0420", "0421"), ("0220", "0221"), ("0120", "0121"), ("0401", "0401")]
)
def test_repeat_mti_makes_the_origin_digit_odd(mti, repeat):
    assert repeat_mti(mti) == repeat
    assert is_repeat(repeat) and (mti == repeat or not is_repeat(mti))


@given(st.from_regex(r"\A[0-9]{4}\Z"))
def test_repeat_mti_changes_only_the_last_digit_and_is_idempotent(mti):
    repeat = repeat_mti(mti)
    assert repeat[:3] == mti[:3] and int(repeat[3]) in (int(mti[3]), int(mti[3]) + 1)
    assert repeat_mti(repeat) == repeat and is_repeat(repeat)


def test_repeat_mti_refuses_garbage():
    with pytest.raises(ConfigurationError):
        repeat_mti("04x0")


def test_backoff_doubles_from_retry_wait_up_to_max_wait():
    policy = Policy(retry_wait=1.0, backoff=2.0, max_wait=10.0)
    assert [policy.wait(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert Policy(retry_wait=0.5, backoff=1.0, max_wait=0.5).wait(50) == 0.5
    assert policy.wait(10_000) == 10.0  # no overflow


@given(st.integers(1, 10_000), st.floats(0.01, 5), st.floats(1, 4))
def test_backoff_never_exceeds_max_wait_and_never_shrinks(attempts, wait, factor):
    policy = Policy(retry_wait=wait, backoff=factor, max_wait=wait * 100)
    assert wait <= policy.wait(attempts) <= wait * 100
    assert policy.wait(attempts + 1) >= policy.wait(attempts)


@pytest.mark.parametrize(
    "options",
    [{"retry_wait": 0}, {"retry_wait": 5, "max_wait": 1}, {"backoff": 0.5}, {"expire_after": 0}, {"max_attempts": 0}],
)
def test_bad_policies_are_refused(options):
    with pytest.raises(ConfigurationError):
        Policy(**options)


def test_any_answer_delivers_unless_accepted_codes_are_given():
    entry = Entry(id=1, doc={"t": "0420"}, attempts=1, created=100.0)
    assert Policy().decide(entry, {"t": "0430", "39": "96"}, 101.0).action == DELIVERED
    strict = Policy(accepted_codes=Policy.codes(["00"]))
    assert strict.decide(entry, {"t": "0430", "39": "00"}, 101.0).action == DELIVERED
    retry = strict.decide(entry, {"t": "0430", "39": "96"}, 101.0)
    assert retry.action == RETRY and retry.next_at == 102.0 and retry.code == "96"
    with pytest.raises(ConfigurationError):
        Policy.codes(["0"])


def test_expire_after_and_max_attempts_make_dead_letters_with_a_reason():
    old = Entry(id=1, doc={"t": "0420"}, attempts=1, created=0.0)
    decision = Policy(expire_after=60.0).decide(old, None, 61.0, "SendTimeout")
    assert decision.action == EXPIRE and "expired after 60s" in decision.reason and "SendTimeout" in decision.reason
    tried = Entry(id=2, doc={"t": "0420"}, attempts=3, created=0.0)
    assert Policy(max_attempts=3).decide(tried, {"t": "0430", "39": "91"}, 1.0).action == DELIVERED
    assert Policy(max_attempts=3).decide(tried, None, 1.0).reason == "no accepted answer after 3 attempts (no answer)"
    assert Policy(max_attempts=3, accepted_codes=frozenset({"00"})).decide(tried, {"39": "91"}, 1.0).reason == (
        "no accepted answer after 3 attempts (last answer 91)"
    )
    assert Policy(max_attempts=4).decide(tried, None, 1.0).action == RETRY


def test_the_first_transmission_keeps_the_mti_and_later_ones_use_the_repeat():
    entry = Entry(id=1, doc={"t": "0420", "11": "000001"}, attempts=1)
    assert entry.outgoing()["t"] == "0420"
    entry.attempts = 2
    assert entry.outgoing() == {"t": "0421", "11": "000001"}
    assert entry.doc["t"] == "0420"  # the stored message is left as it was


def test_a_reversal_carries_the_original_and_names_it_in_field_90():
    reversal = build_reversal(AUTH, stan="000124", transmitted="1207023500")
    assert reversal["t"] == "0400" and reversal["11"] == "000124" and reversal["39"] == "68"
    assert reversal["7"] == "1207023500"
    for field in ("2", "3", "4", "32", "37", "41", "42", "49"):
        assert reversal[field] == AUTH[field]
    assert "35" not in reversal and "52" not in reversal and "22" not in reversal
    assert reversal["90"] == "0100" + "000123" + "1207023400" + "00000412345" + "00000000000"
    assert len(reversal["90"]) == 42
    assert build_reversal({**AUTH, "t": "1100"}, stan="000001", reason="17")["t"] == "1400"
    assert build_reversal(AUTH, stan="000001", mti="0420")["t"] == "0420"


@pytest.mark.parametrize("bad", [{"t": "0100"}, {"11": "000001"}, {"t": "01", "11": "000001"}])
def test_a_reversal_needs_the_original_mti_and_stan(bad):
    with pytest.raises(ConfigurationError):
        build_reversal(bad, stan="000002")


@pytest.mark.parametrize(
    "doc, problem",
    [
        ({"t": "0430", "11": "000001"}, "response"),
        ({"t": "0421", "11": "000001"}, "repeat"),
        ({"11": "000001"}, "MTI"),
        ({"t": "0420", "4": 1000}, "dict of field"),
        ("0420", "dict of field"),
    ],
)
def test_check_doc_refuses_what_cannot_be_forwarded(doc, problem):
    with pytest.raises(ConfigurationError, match=problem):
        check_doc(doc)


def test_stored_text_round_trips():
    assert loads(dumps(AUTH)) == AUTH
    with pytest.raises(ValueError):
        loads("[1]")
