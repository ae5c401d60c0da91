"""What a test or a person can do to a running mock host, as :class:`~geviso.MockHost` methods.

Rules: list, add (at a position), replace all, delete, enable or disable, move, reset to
the rules the host started with. Every change compiles a whole new
:class:`~geviso.mock.rules.RuleSet` and swaps it in one assignment, so it takes effect for
the next request on every link, and a bad rule changes nothing. Journal: query, count,
clear (see :mod:`geviso.mock.journal`). Scenarios: read and set states. Links: list, close,
send a host-initiated message. Stats as plain data and as Prometheus text.

The admin HTTP API (:mod:`geviso.mock.admin`) is a thin layer over these methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

from .. import masking
from ..connection import Connection, close_quietly
from ..errors import ConfigurationError, NotFound
from . import rules as rules_mod
from .journal import Entry, Journal, compile_match
from .nearmiss import Explainer
from .rules import Rule, RuleSet
from .scenarios import Scenarios

#: A rule is named by its position in the list or by its name.
RuleKey = Union[int, str]


def _prom_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class MockControl:
    """Operations on a running mock host; mixed into :class:`~geviso.MockHost`."""

    _rule_set: RuleSet
    _startup_rules: list[dict[str, Any]]
    _explainer: Optional[Explainer]
    _link_ids: dict[Connection, tuple[int, str, float]]
    journal: Optional[Journal]
    scenarios: Scenarios
    stats: Any
    connections: set[Connection]
    send_all: Callable[..., dict[Connection, Any]]  # Server.send_all
    _check_rule_set: Callable[[RuleSet], None]  # MockHost's spec check

    # -- rules ----------------------------------------------------------------------------
    def rule_list(self) -> list[dict[str, Any]]:
        """Every rule in order: ``{"index", "name", "enabled", "hits", "rule": as written}``."""
        return [
            {"index": r.index, "name": r.name, "enabled": r.enabled, "hits": r.hits, "rule": dict(r.spec)}
            for r in self._rule_set
        ]

    def _install(self, specs: Any, kept: Iterable[Optional[Rule]] = ()) -> RuleSet:
        """Compile ``specs`` (raises before changing anything) and swap the set in; each
        rule of ``kept`` (None for a new rule) gives its hit count to its successor."""
        rule_set = rules_mod.parse(specs)
        self._check_rule_set(rule_set)  # codes and fields the host's spec cannot encode
        for new, old in zip(rule_set.rules, kept):
            if old is not None:
                new.hits = old.hits
        self._rule_set = rule_set
        self._explainer = None
        return rule_set

    def _position(self, key: RuleKey) -> int:
        rules = self._rule_set.rules
        if isinstance(key, int) and not isinstance(key, bool):
            if 0 <= key < len(rules):
                return key
            raise NotFound(f"no rule at position {key} (there are {len(rules)})")
        for rule in rules:
            if rule.name and rule.name == key:
                return rule.index
        raise NotFound(f"no rule named {masking.escape(repr(str(key)), masking.ESCAPE_LIMIT)}")

    def add_rule(self, spec: Mapping[str, Any], at: Optional[int] = None) -> dict[str, Any]:
        """Insert a rule (a dict as in a rules file) at position ``at`` (default: last);
        returns it as :meth:`rule_list` shows it."""
        old = list(self._rule_set.rules)
        if at is None:
            at = len(old)
        if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= len(old):
            raise ConfigurationError(f"a rule's position is 0 to {len(old)}")
        specs: list[Any] = [r.spec for r in old]
        specs.insert(at, spec)
        kept: list[Optional[Rule]] = list(old)
        kept.insert(at, None)
        self._install(specs, kept)
        return self.rule_list()[at]

    def replace_rules(self, document: Any) -> int:
        """Replace every rule with a rules document (a list, or ``{"rules": [...]}``);
        hit counts start again. Returns how many rules there are now."""
        return len(self._install(document if isinstance(document, Mapping) else list(document)))

    def delete_rule(self, key: RuleKey) -> dict[str, Any]:
        """Remove one rule (by position or name); returns it as written."""
        at = self._position(key)
        old = list(self._rule_set.rules)
        gone = old.pop(at)
        self._install([r.spec for r in old], old)
        return dict(gone.spec)

    def enable_rule(self, key: RuleKey, enabled: bool = True) -> None:
        """Enable (or, with ``enabled=False``, disable) one rule; a disabled rule stays
        listed and never matches."""
        if not isinstance(enabled, bool):
            raise ConfigurationError("enabled is true or false")
        at = self._position(key)
        old = list(self._rule_set.rules)
        specs = [dict(r.spec) for r in old]
        if enabled:
            specs[at].pop("enabled", None)
        else:
            specs[at]["enabled"] = False
        self._install(specs, old)

    def move_rule(self, key: RuleKey, to: int) -> None:
        """Move one rule to position ``to`` (the others keep their order)."""
        at = self._position(key)
        old = list(self._rule_set.rules)
        if isinstance(to, bool) or not isinstance(to, int) or not 0 <= to < len(old):
            raise ConfigurationError(f"a rule's new position is 0 to {len(old) - 1}")
        old.insert(to, old.pop(at))
        self._install([r.spec for r in old], old)

    def reset_rules(self) -> int:
        """Back to the rules the host started with (hit counts start again)."""
        return len(self._install(list(self._startup_rules)))

    def explain(self, doc: Mapping[str, str]) -> list[dict[str, Any]]:
        """The rules that came closest to matching ``doc`` and why they did not."""
        explainer = self._explainer
        if explainer is None or explainer.rule_set is not self._rule_set:
            explainer = self._explainer = Explainer(self._rule_set)
        return explainer.explain(doc, self.scenarios.states)

    # -- journal ---------------------------------------------------------------------------
    def _journal(self) -> Journal:
        if self.journal is None:
            raise NotFound("this host keeps no journal (journal_size=0)")
        return self.journal

    def journal_entries(self, **filters: Any) -> list[Entry]:
        """Journal entries, newest last; filters as :meth:`geviso.mock.journal.Journal.entries`,
        and ``match`` may be a rule's ``match`` dict."""
        if "match" in filters and not isinstance(filters["match"], Rule) and filters["match"] is not None:
            filters["match"] = compile_match(filters["match"])
        return self._journal().entries(**filters)

    def journal_count(self, match: Optional[Mapping[str, Any]] = None, **filters: Any) -> int:
        """How many journal entries fit ``match`` (as a rule's ``match``) and the filters."""
        return len(self.journal_entries(match=match, **filters))

    def clear_journal(self) -> int:
        """Forget every journal entry; how many there were."""
        return self._journal().clear()

    # -- scenarios -------------------------------------------------------------------------
    def scenario_states(self) -> dict[str, dict[str, Any]]:
        """Each scenario's state and the states its rules know."""
        return self.scenarios.as_dict(self._rule_set)

    def set_scenario(self, name: str, state: str) -> None:
        """Put scenario ``name`` in ``state`` (for the next request on every link)."""
        self.scenarios.set(name, state)

    def reset_scenarios(self) -> None:
        """Every scenario back to ``Started``."""
        self.scenarios.reset()

    # -- links -----------------------------------------------------------------------------
    def link_list(self) -> list[dict[str, Any]]:
        """The open links: id, peer, seconds open, state and counters."""
        now = time.monotonic()
        out = []
        for conn in self.connections:
            link_id, peer, opened = self._link_ids.get(conn, (0, "", now))
            s = conn.stats
            out.append(
                {
                    "id": link_id,
                    "peer": peer,
                    "age": round(now - opened, 3),
                    "state": conn.state,
                    "received": s.inbound,
                    "answered": s.replies,
                    "sent": s.sent,
                    "matched": s.matched,
                    "timeouts": s.timeouts,
                    "errors": s.errors,
                }
            )
        return sorted(out, key=lambda link: int(link["id"]))

    def _link(self, link_id: int) -> Connection:
        for conn in self.connections:
            if self._link_ids.get(conn, (None,))[0] == link_id:
                return conn
        raise NotFound(f"no open link {link_id}")

    def close_link(self, link_id: int, timeout: float = 1.0) -> None:
        """Close one link gracefully (failed after ``timeout`` seconds)."""
        close_quietly(self._link(link_id), timeout)

    def send_to(
        self, doc: Mapping[str, str], link: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> dict[int, Any]:
        """Send a host-initiated request (an 0800 key change, a 0620 advice...) on link
        ``link``, or on every link when None, and wait for the answers: link id -> the
        answer, or the error it raised (an exception, never raised here)."""
        links = [self._link(link)] if link is not None else list(self.connections)
        results: dict[int, Any] = {}
        for conn, result in self.send_all(dict(doc), timeout=timeout, links=links).items():
            results[self._link_ids.get(conn, (0,))[0]] = result
        return results

    # -- stats -----------------------------------------------------------------------------
    def prometheus_text(self) -> str:
        """The stats in Prometheus' text format (``geviso_mock_*``)."""
        data = self.stats.as_dict()
        lines = []
        for name in self.stats.COUNTERS:
            metric = f"geviso_mock_{name}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {data[name]}"]
        for name in ("connections", "accepted", "refused", "pending"):
            kind = "counter" if name in ("accepted", "refused") else "gauge"
            metric = f"geviso_mock_{name}" + ("_total" if kind == "counter" else "")
            lines += [f"# TYPE {metric} {kind}", f"{metric} {data[name]}"]
        lines.append("# TYPE geviso_mock_responses_total counter")
        for code, n in sorted(data["codes"].items()):
            lines.append(f'geviso_mock_responses_total{{code="{_prom_label(code)}"}} {n}')
        lines.append("# TYPE geviso_mock_rule_hits_total counter")
        for rule in self._rule_set:
            label = _prom_label(rule.name or str(rule.index))
            lines.append(f'geviso_mock_rule_hits_total{{rule="{label}",index="{rule.index}"}} {rule.hits}')
        lines.append("# TYPE geviso_mock_scenario_state gauge")
        for name, info in self.scenario_states().items():
            for state in info["states"]:
                value = 1 if state == info["state"] else 0
                lines.append(
                    f'geviso_mock_scenario_state{{scenario="{_prom_label(name)}",state="{_prom_label(state)}"}} {value}'
                )
        return "\n".join(lines) + "\n"

    def overview(self, journal_limit: int = 20) -> dict[str, Any]:
        """Everything the live page shows, in one read."""
        journal = self.journal
        return {
            "time": time.time(),
            "stats": self.stats.as_dict(),
            "latency_ms": journal.latency_quantiles() if journal is not None else {},
            "links": self.link_list(),
            "rules": self.rule_list(),
            "scenarios": self.scenario_states(),
            "journal": [e.as_dict() for e in journal.entries(limit=journal_limit)] if journal is not None else [],
            "journal_size": journal.size if journal is not None else 0,
        }


__all__ = ["MockControl", "RuleKey"]
