"""Instructions per encode and decode, counted by valgrind's callgrind.

Wall-clock codec figures move with the machine's load; instruction counts do not. Each
operation runs in a fresh process under ``valgrind --tool=callgrind`` twice, with a
small and a large number of calls, and the difference divided by the extra calls is
the cost of one call (start-up and warm-up cancel out). ``PYTHONHASHSEED=0`` makes the
counts repeat exactly. Needs valgrind on the PATH.

    python benchmarks/codec_instructions.py [--spec default] [--calls 20000] [--pyiso8583]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from typing import Any, Callable

#: As in ``geviso bench --workload codec``: a decode reads the answer to that request.
OPERATIONS = ("encode 0800/11", "decode 0800/11", "encode 0200/15", "decode 0200/15")


def run_calls(operation: str, spec_name: str, reference: bool, calls: int) -> None:
    """Run ``operation`` ``calls`` times (after a warm-up that makes the specialised code)."""
    from geviso.bench.common import REQUEST_0200, REQUEST_0800, answer_of
    from geviso.codec import Codec, codec_for
    from geviso.specs import by_name

    spec = by_name(spec_name)
    codec = Codec(spec) if reference else codec_for(spec)
    verb, message = operation.split()
    request = REQUEST_0200 if message == "0200/15" else REQUEST_0800
    call: Callable[[Any], Any] = codec.encode if verb == "encode" else codec.decode
    arg: Any = request if verb == "encode" else codec.encode(answer_of(request))
    for _ in range(3 + calls):
        call(arg)


def count(operation: str, spec_name: str, reference: bool, calls: int) -> int:
    """Instructions of one whole process running ``operation`` ``calls`` times."""
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
               "--run", operation, "--spec", spec_name, "--calls", str(calls)]
    if reference:
        command.append("--pyiso8583")
    done = subprocess.run(command, env=dict(os.environ, PYTHONHASHSEED="0"), capture_output=True, text=True,
                          check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count in callgrind's output:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="default", help="spec name (default: default)")
    parser.add_argument("--calls", type=int, default=20_000, help="extra calls counted (default 20,000)")
    parser.add_argument("--pyiso8583", action="store_true", help="count plain pyiso8583 (Codec) instead")
    parser.add_argument("--run", choices=OPERATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_calls(args.run, args.spec, args.pyiso8583, args.calls)
        return
    for operation in OPERATIONS:
        small = count(operation, args.spec, args.pyiso8583, 1_000)
        large = count(operation, args.spec, args.pyiso8583, 1_000 + args.calls)
        print(f"{operation}: {(large - small) / args.calls:,.0f} instructions per call", flush=True)


if __name__ == "__main__":
    main()
