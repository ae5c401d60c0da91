"""A mock host that journals every request it receives, with the monotonic time of its
arrival (CLOCK_MONOTONIC is one clock for every process of the machine), for the store
and forward tests; and the messages those tests store."""

from __future__ import annotations

import time
from typing import Any

from iso8583.specs import default as default_spec

import geviso


class JournalHost(geviso.MockHost):
    """A MockHost that keeps ``heard``: (monotonic time, request) per request."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("spec", default_spec)
        super().__init__(("127.0.0.1", 0), **options)
        self.heard: list[tuple[float, dict[str, str]]] = []

    def _answer(self, conn: geviso.Connection, doc: dict[str, str]) -> None:
        if not geviso.codec.is_response(doc.get("t", "")):
            self.heard.append((time.monotonic(), dict(doc)))
        super()._answer(conn, doc)

    def receipts(self, stan: str) -> list[str]:
        """The MTIs under which the message with STAN ``stan`` arrived, in order."""
        return [doc["t"] for _, doc in self.heard if doc.get("11") == stan]


def advice(i: int, mti: str = "0420", terminal: str = "TERM0001") -> dict[str, str]:
    """The i-th stored message of a test: STAN i + 1, a test card, an amount."""
    return {
        "t": mti,
        "2": "4111111111111111",
        "3": "000000",
        "4": f"{1000 + i:012d}",
        "7": "1207023400",
        "11": f"{i + 1:06d}",
        "37": f"6123{i:08d}",
        "41": terminal,
    }


def prefill(store: str, count: int) -> None:
    """Store messages 0..count-1 of :func:`advice` in ``store`` (a path or a URL), with
    no forwarding."""
    saf = geviso.StoreAndForward(None, store, forward=False)
    try:
        for i in range(count):
            saf.put(advice(i))
    finally:
        saf.close()
