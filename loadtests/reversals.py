"""Reversals (0400) of authorizations that timed out.

The cards come from the slow test BIN, which the embedded mock host answers only after
the terminal gave up: the terminal then reverses the authorization, as it must, since
the issuer may have approved it. Against a real host, answered ones need no reversal.

The timeout is this scenario's expected outcome, not a failure: Locust counts it as a
success in a row of its own, "0100 slow issuer (SendTimeout)", beside the answered ones.
"""

from __future__ import annotations

from _scenario import REVERSAL_AFTER_S, SLOW_BIN, CardUser
from locust import between, task

import geviso


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
        # "68": response received too late.
        reversal = self.follow_up("0400", auth, self.client.stan(), **{"39": "68"})
        self.client.send(reversal, name="0400 reversal")
