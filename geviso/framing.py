"""Length-prefix framing, with no sockets: bytes in, frames out.

A :class:`Framing` describes how a link delimits messages (a length header, maybe a
TPDU) and is immutable, so one object serves any number of links. Each link asks it for
a :class:`FrameDecoder`, an incremental decoder that takes chunks of any size (one byte,
or many frames at once) and returns every complete frame in them.

Write your own framing by subclassing :class:`Framing` and implementing
:meth:`~Framing.pack_length` and :meth:`~Framing.unpack_length` (and, for a protocol
with session-control frames, :meth:`~Framing.is_control`).
"""

from __future__ import annotations

import string
import struct
from typing import Callable, Optional, Union

from .errors import ConfigurationError, FramingError

#: Default largest frame accepted or sent (64 KiB): a bigger header fails the link.
DEFAULT_MAX_LENGTH = 65536
TPDU_SIZE = 5


class Framing:
    """A length header of ``header_size`` bytes before every payload.

    ``max_length`` bounds the payload (a larger header is a :class:`FramingError`, never
    an allocation). ``include_header`` is for hosts whose length counts the header
    bytes too. ``tpdu`` is the 5-byte TPDU put after the length on frames we originate;
    with it set, every incoming frame starts with a TPDU, which the decoder strips and
    remembers, and :meth:`swap_tpdu` turns it round for a reply.
    """

    name = "custom"
    #: Largest length the header itself can express.
    header_limit = 2**31
    #: True when :meth:`is_control` must be asked about every header (VMLH).
    has_control = False

    def __init__(
        self,
        header_size: int,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        include_header: bool = False,
        tpdu: Optional[bytes] = None,
    ) -> None:
        if header_size < 1:
            raise ConfigurationError("header_size must be at least 1")
        if max_length < 1:
            raise ConfigurationError("max_length must be at least 1")
        if tpdu is not None and len(tpdu) != TPDU_SIZE:
            raise ConfigurationError(f"a TPDU is {TPDU_SIZE} bytes, got {len(tpdu)}")
        self.header_size = header_size
        self.include_header = include_header
        self.tpdu = bytes(tpdu) if tpdu is not None else None
        self.max_length = min(max_length, self.header_limit - (header_size if include_header else 0))

    @property
    def header_struct(self) -> Optional[struct.Struct]:
        """A ``struct.Struct`` that reads the header, for framings whose frames are just a
        binary length and a payload (no TPDU, no session control, the length of the
        payload alone): their decoder splits frames in one step each. None otherwise."""
        return None

    # -- the two methods a custom framing implements -------------------------------
    def pack_length(self, length: int) -> bytes:
        """The header bytes for a body of ``length`` bytes (already range-checked)."""
        raise NotImplementedError

    def unpack_length(self, header: bytes) -> int:
        """The length in a header; raise :class:`FramingError` if it is garbage."""
        raise NotImplementedError

    def is_control(self, header: bytes) -> bool:
        """True for a session-control frame (a keep-alive): its body, if any, is skipped
        and never decoded as a message. Only asked when :attr:`has_control` is set."""
        return False

    def length_at(self, buffer: Union[bytes, bytearray], pos: int) -> int:
        """The length in the header that starts at ``buffer[pos]`` (override to avoid a copy)."""
        return self.unpack_length(bytes(buffer[pos : pos + self.header_size]))

    # -- shared machinery ----------------------------------------------------------
    def encode(self, payload: bytes, *, tpdu: Optional[bytes] = None) -> bytes:
        """One frame: header, TPDU (ours unless one is given), payload."""
        if self.tpdu is not None:
            payload = (tpdu if tpdu is not None else self.tpdu) + payload
        length = len(payload)
        if length > self.max_length:
            raise FramingError(f"frame of {length} bytes is over the maximum of {self.max_length}")
        wire = length + self.header_size if self.include_header else length
        return self.pack_length(wire) + payload

    def keepalive(self) -> bytes:
        """A zero-length frame, the usual link keep-alive."""
        return self.pack_length(self.header_size if self.include_header else 0)

    @staticmethod
    def swap_tpdu(tpdu: bytes) -> bytes:
        """The TPDU of a reply: destination and source addresses exchanged."""
        return tpdu[:1] + tpdu[3:5] + tpdu[1:3]

    def decoder(self, *, keep_tpdu: bool = False) -> FrameDecoder:
        """A new incremental decoder for one link; with ``keep_tpdu`` (and a TPDU
        framing) each payload still starts with its frame's TPDU."""
        return FrameDecoder(self, keep_tpdu=keep_tpdu)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} max_length={self.max_length}>"


class FrameDecoder:
    """Splits a byte stream into frame payloads; holds only the incomplete tail.

    Zero-length and session-control frames are counted in :attr:`keepalives` and never
    returned, so they cannot reach the codec. After a bad header, :attr:`error` holds the
    :class:`FramingError`: the frames before it are still returned once, and every later
    :meth:`feed` raises it (the stream cannot be resynchronised).
    """

    __slots__ = ("_framing", "_unpack_from", "_buffer", "_keep_tpdu", "keepalives", "last_tpdu", "error")

    def __init__(self, framing: Framing, *, keep_tpdu: bool = False) -> None:
        self._framing = framing
        self._keep_tpdu = keep_tpdu
        header = framing.header_struct  # a plain binary length: the one-step split
        self._unpack_from = header.unpack_from if header is not None else None
        self._buffer = bytearray()
        self.keepalives = 0
        self.last_tpdu: Optional[bytes] = None
        self.error: Optional[FramingError] = None

    @property
    def buffered(self) -> int:
        """Bytes held that do not yet make a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return the payloads of every frame now complete.

        Raises :class:`FramingError` on a garbage or oversized header (unless frames
        came before it in this chunk: then see :attr:`error`). The stream cannot be
        resynchronised after that, so the link must be failed.
        """
        if self.error is not None:
            raise self.error
        buf = self._buffer
        # With nothing held (the usual case: a recv ends on a frame boundary), frames are
        # sliced straight out of ``data``, one copy each; else out of the held bytes.
        work: Union[bytes, bytearray] = data
        if buf:
            buf += data
            work = buf
        size = len(work)
        frames: list[bytes] = []
        try:
            if self._unpack_from is not None:
                pos = self._split_binary(work, size, self._unpack_from, frames)
            else:
                pos = self._split(work, size, frames)
        except FramingError as exc:
            self.error = exc
            del buf[:]
            if not frames:
                raise
            return frames
        if work is buf:
            if pos:
                del buf[:pos]
        elif pos < size:
            buf += work[pos:]
        return frames

    def _split_binary(
        self, work: Union[bytes, bytearray], size: int, unpack_from: Callable[..., tuple[int]], frames: list[bytes]
    ) -> int:
        """:meth:`_split` for a plain binary length header (see ``Framing.header_struct``).
        It runs once per frame, so it does only what such a header needs."""
        framing = self._framing
        hsize = framing.header_size
        max_length = framing.max_length
        append = frames.append
        pos = 0
        while size - pos >= hsize:
            length = unpack_from(work, pos)[0]
            if length > max_length:
                raise FramingError(f"length header says {length} bytes, outside 0..{max_length}")
            end = pos + hsize + length
            if end > size:
                break
            if length:
                append(bytes(work[pos + hsize : end]))
            else:
                self.keepalives += 1
            pos = end
        return pos

    def _split(self, work: Union[bytes, bytearray], size: int, frames: list[bytes]) -> int:
        """Append the payload of every complete frame in ``work[:size]`` to ``frames``;
        return where the first incomplete one starts."""
        framing = self._framing
        hsize = framing.header_size
        length_at = framing.length_at
        control_check = framing.is_control if framing.has_control else None
        max_length = framing.max_length
        adjust = hsize if framing.include_header else 0
        tpdu = framing.tpdu is not None
        skip = 0 if self._keep_tpdu else TPDU_SIZE
        pos = 0
        while size - pos >= hsize:
            length = length_at(work, pos)
            control = control_check is not None and control_check(bytes(work[pos : pos + hsize]))
            if adjust:
                length -= adjust
                if length < 0:
                    raise FramingError("length header smaller than the header itself")
            if length > max_length or length < 0:
                raise FramingError(f"length header says {length} bytes, outside 0..{max_length}")
            end = pos + hsize + length
            if end > size:
                break
            if length == 0 or control:
                self.keepalives += 1
            elif tpdu:
                if length < TPDU_SIZE:
                    raise FramingError("frame shorter than its TPDU")
                self.last_tpdu = bytes(work[pos + hsize : pos + hsize + TPDU_SIZE])
                frames.append(bytes(work[pos + hsize + skip : end]))
            else:
                frames.append(bytes(work[pos + hsize : end]))
            pos = end
        return pos


class BinaryFraming(Framing):
    """Big-endian unsigned length of 2 or 4 bytes (jPOS NACChannel, RawChannel)."""

    _formats = {2: ">H", 4: ">I"}

    def __init__(self, size: int = 2, **options: object) -> None:
        if size not in self._formats:
            raise ConfigurationError("binary framing takes a 2- or 4-byte length")
        self._struct = struct.Struct(self._formats[size])
        self.header_limit = 2 ** (8 * size) - 1
        self.name = f"binary{size}"
        super().__init__(size, **options)  # type: ignore[arg-type]

    @property
    def header_struct(self) -> Optional[struct.Struct]:
        return self._struct if self.tpdu is None and not self.include_header else None

    def pack_length(self, length: int) -> bytes:
        return self._struct.pack(length)

    def unpack_length(self, header: bytes) -> int:
        return int(self._struct.unpack(header)[0])

    def length_at(self, buffer: Union[bytes, bytearray], pos: int) -> int:
        return int(self._struct.unpack_from(buffer, pos)[0])


class AsciiFraming(Framing):
    """``digits`` ASCII decimal digits, e.g. ``b"0115"`` (jPOS ASCIIChannel)."""

    def __init__(self, digits: int = 4, **options: object) -> None:
        self.header_limit = 10**digits - 1
        self.name = f"ascii{digits}"
        super().__init__(digits, **options)  # type: ignore[arg-type]

    def pack_length(self, length: int) -> bytes:
        return b"%0*d" % (self.header_size, length)

    def unpack_length(self, header: bytes) -> int:
        if not header.isdigit():
            raise FramingError("length header is not decimal digits")
        return int(header)


class HexFraming(Framing):
    """``digits`` ASCII hexadecimal characters (jPOS HEXChannel)."""

    def __init__(self, digits: int = 4, **options: object) -> None:
        self.header_limit = 16**digits - 1
        self.name = f"hex{digits}"
        super().__init__(digits, **options)  # type: ignore[arg-type]

    def pack_length(self, length: int) -> bytes:
        return b"%0*X" % (self.header_size, length)

    def unpack_length(self, header: bytes) -> int:
        # int(x, 16) alone would take "-001", "0x1F", " 1f" or "1_0": check every character.
        text = header.decode("latin-1")
        if not all(c in string.hexdigits for c in text):
            raise FramingError("length header is not hexadecimal")
        return int(text, 16)


class BcdFraming(Framing):
    """Decimal digits packed two to a byte: 115 is ``01 15`` (jPOS BCDChannel)."""

    def __init__(self, size: int = 2, **options: object) -> None:
        self.header_limit = 10 ** (2 * size) - 1
        self.name = f"bcd{size}"
        super().__init__(size, **options)  # type: ignore[arg-type]

    def pack_length(self, length: int) -> bytes:
        return bytes.fromhex("%0*d" % (2 * self.header_size, length))

    def unpack_length(self, header: bytes) -> int:
        digits = header.hex()
        if not digits.isdigit():
            raise FramingError("length header is not BCD")
        return int(digits)


class VmlhFraming(Framing):
    """Visa: 2-byte big-endian length, 2 reserved bytes, at most 2048 bytes.

    A frame whose fourth header byte has high nibble 2 is session control (a
    keep-alive, usually with no body); it is counted and skipped, body and all, and
    never decoded as a message.
    """

    name = "vmlh"
    header_limit = 2048
    has_control = True

    def __init__(self, **options: object) -> None:
        options.setdefault("max_length", 2048)
        super().__init__(4, **options)  # type: ignore[arg-type]

    def pack_length(self, length: int) -> bytes:
        return struct.pack(">HH", length, 0)

    def unpack_length(self, header: bytes) -> int:
        return (header[0] << 8) | header[1]

    def length_at(self, buffer: Union[bytes, bytearray], pos: int) -> int:
        return (buffer[pos] << 8) | buffer[pos + 1]

    def is_control(self, header: bytes) -> bool:
        """True when the fourth header byte's high nibble is 2 (session control)."""
        return header[3] >> 4 == 2

    def keepalive(self) -> bytes:
        """A session-control frame with no body (VMLH's keep-alive)."""
        return b"\x00\x00\x00\x20"


def binary(size: int = 2, **options: object) -> Framing:
    """Binary big-endian length header of ``size`` (2 or 4) bytes; the default framing."""
    return BinaryFraming(size, **options)


def ascii(digits: int = 4, **options: object) -> Framing:  # noqa: A001 - the framing's name
    """ASCII decimal length header of ``digits`` digits."""
    return AsciiFraming(digits, **options)


def hex(digits: int = 4, **options: object) -> Framing:  # noqa: A001 - the framing's name
    """ASCII hexadecimal length header of ``digits`` characters."""
    return HexFraming(digits, **options)


def bcd(size: int = 2, **options: object) -> Framing:
    """BCD length header of ``size`` bytes (2 bytes hold up to 9999)."""
    return BcdFraming(size, **options)


def vmlh(**options: object) -> Framing:
    """Visa VMLH: 2-byte length plus 2 reserved bytes, session-control frames."""
    return VmlhFraming(**options)


#: Framings by the names the CLI and Locust options use.
BY_NAME: dict[str, Callable[[], Framing]] = {
    "binary2": lambda: binary(2),
    "binary4": lambda: binary(4),
    "ascii4": lambda: ascii(4),
    "bcd2": lambda: bcd(2),
    "hex4": lambda: hex(4),
    "vmlh": vmlh,
}


def by_name(name: str) -> Framing:
    """A framing from its name (``binary2``, ``binary4``, ``ascii4``, ``bcd2``, ``hex4``, ``vmlh``)."""
    try:
        return BY_NAME[name]()
    except (KeyError, TypeError):
        shown = repr(name) if isinstance(name, str) and len(name) <= 24 else type(name).__name__
        raise ConfigurationError(f"unknown framing {shown}; choose from {', '.join(BY_NAME)}") from None


#: What every ``framing=`` option takes: a :class:`Framing`, one of :data:`BY_NAME`, or
#: None for the default (``binary2``).
FramingLike = Union[Framing, str, None]


def resolve(framing: FramingLike, default: str = "binary2") -> Framing:
    """The :class:`Framing` a ``framing=`` option names: a Framing as is, a name from
    :data:`BY_NAME` (``"ascii4"``) built, None the ``default``; anything else is a
    :class:`ConfigurationError`."""
    if framing is None:
        return by_name(default)
    if isinstance(framing, Framing):
        return framing
    if isinstance(framing, str):
        return by_name(framing)
    raise ConfigurationError(
        f"framing must be a Framing or one of {', '.join(BY_NAME)}; got a {type(framing).__name__}"
    )

