"""Every code block of README.md and docs/ works as written.

- ``python`` blocks run: the blocks of one page run in order in one fresh interpreter
  (a later block may use what an earlier one defined), each against the mock hosts the
  page itself starts on loopback.
- ``sh`` blocks run command by command from the repository root, with ``.venv/bin/``
  meaning this interpreter's environment.
- ``json`` blocks parse; a list is a mock host rules file and must compile.

A block that cannot run alone (it needs a remote host, runs for minutes, or installs
packages) follows the line ``<!-- docs-test: skip REASON -->``. Its shell commands are
still checked: every ``make`` target exists, every repository path exists, and every
``--option`` of ``geviso`` or ``locust`` is one the command accepts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

import geviso.mock.rules

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b(.*?)-->")
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)
BIN = Path(sys.executable).parent
PAGE_TIMEOUT = 90


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with their skip marker if any."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        marker = SKIP.search(before[-1]) if before else None
        indent = match.group("indent")
        code = "\n".join(line[len(indent):] for line in match.group("body").splitlines())
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, line, match.group("lang"), code, marker.group(1).strip() if marker else None))
    return found


ALL = [block for page in PAGES for block in blocks_of(page)]


def test_every_block_has_a_known_language_and_skips_say_why():
    assert ALL, "no code blocks found"
    for block in ALL:
        assert block.lang in ("python", "sh", "json", "text", "toml", "yaml"), f"{block.where}: ```{block.lang}"
        assert block.skip is None or block.skip, f"{block.where}: a skip marker says why"


# -- python -----------------------------------------------------------------------------
DRIVER = """
import json, sys
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for where, code in blocks:
    exec(compile(code, where, "exec"), namespace)
"""

PYTHON_PAGES = sorted({b.page for b in ALL if b.lang == "python" and b.skip is None})


def run_python_page(page: Path) -> subprocess.CompletedProcess[str]:
    blocks = [[b.where, b.code] for b in blocks_of(page) if b.lang == "python" and b.skip is None]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-c", DRIVER], input=json.dumps(blocks), cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=PAGE_TIMEOUT,
    )


@pytest.fixture(scope="module")
def python_runs() -> dict[Path, subprocess.CompletedProcess[str]]:
    """Each page's python blocks, run two pages at a time (one per core)."""
    with ThreadPoolExecutor(max_workers=2) as workers:
        return dict(zip(PYTHON_PAGES, workers.map(run_python_page, PYTHON_PAGES)))


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, python_runs):
    done = python_runs[page]
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in without_shutdown_noise(done.stderr), done.stderr


def without_shutdown_noise(stderr: str) -> str:
    """stderr less what the interpreter prints while it shuts down ("Exception ignored
    in ..." and its traceback: e.g. logging's handler cleanup under Locust's monkey
    patching on some Pythons), which no page's code can cause or prevent."""
    kept, skipping = [], False
    for line in stderr.splitlines():
        if line.startswith("Exception ignored in"):
            skipping = True
            continue
        if skipping and (line.startswith(("Traceback", " ")) or re.match(r"^\w+(Error|Exception): ", line)):
            continue
        skipping = False
        kept.append(line)
    return "\n".join(kept)


# -- shell ------------------------------------------------------------------------------
def commands_of(block: Block) -> list[str]:
    """The commands of a shell block: comments dropped, continuation lines joined."""
    commands, current = [], ""
    for raw in block.code.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            commands.append(current.strip())
        current = ""
    return commands


SHELL = [b for b in ALL if b.lang == "sh"]


@cache
def help_text(*command: str) -> str:
    done = subprocess.run([*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@cache
def iso_options_help() -> str:
    """The help of the ``--iso-*`` options geviso.locust adds to Locust's command line."""
    code = (
        "import argparse, geviso.locust as m, geviso.capture.locust as r; p = argparse.ArgumentParser(); "
        "m._add_options(p); r._add_options(p); p.print_help()"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w-]+):", text, re.M))


def check_command(command: str, where: str) -> None:
    """Static checks for one command line (run or not)."""
    for part in re.split(r"&&|\|\||;|\|", command):
        words = shlex.split(part)
        while words and re.match(r"^\w+=", words[0]):
            words.pop(0)  # VAR=value prefixes
        if not words:
            continue
        program = os.path.basename(words[0])
        if program == "make":
            for target in (w for w in words[1:] if not w.startswith("-") and "=" not in w):
                assert target in makefile_targets(), f"{where}: no make target {target!r}"
        for word in words[1:]:
            path = word.split("=", 1)[-1]
            if re.match(r"^(examples|loadtests|docs|geviso|tests)/", path):
                assert (ROOT / path).exists() or "*" in path, f"{where}: {path} does not exist"
        options = [w.split("=", 1)[0] for w in words if w.startswith("--")]
        if program == "geviso" and len(words) > 1 and not words[1].startswith("-"):
            text = help_text(str(BIN / "geviso"), words[1])
            # saf ACTION, capture ACTION: the action has options of its own
            if len(words) > 2 and re.match(r"^[a-z][\w-]*$", words[2]) and words[1] in ("saf", "capture"):
                text += help_text(str(BIN / "geviso"), words[1], words[2])
        elif program == "locust":
            text = help_text(str(BIN / "locust")) + iso_options_help()
        else:
            continue
        for option in options:
            assert re.search(re.escape(option) + r"\b", text), f"{where}: {program} has no option {option}"


@pytest.mark.parametrize("block", SHELL, ids=lambda b: b.where)
def test_shell_block_names_real_targets_paths_and_options(block):
    for command in commands_of(block):
        check_command(command, block.where)


@pytest.mark.parametrize("block", [b for b in SHELL if b.skip is None], ids=lambda b: b.where)
def test_shell_block_runs(block):
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", PYTHONUNBUFFERED="1")
    for command in commands_of(block):
        local = command.replace(".venv/bin/", f"{BIN}/")
        done = subprocess.run(["bash", "-c", local], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=PAGE_TIMEOUT)
        assert done.returncode == 0, f"{block.where}: {command}\nexit {done.returncode}\n{done.stdout}\n{done.stderr}"


# -- json -------------------------------------------------------------------------------
@pytest.mark.parametrize("block", [b for b in ALL if b.lang == "json"], ids=lambda b: b.where)
def test_json_block_parses_and_rules_compile(block):
    data = json.loads(block.code)
    if isinstance(data, list):
        geviso.mock.rules.parse(data, source=block.where)


def test_versions_named_in_the_docs_are_the_package_version():
    import geviso

    for page in PAGES:
        for version in re.findall(r"geviso-(\d+\.\d+\.\d+)", page.read_text(encoding="utf-8")):
            assert version == geviso.__version__, f"{page.relative_to(ROOT)} names geviso {version}"


# -- links ------------------------------------------------------------------------------
def test_relative_links_point_at_files_that_exist():
    broken = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
