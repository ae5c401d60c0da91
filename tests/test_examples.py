"""Every example runs for real, as a user would run it, in bounded time."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import gevent
import gevent.subprocess
from iso8583.specs import default as spec

import geviso

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run(*args: str, timeout: float = 60) -> str:
    """Run a Python script from the repository root; return its output, check exit 0."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_quickstart():
    out = run("examples/quickstart.py")
    assert "echo answered: mti=0810 code=00" in out
    found = re.search(r"(\d+) concurrent sends on one link: (\d+) answered, (\d+) matched", out)
    assert found and found.group(1) == found.group(2) == found.group(3)


def test_readme_quickstart_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "README has no python block under Quickstart"
    assert len(code.group(1).strip().splitlines()) <= 20
    script = tmp_path / "readme_quickstart.py"
    script.write_text(code.group(1), encoding="utf-8")
    out = run(str(script))
    assert "0810 00" in out
    assert "100 approved, each matched: True" in out


def test_tls_client_with_mutual_tls():
    out = run("examples/tls_client.py")
    assert "client certificates required" in out
    assert "sign-on over TLS: mti=0810" in out and "code=00" in out
    assert "purchase: mti=0210" in out
    assert "pan=411111******1111" in out and "4111111111111111" not in out


def test_tracing_example_records_a_span_per_send():
    out = run("examples/tracing.py")
    assert out.splitlines()[0].startswith("4 spans")
    spans = [line.split() for line in out.splitlines()[1:]]
    assert [s[1] for s in spans] == ["0800", "0200", "0200", "0100"]
    outcomes = [next(part for part in s if part.startswith(("code=", "error="))) for s in spans]
    assert outcomes == ["code=00", "code=00", "code=51", "error=SendTimeout"]
    assert "4111111111111111" not in out


def test_sign_on_pool_fails_over_and_back():
    out = run("examples/sign_on_pool.py")
    assert "pool up: 2 signed-on links" in out
    assert "primary answered 10 of 10 (host saw 10)" in out
    assert "primary gone: degraded=True, up=True" in out
    assert "failover: secondary answered 10 of 10 (host saw 10)" in out
    assert "failback: primary answered 10 of 10 (host saw 10)" in out
    assert "matched=33 timeouts=0 reconnects=1" in out  # 3 sign-ons + 30 purchases
    assert "carried 12 messages" in out  # sign-on, 10 purchases, sign-off


def test_greenlet_service_switches_and_stops_cleanly_on_sigterm():
    rules = [
        {"name": "slow", "match": {"amount_above": 700, "amount_below": 800}, "delay_ms": 400},
        {"name": "decline", "match": {"amount_above": 100000}, "code": "51"},
    ]
    upstream = geviso.MockHost(("127.0.0.1", 0), spec, rules=rules)
    upstream.start()
    proc = gevent.subprocess.Popen(
        [sys.executable, "examples/greenlet_service.py", "--upstream", "127.0.0.1:%d" % upstream.address[1],
         "--report-every", "0.2"],
        cwd=ROOT, stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE, text=True,
    )
    try:
        with gevent.Timeout(20):
            first = proc.stdout.readline()
        port = int(re.search(r"switch listening on 127\.0\.0\.1:(\d+)", first).group(1))
        terminals = [geviso.Connection(("127.0.0.1", port), spec, send_timeout=10).connect() for _ in range(2)]
        # Network management is answered by the switch itself.
        assert terminals[0].send({"t": "0800", "70": "301"})["t"] == "0810"
        # Both terminals use the same STANs; the switch keeps them apart upstream.
        amounts = [1 + 3 * i for i in range(50)] + [200000 + i for i in range(10)]
        jobs = [
            (terminal, amount, gevent.spawn(terminal.send, {"t": "0200", "2": "4111111111111111",
                                                             "3": "000000", "4": "%012d" % amount}))
            for terminal in terminals for amount in amounts
        ]
        gevent.joinall([job for _, _, job in jobs], timeout=30, raise_error=True)
        for _, amount, job in jobs:
            assert job.value["t"] == "0210" and job.value["4"] == "%012d" % amount
            assert job.value["39"] == ("51" if amount > 100000 else "00")
        with gevent.Timeout(10):  # the service's own reporting greenlet runs beside geviso's
            while "forwarded=%d" % (2 * len(amounts)) not in proc.stdout.readline():
                pass
        # A request still upstream when SIGTERM arrives gets its answer before the exit.
        slow = gevent.spawn(terminals[1].send, {"t": "0200", "3": "000000", "4": "%012d" % 750})
        received = upstream.stats.received
        with gevent.Timeout(10):
            while upstream.stats.received == received:
                gevent.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        assert slow.get(timeout=10)["39"] == "00"
        with gevent.Timeout(15):
            out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        upstream.stop()
    assert proc.returncode == 0, err
    assert out.rstrip().splitlines()[-1] == (
        f"switch stopped: terminals=0 forwarded={2 * len(amounts) + 1} answered={2 * len(amounts) + 1} "
        "failed=0 upstream_usable=0"
    )
    assert all(t.wait_closed(5) for t in terminals)  # the switch closed the terminals' links


def test_every_public_name_has_a_docstring():
    import importlib
    import inspect
    import pkgutil

    missing = []
    for info in pkgutil.walk_packages(geviso.__path__, "geviso."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        if not inspect.getdoc(module):
            missing.append(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if obj.__module__ != module.__name__:
                continue  # imported, documented where it is defined
            if not (obj.__doc__ or "").strip():
                missing.append(f"{info.name}.{name}")
            if not inspect.isclass(obj):
                continue
            for attr, member in vars(obj).items():
                function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                if attr.startswith("_") or not inspect.isfunction(function) or (function.__doc__ or "").strip():
                    continue
                inherited = any(getattr(getattr(base, attr, None), "__doc__", None) for base in obj.__mro__[1:])
                if not inherited:
                    missing.append(f"{info.name}.{name}.{attr}")
    assert missing == []
