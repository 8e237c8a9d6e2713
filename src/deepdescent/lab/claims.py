"""Claims: which process computes which batch of members, when many processes (on one or several
machines) work on one study.

A batch is what one process would train in one go: a learning-rate grid's missing points × seeds
(one vectorized call), or one member. Before it trains a batch, a process claims it by creating an
Optuna study named after it — the storage's unique study names make the claim atomic on SQLite and
PostgreSQL alike — and keeps a heartbeat in that study while it works. A claim whose heartbeat is
older than ``DEEPDESCENT_CLAIM_TIMEOUT`` seconds (default 60) belongs to a process that died: the next
process takes it over by creating the claim's next generation (again atomic). Claims are deleted
once their batch is recorded; results are recorded at most once (``search.record`` checks first). A
process killed between recording a batch and deleting its claim leaves a claim nobody needs: every
finished ``bench`` deletes those of processes that are gone (:func:`sweep`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

from deepdescent.lab import storage


def claim_timeout() -> float:
    """DEEPDESCENT_CLAIM_TIMEOUT in seconds (default 60); ValueError naming it when it is not a
    positive number (``bench`` refuses to start then)."""
    text = os.environ.get("DEEPDESCENT_CLAIM_TIMEOUT", "60")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"invalid DEEPDESCENT_CLAIM_TIMEOUT={text!r}: must be a number of seconds > 0 (default 60)")
    return value


try:
    TIMEOUT = claim_timeout()
except ValueError:  # `bench` checks it first and says what is wrong; nothing runs with it
    TIMEOUT = 60.0
PREFIX = "claim:"

_held: set[tuple[str, str | int]] = set()  # (url, claim study name or trial id) this process beats for
_lock = threading.Lock()
_first_seen: dict[str, float] = {}  # claims seen without a heartbeat yet: since when
_beating: threading.Thread | None = None


class Busy(Exception):
    """Another live process holds the claim on this batch."""


@contextlib.contextmanager
def claimed(url: str, key: str) -> Iterator[None]:
    """Hold the claim on batch ``key`` in the storage ``url`` for the block, or raise :class:`Busy`."""

    name = _take(url, key)
    with _lock:
        _held.add((url, name))
    _start_heartbeat()
    try:
        yield
    finally:
        with _lock:
            _held.discard((url, name))
        _delete(url, name)


def own_trial(url: str, trial_id: int) -> None:
    """Mark a RUNNING trial (a sampled search's proposal) as this process's: the others read
    ``owner`` and ``beat`` with :func:`owner_alive` to wait for it or take it over."""
    store = storage.connect(url)
    store.set_trial_user_attr(trial_id, "owner", _me())
    store.set_trial_user_attr(trial_id, "beat", time.time())


@contextlib.contextmanager
def holding_trial(url: str, trial_id: int) -> Iterator[None]:
    """Keep the heartbeat of a trial this process owns (:func:`own_trial`) for the block."""
    with _lock:
        _held.add((url, trial_id))
    _start_heartbeat()
    try:
        yield
    finally:
        with _lock:
            _held.discard((url, trial_id))


def owner_alive(attrs: dict, name: str) -> bool:
    """Whether the process that wrote ``owner`` and ``beat`` into ``attrs`` still works on it. Its
    process ID is looked up only when it ran in this process's boot and PID namespace (two
    containers may share a hostname, never a namespace); otherwise the heartbeat alone decides."""
    parts = str(attrs.get("owner", "")).rsplit(":", 3)
    if len(parts) == 4 and parts[0] == socket.gethostname() and parts[1] == _namespace() != "" and \
            parts[2].isdigit() and not _running(int(parts[2])):
        return False  # its process on this machine is gone (killed): no need to wait for the heartbeat
    beat, now = attrs.get("beat"), time.time()
    if beat is None:  # just created, its first beat not yet written (or its creator died right then)
        return now - _first_seen.setdefault(name, now) < TIMEOUT
    return now - float(beat) < TIMEOUT


def sweep(url: str) -> list[str]:
    """Delete the claims of processes that are gone (their heartbeat lapsed, or their process on this
    machine no longer runs); returns their names. A process killed after recording its batch but
    before deleting its claim leaves one that nobody takes over (the batch is done): a finished
    ``bench`` sweeps them. Live claims (other processes still working) are left alone."""
    store = storage.connect(url)
    stale = [n for n in storage.study_names(url) if n.startswith(PREFIX) and not _alive(store, n)]
    for name in stale:
        _delete(url, name)
    return stale


_TOKEN = secrets.token_hex(4)  # this process, whatever its PID means elsewhere


def _namespace() -> str:
    """This process's boot and PID namespace, hashed: a PID names the same process only within it."""
    parts = []
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:12] if len(parts) == 2 else ""


def _me() -> str:
    """The owner of this process's claims: host, namespace, PID and a random token."""
    return f"{socket.gethostname()}:{_namespace()}:{os.getpid()}:{_TOKEN}"


def _take(url: str, key: str) -> str:
    optuna = storage.load_optuna()
    store = storage.connect(url)
    prefix = f"{PREFIX}{key}:g"
    generations = sorted(int(n[len(prefix):]) for n in storage.study_names(url) if n.startswith(prefix)
                         and n[len(prefix):].isdigit())
    if generations and _alive(store, prefix + str(generations[-1])):
        raise Busy(key)
    name = prefix + str(generations[-1] + 1 if generations else 0)
    try:
        claim = optuna.create_study(study_name=name, storage=store)
    except optuna.exceptions.DuplicatedStudyError:
        raise Busy(key) from None
    claim.set_user_attr("beat", time.time())
    claim.set_user_attr("owner", _me())
    for g in generations:  # the stale claims this one replaces
        _delete(url, prefix + str(g))
    # Two processes can still create different generations (one listed the names before the other's
    # was deleted, one after). Whoever sees another live generation after creating its own gives
    # way; the later of two always sees the earlier, so at most one keeps a claim.
    others = [n for n in storage.study_names(url) if n.startswith(prefix) and n != name and n[len(prefix):].isdigit()]
    if any(_alive(store, n) for n in others):
        _delete(url, name)
        raise Busy(key)
    return name


def _alive(store, name: str) -> bool:
    try:
        attrs = storage.load_optuna().load_study(study_name=name, storage=store).user_attrs
    except KeyError:  # deleted meanwhile: its batch is done or given up
        return False
    return owner_alive(attrs, name)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:  # a zombie (killed, not yet reaped) is not running
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _delete(url: str, name: str) -> None:
    with contextlib.suppress(KeyError):
        storage.load_optuna().delete_study(study_name=name, storage=storage.connect(url))


def _start_heartbeat() -> None:
    global _beating
    with _lock:
        if _beating is not None and _beating.is_alive():
            return
        _beating = threading.Thread(target=_beat, name="deepdescent-claims", daemon=True)
        _beating.start()


def _beat() -> None:
    optuna = storage.load_optuna()
    while True:
        time.sleep(max(TIMEOUT / 6, 0.2))
        with _lock:
            held = list(_held)
        for url, name in held:
            with contextlib.suppress(Exception):  # a missed beat is retried; a lapsed claim is taken over
                if isinstance(name, int):  # a trial
                    storage.connect(url).set_trial_user_attr(name, "beat", time.time())
                    continue
                s = optuna.load_study(study_name=name, storage=storage.connect(url))
                s.set_user_attr("beat", time.time())
