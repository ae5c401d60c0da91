"""The gevent layer of store and forward: durable puts with group commit, and the
forwarding greenlet.

Every store call runs in one thread of the forwarder's own (a ``gevent.threadpool``):
SQLite's and PostgreSQL's calls, fsync included, block the calling thread, and the hub
must keep serving the links meanwhile. The calls greenlets queue while one batch is in
the thread go together in the next transaction: one commit (one fsync) for many puts.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, TypeVar, Union

import gevent
import gevent.event
import gevent.pool
import gevent.threadpool
from iso8583.specs import default as default_spec

from .. import greenlets, masking, options, threads
from ..codec import Codec, Spec, codec_for
from ..errors import (
    ConfigurationError,
    ConnectionClosed,
    GevisoError,
    NoConnections,
    NotConnected,
    PoolClosed,
    StoreError,
)
from ..metrics import SafStats
from ..options import optional_seconds, seconds
from ..stan import StanGenerator
from .core import DELIVERED, EXPIRE, LATE_RESPONSE, Entry, Policy, build_reversal, check_doc, dumps
from .store import Own, Store, Txn, open_store

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Seconds between warnings about new dead letters (the first is reported at once).
DEAD_REPORT_EVERY = 60.0
#: Seconds between the idle forwarder's readings of the store's counts (a count reads
#: every row: at every idle moment of a busy forwarder it would cost more than forwarding).
STATS_EVERY = 1.0
Handler = Callable[..., Any]


class _Insert:
    """A put, queued for the next batch's ``insert_many``."""

    __slots__ = ("row",)

    def __init__(self, row: tuple[str, str, str, float]) -> None:
        self.row = row


class _Ack:
    """An acknowledgement, queued for the next batch's ``ack_many``."""

    __slots__ = ("entry_id",)

    def __init__(self, entry_id: int) -> None:
        self.entry_id = entry_id


class _Then:
    """Where an acknowledgement's outcome goes instead of an AsyncResult: the committer
    calls ``then(None)`` once it is committed, or ``then(error)``; the attempt that
    queued it has ended meanwhile (no greenlet waits, no switch back to it)."""

    __slots__ = ("then",)

    def __init__(self, then: Callable[[Optional[BaseException]], None]) -> None:
        self.then = then

    def set(self, value: Any = None) -> None:
        self.then(None)

    def set_exception(self, error: BaseException) -> None:
        self.then(error)


class _Raised:
    """An exception raised in the store's thread, carried back to be raised in the hub."""

    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _outcome(func: Callable[..., Any], *args: Any) -> Any:
    try:
        return func(*args)
    except Exception as exc:
        return _Raised(exc)


def _in_thread(pool: gevent.threadpool.ThreadPool, func: Callable[..., Any], *args: Any) -> Any:
    """``func(*args)`` in the store's thread; what it raises is raised here, not printed
    by gevent's threadpool (a traceback on stderr for every failed transaction)."""
    result = pool.apply(_outcome, (func, *args))
    if isinstance(result, _Raised):
        raise result.exc
    return result


def _not_written(exc: BaseException) -> bool:
    """True when the request surely never reached the host (no link took it)."""
    if isinstance(exc, ConnectionClosed):
        return not exc.sent
    return isinstance(exc, (NoConnections, NotConnected, PoolClosed))


class StoreAndForward:
    """Messages that must reach the host (reversals, advices), stored durably and
    forwarded until an answer is accepted.

    ``target`` is a :class:`~geviso.Connection` or :class:`~geviso.Pool`; ``store`` a
    SQLite file path, a ``postgresql://`` URL or a :class:`~geviso.saf.store.Store`.
    :meth:`put` returns once the message is committed and synced. The forwarding
    greenlet claims due messages in store order, at most ``window`` at a time, under a
    lease of ``lease`` seconds (default ``timeout + 30``), sends each with ``timeout``,
    and retransmits unanswered ones under the repeat MTI after ``retry_wait`` seconds,
    times ``backoff`` after each failure, at most ``max_wait``; until an answer whose
    field 39 is in ``accepted_codes`` (None: any answer), or until ``expire_after``
    seconds or ``max_attempts`` attempts make it a dead letter. ``on_delivered(entry,
    response)`` and ``on_expired(entry)`` run in the forwarding greenlet's children
    after the store recorded the outcome.
    """

    def __init__(
        self,
        target: Any,
        store: Union[str, os.PathLike[str], Store],
        *,
        spec: Optional[Spec] = None,
        stan: Optional[StanGenerator] = None,
        timeout: float = 10.0,
        retry_wait: float = 1.0,
        backoff: float = 2.0,
        max_wait: float = 60.0,
        expire_after: Optional[float] = 24 * 3600.0,
        max_attempts: Optional[int] = None,
        accepted_codes: Optional[Iterable[str]] = None,
        window: int = 1,
        lease: Optional[float] = None,
        poll_interval: float = 1.0,
        on_delivered: Optional[Handler] = None,
        on_expired: Optional[Handler] = None,
        forward: bool = True,
    ) -> None:
        timeout = seconds(timeout, "timeout", positive=True)
        poll_interval = seconds(poll_interval, "poll_interval", positive=True)
        lease = optional_seconds(lease, "lease", positive=True)
        window = options.whole(window, "window", low=1)
        if not callable(getattr(target, "send", None)) and (target is not None or forward):
            # None: a process that only stores (forward=False); another one forwards.
            raise ConfigurationError(f"target must be a geviso.Connection or geviso.Pool; got {type(target).__name__}")
        if not isinstance(store, (str, os.PathLike, Store)):
            raise ConfigurationError(
                f"store must be a SQLite path, a postgresql:// URL or a Store; got {type(store).__name__}"
            )
        options.optional_instance(stan, StanGenerator, "stan", "a geviso.StanGenerator or None")
        options.optional_instance(spec, Mapping, "spec", "a pyiso8583 spec (a dict of fields)")
        options.handler(on_delivered, "on_delivered")
        options.handler(on_expired, "on_expired")
        lease = timeout + 30.0 if lease is None else lease
        if lease <= timeout:
            raise ConfigurationError("lease must be longer than timeout (another process takes over after it)")
        self.target = target
        self.spec: Spec = spec if spec is not None else getattr(target, "spec", None) or default_spec
        self.codec: Codec = codec_for(self.spec)
        if stan is None:  # a link's own generator keeps its STANs unique
            stan = getattr(target, "stan", None)
        self.stan = stan if isinstance(stan, StanGenerator) else StanGenerator()
        self.timeout = timeout
        self.policy = Policy(
            retry_wait=retry_wait,
            backoff=backoff,
            max_wait=max_wait,
            expire_after=expire_after,
            max_attempts=max_attempts,
            accepted_codes=Policy.codes(accepted_codes),
        )
        self.window = window
        self.lease = lease
        self.poll_interval = poll_interval
        self.on_delivered = on_delivered
        self.on_expired = on_expired
        #: This process's lease owner name: host, pid and a random part.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stats = SafStats()
        self._owner_thread = threads.owner()
        self._thread = gevent.threadpool.ThreadPool(1)
        self._queue: list[tuple[Any, gevent.event.AsyncResult]] = []  # (op, its result)
        self._queued = gevent.event.Event()
        self._wake = gevent.event.Event()
        self._attempts = gevent.pool.Group()
        self._in_flight = 0  # attempts not finished (the group drops them a loop turn later)
        self._batch = max(1, window // 4)  # claim when this many slots are free
        self._freed = gevent.event.Event()
        self._handlers = gevent.pool.Group()
        self._closed = False
        self._forwarder: Optional[gevent.Greenlet] = None
        self._dead_reported_at = -DEAD_REPORT_EVERY
        self._dead_unreported = 0
        try:
            self.store: Store = (
                store if isinstance(store, Store) else _in_thread(self._thread, open_store, os.fspath(store))
            )
        except BaseException:
            self._thread.kill()
            raise
        self._committer = gevent.spawn(self._commit_loop)
        if forward:
            self.start()

    # -- the store, through the thread ------------------------------------------------
    def _submit(self, op: Callable[[Txn], T]) -> T:
        """Run ``op`` in the next transaction and return its result once committed."""
        return self._enqueue(op)  # type: ignore[no-any-return]

    def _enqueue(self, op: Any) -> Any:
        """Queue ``op`` (a function of a :class:`Txn`, an insert or an acknowledgement)
        for the next batch and wait for its result."""
        if self._committer.dead:
            raise StoreError("store and forward is closed")
        done = gevent.event.AsyncResult()
        self._queue.append((op, done))
        self._queued.set()
        return done.get()

    def _commit_loop(self) -> None:
        """Group commit: everything queued while a batch was in the thread goes in the
        next batch. Puts go in as one ``insert_many`` and acknowledgements as one
        ``ack_many``: the less Python the thread runs, the less it holds the GIL the
        hub needs."""
        while True:
            self._queued.wait()
            self._queued.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closed:
                    return  # nothing queued, and no yield before this greenlet is dead
                continue
            inserts = [(op, done) for op, done in batch if isinstance(op, _Insert)]
            acks = [(op, done) for op, done in batch if isinstance(op, _Ack)]
            groups: list[list[tuple[Any, gevent.event.AsyncResult]]] = []
            ops: list[Callable[[Txn], Any]] = []
            if inserts:
                groups.append(inserts)
                ops.append(Own("insert_many", [op.row for op, _ in inserts]))
            if acks:
                groups.append(acks)
                ops.append(Own("ack_many", [op.entry_id for op, _ in acks]))
            for op, done in batch:
                if not isinstance(op, (_Insert, _Ack)):
                    groups.append([(op, done)])
                    ops.append(op)
            try:
                results = _in_thread(self._thread, self.store.run, ops)
            except Exception as exc:  # the transaction failed: nothing in it happened
                error = exc if isinstance(exc, GevisoError) else StoreError(f"store: {type(exc).__name__}: {exc}")
                for _, done in batch:
                    done.set_exception(error)
                continue
            for group, result in zip(groups, results):
                if isinstance(result, BaseException):
                    for _, done in group:
                        done.set_exception(result)
                elif group is inserts:
                    for (_, done), entry_id in zip(group, result):
                        done.set(entry_id)
                else:
                    for _, done in group:
                        done.set(result if len(group) == 1 and group is not acks else True)

    # -- putting ----------------------------------------------------------------------
    def put(self, doc: Mapping[str, str]) -> Entry:
        """Store ``doc`` for forwarding; returns once it is durable. Field 11 is filled
        from ``stan`` when missing. Raises :class:`ConfigurationError` for a message
        that is not a request or advice, :class:`EncodeError` for one the spec cannot
        encode (nothing stored), :class:`StoreError` when the store cannot commit."""
        if self._closed:
            raise StoreError("store and forward is closed")
        threads.check(self._owner_thread, self)
        msg = check_doc(doc)
        if "11" not in msg:
            msg["11"] = self.stan.next()
        self.codec.encode(msg)  # raises EncodeError: never store what can never be sent
        text = dumps(msg)
        now = time.time()
        mti, stan = msg["t"], msg["11"]
        entry_id = int(self._enqueue(_Insert((text, mti, stan, now))))
        self.stats.puts += 1
        self._wake.set()
        return Entry(id=entry_id, doc=msg, created=now, next_at=now)

    def reverse(self, original: Mapping[str, str], reason: str = LATE_RESPONSE, *, mti: Optional[str] = None) -> Entry:
        """Store the reversal of ``original`` (see :func:`geviso.saf.core.build_reversal`)
        for forwarding: for a request whose send failed with ``ConnectionClosed(sent=True)``
        or ``SendTimeout``."""
        return self.put(build_reversal(original, reason=reason, stan=self.stan.next(), mti=mti))

    # -- forwarding -------------------------------------------------------------------
    def start(self) -> None:
        """Start the forwarding greenlet (done by the constructor unless ``forward=False``)."""
        if self._closed:
            raise StoreError("store and forward is closed")
        if self._forwarder is None:
            self._forwarder = gevent.spawn(self._forward_loop)

    def wake(self) -> None:
        """Look for due messages now rather than at the next poll."""
        self._wake.set()

    def _forward_loop(self) -> None:
        while not self._closed:
            free = self.window - self._in_flight
            if free < self._batch:  # claim in batches: one commit for many
                self._freed.clear()
                self._freed.wait(self.poll_interval)
                continue
            self._wake.clear()
            now = time.time()
            lease_until = now + self.lease
            claim = Own("claim", self.owner, now, lease_until, free, self.policy.expired)
            try:
                claimed, expired = self._submit(claim)
            except StoreError as exc:
                log.warning("store and forward: cannot claim messages: %s", masking.mask_text(str(exc)))
                self._wake.wait(self.poll_interval)
                continue
            for entry in expired:
                self._expired(entry)
            for entry in claimed:
                self._in_flight += 1
                self._attempts.add(greenlets.spawn_guarded(self._attempt, entry, lease_until))  # no message printed
            if not claimed and not expired:
                self._refresh_now()
                self._wake.wait(self.poll_interval)

    def _attempt(self, entry: Entry, lease_until: float) -> None:
        """One transmission of ``entry`` (its attempt already counted) and its outcome."""
        try:
            self._transmit(entry, lease_until)
        finally:
            self._in_flight -= 1
            if self.window - self._in_flight >= self._batch:
                self._freed.set()

    def _transmit(self, entry: Entry, lease_until: float) -> None:
        if time.time() + self.timeout >= lease_until:
            return  # the lease could run out mid-send (a stalled store?): let it, and another forwarder send it
        stats = self.stats
        stats.attempts += 1
        if entry.attempts > 1:
            stats.retransmissions += 1
        response: Optional[dict[str, str]] = None
        error = ""
        undo = False
        try:
            response = self.target.send(entry.outgoing(), timeout=self.timeout)
        except GevisoError as exc:
            error = type(exc).__name__
            undo = _not_written(exc)
            stats.failures += 1
            log.debug("store and forward: entry %d attempt %d: %s", entry.id, entry.attempts, error)
        now = time.time()
        if undo:  # nobody got it: the attempt does not count, and the link needs time
            next_at = now + self.policy.retry_wait
            self._record(entry, lambda txn: txn.retry(entry.id, self.owner, next_at, "", undo=True))
            return
        decision = self.policy.decide(entry, response, now, error)
        entry.last_code = decision.code
        if decision.action == DELIVERED:
            self._acknowledge(entry, response)
        elif decision.action == EXPIRE:
            if self._record(entry, lambda txn: txn.dead(entry.id, decision.reason, decision.code)):
                entry.state, entry.reason = "dead", decision.reason
                self._expired(entry)
        else:
            self._record(entry, lambda txn: txn.retry(entry.id, self.owner, decision.next_at, decision.code))

    def _acknowledge(self, entry: Entry, response: Optional[dict[str, str]]) -> None:
        """Queue the acknowledgement of ``entry`` for the next commit, and count the
        delivery and run ``on_delivered`` once it is committed. The attempt ends at once:
        the message stays leased to this process until then, so nobody sends it again."""

        def recorded(error: Optional[BaseException]) -> None:
            if error is not None:
                log.warning("store and forward: cannot record the outcome of entry %d: %s", entry.id, error)
                return
            self.stats.delivered += 1
            if self.on_delivered is not None:
                self._run_handler(self.on_delivered, entry, response)

        if self._committer.dead:
            recorded(StoreError("store and forward is closed"))
            return
        self._queue.append((_Ack(entry.id), _Then(recorded)))
        self._queued.set()

    def _record(self, entry: Entry, op: Any) -> bool:
        """Record an outcome; on a store failure the lease runs out and the message is
        sent again (under the repeat MTI): at least once, never lost."""
        try:
            self._enqueue(op)
        except StoreError as exc:
            text = masking.mask_text(str(exc))
            log.warning("store and forward: cannot record the outcome of entry %d: %s", entry.id, text)
            return False
        return True

    def _expired(self, entry: Entry) -> None:
        self.stats.expired += 1
        log.debug(
            "store and forward: entry %d (%s) is a dead letter: %s",
            entry.id,
            masking.describe(entry.doc),
            masking.mask_text(entry.reason),
        )
        now = time.monotonic()
        self._dead_unreported += 1
        if now - self._dead_reported_at >= DEAD_REPORT_EVERY:  # a host may refuse everything: one line a minute
            log.warning(
                "store and forward: %d message(s) became dead letters (latest: %s); see geviso saf list --state dead",
                self._dead_unreported,
                masking.mask_text(entry.reason),
            )
            self._dead_reported_at, self._dead_unreported = now, 0
        if self.on_expired is not None:
            self._run_handler(self.on_expired, entry)

    def _run_handler(self, handler: Handler, *args: Any) -> None:
        def run() -> None:
            try:
                handler(*args)
            except Exception as exc:  # a handler's bug must not stop forwarding
                name = getattr(handler, "__name__", "handler")
                log.error("store and forward: %s failed: %s", name, masking.mask_text(f"{type(exc).__name__}: {exc}"))

        self._handlers.add(gevent.spawn(run))

    # -- state ------------------------------------------------------------------------
    def refresh_stats(self) -> SafStats:
        """Read depth, dead letters and the oldest message's age from the store."""
        counts = self._submit(lambda txn: txn.counts())
        self.stats.update_counts(counts, time.time())
        return self.stats

    def _refresh_now(self) -> None:
        if time.time() - self.stats.refreshed < STATS_EVERY:
            return
        try:
            self.refresh_stats()
        except StoreError:
            pass

    def entries(self, state: Optional[str] = None, limit: int = 100) -> list[Entry]:
        """Stored messages in store order (of ``state``: ``pending`` or ``dead``)."""
        return self._submit(lambda txn: txn.entries(state, limit))

    def drain(self, timeout: float) -> bool:
        """Wait until no message is pending (dead letters aside); True if so in time."""
        deadline = time.monotonic() + seconds(timeout, "timeout")
        while time.monotonic() < deadline:
            if not len(self._attempts) and not self._submit(Own("any_pending")):
                self.refresh_stats()
                return True
            self._wake.set()
            gevent.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self, timeout: float = 5.0) -> None:
        """Stop forwarding, let attempts in flight finish (up to ``timeout``), give up
        this process's leases and close the store. Idempotent."""
        timeout = seconds(timeout, "timeout")
        if self._closed:
            return
        threads.check(self._owner_thread, self)
        self._closed = True
        self._wake.set()
        if self._forwarder is not None:
            self._forwarder.join(timeout=timeout)
            self._forwarder.kill(block=False)
        self._attempts.join(timeout=timeout)
        self._attempts.kill(block=False)
        owner = self.owner
        try:  # committed after the acknowledgements the attempts queued
            self._submit(lambda txn: txn.release(owner))
        except StoreError as exc:
            log.warning("store and forward: cannot release leases: %s", masking.mask_text(str(exc)))
        self._handlers.join(timeout=timeout)  # on_delivered of those acknowledgements too
        self._queued.set()  # the committer runs what is queued, then ends
        self._committer.join(timeout=timeout)
        self._committer.kill()
        left, self._queue = self._queue, []
        for _, done in left:  # the store did not answer in time: these never ran
            done.set_exception(StoreError("store and forward is closed"))
        try:
            _in_thread(self._thread, self.store.close)
        finally:
            self._thread.kill()

    def __enter__(self) -> StoreAndForward:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<geviso.StoreAndForward {self.store.location} depth={self.stats.depth}>"


__all__ = ["StoreAndForward"]
