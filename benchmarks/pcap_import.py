"""How fast ``geviso capture import`` reads a large pcap, and dpkt against scapy.

    python benchmarks/pcap_import.py --size-mb 100 --rounds 3          # make the file, time the import
    python benchmarks/pcap_import.py --size-mb 100 --parsers dpkt,scapy   # the two libraries' parse alone

The file holds ``--streams`` TCP streams to port 8583 of 0200/0210 exchanges (the
``geviso bench`` closed-loop request, 15 fields, and its answer), binary2 framing,
one segment per message except: every 50th request split in two segments that arrive
in reverse order, every 100th answer sent twice (a retransmission). Its Ethernet, IPv4
and TCP headers are packed here (checksums left 0: nothing verifies them).

The parser comparison reads every packet and takes its TCP payload and ports, which is
the part the library does in an import; scapy runs on ``--scapy-mb`` megabytes and is
scaled to the whole file (it is slow enough that a whole 100 MB file takes minutes).
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

from geviso import framing, specs
from geviso.bench import REQUEST_0200, answer_of
from geviso.codec import codec_for

PORT = 8583


def _headers(src: bytes, dst: bytes, sport: int, dport: int, seq: int, payload: bytes) -> bytes:
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + 20 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, 5 << 4, 0x18, 65535, 0, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp + payload


def make_pcap(path: Path, size_mb: float, streams: int) -> int:
    """Write the file; how many exchanges it holds."""
    codec = codec_for(specs.by_name("default"))
    frame = framing.binary(2)
    host = bytes([10, 0, 0, 1])
    seqs = {}
    limit = int(size_mb * 1024 * 1024)
    written = 24
    count = 0
    t = 1_796_600_000.0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))

        def packet(data: bytes) -> None:
            nonlocal written
            sec = int(t)
            fh.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(data), len(data)) + data)
            written += 16 + len(data)

        while written < limit:
            stream = count % streams
            client = bytes([10, 0, 1 + stream // 250, 1 + stream % 250])
            cport = 40000 + stream
            up, down = seqs.get(stream, (1000, 5000))
            request = {**REQUEST_0200, "11": "%06d" % (count % 999_999 + 1), "37": "%012d" % count}
            answer = {**answer_of(request), "38": "%06d" % (count % 999_999 + 1)}
            raw_request, raw_answer = frame.encode(codec.encode(request)), frame.encode(codec.encode(answer))
            if count % 50 == 7:
                half = len(raw_request) // 2
                packet(_headers(client, host, cport, PORT, up + half, raw_request[half:]))
                packet(_headers(client, host, cport, PORT, up, raw_request[:half]))
            else:
                packet(_headers(client, host, cport, PORT, up, raw_request))
            t += 0.0005
            packet(_headers(host, client, PORT, cport, down, raw_answer))
            if count % 100 == 3:
                packet(_headers(host, client, PORT, cport, down, raw_answer))
            seqs[stream] = (up + len(raw_request), down + len(raw_answer))
            t += 0.0005
            count += 1
    return count


def time_import(path: Path, rounds: int) -> list[float]:
    from geviso.capture.pcap import import_pcap

    spent = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as folder:
            began, cpu = time.perf_counter(), time.process_time()
            report = import_pcap(path, Path(folder) / "c.jsonl", port=PORT, framing=framing.binary(2),
                                 spec=specs.by_name("default"))
            spent.append(time.perf_counter() - began)
            cpu = time.process_time() - cpu
        print(f"  import: {spent[-1]:.1f} s wall, {cpu:.1f} s CPU; {report.summary()}", flush=True)
    return spent


def parse_dpkt(path: Path, limit: int) -> tuple[int, float]:
    import dpkt

    began = time.perf_counter()
    n = 0
    with open(path, "rb") as fh:
        for _, data in dpkt.pcap.Reader(fh):
            tcp = dpkt.ethernet.Ethernet(data).data.data
            _ = (tcp.sport, tcp.dport, tcp.seq, bytes(tcp.data))
            n += len(data) + 16
            if n >= limit:
                break
    return n, time.perf_counter() - began


def parse_scapy(path: Path, limit: int) -> tuple[int, float]:
    from scapy.layers.inet import TCP
    from scapy.utils import PcapReader

    began = time.perf_counter()
    n = 0
    with PcapReader(str(path)) as reader:
        for pkt in reader:
            tcp = pkt[TCP]
            _ = (tcp.sport, tcp.dport, tcp.seq, bytes(tcp.payload))
            n += len(pkt) + 16
            if n >= limit:
                break
    return n, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--pcap", help="the file to use (made when missing)")
    parser.add_argument("--rounds", type=int, default=3, help="imports timed (default 3)")
    parser.add_argument("--parsers", default="", help="compare dpkt,scapy on the parse alone")
    parser.add_argument("--scapy-mb", type=float, default=10.0)
    args = parser.parse_args()
    path = Path(args.pcap or Path(tempfile.gettempdir()) / f"geviso-bench-{args.size_mb:g}mb.pcap")
    if not path.exists():
        began = time.perf_counter()
        count = make_pcap(path, args.size_mb, args.streams)
        print(f"made {path}: {os.path.getsize(path) / 1e6:.1f} MB, {count:,} exchanges in "
              f"{time.perf_counter() - began:.1f} s", flush=True)
    size = os.path.getsize(path)
    print(f"{path}: {size / 1e6:.1f} MB; Python {sys.version.split()[0]}, {os.cpu_count()} cores", flush=True)
    if args.rounds:
        spent = time_import(path, args.rounds)
        print(f"import of {size / 1e6:.0f} MB: best {min(spent):.1f} s, worst {max(spent):.1f} s "
              f"over {len(spent)} rounds", flush=True)
    for name in [p for p in args.parsers.split(",") if p]:
        limit = size if name == "dpkt" else int(args.scapy_mb * 1024 * 1024)
        read, seconds = (parse_dpkt if name == "dpkt" else parse_scapy)(path, limit)
        whole = seconds * size / read
        print(f"{name}: {read / 1e6:.1f} MB parsed in {seconds:.1f} s = {read / 1e6 / seconds:.1f} MB/s; "
              f"the whole file: {whole:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
