"""Packaging check: build the sdist and wheel, `twine check` them, install the wheel with
its extras into a fresh virtual environment, and run the quickstart, `geviso --help` and
each extra's import from there (outside the checkout, so only the wheel's files count).

Run: `make package` (what CI runs). Exits non-zero on the first failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"


def run(*cmd: str, cwd: Path = ROOT) -> str:
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def main() -> None:
    shutil.rmtree(DIST, ignore_errors=True)
    run(sys.executable, "-m", "build", "--outdir", str(DIST), ".")
    wheels, sdists = glob.glob(str(DIST / "*.whl")), glob.glob(str(DIST / "*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        sys.exit(f"expected one wheel and one sdist in dist/, got {os.listdir(DIST)}")
    run(sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists)

    # Every file of the package in the repository is in the wheel (py.typed, data files).
    tracked = run("git", "ls-files", "geviso").split()
    in_wheel = set(zipfile.ZipFile(wheels[0]).namelist())
    missing = [f for f in tracked if f not in in_wheel]
    if missing:
        sys.exit(f"the wheel lacks {missing}")

    with tempfile.TemporaryDirectory(prefix="geviso-wheel-") as tmp:
        venv = Path(tmp) / "venv"
        run(sys.executable, "-m", "venv", str(venv))
        python, bindir = str(venv / "bin" / "python"), venv / "bin"
        run(python, "-m", "pip", "install", "-q", f"{wheels[0]}[load,prometheus,yaml]")
        out = run(python, str(ROOT / "examples" / "quickstart.py"), cwd=Path(tmp))
        if "echo answered: mti=0810 code=00" not in out:
            sys.exit(f"the quickstart said:\n{out}")
        run(str(bindir / "geviso"), "--help", cwd=Path(tmp))
        run(str(bindir / "geviso"), "mock-host", "--help", cwd=Path(tmp))
        checks = (
            "import importlib.resources as r, geviso; assert (r.files('geviso') / 'py.typed').is_file();"
            "assert geviso.__file__.startswith(%r)" % str(venv),
            "import geviso.locust",  # [load]
            "import geviso.metrics.prometheus",  # [prometheus]
            "import geviso.mock.rules as r; assert len(r.loads('- {code: \"05\"}', fmt='yaml')) == 1",  # [yaml]
        )
        for code in checks:
            run(python, "-c", code, cwd=Path(tmp))
        version = run(python, "-c", "import geviso; print(geviso.__version__)", cwd=Path(tmp)).strip()
    print(f"package check passed: geviso {version}, {Path(wheels[0]).name} and {Path(sdists[0]).name}")


if __name__ == "__main__":
    main()
