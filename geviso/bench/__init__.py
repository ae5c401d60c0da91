"""``geviso bench`` (also ``python -m geviso.bench``): throughput and latency.

Workloads (``--workload``, comma-separated; default all but ``memory``):

``burst``
    One link, the mock host in this process, 0800 with field 11 only (the shape of
    moov-io/iso8583-connection's own benchmark), bursts of 100 / 1,000 / 10,000 /
    100,000 concurrent sends timed end to end, each from its own raw greenlet. Each
    size runs back to back until it has sent ``--messages`` (default 100,000;
    ``burst 1,000 x100``). Each row also shows the cyclic GC's share of the time.
    Each size is followed by ``greenlets N``: as many raw greenlets that each block
    once, without geviso, the harness's own cost.
``closed-loop``
    ``--concurrency`` senders (default 1, 10, 100) on one link, each sending the next
    0200 (15 fields, ``iso8583.specs.default``) when its answer arrives; the mock host
    runs in another process (``geviso mock-host --port 0``), so each side has a core.
``codec``
    Encode and decode alone, for both messages, with the codec links use and with plain
    pyiso8583: the connection layer's own cost is the difference.
``transport``
    The baseline: a bare gevent framed echo between two processes (one writer, one
    reader splitting frames, one ``AsyncResult`` per request, no codec), same frames;
    then a geviso client against the same echo process. The difference, less the
    client's codec, is the connection layer's own cost.
``links``
    The same closed-loop senders (``--senders``, default 1,000, each sending its next
    0200 on each answer) spread over each of ``--links`` links (default 1 and 1,000;
    e.g. ``1,10,100,1000``) to one mock host process: the cost per message of many links, each carrying
    few messages per wake-up, against one link carrying them all. The summary gives
    the ratio of the most links to one link, in wall-clock time and in each side's CPU
    time per message.
``saf``
    Store and forward (:mod:`geviso.saf.bench`): durable puts per second on SQLite at
    each ``--concurrency``, forwards per second, put-to-acknowledgement latency, and
    the p99 of 10 closed-loop senders alone and beside a store and forward doing 1,000
    messages a second. Not part of ``all``.
``replay``
    ``geviso replay --speed max`` at each ``--concurrency``: a capture of 0200s (the
    ``closed-loop`` request, with the answers the mock host gives) replayed against the
    same mock host process, with fresh STANs, RRNs and dates and every answer compared
    with the recorded one; the summary gives its rate as a share of ``closed-loop``'s.
    Not part of ``all``.
``moov``
    moov-io/iso8583-connection's own benchmark shape: one link and the host in this
    process, 0800 with field 11 only, one burst of 1,000 / 10,000 / 100,000 concurrent
    sends (up to ``--messages``), each from ``gevent.spawn``; the host is the MockHost
    and ``Server(on_inbound=handler)`` (``--moov-host``). ``--compare-moov BINARY``
    runs moov's benchmark binary and this workload in turn, ``--rounds`` times, and
    prints the ratios. Not part of ``all``.
``memory``
    1,000,000 messages against 10,000 (``--messages``): RSS, greenlets, pending
    requests and buffers must not grow. Long; not part of ``all``.

Every response is checked against its request (MTI, fields 11 and 37); the exit status
is 1 if any did not match or failed. ``--host`` aims ``burst`` and ``closed-loop`` at an
external host. Figures vary with the machine and its load: use ``--repeat`` (best of N).
"""

from __future__ import annotations

from .burst import run_burst, run_spawn
from .closed_loop import run_closed_loop
from .codec import codec_cost, run_codec
from .command import DEFAULT_WORKLOADS, WORKLOADS, build_parser, machine, main, run, summary
from .common import REQUEST_0200, REQUEST_0800, Result, _Collector, answer_of, best
from .memory import run_memory
from .replay import replay_capture, run_replay
from .transport import run_transport, run_transport_geviso, serve_echo

__all__ = [
    "DEFAULT_WORKLOADS",
    "REQUEST_0200",
    "REQUEST_0800",
    "WORKLOADS",
    "Result",
    "_Collector",
    "answer_of",
    "best",
    "build_parser",
    "codec_cost",
    "machine",
    "main",
    "replay_capture",
    "run",
    "run_burst",
    "run_closed_loop",
    "run_codec",
    "run_memory",
    "run_replay",
    "run_spawn",
    "run_transport",
    "run_transport_geviso",
    "serve_echo",
    "summary",
]
