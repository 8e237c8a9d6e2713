"""The protocol of a race and where its results live.

Protocol (per problem and optimizer, the same for everyone):

* **tuned track** — the learning rate is tuned on a log grid of ``budget`` points (4 decades around
  the optimizer's default), ``seeds`` seeds per point; the best point is the one with the lowest
  median final training loss (a diverged run counts as +∞);
* **defaults track** — the optimizer at its default hyperparameters, ``seeds`` seeds
  (Schmidt et al. 2021: several optimizers at their defaults are about as good as tuning one);
* methods without a learning rate (line searches, Newton, HF) have one setting: both tracks are it.

Storage: every member run is an Optuna trial (params ``lr`` and ``seed``, value = final training
loss, the whole :class:`RunResult` in its user attributes) in the study
``<problem>/<optimizer>/<track>/v<PROTOCOL_VERSION>``, in a SQLite file under the run directory by
default, or any RDB URL (``--storage``) shared by several workers or machines. A member whose
trial is complete is never run again, so an interrupted race (Ctrl-C, kill -9) resumes with the
same command, losing and repeating nothing finished; the version in the study name keeps results
of another protocol version (or quick/full suite) from being mixed in.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deepdescent.lab import engine
from deepdescent.lab.optimizers import OPTIMIZERS, OptimizerSpec, lr_grid
from deepdescent.lab.problems import PROBLEMS, Problem

PROTOCOL_VERSION = 2  # 2: runs record their failed line searches


SEARCHES = ("grid", "qmc", "tpe")


@dataclass(frozen=True)
class Protocol:
    suite: str = "quick"
    budget: int = 6  # learning rates per optimizer
    seeds: int = 2
    search: str = "grid"  # grid (log grid, vectorized), qmc (quasi-random, Sobol), tpe (Optuna's TPE)
    device: str = "cpu"  # where the members train; part of the study name (results of two devices never mix)

    @property
    def quick(self) -> bool:
        return self.suite == "quick"

    def tag(self) -> str:
        on = "" if self.device == "cpu" else f"-{self.device.replace(':', '.')}"
        return f"v{PROTOCOL_VERSION}-{self.suite}-b{self.budget}-s{self.seeds}-{self.search}{on}"

    @classmethod
    def from_tag(cls, tag: str) -> Protocol:
        parts = tag.split("-")
        return cls(suite=parts[1], budget=int(parts[2][1:]), seeds=int(parts[3][1:]),
                   search=parts[4] if len(parts) > 4 else "grid",
                   device=parts[5].replace(".", ":") if len(parts) > 5 else "cpu")


def storage_url(out: Path, storage: str | None) -> str:
    return storage or f"sqlite:///{(out / 'results.db').resolve()}"


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def open_study(url: str, name: str, *, create: bool = True, sampler=None):
    """The study ``name`` in the storage ``url``; with ``create=False`` (reading a report) a study
    that is not there raises :class:`Missing` instead of being created empty."""
    optuna = _optuna()
    try:
        if not create:
            return optuna.load_study(study_name=name, storage=url, sampler=sampler)
        return optuna.create_study(study_name=name, storage=url, load_if_exists=True, direction="minimize",
                                   sampler=sampler)
    except KeyError as err:  # load_study: no such study
        raise Missing(name) from err
    except Exception as err:  # noqa: BLE001 - corrupt files and unreachable databases: say which
        raise RuntimeError(f"cannot open the result storage {url!r} ({type(err).__name__}: {err}); "
                           "a corrupt SQLite file must be moved away (or use another --out)") from err


def stored(study) -> dict[tuple[float | None, int], engine.RunResult]:
    optuna = _optuna()
    out = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        r = engine.RunResult.from_json(json.loads(t.user_attrs["result"]))
        out[(r.lr, r.seed)] = r
    return out


def record(study, result: engine.RunResult) -> None:
    optuna = _optuna()
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


class Missing(LookupError):
    """Results asked for without running (``run=False``) are not in the storage."""


def run_race(problem: Problem, spec: OptimizerSpec, protocol: Protocol, url: str,
             progress: Callable[[str], None] | None = None, *, run: bool = True) -> dict[str, list[engine.RunResult]]:
    """Run (or resume) both tracks of one optimizer on one problem; returns the runs per track:
    ``grid`` (tuning), ``tuned`` (best learning rate), ``defaults``. With ``run=False`` only
    stored results are read (:class:`Missing` if some are not there)."""
    seeds = list(range(protocol.seeds))
    prefix = f"{problem.name}/{spec.name}"
    if spec.kind == "second":
        runs = _track(problem, spec, None, seeds, protocol, url, f"{prefix}/defaults", run, progress)
        return {"grid": runs, "tuned": runs, "defaults": runs}
    if protocol.search == "grid":
        grid, done = _grid_search(problem, spec, protocol, url, prefix, seeds, run, progress)
    else:
        grid, done = _sampled_search(problem, spec, protocol, url, prefix, seeds, run, progress)
    best = min(grid, key=lambda lr: median_final([done[(lr, s)] for s in seeds]))
    return {
        "grid": [done[(lr, s)] for lr in grid for s in seeds],
        "tuned": _track(problem, spec, best, seeds, protocol, url, f"{prefix}/tuned", run, progress),
        "defaults": _track(problem, spec, spec.default_lr, seeds, protocol, url, f"{prefix}/defaults", run, progress),
    }


def _track(problem: Problem, spec: OptimizerSpec, lr: float | None, seeds: list[int], protocol: Protocol, url: str,
           name: str, run: bool, progress: Callable[[str], None] | None) -> list[engine.RunResult]:
    """One setting, every seed, member by member (real wall times), stored and resumable."""
    study = open_study(url, f"{name}/{protocol.tag()}", create=run)
    done = stored(study)
    for s in seeds:
        if (lr, s) not in done:
            if not run:
                raise Missing(name)
            if progress:
                progress(f"{name} lr={lr} seed {s}")
            done[(lr, s)] = r = engine.run_member(problem, spec, lr, s, protocol.quick, device=protocol.device)
            record(study, r)
    return [done[(lr, s)] for s in seeds]


def _members(problem: Problem, spec: OptimizerSpec, lrs: list[float], seeds: list[int],
             quick: bool, device: str = "cpu") -> list[engine.RunResult]:
    try:
        return engine.run_vectorized(problem, spec, lrs, seeds, quick, device=device)
    except Exception:  # noqa: BLE001 - vmap cannot run this model (e.g. cuDNN's RNN): member by member
        return [engine.run_member(problem, spec, lr, s, quick, device=device) for lr in lrs for s in seeds]


def _grid_search(problem, spec, protocol, url, prefix, seeds, run, progress):
    grid = lr_grid(spec.default_lr, protocol.budget)
    study = open_study(url, f"{prefix}/grid/{protocol.tag()}", create=run)
    done = stored(study)
    missing_lrs = sorted({lr for lr in grid for s in seeds if (lr, s) not in done})
    if missing_lrs and not run:
        raise Missing(prefix)
    if missing_lrs:
        if progress:
            progress(f"{prefix}: {len(missing_lrs)} learning rates × {len(seeds)} seeds")
        for r in _members(problem, spec, missing_lrs, seeds, protocol.quick, protocol.device):
            if (r.lr, r.seed) not in done:
                record(study, r)
                done[(r.lr, r.seed)] = r
    return grid, done


def _sampled_search(problem, spec, protocol, url, prefix, seeds, run, progress):
    """Quasi-random (Sobol) or TPE proposals of log₁₀ lr over the grid's 4 decades: one Optuna
    trial per proposed learning rate, valued by the median final training loss of its seeds (all
    seeds of a proposal train together, vectorized). Completed trials are kept on resume."""
    optuna = _optuna()
    sampler = optuna.samplers.QMCSampler(seed=0, scramble=True) if protocol.search == "qmc" else \
        optuna.samplers.TPESampler(seed=0, n_startup_trials=min(4, protocol.budget))
    study = open_study(url, f"{prefix}/{protocol.search}/{protocol.tag()}", create=run, sampler=sampler)
    low, high = lr_grid(spec.default_lr, 2)
    dist = {"lr": optuna.distributions.FloatDistribution(low, high, log=True)}

    def completed():
        return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]

    if len(completed()) < protocol.budget and not run:
        raise Missing(prefix)
    while len(completed()) < protocol.budget:
        trial = study.ask(dist)
        lr = trial.params["lr"]
        if progress:
            progress(f"{prefix}: {protocol.search} proposal {len(completed()) + 1}/{protocol.budget}, lr={lr:.3g}")
        runs = _members(problem, spec, [lr], seeds, protocol.quick, protocol.device)
        trial.set_user_attr("runs", json.dumps([r.to_json() for r in runs]))
        value = median_final(runs)
        study.tell(trial, value if math.isfinite(value) else 1e300)
    done = {}
    for t in completed():
        for d in json.loads(t.user_attrs["runs"]):
            r = engine.RunResult.from_json(d)
            done[(r.lr, r.seed)] = r
    return sorted({lr for lr, _ in done}), done


#: Saxe et al. (2013): the deep linear network at three depths under orthogonal and scaled-uniform
#: (Glorot) initialization; the report draws training time against depth.
DEPTH_SUITE = [f"deep_linear:depth={d},scheme={s}" for s in ("orthogonal", "normalized") for d in (2, 8, 32)]
SUITES = ("quick", "full", "depth")


def suite(name: str) -> list[str]:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; valid: {', '.join(SUITES)}")
    if name == "depth":
        return list(DEPTH_SUITE)
    return [p.name for p in PROBLEMS.values() if name in p.suites]


def all_optimizers() -> list[str]:
    return list(OPTIMIZERS)
