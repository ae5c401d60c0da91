"""Card-present purchases (0200): chip, contactless and swiped, at a fleet of terminals."""

from __future__ import annotations

from _scenario import DECLINED_BIN, CardUser
from locust import between, task


class PurchaseUser(CardUser):
    """A checkout lane: a purchase every fraction of a second, one in fifty declined."""

    weight = 6
    wait_time = between(0.05, 0.25)

    @task
    def purchase(self) -> None:
        card = self.card(DECLINED_BIN if self.rng.random() < 0.02 else None)
        self.client.send(self.card_present("0200", card, self.amount()), name="0200 purchase")
