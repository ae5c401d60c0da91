"""Recorded traffic: the capture format, and what reads, imports and replays it.

This package's names are those of :mod:`~geviso.capture.format` (the capture file:
JSON lines with a header). The rest: :mod:`~geviso.capture.pcap` (import tcpdump
captures), :mod:`~geviso.capture.refresh` (fresh STANs, RRNs and dates, and how answers
differ; no I/O), :mod:`~geviso.capture.replay` (a capture sent again as load),
:mod:`~geviso.capture.locust` (the same in Locust) and :mod:`~geviso.capture.cli` (the
``geviso capture`` and ``geviso replay`` commands). Recording and playing back are the
mock host's: :mod:`geviso.mock.proxy` and :mod:`geviso.mock.playback`.
"""

from __future__ import annotations

from . import format as _format
from .format import *  # noqa: F403 - this package's names are the format's

__all__ = list(_format.__all__)
