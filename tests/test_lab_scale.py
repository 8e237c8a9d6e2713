"""Many processes on one study: three `deepdescent bench` processes (two workers each) on one
storage — SQLite under one --out, and a throw-away PostgreSQL server — one of them killed with -9
mid-run and started again. The finished study holds every member exactly once, with the values of
a single-process run, and no claim is left behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from deepdescent.lab import claims, protocol, search, storage, study
from pg_server import PostgresServer

ARGS = ["--problem", "saddle", "--problem", "cliff", "--optimizer", "Adam",
        "--optimizer", "L-BFGS", "--budget", "3", "--seeds", "2", "--no-report"]


def _members(url: str, prefix: str = "") -> dict[tuple[str, float, int], float]:
    optuna = storage.load_optuna()
    out: dict[tuple[str, float, int], float] = {}
    for name in storage.study_names(url):
        assert not name.startswith(claims.PREFIX), f"a claim was left behind: {name}"
        if not name.startswith(prefix):
            continue
        s = optuna.load_study(study_name=name, storage=storage.connect(url))
        for t in s.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            key = (name, t.params["lr"], t.params["seed"])
            assert key not in out, f"member stored twice: {key}"
            out[key] = t.value
    return out


def _bench(*extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deepdescent.cli", "bench", *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _race_three(url: str, outs: list[str], storage: list[str]) -> None:
    env = {**os.environ, "DEEPDESCENT_CLAIM_TIMEOUT": "5"}
    procs = [_bench("--workers", "2", "--out", out, *storage, env=env) for out in outs]
    deadline = time.time() + 300
    while time.time() < deadline and len(_stored_now(url)) < 2:
        time.sleep(0.2)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    procs[0] = _bench("--workers", "2", "--out", outs[0], *storage, env=env)
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output


def _stored_now(url: str) -> list:
    try:
        return [n for n in storage.study_names(url) if not n.startswith(claims.PREFIX) and "/grid/" in n]
    except storage.StorageError:
        return []


@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    p = _bench("--workers", "1", "--out", str(out))
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output
    return _members(f"sqlite:///{out / 'results.db'}")


@pytest.mark.slow
def test_three_processes_on_one_sqlite_run_directory(single_process, tmp_path):
    out = str(tmp_path / "run")
    _race_three(f"sqlite:///{tmp_path / 'run' / 'results.db'}", [out] * 3, [])
    assert _members(f"sqlite:///{tmp_path / 'run' / 'results.db'}") == single_process


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.remove()


@pytest.mark.slow
def test_three_processes_on_one_postgresql_study(single_process, postgres, tmp_path):
    outs = [str(tmp_path / f"machine{i}") for i in range(3)]  # as if on three machines: one URL, own folders
    _race_three(postgres, outs, ["--storage", postgres])
    assert _members(postgres) == single_process


def _wait_for_a_race(url: str, proc: subprocess.Popen) -> None:
    """Until the bench has opened its first race's study (it is mid-race from then on)."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _stored_now(url):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[0]


@pytest.mark.slow
def test_a_database_outage_is_waited_out_and_a_lasting_one_ends_the_bench_in_one_line(single_process, tmp_path):
    """The PostgreSQL server stops mid-bench (ending every connection, as a restart or failover does)
    and comes back 5 s later: the bench waits and goes on. Then it stops for good: after
    DEEPDESCENT_STORAGE_PATIENCE (8 s here) the bench ends with exit status 1 and one error line
    naming the outage and the resume command. Once the server is back, that command finishes the
    race: every member stored once, with the values of a single process on SQLite."""
    server = PostgresServer()
    env = {**os.environ, "DEEPDESCENT_STORAGE_PATIENCE": "8"}
    args = ["--workers", "2", "--out", str(tmp_path / "run"), "--storage", server.url]
    try:
        proc = _bench(*args, env=env)
        _wait_for_a_race(server.url, proc)
        server.stop()
        time.sleep(5)
        server.start()
        deadline = time.time() + 300  # the bench goes on: wait until it stores a race after the outage
        while time.time() < deadline and proc.poll() is None and len(_finished_races(server.url)) < 1:
            time.sleep(0.2)
        server.stop()
        output, _ = proc.communicate(timeout=600)
        flat = " ".join(output.split())
        assert "cannot be reached" in flat and "is back after" in flat, output  # the short outage was waited out
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert proc.returncode == 1 and len(errors) == 1, output
        assert "cannot be reached (for 8 s, DEEPDESCENT_STORAGE_PATIENCE)" in errors[0], output
        assert "resume with: deepdescent bench" in errors[0] and "Traceback" not in output, output
        server.start()
        again = _bench(*args, env=env)
        output, _ = again.communicate(timeout=600)
        assert again.returncode == 0, output
        assert _members(server.url) == single_process
    finally:
        server.remove()


def _finished_races(url: str) -> list[str]:
    """The tracks that hold a completed trial."""
    try:
        optuna = storage.load_optuna()
        return [n for n in storage.study_names(url) if not n.startswith(claims.PREFIX) and optuna.load_study(
            study_name=n, storage=storage.connect(url)).get_trials(deepcopy=False,
                                                                 states=(optuna.trial.TrialState.COMPLETE,))]
    except storage.StorageError:
        return []


def test_a_lapsed_claim_of_another_machine_is_taken_over(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    optuna = storage.load_optuna()
    monkeypatch.setattr(claims, "TIMEOUT", 5.0)
    other = optuna.create_study(study_name=f"{claims.PREFIX}batch:g0", storage=storage.connect(url))
    other.set_user_attr("owner", "another-machine:4242")
    other.set_user_attr("beat", time.time())
    with pytest.raises(claims.Busy):  # alive: its heartbeat is fresh
        with claims.claimed(url, "batch"):
            pass
    other.set_user_attr("beat", time.time() - 6)  # its heartbeat lapsed: the machine died
    with claims.claimed(url, "batch"):
        names = storage.study_names(url)
        assert f"{claims.PREFIX}batch:g1" in names and f"{claims.PREFIX}batch:g0" not in names
    assert not [n for n in storage.study_names(url) if n.startswith(claims.PREFIX)]


def test_a_claim_created_beside_a_live_generation_gives_way(tmp_path, monkeypatch):
    """A process that listed the claims before another's generation appeared creates generation 0
    beside a live generation 1: it must see that one after creating its own, and give way."""
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    optuna = storage.load_optuna()
    other = optuna.create_study(study_name=f"{claims.PREFIX}batch:g1", storage=storage.connect(url))
    other.set_user_attr("owner", "another-machine:4242")
    other.set_user_attr("beat", time.time())
    names, calls = storage.study_names, []

    def listed_too_early(u):
        calls.append(u)
        return [] if len(calls) == 1 else names(u)
    monkeypatch.setattr(storage, "study_names", listed_too_early)
    with pytest.raises(claims.Busy):
        with claims.claimed(url, "batch"):
            pass
    assert [n for n in names(url) if n.startswith(claims.PREFIX)] == [f"{claims.PREFIX}batch:g1"]


def test_sweep_deletes_only_the_claims_of_processes_that_are_gone(tmp_path):
    """A process killed after recording its batch, before deleting its claim, leaves a claim nobody
    takes over: the sweep at the end of bench deletes it (and one whose heartbeat lapsed), never a
    live one (this process's, or another machine's with a fresh heartbeat)."""
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    optuna = storage.load_optuna()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owners = {"killed": (f"{socket.gethostname()}:{claims._namespace()}:{dead.pid}:0", time.time()),
              "lapsed": ("another-machine:1", time.time() - 10 * claims.TIMEOUT),
              "remote": ("another-machine:2", time.time())}
    for key, (owner, beat) in owners.items():
        c = optuna.create_study(study_name=f"{claims.PREFIX}{key}:g0", storage=storage.connect(url))
        c.set_user_attr("owner", owner)
        c.set_user_attr("beat", beat)
    with claims.claimed(url, "mine"):
        swept = claims.sweep(url)
        left = sorted(n for n in storage.study_names(url) if n.startswith(claims.PREFIX))
    assert sorted(swept) == [f"{claims.PREFIX}killed:g0", f"{claims.PREFIX}lapsed:g0"]
    assert left == [f"{claims.PREFIX}mine:g0", f"{claims.PREFIX}remote:g0"]


def test_a_sampled_search_resumes_a_dead_processs_proposal_under_its_own_trial(tmp_path):
    """kill -9 during a --search qmc proposal left a RUNNING trial, and one without a learning rate
    (killed inside ``ask``): the resumed search trains that proposal under the same trial, marks the
    empty one failed (no trial stays RUNNING) and proposes exactly the learning rates of an
    uninterrupted search."""
    from deepdescent.lab import optimizers, problems

    proto = protocol.Protocol(budget=3, seeds=1, search="qmc")
    problem, spec = problems.problem("saddle"), optimizers.optimizer("Adam")
    whole = f"sqlite:///{tmp_path / 'whole.db'}"
    study.run_race(problem, spec, proto, whole)
    expected = sorted(t.params["lr"] for t in _trials(whole))

    killed = f"sqlite:///{tmp_path / 'killed.db'}"
    optuna = storage.load_optuna()
    s = storage.open_study(killed, f"saddle/Adam/qmc/{proto.tag()}")
    _, trial_id, _ = search._propose(s, spec, proto, killed)  # the dead process's proposal
    s.ask()  # and one it was making when it died: no lr yet
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.connect(killed).set_trial_user_attr(  # its owner's process is gone: taken over at once
        trial_id, "owner", f"{socket.gethostname()}:{claims._namespace()}:{dead.stdout.strip()}:0")
    study.run_race(problem, spec, proto, killed)
    trials = _trials(killed, every=True)
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL] + \
        [optuna.trial.TrialState.COMPLETE] * 2
    assert sorted(t.params["lr"] for t in trials if t.params) == expected


def _trials(url: str, every: bool = False):
    optuna = storage.load_optuna()
    name = next(n for n in storage.study_names(url) if "/qmc/" in n or "/tpe/" in n)
    states = None if every else (optuna.trial.TrialState.COMPLETE,)
    return optuna.load_study(study_name=name, storage=storage.connect(url)).get_trials(deepcopy=False, states=states)


QMC_ARGS = ["--problem", "saddle", "--optimizer", "Adam", "--budget", "4", "--seeds", "2", "--search", "qmc",
            "--no-report"]


def _proposals(url: str) -> dict[float, float]:
    """lr → value of the sampled search's trials; every proposal exactly once, none left RUNNING."""
    optuna = storage.load_optuna()
    every = _trials(url, every=True)
    assert all(t.state == optuna.trial.TrialState.FAIL for t in every if not t.params)  # killed inside ``ask``
    trials = [t for t in every if t.params]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [t.state for t in trials]
    lrs = [t.params["lr"] for t in trials]
    assert len(set(lrs)) == len(lrs), f"a learning rate was proposed twice: {sorted(lrs)}"
    return {t.params["lr"]: t.value for t in trials}


@pytest.mark.slow
def test_three_processes_share_one_qmc_search(tmp_path):
    """Three `bench --search qmc` processes on one --out, the first killed with -9 after the first
    proposal is stored and started again: the search holds the single-process run's proposals and
    values, each exactly once."""
    def bench(out):
        return subprocess.Popen([sys.executable, "-m", "deepdescent.cli", "bench", *QMC_ARGS, "--out", out],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "DEEPDESCENT_CLAIM_TIMEOUT": "5"})

    single = bench(str(tmp_path / "single"))
    output, _ = single.communicate(timeout=600)
    assert single.returncode == 0, output
    url = f"sqlite:///{tmp_path / 'run' / 'results.db'}"
    procs = [bench(str(tmp_path / "run")) for _ in range(3)]
    deadline = time.time() + 300
    while time.time() < deadline and not _completed_now(url):
        time.sleep(0.1)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    procs[0] = bench(str(tmp_path / "run"))
    for p in procs:
        output, _ = p.communicate(timeout=600)
        assert p.returncode == 0, output
    expected = _proposals(f"sqlite:///{tmp_path / 'single' / 'results.db'}")
    assert len(expected) == 4
    assert _proposals(url) == expected


def _completed_now(url: str) -> bool:
    try:
        return bool(_trials(url))
    except (storage.StorageError, StopIteration):
        return False


@pytest.mark.parametrize("search", ["qmc", "tpe"])
def test_concurrent_proposers_never_share_a_proposal(tmp_path, monkeypatch, search):
    """Three threads race one sampled search while the storage is slow to write (so that proposals
    made at once would overlap: QMC's place in its sequence and the random start-up draws): each
    learning rate is proposed and trained once; QMC's are a single process's."""
    import threading

    from deepdescent.lab import optimizers, problems

    optuna = storage.load_optuna()
    proto = protocol.Protocol(budget=4, seeds=1, search=search)
    problem, spec = problems.problem("saddle"), optimizers.optimizer("Adam")
    alone = f"sqlite:///{tmp_path / 'alone.db'}"
    study.run_race(problem, spec, proto, alone)

    slow_write = optuna.storages.RDBStorage.set_study_system_attr

    def set_study_system_attr(self, *args):
        time.sleep(0.3)
        return slow_write(self, *args)
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_study_system_attr", set_study_system_attr)
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    study.run_race(problem, spec, protocol.Protocol(budget=1, seeds=1, search="grid"), shared)  # the schema exists
    start, errors = threading.Barrier(3), []

    def race():
        start.wait()
        try:
            study.run_race(problem, spec, proto, shared)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)
    threads = [threading.Thread(target=race) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    got = _proposals(shared)
    assert len(got) == 4
    if search == "qmc":
        assert got == _proposals(alone)


WORKLOAD = ["--problem", "user_workloads:blobs", "--optimizer", "Adam", "--optimizer", "SGD", "--budget", "3",
            "--seeds", "2", "--workers", "1", "--no-report"]


def _workload_bench(*extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    return subprocess.Popen([sys.executable, "-m", "deepdescent.cli", "bench", *WORKLOAD, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_your_own_workload_resumes_after_kill_9_with_nothing_lost_or_repeated(backend, postgres, tmp_path):
    """A user's workload (import path) killed with -9 once it has stored some members, then run
    again: every member stored exactly once, with the values of an uninterrupted run."""
    whole = tmp_path / "whole"
    p = _workload_bench("--out", str(whole))
    output, _ = p.communicate(timeout=600)
    assert p.returncode == 0, output
    expected = _members(f"sqlite:///{whole / 'results.db'}")
    out = tmp_path / "run"
    url = postgres if backend == "postgresql" else f"sqlite:///{out / 'results.db'}"
    storage_args = ["--storage", postgres] if backend == "postgresql" else []
    proc = _workload_bench("--out", str(out), *storage_args)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _stored_members(url) < 3:
        time.sleep(0.1)
    assert proc.poll() is None, "the bench finished before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _stored_members(url) < len(expected)  # killed mid-run
    again = _workload_bench("--out", str(out), *storage_args)
    output, _ = again.communicate(timeout=600)
    assert again.returncode == 0, output
    assert _members(url, "user_workloads:blobs/") == expected


def _stored_members(url: str) -> int:
    """Complete trials of the workload's studies so far (0 while the storage is not there yet)."""
    optuna = storage.load_optuna()
    try:
        return sum(len(optuna.load_study(study_name=n, storage=storage.connect(url)).get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
            for n in storage.study_names(url) if n.startswith("user_workloads:blobs/"))
    except Exception:  # noqa: BLE001 - the database is being created
        return 0
