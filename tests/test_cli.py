"""``geviso mock-host`` as a real subprocess driven by a geviso client; the ``geviso``
command's dispatch; specs by name."""

from __future__ import annotations

import json
import re
import signal
import sys
import types
from pathlib import Path

import gevent
import gevent.subprocess
import pytest
from iso8583.specs import default as spec
from iso8583.specs import default_ascii

import geviso
from geviso import cli, framing, specs, tls

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "rules.json"
LISTENING = re.compile(r"^geviso mock-host listening on (\S+):(\d+)(.*)$")
STATS = re.compile(r"^geviso mock-host stats: (.*)$", re.M)


class MockHostProcess:
    """``python -m geviso mock-host --port 0 ...`` and the address it printed."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-m", "geviso", "mock-host", "--port", "0", *args]
        self.proc = gevent.subprocess.Popen(
            command, cwd=str(ROOT), stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE, text=True
        )
        with gevent.Timeout(30, AssertionError("mock-host did not announce its address")):
            self.first_line = self.proc.stdout.readline().rstrip("\n")
        self.match = LISTENING.match(self.first_line)
        self.out = ""
        self.err = ""

    @property
    def address(self) -> tuple[str, int]:
        assert self.match, f"unexpected first line {self.first_line!r}"
        return (self.match.group(1), int(self.match.group(2)))

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        self.out, self.err = self.proc.communicate(timeout=30)
        return int(self.proc.returncode)

    def stats(self) -> dict[str, str]:
        found = STATS.search(self.out)
        assert found, f"no stats line in {self.out!r}"
        return dict(item.split("=", 1) for item in found.group(1).split())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def mock_host():
    started: list[MockHostProcess] = []

    def start(*args: str) -> MockHostProcess:
        proc = MockHostProcess(*args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def sale(pan: str = "4111111111111111") -> dict[str, str]:
    return {"t": "0200", "2": pan, "3": "000000", "4": "000000001000", "41": "TERM0001"}


def test_mock_host_serves_until_sigterm_then_prints_its_stats_and_exits_0(mock_host):
    host = mock_host("--rules", str(RULES))
    with geviso.Connection(host.address, spec, send_timeout=5) as conn:
        assert conn.send({"t": "0800", "70": "001"})["39"] == "00"
        for _ in range(3):
            assert conn.send(sale())["39"] == "00"
        assert conn.send(sale("4000000000000051"))["39"] == "51"  # a rule of examples/rules.json
    assert host.stop(signal.SIGTERM) == 0
    stats = host.stats()
    assert stats["received"] == "5" and stats["responded"] == "5" and stats["errors"] == "0"
    assert stats["codes"] == "00:4,51:1"
    assert stats["connections"] == "0" and stats["accepted"] == "1"
    link_lines = [line for line in host.err.splitlines() if "link from" in line]
    assert len(link_lines) == 1, host.err  # one log line per link
    assert "4000000000000051" not in host.err  # no PAN in the logs


def test_sigint_stops_it_too_with_a_link_still_open(mock_host):
    host = mock_host()
    conn = geviso.Connection(host.address, spec, send_timeout=5).connect()
    try:
        assert conn.send(sale())["39"] == "00"
        assert host.stop(signal.SIGINT) == 0
        assert conn.wait_closed(timeout=5)  # closed gracefully by the host
    finally:
        conn.fail("test over")
    assert host.stats()["received"] == "1"


def test_a_bad_rules_file_exits_2_naming_the_rule_and_key_before_listening(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([{"code": "00"}, {"name": "oops", "action": "respond", "delay_ms": "soon"}]))
    proc = gevent.subprocess.run(
        [sys.executable, "-m", "geviso", "mock-host", "--port", "0", "--rules", str(path)],
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "listening" not in proc.stdout
    assert str(path) in proc.stderr and "rules[1]" in proc.stderr and "'delay_ms'" in proc.stderr


def test_mutual_tls_from_the_command_line(mock_host, certs):
    host = mock_host("--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--client-ca", certs.ca)
    assert "(mutual TLS)" in host.first_line
    context = tls.client_context(cafile=certs.ca, certfile=certs.client_cert, keyfile=certs.client_key)
    with geviso.Connection(host.address, spec, tls=context, send_timeout=5) as conn:
        assert conn.send(sale())["39"] == "00"
    assert host.stop() == 0
    assert host.stats()["responded"] == "1"


def test_tls_from_the_command_line(mock_host, certs):
    host = mock_host("--tls-cert", certs.server_cert, "--tls-key", certs.server_key)
    assert host.first_line.endswith("(TLS)")
    with geviso.Connection(host.address, spec, tls=tls.client_context(cafile=certs.ca), send_timeout=5) as conn:
        assert conn.send(sale())["39"] == "00"
    assert host.stop() == 0


def test_framing_and_spec_by_name(mock_host):
    host = mock_host("--framing", "ascii4", "--spec", "default_ascii")
    with geviso.Connection(host.address, default_ascii, framing=framing.ascii(4), send_timeout=5) as conn:
        assert conn.send({"t": "0800", "70": "301"})["t"] == "0810"
    assert host.stop() == 0


def test_workers_share_the_port(mock_host):
    host = mock_host("--workers", "2")
    assert "with 2 workers" in host.first_line
    links = [geviso.Connection(host.address, spec, send_timeout=5).connect() for _ in range(6)]
    try:
        for conn in links:
            assert conn.send(sale())["39"] == "00"
    finally:
        for conn in links:
            conn.close()
    assert host.stop() == 0
    stats = host.stats()
    assert stats["received"] == "6" and stats["accepted"] == "6" and stats["codes"] == "00:6"


# -- in process: dispatch, help, errors ------------------------------------------------------------
def test_geviso_bench_is_dispatched_to_geviso_bench_main(monkeypatch):
    calls: list[list[str]] = []
    fake = types.ModuleType("geviso.bench")
    fake.main = lambda argv: calls.append(list(argv)) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "geviso.bench", fake)
    assert cli.main(["bench", "--json", "--messages", "10"]) == 7
    assert calls == [["--json", "--messages", "10"]]


def test_geviso_bench_without_the_module_says_so(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "geviso.bench", None)
    assert cli.main(["bench"]) == 2
    assert "bench is not available" in capsys.readouterr().err


def test_help_lists_mock_host_and_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["mock-host", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--framing", "--spec", "--rules", "--tls-cert", "--tls-key", "--client-ca",
                   "--workers"):
        assert option in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--tls-key", "k.pem"], "need --tls-cert"),
        (["--spec", "nosuch"], "unknown spec"),
        (["--workers", "0"], "--workers"),
        (["--rules", "/nonexistent/rules.json"], "cannot read it"),
        (["--tls-cert", "/nonexistent/cert.pem"], "--tls-cert '/nonexistent/cert.pem': no such file"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args, words, capsys):
    assert cli.main(["mock-host", "--port", "0", *args]) == 2
    assert words in capsys.readouterr().err


def test_specs_by_name():
    assert specs.by_name("default") is spec
    assert specs.by_name("default_ascii") is default_ascii
    assert specs.by_name("iso8583.specs:default") is spec
    for bad, words in [
        ("nosuch", "unknown spec"),
        ("nosuch.module:SPEC", "cannot import"),
        ("iso8583.specs:missing", "has no"),
        ("iso8583:__name__", "not a pyiso8583 spec"),
    ]:
        with pytest.raises(geviso.ConfigurationError, match=words):
            specs.by_name(bad)
