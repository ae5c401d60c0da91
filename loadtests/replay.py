"""Replay a capture as load: ``locust -f loadtests/replay.py --iso-replay capture.jsonl``.

Only runs that give ``--iso-replay`` pick this user up, so ``locust -f loadtests``
keeps running the mixed card scenario alone.
"""

from __future__ import annotations

from geviso.capture.locust import ReplayUser, requested


class CaptureReplayUser(ReplayUser):
    """Sends the capture's requests at the recorded pace; ``-u`` is the concurrency."""

    abstract = not requested()
