"""Plain mistakes on the ``geviso`` command line: one line naming the problem, no
traceback, exit 2 for a usage or configuration error and 1 for a failure while running.
Every subcommand the README shows is covered."""

from __future__ import annotations

import os
import socket

import pytest

from geviso import cli

USAGE, FAILURE = 2, 1


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["mock-host", "--port", "0", "--admin", "127.0.0.1:99999"], USAGE, "the port must be 0..65535"),
        (["mock-host", "--port", "0", "--proxy-to", "127.0.0.1:70000"], USAGE, "the port must be 0..65535"),
        (["mock-host", "--port", "0", "--rules", "no-such-rules.json"], USAGE, "no-such-rules.json"),
        (["mock-host", "--port", "0", "--spec", "no_such_spec"], USAGE, "unknown spec 'no_such_spec'"),
        (["mock-host", "--port", "0", "--log-level", "LOUD"], USAGE, "unknown log level 'LOUD'"),
        (["mock-host", "--port", "0", "--playback", "no-such.cap"], USAGE, "no-such.cap"),
        (["capture", "show", "no-such.cap"], USAGE, "no-such.cap"),
        (["replay", "no-such.cap", "--host", "127.0.0.1:1"], USAGE, "no-such.cap"),
        (["bench", "--workload", "nope"], USAGE, "unknown workload 'nope'"),
        (["bench", "--concurrency", "0"], USAGE, "--concurrency"),
        (["bench", "--messages", "0"], USAGE, "--messages must be positive"),
        (["bench", "--spec", "no_such_spec"], USAGE, "unknown spec 'no_such_spec'"),
        (["bench", "--host", "no-port-here"], USAGE, "is not host:port"),
        (["bench", "--host", "127.0.0.1:99999"], USAGE, "the port must be 0..65535"),
    ],
)
def test_a_plain_mistake_is_one_line_and_its_exit_status(args, status, words, capsys):
    assert cli.main(args) == status
    captured = capsys.readouterr()
    assert words in one_line(captured.err)
    assert not captured.out  # nothing half-started (no bench header, no listening line)


def test_a_bench_host_that_refuses_is_a_runtime_failure_in_one_line(capsys):
    with socket.socket() as closed:  # a loopback port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    args = ["bench", "--workload", "burst", "--messages", "10", "--host", f"127.0.0.1:{port}", "--json"]
    assert cli.main(args) == FAILURE
    assert "connect to 127.0.0.1" in one_line(capsys.readouterr().err)


def test_a_mock_host_port_already_taken_is_a_runtime_failure(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["mock-host", "--port", str(port)]) == FAILURE
    assert f"cannot listen on 127.0.0.1:{port}" in one_line(capsys.readouterr().err)


def test_saf_commands_never_create_a_store_from_a_typo(tmp_path, capsys):
    missing = tmp_path / "typo.db"
    for args in (["list"], ["show", "1"], ["retry", "--all"], ["purge", "--all"]):
        assert cli.main(["saf", args[0], "--store", str(missing), *args[1:]]) == USAGE
        assert f"store {missing}: no such file" in one_line(capsys.readouterr().err)
    assert not os.path.exists(missing)


def test_argparse_mistakes_exit_2_with_usage_not_a_traceback(capsys):
    for args in (["nope"], ["mock-host", "--port", "abc"], ["mock-host", "--framing", "binary3"], ["saf", "show"]):
        with pytest.raises(SystemExit) as info:
            cli.main(args)
        assert info.value.code == USAGE
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error:" in err


def test_a_bad_locust_option_is_one_line_and_exit_2():
    """The README's Locust run with a typo'd host: refused before the run, not logged
    with a traceback and run anyway."""
    import subprocess
    import sys
    from pathlib import Path

    locust = Path(sys.executable).with_name("locust")
    root = Path(__file__).resolve().parent.parent
    args = [str(locust), "-f", "loadtests", "--headless", "-u", "1", "-r", "1", "-t", "1s", "--host", "no-port-here"]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert "locust: error: address 'no-port-here' is not host:port\n" in done.stderr  # after Locust's banner


@pytest.mark.parametrize(("name", "value"), [("iso_max_p99_ms", -5.0), ("iso_max_failure_ratio", 2.0)])
def test_a_locust_threshold_that_cannot_be_met_is_refused_before_the_run(name, value):
    from argparse import Namespace

    from locust.env import Environment
    from locust.event import Events

    import geviso
    import geviso.locust as gl

    class User(gl.ISO8583User):
        abstract = False

    env = Environment(user_classes=[User], events=Events(), parsed_options=Namespace(**{name: value}), host="tcp://h:1")
    with pytest.raises(geviso.ConfigurationError, match="--" + name.replace("_", "-")):
        gl._on_init(env, env.create_local_runner())
