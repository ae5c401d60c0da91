"""Locust load tests over geviso links: an abstract :class:`ISO8583User` whose client
reports every send to Locust's ``request`` event.

Needs locust (the ``load`` extra); ``import geviso`` never imports locust.
Locust runs on gevent, so the links are ordinary geviso links: no threads, no bridge.

Importing this module adds the ``--iso-*`` command-line options and, for runs started
with no ``--host``, an embedded :class:`~geviso.MockHost` in the Locust process (the
master in distributed mode: one host shared by every worker). Each Locust process opens
its links once, shared by its users, signs them on and closes them at ``test_stop``.
"""

from __future__ import annotations

import logging
import random
import sys
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import gevent
import gevent.lock
from locust import User, events
from locust.env import Environment
from locust.runners import WorkerRunner

from . import errors, gctune, masking
from .codec import Codec, Message, Spec, codec_for, is_response, response_mti, transmission_datetime
from .connection import Connection, close_quietly, parse_address
from .framing import BY_NAME as FRAMINGS
from .framing import Framing, by_name
from .mock.host import APPROVAL_CODES, MockHost, load_rules
from .mock.journal import DEFAULT_SIZE as JOURNAL_SIZE
from .mock.rules import RuleSet
from .mock.rules import parse as parse_rules
from .options import MAX_SECONDS, number
from .pool import Pool
from .rrn import RrnGenerator
from .specs import by_name as spec_by_name
from .stan import StanGenerator
from .tls import client_context

log = logging.getLogger(__name__)
_random = random.Random()

#: The ``request_type`` of every request geviso reports to Locust.
REQUEST_TYPE = "ISO8583"
#: Seconds a request in flight when Locust stops its user still has to be answered.
#: One whose answer does not come by then was cut off by the end of the run: it is not
#: reported to Locust (neither a success nor a failure), only counted in the log.
STOP_GRACE = 0.2
#: Field 70 network management codes.
SIGN_ON, SIGN_OFF, ECHO = "001", "002", "301"


def network_message(code: str, stan: str) -> dict[str, str]:
    """A network management 0800: field 7 now, STAN ``stan``, field 70 = ``code``."""
    return {"t": "0800", "7": transmission_datetime(), "11": stan, "70": code}


#: Every ``--iso-*`` option's default, also used when Locust runs as a library with no
#: parsed options. Keys are the option names as attributes of ``parsed_options``.
DEFAULTS: dict[str, Any] = {
    "iso_framing": "binary2",
    "iso_spec": "default",
    "iso_connections": 2,
    "iso_timeout": 5.0,
    "iso_connect_timeout": 10.0,
    "iso_link_per_user": False,
    "iso_no_sign_on": False,
    "iso_declines_fail": False,
    "iso_ca": None,
    "iso_cert": None,
    "iso_key": None,
    "iso_max_failure_ratio": None,
    "iso_max_p99_ms": None,
    "iso_mock_rules": None,
    "iso_mock_bind": "127.0.0.1",
    "iso_mock_admin": None,
    "iso_mock_admin_token": None,
    "iso_gc": False,
}


# -- test data: no I/O ------------------------------------------------------------------
def luhn_check_digit(digits: str) -> str:
    """The digit that makes ``digits`` + it pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled: these sit at odd positions once the check digit is appended
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def luhn_valid(pan: str) -> bool:
    """True when ``pan`` is all digits and passes the Luhn check."""
    return pan.isdigit() and len(pan) > 1 and luhn_check_digit(pan[:-1]) == pan[-1]


def make_pan(bin_: str, length: int = 16, rng: Optional[random.Random] = None) -> str:
    """A Luhn-valid PAN of ``length`` digits starting with ``bin_`` (use test BINs only)."""
    if not bin_.isdigit() or not len(bin_) < length <= 19:
        raise errors.ConfigurationError("a BIN is digits, shorter than the PAN (at most 19)")
    randrange = (rng or _random).randrange
    body = bin_ + "".join(str(randrange(10)) for _ in range(length - len(bin_) - 1))
    return body + luhn_check_digit(body)


def original_data(mti: str, stan: str, transmitted: str, acquirer: str = "", forwarder: str = "") -> str:
    """Field 90 of a reversal or completion: the original MTI, STAN, field 7, and the
    acquiring and forwarding institution ids, each zero-padded to 11 digits (42 in all)."""
    return f"{mti}{stan}{transmitted}{acquirer:0>11}{forwarder:0>11}"


# -- settings ---------------------------------------------------------------------------
def option(environment: Environment, name: str) -> Any:
    """An ``--iso-*`` option's value for this run (its default without parsed options)."""
    value = getattr(environment.parsed_options, name, None) if environment.parsed_options else None
    return DEFAULTS[name] if value is None else value


@dataclass(frozen=True)
class Settings:
    """How one Locust process reaches a host, from ``--host`` and the ``--iso-*`` options."""

    address: tuple[str, int]
    tls: bool
    spec: Spec
    framing: Framing
    connections: int
    timeout: float
    connect_timeout: float
    sign_on: bool
    cafile: Optional[str]
    certfile: Optional[str]
    keyfile: Optional[str]

    @classmethod
    def from_environment(cls, environment: Environment, host: Optional[str]) -> Settings:
        """The settings of a Locust run: ``host`` plus its parsed ``--iso-*`` options."""
        if not host:
            raise errors.ConfigurationError("no host: give --host tcp://HOST:PORT or tls://HOST:PORT")
        scheme, sep, _ = host.partition("://")
        if sep and scheme not in ("tcp", "tls"):
            raise errors.ConfigurationError(f"host {host!r}: the scheme is tcp:// or tls://")
        address = parse_address(host)
        runner = environment.runner
        if address[0] in ("0.0.0.0", "::") and isinstance(runner, WorkerRunner):
            address = (runner.master_host, address[1])  # the master's embedded host, from afar
        return cls(
            address=address,
            tls=scheme == "tls",
            spec=spec_by_name(option(environment, "iso_spec")),
            framing=by_name(option(environment, "iso_framing")),
            connections=max(1, int(option(environment, "iso_connections"))),
            timeout=float(option(environment, "iso_timeout")),
            connect_timeout=float(option(environment, "iso_connect_timeout")),
            sign_on=not option(environment, "iso_no_sign_on"),
            cafile=option(environment, "iso_ca"),
            certfile=option(environment, "iso_cert"),
            keyfile=option(environment, "iso_key"),
        )


# -- reporting --------------------------------------------------------------------------
def _fire(
    environment: Environment,
    name: str,
    started: float,
    codec: Codec,
    response: Optional[Message],
    exc: Optional[BaseException],
    context: Optional[Mapping[str, Any]] = None,
) -> None:
    """One ``request`` event. The response itself is not passed on: it holds a PAN."""
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    ctx = dict(context or {})
    length = 0
    if response is not None:
        ctx["response_code"] = response.get("39", "")
        ctx["response_mti"] = response.get("t", "")
        try:
            length = len(codec.encode(response))
        except errors.EncodeError:
            length = 0
    hooks: Any = environment.events
    hooks.request.fire(
        request_type=REQUEST_TYPE,
        name=name,
        response_time=elapsed_ms,
        response_length=length,
        response=None,
        context=ctx,
        exception=exc,
        start_time=time.time() - elapsed_ms / 1000.0,
        url=None,
    )


# -- the links of one Locust process ----------------------------------------------------
class Links:
    """What one Locust process shares between its users for one host: a
    :class:`~geviso.Pool` of ``--iso-connections`` signed-on links (or one link per user),
    one STAN generator and one RRN generator. Opened on first use; closed at
    ``test_stop`` and at quit, after which the next use opens it again."""

    def __init__(self, environment: Environment, settings: Settings) -> None:
        self.environment = environment
        self.settings = settings
        runner = environment.runner
        self.node = runner.worker_index if isinstance(runner, WorkerRunner) else 0
        #: One STAN counter per process, offset by worker so workers do not collide.
        self.stan = StanGenerator(start=(self.node * 100_000) % 999_999 + 1)
        self.rrn = RrnGenerator(self.node)
        self.codec = codec_for(settings.spec)
        #: Responses that arrived after their request had timed out.
        self.late = 0
        self._tls = (
            client_context(cafile=settings.cafile, certfile=settings.certfile, keyfile=settings.keyfile)
            if settings.tls
            else None
        )
        #: Sends cut off by the end of a run (not reported to Locust), since the start.
        self.cut_off = 0
        self._cut_off_logged = 0
        #: True from the end of a run (test_stop, or quitting) until the next test_start:
        #: no link opens, and a send is not sent nor reported.
        self.stopping = False
        self._pool: Optional[Pool] = None
        self._own: set[Connection] = set()
        self._lock = gevent.lock.RLock()
        hooks: Any = environment.events
        hooks.test_start.add_listener(self._on_start)
        hooks.test_stop.add_listener(self._on_stop)
        hooks.quitting.add_listener(self._on_stop)

    def connection(self) -> Connection:
        """A new, unconnected link to the host, set up like every link of this process."""
        s = self.settings
        return Connection(
            s.address,
            s.spec,
            framing=s.framing,
            tls=self._tls,
            send_timeout=s.timeout,
            connect_timeout=s.connect_timeout,
            stan=self.stan,
            codec=self.codec,
            on_connect=self._sign_on if s.sign_on else None,
            on_close=self._sign_off if s.sign_on else None,
            on_inbound=self._inbound,
        )

    def sender(self) -> Pool:
        """The opened pool (``send(doc, timeout=)``) shared by this process's users.
        Raises :class:`~geviso.PoolClosed` once the run is stopping: a user still running
        then (Locust quits on SIGTERM before it stops the users) opens no second pool."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:  # the first user opens it, the others wait for it
            if self.stopping:
                raise errors.PoolClosed("the load test is stopping")
            if self._pool is None:
                # min_connections=0: a host that is down fails requests fast with
                # NoConnections while the pool keeps dialling it with backoff.
                pool = Pool(
                    lambda address: self.connection(),
                    [self.settings.address] * self.settings.connections,
                    min_connections=0,
                    reconnect_wait=0.5,
                    max_reconnect_wait=5.0,
                )
                pool.connect()
                log.info(
                    "%d of %d link(s) to %s:%d open",
                    len(pool.usable),
                    self.settings.connections,
                    *self.settings.address,
                )
                self._pool = pool
            return self._pool

    def open_own(self) -> Connection:
        """A connected link for one user alone (``--iso-link-per-user``)."""
        if self.stopping:
            raise errors.PoolClosed("the load test is stopping")
        conn = self.connection()
        self._own.add(conn)
        try:
            conn.connect()
        except BaseException:
            self._own.discard(conn)
            raise
        return conn

    def close_own(self, conn: Connection) -> None:
        """Close a user's own link (``--iso-link-per-user``) gracefully."""
        self._own.discard(conn)
        conn.close(timeout=self.settings.timeout)

    def close(self) -> None:
        """Close every link gracefully (in-flight requests get their answers first), once;
        no link opens again until the next test_start."""
        with self._lock:
            self.stopping = True
            pool, self._pool = self._pool, None
        own, self._own = list(self._own), set()
        try:
            for conn in own:  # a failing one (a declined sign-off) does not stop the others
                close_quietly(conn, self.settings.timeout)
        finally:
            if pool is not None:
                pool.close()
                log.info("links to %s:%d closed (%d late responses so far)", *self.settings.address, self.late)

    def _on_start(self, environment: Environment, **_: Any) -> None:
        if environment is self.environment:
            self.stopping = False

    def _on_stop(self, environment: Environment, **_: Any) -> None:
        if environment is not self.environment:
            return
        self.close()
        if self.cut_off > self._cut_off_logged:
            log.info("%d request(s) cut off by the end of the run, not counted", self.cut_off - self._cut_off_logged)
            self._cut_off_logged = self.cut_off

    def _sign_on(self, conn: Connection) -> None:
        """``on_connect``: 0800/001, reported to Locust as "0800 sign-on"."""
        self._network(conn, SIGN_ON, "0800 sign-on")
        conn.status = "online"

    def _sign_off(self, conn: Connection) -> None:
        """``on_close``: 0800/002, reported to Locust as "0800 sign-off"."""
        conn.status = ""
        self._network(conn, SIGN_OFF, "0800 sign-off")

    def _network(self, conn: Connection, code: str, name: str) -> None:
        """Send one 0800 with field 70 = ``code``, report it, raise unless approved."""
        doc = network_message(code, self.stan.next())
        context = {"stan": doc["11"]}
        started = time.perf_counter()
        try:
            response = conn.send(doc, timeout=self.settings.timeout)
        except errors.GevisoError as exc:
            _fire(self.environment, name, started, self.codec, None, exc, context)
            raise
        answer = response.get("39", "")
        failure = None if answer == "00" else errors.Declined(answer)
        _fire(self.environment, name, started, self.codec, response, failure, context)
        if failure is not None:
            raise failure

    def _inbound(self, conn: Connection, doc: Message) -> None:
        """Answer the host's echoes and sign-ons; count late responses quietly."""
        mti = doc.get("t", "")
        if is_response(mti):
            self.late += 1
            log.debug("late response %s", masking.describe(doc))
            return
        response = dict(doc)  # the codec rebuilds the bitmaps ("p", "1") from the fields
        response["t"] = response_mti(mti)
        response["39"] = "00" if mti[1:2] == "8" else "12"  # we only take network management
        conn.reply(response, to=doc)


_links: weakref.WeakKeyDictionary[Environment, dict[str, Links]] = weakref.WeakKeyDictionary()


def links_for(environment: Environment, host: Optional[str]) -> Links:
    """This process's :class:`Links` to ``host`` (made on first use, kept for the run)."""
    by_host = _links.setdefault(environment, {})
    found = by_host.get(host or "")
    if found is None:
        found = by_host[host or ""] = Links(environment, Settings.from_environment(environment, host))
    return found


# -- the client and the user ------------------------------------------------------------
#: Errors of a send that the closing of the links at the end of the run explains.
_CUT_OFF = (errors.PoolClosed, errors.ConnectionClosed, errors.NoConnections)


class ISO8583Client:
    """A user's ``client``: ``send()`` goes out on the process's shared links (or the
    user's own) and is reported to Locust once, as a success or a failure.

    Failures are errors (timeout, closed link, ...) and, when ``declines_fail`` is true,
    responses whose field 39 is not an approval. ``send()`` never raises: it returns the
    response, or None with the error in :attr:`last_error`.
    """

    def __init__(self, user: ISO8583User) -> None:
        self.user = user
        self.environment = user.environment
        self.last_error: Optional[BaseException] = None
        self.last_response: Optional[Message] = None
        per_user = user.link_per_user
        if per_user is None:
            per_user = bool(option(self.environment, "iso_link_per_user"))
        #: True when this user has a link of its own rather than the shared ones.
        self.per_user = per_user
        self._links: Optional[Links] = None
        self._own: Optional[Connection] = None

    @property
    def links(self) -> Links:
        """The process's links to this user's host."""
        links = self._links
        if links is None:
            links = self._links = links_for(self.environment, self.user.host or self.environment.host)
        return links

    def stan(self) -> str:
        """The next STAN (field 11) from this process's generator."""
        return self.links.stan.next()

    def rrn(self) -> str:
        """The next retrieval reference number (field 37)."""
        return self.links.rrn.next()

    def send(
        self,
        doc: Mapping[str, str],
        *,
        name: Optional[str] = None,
        timeout: Optional[float] = None,
        declines_fail: Optional[bool] = None,
        context: Optional[Mapping[str, Any]] = None,
        expect: tuple[type[BaseException], ...] = (),
    ) -> Optional[Message]:
        """Send ``doc`` and report it to Locust under ``name`` (default its MTI).

        ``expect`` lists errors that are an expected outcome of this request rather than
        a failure, e.g. ``(geviso.SendTimeout,)`` for an authorization that a scenario
        reverses when it times out: such an outcome is reported as a success, under
        ``"NAME (ErrorClass)"`` so it has its own row, and ``last_error`` holds it.
        A send cut off by the end of the run is not reported at all.
        """
        links = self.links
        name = name or str(doc.get("t", "?"))
        self.last_error = self.last_response = None
        if links.stopping:  # the run is over: a user still running sends nothing more
            self.last_error = errors.PoolClosed("the load test is stopping")
            return None
        if declines_fail is None:
            declines_fail = self.user.declines_fail
        ctx = {**self.user.context(), **(context or {})}
        if "11" in doc:
            ctx["stan"] = doc["11"]
        timeout = links.settings.timeout if timeout is None else timeout
        started = time.perf_counter()
        response: Optional[Message] = None
        failure: Optional[BaseException] = None
        stopping: Optional[BaseException] = None
        # The send runs in a greenlet of its own because Locust stops users by killing
        # them, now and then mid-request: the request is then given STOP_GRACE seconds
        # to be answered, so the stats still say what became of it; if it is not, the
        # end of the run cut it off, which is no failure and is not reported.
        job = gevent.spawn(self._send, links, doc, timeout)
        try:
            job.join()
        except gevent.GreenletExit as exc:
            stopping = exc
            try:
                job.join(STOP_GRACE)
            except gevent.GreenletExit:
                pass
        if job.ready():
            response, failure = job.value
            if isinstance(failure, errors.SendTimeout):
                # One text per timeout value, so Locust's error table has one row for it.
                failure = errors.SendTimeout(f"no response within {timeout:g}s")
                failure.__cause__ = job.value[1]
            elif failure is not None and not isinstance(failure, errors.GevisoError):
                raise failure  # a bug, not an outcome: Locust logs it as the task's error
        else:
            job.kill(block=False)
            failure = errors.GevisoError("the run ended before the answer came")
        if response is None and (not job.ready() or (links.stopping and isinstance(failure, _CUT_OFF))):
            links.cut_off += 1
            self.last_error = failure
            if stopping is not None:
                raise stopping
            return None
        if response is not None:
            code = response.get("39", "")
            if declines_fail and code not in self.user.approved_codes:
                failure = errors.Declined(code)
        reported = failure
        if failure is not None and expect and isinstance(failure, expect):
            name = f"{name} ({type(failure).__name__})"
            ctx["outcome"] = type(failure).__name__
            reported = None
        _fire(self.environment, name, started, links.codec, response, reported, ctx)
        self.last_error, self.last_response = failure, response
        if stopping is not None:
            raise stopping
        return response

    def _send(
        self, links: Links, doc: Mapping[str, str], timeout: float
    ) -> tuple[Optional[Message], Optional[Exception]]:
        """The response or the error; never raises, so gevent never prints this
        greenlet, whose arguments hold the message (PAN included)."""
        try:
            if not self.per_user:
                return links.sender().send(doc, timeout=timeout), None
            own = self._own
            if own is None or own.closed:
                own = self._own = links.open_own()
            return own.send(doc, timeout=timeout), None
        except Exception as exc:
            return None, exc

    def close(self) -> None:
        """Close the user's own link, if it has one."""
        own, self._own = self._own, None
        if own is not None and self._links is not None:
            self._links.close_own(own)


class ISO8583User(User):
    """An abstract Locust user whose ``client`` is an :class:`ISO8583Client`.

    Subclass it with tasks that build messages and call ``self.client.send(doc)``. The
    host is Locust's ``--host`` (``tcp://HOST:PORT`` or ``tls://HOST:PORT``).
    ``mock_rules`` are rules (MockHost format) the embedded mock host applies for this
    user's traffic when Locust runs with no ``--host``. A subclass overriding
    ``on_stop`` calls ``super().on_stop()``.
    """

    abstract = True
    #: Count responses whose field 39 is not an approval as Locust failures.
    declines_fail: bool = False
    #: Field 39 codes that are approvals.
    approved_codes: frozenset[str] = APPROVAL_CODES
    #: One link per user instead of the process's shared pool; None: ``--iso-link-per-user``.
    link_per_user: Optional[bool] = None
    #: Rules for the embedded mock host (see :func:`start_mock_host`).
    mock_rules: Sequence[Mapping[str, Any]] = ()

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.client = ISO8583Client(self)
        if option(environment, "iso_declines_fail"):
            self.declines_fail = True

    def on_stop(self) -> None:
        """Close the user's own link, if it has one (the shared links close at test_stop)."""
        self.client.close()


# -- the embedded mock host -------------------------------------------------------------
_mock_hosts: weakref.WeakKeyDictionary[Environment, MockHost] = weakref.WeakKeyDictionary()
_mock_admins: weakref.WeakKeyDictionary[Environment, Any] = weakref.WeakKeyDictionary()


def mock_rules_of(user_classes: Iterable[type[User]]) -> list[Mapping[str, Any]]:
    """The ``mock_rules`` of every :class:`ISO8583User` class, each rule once, in order."""
    rules: list[Mapping[str, Any]] = []
    for cls in user_classes:
        for rule in getattr(cls, "mock_rules", ()) or ():
            if rule not in rules:
                rules.append(rule)
    return rules


def start_mock_host(
    environment: Environment,
    *,
    rules: Optional[Sequence[Mapping[str, Any]]] = None,
    bind: str = "127.0.0.1",
    port: int = 0,
    journal_size: int = 0,
) -> MockHost:
    """Start a :class:`~geviso.MockHost` in this process and point ``environment.host``
    at it. Its rules are ``rules`` (default: those of the run's user classes, then of
    ``--iso-mock-rules``). It keeps a request journal of ``journal_size`` entries (none
    by default: it shares the process with the users; ``--iso-mock-admin`` keeps one).
    Stopped at quit; see :func:`mock_host`."""
    rule_set = parse_rules(list(mock_rules_of(environment.user_classes) if rules is None else rules))
    extra = option(environment, "iso_mock_rules") if rules is None else None
    if extra:
        rule_set = RuleSet([*rule_set, *load_rules(extra)])
    host = MockHost(
        (bind, port),
        spec_by_name(option(environment, "iso_spec")),
        framing=by_name(option(environment, "iso_framing")),
        rules=rule_set,
        journal_size=journal_size,
    )
    host.start()
    _mock_hosts[environment] = host
    h, p = host.address
    environment.host = f"tcp://{h}:{p}"
    log.info("embedded mock host listening on %s (%d rule(s))", environment.host, len(rule_set))

    def stop(environment: Environment, **_: Any) -> None:
        if _mock_hosts.get(environment) is host:
            stop_mock_host(environment)

    hooks: Any = environment.events
    hooks.quitting.add_listener(stop)
    return host


def mock_host(environment: Environment) -> Optional[MockHost]:
    """The embedded mock host of this run, or None."""
    return _mock_hosts.get(environment)


def stop_mock_host(environment: Environment, *, drain: float = 3.0) -> None:
    """Stop the embedded mock host and log its stats line.

    Waits up to ``drain`` seconds for the clients to close their links first, so the
    host reads every request they wrote before closing (nothing is lost at the end).
    """
    admin = _mock_admins.pop(environment, None)
    if admin is not None:
        admin.stop()
    host = _mock_hosts.pop(environment, None)
    if host is None:
        return
    host.wait_no_links(drain)
    host.stop(timeout=5.0)
    log.info("embedded mock host stopped: %s", host.stats.summary())


# -- thresholds -------------------------------------------------------------------------
def threshold_failures(environment: Environment) -> list[str]:
    """Why this run fails ``--iso-max-failure-ratio`` / ``--iso-max-p99-ms``, if it does."""
    total = environment.stats.total
    reasons = []
    max_ratio = option(environment, "iso_max_failure_ratio")
    if max_ratio is not None and total.fail_ratio > float(max_ratio):
        reasons.append(f"failure ratio {total.fail_ratio:.4f} over {float(max_ratio):g}")
    max_p99 = option(environment, "iso_max_p99_ms")
    if max_p99 is not None and total.num_requests:
        p99 = total.get_response_time_percentile(0.99)
        if p99 > float(max_p99):
            reasons.append(f"p99 {p99:.0f} ms over {float(max_p99):g} ms")
    return reasons


# -- Locust hooks -----------------------------------------------------------------------
def _add_options(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("geviso", "ISO 8583 links (--host tcp://HOST:PORT or tls://HOST:PORT)")
    group.add_argument(
        "--iso-framing",
        default=DEFAULTS["iso_framing"],
        choices=list(FRAMINGS),
        help=f"length framing: {', '.join(FRAMINGS)} (default binary2)",
    )
    group.add_argument(
        "--iso-spec",
        default=DEFAULTS["iso_spec"],
        help="message spec: default, default_ascii or module:NAME (default: default)",
    )
    group.add_argument(
        "--iso-connections",
        type=int,
        default=DEFAULTS["iso_connections"],
        help="links per Locust process, shared by its users (default 2)",
    )
    group.add_argument(
        "--iso-link-per-user", action="store_true", default=False, help="one link per user instead of the shared links"
    )
    group.add_argument(
        "--iso-timeout",
        type=float,
        default=DEFAULTS["iso_timeout"],
        help="seconds to wait for each response (default 5)",
    )
    group.add_argument(
        "--iso-connect-timeout",
        type=float,
        default=DEFAULTS["iso_connect_timeout"],
        help="seconds to open a link, TLS included (default 10)",
    )
    group.add_argument(
        "--iso-no-sign-on", action="store_true", default=False, help="do not send 0800/001 when a link opens"
    )
    group.add_argument(
        "--iso-declines-fail",
        action="store_true",
        default=False,
        help="count declines (field 39 not an approval) as failures for every user",
    )
    group.add_argument("--iso-ca", help="CA file to verify a tls:// host with")
    group.add_argument("--iso-cert", help="client certificate for mutual TLS")
    group.add_argument("--iso-key", help="client certificate's key")
    group.add_argument(
        "--iso-max-failure-ratio",
        type=float,
        default=None,
        help="exit code 1 when the failure ratio is above this (e.g. 0.01)",
    )
    group.add_argument(
        "--iso-max-p99-ms",
        type=float,
        default=None,
        help="exit code 1 when the 99th percentile response time is above this",
    )
    group.add_argument("--iso-mock-rules", help="extra rules file (JSON/YAML) for the embedded mock host")
    group.add_argument(
        "--iso-mock-bind",
        default=DEFAULTS["iso_mock_bind"],
        help="address the embedded mock host listens on (default 127.0.0.1)",
    )
    group.add_argument(
        "--iso-mock-admin",
        metavar="HOST:PORT",
        help="serve the embedded mock host's admin API and live page there (default: off)",
    )
    group.add_argument("--iso-mock-admin-token", help="token the admin API requires (needed off loopback)")
    group.add_argument(
        "--iso-gc",
        action="store_true",
        default=False,
        help="in every Locust process: gc.freeze() at the start and a generation-0 GC threshold of 50,000 "
        "(less time in the cyclic GC; default: Python's GC settings)",
    )


def _on_init(environment: Environment, runner: Any = None, **_: Any) -> None:
    """Check the ``--iso-*`` options (a bad one stops Locust before the run, not each
    request), and with no ``--host`` start the embedded mock host. Master or local
    process only: workers get the host's address with every spawn message. ``--iso-gc``
    tunes the GC of every process, workers included."""
    if environment.parsed_options is not None and option(environment, "iso_gc"):
        gctune.tune()  # asked for on the command line: this process only generates load
    if isinstance(runner, WorkerRunner) or environment.parsed_options is None:
        return
    if not any(issubclass(cls, ISO8583User) for cls in environment.user_classes):
        return
    ratio, p99 = option(environment, "iso_max_failure_ratio"), option(environment, "iso_max_p99_ms")
    if ratio is not None:
        number(ratio, "--iso-max-failure-ratio", high=1.0, unit="a fraction")
    if p99 is not None:
        number(p99, "--iso-max-p99-ms", low_open=True, high=MAX_SECONDS * 1000.0, unit="milliseconds")
    admin_address = option(environment, "iso_mock_admin")
    if environment.host:
        if admin_address:
            raise errors.ConfigurationError("--iso-mock-admin serves the embedded mock host: give no --host")
        Settings.from_environment(environment, environment.host)
        return
    if admin_address:
        from .mock.admin import check_exposure

        check_exposure(admin_address, option(environment, "iso_mock_admin_token"))  # before anything listens
    journal = JOURNAL_SIZE if admin_address else 0
    host = start_mock_host(environment, bind=option(environment, "iso_mock_bind"), journal_size=journal)
    h, p = host.address
    print(f"geviso: embedded mock host listening on tcp://{h}:{p}", file=sys.stderr, flush=True)
    if admin_address:
        url = start_mock_admin(environment, admin_address, token=option(environment, "iso_mock_admin_token"))
        print(f"geviso: embedded mock host admin on {url}", file=sys.stderr, flush=True)


def _on_init_or_exit(environment: Environment, runner: Any = None, **kwargs: Any) -> None:
    """:func:`_on_init` for the ``locust`` command: a bad option is one line on stderr and
    exit status 2 (an exception would be logged with its traceback by Locust)."""
    try:
        _on_init(environment, runner, **kwargs)
    except errors.ConfigurationError as exc:
        print(f"locust: error: {masking.mask_text(str(exc))}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def mock_admin(environment: Environment) -> Any:
    """The embedded mock host's :class:`~geviso.mock.admin.AdminServer` in this run, or None."""
    return _mock_admins.get(environment)


def start_mock_admin(environment: Environment, address: str, *, token: Optional[str] = None) -> str:
    """Serve the embedded mock host's admin API and live page on ``address`` for the run
    (stopped with the host); returns its URL."""
    from .mock.admin import AdminServer

    host = _mock_hosts.get(environment)
    if host is None:
        raise errors.ConfigurationError("no embedded mock host in this run")
    admin = AdminServer(host, address, token=token).start()
    _mock_admins[environment] = admin
    return admin.url


def _on_quitting(environment: Environment, **_: Any) -> None:
    """Apply the thresholds (master or local process) to the exit code."""
    if isinstance(environment.runner, WorkerRunner):
        return
    if option(environment, "iso_max_failure_ratio") is None and option(environment, "iso_max_p99_ms") is None:
        return
    reasons = threshold_failures(environment)
    for reason in reasons:
        log.error("threshold failed: %s", reason)
    environment.process_exit_code = 1 if reasons else 0


_hooks: Any = events
_hooks.init_command_line_parser.add_listener(_add_options)
_hooks.init.add_listener(_on_init_or_exit)
_hooks.quitting.add_listener(_on_quitting)
