"""Every example runs for real, as a user would run it, in bounded time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
    assert "100 approved" in out


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
