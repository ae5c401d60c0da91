"""Reversals (0400) of authorizations that timed out, through store and forward.

The cards come from the slow test BIN, which the embedded mock host answers only after
the terminal gave up: the terminal then reverses the authorization, as it must, since
the issuer may have approved it. Against a real host, answered ones need no reversal.

The timeout is this scenario's expected outcome, not a failure: Locust counts it as a
success in a row of its own, "0100 slow issuer (SendTimeout)", beside the answered ones.

The reversal is not sent by the user: ``saf.reverse(auth)`` stores it durably (a SQLite
file per Locust process, ``--iso-saf-store`` to choose it) and the process's store and
forward sends it, reporting each transmission to Locust: "0400 reversal", and "0401
reversal (repeat)" for a retransmission. A stopping user waits for the stored reversals
to be sent; any still stored when a run ends are sent by the next run on the same store.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from typing import Any, Optional

from _scenario import REVERSAL_AFTER_S, SLOW_BIN, CardUser
from locust import between, events, task
from locust.env import Environment

import geviso
from geviso.locust import ISO8583Client

#: Seconds the store and forward waits for each reversal's answer, and for those in
#: flight when the run stops.
REVERSAL_TIMEOUT_S = 5.0

_safs: weakref.WeakKeyDictionary[Environment, geviso.StoreAndForward] = weakref.WeakKeyDictionary()


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        "--iso-saf-store",
        default=None,
        help="store and forward store of the reversals: a SQLite file or postgresql:// URL (default: a temporary file)",
    )


class _Reported:
    """The store and forward's target: a client of its own on the process's links, so
    each transmission is reported to Locust like any send."""

    def __init__(self, client: ISO8583Client) -> None:
        self.client = client
        self.stan = client.links.stan  # the process's STANs: unique across its users

    def send(self, doc: dict[str, str], *, timeout: Optional[float] = None) -> dict[str, str]:
        repeat = doc["t"] != "0400"
        name = f"{doc['t']} reversal (repeat)" if repeat else "0400 reversal"
        response = self.client.send(doc, name=name, timeout=timeout)
        if response is None:
            raise self.client.last_error or geviso.GevisoError("no response")
        return response


def store_and_forward(user: CardUser) -> geviso.StoreAndForward:
    """The store and forward of the user's Locust process, opened on first use and
    closed when the run stops."""
    env = user.environment
    saf = _safs.get(env)
    if saf is None:
        store = getattr(env.parsed_options, "iso_saf_store", None) if env.parsed_options else None
        if not store:
            store = os.path.join(tempfile.mkdtemp(prefix="geviso-reversals-"), "saf.db")
        saf = _safs[env] = geviso.StoreAndForward(
            _Reported(ISO8583Client(user)), store, timeout=REVERSAL_TIMEOUT_S, window=16, retry_wait=0.5, max_wait=5.0
        )

        def close(**_: Any) -> None:
            if _safs.get(env) is saf:
                del _safs[env]
            saf.close(timeout=REVERSAL_TIMEOUT_S)

        env.events.test_stop.add_listener(close)
        env.events.quitting.add_listener(close)
    return saf


class ReversalUser(CardUser):
    """A terminal on a slow issuer: authorization, timeout, reversal."""

    weight = 1
    wait_time = between(0.2, 0.6)

    @task
    def authorize_or_reverse(self) -> None:
        auth = self.card_present("0100", self.card(SLOW_BIN), self.amount())
        answer = self.client.send(auth, name="0100 slow issuer", timeout=REVERSAL_AFTER_S, expect=(geviso.SendTimeout,))
        if answer is not None or not isinstance(self.client.last_error, geviso.SendTimeout):
            return
        store_and_forward(self).reverse(auth)  # "68": response received too late; durable once it returns

    def on_stop(self) -> None:
        """A terminal that stops lets the stored reversals reach the host first (bounded)."""
        saf = _safs.get(self.environment)
        if saf is not None and not saf.closed:
            saf.drain(REVERSAL_TIMEOUT_S)
        super().on_stop()
