"""Store and forward without I/O: entries, the repeat MTI, the retry schedule, the
outcome of an attempt, and the reversal of a request.

Everything here is pure: the stores (:mod:`geviso.saf.sqlite`,
:mod:`geviso.saf.postgres`) persist :class:`Entry` rows, and the forwarder
(:mod:`geviso.saf.forwarder`) asks :class:`Policy` what to do after each attempt.
Times are wall-clock seconds (``time.time()``): entries outlive the process.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from ..codec import transmission_datetime
from ..errors import ConfigurationError
from ..masking import describe, mask_text
from ..options import MAX_SECONDS, number, seconds

#: Entry states: waiting to be (re)sent, or given up on (a dead letter, with a reason).
PENDING, DEAD = "pending", "dead"
STATES = (PENDING, DEAD)

#: Fields a reversal carries over from its original (when present): card, amounts,
#: dates, merchant and terminal, RRN and approval code. Never track data or PIN blocks.
REVERSAL_FIELDS = (
    "2", "3", "4", "5", "6", "9", "10", "12", "13", "15", "18", "19", "32", "33",
    "37", "38", "41", "42", "43", "49", "50", "51", "102", "103",
)  # fmt: skip
#: Reversal reason (field 39): "68", response received too late.
LATE_RESPONSE = "68"

#: The longest ``expire_after``: a year (a dead letter after that is surely a mistake).
MAX_EXPIRE_AFTER = 366 * MAX_SECONDS


def repeat_mti(mti: str) -> str:
    """The MTI of a retransmission: the origin digit made odd (0400 -> 0401, 0420 ->
    0421, 0220 -> 0221, 0120 -> 0121); a repeat MTI stays as it is."""
    if len(mti) != 4 or not mti.isdigit():
        raise ConfigurationError("an MTI is four digits")
    return mti[:3] + str(int(mti[3]) | 1)


def is_repeat(mti: str) -> bool:
    """True for a repeat MTI (odd origin digit: 0401, 0421...)."""
    return len(mti) == 4 and mti[3] in "13579"


def original_data(mti: str, stan: str, transmitted: str, acquirer: str = "", forwarder: str = "") -> str:
    """Field 90 of a reversal or completion: the original MTI, STAN, field 7, and the
    acquiring and forwarding institution ids, each zero-padded to 11 digits (42 in all)."""
    return f"{mti}{stan}{transmitted}{acquirer:0>11}{forwarder:0>11}"


def build_reversal(
    original: Mapping[str, str],
    *,
    reason: str = LATE_RESPONSE,
    stan: str,
    mti: Optional[str] = None,
    transmitted: Optional[str] = None,
) -> dict[str, str]:
    """The reversal of ``original``: MTI x400 of the original's version (or ``mti``),
    the fields of :data:`REVERSAL_FIELDS` it has, a new STAN and field 7, field 39 the
    reason, and field 90 naming the original (its MTI, STAN, field 7 and field 32/33)."""
    if not isinstance(original, Mapping):
        raise ConfigurationError("the original is a message: a dict of field -> str")
    orig_mti = original.get("t", "")
    if not isinstance(orig_mti, str) or len(orig_mti) != 4 or not orig_mti.isdigit():
        raise ConfigurationError("the original has no four-digit MTI (field t)")
    if "11" not in original:
        raise ConfigurationError("the original has no STAN (field 11): nothing names it for the host")
    if len(reason) != 2:
        raise ConfigurationError('a reversal reason is a two-character response code, e.g. "68"')
    doc = {k: original[k] for k in REVERSAL_FIELDS if k in original}
    doc["t"] = mti if mti is not None else orig_mti[0] + "400"
    doc["7"] = transmitted if transmitted is not None else transmission_datetime()
    doc["11"] = stan
    doc["39"] = reason
    doc["90"] = original_data(
        orig_mti, original["11"], original.get("7", "0" * 10), original.get("32", ""), original.get("33", "")
    )
    return doc


@dataclass
class Entry:
    """One stored message and where its forwarding stands.

    ``doc`` is the message exactly as stored (its first MTI); ``attempts`` counts the
    transmissions started (each recorded durably before the send, so after a crash the
    next one goes under the repeat MTI).
    """

    id: int
    doc: dict[str, str]
    state: str = PENDING
    attempts: int = 0
    created: float = 0.0
    next_at: float = 0.0
    reason: str = ""
    last_code: str = ""

    @property
    def mti(self) -> str:
        """The stored MTI (the first transmission's)."""
        return self.doc.get("t", "")

    def outgoing(self) -> dict[str, str]:
        """The message for the next transmission: as stored, under the repeat MTI once a
        transmission was started before (``attempts`` already counts this one)."""
        if self.attempts <= 1:
            return dict(self.doc)
        out = dict(self.doc)
        out["t"] = repeat_mti(out["t"])
        return out

    def age(self, now: float) -> float:
        """Seconds since it was stored."""
        return max(0.0, now - self.created)

    def __repr__(self) -> str:  # masked: an entry's repr reaches tracebacks and logs
        return (f"Entry(id={self.id}, {describe(self.doc)}, state={self.state}, attempts={self.attempts}, "
                f"reason={mask_text(self.reason)!r})")  # fmt: skip


def dumps(doc: Mapping[str, str]) -> str:
    """The stored text of a message (JSON, keys sorted)."""
    return json.dumps(dict(doc), sort_keys=True, separators=(",", ":"))


def loads(text: str) -> dict[str, str]:
    """A message from its stored text."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("a stored message is a JSON object")
    return {str(k): str(v) for k, v in data.items()}


def check_doc(doc: Any) -> dict[str, str]:
    """A plain copy of ``doc`` if it is a message a store can keep: str keys and values,
    a four-digit request MTI of a class that is stored and forwarded (not a response)."""
    if not isinstance(doc, Mapping):
        raise ConfigurationError("a message is a dict of field -> str")
    out: dict[str, str] = {}
    for key, value in doc.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigurationError("a message is a dict of field -> str")
        out[key] = value
    mti = out.get("t", "")
    if len(mti) != 4 or not mti.isdigit():
        raise ConfigurationError("the message has no four-digit MTI (field t)")
    if mti[2] in "13579":
        raise ConfigurationError(f"{mti} is a response; only requests and advices are stored and forwarded")
    if is_repeat(mti):
        raise ConfigurationError(f"store the original MTI, not the repeat {mti}: repeats are made when resent")
    return out


# -- what to do after an attempt ---------------------------------------------------------
DELIVERED, RETRY, EXPIRE = "delivered", "retry", "expire"


@dataclass(frozen=True)
class Decision:
    """What becomes of an entry after an attempt: ``action`` is DELIVERED, RETRY (at
    ``next_at``) or EXPIRE (dead letter, with ``reason``)."""

    action: str
    next_at: float = 0.0
    reason: str = ""
    code: str = ""


@dataclass(frozen=True)
class Policy:
    """When to retransmit and when to give up.

    After the n-th unanswered (or not accepted) attempt the next waits
    ``retry_wait * backoff ** (n - 1)`` seconds, at most ``max_wait``. An entry older
    than ``expire_after`` seconds, or that had ``max_attempts`` attempts, becomes a dead
    letter (None: no limit). ``accepted_codes``: the field 39 values that count as
    delivered (None: any answer).
    """

    retry_wait: float = 1.0
    backoff: float = 2.0
    max_wait: float = 60.0
    expire_after: Optional[float] = 24 * 3600.0
    max_attempts: Optional[int] = None
    accepted_codes: Optional[frozenset[str]] = field(default=None)

    def __post_init__(self) -> None:
        seconds(self.retry_wait, "retry_wait", positive=True)
        seconds(self.max_wait, "max_wait", positive=True)
        if self.expire_after is not None:  # a store may keep messages for weeks
            number(self.expire_after, "expire_after", low_open=True, high=MAX_EXPIRE_AFTER)
        number(self.backoff, "backoff", low=1.0, high=1000.0, unit="a factor")
        if self.retry_wait <= 0 or self.max_wait < self.retry_wait:
            raise ConfigurationError("retry_wait must be > 0 and max_wait >= retry_wait")
        if self.backoff < 1:
            raise ConfigurationError("backoff must be >= 1")
        if self.expire_after is not None and self.expire_after <= 0:
            raise ConfigurationError("expire_after must be > 0 seconds (or None)")
        attempts = self.max_attempts
        if attempts is not None and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
            raise ConfigurationError("max_attempts must be >= 1 (or None)")

    @staticmethod
    def codes(accepted: Optional[Iterable[str]]) -> Optional[frozenset[str]]:
        """``accepted_codes`` from any iterable of codes (None: any answer)."""
        if accepted is None:
            return None
        codes = frozenset(accepted) if isinstance(accepted, Iterable) and not isinstance(accepted, str) else None
        if not codes or not all(isinstance(c, str) and len(c) == 2 for c in codes):
            raise ConfigurationError('accepted_codes are two-character response codes, e.g. {"00"}')
        return codes

    def wait(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th attempt failed."""
        exponent = max(0, attempts - 1)
        wait = self.retry_wait
        for _ in range(min(exponent, 64)):
            wait *= self.backoff
            if wait >= self.max_wait:
                return self.max_wait
        return min(wait, self.max_wait)

    def expired(self, entry: Entry, now: float) -> str:
        """The reason ``entry`` may not be sent again, or "" if it may."""
        if self.expire_after is not None and entry.age(now) >= self.expire_after:
            return f"expired after {self.expire_after:g}s"
        if self.max_attempts is not None and entry.attempts >= self.max_attempts:
            return f"no accepted answer after {entry.attempts} attempts"
        return ""

    def decide(self, entry: Entry, response: Optional[Mapping[str, str]], now: float, error: str = "") -> Decision:
        """After an attempt of ``entry`` (already counted in ``attempts``) that got
        ``response`` (None: no answer, ``error`` says why)."""
        code = ""
        if response is not None:
            code = response.get("39", "")
            if self.accepted_codes is None or code in self.accepted_codes:
                return Decision(DELIVERED, code=code)
        why = self.expired(entry, now)
        if why:
            last = f"last answer {code or 'without a code'}" if response is not None else (error or "no answer")
            return Decision(EXPIRE, reason=f"{why} ({last})", code=code)
        return Decision(RETRY, next_at=now + self.wait(entry.attempts), code=code)


__all__ = [
    "DEAD",
    "DELIVERED",
    "EXPIRE",
    "LATE_RESPONSE",
    "PENDING",
    "RETRY",
    "REVERSAL_FIELDS",
    "STATES",
    "Decision",
    "Entry",
    "Policy",
    "build_reversal",
    "check_doc",
    "dumps",
    "is_repeat",
    "loads",
    "original_data",
    "repeat_mti",
]
