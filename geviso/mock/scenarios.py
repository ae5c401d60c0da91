"""Scenario states of the mock host, as in WireMock's stateful scenarios. No I/O.

A rule with ``"scenario": "auth flow", "state": "Started"`` applies only while that
scenario is in that state, and one with ``"new_state": "declined"`` moves it there when
it fires. Every scenario starts in :data:`~geviso.mock.rules.STARTED`. So three rules give
"the first authorization approved, the second declined 51, then approved again".
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigurationError
from .rules import STARTED, Rule, RuleSet


class Scenarios:
    """Each scenario's current state (missing ones are in :data:`STARTED`)."""

    __slots__ = ("states",)

    def __init__(self) -> None:
        #: Scenario -> state, for the scenarios that left :data:`STARTED` or were set.
        self.states: dict[str, str] = {}

    def state(self, name: str) -> str:
        """The state ``name`` is in now."""
        return self.states.get(name, STARTED)

    def set(self, name: str, state: str) -> None:
        """Put scenario ``name`` in ``state``."""
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError("a scenario name is a non-empty string")
        if not isinstance(state, str) or not state.strip():
            raise ConfigurationError(f"scenario {name!r}: a state is a non-empty string")
        self.states[name] = state

    def fired(self, rule: Rule) -> None:
        """``rule`` decided a request: move its scenario if it says so."""
        if rule.new_state is not None and rule.scenario is not None:
            self.states[rule.scenario] = rule.new_state

    def reset(self) -> None:
        """Put every scenario back in :data:`STARTED`."""
        self.states.clear()

    def as_dict(self, rule_set: RuleSet) -> dict[str, dict[str, Any]]:
        """Every scenario the rules name or that was set: its state and the states the
        rules know for it, e.g. ``{"auth": {"state": "Started", "states": [...]}}``."""
        known: dict[str, list[str]] = {}
        for rule in rule_set:
            if rule.scenario is None:
                continue
            states = known.setdefault(rule.scenario, [STARTED])
            for state in (rule.state, rule.new_state):
                if state is not None and state not in states:
                    states.append(state)
        for name, state in self.states.items():
            states = known.setdefault(name, [STARTED])
            if state not in states:
                states.append(state)
        return {name: {"state": self.state(name), "states": states} for name, states in sorted(known.items())}

    def __repr__(self) -> str:
        return f"<Scenarios {self.states}>"


__all__ = ["STARTED", "Scenarios"]
