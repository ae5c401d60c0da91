"""``locust -f loadtests/replay.py --iso-replay capture.jsonl`` for real: two worker
processes share the capture, the embedded mock host plays it back, the diff is summed
over the workers and the run ends by itself once the capture is replayed."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from test_capture import PAN, RULES, hosts, record  # noqa: F401 - the fixture
from test_cli import ROOT, mock_host  # noqa: F401 - the fixture

BIN = Path(sys.executable).parent
DIFF = re.compile(r"geviso replay diff: (\d+) of (\d+) answers differ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locust(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LOCUST_SKIP_MONKEY_PATCH"}
    port = str(free_port())
    cmd = [str(BIN / "locust"), "-f", "loadtests/replay.py", "--headless", "-t", "40s", "--json",
           "--master-port", port, "--master-bind-port", port, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def arrays(text: str) -> list[Any]:
    decoder, found, pos = json.JSONDecoder(), [], 0
    while (start := text.find("[", pos)) >= 0:
        try:
            value, pos = decoder.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        found.append(value)
    return found


def test_processes_share_the_capture_and_the_embedded_host_plays_it_back(hosts: Any, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "c.jsonl"
    count = len(record(hosts, path))
    proc = locust("--processes", "2", "-u", "4", "-r", "4", "--iso-replay", str(path), "--iso-replay-speed", "max")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = {e["name"]: e for e in max(arrays(proc.stdout), key=len)}
    replayed = {name: e for name, e in stats.items() if name.endswith(" replay")}
    assert set(replayed) == {"0100 replay", "0200 replay", "0400 replay", "0800 replay"}
    assert sum(e["num_requests"] for e in replayed.values()) == count
    assert sum(e["num_failures"] for e in replayed.values()) == 0
    assert proc.stderr.count("recorded exchanges (share") == 2
    diff = DIFF.search(proc.stderr)
    assert diff and diff.groups() == ("0", str(count)), proc.stderr[-3000:]
    assert PAN not in proc.stderr and PAN not in proc.stdout


def test_a_replay_against_another_host_reports_the_differences(hosts: Any, mock_host: Any,  # noqa: F811
                                                               tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    count = len(record(hosts, path))
    other = mock_host()  # approves everything
    proc = locust("-u", "2", "-r", "2", "--host", "tcp://%s:%d" % other.address, "--iso-replay", str(path),
                  "--iso-replay-speed", "max")
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = DIFF.search(proc.stderr)
    assert diff and diff.groups() == ("6", str(count)), proc.stderr[-3000:]
    assert "39 recorded 51 got 00" in proc.stderr and "400000******0051" in proc.stderr
    assert "4000000000000051" not in proc.stderr
