"""The capture commands: ``geviso capture import|show|stats``, ``geviso replay``, and
the mock host's ``--proxy-to``/``--record``/``--playback`` options.

``cli.py`` registers them; everything they do is here. Usage and input errors (a bad
option, a capture that cannot be read) exit 2, runtime failures 1, with one line on
stderr and no traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any, Callable, Optional

from .. import framing as framing_mod
from .. import masking, specs
from ..errors import CaptureError, ConfigurationError, GevisoError
from . import format as capture_mod

PROG = "geviso"


# -- mock-host options ---------------------------------------------------------------------
def add_mock_host_options(parser: argparse.ArgumentParser) -> None:
    """Add the record and playback options to ``geviso mock-host``."""
    group = parser.add_argument_group("record and play back")
    group.add_argument("--proxy-to", metavar="HOST:PORT", help="forward every request to this host (tls://... for TLS)")
    group.add_argument("--proxy-ca", help="CA file to verify a tls:// --proxy-to host with")
    group.add_argument("--proxy-cert", help="client certificate for mutual TLS with the --proxy-to host")
    group.add_argument("--proxy-key", help="key of --proxy-cert, if not in the same file")
    group.add_argument("--proxy-timeout", type=float, default=30.0, help="seconds to wait for its answer (default 30)")
    group.add_argument("--record", metavar="CAPTURE", help="write each proxied exchange to this capture (masked)")
    group.add_argument("--record-card-data", action="store_true",
                       help="keep PANs, track data and PIN blocks in the capture (file mode 0600)")
    group.add_argument("--playback", metavar="CAPTURE", help="answer as recorded; unmatched requests go to the rules")
    group.add_argument("--match", help="fields a request must share with a recorded one, besides its MTI "
                                       "(default 2,3,4,41)")
    group.add_argument("--playback-latency", action="store_true", help="answer after the recorded latency")


def host_options(args: argparse.Namespace) -> dict[str, Any]:
    """The MockHost keywords of the record and playback options, checked."""
    try:
        return _host_options(args)
    except CaptureError as exc:
        raise ConfigurationError(str(exc)) from exc


def _host_options(args: argparse.Namespace) -> dict[str, Any]:
    from .. import tls
    from ..mock import playback

    if args.proxy_to is None:
        for name in ("record", "proxy_ca", "proxy_cert", "proxy_key"):
            if getattr(args, name):
                raise ConfigurationError(f"--{name.replace('_', '-')} needs --proxy-to")
    if args.record_card_data and not args.record:
        raise ConfigurationError("--record-card-data needs --record")
    if (args.match or args.playback_latency) and not args.playback:
        raise ConfigurationError("--match and --playback-latency need --playback")
    if args.proxy_to and args.playback:
        raise ConfigurationError("--proxy-to and --playback do not go together")
    if args.record and args.workers > 1:
        raise ConfigurationError("--record needs --workers 1 (one process writes the capture)")
    from ..mock.proxy import RecordingProxy

    if args.proxy_to:
        context = None
        if args.proxy_to.startswith("tls://"):
            context = _client_tls(tls, args.proxy_ca, args.proxy_cert, args.proxy_key)
        if args.record_card_data:
            print(f"{PROG} mock-host: warning: {capture_mod.CARD_DATA_WARNING}", file=sys.stderr, flush=True)
        front: Any = RecordingProxy(args.proxy_to, record=args.record, record_card_data=args.record_card_data,
                                    tls=context, timeout=args.proxy_timeout, spec_name=args.spec)
        return {"front": front}
    if args.playback:
        match = playback.parse_match(args.match) if args.match else None
        return {"front": playback.PlaybackFront(playback.Playback(args.playback, match=match),
                                                latency=args.playback_latency)}
    return {}


def _client_tls(tls: Any, cafile: Optional[str], certfile: Optional[str], keyfile: Optional[str]) -> Any:
    try:
        return tls.client_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot load the TLS CA, certificate or key: {exc}") from exc


# -- subcommands -----------------------------------------------------------------------------
def register(commands: Any) -> None:
    """Add ``capture`` and ``replay`` to the ``geviso`` subcommands."""
    cap = commands.add_parser("capture", help="import, show and summarise captures",
                              description="Captures of ISO 8583 exchanges (JSON lines with a header line).")
    sub = cap.add_subparsers(dest="capture_command", metavar="COMMAND")
    sub.required = True

    imp = sub.add_parser("import", help="import a pcap file (needs geviso[capture])",
                         description="Reassemble the TCP streams of a pcap file into a capture.")
    imp.add_argument("pcap", help="a pcap file (tcpdump -w)")
    imp.add_argument("--port", type=int, required=True, help="the card host's TCP port")
    imp.add_argument("--framing", default="binary2", choices=sorted(framing_mod.BY_NAME), help="(default binary2)")
    imp.add_argument("--spec", default="default", help="default, default_ascii or package.module:SPEC")
    imp.add_argument("-o", "--output", required=True, help="the capture to write")
    imp.add_argument("--card-data", action="store_true", help="keep card data (file mode 0600)")
    imp.set_defaults(func=_run(import_command))

    show = sub.add_parser("show", help="print a capture, masked")
    show.add_argument("capture")
    show.add_argument("--full", action="store_true", help="every field of every message (masked JSON)")
    show.add_argument("--limit", type=int, help="only the first N exchanges")
    show.set_defaults(func=_run(show_command))

    stats = sub.add_parser("stats", help="summarise a capture: MTIs, response codes, rates, latency")
    stats.add_argument("capture")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_run(stats_command))

    rep = commands.add_parser("replay", help="replay a capture against a host as load",
                              description="Send a capture's requests again (fresh STAN, RRN, dates) and compare "
                                          "the answers with the recorded ones. Exit 1 if any failed or differed.")
    rep.add_argument("capture")
    rep.add_argument("--host", required=True, help="HOST:PORT, or tls://HOST:PORT")
    rep.add_argument("--speed", default="1.0", help="recorded pace times this, or max (default 1.0)")
    rep.add_argument("--concurrency", type=int, default=10, help="requests in flight at most (default 10)")
    rep.add_argument("--connections", type=int, default=1, help="links per process (default 1)")
    rep.add_argument("--processes", type=int, default=1, help="processes sharing the capture (default 1)")
    rep.add_argument("--timeout", type=float, default=10.0, help="seconds per answer (default 10)")
    rep.add_argument("--compare", default="", help="fields compared besides MTI and 39, e.g. 38,54")
    rep.add_argument("--framing", choices=sorted(framing_mod.BY_NAME), help="(default: the capture's)")
    rep.add_argument("--spec", help="(default: the capture's)")
    rep.add_argument("--ca", help="CA file to verify a tls:// host with")
    rep.add_argument("--cert", help="client certificate for mutual TLS")
    rep.add_argument("--key", help="key of --cert, if not in the same file")
    rep.add_argument("--json", action="store_true", help="print JSON")
    rep.set_defaults(func=_run(replay_command))


def _run(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command`` with its errors as one line on stderr: 2 for bad input, 1 otherwise."""

    def run(args: argparse.Namespace) -> int:
        name = getattr(args, "capture_command", None)
        where = f"{PROG} {args.command}" + (f" {name}" if name else "")
        try:
            return command(args)
        except (CaptureError, ConfigurationError) as exc:
            print(f"{where}: error: {masking.mask_text(str(exc))}", file=sys.stderr)
            return 2
        except GevisoError as exc:
            print(f"{where}: error: {type(exc).__name__}: {masking.mask_text(str(exc))}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # ``geviso capture show | head``
            sys.stderr.close()
            return 0

    return run


# -- import ----------------------------------------------------------------------------------
def import_command(args: argparse.Namespace) -> int:
    """``geviso capture import``: pcap to capture, with a report of what was skipped."""
    try:
        from .pcap import import_pcap
    except ImportError as exc:
        raise ConfigurationError(f"capture import needs dpkt: pip install 'geviso[capture]' ({exc})") from None
    spec = specs.by_name(args.spec)
    framing = framing_mod.by_name(args.framing)
    if not 0 < args.port < 65536:
        raise ConfigurationError("--port is 1..65535")
    if args.card_data:
        print(f"{PROG} capture import: warning: {capture_mod.CARD_DATA_WARNING}", file=sys.stderr, flush=True)
    report = import_pcap(args.pcap, args.output, port=args.port, framing=framing, spec=spec,
                              spec_name=args.spec, card_data=args.card_data)
    print(f"{PROG} capture import: {report.summary()}")
    return 0


# -- show and stats ---------------------------------------------------------------------------
def _when(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _line(ex: capture_mod.Exchange) -> str:
    req = ex.request
    parts = [_when(ex.time), ex.link or "-", masking.describe(req)]
    if "4" in req:
        parts.append(f"amount={req['4']}")
    if ex.answer is None:
        parts.append(f"-> no answer{' (' + ex.error + ')' if ex.error else ''}")
    else:
        latency = f" {ex.latency_ms:.2f} ms" if ex.latency_ms is not None else ""
        parts.append(f"-> {ex.answer.get('t', '?')} 39={ex.answer.get('39', '-')}{latency}")
    return masking.mask_text(" ".join(parts))


def show_command(args: argparse.Namespace) -> int:
    """``geviso capture show``: the header, then one line (or masked JSON) per exchange."""
    with capture_mod.CaptureReader(args.capture) as reader:
        header = reader.header
        print(f"# {capture_mod.FORMAT} version {header.version}, source {header.source}, framing {header.framing}, "
              f"spec {header.spec}, {'masked' if header.masked else 'WITH CARD DATA (shown masked)'}, "
              f"created {header.created}")
        for i, ex in enumerate(reader):
            if args.limit is not None and i >= args.limit:
                break
            if args.full:
                data = ex.as_dict()
                data["request"]["fields"] = masking.mask_doc(ex.request)
                data["request"].pop("hex", None)
                if ex.answer is not None:
                    data["answer"]["fields"] = masking.mask_doc(ex.answer)
                    data["answer"].pop("hex", None)
                print(json.dumps(data))
            else:
                print(_line(ex))
    return 0


def summarise(header: capture_mod.Header, exchanges: Iterable[capture_mod.Exchange]) -> dict[str, Any]:
    """What ``geviso capture stats`` prints, as data (in one pass: a capture may be large)."""
    mtis: dict[str, int] = {}
    codes: dict[str, int] = {}
    per_second: dict[int, int] = {}
    latencies: list[float] = []
    links: set[str] = set()
    count, first, last = 0, float("inf"), float("-inf")
    for ex in exchanges:
        count += 1
        mti = ex.request.get("t", "?")
        mtis[mti] = mtis.get(mti, 0) + 1
        code = "none" if ex.answer is None else ex.answer.get("39", "-")
        codes[code] = codes.get(code, 0) + 1
        second = int(ex.time)
        per_second[second] = per_second.get(second, 0) + 1
        first, last = min(first, ex.time), max(last, ex.time)
        links.add(ex.link)
        if ex.latency_ms is not None:
            latencies.append(ex.latency_ms)
    latencies.sort()
    span = last - first if count else 0.0

    def q(p: float) -> Optional[float]:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))], 3) if latencies else None

    return {
        "version": header.version,
        "source": header.source,
        "framing": header.framing,
        "masked": header.masked,
        "exchanges": count,
        "links": len(links),
        "first": _when(first) if count else None,
        "seconds": round(span, 3),
        "rate_per_s": round(count / span, 1) if span > 0 else None,
        "peak_per_s": max(per_second.values(), default=0),
        "mtis": dict(sorted(mtis.items())),
        "codes": dict(sorted(codes.items())),
        "unanswered": codes.get("none", 0),
        "latency_ms": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": latencies[-1] if latencies else None},
    }


def stats_command(args: argparse.Namespace) -> int:
    """``geviso capture stats``."""
    with capture_mod.CaptureReader(args.capture) as reader:
        data = summarise(reader.header, reader)
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    lat = data["latency_ms"]
    print(f"{data['exchanges']} exchanges on {data['links']} links over {data['seconds']} s "
          f"(from {data['first'] or '-'}); rate {data['rate_per_s'] or '-'}/s, peak {data['peak_per_s']}/s")
    print("MTIs: " + (", ".join(f"{k}:{v}" for k, v in data["mtis"].items()) or "-"))
    print("response codes: " + (", ".join(f"{k}:{v}" for k, v in data["codes"].items()) or "-"))
    print(f"latency ms: p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max {lat['max']}")
    return 0


# -- replay ----------------------------------------------------------------------------------
def replay_command(args: argparse.Namespace) -> int:
    """``geviso replay``: send a capture's requests again and report the differences."""
    from .. import tls
    from ..mock.playback import parse_match
    from . import replay

    speed = replay.parse_speed(args.speed)
    for name in ("concurrency", "connections", "processes"):
        if getattr(args, name) < 1:
            raise ConfigurationError(f"--{name} must be at least 1")
    if not args.timeout > 0:
        raise ConfigurationError("--timeout must be positive")
    compare = parse_match(args.compare) if args.compare.strip() else ()
    header, exchanges = capture_mod.read(args.capture, hex=False)
    exchanges = sorted(exchanges, key=lambda ex: ex.time)
    spec = specs.by_name(args.spec or header.spec)
    framing = framing_mod.by_name(args.framing or header.framing)
    context = _client_tls(tls, args.ca, args.cert, args.key) if args.host.startswith("tls://") else None

    def replayer(node: int, nodes: int) -> replay.Replayer:
        return replay.Replayer(args.host, spec, framing=framing, tls=context, connections=args.connections,
                               concurrency=args.concurrency, speed=speed, timeout=args.timeout, compare=compare,
                               node=node, nodes=nodes)

    replayer(0, 1)  # checks the options before anything runs
    if args.processes > 1:
        result = _replay_processes(replayer, exchanges, args.processes, replay)
    else:
        result = replayer(0, 1).run(exchanges)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        print(f"{PROG} replay: {result.summary()}")
        lines = result.diff.lines()
        print(f"{PROG} replay diff: {lines[0]}")
        for line in lines[1:]:
            print(line)
    return 0 if result.failed == 0 and result.diff.differ == 0 and result.sent == len(exchanges) else 1


def _replay_processes(replayer: Callable[[int, int], Any], exchanges: Sequence[capture_mod.Exchange],
                      processes: int, replay: Any) -> Any:
    """Fork ``processes`` children, each replaying its share from one common start."""
    import time

    shares = replay.split(exchanges, processes)
    start_at = time.time() + 0.5
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, Any] = {}
    for node, share in enumerate(shares):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            os._exit(_replay_child(replayer, node, processes, share, start_at, write_end))
        os.close(write_end)
        children[pid] = os.fdopen(read_end, "r", encoding="utf-8")
    result = replay.ReplayResult(diff=replay.DiffReport(replayer(0, 1).compare))
    failed = []
    for pid, pipe in children.items():
        text = pipe.read()
        pipe.close()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0 or not text.strip():
            failed.append(pid)
            continue
        result.merge(json.loads(text))
    if failed:
        raise GevisoError(f"{len(failed)} of {processes} replay processes failed")
    return result


def _replay_child(replayer: Callable[[int, int], Any], node: int, nodes: int,
                  share: Sequence[capture_mod.Exchange], start_at: float, pipe_fd: int) -> int:  # pragma: no cover
    import gevent

    gevent.reinit()
    with os.fdopen(pipe_fd, "w", encoding="utf-8") as pipe:
        try:
            result = replayer(node, nodes).run(share, start_at=start_at)
        except GevisoError as exc:
            print(f"{PROG} replay process {node}: error: {type(exc).__name__}: {masking.mask_text(str(exc))}",
                  file=sys.stderr)
            return 1
        pipe.write(json.dumps(result.as_dict(latencies=True)))
    return 0


__all__ = ["add_mock_host_options", "host_options", "register", "summarise"]
