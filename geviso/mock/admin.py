"""The mock host's admin HTTP API and live page: a thin JSON layer over its methods.

Served in the host's process by gevent's WSGI server (``geviso mock-host --admin
127.0.0.1:8584``). Every route calls one :class:`~geviso.mock.control.MockControl`
method::

    GET    /rules                     the rules, with positions and hit counts
    POST   /rules[?at=N]              add a rule (a rules file's rule), last or at N
    PUT    /rules                     replace every rule (a rules document)
    POST   /rules/reset               back to the rules the host started with
    PATCH  /rules/{pos|name}          {"enabled": false} and/or {"position": 0}
    DELETE /rules/{pos|name}          delete one rule
    GET    /journal?mti=&field.41=&rule=&link=&since=&until=&limit=
    POST   /journal/count             {"count": n} of entries fitting a match (as a rule's)
    DELETE /journal                   clear it
    GET    /scenarios                 states; PUT /scenarios/{name} {"state": ...}
    POST   /scenarios/reset           every scenario back to Started
    GET    /links                     open links; DELETE /links/{id} closes one
    POST   /links/{id}/send, /links/send   {"message": {...}, "timeout": 5}: the answers
    GET    /stats, /metrics (Prometheus text), /overview (what the page shows)
    GET    /                          the live page (files served from the package)

Bad input (malformed JSON, unknown keys, a bad rule or match) gets HTTP 400 with a
rules file's one-line error and changes nothing. The journal holds (masked) card data,
so a non-loopback address needs a token, then every API call must carry it as
``Authorization: Bearer TOKEN``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import mimetypes
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote

import gevent.pywsgi

from ..connection import Address, parse_address
from ..errors import AdminError, ConfigurationError, NotFound
from ..masking import mask_text
from ..options import seconds
from .journal import masked

log = logging.getLogger(__name__)

#: Where ``--admin`` listens unless told otherwise.
DEFAULT_ADDRESS = ("127.0.0.1", 8584)
#: Largest request body read (bytes).
MAX_BODY = 1 << 20
#: Package directory of the live page's files.
STATIC_PACKAGE = "geviso.mock.admin_static"
#: Seconds a host-initiated message waits for its answer unless the call says otherwise.
SEND_TIMEOUT = 5.0
#: Journal entries the live page shows.
PAGE_JOURNAL = 25

StartResponse = Callable[..., Any]


_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(address: Address, token: Optional[str]) -> tuple[str, int]:
    """The admin address as (host, port); a non-loopback one without a token is refused
    (:class:`ConfigurationError`): the journal holds masked card data and the API steers
    the host."""
    host, port = parse_address(address)
    if token is not None and not token.strip():
        raise ConfigurationError("the admin token must not be empty")
    if not is_loopback(host) and token is None:
        raise ConfigurationError(f"the admin API listens on {host} only with a token (--admin-token)")
    return host, port


def _json_body(environ: Mapping[str, Any]) -> Any:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise AdminError(400, "bad Content-Length") from None
    if length > MAX_BODY:
        raise AdminError(413, f"the body is over {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    if not raw.strip():
        raise AdminError(400, "expected a JSON body")

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AdminError(400, f"not valid JSON: {exc}") from None


def _object(body: Any, allowed: Iterable[str], what: str) -> dict[str, Any]:
    """``body`` as an object with only ``allowed`` keys."""
    if not isinstance(body, dict):
        raise AdminError(400, f"{what}: expected a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise AdminError(400, f"{what}: unknown key {unknown[0]!r}; use {', '.join(sorted(allowed))}")
    return body


def _int(value: str, what: str) -> int:
    if not value.isdigit():
        raise AdminError(400, f"{what} is a whole number >= 0, got {mask_text(value)[:40]!r}")
    return int(value)


def _number(value: str, what: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number != number or number in (float("inf"), float("-inf")):
        raise AdminError(400, f"{what} is a number (seconds since the epoch), got {mask_text(value)[:40]!r}")
    return number


def _rule_key(text: str) -> Any:
    name = unquote(text)
    return int(name) if name.isdigit() else name


def _timeout(body: Mapping[str, Any]) -> float:
    timeout = body.get("timeout", SEND_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
        raise AdminError(400, "timeout is seconds, more than 0 and at most 300")
    return float(timeout)


def _message(body: Mapping[str, Any]) -> dict[str, str]:
    message = body.get("message")
    if not isinstance(message, dict) or not message.get("t"):
        raise AdminError(400, 'expected "message": an object of field: value with "t" (the MTI)')
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in message.items()):
        raise AdminError(400, "every field of a message is a string")
    return message


class AdminApp:
    """The WSGI application: routes to ``host``'s methods (see the module docstring)."""

    def __init__(self, host: Any, *, token: Optional[str] = None) -> None:
        self.host = host
        self.token = token
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            ("GET", re.compile(r"/rules"), self._rules),
            ("POST", re.compile(r"/rules"), self._add_rule),
            ("PUT", re.compile(r"/rules"), self._replace_rules),
            ("POST", re.compile(r"/rules/reset"), self._reset_rules),
            ("PATCH", re.compile(r"/rules/([^/]+)"), self._change_rule),
            ("DELETE", re.compile(r"/rules/([^/]+)"), self._delete_rule),
            ("GET", re.compile(r"/journal"), self._journal),
            ("POST", re.compile(r"/journal/count"), self._journal_count),
            ("DELETE", re.compile(r"/journal"), self._clear_journal),
            ("GET", re.compile(r"/scenarios"), self._scenarios),
            ("POST", re.compile(r"/scenarios/reset"), self._reset_scenarios),
            ("PUT", re.compile(r"/scenarios/([^/]+)"), self._set_scenario),
            ("GET", re.compile(r"/links"), self._links),
            ("DELETE", re.compile(r"/links/(\d+)"), self._close_link),
            ("POST", re.compile(r"/links/send"), self._send),
            ("POST", re.compile(r"/links/(\d+)/send"), self._send),
            ("GET", re.compile(r"/stats"), self._stats),
            ("GET", re.compile(r"/overview"), self._overview),
        ]

    # -- WSGI ------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "/") or "/"
        try:
            if method == "GET" and (path == "/" or path.startswith("/static/")):
                return self._static(path, start_response)
            self._authorize(environ)
            if method == "GET" and path == "/metrics":
                text = self.host.prometheus_text().encode("utf-8")
                return _respond(start_response, 200, text, "text/plain; version=0.0.4; charset=utf-8")
            status, data = self._dispatch(method, path, environ)
        except AdminError as exc:
            status, data = exc.status, {"error": str(exc)}
        except NotFound as exc:
            status, data = 404, {"error": str(exc)}
        except ConfigurationError as exc:
            status, data = 400, {"error": str(exc)}
        except Exception as exc:  # one line to the caller and to the log (a traceback's text may quote a message)
            text = mask_text(str(exc))
            log.error("admin %s %s failed: %s: %s", method, mask_text(path)[:80], type(exc).__name__, text)
            status, data = 500, {"error": f"internal error: {type(exc).__name__}"}
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode("utf-8")
        return _respond(start_response, status, body, "application/json")

    def _authorize(self, environ: Mapping[str, Any]) -> None:
        if self.token is None:
            return
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        if not hmac.compare_digest(given.encode("utf-8"), f"Bearer {self.token}".encode()):
            raise AdminError(401, "this admin API needs its token: Authorization: Bearer TOKEN")

    def _dispatch(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, Any]:
        path_known = False
        for verb, pattern, handler in self._routes:
            found = pattern.fullmatch(path)
            if found is None:
                continue
            path_known = True
            if verb == method:
                result = handler(environ, *found.groups())
                return (201, result) if method == "POST" and handler == self._add_rule else (200, result)
        if path_known:
            raise AdminError(405, f"{method} is not allowed on {mask_text(path)[:80]}")
        raise AdminError(404, f"no such admin path: {mask_text(path)[:80]}")

    def _static(self, path: str, start_response: StartResponse) -> list[bytes]:
        name = "index.html" if path == "/" else path[len("/static/") :]
        if not re.fullmatch(r"[a-z0-9_-]+\.(html|css|js)", name):
            raise AdminError(404, "no such file")
        try:
            data = resources.files(STATIC_PACKAGE).joinpath(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise AdminError(404, "no such file") from None
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return _respond(start_response, 200, data, f"{kind}; charset=utf-8")

    # -- routes ----------------------------------------------------------------------------
    def _rules(self, environ: dict[str, Any]) -> Any:
        return {"rules": self.host.rule_list()}

    def _add_rule(self, environ: dict[str, Any]) -> Any:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        at = _int(query["at"][-1], "at") if "at" in query else None
        return self.host.add_rule(_json_body(environ), at=at)

    def _replace_rules(self, environ: dict[str, Any]) -> Any:
        return {"rules": self.host.replace_rules(_json_body(environ))}

    def _reset_rules(self, environ: dict[str, Any]) -> Any:
        return {"rules": self.host.reset_rules()}

    def _change_rule(self, environ: dict[str, Any], key: str) -> Any:
        body = _object(_json_body(environ), ("enabled", "position"), "a rule change")
        rule = _rule_key(key)
        if "enabled" in body:
            self.host.enable_rule(rule, body["enabled"])
        if "position" in body:
            self.host.move_rule(rule, body["position"])
        return {"rules": self.host.rule_list()}

    def _delete_rule(self, environ: dict[str, Any], key: str) -> Any:
        return {"deleted": self.host.delete_rule(_rule_key(key))}

    def _filters(self, environ: Mapping[str, Any]) -> dict[str, Any]:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        filters: dict[str, Any] = {}
        fields: dict[str, str] = {}
        for key, values in query.items():
            value = values[-1]
            if key.startswith("field."):
                fields[key[len("field.") :]] = value
            elif key in ("mti", "rule"):
                filters[key] = value
            elif key in ("link", "limit"):
                filters[key] = _int(value, key)
            elif key in ("since", "until"):
                filters[key] = _number(value, key)
            else:
                raise AdminError(
                    400,
                    f"unknown journal filter {mask_text(key)[:40]!r}; use mti, field.N, rule, "
                    "link, since, until, limit",
                )
        if fields:
            filters["fields"] = fields
        return filters

    def _journal(self, environ: dict[str, Any]) -> Any:
        entries = self.host.journal_entries(**self._filters(environ))
        return {"entries": [e.as_dict() for e in entries]}

    def _journal_count(self, environ: dict[str, Any]) -> Any:
        return {"count": self.host.journal_count(_json_body(environ), **self._filters(environ))}

    def _clear_journal(self, environ: dict[str, Any]) -> Any:
        return {"cleared": self.host.clear_journal()}

    def _scenarios(self, environ: dict[str, Any]) -> Any:
        return {"scenarios": self.host.scenario_states()}

    def _set_scenario(self, environ: dict[str, Any], name: str) -> Any:
        body = _object(_json_body(environ), ("state",), "a scenario change")
        if "state" not in body:
            raise AdminError(400, 'a scenario change: expected {"state": "..."}')
        self.host.set_scenario(unquote(name), body["state"])
        return {"scenarios": self.host.scenario_states()}

    def _reset_scenarios(self, environ: dict[str, Any]) -> Any:
        self.host.reset_scenarios()
        return {"scenarios": self.host.scenario_states()}

    def _links(self, environ: dict[str, Any]) -> Any:
        return {"links": self.host.link_list()}

    def _close_link(self, environ: dict[str, Any], link: str) -> Any:
        self.host.close_link(int(link))
        return {"closed": int(link)}

    def _send(self, environ: dict[str, Any], link: Optional[str] = None) -> Any:
        body = _object(_json_body(environ), ("message", "timeout"), "a host-initiated message")
        results = self.host.send_to(_message(body), None if link is None else int(link), timeout=_timeout(body))
        out = []
        for link_id, result in sorted(results.items()):
            if isinstance(result, BaseException):
                out.append({"link": link_id, "error": f"{type(result).__name__}: {mask_text(str(result))}"})
            else:
                out.append({"link": link_id, "answer": masked(result)})
        return {"results": out}

    def _stats(self, environ: dict[str, Any]) -> Any:
        return self.host.stats.as_dict()

    def _overview(self, environ: dict[str, Any]) -> Any:
        return self.host.overview(PAGE_JOURNAL)


def _respond(start_response: StartResponse, status: int, body: bytes, kind: str) -> list[bytes]:
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body]


class AdminServer:
    """The admin API and page of ``host`` on ``address``, in this process (gevent WSGI).

    ``address`` must be loopback unless ``token`` is given (:func:`check_exposure`);
    port 0 picks a free one (read :attr:`url` after :meth:`start`).
    """

    def __init__(self, host: Any, address: Address = DEFAULT_ADDRESS, *, token: Optional[str] = None) -> None:
        self.host = host
        self.address = check_exposure(address, token)
        self.app = AdminApp(host, token=token)
        self._server = gevent.pywsgi.WSGIServer(self.address, self.app, log=None, error_log=log)

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (the bound port once started)."""
        host, port = self.address
        if self._server.started:
            port = self._server.server_port
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    def start(self) -> AdminServer:
        """Start serving (binds now: an unusable address raises ``OSError`` here)."""
        self._server.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop serving; requests in progress get ``timeout`` seconds."""
        self._server.stop(timeout=seconds(timeout, "timeout"))

    def __enter__(self) -> AdminServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<geviso.mock.admin.AdminServer {self.url}>"


__all__ = ["DEFAULT_ADDRESS", "AdminApp", "AdminServer", "check_exposure", "is_loopback"]
