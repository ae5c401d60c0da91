"""The ``geviso mock-host`` command: run a mock card host until a signal.

It prints ``geviso mock-host listening on HOST:PORT`` once it accepts links (so
``--port 0`` can be read back), logs one line per link to stderr, and on SIGINT or
SIGTERM stops gracefully, prints ``geviso mock-host stats: received=... codes=...`` and
exits 0. ``--workers N`` runs N processes sharing the port through ``SO_REUSEPORT``.
``--admin HOST:PORT`` serves the admin API and live page (:mod:`geviso.mock.admin`) and
prints ``geviso mock-host admin on http://HOST:PORT``. ``geviso.cli`` registers it.

Exit status: 0 done, 2 a usage or configuration error (a one-line message names the
option), 1 a failure while running (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
from typing import Any, Optional

from .. import framing as framing_mod
from .. import specs
from ..capture import cli as capture_cli
from ..errors import ConfigurationError, GevisoError
from ..options import optional_seconds, seconds
from ..server import bind_reuse_port
from .host import DEFAULT_MAX_ECHO_FAILURES, DEFAULT_READ_TIMEOUT, MockHost, load_rules, summary_line

PROG = "geviso"
LISTENING = "geviso mock-host listening on"
STATS = "geviso mock-host stats:"
ADMIN = "geviso mock-host admin on"
#: Seconds ``mock-host`` gives its links to close after a signal.
STOP_TIMEOUT = 5.0
#: Exit statuses: usage or configuration errors, and failures while running.
EXIT_USAGE, EXIT_FAILURE = 2, 1


def add_parser(commands: Any, *, epilog: Optional[str] = None) -> None:
    """Add ``mock-host`` to the ``geviso`` command's subcommands."""
    mock = commands.add_parser(
        "mock-host",
        help="run a mock card host",
        description="Run a mock ISO 8583 card host that answers by rules.",
        epilog=epilog,
    )
    mock.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    mock.add_argument("--port", type=int, default=8583, help="port; 0 picks a free one (default 8583)")
    mock.add_argument("--framing", default="binary2", choices=sorted(framing_mod.BY_NAME), help="(default binary2)")
    mock.add_argument("--spec", default="default", help="default, default_ascii or package.module:SPEC")
    mock.add_argument("--rules", help="rules file (.json, or .yaml/.yml with PyYAML)")
    mock.add_argument("--response-code", default="00", help="field 39 when no rule says otherwise")
    mock.add_argument("--tls-cert", help="server certificate (PEM): serve TLS")
    mock.add_argument("--tls-key", help="private key of --tls-cert, if not in the same file")
    mock.add_argument("--client-ca", help="CA bundle clients' certificates must chain to (mutual TLS)")
    mock.add_argument("--max-connections", type=int, default=1000, help="links held at once (default 1000)")
    mock.add_argument("--echo-interval", type=float, help="send 0800/301 to every client this often (seconds)")
    mock.add_argument("--echo-timeout", type=float, default=5.0, help="seconds an echo waits for an answer (default 5)")
    mock.add_argument(
        "--max-echo-failures",
        type=int,
        default=DEFAULT_MAX_ECHO_FAILURES,
        help=f"close a link that leaves this many echoes in a row unanswered (default {DEFAULT_MAX_ECHO_FAILURES})",
    )
    mock.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT,
        help=f"close a link that sends nothing for this many seconds; 0 = never (default {DEFAULT_READ_TIMEOUT:g})",
    )
    mock.add_argument("--seed", type=int, help="seed for random delays (repeatable runs)")
    mock.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    mock.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING... (default INFO)")
    mock.add_argument("--admin", metavar="HOST:PORT", help="serve the admin API and live page there (default: off)")
    mock.add_argument("--admin-token", help="token the admin API requires (needed off loopback)")
    mock.add_argument("--journal-size", type=int, default=1000, help="requests the journal keeps (default 1000)")
    capture_cli.add_mock_host_options(mock)
    mock.set_defaults(func=mock_host)


def _configure_logging(level_name: str, worker: Optional[int] = None) -> None:
    level = getattr(logging, level_name.upper(), None)
    if not isinstance(level, int):
        raise ConfigurationError(f"unknown log level {level_name!r}")
    who = f"[worker {worker}] " if worker is not None else ""
    # A forked worker replaces the handlers it inherited from its parent.
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s {who}%(name)s %(levelname)s %(message)s",
        force=worker is not None,
    )
    if level > logging.DEBUG:
        # The server logs one line per link; the links' own open/close lines are noise here.
        logging.getLogger("geviso.connection").setLevel(max(level, logging.WARNING))


def _host_options(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the MockHost needs, checked before anything listens."""
    from .. import tls

    if (args.tls_key or args.client_ca) and not args.tls_cert:
        raise ConfigurationError("--tls-key and --client-ca need --tls-cert")
    if not 0 <= args.port <= 65535:
        raise ConfigurationError(f"--port must be 0..65535 (0 picks a free one); got {args.port}")
    if args.workers < 1:
        raise ConfigurationError("--workers must be at least 1")
    if args.max_connections < 1:
        raise ConfigurationError("--max-connections must be at least 1")
    if args.max_echo_failures < 1:
        raise ConfigurationError("--max-echo-failures must be at least 1")
    echo_interval = optional_seconds(args.echo_interval, "--echo-interval", positive=True)
    echo_timeout = seconds(args.echo_timeout, "--echo-timeout", positive=True)
    read_timeout = seconds(args.read_timeout, "--read-timeout") or None  # 0: never
    if args.journal_size < 0:
        raise ConfigurationError("--journal-size must be 0 or more")
    if args.admin_token is not None and args.admin is None:
        raise ConfigurationError("--admin-token needs --admin")
    if args.admin is not None:
        from .admin import check_exposure

        if args.workers > 1:
            raise ConfigurationError("--admin serves one process; use it with --workers 1")
        check_exposure(args.admin, args.admin_token)
    context = None
    if args.tls_cert:
        files = (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--client-ca", args.client_ca))
        for option, path in files:
            if path is not None and not os.path.isfile(path):
                raise ConfigurationError(f"{option} {path!r}: no such file")
        try:
            context = tls.server_context(certfile=args.tls_cert, keyfile=args.tls_key, client_cafile=args.client_ca)
        except (OSError, ValueError) as exc:
            named = ", ".join(f"{option} {path!r}" for option, path in files if path)
            raise ConfigurationError(f"cannot load the TLS certificate, key or client CA ({named}): {exc}") from exc
    return {
        "spec": specs.by_name(args.spec),
        "framing": framing_mod.by_name(args.framing),
        "rules": load_rules(args.rules) if args.rules else None,
        "tls": context,
        "max_connections": args.max_connections,
        "response_code": args.response_code,
        "echo_interval": echo_interval,
        "echo_timeout": echo_timeout,
        "read_timeout": read_timeout,
        "max_echo_failures": args.max_echo_failures,
        "seed": args.seed,
        "journal_size": args.journal_size,
        **capture_cli.host_options(args),
    }


def mock_host(args: argparse.Namespace) -> int:
    """``geviso mock-host``: serve until SIGINT/SIGTERM, then print the stats line."""
    try:
        _configure_logging(args.log_level)
        options = _host_options(args)
        # Built (not started) here, so a code or rule the spec refuses is a usage error.
        host = MockHost((args.host, args.port), reuse_port=False, **options)
    except ConfigurationError as exc:
        print(f"{PROG} mock-host: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.workers > 1:
        return _run_workers(args, options)
    try:
        host.start()
    except OSError as exc:
        print(f"{PROG} mock-host: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    admin = None
    if args.admin is not None:
        from .admin import AdminServer

        try:
            admin = AdminServer(host, args.admin, token=args.admin_token).start()
        except OSError as exc:
            host.stop(timeout=0)
            print(f"{PROG} mock-host: error: cannot listen on {args.admin} (admin): {exc}", file=sys.stderr)
            return EXIT_FAILURE
    _announce(host.server_host, host.server_port, options)
    if admin is not None:
        print(f"{ADMIN} {admin.url}", flush=True)
    try:
        _serve_until_signal(host)
    finally:
        if admin is not None:
            admin.stop()
    print(f"{STATS} {host.stats.summary()}", flush=True)
    return 0


def _start_host(host: str, port: int, options: dict[str, Any], *, reuse_port: bool) -> MockHost:
    server = MockHost((host, port), reuse_port=reuse_port, **options)
    server.start()
    return server


def _announce(host: str, port: int, options: dict[str, Any], workers: int = 1) -> None:
    context = options["tls"]
    mode = ""
    if context is not None:
        import ssl

        mode = " (mutual TLS)" if context.verify_mode == ssl.CERT_REQUIRED else " (TLS)"
    procs = f" with {workers} workers" if workers > 1 else ""
    shown = f"[{host}]" if ":" in host else host
    print(f"{LISTENING} {shown}:{port}{mode}{procs}", flush=True)


def _serve_until_signal(host: Any) -> None:
    """Block until SIGINT or SIGTERM, then stop the host gracefully."""
    import gevent
    import gevent.event

    stop = gevent.event.Event()
    watchers = [gevent.signal_handler(signum, stop.set) for signum in (signal.SIGINT, signal.SIGTERM)]
    try:
        stop.wait()
    finally:
        for watcher in watchers:
            watcher.cancel()
    logging.getLogger("geviso.mock.host").info("stopping: %d links open", len(host.connections))
    host.stop(timeout=STOP_TIMEOUT)


# -- several processes on one port -----------------------------------------------------------
def _run_workers(args: argparse.Namespace, options: dict[str, Any]) -> int:
    """Fork ``--workers`` processes, each a MockHost on the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    try:
        # Bound but never listening: it fixes the port (for --port 0) and takes no links.
        probe = bind_reuse_port((args.host, args.port), family)
    except (OSError, GevisoError) as exc:
        print(f"{PROG} mock-host: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    port = probe.getsockname()[1]
    sys.stdout.flush()
    sys.stderr.flush()
    children: dict[int, Any] = {}
    for worker in range(1, args.workers + 1):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(read_end)
            probe.close()
            os._exit(_worker(args.host, port, options, worker, write_end, args.log_level))
        os.close(write_end)
        children[pid] = os.fdopen(read_end, "r", encoding="utf-8")

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    ready = 0
    for pipe in children.values():
        if pipe.readline().strip() == "ready":
            ready += 1
    probe.close()
    if ready == len(children):
        _announce(args.host, port, options, args.workers)
    else:
        print(f"{PROG} mock-host: error: {len(children) - ready} workers failed to start", file=sys.stderr)
        forward(signal.SIGTERM, None)
    failed = 0
    for pid in list(children):
        _, status = os.waitpid(pid, 0)
        failed += os.waitstatus_to_exitcode(status) != 0
    totals: dict[str, Any] = {}
    for pipe in children.values():
        for line in pipe:
            if line.startswith("stats "):
                _add_stats(totals, json.loads(line[len("stats ") :]))
        pipe.close()
    if ready != len(children):
        return 1
    print(f"{STATS} {summary_line(totals)}", flush=True)
    return 0 if not failed else 1


def _worker(host: str, port: int, options: dict[str, Any], worker: int, pipe_fd: int, log_level: str) -> int:
    """One forked worker: serve on the shared port until SIGTERM; report on the pipe."""
    import gevent

    gevent.reinit()
    _configure_logging(log_level, worker)
    with os.fdopen(pipe_fd, "w", encoding="utf-8") as pipe:
        try:
            server = _start_host(host, port, options, reuse_port=True)
        except (OSError, GevisoError) as exc:
            print(f"{PROG} mock-host worker {worker}: error: {exc}", file=sys.stderr)
            return 1
        pipe.write("ready\n")
        pipe.flush()
        _serve_until_signal(server)
        pipe.write("stats " + json.dumps(server.stats.as_dict()) + "\n")
    sys.stdout.flush()
    return 0


def _add_stats(totals: dict[str, Any], data: dict[str, Any]) -> None:
    for key, value in data.items():
        if key == "codes":
            codes = totals.setdefault("codes", {})
            for code, n in value.items():
                codes[code] = codes.get(code, 0) + n
        else:
            totals[key] = totals.get(key, 0) + value


__all__ = ["ADMIN", "LISTENING", "STATS", "STOP_TIMEOUT", "add_parser", "mock_host"]
