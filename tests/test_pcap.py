"""``geviso capture import``: packet captures written here with dpkt (Ethernet, IPv4,
TCP built by hand, segments split, reordered and retransmitted) import to the capture
they were made from; bad files give counted skips or one clear error line."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from iso8583.specs import default as spec
from test_capture import PAN, hosts, record  # noqa: F401 - the fixture
from test_capture_cli import geviso_cli, one_error_line

from geviso import capture, cli, framing
from geviso.capture import pcap
from geviso.codec import codec_for

HOST_PORT = 8583
SERVER = "10.0.0.1"


def ethernet(src: str, sport: int, dst: str, dport: int, seq: int, payload: bytes = b"", flags: int = 0x18,
             ack: int = 0) -> bytes:
    tcp = dpkt.tcp.TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack, flags=flags, data=payload)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_TCP, data=tcp)
    ip.len = len(ip)  # type: ignore[attr-defined]
    return bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=dpkt.ethernet.ETH_TYPE_IP, data=ip))


def pieces(data: bytes, cut: int) -> list[tuple[int, bytes]]:
    """``data`` in segments of ``cut`` bytes, with their offsets."""
    return [(i, data[i : i + cut]) for i in range(0, len(data), cut)]


class Stream:
    """One TCP connection written packet by packet, each direction with its own sequence."""

    def __init__(self, client: str, cport: int, isn_up: int = 1000, isn_down: int = 0xFFFFFF00) -> None:
        self.client, self.cport = client, cport
        self.up, self.down = isn_up + 1, isn_down + 1  # after the SYNs
        self.isn_up, self.isn_down = isn_up, isn_down

    def handshake(self, when: float) -> list[tuple[float, bytes]]:
        return [
            (when, ethernet(self.client, self.cport, SERVER, HOST_PORT, self.isn_up, flags=0x02)),
            (when, ethernet(SERVER, HOST_PORT, self.client, self.cport, self.isn_down, flags=0x12)),
        ]

    def send(self, when: float, data: bytes, upward: bool, style: int) -> list[tuple[float, bytes]]:
        """``data`` as segments: whole (0), split in 7s reordered (1), split with the
        first segment retransmitted and an overlapping resend (2)."""
        base = self.up if upward else self.down
        src, sport, dst, dport = ((self.client, self.cport, SERVER, HOST_PORT) if upward
                                  else (SERVER, HOST_PORT, self.client, self.cport))
        segments = [(0, data)] if style == 0 else pieces(data, 7)
        if style == 1 and len(segments) > 2:
            segments[0], segments[1] = segments[1], segments[0]  # the second arrives first
        if style == 2:
            segments = [segments[0], segments[0], *segments[1:], (3, data[3:12])]  # duplicates, overlaps
        packets = [(when, ethernet(src, sport, dst, dport, base + offset, chunk)) for offset, chunk in segments]
        if upward:
            self.up += len(data)
        else:
            self.down += len(data)
        return packets


def write_pcap(path: Path, packets: Sequence[tuple[float, bytes]], *, linktype: int = dpkt.pcap.DLT_EN10MB) -> None:
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh, linktype=linktype)
        for when, data in packets:
            writer.writepkt(data, ts=when)


def packets_of(exchanges: Sequence[capture.Exchange]) -> Iterator[tuple[float, bytes]]:
    """The packets a capture's exchanges were (masked frames, binary2 framing)."""
    frame = framing.binary(2)
    streams: dict[str, Stream] = {}
    for i, ex in enumerate(exchanges):
        link = ex.link.replace("127.0.0.1", "10.0.0.2")
        stream = streams.get(link)
        if stream is None:
            host, port = link.rsplit(":", 1)
            stream = streams[link] = Stream(host, int(port))
            yield from stream.handshake(ex.time - 0.01)
        yield from stream.send(ex.time, frame.encode(bytes.fromhex(ex.request_hex or "")), True, i % 3)
        if ex.answer is not None:
            sent = ex.time + (ex.latency_ms or 0.0) / 1000.0
            yield from stream.send(sent, frame.encode(bytes.fromhex(ex.answer_hex or "")), False, (i + 1) % 3)


def imported(tmp_path: Path, packets: Any, **options: Any) -> tuple[pcap.ImportReport, list[capture.Exchange]]:
    source, target = tmp_path / "in.pcap", tmp_path / "out.jsonl"
    write_pcap(source, list(packets))
    report = pcap.import_pcap(source, target, port=HOST_PORT, framing=options.pop("framing", framing.binary(2)),
                              spec=spec, **options)
    return report, capture.read(target)[1]


def test_a_pcap_of_recorded_traffic_imports_to_the_same_capture(hosts: Any, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "recorded.jsonl"
    record(hosts, path)
    header, recorded = capture.read(path)
    report, got = imported(tmp_path, packets_of(recorded))
    assert report.exchanges == len(recorded) and report.undecodable == 0 and report.unmatched_answers == 0
    assert report.reordered > 0 and report.retransmitted_bytes > 0 and report.gaps == 0 and not report.truncated
    assert len(got) == len(recorded)
    for mine, theirs in zip(got, recorded):
        assert mine.request == theirs.request and mine.answer == theirs.answer
        assert mine.request_hex == theirs.request_hex and mine.answer_hex == theirs.answer_hex
        assert mine.link == theirs.link.replace("127.0.0.1", "10.0.0.2")
        assert mine.time == pytest.approx(theirs.time, abs=1e-5)
        assert mine.latency_ms == pytest.approx(theirs.latency_ms, abs=0.01)


def test_card_data_in_a_pcap_is_masked_unless_asked(tmp_path: Path) -> None:
    request = {"t": "0200", "2": PAN, "11": "000001", "52": "0123456789ABCDEF"}
    answer = {"t": "0210", "2": PAN, "11": "000001", "39": "00"}
    codec = codec_for(spec)
    exchange = capture.Exchange(time=10.0, request=request, answer=answer, latency_ms=5.0, link="10.0.0.2:40000",
                                request_hex=codec.encode(request).hex(), answer_hex=codec.encode(answer).hex())
    report, (masked,) = imported(tmp_path, packets_of([exchange]))
    assert masked.request["2"] == "411111******1111" and PAN not in (tmp_path / "out.jsonl").read_text()
    report, (clear,) = imported(tmp_path, packets_of([exchange]), card_data=True)
    assert clear.request["2"] == PAN and clear.request["52"] == "0123456789ABCDEF"


def test_non_tcp_other_ports_undecodable_frames_and_unanswered_requests_are_counted(tmp_path: Path) -> None:
    frame = framing.binary(2)
    codec = codec_for(spec)
    udp = dpkt.ip.IP(src=socket.inet_aton("10.0.0.2"), dst=socket.inet_aton(SERVER), p=dpkt.ip.IP_PROTO_UDP,
                     data=dpkt.udp.UDP(sport=5, dport=HOST_PORT, data=b"hello"))
    arp = dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_ARP, data=dpkt.arp.ARP())
    stream = Stream("10.0.0.2", 40000)
    packets = [
        (1.0, bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=udp))),
        (1.0, bytes(arp)),
        (1.0, ethernet("10.0.0.2", 40001, SERVER, 22, 5, b"ssh")),
        *stream.handshake(1.0),
        *stream.send(1.1, frame.encode(b"garbage that is no ISO 8583"), True, 0),
        *stream.send(1.2, frame.encode(codec.encode({"t": "0800", "11": "000001", "70": "301"})), True, 0),
        *stream.send(1.3, frame.encode(codec.encode({"t": "0810", "11": "000009", "39": "00"})), False, 0),
        (1.4, b"\x00\x01"),  # a runt frame
    ]
    report, got = imported(tmp_path, packets)
    assert report.not_tcp == 2 and report.other_ports == 1 and report.unreadable == 1
    assert report.undecodable == 1 and report.unmatched_answers == 1 and report.unanswered == 1
    (only,) = got
    assert only.answer is None and only.request["11"] == "000001" and only.error


def test_the_wrong_framing_is_a_counted_framing_error(hosts: Any, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "recorded.jsonl"
    record(hosts, path)
    _, recorded = capture.read(path)
    report, got = imported(tmp_path, packets_of(recorded), framing=framing.ascii(4))
    assert got == [] and report.framing_errors == 2 and "wrong --framing" in report.summary()


def test_a_lost_packet_is_a_counted_gap_and_the_stream_goes_on(tmp_path: Path) -> None:
    frame = framing.binary(2)
    codec = codec_for(spec)
    stream = Stream("10.0.0.2", 40000)
    lost = frame.encode(codec.encode({"t": "0800", "11": "000001", "70": "301"}))
    stream.send(1.0, lost, True, 0)  # never captured
    kept = stream.send(1.1, frame.encode(codec.encode({"t": "0800", "11": "000002", "70": "301"})), True, 0)
    cut = stream.send(1.2, frame.encode(codec.encode({"t": "0800", "11": "000003", "70": "301"})), True, 1)
    packets = [*stream.handshake(0.9), *kept, *cut[:1], *cut[2:]]  # and one segment lost mid-frame
    report, got = imported(tmp_path, packets)
    assert report.gaps == len(lost) + 7 and [ex.request["11"] for ex in got] == ["000002"]
    assert report.framing_errors + report.undecodable >= 1 or report.frames == 1


def test_bad_files_give_one_clear_line_or_a_counted_truncation(tmp_path: Path, capsys: Any) -> None:
    stream = Stream("10.0.0.2", 40000)
    codec = codec_for(spec)
    good = tmp_path / "good.pcap"
    message = framing.binary(2).encode(codec.encode({"t": "0800", "11": "000001", "70": "301"}))
    write_pcap(good, [*stream.handshake(1.0), *stream.send(1.1, message, True, 0)])
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(good.read_bytes()[:-10])
    out = tmp_path / "out.jsonl"
    args = ["--port", str(HOST_PORT), "-o", str(out)]
    done = geviso_cli("capture", "import", str(cut), *args)
    assert done.returncode == 0 and "truncated=True" in done.stdout and "ends inside a packet" in done.stdout
    assert "Traceback" not in done.stderr
    text = tmp_path / "notes.txt"
    text.write_text("these are not packets\n")
    one_error_line(geviso_cli("capture", "import", str(text), *args), 2, "not a pcap or pcapng file")
    head = tmp_path / "head.pcap"
    head.write_bytes(good.read_bytes()[:10])
    user = tmp_path / "user.pcap"
    write_pcap(user, [(1.0, b"private")], linktype=147)  # a user link type
    for argv, text in [  # the same command in this process (a subprocess each is slow)
        ([str(tmp_path / "none.pcap"), *args], "cannot read it"),
        ([str(good), "--port", "0", "-o", str(out)], "--port"),
        ([str(head), *args], "ends inside its header"),
        ([str(user), *args], "link type 147 is not supported"),
    ]:
        assert cli.main(["capture", "import", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err, err


@settings(max_examples=150, deadline=None)
@given(
    payload=st.binary(max_size=80),
    options=st.sampled_from([b"", b"\x01\x01\x01\x01", b"\x02\x04\x05\xb4\x01\x01\x04\x02"]),
    ip_options=st.sampled_from([b"", b"\x01\x01\x01\x00"]),
    seq=st.integers(0, 2**32 - 1),
    flags=st.integers(0, 0x3F),
    fragment=st.sampled_from([0, 0x2000, 0x0010]),
    padding=st.sampled_from([b"", b"\x00" * 6]),
)
def test_the_plain_frame_shortcut_reads_what_dpkt_reads(payload: bytes, options: bytes, ip_options: bytes, seq: int,
                                                         flags: int, fragment: int, padding: bytes) -> None:
    tcp = dpkt.tcp.TCP(sport=40000, dport=HOST_PORT, seq=seq, flags=flags, opts=options, data=payload)
    tcp.off = (20 + len(options)) // 4
    ip = dpkt.ip.IP(src=socket.inet_aton("10.0.0.2"), dst=socket.inet_aton(SERVER), p=dpkt.ip.IP_PROTO_TCP,
                    opts=ip_options, data=tcp)
    ip.hl = (20 + len(ip_options)) // 4
    ip.len = len(ip)
    frame = bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip)) + padding
    frame = frame[:20] + fragment.to_bytes(2, "big") + frame[22:]  # the IP header's flags and offset
    fast = pcap.plain_segment(frame)
    slow = pcap.dpkt_segment(frame, dpkt.pcap.DLT_EN10MB)
    assert fast is None or fast == slow
    assert (fast is None) == bool(fragment & 0x3FFF)  # only fragments are left to dpkt here
    vlan = frame[:12] + b"\x81\x00\x00\x07" + frame[12:]
    assert pcap.plain_segment(vlan) is None and pcap.dpkt_segment(vlan, dpkt.pcap.DLT_EN10MB) == slow
