"""The ``geviso bench`` command line: parse, run the asked workloads, print rows,
ratios and JSON."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, Optional

import gevent
import iso8583

from .. import gctune, specs
from ..codec import Spec
from ..connection import parse_address
from ..errors import ConfigurationError, GevisoError
from ..framing import BY_NAME as FRAMINGS
from .burst import _burst_rounds, run_burst, run_spawn
from .closed_loop import run_closed_loop
from .codec import codec_cost, run_codec
from .common import REQUEST_0200, Endpoint, Result, _local_mock_host, _process, best, mock_host_process
from .links import DEFAULT_LINKS, DEFAULT_SENDERS, TARGET_RATIO, run_links
from .memory import run_memory
from .moov import HOSTS, compare, local_host, run_moov, sizes_up_to
from .replay import run_replay
from .transport import ECHO_READY, run_transport, run_transport_geviso, serve_echo

WORKLOADS = ("burst", "closed-loop", "codec", "transport", "links", "replay", "memory", "saf", "moov")
DEFAULT_WORKLOADS = ("burst", "closed-loop", "codec", "transport", "links")


# -- the command --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``geviso bench`` command line."""
    parser = argparse.ArgumentParser(
        prog="geviso bench",
        description="Measure geviso's throughput and latency against a mock host, and check that every "
        "response matched its own request. Workloads: burst (N concurrent sends on one link, host in this "
        "process), closed-loop (C senders against a mock host process), codec (encode and decode alone), "
        "transport (a bare gevent client against the same echo, for comparison), links (the same senders over 1 link "
        "and over up to 1,000 links, against a mock host process), memory (1,000,000 messages "
        "against 10,000; long). Exit status 1 if any response did not match.",
    )
    parser.add_argument("--workload", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma-separated: {', '.join(WORKLOADS)} or all (default: all but memory)")
    parser.add_argument("--host", help="HOST:PORT of an external host for burst and closed-loop")
    parser.add_argument("--messages", type=int,
                        help="messages per run (default 20,000); burst: sends per row (default 100,000), in bursts of "
                             "100 to 100,000 up to it; "
                             "memory: the long run (default 1,000,000)")
    parser.add_argument("--concurrency", default="1,10,100", help="closed-loop/transport senders (default 1,10,100)")
    parser.add_argument("--links", default=",".join(str(n) for n in DEFAULT_LINKS),
                        help="links workload: link counts, one row each (default 1,1000; e.g. 1,10,100,1000)")
    parser.add_argument("--senders", type=int, default=DEFAULT_SENDERS,
                        help=f"links workload: closed-loop senders shared by the links (default {DEFAULT_SENDERS:,})")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the best is shown")
    parser.add_argument("--spec", default="default", help="spec name or package.module:SPEC (default: default)")
    parser.add_argument("--framing", default="binary2", choices=sorted(FRAMINGS), help="(default binary2)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--moov-host", default="mock,server",
                        help="moov workload's hosts, comma-separated: mock (MockHost), server "
                             "(Server(on_inbound=handler)) (default both)")
    parser.add_argument("--compare-moov", metavar="BINARY",
                        help="run moov-io/iso8583-connection's benchmark binary (go test -c) and the moov workload "
                             "in turn, --rounds times, and print the ratios; bursts up to --messages")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of --compare-moov (default 5)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() before measuring and a generation-0 GC threshold of 50,000 (what a "
                             "dedicated load generator may do; default: Python's GC settings)")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    return parser


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "gevent": gevent.__version__,
        "pyiso8583": iso8583.__version__,
        "platform": platform.platform(terse=True),
    }


def _workloads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(DEFAULT_WORKLOADS)
    unknown = [name for name in names if name not in WORKLOADS]
    if unknown or not names:
        raise ConfigurationError(f"unknown workload {unknown[0] if unknown else text!r}; "
                                 f"choose from {', '.join(WORKLOADS)}, all")
    return names


def _levels(text: str, option: str = "--concurrency") -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise ConfigurationError(f"{option} is a comma-separated list of positive numbers")
    return levels


def _moov_hosts(text: str) -> list[str]:
    hosts = [name.strip() for name in text.split(",") if name.strip()]
    if not hosts or any(host not in HOSTS for host in hosts):
        raise ConfigurationError(f"--moov-host is a comma-separated list of {', '.join(HOSTS)}")
    return hosts


def _repeat(times: int, measure: Callable[..., Result], *args: Any) -> Result:
    return best([measure(*args) for _ in range(max(1, times))])


def run(args: argparse.Namespace, spec: Spec, report: Callable[[Result], None]) -> list[Result]:
    """Every asked workload on ``spec`` (``args.spec`` resolved); each result is reported
    as soon as it is measured."""
    levels = _levels(args.concurrency)
    results: list[Result] = []

    def keep(result: Result) -> None:
        results.append(result)
        report(result)

    external: Optional[tuple[str, int]] = parse_address(args.host) if args.host else None
    for workload in _workloads(args.workload):
        if workload == "burst":
            largest = args.messages or 100_000  # sends per row; a burst of over 100,000 would reuse STANs
            sizes = [size for size in (100, 1_000, 10_000, 100_000) if size <= largest] or [largest]
            with _maybe(external, lambda: _local_mock_host(spec, args.framing)) as (address, _):
                for size in sizes:
                    rounds = _burst_rounds(size, largest)
                    keep(_repeat(args.repeat, functools.partial(run_burst, rounds=rounds), address, spec,
                                 args.framing, size))
                    keep(_repeat(args.repeat, functools.partial(run_spawn, rounds=rounds), size))
        elif workload in ("closed-loop", "links", "replay"):  # against a mock host process
            count = args.messages or 20_000
            with _maybe(external, lambda: mock_host_process(args.spec, args.framing)) as (address, pid):
                if workload == "links":
                    for links in _levels(args.links, "--links"):
                        keep(_repeat(args.repeat, run_links, address, spec, args.framing, links, args.senders,
                                     count, pid))
                else:
                    run = run_closed_loop if workload == "closed-loop" else run_replay
                    for level in levels:
                        keep(_repeat(args.repeat, run, address, spec, args.framing, level, count, pid))
        elif workload == "codec":
            count = args.messages or 20_000
            for result in run_codec(spec, count):
                keep(result)
        elif workload == "transport":
            count = args.messages or 20_000
            echo_args = [sys.executable, "-m", "geviso.bench", "--serve-echo"]
            with _process(echo_args, ECHO_READY) as (address, pid):
                for level in levels:
                    keep(_repeat(args.repeat, run_transport, address, spec, level, count))
                    keep(_repeat(args.repeat, run_transport_geviso, address, spec, level, count, pid))
        elif workload == "memory":
            keep(run_memory(spec, args.framing, args.messages or 1_000_000))
        elif workload == "moov":
            for host in _moov_hosts(args.moov_host):
                with local_host(spec, args.framing, host) as address:
                    for size in sizes_up_to(args.messages or 100_000):
                        keep(_repeat(args.repeat, run_moov, address, spec, args.framing, size, host))
        elif workload == "saf":
            from ..saf.bench import run_saf

            start = functools.partial(mock_host_process, args.spec, args.framing)
            for result in run_saf(spec, args.framing, args.messages or 20_000, levels, start, REQUEST_0200):
                keep(result)
    return results


@contextmanager
def _maybe(external: Optional[tuple[str, int]], start: Callable[[], Any]) -> Iterator[Endpoint]:
    """The external host's address, or a host we start (and stop)."""
    if external is not None:
        yield external, None
        return
    with start() as endpoint:
        yield endpoint


def summary(results: Sequence[Result], codec_cost_ns: Optional[float] = None) -> list[str]:
    """Ratios between the rows that say what the figures mean together: how a large
    burst compares with small ones (with the GC's and the harness's shares taken out),
    and the link's cost over a bare client's."""
    lines = []
    by_label = {(r.workload, r.label): r for r in results}
    loop100 = by_label.get(("closed-loop", "C=100"))
    if loop100 is not None:
        lines.append(f"closed-loop C=100: {loop100.rate:,.0f} round trips/s")
    b1k, b100k = by_label.get(("burst", "burst 1,000")), by_label.get(("burst", "burst 100,000"))
    if b1k is not None and b100k is not None:
        ratio = b100k.ns_per_msg / b1k.ns_per_msg
        lines.append(f"burst 100,000: {b100k.rate:,.0f} msg/s, {ratio:.2f} x 100 x the 1,000 burst's time")
        if "gc_seconds" in b1k.extra and "gc_seconds" in b100k.extra:
            outside = _outside_gc_ns(b100k) / _outside_gc_ns(b1k)
            lines.append(f"burst 100,000 less the cyclic GC's collections ({_gc_share(b100k)} of its time, "
                         f"{_gc_share(b1k)} of the 1,000 bursts'): {outside:.2f} x")
        g1k, g100k = by_label.get(("burst", "greenlets 1,000")), by_label.get(("burst", "greenlets 100,000"))
        if g1k is not None and g100k is not None and b1k.ns_per_msg > g1k.ns_per_msg:
            own = (b100k.ns_per_msg - g100k.ns_per_msg) / (b1k.ns_per_msg - g1k.ns_per_msg)
            alone = g100k.ns_per_msg / g1k.ns_per_msg
            lines.append(f"burst 100,000 less a raw greenlet per send (the harness, {g1k.ns_per_msg:,.0f} and "
                         f"{g100k.ns_per_msg:,.0f} ns each, itself {alone:.2f} x): geviso's part {own:.2f} x")
    for result in results:
        loop = by_label.get(("closed-loop", result.label)) if result.workload == "replay" else None
        if loop is not None and loop.rate:
            share = result.rate / loop.rate
            verdict = "meets" if share >= 0.8 else "misses"
            lines.append(f"replay --speed max {result.label}: {result.rate:,.0f} round trips/s = {share:.0%} of "
                         f"closed-loop's {loop.rate:,.0f} ({verdict} the 80% target)")
    lines.extend(_links_summary(results))
    codec = {r.label: r.ns_per_msg for r in results if r.workload == "codec"}
    parts = ("encode 0200/15 compiled", "decode 0200/15 compiled")
    if codec_cost_ns is None and all(p in codec for p in parts):
        codec_cost_ns = sum(codec[p] for p in parts)
    for level in sorted({int(r.extra["concurrency"]) for r in results if r.workload == "transport"}):
        bare = by_label.get(("transport", f"C={level} bare client"))
        mine = by_label.get(("transport", f"C={level} geviso client"))
        loop = by_label.get(("closed-loop", f"C={level}"))
        if bare is None or codec_cost_ns is None:
            continue
        if mine is not None:
            ratio = (mine.ns_per_msg - codec_cost_ns) / bare.ns_per_msg
            lines.append(f"connection overhead C={level}: geviso client {mine.ns_per_msg:,.0f} ns/rt - its codec "
                         f"{codec_cost_ns:,.0f} ns = {ratio:.2f} x the bare client's {bare.ns_per_msg:,.0f} ns "
                         f"on the same echo host")
        if loop is not None:
            ratio = (loop.ns_per_msg - 2 * codec_cost_ns) / bare.ns_per_msg
            lines.append(f"whole stack C={level}: geviso client and mock host {loop.ns_per_msg:,.0f} ns/rt - both "
                         f"codecs {2 * codec_cost_ns:,.0f} ns = {ratio:.2f} x the bare client and echo")
    if any(r.workload == "saf" for r in results):
        from ..saf.bench import summary as saf_summary

        lines += saf_summary(list(results))
    return lines


def _links_summary(results: Sequence[Result]) -> list[str]:
    """The cost per message over the most links against over one, with the same senders:
    wall clock, and the CPU time of each side where known."""
    rows = sorted((r for r in results if r.workload == "links"), key=lambda r: int(r.extra["links"]))
    if len(rows) < 2 or int(rows[0].extra["links"]) != 1 or not rows[0].ns_per_msg:
        return []
    one, most = rows[0], rows[-1]
    ratio = most.ns_per_msg / one.ns_per_msg
    verdict = "meets" if ratio <= TARGET_RATIO else "misses"
    line = (f"links: {int(most.extra['links']):,} links / 1 link at C={int(one.extra['concurrency']):,}: "
            f"{most.ns_per_msg:,.0f} / {one.ns_per_msg:,.0f} ns/msg = {ratio:.2f} x ({verdict} the "
            f"{TARGET_RATIO:g} x target)")
    for side in ("client", "host"):
        many_ns, one_ns = most.extra.get(f"{side}_ns_per_msg"), one.extra.get(f"{side}_ns_per_msg")
        if many_ns and one_ns:
            line += f"; {side} CPU {many_ns:,} / {one_ns:,} ns = {many_ns / one_ns:.2f} x"
    return [line]


def _outside_gc_ns(result: Result) -> float:
    """Nanoseconds a message outside the cyclic GC's collections."""
    gc_seconds: float = result.extra["gc_seconds"]
    return (result.seconds - gc_seconds) / result.messages * 1e9


def _gc_share(result: Result) -> str:
    return f"{result.extra['gc_seconds'] / result.seconds:.0%}" if result.seconds else "-"


def _row(result: Result) -> str:
    extra = ""
    if "client_cpu" in result.extra or "host_cpu" in result.extra:
        extra = f"  cpu client {result.extra.get('client_cpu', '?')} host {result.extra.get('host_cpu', '?')}"
    if result.workload == "memory":
        grew = result.extra["growth"]
        extra = (f"  growth rss {grew['rss'] / 1024:+,.0f} KiB greenlets {grew['greenlets']:+d} "
                 f"pending {result.extra['after_all']['pending']} queued {result.extra['after_all']['queued']} "
                 f"-> {'holds' if result.extra['holds'] else 'GROWS'}")
    if "gc_seconds" in result.extra:
        extra = f"  gc {_gc_share(result)} ({result.extra['gc_full']} full)"
    matched = "ok" if result.ok else f"MISMATCH {result.matched}/{result.messages} failed {result.failed}"
    p50, p99 = (f"{q * 1e6:>9,.1f}" if result.p99 else f"{'-':>9}" for q in (result.p50, result.p99))
    label = result.label + (f" x{result.extra['bursts']:,}" if result.extra.get("bursts", 1) > 1 else "")
    return (f"{result.workload:<12} {label:<28} {result.messages:>9,} {result.rate:>12,.0f} "
            f"{result.ns_per_msg:>10,.0f} {p50} {p99}  {matched}{extra}")


HEADER = (f"{'workload':<12} {'run':<28} {'messages':>9} {'msg/s':>12} {'ns/msg':>10} "
          f"{'p50 us':>9} {'p99 us':>9}  matched")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; 0 when every response matched its request."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.serve_echo:
        return serve_echo()
    try:  # every option checked before anything is printed or started
        if args.repeat < 1 or args.rounds < 1 or args.senders < 1 or (args.messages is not None and args.messages < 1):
            raise ConfigurationError("--repeat, --rounds, --senders and --messages must be positive")
        _workloads(args.workload)
        _levels(args.concurrency)
        _levels(args.links, "--links")
        _moov_hosts(args.moov_host)
        spec = specs.by_name(args.spec)
        if args.host:
            parse_address(args.host)
    except ConfigurationError as exc:
        print(f"geviso bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        return _main(args, argv, spec)
    except GevisoError as exc:  # e.g. the --host cannot be reached
        print(f"geviso bench: error: {exc}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace, argv: Optional[Sequence[str]], spec: Spec) -> int:
    info = machine()
    if args.compare_moov:
        return _compare_moov(args, info)
    if not args.json:
        print(f"geviso bench on {info['cpu']} ({info['cores']} cores), Python {info['python']}, "
              f"gevent {info['gevent']}, pyiso8583 {info['pyiso8583']}")
        print(HEADER, flush=True)
    with gctune.tuned() if args.gc_freeze else contextlib.nullcontext():
        results = run(args, spec, (lambda r: None) if args.json else (lambda r: print(_row(r), flush=True)))
    has_codec = any(r.workload == "codec" for r in results)
    needs_codec = any(r.workload == "transport" for r in results)
    lines = summary(results, None if has_codec or not needs_codec else codec_cost(spec))
    ok = all(r.ok for r in results) and all(r.extra.get("holds", True) for r in results)
    if args.json:
        print(json.dumps({"machine": info, "command": ["geviso", "bench", *(argv or sys.argv[1:])],
                          "results": [r.as_dict() for r in results], "summary": lines, "ok": ok}, indent=2))
    else:
        for line in lines:
            print(line)
    return 0 if ok else 1


def _compare_moov(args: argparse.Namespace, info: dict[str, Any]) -> int:
    """``--compare-moov BINARY``: moov's benchmark and the moov workload, interleaved."""
    say: Callable[[str], None] = (lambda line: None) if args.json else (lambda line: print(line, flush=True))
    if not args.json:
        print(f"geviso bench --compare-moov on {info['cpu']} ({info['cores']} cores), Python {info['python']}")
    try:
        with gctune.tuned() if args.gc_freeze else contextlib.nullcontext():
            outcome = compare(args.compare_moov, specs.by_name(args.spec), args.framing,
                              sizes_up_to(args.messages or 100_000), _moov_hosts(args.moov_host), args.rounds, say)
    except RuntimeError as exc:
        print(f"geviso bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"machine": info, "command": ["geviso", "bench", "--compare-moov", "BINARY"], **outcome},
                         indent=2))
    return 0
