"""Running the members of one race, stored and resumable: the grid and sampled searches of the
learning rate, the tracks of one setting, and how each batch of members is claimed so that any
number of processes on one storage split the work (:mod:`.claims`).

Storage: every member run is an Optuna trial (params ``lr`` and ``seed``, value = final training
loss, the whole :class:`~.engine.RunResult` in its user attributes) in the study
``<problem>/<optimizer>/<track>/<protocol tag>…``, in a SQLite file under the run directory by
default, or any RDB URL (``--storage``) shared by several workers or machines. A member whose
trial is complete is never run again, so an interrupted race (Ctrl-C, kill -9) resumes with the
same command, losing and repeating nothing finished; the protocol's tag in the study name keeps
results of another protocol version (or suite, budget, device) from being mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

from deepdescent.lab import claims, engine
from deepdescent.lab.optimizers import OptimizerSpec, lr_grid
from deepdescent.lab.problems import Problem
from deepdescent.lab.protocol import MAX_EXTENSION, Protocol
from deepdescent.lab.storage import Missing, connect, load_optuna, open_study

_log = logging.getLogger("deepdescent.lab")


def stored(study) -> dict[tuple[float | None, int], engine.RunResult]:
    optuna = load_optuna()
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = engine.RunResult.from_json(json.loads(t.user_attrs["result"]))
        out[(r.lr, r.seed)] = r
    return out


def record(study, result: engine.RunResult) -> None:
    optuna = load_optuna()
    value = result.final_train_loss
    trial = optuna.trial.create_trial(
        params={"lr": result.lr if result.lr is not None else 0.0, "seed": result.seed},
        distributions={"lr": optuna.distributions.FloatDistribution(0.0, 1e9),
                       "seed": optuna.distributions.IntDistribution(0, 10**6)},
        value=value if math.isfinite(value) else 1e300,
        user_attrs={"result": json.dumps(result.to_json())},
    )
    study.add_trial(trial)


def median_final(runs: list[engine.RunResult]) -> float:
    return statistics.median(r.final_train_loss for r in runs)


@dataclass(frozen=True)
class Race:
    """One optimizer on one problem under one protocol, in one storage — what every step of running
    (or, with ``run=False``, only reading) it needs. ``wait=False``: a batch another live process
    holds raises :class:`claims.Busy` instead of being waited for (the caller does other work and
    comes back)."""

    problem: Problem
    spec: OptimizerSpec
    protocol: Protocol
    url: str
    run: bool = True
    wait: bool = True
    progress: Callable[[str], None] | None = None
    said: set[str] = field(default_factory=set, compare=False)  # log lines said once per race

    @property
    def prefix(self) -> str:
        return f"{self.problem.name}/{self.spec.name}"

    def study(self, name: str):
        """The study of one track (``name`` = prefix/track) under this protocol (and, for a user's
        workload, this version of it: its fingerprint)."""
        version = f"-w{self.problem.fingerprint}" if self.problem.fingerprint else ""
        return open_study(self.url, f"{name}/{self.protocol.tag()}{version}", create=self.run)

    def say(self, text: str) -> None:
        if self.progress:
            self.progress(text)


def best_lr(grid: list[float], done: dict, seeds: list[int]) -> float:
    """The learning rate with the lowest median final loss; ties go to the point nearer the middle
    of the grid (so that equal losses never push the grid outwards)."""
    middle = (len(grid) - 1) / 2
    return min(grid, key=lambda lr: (median_final([done[(lr, s)] for s in seeds]), abs(grid.index(lr) - middle)))


POLL = 0.5  # seconds between looks at a batch another process holds


def _claim_and_run(race: Race, study, done: dict, members: list[tuple],
                   compute: Callable[[list[tuple]], list]) -> None:
    """Train ``members`` ((lr, seed) pairs) missing from ``done`` as one batch under a claim, and
    record them; when another live process holds that batch, wait for its results (or raise
    :class:`claims.Busy` when the race does not wait)."""
    while True:  # the caller's ``done`` was read just before: the first look needs no new read
        missing = [m for m in members if m not in done]
        if not missing:
            return
        key = hashlib.sha1(f"{study.study_name}|{missing!r}".encode()).hexdigest()[:20]
        try:
            with claims.claimed(race.url, key):
                done.update(stored(study))  # finished while we claimed: nothing to train twice
                todo = [m for m in missing if m not in done]
                results = compute(todo) if todo else []
                if results:  # a claim taken over from a slow (not dead) process: its results stay
                    done.update(stored(study))
                for r in results:
                    if (r.lr, r.seed) not in done:
                        record(study, r)
                        done[(r.lr, r.seed)] = r
        except claims.Busy:
            if not race.wait:
                raise
            time.sleep(POLL)
            done.update(stored(study))


def track(race: Race, lr: float | None, seeds: list[int], name: str, *,
           instrumented: list[int] = ()) -> list[engine.RunResult]:
    """One setting, every seed, member by member, stored and resumable; the ``instrumented``
    seeds' runs measure the §8.2 challenges along the way."""
    study = race.study(name)
    done = stored(study)
    for s in seeds:
        if (lr, s) not in done:
            if not race.run:
                raise Missing(name)
            race.say(f"{name} lr={lr} seed {s}")
            _claim_and_run(race, study, done, [(lr, s)], lambda todo: [
                engine.run_member(race.problem, race.spec, lr, seed, race.protocol.quick,
                                  instruments=seed in instrumented, **race.protocol.run_options()) for _, seed in todo])
    return [done[(lr, s)] for s in seeds]


def vectorized_track(race: Race, lr: float, seeds: list[int], name: str) -> list[engine.RunResult]:
    """One learning rate, every seed, trained together like the grid; stored and resumable."""
    study = race.study(name)
    done = stored(study)
    if any((lr, s) not in done for s in seeds):
        if not race.run:
            raise Missing(name)
        _run_missing(race, [lr], seeds, study, done, name)
    return [done[(lr, s)] for s in seeds]


def _members(race: Race, lrs: list[float], seeds: list[int]) -> list[engine.RunResult]:
    problem, spec, protocol = race.problem, race.spec, race.protocol
    if spec.algorithm is None:  # a foreign optimizer: no functional core to vectorize
        return [engine.run_member(problem, spec, lr, s, protocol.quick, **protocol.run_options())
                for lr in lrs for s in seeds]
    try:
        return engine.run_vectorized(problem, spec, lrs, seeds, protocol.quick, **protocol.run_options())
    except engine.NotVectorizable as err:  # e.g. cuDNN's RNN under vmap: member by member, said in the log
        if "member by member" not in race.said:
            race.said.add("member by member")
            _log.warning("%s on %s runs member by member: %s", spec.name, problem.name, str(err).split(". ")[0])
        return [engine.run_member(problem, spec, lr, s, protocol.quick, **protocol.run_options())
                for lr in lrs for s in seeds]


def _run_missing(race: Race, lrs: list[float], seeds: list[int], study, done: dict, name: str) -> None:
    """The missing members of lrs × seeds, trained together (vectorized) as one claimed batch."""
    members = [(lr, s) for lr in sorted(lrs) for s in seeds if (lr, s) not in done]
    race.say(f"{name}: {len({lr for lr, _ in members})} learning rates × {len(seeds)} seeds")

    def compute(todo):
        return _members(race, sorted({lr for lr, _ in todo}), sorted({s for _, s in todo}))
    _claim_and_run(race, study, done, members, compute)


def grid_search(race: Race, seeds: list[int]):
    """The log grid, extended one point at a time beyond an edge that holds the best learning rate."""
    study = race.study(f"{race.prefix}/grid")
    done = stored(study)
    below = above = 0
    while True:
        grid = lr_grid(race.spec.default_lr, race.protocol.budget, extend=(below, above))
        if any((lr, s) not in done for lr in grid for s in seeds):
            if not race.run:
                raise Missing(race.prefix)
            _run_missing(race, grid, seeds, study, done, race.prefix)
        best = best_lr(grid, done, seeds)
        if len(grid) > 1 and best == grid[0] and below < MAX_EXTENSION:
            below += 1
        elif len(grid) > 1 and best == grid[-1] and above < MAX_EXTENSION:
            above += 1
        else:
            return grid, done


def sampled_search(race: Race, seeds: list[int]):
    """Quasi-random (Sobol) or TPE proposals of log₁₀ lr over the grid's 4 decades: one Optuna
    trial per proposed learning rate, valued by the median final training loss of its seeds (all
    seeds of a proposal train together, vectorized). Completed trials are kept on resume.

    Proposals are made one at a time under a claim (:func:`_propose`), so that any number of
    processes on one study take distinct proposals: QMC's proposals are then those of a single
    process; TPE's depend on which results exist when it proposes (with several processes it
    proposes with fewer, as any parallel TPE does), each trained once."""
    optuna = load_optuna()
    protocol, url, prefix = race.protocol, race.url, race.prefix
    study = race.study(f"{prefix}/{protocol.search}")

    def completed():
        return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))

    if len(completed()) < protocol.budget and not race.run:
        raise Missing(prefix)
    while len(completed()) < protocol.budget:
        try:
            with claims.claimed(url, hashlib.sha1(f"{study.study_name}|ask".encode()).hexdigest()[:20]):
                proposal = _propose(study, race.spec, protocol, url)
        except claims.Busy:  # another process is proposing (a moment) or died proposing (taken over)
            time.sleep(POLL / 10 * (1 + random.random()))  # jitter: two that gave way to each other try apart
            continue
        if proposal is None:  # every remaining proposal is another live process's work
            if not race.wait:
                raise claims.Busy(prefix)
            time.sleep(POLL)
            continue
        number, trial_id, lr = proposal
        race.say(f"{prefix}: {protocol.search} proposal {number + 1}/{protocol.budget}, lr={lr:.3g}")
        with claims.holding_trial(url, trial_id):
            runs = _members(race, [lr], seeds)
            value = median_final(runs)
            connect(url).set_trial_user_attr(trial_id, "runs", json.dumps([r.to_json() for r in runs]))
            try:
                study.tell(number, value if math.isfinite(value) else 1e300)
            except (RuntimeError, ValueError):  # another process finished this proposal first: its result stays
                pass
    done = {}
    for t in completed():
        for d in json.loads(t.user_attrs["runs"]):
            r = engine.RunResult.from_json(d)
            done[(r.lr, r.seed)] = r
    return sorted({lr for lr, _ in done}), done


def _propose(study, spec, protocol, url) -> tuple[int, int, float] | None:
    """The next proposal to train, as (trial number, trial id, lr), owned by this process before the
    caller's claim on proposing ends: a dead process's RUNNING proposal (trained again under its own
    trial, so the sequence is the uninterrupted run's), else a new one while fewer than the budget
    exist; None when all the rest are live processes' work. The caller holds the claim, so a RUNNING
    trial without an owner was left by a process that died proposing."""
    optuna = load_optuna()
    every = study.get_trials(deepcopy=False)
    running = [t for t in every if t.state == optuna.trial.TrialState.RUNNING]
    dead = [t for t in running if "owner" not in t.user_attrs
            or not claims.owner_alive(t.user_attrs, f"trial {t.number} of {study.study_name}")]
    for t in dead:
        if "lr" not in t.params:  # killed inside ``ask``: it holds no proposal
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    proposed = [t for t in every if "lr" in t.params]
    stale = [t for t in dead if "lr" in t.params]
    if stale:
        number, lr = stale[0].number, stale[0].params["lr"]
    elif len(proposed) < protocol.budget:
        low, high = lr_grid(spec.default_lr, 2)
        study.sampler = _sampler(protocol, len(proposed), low, high)
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(low, high, log=True)})
        number, lr = trial.number, trial.params["lr"]
    else:
        return None
    store = connect(url)  # the trial's id in the storage, through its public interface
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(study.study_name), number)
    claims.own_trial(url, trial_id)
    return number, trial_id, lr


def _sampler(protocol, k: int, low: float, high: float):
    """The sampler of proposal ``k`` (counted over trials that hold one), a function of k and the
    results so far only — never of which process, or which restart of one, proposes. QMC: point k of
    the scrambled Sobol sequence (seed 0), log-uniform over [low, high]; TPE: its random start-up
    draws seeded by k."""
    optuna = load_optuna()
    with warnings.catch_warnings():  # "experimental" in Optuna: said once in docs/guides/race.md, not per proposal
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if protocol.search == "tpe":
            return optuna.samplers.TPESampler(seed=k, n_startup_trials=min(4, protocol.budget), constant_liar=True)
        from scipy.stats import qmc  # scipy.stats takes a second to import: only the qmc search pays it

        sobol = qmc.Sobol(d=1, scramble=True, seed=0)
        if k:
            sobol.fast_forward(k)
        u = float(sobol.random(1)[0, 0])
        lr = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return optuna.samplers.PartialFixedSampler({"lr": lr}, optuna.samplers.RandomSampler(seed=k))
