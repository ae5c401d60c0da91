"""The capture commands as real processes: ``geviso mock-host --proxy-to ... --record``,
``--playback``, ``geviso replay``, ``geviso capture show|stats``, and their bad input."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import gevent.subprocess
from iso8583.specs import default as spec
from test_capture import DECLINED_PAN, PAN, RULES, traffic
from test_cli import ROOT, mock_host  # noqa: F401 - the fixture

import geviso
from geviso import capture, cli


def geviso_cli(*args: str, timeout: float = 60) -> gevent.subprocess.CompletedProcess:
    return gevent.subprocess.run([sys.executable, "-m", "geviso", *args], cwd=str(ROOT), capture_output=True,
                                 text=True, timeout=timeout)


def one_error_line(proc: gevent.subprocess.CompletedProcess, code: int, text: str) -> None:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert text in proc.stderr, proc.stderr


def test_record_play_back_and_replay_from_the_command_line(mock_host, tmp_path: Path) -> None:  # noqa: F811
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(RULES))
    path = tmp_path / "capture.jsonl"
    real = mock_host("--rules", str(rules))
    recorder = mock_host("--proxy-to", "%s:%d" % real.address, "--record", str(path))
    with geviso.Connection(recorder.address, spec, send_timeout=5) as conn:
        codes = [conn.send(doc)["39"] for doc in traffic()]
    assert codes[:4] == ["00", "51", "05", "00"]
    assert recorder.stop() == 0 and real.stop() == 0
    assert recorder.stats()["responded"] == str(len(codes))
    text = path.read_text()
    assert PAN not in text and DECLINED_PAN not in text
    assert stat.S_IMODE(os.stat(path).st_mode) != 0o600  # masked: an ordinary file

    player = mock_host("--playback", str(path), "--match", "2,3,4,41")
    replayed = geviso_cli("replay", str(path), "--host", "%s:%d" % player.address, "--speed", "max",
                          "--concurrency", "4", "--compare", "38")
    assert replayed.returncode == 0, (replayed.stdout, replayed.stderr)
    assert f"0 of {len(codes)} answers differ" in replayed.stdout
    as_json = geviso_cli("replay", str(path), "--host", "%s:%d" % player.address, "--speed", "max", "--json",
                         "--processes", "2")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and data["sent"] == len(codes) and data["diff"]["differ"] == 0
    assert player.stop() == 0

    shown = geviso_cli("capture", "show", str(path))
    assert shown.returncode == 0 and PAN not in shown.stdout and "411111******1111" in shown.stdout
    assert len(shown.stdout.splitlines()) == len(codes) + 1
    full = geviso_cli("capture", "show", str(path), "--full", "--limit", "2")
    assert len(full.stdout.splitlines()) == 3 and '"52": "[redacted]"' in full.stdout
    stats = json.loads(geviso_cli("capture", "stats", str(path), "--json").stdout)
    assert stats["exchanges"] == len(codes) and stats["codes"]["51"] == 3 and stats["mtis"]["0800"] == 1
    assert stats["latency_ms"]["p50"] is not None


def test_record_card_data_warns_and_makes_a_private_file(mock_host, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "capture.jsonl"
    real = mock_host()
    recorder = mock_host("--proxy-to", "%s:%d" % real.address, "--record", str(path), "--record-card-data")
    with geviso.Connection(recorder.address, spec, send_timeout=5) as conn:
        conn.send(traffic()[0])
    assert recorder.stop() == 0
    assert "warning" in recorder.err and "card data" in recorder.err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert capture.read(path)[1][0].request["2"] == PAN


def test_bad_input_exits_with_one_clear_line(tmp_path: Path, capsys: Any) -> None:
    newer = tmp_path / "newer.jsonl"
    newer.write_text('{"format": "geviso-capture", "version": 9}\n')
    one_error_line(geviso_cli("replay", str(newer), "--host", "127.0.0.1:1"), 2, "upgrade geviso")
    one_error_line(geviso_cli("mock-host", "--port", "0", "--playback", str(newer)), 2, "version 9")
    good = tmp_path / "good.jsonl"
    with capture.CaptureWriter(good, capture.Header()) as writer:
        writer.write(capture.Exchange(time=1.0, request={"t": "0800", "70": "301"}))
    one_error_line(geviso_cli("replay", str(good), "--host", "127.0.0.1:1"), 1, "ConnectFailed")
    for argv, code, text in [  # the same commands in this process (a subprocess each is slow)
        (["capture", "show", str(newer)], 2, "version 9 capture"),
        (["capture", "stats", str(tmp_path / "none.jsonl")], 2, "cannot read it"),
        (["mock-host", "--port", "0", "--record", str(newer)], 2, "--record needs --proxy-to"),
        (["replay", str(good), "--host", "127.0.0.1:1", "--speed", "0"], 2, "speed"),
    ]:
        assert cli.main(argv) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and text in err and "Traceback" not in err, err
