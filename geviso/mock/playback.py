"""Play a capture back: answer each request as the real host answered the recorded
request that matches it (the mock host's ``playback=``).

A request matches a recorded request with the same MTI, the same network management
code (field 70) and the same values in the ``match`` fields (default 2, 3, 4 and 41; a
field missing from both matches). When
several recorded requests match, their answers are given in recorded order, round and
round. The answer is the recorded one with the request's echoed fields (STAN, dates,
RRN, terminal... the mock host's ``echo_fields``) and a fresh field 7 (and 12, 13) when
the request lacks them. A recorded request that got no answer gets none. With
``latency``, each answer waits the recorded latency. A request that matches nothing
falls through to the mock host's rules.

A masked capture matches on masked values: the request's card fields are masked the
same way before they are compared.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Optional, Union

import gevent
import gevent.pool

from .. import greenlets
from ..capture import format as capture_mod
from ..codec import Message, Spec, transmission_datetime
from ..connection import Connection
from ..errors import ConfigurationError
from .proxy import Front, reply

if TYPE_CHECKING:
    from .host import MockHost

log = logging.getLogger(__name__)

#: Fields a request must share with a recorded one (besides its MTI) unless told otherwise.
DEFAULT_MATCH = ("2", "3", "4", "41")

PathLike = Union[str, "os.PathLike[str]"]


def parse_match(text: str) -> tuple[str, ...]:
    """``"2,3,4,41"`` as field names; :class:`ConfigurationError` for anything else."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or not all(name.isdigit() and 2 <= int(name) <= 128 for name in names):
        raise ConfigurationError(f"match fields {text!r}: give field numbers 2..128, comma-separated")
    return names


class Playback:
    """The recorded answers of a capture, indexed by MTI and ``match`` fields. No I/O
    once built (give it a path to read, or a header and exchanges)."""

    def __init__(
        self,
        source: Union[PathLike, tuple[capture_mod.Header, Sequence[capture_mod.Exchange]]],
        *,
        match: Optional[Iterable[str]] = None,
    ) -> None:
        header, exchanges = capture_mod.read(source, hex=False) if not isinstance(source, tuple) else source
        self.header = header
        self.match = tuple(match) if match is not None else DEFAULT_MATCH
        self._index: dict[Hashable, list[capture_mod.Exchange]] = {}
        self._turn: dict[Hashable, int] = {}
        for exchange in exchanges:
            self._index.setdefault(self.key(exchange.request), []).append(exchange)
        #: Requests answered from the recording, and requests that matched nothing.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return sum(len(found) for found in self._index.values())

    def key(self, request: Mapping[str, str], spec: Optional[Spec] = None) -> Hashable:
        """The lookup key of ``request``; with ``spec`` and a masked capture, of its masked
        values (recorded requests are masked already)."""
        values = {name: request[name] for name in self.match if name in request}
        if spec is not None and self.header.masked:
            values = capture_mod.mask_message(values, spec)
        return (request.get("t", ""), request.get("70"), *(values.get(name) for name in self.match))

    def find(self, request: Mapping[str, str], spec: Optional[Spec] = None) -> Optional[capture_mod.Exchange]:
        """The recorded exchange to answer ``request`` with, or None."""
        key = self.key(request, spec)
        found = self._index.get(key)
        if not found:
            self.misses += 1
            return None
        turn = self._turn.get(key, 0)
        self._turn[key] = turn + 1
        self.hits += 1
        return found[turn % len(found)]


def fresh_answer(
    recorded: Mapping[str, str], request: Mapping[str, str], echo_fields: Iterable[str]
) -> Message:
    """The recorded answer with ``request``'s values for the echoed fields, and field 7
    (12, 13) of now when the answer has one and the request does not."""
    answer = dict(recorded)
    for name in echo_fields:
        if name in request:
            answer[name] = request[name]
    now = datetime.datetime.now(datetime.timezone.utc)
    if "7" in answer and "7" not in request:
        answer["7"] = transmission_datetime(now)
    if "12" in answer and "12" not in request:
        answer["12"] = now.strftime("%H%M%S")
    if "13" in answer and "13" not in request:
        answer["13"] = now.strftime("%m%d")
    return answer


class PlaybackFront(Front):
    """A mock host's front that answers from a :class:`Playback`."""

    def __init__(
        self,
        playback: Union[PathLike, Playback],
        *,
        match: Optional[Iterable[str]] = None,
        latency: bool = False,
    ) -> None:
        if isinstance(playback, Playback):
            if match is not None and tuple(match) != playback.match:
                raise ConfigurationError("match= differs from the Playback's own match fields")
            self.playback = playback
        else:
            self.playback = Playback(playback, match=match)
        self.latency = latency
        self._host: Optional[MockHost] = None
        self._delayed = gevent.pool.Group()

    def start(self, host: MockHost) -> None:
        self._host = host
        log.info("playing back %d recorded exchanges, matched on MTI and fields %s",
                 len(self.playback), ",".join(self.playback.match) or "-")

    def answer(self, conn: Connection, doc: dict[str, str]) -> bool:
        """Answer from the recording when a recorded request matches; else False."""
        host = self._host
        assert host is not None
        exchange = self.playback.find(doc, host.spec)
        if exchange is None:
            return False
        if exchange.answer is None:
            host.stats.dropped += 1
            return True
        answer = fresh_answer(exchange.answer, doc, host.echo_fields)
        if self.latency and exchange.latency_ms:
            self._delayed.add(greenlets.spawn_later_guarded(exchange.latency_ms / 1000.0, reply, host, conn, answer))
        else:
            reply(host, conn, answer)
        return True

    def stop(self, deadline: float) -> None:
        self._delayed.join(timeout=max(0.0, deadline - time.monotonic()))
        self._delayed.kill(block=False)
        log.info("playback: %d answered from the recording, %d left to the rules",
                 self.playback.hits, self.playback.misses)


__all__ = ["DEFAULT_MATCH", "Playback", "PlaybackFront", "fresh_answer", "parse_match"]
