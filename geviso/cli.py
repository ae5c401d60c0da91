"""The ``geviso`` command: registers its subcommands, each in its own module.

``geviso mock-host`` (:mod:`geviso.mock.cli`), ``geviso saf`` (:mod:`geviso.saf.cli`),
``geviso capture`` and ``geviso replay`` (:mod:`geviso.capture.cli`), and ``geviso
bench`` (:mod:`geviso.bench`, which parses its own options).

Exit status: 0 done, 2 a usage or configuration error (a one-line message names the
option), 1 a failure while running (e.g. the port is taken).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from typing import Optional

from .capture import cli as capture_cli
from .mock import cli as mock_cli
from .mock.cli import mock_host
from .saf import cli as saf_cli

PROG = "geviso"
EPILOG = (
    "exit status: 0 done; 2 a usage or configuration error (bad option, rules file, "
    "TLS file); 1 a failure while running (e.g. the port is taken)"
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand but ``bench`` (which parses its own)."""
    parser = argparse.ArgumentParser(prog=PROG, description="gevent ISO 8583 links: tools.", epilog=EPILOG)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    mock_cli.add_parser(commands, epilog=EPILOG)
    saf_cli.add_parser(commands)
    capture_cli.register(commands)
    if importlib.util.find_spec("geviso.bench") is not None:
        commands.add_parser("bench", help="measure throughput and latency (geviso bench --help)", add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``geviso`` console script and ``python -m geviso``."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "bench":
        return _bench(args_list[1:])
    args = build_parser().parse_args(args_list)
    return int(args.func(args))


def _bench(argv: list[str]) -> int:
    try:
        bench = importlib.import_module("geviso.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "geviso.bench":
            raise
        print(f"{PROG}: bench is not available in this installation", file=sys.stderr)
        return 2
    return int(bench.main(argv) or 0)


__all__ = ["build_parser", "main", "mock_host"]
