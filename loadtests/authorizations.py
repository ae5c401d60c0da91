"""Pre-authorizations (0100) and their completions (0220), as at a fuel pump."""

from __future__ import annotations

from _scenario import CardUser
from locust import between, task


class AuthCompletionUser(CardUser):
    """A pump: authorize a fixed amount, pump, complete for what was taken."""

    weight = 3
    wait_time = between(0.1, 0.4)

    @task
    def authorize_and_complete(self) -> None:
        card = self.card()
        hold = self.rng.choice((7500, 10000, 15000))
        auth = self.card_present("0100", card, hold)
        answer = self.client.send(auth, name="0100 authorization")
        if answer is None or answer.get("39") not in self.approved_codes:
            return  # no hold, nothing to complete
        final = self.rng.randint(1000, hold)
        completion = self.follow_up("0220", auth, self.client.stan(), **{"4": f"{final:012d}"})
        completion["38"] = answer.get("38", "")
        self.client.send(completion, name="0220 completion")
