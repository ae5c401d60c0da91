"""`make test-all`: the test suite on every supported CPython found on this machine.

An interpreter is found as ``pythonX.Y`` on PATH, or under pyenv's versions folder.
A supported version that is not found is skipped with a line saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")
PYENV_ROOT = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))

nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True  # every version listed below was found


def _works(python: str) -> bool:
    """True when ``python`` runs (a pyenv shim for an inactive version does not)."""
    try:
        return subprocess.run([python, "-c", ""], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _find(version: str) -> str | None:
    """The folder holding a working ``pythonX.Y``, or None."""
    name = f"python{version}"
    on_path = shutil.which(name)
    if on_path and _works(on_path):
        return os.path.dirname(on_path)
    for folder in sorted(glob.glob(os.path.join(PYENV_ROOT, "versions", f"{version}.*", "bin")), reverse=True):
        if _works(os.path.join(folder, name)):
            return folder
    return None


FOUND = []
for _version in SUPPORTED:
    _folder = _find(_version)
    if _folder is None:
        print(f"test-all: skipping Python {_version}: no python{_version} on PATH or under {PYENV_ROOT}/versions")
        continue
    FOUND.append(_version)
    os.environ["PATH"] = _folder + os.pathsep + os.environ.get("PATH", "")


@nox.session(python=FOUND)
def tests(session: nox.Session) -> None:
    """The suite as `make test` runs it (lint aside), on one interpreter."""
    session.install("-q", "-e", ".[test,load]")
    session.run("python", "-m", "pytest", "-q", "-m", "not slow", "tests", *session.posargs)
