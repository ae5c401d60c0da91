"""The mock host's rules: which request gets which treatment. Pure logic, no I/O.

A rules document is a list of rules (or ``{"rules": [...]}``); the first rule whose
``match`` fits a request decides what the host does with it. A rule::

    {"name": "big amounts declined",          # optional, shown in errors
     "match": {"mti": ["0100", "0200"],       # any of these MTIs
               "pan_prefix": "4000",          # field 2 starts with (one or a list)
               "amount_above": 100000,        # field 4 > this (minor units)
               "amount_below": 500000,        # field 4 < this
               "fields": {"41": "TERM0001"}}, # any field equal to a value (or one of a list)
     "action": "respond",                     # respond (default), drop, close, late
     "code": "51",                            # field 39 of the answer
     "delay_ms": [50, 150],                   # fixed ms, or a random range
     "fields": {"44": "X"},                   # set in the answer
     "scenario": "auth flow",                 # only in this scenario's state...
     "state": "Started",                      # ...this one (every scenario starts in Started)
     "new_state": "declined once",            # and move the scenario there when it fires
     "enabled": true,                         # false: kept in the list, never matches
     "drop_first": 2}                         # leave a message's first 2 attempts unanswered

``drop`` never answers; ``close`` closes the link (after ``delay_ms`` if given);
``late`` answers after ``delay_ms`` (default :data:`DEFAULT_LATE_MS`, longer than a
client's default send timeout). ``drop_first`` leaves the first N attempts of each
message (its repeats included: same MTI class, STAN and terminal) unanswered, so a
sender's retransmissions can be shown. Rules are checked and compiled once, so matching a
request costs a few comparisons; a bad rule is a :class:`ConfigurationError` naming
the rule and the key.
"""

from __future__ import annotations

import copy
import json
import random as _random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, Optional

from ..errors import ConfigurationError
from ..options import MAX_SECONDS, number

RESPOND, DROP, CLOSE, LATE = "respond", "drop", "close", "late"
ACTIONS = (RESPOND, DROP, CLOSE, LATE)
#: How late a ``late`` answer is when the rule gives no ``delay_ms``: past the 30 s
#: default send timeout of a :class:`~geviso.Connection`.
DEFAULT_LATE_MS = 35_000

RULE_KEYS = frozenset(
    {"name", "match", "action", "code", "delay_ms", "fields", "scenario", "state", "new_state", "enabled", "drop_first"}
)
#: The state every scenario is in until a rule moves it (as in WireMock).
STARTED = "Started"
MATCH_KEYS = frozenset({"mti", "pan_prefix", "amount_above", "amount_below", "fields"})

Doc = Mapping[str, str]
Predicate = Callable[[Doc], bool]
#: The longest delay a rule may ask for, in ms: one day.
MAX_DELAY_MS = MAX_SECONDS * 1000
#: Integers with more digits than this are refused before ``str()`` (which has a limit).
_MAX_INT_DIGITS = 64


def _is_digits(text: str) -> bool:
    """ASCII digits only: ``"²".isdigit()`` is True, and ``int("²")`` fails."""
    return text.isascii() and text.isdigit()


def _small_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**_MAX_INT_DIGITS


def _unknown(keys: Any, known: frozenset[str]) -> list[str]:
    """Keys not in ``known``, as text, sorted (YAML keys may be numbers or None)."""
    return sorted(str(k) for k in keys if k not in known)


class Rule:
    """One compiled rule: its conditions and what to do when they all hold."""

    __slots__ = (
        "index",
        "name",
        "action",
        "code",
        "delay",
        "fields",
        "_tests",
        "spec",
        "scenario",
        "state",
        "new_state",
        "enabled",
        "hits",
        "drop_first",
    )

    def __init__(
        self,
        *,
        index: int = 0,
        name: str = "",
        action: str = RESPOND,
        code: Optional[str] = None,
        delay: Optional[tuple[float, float]] = None,
        fields: Optional[Mapping[str, str]] = None,
        tests: Sequence[Predicate] = (),
        spec: Optional[Mapping[str, Any]] = None,
        scenario: Optional[str] = None,
        state: Optional[str] = None,
        new_state: Optional[str] = None,
        enabled: bool = True,
        drop_first: int = 0,
    ) -> None:
        self.index = index
        self.name = name
        self.action = action
        #: Field 39 of the answer; None: the host's usual code.
        self.code = code
        #: Seconds to wait before acting, as ``(low, high)``; None: act at once.
        self.delay = delay
        #: Fields set in the answer (None when there are none).
        self.fields = dict(fields) if fields else None
        #: Attempts of each message left unanswered before the rule acts (0: none).
        self.drop_first = drop_first
        self._tests = tuple(tests)
        #: The rule as written (plain data), for listing and editing rules.
        self.spec: dict[str, Any] = dict(spec) if spec is not None else {}
        #: The scenario the rule belongs to, the state it needs (None: any) and the
        #: state it moves the scenario to when it fires (None: no move).
        self.scenario = scenario
        self.state = state
        self.new_state = new_state
        #: A disabled rule stays in the list and never matches.
        self.enabled = enabled
        #: Requests this rule decided (counted by the host).
        self.hits = 0

    def matches(self, doc: Doc) -> bool:
        """True when every condition of the rule holds for ``doc``."""
        for test in self._tests:
            if not test(doc):
                return False
        return True

    def delay_seconds(self, rng: Any = _random) -> float:
        """How long to wait before acting (0.0 for at once); ``rng`` draws in a range."""
        delay = self.delay
        if delay is None:
            return 0.0
        low, high = delay
        return low if low == high else float(rng.uniform(low, high))

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<Rule {self.index}{label} {self.action} code={self.code}>"


class RuleSet:
    """Rules in order; :meth:`match` returns the first that fits a request."""

    __slots__ = ("rules", "_enabled")

    def __init__(self, rules: Sequence[Rule] = ()) -> None:
        self.rules = tuple(rules)
        self._enabled = tuple(rule for rule in self.rules if rule.enabled)

    def match(self, doc: Doc, states: Optional[Mapping[str, str]] = None) -> Optional[Rule]:
        """The first enabled rule matching ``doc`` whose scenario (if any) is in the state it
        needs (``states``: scenario -> state, missing ones :data:`STARTED`), or None."""
        for rule in self._enabled:
            if rule.state is not None and (states or {}).get(rule.scenario or "", STARTED) != rule.state:
                continue
            if rule.matches(doc):
                return rule
        return None

    def specs(self) -> list[dict[str, Any]]:
        """The rules as written, in order: a rules document that compiles to this set."""
        return [dict(rule.spec) for rule in self.rules]

    def __len__(self) -> int:
        return len(self.rules)

    def __bool__(self) -> bool:
        return bool(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __repr__(self) -> str:
        return f"<RuleSet {len(self.rules)} rules>"


# -- checking and compiling ------------------------------------------------------------------
class _Where:
    """Names the place of a problem: ``rules[2] ("big amounts"), key 'delay_ms'``."""

    def __init__(self, source: str, index: int, name: str = "") -> None:
        self.source = source
        self.index = index
        self.name = name

    def error(self, key: str, problem: str) -> ConfigurationError:
        label = f" ({self.name!r})" if self.name else ""
        prefix = f"{self.source}: " if self.source else ""
        return ConfigurationError(f"{prefix}rules[{self.index}]{label}, key {key!r}: {problem}")


def _strings(value: Any, where: _Where, key: str, *, digits: Optional[int] = None) -> tuple[str, ...]:
    """One string or a non-empty list of strings, as a tuple."""
    items = [value] if isinstance(value, str) or _small_int(value) else value
    if not isinstance(items, list) or not items:
        raise where.error(key, "expected a string or a non-empty list of strings")
    out = []
    for item in items:
        if not (isinstance(item, str) or _small_int(item)):
            raise where.error(key, f"expected a string, got {type(item).__name__}")
        text = str(item)
        if digits is not None and (len(text) != digits or not _is_digits(text)):
            raise where.error(key, f"{text[:8]!r} is not {digits} digits")
        out.append(text)
    return tuple(out)


def _amount(value: Any, where: _Where, key: str) -> int:
    if not (_small_int(value) or isinstance(value, str)) or not _is_digits(str(value)) or len(str(value)) > 18:
        raise where.error(key, "expected a whole amount in minor units (e.g. 10000 for 100.00)")
    return int(value)


def _field_name(name: Any, where: _Where, key: str) -> str:
    text = str(name) if isinstance(name, str) or _small_int(name) else type(name).__name__
    if not (_is_digits(text) and len(text) <= 3 and 1 <= int(text) <= 192) and text not in ("t", "h"):
        raise where.error(key, f"{text[:8]!r} is not a field number")
    return text


def _amount_of(doc: Doc) -> Optional[int]:
    value = doc.get("4")
    if value is None or not _is_digits(value):
        return None
    return int(value)


def _compile_match(spec: Any, where: _Where) -> list[Predicate]:
    if not isinstance(spec, Mapping):
        raise where.error("match", "expected an object of conditions")
    unknown = _unknown(spec, MATCH_KEYS)
    if unknown:
        raise where.error(f"match.{unknown[0]}", f"unknown condition; use {', '.join(sorted(MATCH_KEYS))}")
    tests: list[Predicate] = []
    if "mti" in spec:
        tests.append(_field_test("t", frozenset(_strings(spec["mti"], where, "match.mti", digits=4))))
    if "pan_prefix" in spec:
        prefixes = _strings(spec["pan_prefix"], where, "match.pan_prefix")
        if not all(_is_digits(p) for p in prefixes):
            raise where.error("match.pan_prefix", "a PAN prefix is digits")
        tests.append(lambda doc: doc.get("2", "").startswith(prefixes))
    if "amount_above" in spec or "amount_below" in spec:
        above = _amount(spec["amount_above"], where, "match.amount_above") if "amount_above" in spec else None
        below = _amount(spec["amount_below"], where, "match.amount_below") if "amount_below" in spec else None
        tests.append(_amount_test(above, below))
    if "fields" in spec:
        wanted = spec["fields"]
        if not isinstance(wanted, Mapping) or not wanted:
            raise where.error("match.fields", "expected an object of field: value")
        for name, value in wanted.items():
            field = _field_name(name, where, "match.fields")
            tests.append(_field_test(field, frozenset(_strings(value, where, f"match.fields.{field}"))))
    return tests


def _field_test(field: str, values: frozenset[str]) -> Predicate:
    return lambda doc: doc.get(field) in values


def _amount_test(above: Optional[int], below: Optional[int]) -> Predicate:
    """Field 4 over ``above`` and under ``below`` (None: no bound), parsed once per request."""

    def test(doc: Doc) -> bool:
        amount = _amount_of(doc)
        if amount is None:
            return False
        return (above is None or amount > above) and (below is None or amount < below)

    return test


def _delay(value: Any, where: _Where) -> tuple[float, float]:
    def ms(item: Any) -> float:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise where.error("delay_ms", "expected milliseconds >= 0, or a [min, max] range of them")
        try:
            return number(item, "delay_ms", high=MAX_DELAY_MS, unit="milliseconds") / 1000.0
        except ConfigurationError:
            raise where.error("delay_ms", f"expected milliseconds >= 0 and <= {MAX_DELAY_MS:.0f} (one day)") from None

    if isinstance(value, list):
        if len(value) != 2:
            raise where.error("delay_ms", "a range is [min, max]")
        low, high = ms(value[0]), ms(value[1])
        if low > high:
            raise where.error("delay_ms", "a range is [min, max] with min <= max")
        return (low, high)
    seconds = ms(value)
    return (seconds, seconds)


def compile_rule(spec: Any, index: int = 0, *, source: str = "") -> Rule:
    """Check one rule (a dict as in the module docstring) and compile it."""
    where = _Where(source, index)
    if not isinstance(spec, Mapping):
        raise where.error("rule", f"expected an object, got {type(spec).__name__}")
    name = spec.get("name", "")
    if not isinstance(name, str):
        raise where.error("name", "expected a string")
    where.name = name
    unknown = _unknown(spec, RULE_KEYS)
    if unknown:
        raise where.error(unknown[0], f"unknown key; use {', '.join(sorted(RULE_KEYS))}")
    action = spec.get("action", RESPOND)
    if not isinstance(action, str) or action not in ACTIONS:
        shown = repr(action[:16]) if isinstance(action, str) else f"a {type(action).__name__}"
        raise where.error("action", f"{shown} is not one of {', '.join(ACTIONS)}")
    tests = _compile_match(spec.get("match", {}), where)
    code = None
    if "code" in spec:
        if action not in (RESPOND, LATE):
            raise where.error("code", f"a {action} rule sends no answer")
        code = _strings(spec["code"], where, "code")[0]
        if isinstance(spec["code"], list) or not 2 <= len(code) <= 3 or not code.isprintable():
            raise where.error("code", "a response code is two (or three) characters, e.g. \"05\"")
    fields = None
    if "fields" in spec:
        if action not in (RESPOND, LATE):
            raise where.error("fields", f"a {action} rule sends no answer")
        if not isinstance(spec["fields"], Mapping):
            raise where.error("fields", "expected an object of field: value")
        fields = {}
        for field_name, value in spec["fields"].items():
            field = _field_name(field_name, where, "fields")
            if field in ("t", "h", "39"):
                raise where.error("fields", f"field {field} is set by the host (use code for field 39)")
            if not (isinstance(value, str) or _small_int(value)):
                raise where.error(f"fields.{field}", "expected a string")
            fields[field] = str(value)
    delay = None
    if "delay_ms" in spec:
        if action == DROP:
            raise where.error("delay_ms", "a drop rule never acts, so it takes no delay")
        delay = _delay(spec["delay_ms"], where)
    elif action == LATE:
        delay = (DEFAULT_LATE_MS / 1000.0, DEFAULT_LATE_MS / 1000.0)
    scenario = _optional_text(spec, "scenario", where)
    state = _optional_text(spec, "state", where)
    new_state = _optional_text(spec, "new_state", where)
    if (state is not None or new_state is not None) and scenario is None:
        raise where.error("state" if state is not None else "new_state", "a state needs a 'scenario'")
    drop_first = 0
    if "drop_first" in spec:
        value = spec["drop_first"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise where.error("drop_first", "expected a whole number of attempts >= 0")
        if action not in (RESPOND, LATE):
            raise where.error("drop_first", f"a {action} rule sends no answer")
        drop_first = value
    enabled = spec.get("enabled", True)
    if not isinstance(enabled, bool):
        raise where.error("enabled", "expected true or false")
    return Rule(
        index=index,
        name=name,
        action=action,
        code=code,
        delay=delay,
        fields=fields,
        tests=tests,
        spec=copy.deepcopy(dict(spec)),
        scenario=scenario,
        state=state,
        new_state=new_state,
        enabled=enabled,
        drop_first=drop_first,
    )


def _optional_text(spec: Mapping[str, Any], key: str, where: _Where) -> Optional[str]:
    """A non-empty string under ``key``, or None when the key is absent."""
    if key not in spec:
        return None
    value = spec[key]
    if not isinstance(value, str) or not value.strip():
        raise where.error(key, "expected a non-empty string")
    return value


def parse(data: Any, *, source: str = "") -> RuleSet:
    """A :class:`RuleSet` from plain data: a list of rules or ``{"rules": [...]}``."""
    if isinstance(data, Mapping):
        extra = _unknown(data, frozenset({"rules"}))
        if extra or "rules" not in data:
            prefix = f"{source}: " if source else ""
            raise ConfigurationError(f"{prefix}a rules document is a list, or an object with one key 'rules'")
        data = data["rules"]
    if data is None:
        data = []
    if not isinstance(data, list):
        prefix = f"{source}: " if source else ""
        raise ConfigurationError(f"{prefix}'rules' must be a list of rules, got {type(data).__name__}")
    return RuleSet([compile_rule(item, i, source=source) for i, item in enumerate(data)])


def loads(text: str, *, fmt: str = "json", source: str = "") -> RuleSet:
    """A :class:`RuleSet` from JSON or YAML text (YAML needs PyYAML)."""
    prefix = f"{source}: " if source else ""
    if fmt == "yaml":
        try:
            import yaml
        except ImportError:
            raise ConfigurationError(f"{prefix}YAML rules need PyYAML (the yaml extra: pip install pyyaml)") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigurationError(f"{prefix}not valid YAML: {_one_line(exc)}") from exc
        except RecursionError:
            raise ConfigurationError(f"{prefix}not usable YAML: nested too deeply") from None
    elif fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{prefix}not valid JSON: {_one_line(exc)}") from exc
        except RecursionError:
            raise ConfigurationError(f"{prefix}not usable JSON: nested too deeply") from None
    else:
        raise ConfigurationError(f"{prefix}unknown rules format {fmt!r}; use json or yaml")
    return parse(data, source=source)


def _one_line(exc: BaseException) -> str:
    """A parser's error text on one line (YAML's spans several, with context marks)."""
    return " ".join(str(exc).split())[:300]


def format_of(path: str) -> str:
    """``yaml`` for ``.yaml``/``.yml`` files, else ``json``."""
    return "yaml" if path.lower().endswith((".yaml", ".yml")) else "json"


__all__ = [
    "ACTIONS",
    "CLOSE",
    "DEFAULT_LATE_MS",
    "DROP",
    "LATE",
    "RESPOND",
    "STARTED",
    "Rule",
    "RuleSet",
    "compile_rule",
    "format_of",
    "loads",
    "parse",
]
