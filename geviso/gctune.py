"""Opt-in cyclic GC settings for load generators (``geviso bench --gc-freeze``, Locust's
``--iso-gc``). The library itself never changes the process's GC settings.

A burst of 100,000 sends holds 100,000 pending requests and greenlets at once, and the
cyclic GC walks them again at every generation-0 collection. :func:`tune` moves every
object alive now out of the collector's sight (``gc.freeze()``: the modules, the links,
the hosts) and raises the generation-0 threshold, so collections come less often.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations (less deallocations) between generation-0 collections when tuned; Python's
#: default is 700 (2,000 from Python 3.13 on).
GEN0_THRESHOLD = 50_000


def tune(threshold0: int = GEN0_THRESHOLD) -> tuple[int, ...]:
    """Collect once, freeze what is alive, and raise the generation-0 threshold; returns
    the thresholds it replaced. For a process that does nothing but generate load."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(threshold0, before[0]), *before[1:])
    return before


@contextmanager
def tuned(threshold0: int = GEN0_THRESHOLD) -> Iterator[None]:
    """:func:`tune` for the ``with`` block, then the previous thresholds and an unfrozen heap."""
    before = tune(threshold0)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


__all__ = ["GEN0_THRESHOLD", "tune", "tuned"]
