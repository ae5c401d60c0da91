"""A small client of the mock host's admin API, for tests (``geviso.mock.host.AdminClient``).

Standard library only (``urllib``), so a test suite needs nothing more than geviso::

    admin = AdminClient("http://127.0.0.1:8584")
    admin.add_rule({"match": {"mti": "0100"}, "code": "51"}, at=0)
    ...
    assert admin.count({"mti": "0400", "fields": {"37": rrn}}) == 1

Every method returns the API's JSON as plain data and raises
:class:`~geviso.errors.AdminError` (with ``status``) when the API refuses a request.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union
from urllib.parse import quote, urlencode

from ..errors import AdminError
from ..options import seconds

RuleKey = Union[int, str]


class AdminClient:
    """Calls one mock host's admin API at ``url`` (with ``token`` when it needs one)."""

    def __init__(self, url: str, *, token: Optional[str] = None, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = seconds(timeout, "timeout", positive=True)

    def request(self, method: str, path: str, body: Any = None, *, raw: bool = False) -> Any:
        """One call: ``body`` sent as JSON; the decoded JSON (the text with ``raw``) back."""
        data = json.dumps(body).encode("utf-8") if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token is not None:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            text = _in_thread(self._open, req)
            if isinstance(text, BaseException):
                raise text
        except urllib.error.HTTPError as exc:
            raw_error = exc.read().decode("utf-8", "replace")
            exc.close()
            try:
                message = json.loads(raw_error)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw_error.strip()[:200] or exc.reason
            raise AdminError(exc.code, f"{method} {path}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise AdminError(0, f"{method} {path}: cannot reach {self.url}: {exc}") from None
        return text if raw else json.loads(text)

    def _open(self, req: urllib.request.Request) -> Any:
        """The response's text, or the error (returned: a thread's error would be printed)."""
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return str(resp.read().decode("utf-8"))
        except Exception as exc:
            return exc

    # -- rules -----------------------------------------------------------------------------
    def rules(self) -> list[dict[str, Any]]:
        """Every rule: ``{"index", "name", "enabled", "hits", "rule"}``."""
        return list(self.request("GET", "/rules")["rules"])

    def add_rule(self, rule: Mapping[str, Any], at: Optional[int] = None) -> dict[str, Any]:
        """Add a rule (as in a rules file), last or at position ``at``."""
        query = f"?at={at}" if at is not None else ""
        return dict(self.request("POST", "/rules" + query, dict(rule)))

    def replace_rules(self, rules: Any) -> int:
        """Replace every rule with a rules document; how many there are now."""
        return int(self.request("PUT", "/rules", rules)["rules"])

    def reset_rules(self) -> int:
        """Back to the rules the host started with."""
        return int(self.request("POST", "/rules/reset")["rules"])

    def delete_rule(self, key: RuleKey) -> dict[str, Any]:
        """Delete a rule by position or name; returns it."""
        return dict(self.request("DELETE", f"/rules/{quote(str(key), safe='')}")["deleted"])

    def enable_rule(self, key: RuleKey, enabled: bool = True) -> None:
        """Enable or disable a rule."""
        self.request("PATCH", f"/rules/{quote(str(key), safe='')}", {"enabled": enabled})

    def move_rule(self, key: RuleKey, position: int) -> None:
        """Move a rule to ``position``."""
        self.request("PATCH", f"/rules/{quote(str(key), safe='')}", {"position": position})

    # -- journal ---------------------------------------------------------------------------
    def journal(self, *, fields: Optional[Mapping[str, str]] = None, **filters: Any) -> list[dict[str, Any]]:
        """Journal entries, newest last: filters ``mti``, ``rule``, ``link``, ``since``,
        ``until``, ``limit`` and ``fields`` (field -> masked value)."""
        return list(self.request("GET", "/journal" + _query(filters, fields))["entries"])

    def count(self, match: Optional[Mapping[str, Any]] = None, **filters: Any) -> int:
        """How many journal entries fit ``match`` (as a rule's ``match``) and the filters."""
        return int(self.request("POST", "/journal/count" + _query(filters, None), dict(match or {}))["count"])

    def clear_journal(self) -> int:
        """Forget the journal; how many entries it had."""
        return int(self.request("DELETE", "/journal")["cleared"])

    # -- scenarios -------------------------------------------------------------------------
    def scenarios(self) -> dict[str, Any]:
        """Scenario -> ``{"state": ..., "states": [...]}``."""
        return dict(self.request("GET", "/scenarios")["scenarios"])

    def set_scenario(self, name: str, state: str) -> None:
        """Put a scenario in a state."""
        self.request("PUT", f"/scenarios/{quote(name, safe='')}", {"state": state})

    def reset_scenarios(self) -> None:
        """Every scenario back to Started."""
        self.request("POST", "/scenarios/reset")

    # -- links -----------------------------------------------------------------------------
    def links(self) -> list[dict[str, Any]]:
        """The open links."""
        return list(self.request("GET", "/links")["links"])

    def close_link(self, link: int) -> None:
        """Close one link."""
        self.request("DELETE", f"/links/{int(link)}")

    def send(
        self, message: Mapping[str, str], link: Optional[int] = None, *, timeout: Optional[float] = None
    ) -> list[dict[str, Any]]:
        """Send a host-initiated message on one link (or all): ``[{"link", "answer"} or
        {"link", "error"}]``, answers masked."""
        body: dict[str, Any] = {"message": dict(message)}
        if timeout is not None:
            body["timeout"] = timeout
        path = "/links/send" if link is None else f"/links/{int(link)}/send"
        return list(self.request("POST", path, body)["results"])

    # -- stats -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The host's counters (as its exit line)."""
        return dict(self.request("GET", "/stats"))

    def metrics(self) -> str:
        """The counters as Prometheus text."""
        return str(self.request("GET", "/metrics", raw=True))

    def overview(self) -> dict[str, Any]:
        """Everything the live page shows."""
        return dict(self.request("GET", "/overview"))

    def __repr__(self) -> str:
        return f"<geviso.mock.host.AdminClient {self.url}>"


def _in_thread(func: Callable[..., Any], *args: Any) -> Any:
    """Run blocking ``func`` so a host in this very process keeps serving: in gevent's
    thread pool, unless sockets are monkey-patched (then they yield by themselves)."""
    import gevent
    import gevent.monkey

    if gevent.monkey.is_module_patched("socket"):
        return func(*args)
    return gevent.get_hub().threadpool.apply(func, args)


def _query(filters: Mapping[str, Any], fields: Optional[Mapping[str, str]]) -> str:
    pairs = [(k, str(v)) for k, v in filters.items() if v is not None]
    pairs += [(f"field.{k}", str(v)) for k, v in (fields or {}).items()]
    return "?" + urlencode(pairs) if pairs else ""


__all__ = ["AdminClient"]
