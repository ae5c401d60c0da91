"""The ``codec`` workload: encode and decode alone, compiled and pyiso8583."""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import iso8583

from ..codec import Codec, CompiledCodec, Spec, codec_for
from .common import REQUEST_0200, REQUEST_0800, Result, answer_of


def run_codec(spec: Spec, messages: int) -> list[Result]:
    """Encode and decode of both messages (and their answers), compiled and pyiso8583."""
    results = []
    reference = Codec(spec)
    fast = codec_for(spec)
    kinds: list[tuple[str, Codec]] = [("compiled", fast)] if isinstance(fast, CompiledCodec) else []
    kinds.append(("pyiso8583", reference))
    for name, doc in (("0800/11", REQUEST_0800), ("0200/15", REQUEST_0200)):
        raw = reference.encode(answer_of(doc))
        for kind, codec in kinds:
            for op, call, arg in (("encode", codec.encode, doc), ("decode", codec.decode, raw)):
                result = _time_calls(call, arg, messages)
                results.append(Result("codec", f"{op} {name} {kind}", messages, result[0], result[1], messages))
        if isinstance(fast, CompiledCodec) and fast.fallbacks:
            raise RuntimeError("the compiled codec fell back to pyiso8583 on the benchmark messages")
        if fast.decode(fast.encode(doc)) != iso8583.decode(reference.encode(doc), spec)[0]:
            raise RuntimeError("the compiled codec disagrees with pyiso8583")
    return results


def _time_calls(call: Callable[[Any], Any], arg: Any, count: int, batch: int = 100) -> tuple[float, list[float]]:
    """Total seconds for ``count`` calls, and the per-call time of each batch of 100."""
    per_call = []
    rounds = max(1, count // batch)
    clock = time.perf_counter
    total = 0.0
    for _ in range(rounds):
        started = clock()
        for _ in range(batch):
            call(arg)
        spent = clock() - started
        total += spent
        per_call.append(spent / batch)
    return total * count / (rounds * batch), per_call


def codec_cost(spec: Spec, count: int = 5_000) -> Optional[float]:
    """Nanoseconds a client's codec spends per round trip: encode the 0200, decode the answer."""
    fast = codec_for(spec)
    raw = fast.encode(answer_of(REQUEST_0200))
    return (_time_calls(fast.encode, REQUEST_0200, count)[0] + _time_calls(fast.decode, raw, count)[0]) / count * 1e9
