"""geviso bench: a tiny run of each workload works and every response matches its request.

No speed is asserted here (that is what the benchmark prints); only that each workload
runs end to end, against real hosts on loopback, and accounts for every message.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest

from geviso import bench, specs


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    status = bench.main(["--json", *argv])
    report = json.loads(capsys.readouterr().out)
    assert status == 0 and report["ok"] is True
    return report


def check_all_matched(results: list[dict], workload: str, runs: int) -> None:
    mine = [r for r in results if r["workload"] == workload]
    assert len(mine) == runs
    for r in mine:
        assert r["messages"] > 0 and r["matched"] == r["messages"] and r["failed"] == 0
        assert r["msg_per_s"] > 0 and r["p99_us"] >= r["p50_us"] > 0


def test_burst_runs_each_size_back_to_back_to_as_many_sends_and_matches_every_answer(capsys):
    report = run_json(capsys, "--workload", "burst", "--messages", "1000")
    labels = ["burst 100", "greenlets 100", "burst 1,000", "greenlets 1,000"]
    assert [r["label"] for r in report["results"]] == labels  # each burst, then its harness alone
    assert [r["bursts"] for r in report["results"]] == [10, 10, 1, 1]  # 10 bursts of 100 = 1 of 1,000
    assert all(r["messages"] == 1000 for r in report["results"])
    sends = [r for r in report["results"] if r["label"].startswith("burst ")]
    check_all_matched(sends, "burst", 2)
    assert all(r["in_flight_after"] == 0 for r in sends)
    assert all(r["msg_per_s"] > 0 and 0 <= r["gc_seconds"] < r["seconds"] for r in report["results"])


def test_collector_counts_the_time_and_full_collections_of_the_gc_inside_it():
    with bench._Collector() as collector:
        gc.collect(0)
        gc.collect()
    gc.collect()  # after: not counted
    assert collector.full == 1 and collector.seconds > 0
    assert gc.callbacks.count(collector._track) == 0


def test_summary_tells_geviso_apart_from_the_gc_and_the_greenlet_per_send_harness_in_a_burst():
    def run(label: str, seconds: float, gc_seconds: float) -> bench.Result:
        return bench.Result("burst", label, 100_000, seconds, [0.001], 100_000, gc_seconds=gc_seconds, gc_full=1)

    lines = bench.summary([run("burst 1,000", 2.0, 0.1), run("greenlets 1,000", 1.0, 0.1),
                           run("burst 100,000", 2.5, 0.4), run("greenlets 100,000", 1.4, 0.3)])
    assert lines[0].endswith("1.25 x 100 x the 1,000 burst's time")
    assert not any("target" in line for line in lines)  # figures, no verdicts
    # outside the GC: (2.5 - 0.4) / (2.0 - 0.1) = 1.11
    assert lines[1] == ("burst 100,000 less the cyclic GC's collections (16% of its time, 5% of the 1,000 "
                        "bursts'): 1.11 x")
    # (2.5 - 1.4) / (2.0 - 1.0) = 1.10; the greenlets alone 1.4 / 1.0 = 1.40
    assert lines[2].endswith("itself 1.40 x): geviso's part 1.10 x")


def test_closed_loop_runs_against_a_mock_host_process(capsys):
    report = run_json(capsys, "--workload", "closed-loop", "--messages", "200", "--concurrency", "1,10")
    check_all_matched(report["results"], "closed-loop", 2)
    assert [r["concurrency"] for r in report["results"]] == [1, 10]


def test_links_carries_the_same_senders_over_one_link_and_over_many_and_compares_the_cost(capsys):
    report = run_json(capsys, "--workload", "links", "--links", "1,20", "--senders", "40", "--messages", "400")
    check_all_matched(report["results"], "links", 2)
    assert [(r["links"], r["concurrency"]) for r in report["results"]] == [(1, 40), (20, 40)]
    assert all(r["in_flight_after"] == 0 for r in report["results"])
    (line,) = [line for line in report["summary"] if line.startswith("links:")]
    assert line.startswith("links: 20 links / 1 link at C=40: ") and "the 2 x target" in line


def test_codec_times_both_messages_compiled_and_pyiso8583(capsys):
    report = run_json(capsys, "--workload", "codec", "--messages", "200")
    labels = {r["label"] for r in report["results"]}
    for op in ("encode", "decode"):
        for message in ("0800/11", "0200/15"):
            assert {f"{op} {message} compiled", f"{op} {message} pyiso8583"} <= labels


def test_transport_echo_baseline_matches_every_frame_and_is_compared(capsys):
    report = run_json(capsys, "--workload", "transport,closed-loop,codec", "--messages", "200",
                      "--concurrency", "10")
    check_all_matched(report["results"], "transport", 2)  # the bare client, then a geviso client
    assert [r["label"] for r in report["results"] if r["workload"] == "transport"] == [
        "C=10 bare client", "C=10 geviso client"]
    assert any(line.startswith("connection overhead C=10") for line in report["summary"])
    assert any(line.startswith("whole stack C=10") for line in report["summary"])


def test_memory_workload_leaves_nothing_pending():
    result = bench.run_memory(specs.by_name("default"), "binary2", 10_500)
    assert result.ok and result.messages == 10_500
    assert result.extra["after_all"]["pending"] == 0 and result.extra["after_all"]["queued"] == 0


def test_repeat_reports_the_best_run_and_text_output_has_a_table(capsys):
    assert bench.main(["--workload", "codec", "--messages", "100", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    assert "msg/s" in out and "encode 0200/15 compiled" in out


def test_geviso_bench_command_dispatches_here():
    done = subprocess.run([sys.executable, "-m", "geviso", "bench", "--workload", "codec", "--messages", "100",
                           "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] is True


def test_bad_options_are_refused_with_exit_status_2(capsys):
    assert bench.main(["--workload", "nope"]) == 2
    assert bench.main(["--concurrency", "0"]) == 2
    assert capsys.readouterr().err.count("geviso bench: error: ") == 2


def test_replay_replays_a_capture_at_full_speed_and_compares_it_with_closed_loop(capsys):
    report = run_json(capsys, "--workload", "closed-loop,replay", "--messages", "300", "--concurrency", "5")
    check_all_matched(report["results"], "replay", 1)
    (replayed,) = [r for r in report["results"] if r["workload"] == "replay"]
    assert replayed["differ"] == 0 and replayed["messages"] == 300
    assert any(line.startswith("replay --speed max C=5: ") and "of closed-loop's" in line for line in report["summary"])


def test_saf_workload_reports_puts_forwards_and_the_sends_beside_it(capsys):
    report = run_json(capsys, "--workload", "saf", "--messages", "300", "--concurrency", "10")
    rows = {r["label"]: r for r in report["results"] if r["workload"] == "saf"}
    assert set(rows) == {
        "durable puts C=10",
        "forwards window=64",
        "sends alone C=10",
        "sends beside SAF 1000/s C=10",
        "put to acknowledgement at 1000/s",
        "hub stalls alone",
        "hub stalls beside SAF 1000/s",
    }
    assert rows["durable puts C=10"]["matched"] == 300 and rows["durable puts C=10"]["cpu_us_per_msg"] > 0
    assert rows["forwards window=64"]["matched"] == 300 and rows["forwards window=64"]["failed"] == 0
    assert rows["put to acknowledgement at 1000/s"]["messages"] > 0
    assert len(rows["sends beside SAF 1000/s C=10"]["p99_rounds_us"]) == 3
    for label in ("hub stalls alone", "hub stalls beside SAF 1000/s"):  # the ticker woke, and was timed
        assert rows[label]["messages"] > 0 and len(rows[label]["longest_rounds_us"]) == 3
    assert any(line.startswith("longest hub stall beside SAF at 1000/s: ") for line in report["summary"])


def test_moov_workload_bursts_against_the_mock_host_and_a_server_handler_and_matches_every_answer(capsys):
    report = run_json(capsys, "--workload", "moov", "--messages", "300")
    assert [r["label"] for r in report["results"]] == ["moov 300 mock", "moov 300 server"]
    check_all_matched(report["results"], "moov", 2)


FAKE_MOOV = """import sys
assert sys.argv[1:5] == ["-test.run", "xxx", "-test.bench", "BenchmarkProcess(300)$"], sys.argv
print("goos: linux")
print("BenchmarkProcess300-2   \\t       1\\t  30000000 ns/op")
print("PASS")
"""


def test_compare_moov_runs_the_binary_and_the_workload_in_turn_and_prints_each_ratio(tmp_path, capsys):
    binary = tmp_path / "conn.test"
    binary.write_text(f"#!{sys.executable}\n{FAKE_MOOV}")
    binary.chmod(0o755)
    status = bench.main(["--compare-moov", str(binary), "--messages", "300", "--rounds", "2", "--moov-host", "server"])
    out = capsys.readouterr().out
    assert status == 0
    assert out.count("moov    10,000 msg/s") == 2  # 300 messages in 30 ms, each round
    assert "median of 2 rounds: burst 300 server" in out


def test_compare_moov_with_a_binary_that_gives_no_figure_says_so_and_exits_1(tmp_path, capsys):
    binary = tmp_path / "conn.test"
    binary.write_text("#!/bin/sh\necho FAIL\nexit 1\n")
    binary.chmod(0o755)
    assert bench.main(["--compare-moov", str(binary), "--messages", "300", "--rounds", "1"]) == 1
    assert "gave no BenchmarkProcess300 figure (status 1)" in capsys.readouterr().err


def test_gc_freeze_holds_for_the_run_and_puts_the_gc_settings_back(capsys, monkeypatch):
    seen = []
    measure = bench.command.run_codec

    def codec_seeing_gc(*args):
        seen.append((gc.get_threshold()[0], gc.get_freeze_count() > 0))
        return measure(*args)

    monkeypatch.setattr(bench.command, "run_codec", codec_seeing_gc)
    before = gc.get_threshold()
    run_json(capsys, "--workload", "codec", "--messages", "100", "--gc-freeze")
    assert seen == [(50_000, True)]
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_codec_instructions_script_runs_each_operation_it_counts():
    """benchmarks/codec_instructions.py's counted part (valgrind itself is not run here)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "codec_instructions.py"
    loader = importlib.util.spec_from_file_location("codec_instructions", path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    for operation in module.OPERATIONS:
        for reference in (False, True):
            module.run_calls(operation, "default", reference, 5)
