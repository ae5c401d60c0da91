"""Replay a capture in Locust: ``locust -f loadtests/replay.py --iso-replay capture.jsonl``.

:class:`ReplayUser` sends the capture's requests (fresh STANs, RRNs and dates, see
:mod:`geviso.capture.refresh`) at the recorded pace times ``--iso-replay-speed`` (``max``: as
fast as the users can), each reported to Locust as ``MTI replay``, and compares every
answer with the recorded one. The diff (answers with another response code or another
value in ``--iso-replay-compare`` fields, first examples masked) is printed to stderr
at the end, summed over the workers. Each Locust process replays its share of the
capture (whole recorded links, see :func:`geviso.capture.replay.split`): the master tells each
worker its share. The run stops once the capture has been replayed.

With no ``--host``, the embedded mock host plays the same capture back (so a replay
against it shows no differences). Workers on other machines need the capture file too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Optional

import gevent
import gevent.event
from locust import events, task
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

from ..errors import CaptureError
from ..locust import ISO8583User, mock_host
from ..mock.playback import PlaybackFront, parse_match
from . import format as capture_mod
from .refresh import DiffReport, Refresher
from .replay import parse_speed, split

log = logging.getLogger(__name__)

#: The message the master sends each worker with its share: ``{"share": i, "of": n}``.
SHARE_MESSAGE = "geviso_replay_share"
#: The message a worker sends the master when its share is done.
DONE_MESSAGE = "geviso_replay_done"
#: Seconds a worker waits for its share from the master.
SHARE_TIMEOUT = 10.0
#: The key of a worker's diff in its report to the master.
REPORT_KEY = "geviso_replay_diff"


def requested(argv: Optional[list[str]] = None) -> bool:
    """True when the command line asks for a replay (``--iso-replay``): locustfiles use
    it to keep :class:`ReplayUser` out of runs that do not replay."""
    return any(arg == "--iso-replay" or arg.startswith("--iso-replay=") for arg in (argv or sys.argv))


class Feed:
    """This process's share of the capture, handed out in recorded order, with the pace,
    the fresh values and the diff."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        options = environment.parsed_options
        path = getattr(options, "iso_replay", None)
        if not path:
            raise CaptureError("ReplayUser needs --iso-replay CAPTURE")
        self.header, exchanges = capture_mod.read(path, hex=False)
        self.exchanges = sorted(exchanges, key=lambda ex: ex.time)
        self.first = self.exchanges[0].time if self.exchanges else 0.0
        self.speed = parse_speed(str(getattr(options, "iso_replay_speed", "1.0")))
        compare = str(getattr(options, "iso_replay_compare", "") or "")
        self.diff = DiffReport(parse_match(compare) if compare.strip() else ())
        self.share: Optional[list[capture_mod.Exchange]] = None
        self.ready = gevent.event.Event()
        self.refresher: Optional[Refresher] = None
        self.started = 0.0
        self.next = 0
        self.in_flight = 0
        self.done = False
        runner = environment.runner
        if not isinstance(runner, WorkerRunner):
            self.take_share(0, 1)

    def take_share(self, share: int, of: int) -> None:
        """Keep share ``share`` of ``of`` (the master's word, on a worker)."""
        self.share = split(self.exchanges, max(1, of))[share] if share < max(1, of) else []
        log.info("replaying %d of %d recorded exchanges (share %d of %d)", len(self.share), len(self.exchanges),
                 share + 1, of)
        self.ready.set()

    def take(self, user: ISO8583User) -> Optional[tuple[capture_mod.Exchange, float]]:
        """The next exchange to replay and when it is due (monotonic), or None when done."""
        if not self.ready.wait(SHARE_TIMEOUT):
            raise CaptureError("no share of the capture came from the master")
        share = self.share or []
        if self.refresher is None:
            links = user.client.links
            self.refresher = Refresher(links.stan, links.rrn)
            self.started = time.monotonic()
        if self.next >= len(share):
            return None
        exchange = share[self.next]
        self.next += 1
        due = self.started + (0.0 if self.speed is None else max(0.0, exchange.time - self.first) / self.speed)
        return exchange, due

    def finished(self) -> None:
        """Called by each user that found nothing left: the last one ends the run."""
        if self.done or self.in_flight or self.share is None or self.next < len(self.share):
            return
        self.done = True
        runner = self.environment.runner
        if isinstance(runner, WorkerRunner):
            runner.send_message(DONE_MESSAGE, {"index": runner.worker_index})
        elif runner is not None:
            gevent.spawn_later(0.1, runner.quit)


_feeds: dict[int, Feed] = {}
_totals: dict[int, tuple[Environment, DiffReport]] = {}  # on a master


def feed_of(environment: Environment) -> Feed:
    """This process's :class:`Feed` for ``environment`` (read on first use)."""
    feed = _feeds.get(id(environment))
    if feed is None or feed.environment is not environment:
        feed = _feeds[id(environment)] = Feed(environment)
    return feed


class ReplayUser(ISO8583User):
    """Replays the capture given by ``--iso-replay``; concurrency is the user count."""

    abstract = True

    def wait_time(self) -> float:
        """No wait between tasks: the recorded pace decides when each request goes."""
        return 0.0

    @task
    def replay(self) -> None:
        """Send the next recorded request when it is due, and compare its answer."""
        feed = feed_of(self.environment)
        taken = feed.take(self)
        if taken is None:
            feed.finished()
            raise StopUser()
        exchange, due = taken
        wait = due - time.monotonic()
        if wait > 0:
            gevent.sleep(wait)
        assert feed.refresher is not None
        request = feed.refresher.refresh(exchange.request, exchange.time)
        feed.in_flight += 1
        try:
            answer = self.client.send(request, name=f"{request.get('t', '?')} replay")
        finally:
            feed.in_flight -= 1
        feed.diff.check(exchange.answer, answer, request)


# -- Locust hooks -------------------------------------------------------------------------
def _add_options(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("geviso replay", "replay a capture (loadtests/replay.py)")
    group.add_argument("--iso-replay", help="the capture to replay (geviso capture format)")
    group.add_argument("--iso-replay-speed", default="1.0", help="recorded pace times this, or max (default 1.0)")
    group.add_argument("--iso-replay-compare", default="", help="fields compared besides MTI and 39, e.g. 38,54")


def _on_init(environment: Environment, runner: Any = None, **_: Any) -> None:
    path = getattr(environment.parsed_options, "iso_replay", None) if environment.parsed_options else None
    if not path or runner is None:
        return
    if isinstance(runner, MasterRunner):
        _totals[id(environment)] = (environment, DiffReport())  # the workers' diffs, summed
        done: set[int] = set()

        def worker_done(environment: Environment, msg: Any, **_: Any) -> None:
            done.add(int(msg.data["index"]))
            if len(done) >= runner.worker_count:
                gevent.spawn_later(0.5, runner.quit)

        runner.register_message(DONE_MESSAGE, worker_done)
    elif isinstance(runner, WorkerRunner):
        def take_share(environment: Environment, msg: Any, **_: Any) -> None:
            feed_of(environment).take_share(int(msg.data["share"]), int(msg.data["of"]))

        runner.register_message(SHARE_MESSAGE, take_share)
    else:
        feed_of(environment)  # reads the capture now: a bad one stops the run before it starts
    host = mock_host(environment)
    if host is not None:  # the embedded mock host answers as recorded
        front = PlaybackFront(path)
        host.front = front
        front.start(host)


def _on_test_start(environment: Environment, **_: Any) -> None:
    runner = environment.runner
    if not isinstance(runner, MasterRunner) or not getattr(environment.parsed_options, "iso_replay", None):
        return
    index: Any = runner.get_worker_index
    workers = sorted(runner.clients.values(), key=lambda w: int(index(w.id)))
    for position, worker in enumerate(workers):
        runner.send_message(SHARE_MESSAGE, {"share": position, "of": len(workers)}, client_id=worker.id)


def _report_to_master(data: dict[str, Any], **_: Any) -> None:
    """A worker's diff since its last report goes with its stats (one environment a process)."""
    for feed in _feeds.values():
        if isinstance(feed.environment.runner, WorkerRunner):
            data[REPORT_KEY] = feed.diff.as_dict()
            feed.diff = DiffReport(feed.diff.fields)


def _worker_report(data: dict[str, Any], **_: Any) -> None:
    if REPORT_KEY in data:
        for _environment, diff in _totals.values():
            diff.merge(data[REPORT_KEY])


def diff_of(environment: Environment) -> Optional[DiffReport]:
    """The run's diff so far: this process's, or on a master the workers' summed."""
    found = _totals.get(id(environment))
    if found is not None and found[0] is environment:
        return found[1]
    feed = _feeds.get(id(environment))
    return feed.diff if feed is not None and feed.environment is environment else None


def _on_quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    diff = diff_of(environment)
    if diff is not None:
        print("geviso replay diff: " + "\n".join(diff.lines()), file=sys.stderr, flush=True)


_hooks: Any = events
_hooks.init_command_line_parser.add_listener(_add_options)
_hooks.init.add_listener(_on_init)
_hooks.test_start.add_listener(_on_test_start)
_hooks.report_to_master.add_listener(_report_to_master)
_hooks.worker_report.add_listener(_worker_report)
_hooks.quitting.add_listener(_on_quitting)

__all__ = ["Feed", "ReplayUser", "diff_of", "feed_of", "requested"]
