"""The ``memory`` workload: state after 10,000 messages against after many more."""

from __future__ import annotations

import gc
import os
import time

import gevent

from ..codec import Spec, response_mti
from ..connection import Connection
from ..framing import by_name as framing_by_name
from ..metrics import in_flight
from .common import REQUEST_0200, SEND_TIMEOUT, Result, _local_mock_host, _matches


# -- memory -----------------------------------------------------------------------------------
def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _greenlets() -> int:
    from greenlet import greenlet

    return sum(1 for obj in gc.get_objects() if isinstance(obj, greenlet))


def run_memory(spec: Spec, framing_name: str, messages: int, concurrency: int = 100) -> Result:
    """Closed loop on one link, host in this process: state after 10,000 vs ``messages``."""
    done = {"matched": 0, "failed": 0, "sent": 0}
    snapshots: dict[str, dict[str, int]] = {}
    answer_mti = response_mti(REQUEST_0200["t"])
    with _local_mock_host(spec, framing_name) as (address, host):
        with Connection(address, spec, framing=framing_by_name(framing_name), send_timeout=SEND_TIMEOUT) as conn:

            def state() -> dict[str, int]:
                gc.collect()
                links = list(host.connections)
                return {
                    "rss": _rss_bytes(),
                    "greenlets": _greenlets(),
                    "pending": in_flight(conn) + in_flight(host),
                    "buffered": conn._decoder.buffered + sum(link._decoder.buffered for link in links),
                    "queued": len(conn._outbox) + sum(len(link._outbox) for link in links),
                }

            def loop(count: int) -> None:
                per_sender = count // concurrency

                def sender() -> None:
                    for _ in range(per_sender):
                        done["sent"] += 1
                        seq = done["sent"]
                        request = dict(REQUEST_0200, **{"11": "%06d" % (seq % 999_999 + 1), "37": "%012d" % seq})
                        try:
                            response = conn.send(request)
                        except Exception:
                            done["failed"] += 1
                            continue
                        if _matches(request, response, answer_mti):
                            done["matched"] += 1

                gevent.joinall([gevent.spawn(sender) for _ in range(concurrency)])

            baseline = min(10_000, messages)
            loop(baseline)
            snapshots["after_10k"] = state()
            started = time.perf_counter()
            loop(messages - baseline)
            seconds = time.perf_counter() - started
            snapshots["after_all"] = state()
    before, after = snapshots["after_10k"], snapshots["after_all"]
    grew = {key: after[key] - before[key] for key in before}
    return Result("memory", f"{messages:,} vs 10,000", done["sent"], seconds, [], done["matched"],
                  done["failed"], after_10k=before, after_all=after, growth=grew,
                  holds=grew["greenlets"] <= 0 and after["pending"] == 0 and after["queued"] == 0
                  and grew["rss"] <= 4 * 1024 * 1024)
