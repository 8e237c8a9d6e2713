"""Worker processes for the bench, each with a pipe of its own: a worker that dies — kill -9, the
out-of-memory killer, ``os._exit`` in a foreign optimizer — loses its own job and nothing else.

Why not ``multiprocessing.Pool``: its workers share one queue and that queue's lock, which an
idle worker holds while it waits for a task; a worker killed then leaves the lock taken, and
every other worker and ``Pool.terminate()`` wait for it forever. ``concurrent.futures`` declares
the whole pool broken after one death. Here the parent gives each job to one idle worker over
that worker's own pipe and reads the end of the pipe to learn that the worker ended.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any


class Raised(Exception):
    """A job's exception whose class cannot be rebuilt in the parent (it does not pickle)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass
class Outcome:
    """What became of one job: its value, the exception it raised, or ``lost`` (its worker died)."""

    job: Any
    value: Any = None
    raised: BaseException | None = None
    lost: bool = False


def error_name(err: BaseException) -> str:
    return err.name if isinstance(err, Raised) else type(err).__name__


def _exit_with_parent(parent: int) -> None:
    """Die with the parent, even on its kill -9, so that a resumed bench never races an orphan.
    PR_SET_PDEATHSIG fires when the *thread* that started this process ends: ``Workers`` starts
    its processes from the thread that calls it and lives no longer than that thread."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)


def _serve(conn: Connection, fn: Callable[[Any], Any], parent: int) -> None:
    """A worker: run ``fn(job)`` for each job received until ``None`` comes; send back
    ``("value", v)`` or ``("raised", type name, message, pickled exception or None)``."""
    _exit_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (one line, not N tracebacks)
    while (job := conn.recv()) is not None:
        try:
            reply: tuple = ("value", fn(job))
            conn.send(reply)
        except Exception as err:  # noqa: BLE001 - the job's failure is the parent's to judge
            try:
                whole: bytes | None = pickle.dumps(err)
            except Exception:  # noqa: BLE001 - an exception holding a lock, a socket, a lambda
                whole = None
            conn.send(("raised", type(err).__name__, str(err), whole))


def _rebuilt(name: str, message: str, whole: bytes | None) -> BaseException:
    try:
        if whole is not None:
            return pickle.loads(whole)
    except Exception:  # noqa: BLE001 - a class whose __init__ takes other arguments than its args
        pass
    return Raised(name, message)


@dataclass
class _Worker:
    process: Any
    conn: Connection
    job: Any = None
    busy: bool = False


class Workers:
    """``size`` spawned processes running ``fn`` (a module-level function) on submitted jobs.

    >>> with Workers(fn, 2) as pool:
    ...     for job in jobs: pool.submit(job)
    ...     while pool.pending: outcomes = pool.outcomes(timeout=0.1)

    A worker that dies is replaced when a job needs it; its job comes back ``lost`` (the caller
    decides whether to submit it again). Leaving the ``with`` block ends every worker: idle ones
    are told to stop, busy ones (after an exception, Ctrl-C) are killed."""

    def __init__(self, fn: Callable[[Any], Any], size: int) -> None:
        if size < 1:
            raise ValueError(f"Workers: size must be at least 1, got {size!r}")
        self._fn, self._size = fn, size
        self._ctx = mp.get_context("spawn")
        self._workers: list[_Worker] = []
        self._queue: list[Any] = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        """Jobs submitted whose outcome has not been returned yet."""
        return len(self._queue) + sum(w.busy for w in self._workers)

    def running(self) -> list[Any]:
        """The jobs the workers run now."""
        return [w.job for w in self._workers if w.busy]

    def submit(self, job: Any) -> None:
        self._queue.append(job)
        self._dispatch()

    def _start(self) -> _Worker:
        mine, theirs = self._ctx.Pipe()
        process = self._ctx.Process(target=_serve, args=(theirs, self._fn, os.getpid()), daemon=True)
        process.start()
        theirs.close()  # only the worker holds its end: the parent reads EOF when it dies
        worker = _Worker(process, mine)
        self._workers.append(worker)
        return worker

    def _dispatch(self) -> None:
        while self._queue:
            worker = next((w for w in self._workers if not w.busy), None)
            if worker is None:
                if len(self._workers) >= self._size:
                    return
                worker = self._start()
            job = self._queue.pop(0)
            try:
                worker.conn.send(job)
            except OSError:  # it died idle: the job never started; a new worker takes it
                self._queue.insert(0, job)
                self._bury(worker)
                continue
            worker.job, worker.busy = job, True

    def _bury(self, worker: _Worker) -> None:
        self._workers.remove(worker)
        worker.conn.close()
        worker.process.join(timeout=5)  # reap it (no zombie)

    def outcomes(self, timeout: float | None = None) -> Iterator[Outcome]:
        """The outcomes that arrive within ``timeout`` seconds (none if nothing ends by then)."""
        ready = wait([w.conn for w in self._workers], timeout=timeout)
        for worker in [w for w in self._workers if w.conn in ready]:
            job, busy = worker.job, worker.busy
            worker.job, worker.busy = None, False
            try:
                reply = worker.conn.recv()
            except (EOFError, OSError):  # the process ended
                self._bury(worker)
                if busy:
                    yield Outcome(job, lost=True)
                continue
            if reply[0] == "value":
                yield Outcome(job, value=reply[1])
            else:
                yield Outcome(job, raised=_rebuilt(*reply[1:]))
        self._dispatch()

    def close(self) -> None:
        for worker in self._workers:
            if worker.busy:
                worker.process.kill()
            else:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._workers:
            worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers, self._queue = [], []
