"""Faults of the result storage: each gives one line that names the real cause (only a file SQLite
reports as malformed is called corrupt), destroys nothing, and never shows a password."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import sqlalchemy.exc
from typer.testing import CliRunner

from deepdescent.cli import app
from deepdescent.lab import protocol, storage

TINY = ["--problem", "saddle", "--optimizer", "Adam", "--budget", "2", "--seeds", "1", "--no-report"]
HAS_PSYCOPG = importlib.util.find_spec("psycopg") is not None


def _bench(tmp_path, storage: str):
    result = CliRunner().invoke(app, ["bench", *TINY, "--storage", storage, "--out", str(tmp_path / "run")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result, lines


def _valid_sqlite(path) -> bytes:
    storage.open_study(f"sqlite:///{path}", "some-study")  # a real results file: Optuna's schema, one study
    return path.read_bytes()


@pytest.mark.parametrize("case", ["not a URL", "no driver or no server", "missing folder", "not SQLite",
                                  "truncated", "disk full"])
def test_each_storage_fault_gives_one_line_naming_its_cause(case, tmp_path, monkeypatch):
    kept = None
    if case == "not a URL":
        storage, cause = "not-a-url", "not a database URL"
    elif case == "no driver or no server":
        storage = "postgresql+psycopg://someone:s3cret@127.0.0.1:1/db"
        cause = "cannot be reached" if HAS_PSYCOPG else "driver for postgresql+psycopg is not installed"
    elif case == "missing folder":
        storage, cause = f"sqlite:///{tmp_path}/nowhere/results.db", "nowhere' does not exist"
    elif case == "not SQLite":
        (tmp_path / "x.db").write_bytes(b"this is not a database" * 100)
        storage, cause, kept = f"sqlite:///{tmp_path}/x.db", "not an SQLite database", tmp_path / "x.db"
    elif case == "truncated":
        whole = _valid_sqlite(tmp_path / "whole.db")
        (tmp_path / "x.db").write_bytes(whole[:5000])
        storage, cause, kept = f"sqlite:///{tmp_path}/x.db", "is corrupt (SQLite reports it malformed)", tmp_path / "x.db"
    else:
        import optuna

        def full(*args, **kwargs):
            raise sqlalchemy.exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database or disk is full"))
        monkeypatch.setattr(optuna, "create_study", full)
        storage, cause = f"sqlite:///{tmp_path}/results.db", "the disk is full"
    before = kept.read_bytes() if kept else None
    result, lines = _bench(tmp_path, storage)
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert cause in lines[0] and "s3cret" not in result.output
    if case != "truncated":
        assert "corrupt" not in lines[0]  # only what SQLite calls malformed is called corrupt
    if kept:
        assert kept.read_bytes() == before  # nothing written to the file
    assert not (tmp_path / "run" / "meta.json").exists()  # written only once the storage opened


def test_a_refused_login_and_a_missing_database_are_named_as_such(tmp_path):
    """A real PostgreSQL server that wants a password: a wrong one, none, and a database that does
    not exist each end the bench at once with one line saying so — not "cannot be reached"."""
    from pg_server import PostgresServer

    server = PostgresServer(password="right")
    try:
        cases = {server.url.replace(":right@", ":wrong@"): "refused the login",
                 server.url.replace(":right@", "@"): "refused the login",
                 server.url.replace("/postgres?", "/nosuchdb?"): "database named in the URL does not exist"}
        for url, cause in cases.items():
            start = time.monotonic()
            result, lines = _bench(tmp_path, url)
            assert result.exit_code == 1 and len(lines) == 1, result.output
            assert cause in lines[0] and "cannot be reached" not in lines[0] and "right" not in lines[0], lines[0]
            assert time.monotonic() - start < 30  # not waited out as an outage
    finally:
        server.remove()


def test_random_bytes_inside_a_finished_runs_database_give_one_line(tmp_path):
    """Random bytes over the second half of a finished run's results.db (its header intact): `bench`
    (resuming) and `report` each end with one line naming the corruption; the file is left as it is."""
    import random

    out = tmp_path / "run"
    assert CliRunner().invoke(app, ["bench", *TINY, "--out", str(out)]).exit_code == 0
    db = out / "results.db"
    data = bytearray(db.read_bytes())
    at = len(data) // 2 // 4096 * 4096  # from a page boundary on
    data[at:] = random.Random(0).randbytes(len(data) - at)
    db.write_bytes(bytes(data))
    for args in (["bench", *TINY, "--out", str(out)], ["report", str(out)]):
        result = CliRunner().invoke(app, args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert "the SQLite file is corrupt" in lines[0] and "Traceback" not in result.output, result.output
        assert db.read_bytes() == bytes(data)


def test_a_failing_storage_never_overwrites_a_finished_runs_metadata(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"finished": True}))
    result = CliRunner().invoke(app, ["bench", *TINY, "--storage", "not-a-url", "--out", str(out)])
    assert result.exit_code == 1
    assert json.loads((out / "meta.json").read_text()) == {"finished": True}


def test_a_bench_whose_every_race_fails_leaves_the_last_finished_run_as_it_was(tmp_path):
    """A finished run, then a bench in the same folder whose only optimizer raises (and another that
    stops mid-race): meta.json still describes the finished run, and `report` still reports it."""
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, ["bench", *TINY, "--out", str(out)]).exit_code == 0
    finished = (out / "meta.json").read_text()
    env = {"PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parent), *sys.path])}
    result = runner.invoke(app, ["bench", "--problem", "saddle", "--optimizer", "user_optim:Raises", "--lr-center",
                                 "0.02", "--budget", "2", "--seeds", "1", "--out", str(out)], env=env)
    assert result.exit_code == 1 and "no race finished" in result.output, result.output
    assert (out / "meta.json").read_text() == finished
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").exists(), report.output


@pytest.mark.parametrize("url", ["postgresql+psycopg://someone:s3cret@db.example:5432/results",
                                 "postgresql+psycopg://someone@db.example/results?password=s3cret&sslmode=require",
                                 "postgresql+psycopg://someone@db.example/results?sslpassword=s3cret",
                                 "postgresql+psycopg://someone:s3cret@db.example/results?PWD=s3cret"])
def test_passwords_are_hidden_and_the_report_asks_for_them(tmp_path, url):
    """Every credential form SQLAlchemy accepts is hidden: in the URL's user info and as a query
    parameter (libpq's password, sslpassword…); the report then asks for the URL."""
    assert "s3cret" not in storage.redact(url) and "someone" in storage.redact(url)
    out = tmp_path / "run"
    out.mkdir()
    (out / "meta.json").write_text(json.dumps({"protocol": protocol.Protocol().tag(), "problems": [], "optimizers": [],
                                               "storage": storage.redact(url)}))
    result = CliRunner().invoke(app, ["report", str(out)])
    assert result.exit_code != 0 and "--storage" in result.output and "s3cret" not in result.output


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_workers_die_with_a_killed_bench_at_once(tmp_path):
    """kill -9 of `bench` while its workers are still starting (importing torch): they end within
    two seconds, not after their imports."""
    cmd = [sys.executable, "-m", "deepdescent.cli", "bench", "--problem", "saddle", "--problem", "cliff",
           "--optimizer", "Adam", "--budget", "2", "--seeds", "1", "--workers", "2", "--no-report",
           "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and proc.poll() is None and len(workers) < 2:
        workers = [c for c in _children(proc.pid) if "spawn_main" in open(f"/proc/{c}/cmdline").read()]
        time.sleep(0.02)
    assert len(workers) == 2, "the workers did not start"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.time() + 2.0
    while time.time() < end and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers)


def test_a_claim_from_another_pid_namespace_with_this_hostname_is_judged_by_its_heartbeat():
    """Two containers (PID namespaces) may share a hostname: a claim written in another namespace,
    whose PID names no process here, is alive while its heartbeat is; one written in this namespace
    by a process that is gone is taken over at once; an old-style owner (host:pid) is judged by
    its heartbeat alone."""
    import socket
    import time

    from deepdescent.lab import claims

    host, now, gone = socket.gethostname(), time.time(), 2 ** 22 + 12345  # above any PID in use here
    elsewhere = {"owner": f"{host}:0123456789ab:{gone}:feedbeef", "beat": now}
    assert claims.owner_alive(elsewhere, "a")
    assert not claims.owner_alive({**elsewhere, "beat": now - 2 * claims.TIMEOUT}, "a")
    here = {"owner": f"{host}:{claims._namespace()}:{gone}:feedbeef", "beat": now}
    assert not claims.owner_alive(here, "b") and claims._namespace() != ""
    mine = {"owner": claims._me(), "beat": now}
    assert claims.owner_alive(mine, "c")
    assert claims.owner_alive({"owner": f"{host}:{gone}", "beat": now}, "d")


@pytest.mark.parametrize("value", ["abc", "nan", "-5", "0"])
def test_a_bad_claim_timeout_is_refused_before_anything_runs(value, tmp_path, monkeypatch):
    monkeypatch.setenv("DEEPDESCENT_CLAIM_TIMEOUT", value)
    result = CliRunner().invoke(app, ["bench", "--problem", "saddle", "--optimizer", "Adam", "--out",
                                      str(tmp_path / "r")], terminal_width=200)
    flat = " ".join(result.output.replace("│", " ").split())
    assert result.exit_code == 2 and "DEEPDESCENT_CLAIM_TIMEOUT" in flat and repr(value) in flat


def test_a_worker_killed_mid_race_is_replaced_and_a_raising_optimizer_is_left_out(tmp_path):
    """kill -9 of a worker during a race (`--workers 2`): the bench runs that race again in another
    worker and finishes; a foreign optimizer that raises is left out with one line, the others go on."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parent), *sys.path]),
           "DEEPDESCENT_TEST_KILLED": str(tmp_path / "killed")}
    cmd = [sys.executable, "-m", "deepdescent.cli", "bench", "--problem", "saddle", "--optimizer", "Adam",
           "--optimizer", "user_optim:KilledOnce", "--optimizer", "user_optim:Raises", "--lr-center", "0.02",
           "--budget", "2", "--seeds", "1", "--workers", "2", "--no-report", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "killed").exists()  # a worker was killed
    text = " ".join(done.stdout.split())
    assert "KilledOnce" in text and "died; running it again" in text
    assert "user_optim:Raises" in text and "this optimizer is broken; left out" in text
    assert "Traceback" not in done.stdout + done.stderr
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert "2 of 3 races already stored" in " ".join(again.stdout.split())  # each stored once, the failed one retried
