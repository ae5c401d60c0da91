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
from .masking import ESCAPE_LIMIT, escape, mask_text

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
    where = f" in field {escape(field, ESCAPE_LIMIT)}" if field is not None else ""
    if pos is not None:
        where += f" at byte {pos}"
    said = getattr(exc, "msg", None)  # pyiso8583's reason, without the document it carries
    reason = f": {mask_text(escape(said, 200))}" if isinstance(said, str) else ""
    return f"cannot {verb} message{where}{reason}"


#: Keys a message may hold besides field numbers: MTI, header, and the bitmaps (rebuilt).
_NAMED_KEYS = frozenset({"t", "h", "p", "1", "65"})


def _expected(spec: Mapping[str, Any]) -> str:
    """What a field's spec asks for, in words: "exactly 4 ascii characters"."""
    enc = spec.get("data_enc", "?")
    max_len = spec.get("max_len", "?")
    count = "nibbles" if spec.get("len_count") == "nibbles" else ("bytes" if enc == "b" else "characters")
    how = "exactly" if spec.get("len_type", 0) == 0 else "at most"
    what = "hex digits" if enc == "b" else f"{enc} characters"
    return f"a str of {what}, {how} {max_len} {count}"


def _field_problem(key: str, value: Any, spec: Mapping[str, Any]) -> str:
    """What is wrong with one field's value for its spec ("" if nothing found); never
    quotes the value."""
    desc = spec.get("desc")
    name = f"field {key}" + (f" ({desc})" if desc else "")
    expected = _expected(spec)
    if not isinstance(value, str):
        return f"{name}: expected {expected}, got {type(value).__name__}"
    enc = spec.get("data_enc")
    if enc == "b":
        if len(value) % 2 or any(ch not in "0123456789abcdefABCDEF" for ch in value):
            return f"{name}: expected {expected} (an even number of hex digits)"
        size = len(value) // 2
    else:
        try:
            size = len(value.encode(str(enc)))
        except LookupError:
            return f"{name}: the spec's encoding is unknown"
        except UnicodeError:
            return f"{name}: expected {expected}; it has characters outside {enc}"
    if spec.get("len_count") == "nibbles":
        size = len(value)
    max_len = spec.get("max_len")
    if isinstance(max_len, int):
        if spec.get("len_type", 0) == 0 and size != max_len:
            return f"{name}: expected {expected}, got {size}"
        if size > max_len:
            return f"{name}: expected {expected}, got {size}"
    return ""


def _names_problem(doc: Any, spec: Spec) -> str:
    """Not a mapping, or a field name that is not a str or not in the spec (pyiso8583
    ignores names that are not numbers, so a typo would silently drop a field)."""
    if not isinstance(doc, Mapping):
        return f"a message is a mapping of field name to str, got {type(doc).__name__}"
    for key in doc:
        if not isinstance(key, str):
            return f"field names are str (\"t\", \"4\"), got {type(key).__name__}"
        if key not in spec and key not in _NAMED_KEYS:
            return f"field {escape(key, ESCAPE_LIMIT)} is not in the spec"
    return ""


def explain(doc: Any, spec: Spec) -> str:
    """Why ``doc`` cannot be encoded with ``spec`` (which field, what was expected), or
    "" when no check here finds it. Never quotes a value: a field name the caller
    chose is escaped and cut short."""
    problem = _names_problem(doc, spec)
    if problem:
        return problem
    if "t" not in doc:
        return "field t (Message Type) is missing"
    header = spec.get("h")
    if header is not None and header.get("max_len", 0) > 0 and "h" not in doc:
        return "field h (the header) is missing: the spec has one"
    for key, value in doc.items():
        if key in ("p", "1", "65") or (key == "h" and (header is None or header.get("max_len", 0) <= 0)):
            continue  # rebuilt or ignored by the codec
        problem = _field_problem(key, value, spec[key])
        if problem:
            return problem
    return ""


def encode_error(doc: Any, spec: Spec, exc: Optional[BaseException] = None) -> EncodeError:
    """The :class:`EncodeError` for ``doc``: :func:`explain`'s reason, else the reason
    pyiso8583 gave (its words, never the value or document it carries); ``exc`` stays
    reachable as ``__cause__``."""
    reason = explain(doc, spec)
    if not reason:
        field = getattr(exc, "field", None)
        said = getattr(exc, "msg", None)  # pyiso8583's reason, without the document
        where = f"field {escape(field, ESCAPE_LIMIT)}" if field is not None else "message"
        said = mask_text(escape(said, 200)) if isinstance(said, str) else type(exc).__name__
        reason = f"{where}: {said}"
    err = EncodeError(f"cannot encode message: {reason}")
    err.__cause__ = exc
    return err


class Received(dict):  # type: ignore[type-arg]
    """A decoded message whose frame carried a TPDU (``.tpdu``, 5 bytes): the TPDU
    belongs to the message, so :meth:`Connection.reply` can answer it with its own,
    however late or out of order."""

    __slots__ = ("tpdu",)
    tpdu: bytes


class Codec:
    """Encodes dicts to bytes and back with a pyiso8583 spec."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec

    def encode(self, doc: Mapping[str, str]) -> bytes:
        """Bytes for ``doc``; ``doc`` itself is left as it was."""
        problem = _names_problem(doc, self.spec)  # pyiso8583 would drop a field "zz"
        if problem:
            raise EncodeError(f"cannot encode message: {problem}")
        try:
            raw, _ = iso8583.encode(dict(doc), self.spec)
        except Exception as exc:  # pyiso8583 also fails with TypeError, KeyError, even UnboundLocalError
            raise encode_error(doc, self.spec, exc) from exc
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
        self._encoders = compiled.encoders
        self._decode = compiled.decode

    def encode(self, doc: Mapping[str, str]) -> bytes:
        """Bytes for ``doc``; ``doc`` itself is left as it was."""
        try:
            special = self._encoders.get(tuple(doc))  # this shape's own encoder, without a call
            return special(doc) if special is not None else self._encode(doc)
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


def field_problem(spec: Spec, field: str, value: str) -> Optional[str]:
    """Why ``value`` cannot be field ``field`` of a message under ``spec`` (a safe text:
    no value quoted), or None when it encodes. For checking configured values (response
    codes, fields a rule sets) once, before they are used on every message."""
    if field not in spec:
        return f"the spec has no field {field}"
    if not isinstance(value, str):
        return f"field {field} takes a string, not a {type(value).__name__}"
    probe_spec = dict(spec)
    probe_spec["h"] = dict(spec.get("h") or {}, max_len=0)  # no header to invent
    try:
        iso8583.encode({"t": "0810", field: value}, probe_spec)
    except iso8583.EncodeError as exc:
        if str(getattr(exc, "field", "")) != field:
            return None  # another field (the MTI) says nothing about this one
        reason = str(exc.args[0]) if exc.args else "cannot encode it"
        reason = reason[: -len(f": field {field}")] if reason.endswith(f": field {field}") else reason
        if "invalid data" in reason:
            reason += f" (characters outside {spec[field].get('data_enc', 'its encoding')})"
        return f"field {field}: {mask_text(reason)}"
    except Exception as exc:  # pyiso8583 also fails with TypeError, KeyError...
        return f"field {field}: cannot encode it ({type(exc).__name__})"
    return None
