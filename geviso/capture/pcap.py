"""Import a packet capture (tcpdump's pcap, or pcapng) as a geviso capture.

Needs dpkt (``pip install 'geviso[capture]'``), which reads pcapng files and parses
the link, IP and TCP layers (plain Ethernet/IPv4 frames, most of any capture, are
sliced by :func:`plain_segment` instead, for speed). Every TCP stream to or from the
card host's ``port`` is reassembled in both directions (segments put in sequence
order, retransmitted and overlapping bytes taken once), split into frames by the
link's framing and decoded with the spec; requests are paired with their answers by
key (MTI pair and STAN, as a link does) within their stream. Exchanges are written as
their answers arrive; requests never answered in the capture are written at the end
with no answer.

Nothing is dropped silently: packets that are not TCP/IP, on other ports, or cut
short, frames that do not decode, streams whose framing breaks and answers that match
no request are counted in the :class:`ImportReport`. A file that is not a packet capture
or ends mid-record is a :class:`~geviso.errors.CaptureError` or a counted truncation,
never a traceback.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Optional, Union

import dpkt

from ..codec import Message, Spec, codec_for, is_response
from ..errors import CaptureError, FramingError, GevisoError
from ..framing import FrameDecoder, Framing
from ..keys import default as default_key
from ..keys import mti_pair
from . import format as capture_mod

PathLike = Union[str, "os.PathLike[str]"]

#: Segments held before a stream whose start (SYN) the capture missed begins at the
#: earliest of them: its first segments may come out of order too.
MID_STREAM_HOLD = 8
#: Bytes held out of order per stream direction before the missing bytes are given up
#: (a packet the capture lost): the stream restarts after the gap, counted.
MAX_OUT_OF_ORDER = 4 * 1024 * 1024

_PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
}
_PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
# Link types: Ethernet, raw IP (three numbers), BSD loopback, Linux cooked v1 and v2.
DLT_EN10MB, DLT_RAW, DLT_RAW_OPENBSD, DLT_IPV4, DLT_IPV6, DLT_NULL, DLT_LOOP = 1, 101, 14, 228, 229, 0, 108
DLT_LINUX_SLL, DLT_LINUX_SLL2 = 113, 276
LINK_TYPES = frozenset({DLT_EN10MB, DLT_RAW, DLT_RAW_OPENBSD, DLT_IPV4, DLT_IPV6, DLT_NULL, DLT_LOOP, DLT_LINUX_SLL,
                        DLT_LINUX_SLL2})


@dataclass
class ImportReport:
    """What an import found: what became exchanges and what was skipped, and why."""

    packets: int = 0
    tcp_packets: int = 0  # TCP segments to or from the port
    exchanges: int = 0  # lines written
    unanswered: int = 0  # requests written with no answer
    not_tcp: int = 0  # packets that are not TCP over IPv4/IPv6 (ARP, UDP, ICMP...)
    other_ports: int = 0  # TCP packets not to or from the port
    unreadable: int = 0  # packets dpkt could not parse (cut short by the snap length...)
    retransmitted_bytes: int = 0  # payload bytes seen twice, taken once
    reordered: int = 0  # segments that came before the bytes preceding them
    gaps: int = 0  # bytes the capture never had (lost packets): the stream restarted after them
    frames: int = 0  # frames split out of the streams
    undecodable: int = 0  # frames the spec could not decode
    framing_errors: int = 0  # stream directions whose framing broke (the rest of it is skipped)
    unmatched_answers: int = 0  # answers to no request seen in the capture
    streams: int = 0
    truncated: bool = False  # the file ends mid-record
    errors: list[str] = field(default_factory=list)  # the first few problems, in words

    def note(self, text: str) -> None:
        """Keep ``text`` among the first problems shown."""
        if len(self.errors) < 10:
            self.errors.append(text)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (JSON)."""
        return dict(self.__dict__)

    def summary(self) -> str:
        """One line of counts, then the first problems."""
        counts = " ".join(f"{k}={v}" for k, v in self.as_dict().items() if k != "errors")
        return counts + "".join(f"\n  {text}" for text in self.errors)


def _records(fh: IO[bytes], report: ImportReport) -> Iterator[tuple[float, bytes, int]]:
    """``(time, packet, link type)`` of every record in a pcap or pcapng file."""
    head = fh.read(24)
    magic = head[:4]
    if magic in _PCAP_MAGICS:
        if len(head) < 24:
            raise CaptureError("the pcap file ends inside its header")
        endian, unit = _PCAP_MAGICS[magic]
        linktype = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
        record = struct.Struct(endian + "IIII")
        read = fh.read
        while True:
            hdr = read(16)
            if not hdr:
                return
            if len(hdr) < 16:
                report.truncated = True
                report.note("the file ends inside a packet record's header")
                return
            sec, frac, caplen, _ = record.unpack(hdr)
            data = read(caplen)
            if len(data) < caplen:
                report.truncated = True
                report.note(f"the file ends inside a packet ({len(data)} of {caplen} bytes)")
                return
            yield sec + frac * unit, data, linktype
    elif magic == _PCAPNG_MAGIC:
        fh.seek(0)
        try:
            reader = dpkt.pcapng.Reader(fh)
            linktype = reader.datalink()
            for ts, data in reader:
                yield float(ts), data, linktype
        except (dpkt.dpkt.Error, ValueError, struct.error) as exc:
            report.truncated = True
            report.note(f"pcapng file cut short or damaged: {type(exc).__name__}")
    else:
        raise CaptureError("not a pcap or pcapng file (unknown magic number)")


def _ip_of(data: bytes, linktype: int) -> Any:
    """The IP packet in a link-layer frame, or None if it carries none."""
    if linktype == DLT_EN10MB:
        packet: Any = dpkt.ethernet.Ethernet(data).data
    elif linktype in (DLT_RAW, DLT_RAW_OPENBSD, DLT_IPV4, DLT_IPV6):
        packet = dpkt.ip6.IP6(data) if data[:1] and data[0] >> 4 == 6 else dpkt.ip.IP(data)
    elif linktype in (DLT_NULL, DLT_LOOP):
        packet = dpkt.loopback.Loopback(data).data
    elif linktype == DLT_LINUX_SLL:
        packet = dpkt.sll.SLL(data).data
    elif linktype == DLT_LINUX_SLL2:
        packet = dpkt.sll2.SLL2(data).data
    else:  # checked before: see LINK_TYPES
        packet = None
    return packet if isinstance(packet, (dpkt.ip.IP, dpkt.ip6.IP6)) else None


#: ``(source, destination, source port, destination port, sequence, flags, payload)``
Segment = tuple[bytes, bytes, int, int, int, int, bytes]
_ETHERNET_IPV4 = b"\x08\x00"
_IPV4_TCP = struct.Struct(">BxH2xHxB2x4s4s")
_TCP = struct.Struct(">HHI4xBB")


def plain_segment(data: bytes) -> Optional[Segment]:
    """The TCP segment in an Ethernet frame of plain IPv4 (no VLAN tag, not a fragment),
    sliced with ``struct``; None for anything else, which :func:`dpkt_segment` parses.
    Most captured packets are plain, and this is some 30 times faster than dpkt for them
    (the results are the same: see the tests)."""
    if data[12:14] != _ETHERNET_IPV4 or len(data) < 54:
        return None
    version_ihl, total, fragment, proto, src, dst = _IPV4_TCP.unpack_from(data, 14)
    if version_ihl >> 4 != 4 or proto != 6 or fragment & 0x3FFF or total > len(data) - 14:
        return None
    ihl = (version_ihl & 0x0F) * 4
    if ihl < 20 or ihl + 20 > total:
        return None
    sport, dport, seq, offset, flags = _TCP.unpack_from(data, 14 + ihl)
    start = 14 + ihl + (offset >> 4) * 4
    if (offset >> 4) < 5 or start > 14 + total:
        return None
    return src, dst, sport, dport, seq, flags, data[start : 14 + total]


def dpkt_segment(data: bytes, linktype: int) -> Optional[Segment]:
    """The TCP segment in a link-layer frame, parsed by dpkt; None if it holds none."""
    ip = _ip_of(data, linktype)
    if ip is None or not isinstance(ip.data, dpkt.tcp.TCP):
        return None
    tcp = ip.data
    return ip.src, ip.dst, tcp.sport, tcp.dport, tcp.seq, tcp.flags, bytes(tcp.data)


def _address(raw: bytes) -> str:
    import socket

    if len(raw) == 16:
        return "[" + socket.inet_ntop(socket.AF_INET6, raw) + "]"
    return socket.inet_ntop(socket.AF_INET, raw)


class _Direction:
    """One direction of a TCP stream: segments put in order, frames split out."""

    __slots__ = ("next_seq", "base", "held", "held_bytes", "decoder", "broken")

    def __init__(self, framing: Framing) -> None:
        self.next_seq: Optional[int] = None  # the stream offset of the next byte wanted (unwrapped)
        self.base = 0  # before next_seq is known: the first sequence number seen
        self.held: dict[int, bytes] = {}  # out-of-order segments by offset
        self.held_bytes = 0
        self.decoder: FrameDecoder = framing.decoder()
        self.broken = False

    def _unwrap(self, seq: int) -> int:
        """A 32-bit sequence number as an offset near :attr:`next_seq` (wraps handled)."""
        base = self.next_seq if self.next_seq is not None else seq
        delta = (seq - base) & 0xFFFFFFFF
        if delta >= 0x80000000:
            delta -= 0x100000000
        return base + delta

    def segment(self, seq: int, payload: bytes, syn: bool, report: ImportReport) -> list[bytes]:
        """The in-order bytes this segment makes available (maybe none)."""
        if syn:
            self.next_seq = self._unwrap(seq) + 1
            self.held.clear()
            self.held_bytes = 0
            if not payload:
                return []
            seq = (seq + 1) & 0xFFFFFFFF
        if not payload:
            return []
        if self.next_seq is None:  # the capture began mid-stream: start at the earliest of the first few
            return self._mid_stream(seq, payload, report)
        offset = self._unwrap(seq)
        out: list[bytes] = []
        if offset > self.next_seq:
            report.reordered += 1
            if len(self.held.get(offset, b"")) < len(payload):
                self.held_bytes += len(payload) - len(self.held.get(offset, b""))
                self.held[offset] = payload
            if self.held_bytes > MAX_OUT_OF_ORDER:
                self._skip_gap(report)
                out.extend(self._drain(report))
            return out
        self._take(offset, payload, out, report)
        out.extend(self._drain(report))
        return out

    def _mid_stream(self, seq: int, payload: bytes, report: ImportReport) -> list[bytes]:
        if not self.held:
            self.base = seq
        delta = (seq - self.base) & 0xFFFFFFFF
        offset = self.base + (delta - 0x100000000 if delta >= 0x80000000 else delta)
        if len(self.held.get(offset, b"")) < len(payload):
            self.held_bytes += len(payload) - len(self.held.get(offset, b""))
            self.held[offset] = payload
        if len(self.held) < MID_STREAM_HOLD:
            return []
        return self.start_held(report)

    def start_held(self, report: ImportReport) -> list[bytes]:
        """Begin a stream whose SYN was not captured at its earliest held segment."""
        if self.next_seq is not None or not self.held:
            return []
        self.next_seq = min(self.held)
        return self._drain(report)

    def _take(self, offset: int, payload: bytes, out: list[bytes], report: ImportReport) -> None:
        assert self.next_seq is not None
        seen = self.next_seq - offset
        if seen >= len(payload):
            report.retransmitted_bytes += len(payload)
            return
        if seen > 0:
            report.retransmitted_bytes += seen
            payload = payload[seen:]
        out.append(payload)
        self.next_seq += len(payload)

    def _drain(self, report: ImportReport) -> list[bytes]:
        out: list[bytes] = []
        while self.held:
            assert self.next_seq is not None
            ready = [offset for offset in self.held if offset <= self.next_seq]
            if not ready:
                break
            for offset in sorted(ready):
                payload = self.held.pop(offset)
                self.held_bytes -= len(payload)
                self._take(offset, payload, out, report)
        return out

    def _skip_gap(self, report: ImportReport) -> None:
        """Give up the missing bytes before the earliest held segment: the stream goes on
        from there, with a fresh frame decoder (frames cut by the gap are lost)."""
        assert self.next_seq is not None
        first = min(self.held)
        report.gaps += first - self.next_seq
        report.note(f"a stream lost {first - self.next_seq} bytes the capture never had; it resumes after them")
        self.next_seq = first
        self.decoder = FrameDecoder(self.decoder._framing)
        self.broken = False

    def finish(self, report: ImportReport) -> list[bytes]:
        """At the end of the file: whatever is held after a gap."""
        out = self.start_held(report)
        while self.held:
            self._skip_gap(report)
            out.extend(self._drain(report))
        return out


class _Stream:
    """One TCP connection to the host: both directions and the requests awaiting answers."""

    __slots__ = ("link", "up", "down", "pending")

    def __init__(self, link: str, framing: Framing) -> None:
        self.link = link
        self.up = _Direction(framing)  # client to host
        self.down = _Direction(framing)  # host to client
        self.pending: dict[Hashable, deque[tuple[float, Message, bytes]]] = {}


class Importer:
    """Turns packets into exchanges written to a :class:`~geviso.capture.CaptureWriter`."""

    def __init__(self, writer: capture_mod.CaptureWriter, *, port: int, framing: Framing, spec: Spec,
                 report: Optional[ImportReport] = None) -> None:
        self.writer = writer
        self.port = port
        self.framing = framing
        self.framing_name = framing.name
        self.codec = codec_for(spec)
        self.report = report if report is not None else ImportReport()
        self.last_time = 0.0
        self.streams: dict[tuple[bytes, int, bytes], _Stream] = {}

    def packet(self, when: float, data: bytes, linktype: int) -> None:
        """Take one captured packet."""
        report = self.report
        report.packets += 1
        self.last_time = when
        if linktype not in LINK_TYPES:
            raise CaptureError(f"link type {linktype} is not supported (Ethernet, raw IP, loopback, Linux cooked)")
        segment = plain_segment(data) if linktype == DLT_EN10MB else None
        if segment is None:
            try:
                segment = dpkt_segment(data, linktype)
            except (dpkt.dpkt.Error, struct.error, ValueError, IndexError):
                report.unreadable += 1
                return
            if segment is None:
                report.not_tcp += 1
                return
        src, dst, sport, dport, seq, flags, payload = segment
        if dport == self.port:
            client, client_port, host, upward = src, sport, dst, True
        elif sport == self.port:
            client, client_port, host, upward = dst, dport, src, False
        else:
            report.other_ports += 1
            return
        report.tcp_packets += 1
        key = (client, client_port, host)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = _Stream(f"{_address(client)}:{client_port}", self.framing)
            report.streams += 1
        direction = stream.up if upward else stream.down
        for chunk in direction.segment(seq, payload, bool(flags & dpkt.tcp.TH_SYN), report):
            self._bytes(stream, direction, chunk, when)

    def _bytes(self, stream: _Stream, direction: _Direction, chunk: bytes, when: float) -> None:
        if direction.broken:
            return
        try:
            frames = direction.decoder.feed(chunk)
        except FramingError as exc:
            self._broken(stream, direction, exc)
            return
        for frame in frames:
            self._frame(stream, frame, when)
        if direction.decoder.error is not None:
            self._broken(stream, direction, direction.decoder.error)

    def _broken(self, stream: _Stream, direction: _Direction, exc: FramingError) -> None:
        direction.broken = True
        self.report.framing_errors += 1
        side = "to" if direction is stream.up else "from"
        self.report.note(f"stream {side} {stream.link}: {exc} (wrong --framing?); the rest of it is skipped")

    def _frame(self, stream: _Stream, frame: bytes, when: float) -> None:
        report = self.report
        report.frames += 1
        try:
            doc = self.codec.decode(frame)
        except GevisoError as exc:
            report.undecodable += 1
            if report.undecodable <= 3:
                report.note(f"stream {stream.link}: {exc} (wrong --spec or --framing?)")
            return
        mti = doc.get("t", "")
        try:
            key: Hashable = default_key(doc)
        except KeyError:
            key = mti_pair(mti)
        if not is_response(mti):
            stream.pending.setdefault(key, deque()).append((when, doc, frame))
            return
        waiting = stream.pending.get(key)
        if not waiting:
            report.unmatched_answers += 1
            return
        sent, request, raw = waiting.popleft()
        if not waiting:
            del stream.pending[key]
        self._write(stream, sent, request, raw, doc, frame, (when - sent) * 1000.0)

    def _write(self, stream: _Stream, sent: float, request: Message, raw: bytes, answer: Optional[Message],
               answer_raw: Optional[bytes], latency_ms: Optional[float]) -> None:
        self.writer.write(capture_mod.Exchange(
            time=round(sent, 6),
            request=capture_mod.fields_of(request),
            answer=None if answer is None else capture_mod.fields_of(answer),
            latency_ms=None if latency_ms is None else round(max(0.0, latency_ms), 3),
            link=stream.link,
            framing=self.framing_name,
            request_hex=raw.hex(),
            answer_hex=None if answer_raw is None else answer_raw.hex(),
            error=None if answer is not None else "no answer in the packet capture",
        ))
        self.report.exchanges += 1

    def finish(self) -> ImportReport:
        """Flush what is held after gaps and write the requests never answered."""
        for stream in self.streams.values():
            for direction in (stream.up, stream.down):
                for chunk in direction.finish(self.report):
                    self._bytes(stream, direction, chunk, self.last_time)
        left = sorted(
            ((sent, stream, request, raw) for stream in self.streams.values()
             for waiting in stream.pending.values() for sent, request, raw in waiting),
            key=lambda item: item[0],
        )
        for sent, stream, request, raw in left:
            self._write(stream, sent, request, raw, None, None, None)
            self.report.unanswered += 1
        return self.report


def import_pcap(
    source: PathLike,
    output: PathLike,
    *,
    port: int,
    framing: Framing,
    spec: Spec,
    spec_name: str = "default",
    card_data: bool = False,
) -> ImportReport:
    """Read the pcap/pcapng file ``source`` and write its exchanges on ``port`` to the
    capture ``output`` (masked unless ``card_data``)."""
    name = os.fspath(source)
    try:
        fh = open(name, "rb")
    except OSError as exc:
        raise CaptureError(f"pcap file {name}: cannot read it: {exc.strerror or exc}") from exc
    with fh:
        report = ImportReport()
        records = _records(fh, report)
        first = next(records, None)  # a file that is no packet capture fails here, before any output
        header = capture_mod.Header(framing=framing.name, spec=spec_name, masked=not card_data, source="pcap")
        with capture_mod.CaptureWriter(output, header, spec=spec, record_card_data=card_data) as writer:
            importer = Importer(writer, port=port, framing=framing, spec=spec, report=report)
            if first is not None:
                importer.packet(*first)
                for record in records:
                    importer.packet(*record)
            return importer.finish()


__all__ = ["ImportReport", "Importer", "import_pcap"]
