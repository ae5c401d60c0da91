"""A mock card host: a :class:`~geviso.Server` that answers like an issuer.

Network management (0800 with field 70 = 001 sign-on, 002 sign-off, 301 echo) gets 0810
with field 39 = 00 (codes configurable per field-70 value). Every other request
(0100, 0200, 0400, 0420/0421, advices...) gets its response MTI, the usual fields
echoed (2, 3, 4, 7, 11, 12, 13, 37, 38, 41, 42, 49, 70 when present), field 39, and a
field 38 approval code on approved authorizations and financials. :mod:`geviso.mock.rules`
change that per request: another code, a delay, no answer, a closed link, a late answer.
Every request goes into a bounded, masked :mod:`~geviso.mock.journal`; the operations of
:mod:`~geviso.mock.control` (rules, journal, scenarios, links, stats) steer and read a
running host, and :mod:`geviso.mock.admin` serves them over HTTP.

It is the target of the benchmarks, so an immediate answer is built and queued in the
handler itself: a dict comprehension, one encode, no sleep and no extra greenlet.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Optional, Union

import gevent
import gevent.pool
from iso8583.specs import default as default_spec

from .. import greenlets, masking, options
from ..codec import Spec, field_problem, is_response, response_mti, transmission_datetime
from ..connection import Address, Connection, close_quietly
from ..errors import ConfigurationError, ConnectionClosed, GevisoError
from ..keepalive import ECHO
from ..keys import mti_pair
from ..options import optional_seconds, seconds
from ..ratelog import SummaryLog
from ..server import DEFAULT_HANDSHAKE_TIMEOUT, Server
from ..stan import StanGenerator
from . import proxy
from . import rules as rules_mod
from .adminclient import AdminClient
from .control import MockControl
from .journal import CLOSED, DEFAULT_SIZE, DROPPED, FAILED, LOST, Entry, Journal
from .nearmiss import Explainer
from .rules import CLOSE, DROP, LATE, Rule, RuleSet
from .scenarios import Scenarios

log = logging.getLogger(__name__)

#: Fields copied from a request into its answer when the request has them.
ECHO_FIELDS = ("2", "3", "4", "7", "11", "12", "13", "37", "38", "41", "42", "49", "70")
#: Field 39 codes that approve (an approved 0100/0200 gets a field 38 approval code).
APPROVAL_CODES = frozenset({"00", "08", "10", "11", "16"})
#: Field 70 network management codes and the field 39 each gets.
NETWORK_CODES = {"001": "00", "002": "00", "301": "00"}
#: Seconds a link may send nothing before the host closes it (a stalled or dead client).
DEFAULT_READ_TIMEOUT = 60.0
#: Echoes in a row a client may leave unanswered before the host closes its link.
DEFAULT_MAX_ECHO_FAILURES = 2
#: Seconds between two log lines about answers a link could not be sent.
PROBLEM_LOG_INTERVAL = 60.0

#: Messages whose attempts a ``drop_first`` rule counts, at most (the oldest forgotten).
ATTEMPTS_KEPT = 100_000

RulesSource = Union[None, RuleSet, Iterable[Mapping[str, Any]], str, "os.PathLike[str]"]


def load_rules(path: Union[str, os.PathLike[str]]) -> RuleSet:
    """Read a rules file (``.json``; ``.yaml``/``.yml`` with PyYAML) and compile it."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigurationError(f"rules file {name}: cannot read it: {exc.strerror or exc}") from exc
    return rules_mod.loads(text, fmt=rules_mod.format_of(name), source=name)


def _rule_set(source: RulesSource) -> RuleSet:
    if source is None:
        return RuleSet()
    if isinstance(source, RuleSet):
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_rules(source)
    if isinstance(source, bytes) or not isinstance(source, Iterable):
        raise ConfigurationError(f"rules must be a RuleSet, rule dicts or a file path; got {type(source).__name__}")
    return rules_mod.parse(list(source))


def summary_line(data: Mapping[str, Any]) -> str:
    """``key=value`` pairs of :meth:`MockStats.as_dict` data, codes as ``00:9,51:1``."""
    codes = ",".join(f"{code}:{n}" for code, n in sorted(data.get("codes", {}).items())) or "-"
    return " ".join(f"{k}={v}" for k, v in data.items() if k != "codes") + f" codes={codes}"


class MockStats:
    """What a mock host did; plain counters updated as it happens, so reads are exact
    and cost nothing (``connections`` counts the open links)."""

    COUNTERS = (
        "received",  # requests from clients
        "responded",  # answers written (late ones included)
        "dropped",  # requests a drop rule left unanswered
        "closed",  # links a close rule closed
        "late",  # late answers written
        "lost",  # answers not written because their link had closed
        "errors",  # answers that could not be built or encoded
        "unmatched",  # responses from clients that answered nothing we sent
        "echoes",  # 0800 echoes the host sent to its clients
        "echoes_answered",
        "echoes_failed",
        "silent_closed",  # links closed for sending nothing within read_timeout
        "echo_closed",  # links closed after max_echo_failures unanswered echoes
    )
    __slots__ = (*COUNTERS, "codes", "_host")
    received: int
    responded: int
    dropped: int
    closed: int
    late: int
    lost: int
    errors: int
    unmatched: int
    echoes: int
    echoes_answered: int
    echoes_failed: int
    silent_closed: int
    echo_closed: int

    def __init__(self, host: MockHost) -> None:
        for name in self.COUNTERS:
            setattr(self, name, 0)
        #: Answers per field 39 code.
        self.codes: dict[str, int] = {}
        self._host = host

    @property
    def connections(self) -> int:
        """Links open now."""
        return len(self._host.connections)

    @property
    def accepted(self) -> int:
        """Links accepted since the host started."""
        return int(self._host.accepted)

    @property
    def refused(self) -> int:
        """Sockets refused over ``max_connections``."""
        return int(self._host.refused)

    @property
    def pending(self) -> int:
        """Delayed answers (and closes) waiting for their time."""
        return self._host.pending

    def as_dict(self) -> dict[str, Any]:
        """Plain data: every counter, ``codes``, ``connections``, ``accepted``, ``refused``."""
        data: dict[str, Any] = {name: getattr(self, name) for name in self.COUNTERS}
        data["codes"] = dict(self.codes)
        for name in ("connections", "accepted", "refused", "pending"):
            data[name] = getattr(self, name)
        return data

    def summary(self) -> str:
        """One line: ``received=... responded=... codes=00:9,51:1``."""
        return summary_line(self.as_dict())

    def __repr__(self) -> str:
        return f"<MockStats {self.summary()}>"


class MockHost(MockControl, Server):
    """A card host answering by rules; see the module docstring.

    ``rules`` is a :class:`~geviso.mock.rules.RuleSet`, a list of rule dicts, or the path of a
    JSON/YAML rules file (a bad one raises :class:`ConfigurationError` here, before the
    host starts). ``response_code`` is field 39 when no rule says otherwise;
    ``network_codes`` maps field 70 values to field 39 (unknown ones get
    ``response_code``). Every code, and every field a rule sets, is checked against the
    spec here: one that cannot be encoded is a :class:`ConfigurationError` naming it.

    Link health: a link that sends nothing for ``read_timeout`` seconds (None: never)
    is closed. With ``echo_interval`` the host sends 0800/301 to every client that often,
    each waiting ``echo_timeout`` for the 0810, and closes a link that leaves
    ``max_echo_failures`` echoes in a row unanswered. So stalled or vanished clients
    cannot hold ``max_connections`` links for good. ``seed`` makes random delays
    repeatable. The journal keeps the newest ``journal_size`` requests (0: none).
    ``proxy_to`` and ``record`` make it a recording proxy in front of a real
    host (:mod:`geviso.mock.proxy`); ``playback`` (with ``match``) answers from a capture
    first (:mod:`geviso.mock.playback`); ``front`` is any such :class:`~geviso.mock.proxy.Front`.
    Other keywords go to :class:`~geviso.Server`.
    """

    def __init__(
        self,
        address: Address = ("127.0.0.1", 8583),
        spec: Optional[Spec] = None,
        *,
        rules: RulesSource = None,
        response_code: str = "00",
        network_codes: Optional[Mapping[str, str]] = None,
        echo_fields: Iterable[str] = ECHO_FIELDS,
        approval_codes: Iterable[str] = APPROVAL_CODES,
        echo_interval: Optional[float] = None,
        echo_timeout: float = 5.0,
        read_timeout: Optional[float] = DEFAULT_READ_TIMEOUT,
        max_echo_failures: int = DEFAULT_MAX_ECHO_FAILURES,
        seed: Optional[int] = None,
        journal_size: int = DEFAULT_SIZE,
        proxy_to: Optional[Address] = None,
        record: Optional[Union[str, os.PathLike[str]]] = None,
        record_card_data: bool = False,
        proxy_tls: Optional[Any] = None,
        playback: Optional[Any] = None,
        match: Optional[Iterable[str]] = None,
        playback_latency: bool = False,
        front: Optional[proxy.Front] = None,
        **server_options: Any,
    ) -> None:
        if "on_inbound" in server_options:
            raise ConfigurationError("a MockHost answers by itself; give it rules, not on_inbound")
        echo_interval = optional_seconds(echo_interval, "echo_interval", positive=True)
        echo_timeout = seconds(echo_timeout, "echo_timeout", positive=True)
        read_timeout = optional_seconds(read_timeout, "read_timeout", positive=True)
        if isinstance(max_echo_failures, bool) or not isinstance(max_echo_failures, int) or max_echo_failures < 1:
            raise ConfigurationError("max_echo_failures must be a whole number, at least 1")
        options.optional_instance(spec, Mapping, "spec", "a pyiso8583 spec (a dict of fields)")
        if network_codes is not None:
            options.instance(network_codes, Mapping, "network_codes", "a dict of field 70 value -> field 39 code")
        echo_fields = options.items(echo_fields, "echo_fields", lambda f: isinstance(f, str), "field names")
        approval_codes = options.items(approval_codes, "approval_codes", lambda c: isinstance(c, str), "codes")
        options.optional_instance(front, proxy.Front, "front", "a geviso.mock.proxy.Front or None")
        if playback is not None and not isinstance(playback, (str, os.PathLike)):
            from .playback import Playback

            options.instance(playback, Playback, "playback", "a capture's path or a Playback")
        self.rules = rules  # the setter compiles any source
        self._startup_rules = self._rule_set.specs()  # what reset_rules() goes back to
        self.journal: Optional[Journal] = Journal(journal_size) if journal_size else None
        self.scenarios = Scenarios()
        self._link_ids: dict[Connection, tuple[int, str, float]] = {}  # link -> (id, peer, opened)
        self._link_numbers = itertools.count(1)
        spec = spec if spec is not None else default_spec
        server_options.setdefault("inline_inbound", True)  # _answer never blocks
        if read_timeout is not None:
            server_options["read_timeout"] = read_timeout
            server_options.setdefault("on_read_timeout", self._close_silent)
            # A TLS client silent (or trickling) in its handshake is held no longer either.
            server_options.setdefault("handshake_timeout", min(DEFAULT_HANDSHAKE_TIMEOUT, read_timeout))
        super().__init__(address, spec, on_inbound=self._answer, **server_options)
        self.response_code = response_code
        self.network_codes = dict(NETWORK_CODES if network_codes is None else network_codes)
        echo = set(echo_fields)
        if spec.get("h", {}).get("max_len", 0):
            echo.add("h")
        self.echo_fields = frozenset(echo)
        self.approval_codes = frozenset(approval_codes)
        self._check_codes()
        self.echo_interval = echo_interval
        self.echo_timeout = echo_timeout
        self.read_timeout = read_timeout
        self.max_echo_failures = max_echo_failures
        self._echo_failures: weakref.WeakKeyDictionary[Connection, int] = weakref.WeakKeyDictionary()
        self._problems: weakref.WeakKeyDictionary[Connection, SummaryLog] = weakref.WeakKeyDictionary()
        self.stats = MockStats(self)
        self._random = random.Random(seed)
        self._approval = StanGenerator()  # field 38 codes: 000001..999999, wrapping
        self._delayed = gevent.pool.Group()  # delayed answers and closes
        self._late = gevent.pool.Group()  # late answers (never waited for on stop)
        self._echo_loop: Optional[gevent.Greenlet] = None
        self._echoing: set[Connection] = set()
        self._attempts: OrderedDict[Hashable, int] = OrderedDict()  # for drop_first rules
        self.front = front or proxy.front_for(
            proxy_to=proxy_to, record=record, record_card_data=record_card_data, proxy_tls=proxy_tls,
            playback=playback, match=match, playback_latency=playback_latency,
        )

    @property
    def pending(self) -> int:
        """Delayed answers, closes and late answers waiting for their time."""
        return len(self._delayed) + len(self._late)

    # -- answering ------------------------------------------------------------------------
    def _answer(self, conn: Connection, doc: dict[str, str]) -> None:
        """``on_inbound`` of every link: the hot path of the benchmarks."""
        if is_response(doc.get("t", "")):  # a response nobody waits for
            self.stats.unmatched += 1
            return
        self.stats.received += 1
        rule_set = self._rule_set
        journal = self.journal
        entry = None
        if journal is not None:
            link = self._link_ids.get(conn)
            entry = journal.record(doc, link=link[0], peer=link[1]) if link else journal.record(doc)
        if self.front is not None and self.front.answer(conn, doc):
            return
        if rule_set.rules:  # nothing to check per request when there are no rules
            rule = rule_set.match(doc, self.scenarios.states)
            if rule is not None:
                rule.hits += 1
                self.scenarios.fired(rule)
                if entry is not None:
                    entry.decided_by(rule)
                self._apply(conn, doc, rule, entry)
                return
            if entry is not None:
                entry.near_misses = self.explain(doc)
        self._respond(conn, doc, None, None, entry=entry)

    def _apply(self, conn: Connection, doc: dict[str, str], rule: Rule, entry: Optional[Entry] = None) -> None:
        action = rule.action
        if rule.drop_first and self._count_attempt(doc) <= rule.drop_first:
            action = DROP
        if action == DROP:
            self.stats.dropped += 1
            if entry is not None:
                entry.ended(DROPPED)
            return
        delay = rule.delay_seconds(self._random)
        if action == CLOSE:
            self.stats.closed += 1
            if entry is not None:
                entry.ended(CLOSED)
            self._delayed.add(gevent.spawn_later(delay, close_quietly, conn, 1.0))
        elif action == LATE:
            later = greenlets.spawn_later_guarded
            self._late.add(later(delay, self._respond, conn, doc, rule.code, rule.fields, True, entry))
        elif delay > 0:
            later = greenlets.spawn_later_guarded
            self._delayed.add(later(delay, self._respond, conn, doc, rule.code, rule.fields, False, entry))
        else:
            self._respond(conn, doc, rule.code, rule.fields, entry=entry)

    def _count_attempt(self, doc: Mapping[str, str]) -> int:
        """How many times this message (MTI class, STAN, terminal) came, this one included:
        a repeat (0401) counts with its original (0400)."""
        key = (mti_pair(doc.get("t", "")), doc.get("11"), doc.get("41"))
        attempts = self._attempts
        seen = attempts.pop(key, 0) + 1
        attempts[key] = seen
        if len(attempts) > ATTEMPTS_KEPT:
            attempts.popitem(last=False)
        return seen

    def _respond(
        self,
        conn: Connection,
        doc: dict[str, str],
        code: Optional[str],
        extra: Optional[dict[str, str]],
        late: bool = False,
        entry: Optional[Entry] = None,
    ) -> None:
        """Build the answer to ``doc``, queue it on ``conn`` and note it in ``entry``."""
        stats = self.stats
        mti = doc.get("t", "")
        try:
            answer_mti = response_mti(mti)
        except ValueError:
            stats.errors += 1  # counted, not logged per message: the client chose it
            log.debug("%s: cannot answer mti=%s: not four digits", self, masking.escape(mti, masking.ESCAPE_LIMIT))
            if entry is not None:
                entry.ended(FAILED)
            return
        echo = self.echo_fields
        answer = {k: v for k, v in doc.items() if k in echo}
        answer["t"] = answer_mti
        if code is None:
            code = self.response_code
            if mti[1] == "8":
                code = self.network_codes.get(doc.get("70", ""), code)
        answer["39"] = code
        if mti[1] in ("1", "2") and code in self.approval_codes and "38" not in answer:
            answer["38"] = self._approval.next()
        if extra:
            answer.update(extra)
        try:
            conn.reply(answer, to=doc)
        except ConnectionClosed:
            stats.lost += 1
            if entry is not None:
                entry.ended(LOST)
            return
        except GevisoError as exc:  # EncodeError: a field the spec refuses
            stats.errors += 1
            if entry is not None:
                entry.ended(FAILED)
            if self.on_error is not None:
                self._report(exc)
            else:
                self._problem(conn, f"an answer could not be encoded: {masking.mask_text(str(exc))}")
            return
        if entry is not None:
            entry.answered(answer, doc)
        stats.responded += 1
        codes = stats.codes
        codes[code] = codes.get(code, 0) + 1
        if late:
            stats.late += 1

    def _problem(self, conn: Connection, text: str) -> None:
        """Log a problem answering on ``conn`` at WARNING at most once per link per
        :data:`PROBLEM_LOG_INTERVAL` (the rest at DEBUG, counted in the next line)."""
        summary = self._problems.get(conn)
        if summary is None:
            summary = self._problems[conn] = SummaryLog(log, PROBLEM_LOG_INTERVAL)
        summary.warning(f"{self}: link {conn}", text)

    def _check_codes(self) -> None:
        """Refuse codes and rule fields the spec cannot encode, before anything listens."""
        checks: list[tuple[str, str, Any]] = [("response_code", "39", self.response_code)]
        checks += [(f"network_codes[{k!r}]", "39", v) for k, v in sorted(self.network_codes.items())]
        checks += [("approval_codes", "39", code) for code in sorted(self.approval_codes, key=str)]
        if self.approval_codes and "38" in self.spec:
            checks.append(("the approval code it generates", "38", "000001"))
        self._check(checks + self._rule_checks(self._rule_set))

    def _check(self, checks: list[tuple[str, str, Any]]) -> None:
        for what, field, value in checks:
            problem = field_problem(self.spec, field, value)
            if problem is not None:
                # Codes are shown (escaped); a value a rule sets may be a PAN: never.
                shown = f" {value[:8]!r}" if field == "39" and isinstance(value, str) else ""
                raise ConfigurationError(f"{what}{shown} does not fit the spec: {problem}")

    def _check_rule_set(self, rule_set: RuleSet) -> None:
        """Refuse a rule set with a code or field the spec cannot encode."""
        self._check(self._rule_checks(rule_set))

    @staticmethod
    def _rule_checks(rule_set: RuleSet) -> list[tuple[str, str, Any]]:
        checks: list[tuple[str, str, Any]] = []
        for rule in rule_set:
            label = f"rules[{rule.index}]" + (f" ({rule.name!r})" if rule.name else "")
            if rule.code is not None:
                checks.append((f"{label} code", "39", rule.code))
            for field, value in (rule.fields or {}).items():
                checks.append((f"{label} fields.{field}", field, value))
        return checks

    def _close_silent(self, conn: Connection) -> None:
        """``on_read_timeout`` of every link: a client silent that long has stalled or gone."""
        if conn.closed:
            return
        self.stats.silent_closed += 1
        log.info("%s: link %s sent nothing for %gs: closing it", self, conn, self.read_timeout)
        conn.fail(ConnectionClosed(f"nothing received for {self.read_timeout:g}s"))

    # -- echoes to the clients ------------------------------------------------------------
    def start(self) -> None:
        """Start accepting, and the echo timer when ``echo_interval`` is set."""
        if self.front is not None and not self.started:
            self.front.start(self)
        super().start()
        if self.echo_interval is not None and self._echo_loop is None:
            self._echo_loop = gevent.spawn(self._echo_every, self.echo_interval)

    def _echo_every(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            for conn in self.connections:
                if conn not in self._echoing:
                    self._echoing.add(conn)
                    gevent.spawn(self.echo, conn)

    def echo(self, conn: Connection) -> bool:
        """Send one 0800/301 to ``conn`` and wait for its 0810; True if it came."""
        message = dict(ECHO)
        if "7" in self.spec:
            message["7"] = transmission_datetime()
        self.stats.echoes += 1
        try:
            conn.send(message, timeout=self.echo_timeout)
        except GevisoError as exc:
            self.stats.echoes_failed += 1
            log.debug("echo to %s failed: %s", conn, type(exc).__name__)
            failures = self._echo_failures.get(conn, 0) + 1
            self._echo_failures[conn] = failures
            if failures >= self.max_echo_failures and not conn.closed:
                self.stats.echo_closed += 1
                log.info("%s: link %s left %d echoes unanswered: closing it", self, conn, failures)
                conn.fail(ConnectionClosed(f"{failures} echoes unanswered"))
            return False
        finally:
            self._echoing.discard(conn)
        self._echo_failures.pop(conn, None)
        self.stats.echoes_answered += 1
        return True

    # -- stopping -------------------------------------------------------------------------
    def _before_links_close(self, deadline: float) -> None:
        """Stop echoing, drop late answers, let delayed answers go out (until the deadline)."""
        if self._echo_loop is not None:
            self._echo_loop.kill(block=False)
            self._echo_loop = None
        self._late.kill(block=False)
        self._delayed.join(timeout=max(0.0, deadline - time.monotonic()))
        self._delayed.kill(block=False)
        if self.front is not None:
            self.front.stop(deadline)

    @property
    def rules(self) -> RuleSet:
        """The compiled rules, first match wins. Assign any rules source (a RuleSet, rule
        dicts or a file path) to change them, also while the host runs."""
        return self._rule_set

    @rules.setter
    def rules(self, source: RulesSource) -> None:
        rule_set = _rule_set(source)
        if hasattr(self, "approval_codes"):  # built already: check against its spec first
            self._check_rule_set(rule_set)
        self._rule_set = rule_set
        self._explainer: Optional[Explainer] = None

    # -- links' numbers -------------------------------------------------------------------
    def _link_opened(self, conn: Connection, peer: str) -> None:
        self._link_ids[conn] = (next(self._link_numbers), peer, time.monotonic())

    def _link_gone(self, conn: Connection) -> None:
        self._link_ids.pop(conn, None)

    def __repr__(self) -> str:
        return f"<geviso.MockHost {self.address} links={len(self.connections)} rules={len(self.rules)}>"


__all__ = [
    "APPROVAL_CODES",
    "AdminClient",
    "DEFAULT_MAX_ECHO_FAILURES",
    "DEFAULT_READ_TIMEOUT",
    "ECHO_FIELDS",
    "NETWORK_CODES",
    "MockHost",
    "MockStats",
    "load_rules",
    "summary_line",
]
