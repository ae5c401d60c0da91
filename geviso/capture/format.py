"""The capture format: recorded ISO 8583 exchanges as JSON lines, with a header line.

A capture is a UTF-8 text file. Its first line is the header, every other line one
exchange (a request and its answer)::

    {"format": "geviso-capture", "version": 1, "source": "record", "framing": "binary2",
     "spec": "default", "masked": true, "created": "2026-12-07T02:40:00Z"}
    {"time": 1796610000.123456, "link": "127.0.0.1:50412", "framing": "binary2",
     "request": {"hex": "30323030...", "fields": {"t": "0200", "2": "411111******1111", ...}},
     "answer": {"hex": "30323130...", "fields": {"t": "0210", "39": "00", ...}},
     "latency_ms": 1.234}

``time`` is when the request was seen (Unix seconds), ``link`` names the TCP link it
came on, ``hex`` is the message's bytes (after the length header and any TPDU) and
``fields`` the decoded message without its bitmaps. ``answer`` and ``latency_ms`` are
null when no answer came; ``error`` then may say why. Readers ignore keys they do not
know; a capture whose version is newer than :data:`VERSION` is refused.

A masked capture (the default) holds no card data: PANs keep their first 6 and last 4
digits, track data, PIN blocks and other secret fields (:mod:`geviso.masking`) are
replaced by a filler of the same length, and ``hex`` is the masked message re-encoded,
so a masked capture can still be played back and replayed. A capture with card data is
created readable by its owner only (mode 0600).

This module reads and writes files and does nothing else (no sockets, no greenlets).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import IO, Any, Optional, Union

from .. import masking
from ..codec import Codec, Message, Spec, codec_for
from ..errors import CaptureError, GevisoError

log = logging.getLogger(__name__)

#: The ``format`` of every capture's header line.
FORMAT = "geviso-capture"
#: The version this geviso writes, and the newest it reads.
VERSION = 1
#: Where an exchange came from: a recording proxy, or a packet capture.
SOURCES = ("record", "pcap")
#: Fields that are the message's bitmaps: rebuilt by the codec, never stored.
BITMAPS = ("p", "1")
#: What is logged (and the CLI prints) when a capture with card data is created.
CARD_DATA_WARNING = "the capture holds card data (PANs, track data, PIN blocks): keep it safe and delete it after use"

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Header:
    """The first line of a capture."""

    framing: str = "binary2"
    spec: str = "default"
    masked: bool = True
    source: str = "record"
    created: str = ""
    version: int = VERSION

    def as_dict(self) -> dict[str, Any]:
        """The header line's content."""
        return {
            "format": FORMAT,
            "version": self.version,
            "source": self.source,
            "framing": self.framing,
            "spec": self.spec,
            "masked": self.masked,
            "created": self.created or _now_text(),
        }


@dataclass
class Exchange:
    """One request and its answer (None if none came)."""

    time: float
    request: Message
    answer: Optional[Message] = None
    latency_ms: Optional[float] = None
    link: str = ""
    framing: str = ""
    request_hex: Optional[str] = None
    answer_hex: Optional[str] = None
    error: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The exchange's line content."""
        line: dict[str, Any] = {
            "time": self.time,
            "link": self.link,
            "framing": self.framing,
            "request": {"hex": self.request_hex, "fields": self.request},
            "answer": None if self.answer is None else {"hex": self.answer_hex, "fields": self.answer},
            "latency_ms": self.latency_ms,
        }
        if self.error is not None:
            line["error"] = self.error
        return line


def _now_text() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fields_of(doc: Mapping[str, str]) -> Message:
    """A decoded message as a capture stores it: without its bitmaps."""
    out = dict(doc)
    for name in BITMAPS:
        out.pop(name, None)
    return out


# -- masking ---------------------------------------------------------------------------------
def _filler(spec: Spec, name: str, value: str) -> str:
    """A same-length stand-in for a secret value: zeros for a binary field (its value is
    hex), asterisks for a text field."""
    binary = spec.get(name, {}).get("data_enc") == "b"
    return ("0" if binary else "*") * len(value)


#: Values shorter than this hold nothing :func:`geviso.masking.mask_text` masks (its
#: shortest pattern, track data, needs 12 digits and a separator).
_SHORTEST_MASKED = 13


def mask_message(doc: Mapping[str, str], spec: Spec) -> Message:
    """``doc`` with no card data, every value the same length as before so the masked
    message still encodes: PANs as :func:`geviso.masking.mask_pan` shows them (zeros for
    the hidden digits in a binary field), secret fields filled, and free text that
    :func:`geviso.masking.mask_text` would change filled too."""
    out = dict(doc)
    for name, value in doc.items():
        if name in masking.SECRET_FIELDS:
            out[name] = _filler(spec, name, value)
        elif name in masking.PAN_FIELDS:
            shown = masking.mask_pan(value)
            out[name] = shown.replace("*", "0") if spec.get(name, {}).get("data_enc") == "b" else shown
        elif len(value) >= _SHORTEST_MASKED and name not in _NEVER_MASKED:
            shown = masking.mask_text(value)
            if shown != value:
                out[name] = _filler(spec, name, value)
    return out


_NEVER_MASKED = frozenset(("t", *BITMAPS))


def encoded_hex(codec: Codec, doc: Mapping[str, str]) -> Optional[str]:
    """The hex of ``doc`` encoded, or None if the spec refuses it."""
    try:
        return codec.encode(doc).hex()
    except GevisoError:
        return None


# -- writing -----------------------------------------------------------------------------------
class CaptureWriter:
    """Writes a capture: the header at once, then :meth:`write` one line per exchange.

    Masks every exchange unless ``header.masked`` is False, which needs
    ``record_card_data=True`` said explicitly; such a file is created with mode 0600 and a
    warning is logged. ``spec`` (default: the header's spec by name) re-encodes masked
    messages. ``flush_each`` flushes every line (a recording loses nothing on a crash).
    """

    def __init__(
        self,
        path: PathLike,
        header: Header,
        *,
        spec: Optional[Spec] = None,
        record_card_data: bool = False,
        flush_each: bool = False,
    ) -> None:
        if not header.masked and not record_card_data:
            raise CaptureError("an unmasked capture needs record_card_data=True")
        if record_card_data and header.masked:
            header = replace(header, masked=False)
        if spec is None:
            from .. import specs

            spec = specs.by_name(header.spec)
        self.path = os.fspath(path)
        self.header = header
        self.spec = spec
        self.codec = codec_for(spec)
        self.flush_each = flush_each
        #: Exchanges written.
        self.count = 0
        self._fh = _open_for_writing(self.path, private=not header.masked)
        if not header.masked:
            log.warning("capture %s: %s", self.path, CARD_DATA_WARNING)
        self._fh.write(json.dumps(header.as_dict()) + "\n")
        self._fh.flush()

    def write(self, exchange: Exchange) -> None:
        """Append one exchange (masked unless the capture holds card data)."""
        if self.header.masked:
            exchange = self.masked(exchange)
        elif exchange.request_hex is None or (exchange.answer is not None and exchange.answer_hex is None):
            exchange = self._with_hex(exchange)
        self._fh.write(json.dumps(exchange.as_dict(), separators=(",", ":")) + "\n")
        self.count += 1
        if self.flush_each:
            self._fh.flush()

    def masked(self, exchange: Exchange) -> Exchange:
        """``exchange`` with its messages masked and their hex re-encoded."""
        request = mask_message(exchange.request, self.spec)
        answer = mask_message(exchange.answer, self.spec) if exchange.answer is not None else None
        return Exchange(
            time=exchange.time,
            request=request,
            answer=answer,
            latency_ms=exchange.latency_ms,
            link=exchange.link,
            framing=exchange.framing,
            request_hex=encoded_hex(self.codec, request),
            answer_hex=encoded_hex(self.codec, answer) if answer is not None else None,
            error=None if exchange.error is None else masking.mask_text(exchange.error),
        )

    def _with_hex(self, exchange: Exchange) -> Exchange:
        """``exchange`` with the hex it lacks encoded from its fields."""
        answer = exchange.answer
        return replace(
            exchange,
            request_hex=exchange.request_hex or encoded_hex(self.codec, exchange.request),
            answer_hex=exchange.answer_hex or (encoded_hex(self.codec, answer) if answer is not None else None),
        )

    def flush(self) -> None:
        """Write what is buffered to the file."""
        self._fh.flush()

    def close(self) -> None:
        """Flush and close the file."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def check_writable(path: PathLike) -> None:
    """:class:`CaptureError` now if a capture could not be created at ``path`` (a missing
    folder, a folder in its place, no permission): before a recording host starts."""
    name = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(name))
    if os.path.isdir(name) or not os.path.isdir(folder):
        why = "a folder" if os.path.isdir(name) else "no such folder"
        raise CaptureError(f"capture {name}: cannot write it: {why}")
    if not os.access(name if os.path.exists(name) else folder, os.W_OK):
        raise CaptureError(f"capture {name}: cannot write it: permission denied")


def _open_for_writing(path: str, *, private: bool) -> IO[str]:
    """``path`` opened to write text; mode 0600 (also on an existing file) when private."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(path, flags, 0o600 if private else 0o666)
        if private:
            os.fchmod(fd, 0o600)
    except OSError as exc:
        raise CaptureError(f"capture {path}: cannot write it: {exc.strerror or exc}") from exc
    return os.fdopen(fd, "w", encoding="utf-8")


# -- reading -----------------------------------------------------------------------------------
def parse_header(line: Union[str, bytes], source: str = "capture") -> Header:
    """The header from a capture's first line; :class:`CaptureError` if it is not one
    or is of a version this geviso does not read."""
    try:
        data = json.loads(line)
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CaptureError(f"{source} is not a geviso capture (its first line is not a {FORMAT} header)")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CaptureError(f"{source}: the header's version is {version!r}, not a positive whole number")
    if version > VERSION:
        raise CaptureError(
            f"{source} is a version {version} capture; this geviso reads versions up to {VERSION}: upgrade geviso"
        )
    framing, spec, masked = data.get("framing", "binary2"), data.get("spec", "default"), data.get("masked", True)
    if not isinstance(framing, str) or not isinstance(spec, str) or not isinstance(masked, bool):
        raise CaptureError(f"{source}: the header's framing, spec or masked has the wrong type")
    return Header(
        framing=framing,
        spec=spec,
        masked=masked,
        source=str(data.get("source", "record")),
        created=str(data.get("created", "")),
        version=version,
    )


def _message(data: Any, where: str, what: str) -> tuple[Message, Optional[str]]:
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        raise CaptureError(f"{where}: {what} has no fields")
    fields = data["fields"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
        raise CaptureError(f"{where}: {what}'s fields are not all text")
    if not isinstance(fields.get("t"), str):
        raise CaptureError(f"{where}: {what} has no MTI (field t)")
    raw = data.get("hex")
    if raw is not None and not isinstance(raw, str):
        raise CaptureError(f"{where}: {what}'s hex is not text")
    return dict(fields), raw


def parse_exchange(line: Union[str, bytes], where: str = "line", *, hex: bool = True) -> Exchange:  # noqa: A002
    """One exchange line; :class:`CaptureError` naming ``where`` if it is malformed.
    ``hex=False`` leaves the messages' hex out (playing back and replaying use the
    fields alone, and the hex is most of a large capture's memory)."""
    try:
        data = json.loads(line)
    except ValueError:  # UnicodeDecodeError included
        raise CaptureError(f"{where}: not JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise CaptureError(f"{where}: not a JSON object")
    when = data.get("time")
    if not isinstance(when, (int, float)) or isinstance(when, bool):
        raise CaptureError(f"{where}: time is not a number")
    request, request_hex = _message(data.get("request"), where, "the request")
    answer: Optional[Message] = None
    answer_hex = None
    if data.get("answer") is not None:
        answer, answer_hex = _message(data["answer"], where, "the answer")
    latency = data.get("latency_ms")
    if latency is not None and (not isinstance(latency, (int, float)) or isinstance(latency, bool) or latency < 0):
        raise CaptureError(f"{where}: latency_ms is not a positive number")
    error = data.get("error")
    return Exchange(
        time=float(when),
        request=request,
        answer=answer,
        latency_ms=None if latency is None else float(latency),
        link=str(data.get("link", "")),
        framing=str(data.get("framing", "")),
        request_hex=request_hex if hex else None,
        answer_hex=answer_hex if hex else None,
        error=None if error is None else str(error),
    )


class CaptureReader:
    """Reads a capture: :attr:`header` at once, then iterate for the exchanges (checked
    line by line, a bad line is a :class:`CaptureError` naming its number)."""

    def __init__(self, path: PathLike, *, hex: bool = True) -> None:  # noqa: A002
        self.path = os.fspath(path)
        self.hex = hex
        try:
            self._fh: IO[bytes] = open(self.path, "rb")
        except OSError as exc:
            raise CaptureError(f"capture {self.path}: cannot read it: {exc.strerror or exc}") from exc
        try:
            self.header = parse_header(self._fh.readline(), f"capture {self.path}")
        except BaseException:
            self._fh.close()
            raise

    def __iter__(self) -> Iterator[Exchange]:
        for number, line in enumerate(self._fh, 2):
            if line.strip():
                yield parse_exchange(line, f"capture {self.path} line {number}", hex=self.hex)

    def close(self) -> None:
        """Close the file."""
        self._fh.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read(path: PathLike, *, hex: bool = True) -> tuple[Header, list[Exchange]]:  # noqa: A002
    """The header and every exchange of the capture at ``path`` (``hex``: see
    :func:`parse_exchange`)."""
    with CaptureReader(path, hex=hex) as reader:
        return reader.header, list(reader)


def validate(path: PathLike) -> tuple[Header, int]:
    """Check every line of a capture; its header and how many exchanges it holds."""
    count = 0
    with CaptureReader(path) as reader:
        for _ in reader:
            count += 1
        return reader.header, count


__all__ = [
    "BITMAPS",
    "FORMAT",
    "VERSION",
    "check_writable",
    "CaptureReader",
    "CaptureWriter",
    "Exchange",
    "Header",
    "encoded_hex",
    "fields_of",
    "mask_message",
    "parse_exchange",
    "parse_header",
    "read",
    "validate",
]
