"""What a replayed request changes, and how its answer is compared. Pure logic, no I/O.

:class:`Refresher` gives each recorded request a fresh STAN (field 11) and RRN (37),
and moves its dates (7, 12, 13) forward by the time since it was recorded, so a host
sees new transactions. A recorded RRN maps to the same fresh RRN every time (a
reversal keeps its original's RRN), and field 90 of a reversal or completion is
rewritten to name the fresh STAN and date of its original.

:class:`DiffReport` counts how the answers differ from the recorded ones: another
response code (field 39), another MTI, another value in chosen fields, no answer where
one was recorded; it keeps the first examples, masked.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from .. import masking
from ..codec import Message
from ..rrn import RrnGenerator
from ..stan import StanGenerator

#: How many recorded STANs and RRNs are remembered for follow-ups (reversals, completions).
REMEMBERED = 100_000
_DATES = ("7", "12", "13")
#: How many differing answers a report shows.
EXAMPLES = 5


def _shift_datetime(value: str, delta: int, year: int, month: int) -> str:
    """Field 7 (MMDDhhmmss) ``delta`` seconds later; ``year``/``month``: when it was recorded."""
    mon = int(value[0:2])
    if mon > month + 6:  # recorded in January, the field says December
        year -= 1
    elif mon < month - 6:
        year += 1
    epoch = calendar.timegm((year, mon, int(value[2:4]), int(value[4:6]), int(value[6:8]), int(value[8:10])))
    t = time.gmtime(epoch + delta)
    return "%02d%02d%02d%02d%02d" % (t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec)


def _valid(value: Optional[str], length: int) -> bool:
    return value is not None and len(value) == length and value.isdigit()


def shift_dates(doc: Message, delta: int, recorded: float) -> None:
    """Move fields 7, 12 and 13 of ``doc`` (in place) ``delta`` seconds on; values that
    are not dates are left as they are."""
    if delta == 0:
        return
    then = time.gmtime(recorded)
    year, month = then.tm_year, then.tm_mon
    try:
        if _valid(doc.get("7"), 10):
            doc["7"] = _shift_datetime(doc["7"], delta, year, month)
        local_time, local_date = doc.get("12"), doc.get("13")
        if _valid(local_time, 6) and _valid(local_date, 4):
            moved = _shift_datetime(f"{local_date}{local_time}", delta, year, month)
            doc["13"], doc["12"] = moved[:4], moved[4:]
        elif _valid(local_time, 6):
            moved = _shift_datetime(f"0101{local_time}", delta, 2000, 1)
            doc["12"] = moved[4:]
    except (ValueError, OverflowError):
        pass  # not a calendar date (day 31 of a 30-day month...): keep the recorded value


class Refresher:
    """Fresh STANs, RRNs and dates for recorded requests (see the module docstring)."""

    def __init__(self, stan: Optional[StanGenerator] = None, rrn: Optional[RrnGenerator] = None) -> None:
        self.stan = stan if stan is not None else StanGenerator()
        self.rrn = rrn if rrn is not None else RrnGenerator()
        self._stans: dict[str, str] = {}
        self._rrns: dict[str, str] = {}
        self._sent_at: dict[str, str] = {}  # recorded field 7 -> the one sent
        self._moved: dict[tuple[Any, ...], tuple[Optional[str], ...]] = {}

    def refresh(self, request: Mapping[str, str], recorded: float, now: Optional[float] = None) -> Message:
        """A copy of ``request`` (recorded at ``recorded``, Unix seconds) to send ``now``."""
        doc = dict(request)
        old_stan = doc.get("11")
        if old_stan is not None:
            doc["11"] = self._remember(self._stans, old_stan, self.stan.next())
        old_rrn = doc.get("37")
        if old_rrn is not None:
            fresh = self._rrns.get(old_rrn)
            doc["37"] = fresh if fresh is not None else self._remember(self._rrns, old_rrn, self.rrn.next())
        delta = int(round((time.time() if now is None else now) - recorded))
        old_date = doc.get("7")
        self._shift(doc, delta, recorded)
        if old_date is not None:
            self._remember(self._sent_at, old_date, doc["7"])
        original = doc.get("90")
        if original is not None and len(original) >= 20:
            stan = self._stans.get(original[4:10], original[4:10])
            sent_at = self._sent_at.get(original[10:20])
            if sent_at is None:
                moved = {"7": original[10:20]}
                shift_dates(moved, delta, recorded)
                sent_at = moved["7"]
            doc["90"] = original[:4] + stan + sent_at + original[20:]
        return doc

    def _shift(self, doc: Message, delta: int, recorded: float) -> None:
        """:func:`shift_dates`, each result kept: many requests share their dates and delta."""
        dates = (doc.get("7"), doc.get("12"), doc.get("13"))
        if dates == (None, None, None):
            return
        key = (*dates, delta, int(recorded) // 86400)
        moved = self._moved.get(key)
        if moved is None:
            shifted = {name: value for name, value in zip(_DATES, dates) if value is not None}
            shift_dates(shifted, delta, recorded)
            moved = (shifted.get("7"), shifted.get("12"), shifted.get("13"))
            if len(self._moved) >= 4096:
                self._moved.clear()
            self._moved[key] = moved
        for name, value in zip(_DATES, moved):
            if value is not None:
                doc[name] = value

    @staticmethod
    def _remember(seen: dict[str, str], old: str, fresh: str) -> str:
        if len(seen) >= REMEMBERED:
            del seen[next(iter(seen))]  # the oldest
        seen[old] = fresh
        return fresh


def _shown(name: str, value: Optional[str]) -> Any:
    return None if value is None else masking.mask_field(name, value)


class DiffReport:
    """How replayed answers compare with the recorded ones.

    ``fields`` are compared besides the MTI and field 39. :meth:`as_dict` and
    :meth:`merge` carry a report between processes.
    """

    def __init__(self, fields: Iterable[str] = (), examples: int = EXAMPLES) -> None:
        self.fields = tuple(name for name in fields if name not in ("t", "39"))
        self.max_examples = examples
        self.compared = 0  # answers compared (a recorded answer and a replayed one)
        self.same = 0
        self.code = 0  # another field 39 (or MTI)
        self.other_fields = 0  # the same code, another value in a chosen field
        self.by_field: dict[str, int] = {}
        self.unanswered = 0  # an answer was recorded, none came
        self.unexpected = 0  # none was recorded, one came
        self.examples: list[dict[str, Any]] = []

    def check(self, recorded: Optional[Mapping[str, str]], got: Optional[Mapping[str, str]],
              request: Optional[Mapping[str, str]] = None) -> bool:
        """Count one answer (None: none came or none was recorded); True if it matches."""
        if recorded is None or got is None:
            if recorded is None and got is None:
                self.same += 1
                return True
            if got is None:
                self.unanswered += 1
            else:
                self.unexpected += 1
            self._example(request, recorded, got, ["answer"])
            return False
        self.compared += 1
        differ = [name for name in ("t", "39") if recorded.get(name) != got.get(name)]
        code = bool(differ)
        differ += [name for name in self.fields if recorded.get(name) != got.get(name)]
        if not differ:
            self.same += 1
            return True
        if code:
            self.code += 1
        else:
            self.other_fields += 1
        for name in differ:
            self.by_field[name] = self.by_field.get(name, 0) + 1
        self._example(request, recorded, got, differ)
        return False

    def _example(self, request: Optional[Mapping[str, str]], recorded: Optional[Mapping[str, str]],
                 got: Optional[Mapping[str, str]], differ: list[str]) -> None:
        if len(self.examples) >= self.max_examples:
            return
        request = request or {}
        self.examples.append({
            "mti": request.get("t", "?"),
            "stan": request.get("11"),
            "pan": _shown("2", request.get("2")),
            "fields": differ,
            "recorded": None if recorded is None else {n: _shown(n, recorded.get(n)) for n in differ if n != "answer"},
            "got": None if got is None else {n: _shown(n, got.get(n)) for n in differ if n != "answer"},
        })

    @property
    def differ(self) -> int:
        """Answers that differ in any way."""
        return self.code + self.other_fields + self.unanswered + self.unexpected

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return {
            "compared": self.compared,
            "same": self.same,
            "differ": self.differ,
            "code": self.code,
            "other_fields": self.other_fields,
            "by_field": dict(self.by_field),
            "unanswered": self.unanswered,
            "unexpected": self.unexpected,
            "examples": list(self.examples),
        }

    def merge(self, data: Mapping[str, Any]) -> None:
        """Add another report's :meth:`as_dict`."""
        for name in ("compared", "same", "code", "other_fields", "unanswered", "unexpected"):
            setattr(self, name, getattr(self, name) + int(data.get(name, 0)))
        for name, n in data.get("by_field", {}).items():
            self.by_field[name] = self.by_field.get(name, 0) + int(n)
        room = self.max_examples - len(self.examples)
        self.examples.extend(list(data.get("examples", []))[: max(0, room)])

    def lines(self) -> list[str]:
        """The report as text: one summary line, then the examples."""
        total = self.same + self.differ
        fields = ",".join(f"{n}:{c}" for n, c in sorted(self.by_field.items())) or "-"
        out = [
            f"{self.differ} of {total} answers differ from the recording: response code or MTI {self.code}, "
            f"other fields {self.other_fields}, no answer {self.unanswered}, unexpected answer {self.unexpected} "
            f"(by field {fields})"
        ]
        for i, ex in enumerate(self.examples, 1):
            if ex["fields"] == ["answer"]:
                what = "recorded an answer, got none" if ex["got"] is None else "recorded no answer, got one"
            else:
                what = ", ".join(f"{n} recorded {ex['recorded'].get(n)!s} got {ex['got'].get(n)!s}"
                                 for n in ex["fields"])
            pan = f" pan {ex['pan']}" if ex.get("pan") else ""
            out.append(f"  example {i}: {ex['mti']} stan {ex['stan']}{pan}: {what}")
        return out


__all__ = ["DiffReport", "Refresher", "shift_dates"]
