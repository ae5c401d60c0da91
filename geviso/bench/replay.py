"""The ``replay`` workload: ``geviso replay --speed max`` of a recorded capture."""

from __future__ import annotations

import gc
from typing import Any, Optional

from ..codec import Spec
from ..framing import by_name as framing_by_name
from .common import REQUEST_0200, SEND_TIMEOUT, Result, _cpu_seconds, answer_of


def replay_capture(messages: int, started: float = 1_796_600_000.0) -> list[Any]:
    """``messages`` exchanges of the ``closed-loop`` 0200 and the answer the mock host
    gives it (field 39 ``00``), 1 ms apart, as a recorded capture holds them."""
    from ..capture import Exchange

    exchanges = []
    for seq in range(1, messages + 1):
        request = {**REQUEST_0200, "11": "%06d" % (seq % 999_999 + 1), "37": "%012d" % seq}
        exchanges.append(Exchange(time=started + seq / 1000.0, request=request, answer=answer_of(request),
                                  latency_ms=0.1, link="127.0.0.1:40000", framing="binary2"))
    return exchanges


def run_replay(address: tuple[str, int], spec: Spec, framing_name: str, concurrency: int, messages: int,
               host_pid: Optional[int] = None) -> Result:
    """``geviso replay --speed max --concurrency N`` of :func:`replay_capture` on one link."""
    from ..capture.replay import Replayer

    exchanges = replay_capture(messages)
    replayer = Replayer(address, spec, framing=framing_by_name(framing_name), concurrency=concurrency, speed=None,
                        timeout=SEND_TIMEOUT)
    replayer.run(replay_capture(200))  # warm up
    gc.collect()
    cpu0, host0 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
    result = replayer.run(exchanges)
    cpu1, host1 = _cpu_seconds(), _cpu_seconds(host_pid) if host_pid else None
    extra: dict[str, Any] = {"concurrency": concurrency, "differ": result.diff.differ}
    if cpu0 is not None and cpu1 is not None and result.seconds:
        extra["client_cpu"] = round((cpu1 - cpu0) / result.seconds, 2)
    if host0 is not None and host1 is not None and result.seconds:
        extra["host_cpu"] = round((host1 - host0) / result.seconds, 2)
    return Result("replay", f"C={concurrency}", len(exchanges), result.seconds, result.latencies,
                  result.diff.same, result.failed, **extra)
