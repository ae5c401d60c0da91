"""Message encoding and decoding on top of pyiso8583, and MTI classification.

:class:`Codec` never mutates the caller's message (pyiso8583's ``encode`` does), and
turns codec failures into :class:`~geviso.errors.EncodeError` /
:class:`~geviso.errors.DecodeError`, whose texts name only the field and position:
pyiso8583's own errors carry the whole document, PAN included, in their attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import iso8583

from .errors import DecodeError, EncodeError

Spec = Mapping[str, Mapping[str, Any]]
Message = dict[str, str]


def is_response(mti: str) -> bool:
    """True when the MTI's function digit (the third) is odd: 0110, 0230, 0810..."""
    return len(mti) >= 3 and mti[2] in "13579"


def response_mti(mti: str) -> str:
    """The MTI that answers ``mti``: 0100 -> 0110, 0420/0421 -> 0430, 0800 -> 0810."""
    if len(mti) != 4 or not mti.isdigit():
        raise ValueError("an MTI is four digits")
    return mti[:2] + str(int(mti[2]) | 1) + "0"


def _safe_text(verb: str, exc: Exception) -> str:
    field = getattr(exc, "field", None)
    pos = getattr(exc, "pos", None)
    where = f" in field {field}" if field is not None else ""
    if pos is not None:
        where += f" at byte {pos}"
    return f"cannot {verb} message{where}"


class Codec:
    """Encodes dicts to bytes and back with a pyiso8583 spec."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def encode(self, doc: Mapping[str, str]) -> bytes:
        """Bytes for ``doc``; ``doc`` itself is left as it was."""
        try:
            raw, _ = iso8583.encode(dict(doc), self.spec)
        except (iso8583.EncodeError, TypeError, ValueError, LookupError) as exc:
            raise EncodeError(_safe_text("encode", exc)) from exc
        return bytes(raw)

    def decode(self, data: bytes) -> Message:
        """The message in ``data``."""
        try:
            doc, _ = iso8583.decode(data, self.spec)
        except (iso8583.DecodeError, TypeError, ValueError, LookupError) as exc:
            raise DecodeError(_safe_text("decode", exc)) from exc
        return doc


def codec_for(spec: Spec) -> Codec:
    """The codec a connection uses for ``spec``."""
    return Codec(spec)
