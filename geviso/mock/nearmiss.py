"""Why no rule matched a request: the rules that came closest, and what they missed. No I/O.

Each rule's ``match`` is split into its conditions (the MTI, the PAN prefix, the amount
band, each field), each compiled alone by :mod:`geviso.mock.rules`, once per rule set. For a
request no rule took, :meth:`Explainer.explain` counts the conditions each rule missed
and names them, closest rules first. Values are shown masked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Optional

from ..masking import mask_field
from . import rules as rules_mod

#: Near misses a journal entry lists at most.
DEFAULT_LIMIT = 3

_Reason = Callable[[Mapping[str, str]], str]


def _listed(field: str, value: Any) -> str:
    values = value if isinstance(value, list) else [value]
    return " or ".join(str(mask_field(field, str(v))) for v in values)


def _shown(doc: Mapping[str, str], field: str) -> str:
    return str(mask_field(field, doc[field])) if field in doc else "missing"


def _conditions(rule: rules_mod.Rule) -> list[tuple[rules_mod.Rule, _Reason]]:
    """One (rule holding that condition alone, reason it fails) per condition of ``rule``."""
    spec = rule.spec.get("match") or {}
    out: list[tuple[rules_mod.Rule, _Reason]] = []

    def add(part: dict[str, Any], reason: _Reason) -> None:
        out.append((rules_mod.compile_rule({"match": part}), reason))

    if "mti" in spec:
        wanted = _listed("t", spec["mti"])
        add({"mti": spec["mti"]}, lambda doc: f"MTI is {_shown(doc, 't')}, not {wanted}")
    if "pan_prefix" in spec:
        prefixes = _listed("t", spec["pan_prefix"])
        add({"pan_prefix": spec["pan_prefix"]}, lambda doc: f"field 2 is {_shown(doc, '2')}, not from {prefixes}")
    if "amount_above" in spec or "amount_below" in spec:
        band = {k: spec[k] for k in ("amount_above", "amount_below") if k in spec}
        bounds = " and ".join(f"{k.split('_')[1]} {v}" for k, v in band.items())
        add(band, lambda doc: f"field 4 is {_shown(doc, '4')}, not {bounds}")
    for field, value in (spec.get("fields") or {}).items():
        add({"fields": {str(field): value}}, _field_reason(str(field), _listed(str(field), value)))
    return out


def _field_reason(field: str, wanted: str) -> _Reason:
    return lambda doc: f"field {field} is {_shown(doc, field)}, not {wanted}"


class Explainer:
    """Explains misses against one :class:`~geviso.mock.rules.RuleSet` (build one per set)."""

    def __init__(self, rule_set: rules_mod.RuleSet, *, limit: int = DEFAULT_LIMIT) -> None:
        self.rule_set = rule_set
        self.limit = limit
        self._conditions = [(rule, _conditions(rule)) for rule in rule_set.rules]

    def explain(self, doc: Mapping[str, str], states: Optional[Mapping[str, str]] = None) -> list[dict[str, Any]]:
        """The ``limit`` rules that missed ``doc`` by the fewest conditions, each as
        ``{"rule": position, "name": ..., "missed": n, "reasons": [...]}``."""
        states = states or {}
        scored = []
        for rule, conditions in self._conditions:
            reasons = [reason(doc) for test, reason in conditions if not test.matches(doc)]
            if rule.state is not None:
                now = states.get(rule.scenario or "", rules_mod.STARTED)
                if now != rule.state:
                    reasons.append(f"scenario {rule.scenario!r} is in state {now!r}, not {rule.state!r}")
            if not rule.enabled:
                reasons.append("the rule is disabled")
            if reasons:
                scored.append((len(reasons), rule.index, rule.name, reasons))
        scored.sort(key=lambda item: (item[0], item[1]))
        return [
            {"rule": index, "name": name, "missed": n, "reasons": reasons}
            for n, index, name, reasons in scored[: self.limit]
        ]


__all__ = ["DEFAULT_LIMIT", "Explainer"]
