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
import functools
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
    """

    __slots__ = ("encode", "decode", "source", "uncovered")

    def __init__(self, encode: Encoder, decode: Decoder, source: str, uncovered: frozenset[str]) -> None:
        self.encode = encode
        self.decode = decode
        self.source = source
        self.uncovered = uncovered


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

    __slots__ = ("key", "binary", "enc", "ascii", "len_type", "len_enc", "max_len", "nibbles", "left", "right")

    def __init__(self, key: str) -> None:
        self.key = key
        self.binary = False
        self.enc = ""
        self.ascii = False
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
        field = cls(key)
        try:
            data_enc = fs["data_enc"]
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
        if data_enc == "b":
            field.binary = True
        else:
            enc = _text_encoding(data_enc)
            if enc is None:
                return None
            field.enc = enc
            field.ascii = _ascii_like(enc)
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
        """A bitmap: only its data encoding counts (8 bytes binary, or 16 hex digits)."""
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
        field.ascii = _ascii_like(enc)
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

    src = _Source()
    src.names.update(_bitmap_tables())
    covered: dict[int, _Field] = {}
    uncovered = set()
    for number in range(2, 129):
        key = str(number)
        if key not in spec or number == 65:
            continue
        field = _Field.plan(key, spec[key])
        if field is None:
            uncovered.add(key)
            continue
        covered[number] = field
        _field_encoder(src, f"enc_{number}", field)
        _field_decoder(src, f"dec_{number}", field)
    if header is not None:
        _field_encoder(src, "enc_h", header)
        _field_decoder(src, "dec_h", header)
    src.add("def missing(s, i, out):", "    raise Miss", "")
    src.names["FIELD_NUMBERS"] = {str(number): number for number in covered}
    src.names["KEYS"] = tuple(str(number) for number in range(129))
    src.add(
        "ENCODERS = (" + ", ".join(f"enc_{n}" if n in covered else "None" for n in range(129)) + ")",
        "DECODERS = (" + ", ".join(f"dec_{n}" if n in covered else "missing" for n in range(129)) + ")",
        "",
    )
    _main_encoder(src, header is not None, mti_enc, primary, secondary)
    _main_decoder(src, header is not None, mti_enc, primary, secondary)

    source = "\n".join(src.lines)
    namespace = dict(src.names)
    exec(compile(source, f"<geviso.compiled spec {id(spec):#x}>", "exec"), namespace)  # noqa: S102 - our own generated code
    return Compiled(namespace["encode"], namespace["decode"], source, frozenset(uncovered))


def _bitmap_writer(field: _Field, value: str) -> str:
    if field.binary:
        return f"{value}.to_bytes(8, 'big')"
    if field.ascii:
        return f"b'%016X' % {value}"
    return f"('%016X' % {value}).encode({field.enc!r})"


def _main_encoder(
    src: _Source, header: bool, mti_enc: Optional[str], primary: _Field, secondary: Optional[_Field]
) -> None:
    lines = ["def encode(doc):"]
    if mti_enc is None:
        lines += ["    mti = a2b_hex(doc['t'])", "    if len(mti) != 2: raise Miss"]
    else:
        lines += [f"    mti = doc['t'].encode({mti_enc!r})", "    if len(mti) != 4: raise Miss"]
    lines.append("    parts = [enc_h(doc['h']), mti, b'']" if header else "    parts = [mti, b'']")
    slot = 2 if header else 1
    lines += [
        "    numbers = []",
        "    for k in doc:",
        "        f = FIELD_NUMBERS.get(k)",
        "        if f is None:",
        "            if k == '1' or k == '65' or (k.__class__ is str and not k.isnumeric()): continue",
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
    if secondary is None:
        lines.append("        raise Miss")
    else:
        first = _bitmap_writer(primary, "((bitmap >> 64) | 0x8000000000000000)")
        lines.append(f"        parts[{slot}] = {first} + {_bitmap_writer(secondary, 'second')}")
    lines += ["    else:", f"        parts[{slot}] = {_bitmap_writer(primary, '(bitmap >> 64)')}"]
    lines += ["    return b''.join(parts)", ""]
    src.add(*lines)


def _bitmap_reader(field: _Field, key: str, indent: str) -> list[str]:
    if field.binary:
        return [f"{indent}j = i + 8", f"{indent}bm = s[i:j]", f"{indent}out[{key!r}] = bm.hex().upper()"]
    return [
        f"{indent}j = i + 16",
        f"{indent}text = s[i:j].decode({field.enc!r})",
        f"{indent}out[{key!r}] = text",
        f"{indent}bm = bytes.fromhex(text)",
    ]


def _main_decoder(
    src: _Source, header: bool, mti_enc: Optional[str], primary: _Field, secondary: Optional[_Field]
) -> None:
    lines = [
        "def decode(s):",
        "    if s.__class__ is not bytes:",
        "        if s.__class__ is not bytearray: raise Miss",
        "        s = bytes(s)",
        "    out = {}",
    ]
    lines.append("    i = dec_h(s, 0, out)" if header else "    i = 0")
    if mti_enc is None:
        lines += ["    j = i + 2", "    out['t'] = s[i:j].hex().upper()"]
    else:
        lines += ["    j = i + 4", f"    out['t'] = s[i:j].decode({mti_enc!r})"]
    lines.append("    i = j")
    lines += _bitmap_reader(primary, "p", "    ")
    lines += [
        "    if len(bm) != 8: raise Miss",
        "    i = j",
        "    fields = " + " + ".join(f"BITS_{k}[bm[{k}]]" for k in range(8)),
        "    if fields and fields[0] == 1:",
    ]
    if secondary is None:
        lines.append("        raise Miss")
    else:
        lines += _bitmap_reader(secondary, "1", "        ")
        lines += [
            "        if len(bm) != 8 or bm[0] & 128: raise Miss",
            "        i = j",
            "        fields = fields[1:] + " + " + ".join(f"BITS_{k + 8}[bm[{k}]]" for k in range(8)),
        ]
    lines += [
        "    for f in fields:",
        "        i = DECODERS[f](s, i, out)",
        "    if i != len(s): raise Miss",
        "    return out",
        "",
    ]
    src.add(*lines)
