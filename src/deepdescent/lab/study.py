"""One race, end to end: an optimizer on a problem under a :class:`~.protocol.Protocol`, its
tracks run (or resumed, or only read) through :mod:`.search` in one storage (:mod:`.storage`)."""

from __future__ import annotations

from collections.abc import Callable

from deepdescent.lab import engine
from deepdescent.lab.optimizers import OptimizerSpec, applies
from deepdescent.lab.problems import Problem
from deepdescent.lab.protocol import Protocol
from deepdescent.lab.search import Race, best_lr, grid_search, sampled_search, track, vectorized_track


def applicable(problem: Problem, spec: OptimizerSpec, quick: bool) -> bool:
    """Whether ``spec`` races on ``problem``: within its size limit, with the layers it needs."""
    if spec.max_params is None and not spec.takes_model:
        return True
    model = problem.build(0, quick).model
    return (spec.max_params is None or sum(p.numel() for p in model.parameters()) <= spec.max_params) and \
        applies(spec, model)


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
        runs = track(race, None, seeds, f"{prefix}/defaults", instrumented=seeds[:1])
        return {"grid": runs, "tuned": runs, "defaults": runs, "instruments": runs[:1]}
    search = grid_search if protocol.search == "grid" else sampled_search
    grid, done = search(race, seeds)
    best = best_lr(grid, done, seeds)
    if spec.default_lr in grid:
        defaults = [done[(spec.default_lr, s)] for s in seeds]
    else:
        defaults = vectorized_track(race, spec.default_lr, seeds, f"{prefix}/defaults")
    return {
        "grid": [done[(lr, s)] for lr in grid for s in seeds],
        "tuned": [done[(best, s)] for s in seeds],
        "defaults": defaults,
        "instruments": track(race, best, seeds[:1], f"{prefix}/instruments", instrumented=seeds[:1]),
    }
