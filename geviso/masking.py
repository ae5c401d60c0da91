"""The only path by which message content reaches logs, reprs or error texts.

PCI DSS allows at most the first 6 and last 4 digits of a PAN to be shown; track data
(fields 35, 36, 45), PIN blocks (52) and other secrets are never shown at all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Optional

#: Fields shown with only the first 6 and last 4 characters.
PAN_FIELDS = frozenset({"2"})
#: Fields never shown: track 1/2/3 data, PIN block, security data, ICC data, keys.
SECRET_FIELDS = frozenset({"35", "36", "45", "52", "53", "55", "96", "110", "111"})

#: Text shorter than this cannot hold what the patterns below find (13 PAN digits).
_SHORTEST_SECRET = 13
#: What each pattern below needs somewhere in the text: one search rules all three out.
_SUSPECT = re.compile(r"\d{12}|[0-9A-Fa-f]{16}")
_LONG_DIGITS = re.compile(r"\d{13,19}")
#: Track 1 (``B`` PAN ``^`` name ``^`` expiry...) and track 2 (PAN ``=`` expiry...) in free text.
_TRACK = re.compile(r"B?\d{12,19}\^[^^\n]*\^[^\s'\",}\]]*|\d{12,19}[=D]\d*")
#: Hex runs of 16 (PIN blocks, keys, MACs) with at least one letter: never shown.
_HEX_SECRET = re.compile(r"\b(?=[0-9A-Fa-f]*[A-Fa-f])(?:[0-9A-Fa-f]{16})+\b")


def mask_pan(pan: str) -> str:
    """``4111111111111111`` -> ``411111******1111``; short values are fully starred."""
    if len(pan) < 13:
        return "*" * len(pan)
    return pan[:6] + "*" * (len(pan) - 10) + pan[-4:]


def mask_field(field: str, value: Any) -> Any:
    """The value of one field as it may be shown."""
    if field in SECRET_FIELDS:
        return "[redacted]"
    if field in PAN_FIELDS and isinstance(value, str):
        return mask_pan(value)
    if isinstance(value, str):
        return _mask_secrets(value)  # data, not a log line: not escaped (a repr escapes it)
    return value


def mask_doc(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a decoded message that is safe to log."""
    return {k: mask_field(k, v) for k, v in doc.items()}


def mask_text(text: str) -> str:
    """Mask anything in free text that looks like a PAN (13 to 19 digits in a row),
    remove what looks like track data or a PIN block (e.g. a user's exception quoting a
    message), and :func:`escape` the rest: the result is one line, fit for a log line
    or an error text."""
    return escape(_mask_secrets(text))


def _mask_secrets(text: str) -> str:
    """:func:`mask_text` without the escaping: for field values kept as data."""
    if len(text) < _SHORTEST_SECRET or not _SUSPECT.search(text):  # most values: nothing to look for
        return text
    text = _TRACK.sub("[track data]", text)
    text = _HEX_SECRET.sub("[redacted]", text)
    return _LONG_DIGITS.sub(lambda m: mask_pan(m.group(0)), text)


#: How many characters of one peer-chosen value :func:`escape` shows by default.
ESCAPE_LIMIT = 64


def escape(value: Any, limit: Optional[int] = None) -> str:
    """``value`` as text that cannot forge a log line or a terminal: newlines, control
    and other unprintable characters written as Python escapes (``\\n``, ``\\x1b``),
    cut to ``limit`` characters (with ``...``). For anything a peer or caller chose
    (an MTI, a STAN, a field name) before it goes into a log line or an error text."""
    text = value if isinstance(value, str) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():  # the usual case: nothing to escape
        return text
    return repr(text)[1:-1]


def describe(doc: Mapping[str, Any]) -> str:
    """A short, safe one-line description: MTI, STAN and the masked PAN if present;
    every value escaped (they may come from the peer)."""
    parts = [f"mti={escape(doc.get('t', '?'), ESCAPE_LIMIT)}"]
    if "11" in doc:
        parts.append(f"stan={mask_text(escape(doc['11'], ESCAPE_LIMIT))}")
    if "2" in doc and isinstance(doc["2"], str):
        parts.append(f"pan={escape(mask_pan(doc['2']), ESCAPE_LIMIT)}")
    return " ".join(parts)
