"""A throw-away PostgreSQL server for the tests: initialized in a temporary folder, run as the
`postgres` user (the server refuses to run as root), reached over a Unix socket in that folder;
``stop()`` and ``start()`` simulate an outage, ``remove()`` ends it."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


class PostgresServer:
    def __init__(self, password: str | None = None) -> None:
        pytest.importorskip("psycopg", reason="psycopg (the PostgreSQL driver) is not installed")
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found or shutil.which("runuser") is None:
            pytest.skip("PostgreSQL's server binaries (Debian package postgresql) or runuser are not here")
        if os.geteuid() != 0 and os.environ.get("USER") != "postgres":
            pytest.skip("starting a PostgreSQL server needs root (to run it as `postgres`) or the postgres user")
        self.bindir = os.path.dirname(found[-1])
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.folder = tempfile.mkdtemp(prefix="deepdescent-pg-", dir="/tmp")
        os.chmod(self.folder, 0o777)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = os.path.join(self.folder, "data")
        auth = ["-A", "trust"]
        if password is not None:  # logins need it
            with open(os.path.join(self.folder, "pw"), "w") as f:
                f.write(password)
            os.chmod(os.path.join(self.folder, "pw"), 0o644)
            auth = ["-A", "scram-sha-256", f"--pwfile={self.folder}/pw"]
        self._run(f"{self.bindir}/initdb", "-D", self.data, *auth, "-U", "postgres")
        login = "postgres" if password is None else f"postgres:{password}"
        self.url = f"postgresql+psycopg://{login}@/postgres?host={self.folder}&port={self.port}"
        self.start()

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_postgres, *cmd], check=True, capture_output=True, text=True)

    def start(self) -> None:
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-l", os.path.join(self.folder, "log"), "-w",
                  "-o", f"-k {self.folder} -p {self.port} -c listen_addresses='' -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: the server ends every connection (what a restart or failover does to clients)."""
        self._run(f"{self.bindir}/pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def remove(self) -> None:
        subprocess.run([*self.as_postgres, f"{self.bindir}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)
