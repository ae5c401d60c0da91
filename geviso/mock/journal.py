"""The mock host's request journal: what it received and what it answered. No I/O.

Every request becomes an :class:`Entry` holding a masked copy of it (PAN as
``411111******1111``, track data, PIN block and other secrets redacted, through
:mod:`geviso.masking`), the link it came on, the rule that decided it and, once known,
the masked answer. The journal keeps the newest ``size`` entries (a bounded deque), so
a host under load holds a fixed amount of memory. Queries read entries newest last.

A journal query can take a ``match`` written as a rule's ``match``
(``{"mti": "0400", "fields": {"37": "123456789012"}}``): it is compiled by
:mod:`geviso.mock.rules` and so fails with the same errors. It runs against the masked
request, so a field 2 condition compares with the masked PAN, and ``pan_prefix`` finds
prefixes of up to 6 digits.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Optional

from ..errors import ConfigurationError
from ..masking import mask_doc, mask_field
from . import rules as rules_mod

#: Entries a journal keeps unless told otherwise.
DEFAULT_SIZE = 1000
#: Decoded-message keys left out of entries: the bitmaps say nothing a reader needs.
_SKIPPED = frozenset({"p", "1"})

#: What became of a request.
PENDING, ANSWERED, DROPPED, CLOSED, LOST, FAILED = "pending", "answered", "dropped", "closed", "lost", "failed"


def masked(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` safe to keep and show: masked, without bitmaps."""
    return mask_doc({k: v for k, v in doc.items() if k not in _SKIPPED})


class Entry:
    """One request the host received and what became of it."""

    __slots__ = (
        "seq",
        "time",
        "started",
        "link",
        "peer",
        "request",
        "rule",
        "rule_index",
        "outcome",
        "answer",
        "code",
        "latency",
        "near_misses",
    )

    def __init__(self, seq: int, request: dict[str, Any], *, link: Optional[int] = None, peer: str = "") -> None:
        self.seq = seq
        #: Wall-clock time it arrived (seconds since the epoch), and the monotonic one.
        self.time = time.time()
        self.started = time.monotonic()
        self.link = link
        self.peer = peer
        #: The masked request.
        self.request = request
        #: The rule that decided it (its name, or its position when it has none), if any.
        self.rule: Optional[str] = None
        self.rule_index: Optional[int] = None
        self.outcome = PENDING
        #: The masked answer, its field 39 and seconds from arrival to answer.
        self.answer: Optional[dict[str, Any]] = None
        self.code: Optional[str] = None
        self.latency: Optional[float] = None
        #: For a request no rule matched: the rules that came closest and why they missed.
        self.near_misses: Optional[list[dict[str, Any]]] = None

    @property
    def mti(self) -> str:
        """The request's MTI."""
        return str(self.request.get("t", ""))

    def decided_by(self, rule: rules_mod.Rule) -> None:
        """Note the rule that decided this request."""
        self.rule = rule.name or str(rule.index)
        self.rule_index = rule.index

    def answered(self, answer: Mapping[str, Any], request: Optional[Mapping[str, Any]] = None) -> None:
        """Note the answer written (masked here). Fields the answer took from ``request``
        (the same objects) reuse their masked copies in :attr:`request`."""
        if request is None:
            self.answer = masked(answer)
        else:
            shown = self.request
            self.answer = {
                k: shown[k] if k in shown and request.get(k) is v else mask_field(k, v)
                for k, v in answer.items()
                if k not in _SKIPPED
            }
        self.code = str(answer.get("39", "")) or None
        self.outcome = ANSWERED
        self.latency = time.monotonic() - self.started

    def ended(self, outcome: str) -> None:
        """Note that the request ended without an answer (dropped, closed, lost, failed)."""
        self.outcome = outcome
        self.latency = time.monotonic() - self.started

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready); ``latency_ms`` is None until the request ends."""
        return {
            "seq": self.seq,
            "time": self.time,
            "link": self.link,
            "peer": self.peer,
            "mti": self.mti,
            "request": dict(self.request),
            "rule": self.rule,
            "rule_index": self.rule_index,
            "outcome": self.outcome,
            "answer": dict(self.answer) if self.answer is not None else None,
            "code": self.code,
            "latency_ms": round(self.latency * 1000.0, 3) if self.latency is not None else None,
            "near_misses": self.near_misses,
        }

    def __repr__(self) -> str:
        return f"<Entry {self.seq} {self.mti} link={self.link} {self.outcome} code={self.code}>"


def compile_match(spec: Any, *, source: str = "match") -> rules_mod.Rule:
    """A rule that holds the conditions ``spec`` (a rule's ``match``) and does nothing
    else; raises :class:`ConfigurationError` with a rules file's message when it is bad."""
    return rules_mod.compile_rule({"match": spec if spec is not None else {}}, source=source)


class Journal:
    """The newest ``size`` entries, newest last; ``size`` 0 keeps none."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ConfigurationError("the journal size is a whole number of entries >= 0")
        self.size = size
        self._entries: deque[Entry] = deque(maxlen=size)
        self._seq = itertools.count(1)

    def record(self, doc: Mapping[str, Any], *, link: Optional[int] = None, peer: str = "") -> Entry:
        """A new entry for the request ``doc`` (masked here), kept as the newest."""
        entry = Entry(next(self._seq), masked(doc), link=link, peer=peer)
        self._entries.append(entry)
        return entry

    def entries(
        self,
        *,
        mti: Optional[str] = None,
        fields: Optional[Mapping[str, str]] = None,
        rule: Optional[str] = None,
        link: Optional[int] = None,
        since: Optional[float] = None,
        until: Optional[float] = None,
        match: Optional[rules_mod.Rule] = None,
        limit: Optional[int] = None,
    ) -> list[Entry]:
        """Entries that pass every filter given, newest last (the newest ``limit`` of them).

        ``fields`` compares masked values; ``rule`` is a rule's name or position;
        ``since``/``until`` are epoch seconds (inclusive); ``match`` is from
        :func:`compile_match`.
        """
        found = [e for e in self._entries if _passes(e, mti, fields, rule, link, since, until, match)]
        if limit is not None:
            found = found[-limit:] if limit > 0 else []
        return found

    def count(self, match: Optional[rules_mod.Rule] = None, **filters: Any) -> int:
        """How many entries pass ``match`` and the filters of :meth:`entries`."""
        return len(self.entries(match=match, **filters))

    def clear(self) -> int:
        """Forget every entry; how many there were."""
        n = len(self._entries)
        self._entries.clear()
        return n

    def latency_quantiles(self, quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, Optional[float]]:
        """Answer latency (ms) quantiles over the answered entries kept, e.g. ``{"p50": 1.2}``."""
        values = sorted(e.latency for e in self._entries if e.outcome == ANSWERED and e.latency is not None)
        out: dict[str, Optional[float]] = {}
        for q in quantiles:
            label = f"p{q * 100:g}"
            if not values:
                out[label] = None
                continue
            out[label] = round(values[min(len(values) - 1, int(q * len(values)))] * 1000.0, 3)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries))

    def __repr__(self) -> str:
        return f"<Journal {len(self._entries)}/{self.size}>"


def _passes(
    entry: Entry,
    mti: Optional[str],
    fields: Optional[Mapping[str, str]],
    rule: Optional[str],
    link: Optional[int],
    since: Optional[float],
    until: Optional[float],
    match: Optional[rules_mod.Rule],
) -> bool:
    if mti is not None and entry.mti != mti:
        return False
    if fields and any(entry.request.get(k) != v for k, v in fields.items()):
        return False
    if rule is not None and rule not in (entry.rule, str(entry.rule_index)):
        return False
    if link is not None and entry.link != link:
        return False
    if since is not None and entry.time < since:
        return False
    if until is not None and entry.time > until:
        return False
    return match is None or match.matches(entry.request)


__all__ = [
    "ANSWERED",
    "CLOSED",
    "DEFAULT_SIZE",
    "DROPPED",
    "FAILED",
    "LOST",
    "PENDING",
    "Entry",
    "Journal",
    "compile_match",
    "masked",
]
