"""The protocol of a race and where its results live.

Protocol (per problem and optimizer, the same for everyone; DeepOBS/AlgoPerf-style fairness):

* **equal compute** — every optimizer on a problem gets the problem's budget in
  gradient-equivalents (one full-batch gradient = 1; a minibatch gradient batch/n; a
  curvature-vector product 2; a line-search evaluation 1); results depend only on the protocol
  and the seeds, never on the clock (a time limit is an explicit option, and it flags the runs it
  cuts);
* **tuned track** — the learning rate is tuned on a log grid of ``budget`` points (4 decades around
  the optimizer's default), ``seeds`` seeds per point; the best point is the one with the lowest
  median final training loss (a diverged run counts as +∞). While the best sits at an edge of the
  grid, the grid grows by one point (the same spacing) beyond that edge, at most
  ``MAX_EXTENSION`` times per side, so the tuned value is interior or the report says it is not;
* **defaults track** — the optimizer at its default hyperparameters, ``seeds`` seeds
  (Schmidt et al. 2021: several optimizers at their defaults are about as good as tuning one);
* methods without a learning rate (line searches, Newton, HF) have one setting: both tracks are it;
* **instruments** — one extra run of each first-order optimizer (tuned learning rate, seed 0)
  records Figure 8.1's ‖g‖ and gᵀHg, so that the report draws them without training anything.

Storage: every member run is an Optuna trial (params ``lr`` and ``seed``, value = final training
loss, the whole :class:`RunResult` in its user attributes) in the study
``<problem>/<optimizer>/<track>/v<PROTOCOL_VERSION>…``, in a SQLite file under the run directory
by default, or any RDB URL (``--storage``) shared by several workers or machines. A member whose
trial is complete is never run again, so an interrupted race (Ctrl-C, kill -9) resumes with the
same command, losing and repeating nothing finished; the version in the study name keeps results
of another protocol version (or quick/full suite) from being mixed in.
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
from deepdescent.lab.storage import Missing, connect, load_optuna, open_study
from deepdescent.lab.optimizers import OptimizerSpec, lr_grid
from deepdescent.lab.problems import Problem
from deepdescent.lab.suites import SUITES

#: 2: runs record their failed line searches; 3: equal gradient-equivalent budgets, no clock,
#: extended grids, instrumented runs; 4: quadratic_deep is DeepOBS's exactly; 5: instrumented
#: runs measure the §8.2 challenges (lab.challenges) on a fixed batch, second-order runs included;
#: 6: the noise scale B_simple measured too, the spectrum at every 4th point, losses recorded in
#: the model's evaluation mode
PROTOCOL_VERSION = 6
MAX_EXTENSION = 3  # grid points added beyond an edge at most, per side


SEARCHES = ("grid", "qmc", "tpe")
_log = logging.getLogger("deepdescent.lab")


@dataclass(frozen=True)
class Protocol:
    suite: str = "quick"
    budget: int = 6  # learning rates per optimizer
    seeds: int = 2
    search: str = "grid"  # grid (log grid, vectorized), qmc (quasi-random, Sobol), tpe (Optuna's TPE)
    device: str = "cpu"  # where the members train; part of the study name (results of two devices never mix)
    time_limit: float | None = None  # seconds per run; None: none (results never depend on the clock)

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"invalid time_limit={self.time_limit!r}: seconds must be > 0")

    @property
    def quick(self) -> bool:
        """The problems' small sizes (the suites of small races: lab.suites)."""
        return self.suite in SUITES and SUITES[self.suite].small


    def tag(self) -> str:
        on = "" if self.device == "cpu" else f"-{self.device.replace(':', '.')}"
        limit = "" if self.time_limit is None else f"-t{self.time_limit:g}"
        return f"v{PROTOCOL_VERSION}-{self.suite}-b{self.budget}-s{self.seeds}-{self.search}{on}{limit}"

    @classmethod
    def from_tag(cls, tag: str) -> Protocol:
        parts = tag.split("-")
        extra = parts[5:]
        device = next((p.replace(".", ":") for p in extra if p.startswith("cuda")), "cpu")
        limit = next((float(p[1:]) for p in extra if p.startswith("t")), None)
        return cls(suite=parts[1], budget=int(parts[2][1:]), seeds=int(parts[3][1:]),
                   search=parts[4] if len(parts) > 4 else "grid", device=device, time_limit=limit)

    def run_options(self) -> dict:
        return {"device": self.device, "time_limit": self.time_limit}


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


def applicable(problem: Problem, spec: OptimizerSpec, quick: bool) -> bool:
    if spec.max_params is None:
        return True
    task = problem.build(0, quick)
    return sum(p.numel() for p in task.model.parameters()) <= spec.max_params


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


def run_race(problem: Problem, spec: OptimizerSpec, protocol: Protocol, url: str,
             progress: Callable[[str], None] | None = None, *, run: bool = True,
             wait: bool = True) -> dict[str, list[engine.RunResult]]:
    """Run (or resume) one optimizer on one problem; returns the runs per track: ``grid``
    (tuning), ``tuned`` (the grid's runs at the best learning rate), ``defaults`` and
    ``instruments`` (first-order: the tuned setting, seed 0, with Figure 8.1's quantities). With
    ``run=False`` only stored results are read (:class:`Missing` if some are not there).

    Every batch of members is claimed before it trains (:mod:`.claims`), so that any number of
    processes on one storage split the work. A batch another live process holds is waited for
    (``wait=True``) or raises :class:`claims.Busy` (``wait=False``: the caller does other work
    and comes back)."""
    race = Race(problem, spec, protocol, url, run, wait, progress)
    seeds = list(range(protocol.seeds))
    prefix = race.prefix
    if spec.kind == "second":  # seed 0's run is measured (the measurements do not change a step)
        runs = _track(race, None, seeds, f"{prefix}/defaults", instrumented=seeds[:1])
        return {"grid": runs, "tuned": runs, "defaults": runs, "instruments": runs[:1]}
    search = _grid_search if protocol.search == "grid" else _sampled_search
    grid, done = search(race, seeds)
    best = best_lr(grid, done, seeds)
    if spec.default_lr in grid:
        defaults = [done[(spec.default_lr, s)] for s in seeds]
    else:
        defaults = _vectorized_track(race, spec.default_lr, seeds, f"{prefix}/defaults")
    return {
        "grid": [done[(lr, s)] for lr in grid for s in seeds],
        "tuned": [done[(best, s)] for s in seeds],
        "defaults": defaults,
        "instruments": _track(race, best, seeds[:1], f"{prefix}/instruments", instrumented=seeds[:1]),
    }


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


def _track(race: Race, lr: float | None, seeds: list[int], name: str, *,
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


def _vectorized_track(race: Race, lr: float, seeds: list[int], name: str) -> list[engine.RunResult]:
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


def _grid_search(race: Race, seeds: list[int]):
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


def _sampled_search(race: Race, seeds: list[int]):
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
    with warnings.catch_warnings():  # "experimental" in Optuna: said once in the README, not per proposal
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if protocol.search == "tpe":
            return optuna.samplers.TPESampler(seed=k, n_startup_trials=min(4, protocol.budget), constant_liar=True)
        from scipy.stats import qmc

        sobol = qmc.Sobol(d=1, scramble=True, seed=0)
        if k:
            sobol.fast_forward(k)
        u = float(sobol.random(1)[0, 0])
        lr = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
        return optuna.samplers.PartialFixedSampler({"lr": lr}, optuna.samplers.RandomSampler(seed=k))
