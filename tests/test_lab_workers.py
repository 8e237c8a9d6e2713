"""The bench's worker processes (deepdescent.lab.workers): a worker that dies, busy or idle, costs
its own job at most; exceptions come back whole or by name; leaving the pool ends every worker."""

from __future__ import annotations

import os
import signal
import time

import pytest

from deepdescent.lab.workers import Raised, Workers, error_name


class TwoArgs(Exception):
    """Pickles, but does not unpickle (its __init__ wants two arguments; args holds one)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def job(spec: tuple) -> object:
    kind, value = spec
    if kind == "square":
        return value * value
    if kind == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "exit":
        os._exit(3)
    if kind == "raise":
        raise ValueError(value)
    if kind == "two-args":
        raise TwoArgs("left", "right")
    if kind == "sleep":
        time.sleep(value)
        return os.getpid()
    raise AssertionError(kind)


def _drain(pool: Workers, seconds: float = 120.0) -> list:
    """Every outcome until nothing is pending; fails (instead of hanging) after ``seconds``."""
    got, deadline = [], time.monotonic() + seconds
    while pool.pending:
        assert time.monotonic() < deadline, f"still pending after {seconds} s: {pool.running()}"
        got.extend(pool.outcomes(timeout=0.2))
    return got


def test_a_worker_that_dies_mid_job_loses_that_job_only_and_is_replaced():
    with Workers(job, 2) as pool:
        for spec in [("square", 3), ("die", None), ("exit", None), ("square", 4), ("square", 5)]:
            pool.submit(spec)
        got = {o.job: o for o in _drain(pool)}
        assert {j for j, o in got.items() if o.lost} == {("die", None), ("exit", None)}
        assert [got[("square", n)].value for n in (3, 4, 5)] == [9, 16, 25]
        pool.submit(("square", 6))  # both original workers may be gone: new ones take the work
        assert [o.value for o in _drain(pool)] == [36]


def test_a_worker_killed_while_idle_blocks_no_one():
    """The hang multiprocessing.Pool has: an idle worker holds the shared queue's lock while it
    waits, so its kill -9 stalled the others and terminate() for ever."""
    with Workers(job, 2) as pool:
        pool.submit(("sleep", 0.0))
        pool.submit(("sleep", 0.0))
        pids = {o.value for o in _drain(pool)}
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        for n in range(4):
            pool.submit(("square", n))
        got = _drain(pool)
        assert sorted(o.value for o in got) == [0, 1, 4, 9] and not any(o.lost for o in got)


def test_exceptions_come_back_whole_or_by_name():
    with Workers(job, 2) as pool:
        pool.submit(("raise", "broken step"))
        pool.submit(("two-args", None))
        got = {o.job[0]: o.raised for o in _drain(pool)}
    assert type(got["raise"]) is ValueError and str(got["raise"]) == "broken step"
    assert isinstance(got["two-args"], Raised) and error_name(got["two-args"]) == "TwoArgs"
    assert str(got["two-args"]) == "left/right"


def test_leaving_the_pool_ends_busy_and_idle_workers():
    with Workers(job, 2) as pool:
        pool.submit(("sleep", 600.0))
        pool.submit(("sleep", 0.0))
        deadline = time.monotonic() + 120
        while not any(True for _ in pool.outcomes(timeout=0.2)):
            assert time.monotonic() < deadline
        processes = [w.process for w in pool._workers]
        start = time.monotonic()
    assert all(p.exitcode is not None for p in processes)
    assert time.monotonic() - start < 30  # killed, not waited for


def test_size_is_checked():
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        Workers(job, 0)
