"""Message encoding and decoding on top of pyiso8583, and MTI classification.

:class:`Codec` never mutates the caller's message (pyiso8583's ``encode`` does), and
turns codec failures into :class:`~geviso.errors.EncodeError` /
:class:`~geviso.errors.DecodeError`, whose texts name only the field and position:
pyiso8583's own errors carry the whole document, PAN included, in their attributes.

:class:`CompiledCodec` gives the same bytes, dicts and errors several times faster,
from functions generated per spec (:mod:`geviso.compiled`); :func:`codec_for` picks it
whenever it covers the spec, and connections use :func:`codec_for` by default.
"""

from __future__ import annotations

import datetime
import functools
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, Optional

import iso8583

from .compiled import Compiled, compile_spec
from .errors import ConfigurationError, DecodeError, EncodeError

Spec = Mapping[str, Mapping[str, Any]]
Message = dict[str, str]


def is_response(mti: str) -> bool:
    """True when the MTI's function digit (the third) is odd: 0110, 0230, 0810..."""
    return len(mti) >= 3 and mti[2] in "13579"


def transmission_datetime(now: Optional[datetime.datetime] = None) -> str:
    """Field 7: the UTC transmission date and time as MMDDhhmmss."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%m%d%H%M%S")


@functools.lru_cache(maxsize=256)
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
        except Exception as exc:  # pyiso8583 also fails with TypeError, KeyError, even UnboundLocalError
            raise EncodeError(_safe_text("encode", exc)) from exc
        return bytes(raw)

    def decode(self, data: bytes) -> Message:
        """The message in ``data``."""
        try:
            doc, _ = iso8583.decode(data, self.spec)
        except Exception as exc:  # whatever a peer's bytes make pyiso8583 raise, reading goes on
            raise DecodeError(_safe_text("decode", exc)) from exc
        return doc


class CompiledCodec(Codec):
    """pyiso8583's bytes and dicts from functions generated for one spec.

    Whatever the generated functions do not cover (a field they do not compile, a
    tertiary bitmap, a very long field) or cannot encode or decode goes through
    :class:`Codec`, so results and errors are pyiso8583's exactly. The spec is read
    once, when the codec is built: build a new codec after changing a spec.
    """

    def __init__(self, spec: Spec, compiled: Optional[Compiled] = None) -> None:
        super().__init__(spec)
        compiled = compiled if compiled is not None else compile_spec(spec)
        if compiled is None:
            raise ConfigurationError("the spec's header, MTI or bitmap is beyond the compiled codec; use Codec")
        self.compiled = compiled
        #: Messages that went through pyiso8583 (not covered, or an error to report).
        self.fallbacks = 0
        self._encode = compiled.encode
        self._decode = compiled.decode

    def encode(self, doc: Mapping[str, str]) -> bytes:
        """Bytes for ``doc``; ``doc`` itself is left as it was."""
        try:
            return self._encode(doc)
        except Exception:
            pass  # outside the handler, so the fast path's exception is not chained
        self.fallbacks += 1
        return Codec.encode(self, doc)

    def decode(self, data: bytes) -> Message:
        """The message in ``data``."""
        try:
            return self._decode(data)
        except Exception:
            pass
        self.fallbacks += 1
        return Codec.decode(self, data)


#: Compiled specs kept for reuse, by content (a pool or server builds one codec per link).
_COMPILED_KEPT = 16
_compiled: OrderedDict[Hashable, Optional[Compiled]] = OrderedDict()
_compiled_lock = threading.Lock()


def _content(spec: Spec) -> Optional[Hashable]:
    """A hashable copy of ``spec``'s content, or None if it holds unhashable values."""
    try:
        items = tuple(sorted((key, tuple(sorted(field.items()))) for key, field in spec.items()))
        hash(items)
    except (TypeError, AttributeError):
        return None
    return items


def codec_for(spec: Spec) -> Codec:
    """The codec a connection uses for ``spec``: :class:`CompiledCodec` when it covers
    the spec, else :class:`Codec`."""
    content = _content(spec)
    if content is None:
        compiled = compile_spec(spec)
    else:
        with _compiled_lock:
            if content in _compiled:
                _compiled.move_to_end(content)
                compiled = _compiled[content]
            else:
                compiled = compile_spec(spec)
                _compiled[content] = compiled
                if len(_compiled) > _COMPILED_KEPT:
                    _compiled.popitem(last=False)
    return CompiledCodec(spec, compiled) if compiled is not None else Codec(spec)
