"""Per-spec encode and decode functions generated from a pyiso8583 spec.

pyiso8583 reads its spec again for every field of every message (about 20 us to encode
or decode a 15-field message). :func:`compile_spec` reads the spec once and generates
Python source with one small function per field, its encodings, lengths and padding
written in as constants, so a message costs a few microseconds.

The generated functions give exactly pyiso8583's bytes and dicts for what they cover.
On anything else (a field they do not cover, a tertiary bitmap, bad data, a length
outside the precomputed tables) they raise, and :class:`geviso.codec.CompiledCodec`
runs pyiso8583 instead, which gives the reference result or the reference error. No
I/O here, and nothing in this module raises to users.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import operator
from collections.abc import Mapping
from typing import Any, Callable, Optional

Spec = Mapping[str, Mapping[str, Any]]
Encoder = Callable[[Mapping[str, str]], bytes]
Decoder = Callable[[bytes], dict[str, str]]

#: Lengths 0..TABLE_SIZE-1 of a variable field use precomputed length prefixes; a
#: longer value is left to pyiso8583 (correct, only slower).
TABLE_SIZE = 1000
#: Widest length prefix compiled (pyiso8583 specs use 1 to 4).
MAX_LEN_TYPE = 8
_HEX_SAMPLE = "0123456789ABCDEF"


class Miss(Exception):
    """Raised by generated code for input it does not cover; never leaves geviso.codec."""


class Compiled:
    """The generated ``encode(doc) -> bytes`` and ``decode(data) -> dict`` of one spec.

    ``uncovered`` names the spec's fields left to pyiso8583 (a message that uses one
    takes the pyiso8583 path); ``source`` is the generated code, for reading.
    ``encoders`` maps a document's keys (``tuple(doc)``) to the encoder specialised for
    them, as ``encode`` looks them up: a caller may look there first and save a call.
    """

    __slots__ = ("encode", "decode", "source", "uncovered", "encoders")

    def __init__(self, encode: Encoder, decode: Decoder, source: str, uncovered: frozenset[str],
                 encoders: Optional[Mapping[tuple[Any, ...], Encoder]] = None) -> None:
        self.encode = encode
        self.decode = decode
        self.source = source
        self.uncovered = uncovered
        self.encoders: Mapping[tuple[Any, ...], Encoder] = encoders if encoders is not None else {}


# -- what the spec says, checked once ------------------------------------------------
def _text_encoding(enc: Any) -> Optional[str]:
    """``enc`` if it is a text codec that round-trips digits and hex letters."""
    if not isinstance(enc, str) or enc == "b":
        return None
    try:
        if _HEX_SAMPLE.encode(enc).decode(enc) != _HEX_SAMPLE:
            return None
    except Exception:
        return None
    return enc


def _ascii_like(enc: str) -> bool:
    """True when ``enc`` writes digits and hex letters as their ASCII bytes."""
    return _HEX_SAMPLE.encode(enc) == _HEX_SAMPLE.encode("ascii")


def _one_byte_per_char(enc: str) -> bool:
    """True for ASCII and Latin-1: a run of fields encodes or decodes as one string."""
    return codecs.lookup(enc).name in ("ascii", "iso8859-1")


def _length_prefix(n: int, len_type: int, len_enc: str) -> Optional[bytes]:
    """pyiso8583's length prefix for ``n``, or None where pyiso8583 raises."""
    if len_enc == "b":
        try:
            return n.to_bytes(len_type, "big", signed=False)
        except OverflowError:
            return None
    if len_enc == "bcd":
        digits = "{:0{w}d}".format(n, w=len_type * 2)
        return binascii.a2b_hex(digits) if len(digits) <= len_type * 2 else None
    raw = bytes("{:0{w}d}".format(n, w=len_type), len_enc)
    return raw if len(raw) <= len_type else None


def _read_length(raw: bytes, len_type: int, len_enc: str) -> Optional[int]:
    """pyiso8583's reading of a length prefix, or None where it raises."""
    if len(raw) != len_type:
        return None
    try:
        if len_enc == "b":
            return int.from_bytes(raw, "big", signed=False)
        if len_enc == "bcd":
            return int(raw.hex(), 10)
        return int(raw.decode(len_enc))
    except Exception:
        return None


class _Field:
    """One field's spec, validated; ``None`` from :meth:`plan` if it is not covered."""

    __slots__ = ("key", "binary", "enc", "len_type", "len_enc", "max_len", "nibbles", "left", "right")

    def __init__(self, key: str) -> None:
        self.key = key
        self.binary = False
        self.enc = ""
        self.len_type = 0
        self.len_enc = ""
        self.max_len = 0
        self.nibbles = False
        self.left = ""
        self.right = ""

    @classmethod
    def plan(cls, key: str, fs: Any) -> Optional[_Field]:
        if not isinstance(fs, Mapping):
            return None
        field = cls.bitmap(key, fs)
        if field is None:
            return None
        try:
            len_type = fs["len_type"]
            max_len = fs["max_len"]
            len_count = fs.get("len_count", "bytes")
            left = fs.get("left_pad", "")
            right = fs.get("right_pad", "")
        except Exception:
            return None
        if type(len_type) is not int or not 0 <= len_type <= MAX_LEN_TYPE:
            return None
        if type(max_len) is not int or max_len < 0:
            return None
        if len_count not in ("bytes", "nibbles") or not isinstance(left, str) or not isinstance(right, str):
            return None
        if len_type:
            len_enc = fs.get("len_enc")
            if len_enc not in ("b", "bcd") and _text_encoding(len_enc) is None:
                return None
            field.len_enc = str(len_enc)
        field.len_type = len_type
        field.max_len = max_len
        field.nibbles = len_count == "nibbles"
        field.left = left[:1]
        field.right = right[:1]
        return field

    @classmethod
    def bitmap(cls, key: str, fs: Any) -> Optional[_Field]:
        """Only the data encoding (8 bytes binary, or 16 hex digits): all a bitmap needs."""
        try:
            data_enc = fs["data_enc"]
        except Exception:
            return None
        field = cls(key)
        if data_enc == "b":
            field.binary = True
            return field
        enc = _text_encoding(data_enc)
        if enc is None:
            return None
        field.enc = enc
        return field


# -- code generation ------------------------------------------------------------------
class _Source:
    """Generated lines plus the constants they refer to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {"Miss": Miss, "a2b_hex": binascii.a2b_hex}
        self._tables: dict[tuple[int, str, int], tuple[str, str]] = {}

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def length_tables(self, field: _Field) -> tuple[str, str]:
        """Names of the prefix tuple (length -> prefix bytes) and the reverse dict.

        Only lengths whose prefix pyiso8583 writes and reads back to the same value,
        within ``max_len``, are in the tables: any other length misses and falls back.
        """
        top = min(field.max_len, TABLE_SIZE - 1)
        ident = (field.len_type, field.len_enc, top)
        if ident not in self._tables:
            prefixes: list[bytes] = []
            for n in range(top + 1):
                prefix = _length_prefix(n, field.len_type, field.len_enc)
                if prefix is None or _read_length(prefix, field.len_type, field.len_enc) != n:
                    break
                prefixes.append(prefix)
            index = len(self._tables)
            names = (f"LEN_OUT_{index}", f"LEN_IN_{index}")
            self.names[names[0]] = tuple(prefixes)
            self.names[names[1]] = {prefix: n for n, prefix in enumerate(prefixes)}
            self._tables[ident] = names
        return self._tables[ident]


def _pad_lines(field: _Field, indent: str) -> list[str]:
    """Strip a BCD pad nibble the way pyiso8583 does (left first, then right)."""
    lines = []
    keyword = "if"
    if field.left:
        lines.append(f"{indent}if v[:1] == {field.left!r}: v = v[1:]")
        keyword = "elif"
    if field.right:
        lines.append(f"{indent}{keyword} v[-1:] == {field.right!r}: v = v[:-1]")
        keyword = "else"
    lines.append(f"{indent}else: raise Miss" if keyword != "if" else f"{indent}raise Miss")
    return lines


def _field_encoder(src: _Source, name: str, field: _Field) -> None:
    body = []
    if field.binary:
        if field.nibbles:
            body.append("    n = len(v)")
            pad = f"{field.left!r} + v" if field.left else (f"v + {field.right!r}" if field.right else "v")
            body.append(f"    b = a2b_hex({pad} if n & 1 else v)" if pad != "v" else "    b = a2b_hex(v)")
        else:
            body += ["    b = a2b_hex(v)", "    n = len(b)"]
    else:
        body += [f"    b = v.encode({field.enc!r})", "    n = len(b) * 2" if field.nibbles else "    n = len(b)"]
    if field.len_type == 0:
        body += [f"    if n != {field.max_len}: raise Miss", "    return b"]
    else:
        out, _ = src.length_tables(field)
        body.append(f"    return {out}[n] + b")
    src.add(f"def {name}(v):", *body, "")


def _field_decoder(src: _Source, name: str, field: _Field) -> None:
    key = field.key
    body = []
    if field.len_type == 0:
        n: Any = field.max_len
        size = (n + 1) // 2 if field.nibbles else n
        body += [f"    j = i + {size}"]
        start, end = "i", "j"
    else:
        _, table = src.length_tables(field)
        body += [f"    j = i + {field.len_type}", f"    n = {table}[s[i:j]]"]
        body.append("    k = j + (n + 1) // 2" if field.nibbles else "    k = j + n")
        start, end = "j", "k"
    if field.binary:
        body.append(f"    v = s[{start}:{end}].hex().upper()")
        if field.nibbles:
            if field.len_type == 0:
                if field.max_len & 1:
                    body += _pad_lines(field, "    ")
            else:
                body.append("    if n & 1:")
                body += _pad_lines(field, "        ")
        body.append(f"    out[{key!r}] = v")
    else:
        body.append(f"    out[{key!r}] = s[{start}:{end}].decode({field.enc!r})")
    body.append(f"    return {end}")
    src.add(f"def {name}(s, i, out):", *body, "")


@functools.lru_cache(maxsize=1)
def _bitmap_tables() -> dict[str, tuple[tuple[int, ...], ...]]:
    """BITS_k[byte]: the field numbers byte ``byte`` at bitmap position ``k`` switches on."""
    bits = [tuple(bit for bit in range(1, 9) if byte >> (8 - bit) & 1) for byte in range(256)]
    return {f"BITS_{k}": tuple(tuple(k * 8 + bit for bit in on) for on in bits) for k in range(16)}


def compile_spec(spec: Spec) -> Optional[Compiled]:
    """Generated functions for ``spec``, or None when its header, MTI or primary bitmap
    are beyond what is compiled (then pyiso8583 does all the work)."""
    try:
        header_spec, mti_spec, primary_spec = spec["h"], spec["t"], spec["p"]
        has_header = header_spec["max_len"] > 0
        mti_binary = mti_spec["data_enc"] == "b"
        mti_enc = None if mti_binary else _text_encoding(mti_spec["data_enc"])
    except Exception:
        return None
    header = _Field.plan("h", header_spec) if has_header else None
    primary = _Field.bitmap("p", primary_spec)
    secondary = _Field.bitmap("1", spec.get("1"))
    if (has_header and header is None) or primary is None or (not mti_binary and mti_enc is None):
        return None
    fields: dict[int, _Field] = {}
    uncovered = set()
    for number in range(2, 129):
        key = str(number)
        if key not in spec or number == 65:
            continue
        field = _Field.plan(key, spec[key])
        if field is None:
            uncovered.add(key)
        else:
            fields[number] = field
    generator = _Generator(fields, header, mti_enc, primary, secondary)
    return Compiled(generator.encode, generator.decode, generator.source, frozenset(uncovered),
                    generator.namespace["ENCODE_BY_KEYS"])


#: Specialised functions kept per spec, for encode (by key order) and decode (by MTI
#: and bitmap bytes).
MAX_SPECIALISED = 64
#: MTI values whose bytes (with the bitmap) one specialised encoder keeps.
MAX_HEADS = 16


class _Generator:
    """Writes and runs the generic functions of one spec, then specialises them.

    The generic ``encode`` and ``decode`` loop over the fields a message has. Once one
    of them has handled a message, the field set it saw (the document's keys in their
    order; the frame's MTI and bitmap bytes) gets a straight-line function with offsets,
    lengths, MTI and bitmap written in, used for every later message of that shape. Shapes are
    remembered only after a successful run, and at most :data:`MAX_SPECIALISED` of each.
    """

    def __init__(
        self,
        fields: dict[int, _Field],
        header: Optional[_Field],
        mti_enc: Optional[str],
        primary: _Field,
        secondary: Optional[_Field],
    ) -> None:
        self.fields = fields
        self.header = header
        self.mti_enc = mti_enc
        self.primary = primary
        self.secondary = secondary
        src = _Source()
        src.names.update(_bitmap_tables())
        for number, field in fields.items():
            _field_encoder(src, f"enc_{number}", field)
            _field_decoder(src, f"dec_{number}", field)
        if header is not None:
            _field_encoder(src, "enc_h", header)
            _field_decoder(src, "dec_h", header)
        src.add("def missing(s, i, out):", "    raise Miss", "")
        src.names["FIELD_NUMBERS"] = {str(number): number for number in fields}
        src.names["KEYS"] = tuple(str(number) for number in range(129))
        src.add(
            "ENCODERS = (" + ", ".join(f"enc_{n}" if n in fields else "None" for n in range(129)) + ")",
            "DECODERS = (" + ", ".join(f"dec_{n}" if n in fields else "missing" for n in range(129)) + ")",
            "",
        )
        src.names.update(
            ENCODE_BY_KEYS={}, DECODE_BY_HEAD={}, MAX_SPECIALISED=MAX_SPECIALISED, MAX_HEADS=MAX_HEADS,
            specialise_encoder=self._specialise_encoder, specialise_decoder=self._specialise_decoder,
        )
        self._src = src
        self._main_encoder()
        self._main_decoder()
        self.source = "\n".join(src.lines)
        self.namespace = dict(src.names)
        self._run(self.source, "generic")
        self.encode: Encoder = self.namespace["encode"]
        self.decode: Decoder = self.namespace["decode"]

    def _run(self, source: str, name: str, into: Optional[dict[str, Any]] = None) -> None:
        """Run generated ``source``; its definitions go to ``into`` (default: the namespace)."""
        code = compile(source, f"<geviso.compiled {name}>", "exec")
        exec(code, self.namespace, self.namespace if into is None else into)  # noqa: S102 - generated here

    # -- the generic functions ----------------------------------------------------------
    def _mti_lines(self) -> list[str]:
        if self.mti_enc is None:
            return ["    mti = a2b_hex(doc['t'])", "    if len(mti) != 2: raise Miss"]
        return [f"    mti = doc['t'].encode({self.mti_enc!r})", "    if len(mti) != 4: raise Miss"]

    def _main_encoder(self) -> None:
        header = self.header is not None
        lines = ["def encode_any(doc):", *self._mti_lines()]
        lines.append("    parts = [enc_h(doc['h']), mti, b'']" if header else "    parts = [mti, b'']")
        slot = 2 if header else 1
        lines += [
            "    numbers = []",
            "    for k in doc:",
            "        f = FIELD_NUMBERS.get(k)",
            "        if f is None:",
            "            if k == 't' or k == 'p' or k == '1' or k == '65' or k == 'h': continue",
            "            raise Miss",
            "        numbers.append(f)",
            "    numbers.sort()",
            "    bitmap = 0",
            "    for f in numbers:",
            "        bitmap |= 1 << (128 - f)",
            "        parts.append(ENCODERS[f](doc[KEYS[f]]))",
            "    second = bitmap & 0xFFFFFFFFFFFFFFFF",
            "    if second:",
        ]
        if self.secondary is None:
            lines.append("        raise Miss")
        else:
            first = _bitmap_writer(self.primary, "((bitmap >> 64) | 0x8000000000000000)")
            lines.append(f"        parts[{slot}] = {first} + {_bitmap_writer(self.secondary, 'second')}")
        lines += ["    else:", f"        parts[{slot}] = {_bitmap_writer(self.primary, '(bitmap >> 64)')}"]
        lines += [
            "    return b''.join(parts)",
            "",
            "def encode(doc):",
            "    keys = tuple(doc)",
            "    special = ENCODE_BY_KEYS.get(keys)",
            "    if special is not None:",
            "        return special(doc)",
            "    raw = encode_any(doc)",
            "    if len(ENCODE_BY_KEYS) < MAX_SPECIALISED:",
            "        ENCODE_BY_KEYS[keys] = specialise_encoder(keys)",
            "    return raw",
            "",
        ]
        self._src.add(*lines)

    def _head_sizes(self) -> tuple[int, int]:
        """Bytes of MTI plus primary bitmap, and of MTI plus both bitmaps."""
        mti = 2 if self.mti_enc is None else 4
        primary = 8 if self.primary.binary else 16
        secondary = 0 if self.secondary is None else (8 if self.secondary.binary else 16)
        return mti + primary, mti + primary + secondary

    def _main_decoder(self) -> None:
        header = self.header is not None
        lines = ["def decode_any(s):", "    out = {}"]
        lines.append("    i = dec_h(s, 0, out)" if header else "    i = 0")
        lines.append("    start = i")
        if self.mti_enc is None:
            lines += ["    j = i + 2", "    out['t'] = s[i:j].hex().upper()"]
        else:
            lines += ["    j = i + 4", f"    out['t'] = s[i:j].decode({self.mti_enc!r})"]
        lines.append("    i = j")
        lines += _bitmap_reader(self.primary, "p", "    ")
        lines += ["    if len(bm) != 8: raise Miss", "    i = j", "    if bm[0] & 128:"]
        if self.secondary is None:
            lines.append("        raise Miss")
        else:
            lines += ["        first = bm"]
            lines += _bitmap_reader(self.secondary, "1", "        ")
            lines += ["        if len(bm) != 8 or bm[0] & 128: raise Miss", "        i = j", "        bm = first + bm"]
        lines += [
            "    head = s[start:i]",
            "    fields = " + " + ".join(f"BITS_{k}[bm[{k}]]" for k in range(8)),
            "    if len(bm) == 16:",
            "        fields = fields[1:] + " + " + ".join(f"BITS_{k}[bm[{k}]]" for k in range(8, 16)),
            "    for f in fields:",
            "        i = DECODERS[f](s, i, out)",
            "    if i != len(s): raise Miss",
            "    if len(DECODE_BY_HEAD) < MAX_SPECIALISED:",
            "        DECODE_BY_HEAD[head] = specialise_decoder(fields, out)",
            "    return out",
            "",
        ]
        # The MTI and bitmap bytes (after the header) pick the function specialised for
        # them; a frame with a secondary bitmap is looked up with both bitmaps.
        short, long = self._head_sizes()
        at = "i" if header else "0"
        lookup = f"DECODE_BY_HEAD.get(s[{at}:{at} + {short}])"
        if self.secondary is not None:
            lookup += f" or DECODE_BY_HEAD.get(s[{at}:{at} + {long}])"
        lines += [
            "def decode(s):",
            "    if s.__class__ is not bytes:",
            "        if s.__class__ is not bytearray: raise Miss",
            "        s = bytes(s)",
        ]
        if header:
            lines += ["    out = {}", "    i = dec_h(s, 0, out)"]
        lines += [
            f"    special = {lookup}",
            "    if special is not None:",
            "        return special(s, i, out['h'])" if header else "        return special(s)",
            "    return decode_any(s)",
            "",
        ]
        self._src.add(*lines)

    # -- specialised functions ------------------------------------------------------------
    def _run_field(self, number: int) -> bool:
        """A fixed-length text field that can share one encode/decode with its neighbours."""
        field = self.fields[number]
        return not field.binary and not field.nibbles and field.len_type == 0 and _one_byte_per_char(field.enc)

    def _runs(self, numbers: list[int]) -> list[list[int]]:
        """``numbers`` in order, consecutive run fields of one encoding grouped together."""
        groups: list[list[int]] = []
        for n in numbers:
            last = groups[-1] if groups else None
            if (last and self._run_field(n) and self._run_field(last[-1])
                    and self.fields[n].enc == self.fields[last[-1]].enc):
                last.append(n)
            else:
                groups.append([n])
        return groups

    def _specialise_encoder(self, keys: tuple[Any, ...]) -> Encoder:
        """Straight-line encode for documents with exactly ``keys`` (in that order)."""
        generic: Encoder = self.namespace["encode_any"]
        if "t" not in keys or (self.header is not None and "h" not in keys):
            return generic
        field_numbers = self.namespace["FIELD_NUMBERS"]
        numbers = sorted(field_numbers[k] for k in keys if k in field_numbers)
        bitmap = sum(1 << (128 - n) for n in numbers)
        second = bitmap & 0xFFFFFFFFFFFFFFFF
        first = bitmap >> 64
        if second:
            first |= 0x8000000000000000
        bitmap_bytes = _write_bitmap(self.primary, first)
        if second and self.secondary is not None:  # (without one, encode_any has missed already)
            bitmap_bytes += _write_bitmap(self.secondary, second)
        # MTI and bitmap bytes, kept per MTI value (a shape is usually sent with one or two)
        lines = ["def special(doc):", "    head = HEADS.get(doc['t'])", "    if head is None:"]
        lines += ["    " + line for line in self._mti_lines()]
        lines += ["        head = mti + BITMAP", "        if len(HEADS) < MAX_HEADS: HEADS[doc['t']] = head"]
        parts = ["head"]
        if self.header is not None:
            lines.append("    h = enc_h(doc['h'])")
            parts.insert(0, "h")
        checks = []
        for group in self._runs(numbers):
            if len(group) > 1:
                enc = self.fields[group[0]].enc
                lines += [f"    a{n} = doc[{str(n)!r}]" for n in group]
                lines.append(f"    r{group[0]} = ''.join(({', '.join(f'a{n}' for n in group)},)).encode({enc!r})")
                checks += [f"len(a{n}) != {self.fields[n].max_len}" for n in group]
                parts.append(f"r{group[0]}")
                continue
            n = group[0]
            field = self.fields[n]
            value = f"doc[{str(n)!r}]"
            if field.binary or field.nibbles:
                lines.append(f"    v{n} = enc_{n}({value})")
            elif field.len_type == 0:
                lines.append(f"    v{n} = {value}.encode({field.enc!r})")
                checks.append(f"len(v{n}) != {field.max_len}")
            else:
                table, _ = self._src.length_tables(field)
                lines += [f"    v{n} = {value}.encode({field.enc!r})", f"    p{n} = {table}[len(v{n})]"]
                parts.append(f"p{n}")
            parts.append(f"v{n}")
        if checks:
            lines.append(f"    if {' or '.join(checks)}: raise Miss")
        lines.append(f"    return b''.join(({', '.join(parts)},))")
        factory = ["def make(HEADS, BITMAP):", *("    " + line for line in lines), "    return special"]
        made: dict[str, Callable[[dict[str, bytes], bytes], Encoder]] = {}
        self._run("\n".join(factory), "encoder", made)
        return made["make"]({}, bitmap_bytes)

    def _specialise_decoder(
        self, numbers: tuple[int, ...], decoded: Mapping[str, str]
    ) -> Callable[..., dict[str, str]]:
        """Straight-line decode of frames whose MTI and bitmaps are those of ``decoded``.

        Offsets are constants up to the first variable-length field; the MTI and bitmap
        values are constants; the dict is built in one go, in pyiso8583's key order.
        """
        header = self.header is not None
        lines = ["def special(s, i, h):" if header else "def special(s):"]
        cuts: list[Any] = []
        short, long = self._head_sizes()
        at = _Position("i" if header else "", long if "1" in decoded else short)
        named = [key for key in decoded if key in ("h", "t", "p", "1")]  # in pyiso8583's order
        items = [f"{key!r}: {'h' if key == 'h' else repr(decoded[key])}" for key in named]
        for group in self._runs(list(numbers)):
            if len(group) > 1:
                enc = self.fields[group[0]].enc
                end = at.plus(sum(self.fields[n].max_len for n in group))
                start, offsets = 0, []
                for n in group:
                    offsets.append(slice(start, start + self.fields[n].max_len))
                    start += self.fields[n].max_len
                cuts.append(operator.itemgetter(*offsets))
                lines.append(f"    r{group[0]} = CUT_{len(cuts) - 1}(s[{at}:{end}].decode({enc!r}))")
                items += [f"{str(n)!r}: r{group[0]}[{index}]" for index, n in enumerate(group)]
                at = end
                continue
            n = group[0]
            value, at = self._inline_field(lines, n, at)
            items.append(f"{str(n)!r}: {value}")
        lines += [f"    if {at} != len(s): raise Miss", f"    return {{{', '.join(items)}}}"]
        factory = [f"def make({', '.join(f'CUT_{k}' for k in range(len(cuts)))}):"]
        factory += ["    " + line for line in lines] + ["    return special"]
        made: dict[str, Callable[..., Callable[..., dict[str, str]]]] = {}
        self._run("\n".join(factory), "decoder", made)
        return made["make"](*cuts)

    def _inline_field(self, lines: list[str], n: int, at: _Position) -> tuple[str, _Position]:
        """Decode field ``n`` starting at ``at``: the expression of its value (statements
        it needs go to ``lines``) and the position after it."""
        field = self.fields[n]
        convert = ".hex().upper()" if field.binary else f".decode({field.enc!r})"
        if field.len_type == 0:
            end = at.plus((field.max_len + 1) // 2 if field.nibbles else field.max_len)
            value = f"s[{at}:{end}]{convert}"
            if field.binary and field.nibbles and field.max_len & 1:
                lines.append(f"    v = {value}")
                lines += _pad_lines(field, "    ")
                lines.append(f"    v{n} = v")
                value = f"v{n}"
            return value, end
        _, table = self._src.length_tables(field)
        start = at.plus(field.len_type)
        if field.nibbles:
            lines += [f"    n{n} = {table}[s[{at}:{start}]]", f"    e{n} = {start} + (n{n} + 1) // 2"]
        else:
            lines.append(f"    e{n} = {start} + {table}[s[{at}:{start}]]")
        end = _Position(f"e{n}", 0)
        value = f"s[{start}:{end}]{convert}"
        if field.binary and field.nibbles:
            lines += [f"    v = {value}", f"    if n{n} & 1:", *_pad_lines(field, "        "), f"    v{n} = v"]
            value = f"v{n}"
        return value, end


class _Position:
    """A place in the frame while generating code: a variable plus a constant offset."""

    __slots__ = ("base", "offset")

    def __init__(self, base: str, offset: int) -> None:
        self.base = base
        self.offset = offset

    def plus(self, size: int) -> _Position:
        return _Position(self.base, self.offset + size)

    def __str__(self) -> str:
        if not self.base:
            return str(self.offset)
        return f"{self.base} + {self.offset}" if self.offset else self.base


def _bitmap_writer(field: _Field, value: str) -> str:
    if field.binary:
        return f"{value}.to_bytes(8, 'big')"
    if _ascii_like(field.enc):
        return f"b'%016X' % {value}"
    return f"('%016X' % {value}).encode({field.enc!r})"


def _write_bitmap(field: _Field, value: int) -> bytes:
    """What :func:`_bitmap_writer`'s expression gives for ``value``."""
    if field.binary:
        return value.to_bytes(8, "big")
    return ("%016X" % value).encode(field.enc)


def _bitmap_reader(field: _Field, key: str, indent: str) -> list[str]:
    if field.binary:
        return [f"{indent}j = i + 8", f"{indent}bm = s[i:j]", f"{indent}out[{key!r}] = bm.hex().upper()"]
    return [
        f"{indent}j = i + 16",
        f"{indent}text = s[i:j].decode({field.enc!r})",
        f"{indent}out[{key!r}] = text",
        f"{indent}bm = bytes.fromhex(text)",
    ]
