"""Where a race's results live: storage URLs, opening them, and what their failures mean.

Every member run is an Optuna trial in an RDB storage: a SQLite file under the run directory by
default, or any URL SQLAlchemy opens (``--storage postgresql+psycopg://…``) shared by several
processes and machines. This module is the only one that talks to the storage's connection:

* :func:`connect` gives one storage object per URL and process. Its every operation rides out a
  database outage — a server restarting, a network blip, a failover: the connection errors that
  say "try again later" are retried with backoff (0.5 s doubling to 10 s) for
  ``DEEPDESCENT_STORAGE_PATIENCE`` seconds (default 120) from the first failure, with one log line
  when the outage starts and one when it ends; after that, or at once for any other failure, it
  raises :class:`StorageError` with the cause in one line (the bench prints it with the resume
  command; nothing stored is lost).
* :func:`redact` hides every credential of a URL before it reaches a message, file or page.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
_log = logging.getLogger("deepdescent.lab")


class StorageError(RuntimeError):
    """The result storage cannot be opened or used; the message is one line naming the cause."""


class Missing(LookupError):
    """Results asked for without running (``run=False``) are not in the storage."""


def load_optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def url_for(out: Path, given: str | None) -> str:
    """The storage URL of a run directory: ``given`` (``--storage``), else its own SQLite file."""
    return given or f"sqlite:///{(out / 'results.db').resolve()}"


def patience() -> float:
    """DEEPDESCENT_STORAGE_PATIENCE: seconds a database outage is waited out (default 120; 0 gives
    up at the first failure). ValueError naming it when it is not a number ≥ 0."""
    text = os.environ.get("DEEPDESCENT_STORAGE_PATIENCE", "120")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"invalid DEEPDESCENT_STORAGE_PATIENCE={text!r}: must be a number of seconds ≥ 0 "
                         "(default 120)")
    return value


#: Query parameters of a storage URL that carry a credential (libpq's, which SQLAlchemy passes on).
SECRET_PARAMETERS = ("password", "passwd", "pwd", "sslpassword")


def redact(url: str) -> str:
    """The storage URL with every credential hidden, for every message, page and file: the
    password of ``user:password@host`` (SQLAlchemy's rendering) and one given as a query
    parameter (``?password=…``, ``sslpassword``…)."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        hidden = {k: "***" for k in parsed.query if k.lower() in SECRET_PARAMETERS}
        return parsed.update_query_dict(hidden).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy parses: nothing to hide
        return url


def connect(url: str, *, wait_out_outages: bool = True):
    """The storage object of ``url`` in this process (one per URL and process: a forked or spawned
    worker opens its own). SQLite waits up to a minute for another process's write lock instead of
    failing; the creation of a fresh database's schema, which several processes may race, is
    retried. ``wait_out_outages=False`` fails at once if the server cannot be reached now (the
    bench's first look, while the user is there to fix a host or port); the object's operations
    always wait out an outage."""
    return _connect(url, os.getpid(), wait_out_outages)


@functools.cache
def _connect(url: str, pid: int, wait_out_outages: bool):
    _check_sqlite_folder(url)
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    waited = patience() if wait_out_outages else 0.0
    return _retried(url, lambda: _patient(url, waited, lambda: _PatientStorage()(url, engine_kwargs=kwargs),
                                          failed="cannot open the result storage {url}"))


def study_names(url: str) -> list[str]:
    return _retried(url, lambda: load_optuna().get_all_study_names(storage=connect(url)))


def open_study(url: str, name: str, *, create: bool = True, sampler=None, wait_out_outages: bool = True):
    """The study ``name`` in the storage ``url``; with ``create=False`` (reading a report) a study
    that is not there raises :class:`Missing` instead of being created empty. Any failure raises
    :class:`StorageError` with its cause in one line."""
    optuna = load_optuna()

    def attempt():
        store = connect(url, wait_out_outages=wait_out_outages)
        if not create:
            return optuna.load_study(study_name=name, storage=store, sampler=sampler)
        return optuna.create_study(study_name=name, storage=store, load_if_exists=True, direction="minimize",
                                   sampler=sampler)
    try:
        return _retried(url, attempt)
    except StorageError as err:
        if isinstance(err.__cause__, KeyError):  # load_study: no such study
            raise Missing(name) from err.__cause__
        raise


_RACES = 8  # attempts at an operation that lost a race with another process (schema creation, a lock)


def _retried(url: str, fn: Callable[[], T]) -> T:
    for attempt in range(_RACES):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - classified below: retried, or one line naming the cause
            if _is_race(err) and attempt < _RACES - 1:
                time.sleep(0.2 * (attempt + 1))
                continue
            if isinstance(err, StorageError):  # named already
                raise
            raise StorageError(f"cannot open the result storage {redact(url)}: {cause(err, url)}") from err
    raise AssertionError("unreachable")


def _patient(url: str, seconds: float, fn: Callable[[], T], failed: str = "the result storage {url} failed") -> T:
    """``fn()``, waiting out a database outage for ``seconds``; a storage failure that is no outage
    (said as ``failed``), or one that outlasts them, raises :class:`StorageError` naming its cause."""
    import sqlalchemy.exc

    optuna = load_optuna()
    since, delay = None, 0.5
    while True:
        try:
            result = fn()
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
            if not is_outage(err):
                raise StorageError(f"{failed.format(url=redact(url))}: {cause(err, url)}") from err
            now = time.monotonic()
            if since is None:
                since = now
                if seconds > 0:
                    _log.warning("the result storage %s cannot be reached (%s); retrying for up to %g s "
                                 "(DEEPDESCENT_STORAGE_PATIENCE)", redact(url), _first_line(err), seconds)
            if now - since >= seconds:
                raise StorageError(f"the result storage {redact(url)} cannot be reached"
                                   + (f" (for {seconds:g} s, DEEPDESCENT_STORAGE_PATIENCE)" if seconds else "")
                                   + f": {cause(err, url)}") from err
            time.sleep(min(delay, seconds - (now - since)))
            delay = min(2 * delay, 10.0)
            continue
        if since is not None and seconds > 0:
            _log.warning("the result storage %s is back after %.1f s", redact(url), time.monotonic() - since)
        return result


@functools.cache
def _PatientStorage():  # noqa: N802 - a class, made when Optuna is first needed (importing it costs a second)
    """Optuna's RDB storage, held inside a storage whose every public operation waits out a
    database outage for DEEPDESCENT_STORAGE_PATIENCE seconds (only the outermost call of a thread
    waits: an operation built of others never waits twice). Held, not inherited: Optuna wraps an
    RDB storage in a cache that calls its private methods, which no wrapper here would see."""
    optuna = load_optuna()
    rdb = optuna.storages.RDBStorage

    def __init__(self, url: str, **kwargs) -> None:  # noqa: N807
        self.url = url
        self._patience = patience()
        self._waiting: set[int] = set()  # the threads inside a waiting operation
        self._rdb = rdb(url, **kwargs)

    def waiting(name: str):
        def call(self, *args, **kwargs):
            method = getattr(self._rdb, name)
            me = threading.get_ident()
            if me in self._waiting:  # inside an operation that waits already
                return method(*args, **kwargs)
            self._waiting.add(me)
            try:
                return _patient(self.url, self._patience, lambda: method(*args, **kwargs))
            finally:
                self._waiting.discard(me)
        call.__name__ = call.__qualname__ = name
        call.__doc__ = getattr(rdb, name).__doc__
        return call

    names = [n for n in dir(optuna.storages.BaseStorage) if not n.startswith("_") and callable(getattr(rdb, n, None))]
    return type("PatientStorage", (optuna.storages.BaseStorage,),
                {"__init__": __init__, "__doc__": _PatientStorage.__doc__, "__module__": __name__, **{n: waiting(n) for n in names}})


#: What a connection that was lost, refused or reset says (PostgreSQL's libpq, MySQL's drivers):
#: the server is restarting, failing over or briefly unreachable. Trying again later succeeds.
OUTAGE_SIGNS = (
    "connection refused", "server closed the connection unexpectedly", "terminating connection due to administrator",
    "the database system is shutting down", "the database system is starting up", "the database system is in recovery",
    "not yet accepting connections", "could not receive data from server", "could not send data to server",
    "connection is closed", "connection already closed", "consuming input failed", "connection timed out",
    "timeout expired", "server conn crashed", "ssl syscall error", "no connection to the server",
    "lost connection to mysql server", "mysql server has gone away", "can't connect to mysql server",
)
#: A refused login, a missing database or a misspelt host: the same next time, so never waited out.
LASTING_SIGNS = ("password authentication failed", "authentication", "no password supplied", "does not exist", "no pg_hba.conf entry",
                 "could not translate host", "name or service not known", "access denied")


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` (a storage error, its causes included) says the database server is down or
    unreachable for now, as opposed to a refused login, a missing database or a bad request."""
    text = _messages(err)
    if any(s in text for s in LASTING_SIGNS):
        return False
    socket_gone = "connection to server on socket" in text and "no such file or directory" in text
    return socket_gone or any(s in text for s in OUTAGE_SIGNS)


def _messages(err: BaseException | None) -> str:
    text = []
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text.append(f"{type(err).__name__}: {err}")
        err = err.__cause__ or err.__context__
    return "\n".join(text).lower()


def _first_line(err: BaseException) -> str:
    inner = err
    while inner.__cause__ is not None or inner.__context__ is not None:
        inner = inner.__cause__ or inner.__context__
    return (str(inner).strip().splitlines() or [type(inner).__name__])[-1].strip()


def _is_race(err: BaseException) -> bool:
    """A schema creation that lost to another process's (the tables or their version row appeared
    meanwhile), or SQLite's lock held by another writer: trying again succeeds."""
    text = _messages(err)
    return any(s in text for s in ("integrityerror", "already exists", "database is locked", "unique constraint",
                                   "duplicate key"))


def cause(err: BaseException, url: str) -> str:
    """What went wrong with the storage ``url``, in words a user acts on."""
    text = _messages(err)
    scheme = url.split(":", 1)[0]
    if "could not parse sqlalchemy url" in text or "://" not in url:
        return ("not a database URL (expected e.g. sqlite:////abs/path/results.db or "
                "postgresql+psycopg://user:password@host/db)")
    if "failed to import db access module" in text or "no module named" in text:
        driver = {"postgresql": "psycopg (pip install 'psycopg[binary]', URL postgresql+psycopg://…)",
                  "mysql": "a MySQL driver (pip install pymysql, URL mysql+pymysql://…)"}.get(scheme.split("+")[0],
                                                                                             "its database driver")
        return f"the Python driver for {scheme} is not installed: install {driver}"
    if "disk is full" in text or "no space left" in text:
        return "the disk is full (free space, or choose another --out/--storage)"
    if "database disk image is malformed" in text:
        return ("the SQLite file is corrupt (SQLite reports it malformed): move it away to start afresh, or restore "
                "it from a copy")
    if "file is not a database" in text:
        return "the file is not an SQLite database (another kind of file, or truncated before its header)"
    if "unable to open database file" in text or "readonly database" in text or "permission denied" in text:
        return "the database file cannot be opened or written (permissions, or a folder in its path is missing)"
    # a refused login or a missing database also begin "connection to server … failed": look at them first
    if any(s in text for s in ("password authentication failed", "authentication", "no password supplied",
                               "no pg_hba.conf entry", "access denied")):
        return "the database refused the login (user or password)"
    if "database" in text and "does not exist" in text:
        return "the database named in the URL does not exist on that server (create it, or fix the URL's name)"
    if "role" in text and "does not exist" in text:
        return "the user named in the URL does not exist on that server"
    if "could not translate host" in text or "name or service not known" in text:
        return "the database server's host name is not known (check the URL's host)"
    if is_outage(err) or "could not connect" in text or "connection to server" in text:
        return "the database server cannot be reached (is it running, and are host and port right?)"
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{type(err).__name__}: {redact(first) if '://' in first else first}"


def _check_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if str(path) and str(path) != ":memory:" and not path.parent.is_dir():
            raise StorageError(f"cannot open the result storage {redact(url)}: the folder {str(path.parent)!r} "
                               "does not exist")
