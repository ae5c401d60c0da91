"""A throwaway PostgreSQL server for the tests: ``initdb`` and ``pg_ctl`` in a temporary
directory, on a free loopback port, stopped at the end of the session.

PostgreSQL refuses to run as root: as root, the server runs as the unprivileged user
``nobody`` (through ``runuser``). Where ``initdb`` is not installed the tests that need
the server are skipped with a line saying so.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from typing import Optional

import pytest

USER = "nobody"
_names = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One server; :meth:`new_database` gives each test a database of its own."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="geviso-pg-")
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        self._as = ["runuser", "-u", USER, "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, user=USER)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50"
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-o", options, "-w", "start")

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as, *command], check=True, capture_output=True, timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"saf_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def missing() -> Optional[str]:
    """Why no server can be started here, or None."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if shutil.which(tool) is None:
            return f"PostgreSQL is not installed ({tool} is not on PATH)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser: cannot start PostgreSQL as an unprivileged user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install geviso[postgres])"
    return None


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    why = missing()
    if why is not None:
        print(f"\nskipping the PostgreSQL store tests: {why}")
        pytest.skip(why)
    server = PostgresServer()
    yield server
    server.stop()
