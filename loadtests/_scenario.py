"""What the scenarios share: test cards, a fleet of terminals, message builders and the
embedded mock host's rules. Locust skips files starting with ``_``, so this module is
imported by the locustfiles, never loaded as one.

Every message carries field 7 (UTC), 11 (STAN from the process's shared generator), 12
and 13 (terminal local time), 37 (RRN), 41 (terminal) and 42 (merchant). PANs are
Luhn-valid numbers under public test BINs; they are never logged.
"""

from __future__ import annotations

import datetime
import random
from dataclasses import dataclass
from typing import Any, Optional

from geviso.locust import ISO8583User, make_pan, original_data, transmission_datetime

#: Test BINs (the prefixes of the card networks' published test numbers), with PAN lengths.
TEST_BINS = (
    ("411111", 16),  # Visa
    ("401288", 16),  # Visa
    ("555555", 16),  # Mastercard
    ("510510", 16),  # Mastercard
    ("222300", 16),  # Mastercard 2-series
    ("378282", 15),  # American Express
    ("601111", 16),  # Discover
    ("353011", 16),  # JCB
)
#: Cards the embedded mock host declines with 05 (do not honour).
DECLINED_BIN = "400002"
#: Cards whose authorizations the embedded mock host answers after the client gave up.
SLOW_BIN = "400009"
#: The client's timeout for an authorization that may be answered late, and how late
#: the mock host answers it.
REVERSAL_AFTER_S = 1.0
SLOW_ANSWER_MS = 1500

ACQUIRER_ID = "412345"
CURRENCY = "840"  # USD

#: Rules of the embedded mock host, in order (the first match wins).
MOCK_RULES: list[dict[str, Any]] = [
    {"name": "declined test cards", "match": {"pan_prefix": DECLINED_BIN}, "code": "05"},
    {
        "name": "slow issuer",
        "match": {"mti": "0100", "pan_prefix": SLOW_BIN},
        "action": "late",
        "delay_ms": SLOW_ANSWER_MS,
    },
    {"name": "issuer latency", "match": {"mti": ["0100", "0200"]}, "delay_ms": [1, 8]},
]

# Merchant category code, name (23 characters at most), city (13 at most).
_MERCHANTS = (
    ("5411", "CORNER GROCERY", "SPRINGFIELD"),
    ("5812", "BLUE DOOR BISTRO", "SHELBYVILLE"),
    ("5814", "QUICK BURGER", "OGDENVILLE"),
    ("5912", "MAIN ST PHARMACY", "SPRINGFIELD"),
    ("5541", "SUNRISE FUEL", "CAPITAL CITY"),
    ("5311", "VALUE DEPT STORE", "NORTH HAVERBROOK"),
)


@dataclass(frozen=True)
class Terminal:
    """A point-of-sale terminal: its ids and where it stands."""

    terminal_id: str  # field 41, 8 characters
    merchant_id: str  # field 42, 15 characters
    mcc: str  # field 18
    name_location: str  # field 43, 40 characters
    utc_offset_h: int  # the terminal's local time for fields 12 and 13


def _fleet(size: int = 240, seed: int = 8583) -> tuple[Terminal, ...]:
    rng = random.Random(seed)
    terminals = []
    for i in range(size):
        merchant = i // 4  # four lanes per store
        mcc, name, city = _MERCHANTS[merchant % len(_MERCHANTS)]
        location = f"{name[:23]:<23}{city[:13]:<13}{'IL'}{'US'}"  # name, city, state, country
        terminals.append(
            Terminal(
                terminal_id=f"T{i + 1:07d}",
                merchant_id=f"M{merchant + 1:014d}",
                mcc=mcc,
                name_location=location,
                utc_offset_h=rng.choice((-6, -5)),
            )
        )
    return tuple(terminals)


TERMINALS = _fleet()


@dataclass
class Card:
    pan: str
    expiry: str  # YYMM
    service_code: str

    def track2(self) -> str:
        """Track 2 equivalent data (field 35), as a chip or stripe read gives it."""
        return f"{self.pan}={self.expiry}{self.service_code}{'0' * 11}"


class CardUser(ISO8583User):
    """A terminal with cards to present: each user is one lane of one store."""

    abstract = True
    mock_rules = MOCK_RULES

    def on_start(self) -> None:
        self.rng = random.Random()
        self.terminal = self.rng.choice(TERMINALS)

    # -- data ---------------------------------------------------------------------------
    def card(self, bin_: Optional[str] = None) -> Card:
        if bin_ is None:
            bin_, length = self.rng.choice(TEST_BINS)
        else:
            length = 16
        now = datetime.date.today()
        expiry = f"{(now.year + self.rng.randint(1, 4)) % 100:02d}{self.rng.randint(1, 12):02d}"
        return Card(make_pan(bin_, length, self.rng), expiry, self.rng.choice(("201", "101")))

    def amount(self, median_cents: int = 2500, cap_cents: int = 50_000) -> int:
        """A basket amount in cents: mostly small, now and then large."""
        return max(50, min(cap_cents, int(self.rng.lognormvariate(0, 0.9) * median_cents)))

    def base(self, mti: str, card: Card, amount: int, *, processing: str = "000000") -> dict[str, str]:
        """The fields every card message of this terminal carries."""
        utc = datetime.datetime.now(datetime.timezone.utc)
        local = utc + datetime.timedelta(hours=self.terminal.utc_offset_h)
        t = self.terminal
        return {
            "t": mti,
            "2": card.pan,
            "3": processing,
            "4": f"{amount:012d}",
            "7": transmission_datetime(utc),
            "11": self.client.stan(),
            "12": local.strftime("%H%M%S"),
            "13": local.strftime("%m%d"),
            "14": card.expiry,
            "18": t.mcc,
            "25": "00",
            "32": ACQUIRER_ID,
            "37": self.client.rrn(),
            "41": t.terminal_id,
            "42": t.merchant_id,
            "43": t.name_location,
            "49": CURRENCY,
        }

    def card_present(self, mti: str, card: Card, amount: int) -> dict[str, str]:
        """A chip, contactless or swiped transaction (track 2 for chip and stripe)."""
        doc = self.base(mti, card, amount)
        entry = self.rng.choices(("051", "071", "901"), weights=(5, 4, 1))[0]
        doc["22"] = entry
        if entry != "071":
            doc["35"] = card.track2()
        return doc

    @staticmethod
    def follow_up(mti: str, original: dict[str, str], stan: str, **fields: str) -> dict[str, str]:
        """A completion or reversal of ``original``: same card, amount, terminal and RRN,
        a new STAN and field 7, and field 90 naming the original."""
        doc = {k: v for k, v in original.items() if k not in ("35", "22")}
        doc.update(t=mti, **{"7": transmission_datetime(), "11": stan})
        doc["90"] = original_data(original["t"], original["11"], original["7"], original["32"])
        doc.update(fields)
        return doc
