"""The lab's vectorized members against running the same trainings one after another with
torch.optim: a 36-learning-rate × 3-seed grid of Adam on the digits MLP (300 steps, batch 32).

    python bench/lab_engine.py [--lrs 36] [--seeds 3] [--optimizer Adam]
"""

from __future__ import annotations

import argparse
import time

import torch

from deepdescent.lab import engine, optimizers, problems

TORCH = {"Adam": lambda p, lr: torch.optim.Adam(p, lr=lr), "SGD": lambda p, lr: torch.optim.SGD(p, lr=lr),
         "Momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
         "RMSProp": lambda p, lr: torch.optim.RMSprop(p, lr=lr, alpha=0.9, eps=1e-6)}


def sequential(problem, make, lrs, seeds):
    """The same members, each a plain loop with a torch.optim optimizer: same data order, and the
    same learning curve recorded (the training loss on the same examples at the same steps)."""
    finals = []
    for lr in lrs:
        for s in seeds:
            task = problem.build(s, True)
            opt = make(task.model.parameters(), lr)
            order = engine._order(len(task.x_train), s)
            points = engine._eval_points(task.steps)
            x_eval, y_eval = task.x_train[:engine.EVAL_EXAMPLES], task.y_train[:engine.EVAL_EXAMPLES]
            curve = []
            for step in range(task.steps + 1):
                if step in points:
                    with torch.no_grad():
                        curve.append(float(task.loss(task.model(x_eval), y_eval)))
                if step == task.steps:
                    break
                idx = engine._batch_indices(order, step, task.batch_size)
                opt.zero_grad()
                task.loss(task.model(task.x_train[idx]), task.y_train[idx]).backward()
                opt.step()
            finals.append(curve[-1])
    return finals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lrs", type=int, default=36)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--optimizer", default="Adam", choices=list(TORCH))
    ap.add_argument("--curve-points", type=int, default=engine.EVAL_POINTS,
                    help="training-loss evaluations per run on both sides (the lab records 20; 1: start and end only)")
    args = ap.parse_args()
    engine.EVAL_POINTS = args.curve_points
    torch.set_num_threads(2)
    problem, spec = problems.problem("digits_mlp"), optimizers.optimizer(args.optimizer)
    lrs, seeds = optimizers.lr_grid(spec.default_lr, args.lrs), list(range(args.seeds))
    engine.run_vectorized(problem, spec, lrs[:1], seeds[:1], quick=True)  # imports and data loading, once for both
    sequential(problem, TORCH[args.optimizer], lrs[:1], seeds[:1])
    t0 = time.perf_counter()
    vec = engine.run_vectorized(problem, spec, lrs, seeds, quick=True)
    t_vec = time.perf_counter() - t0
    t0 = time.perf_counter()
    seq = sequential(problem, TORCH[args.optimizer], lrs, seeds)
    t_seq = time.perf_counter() - t0
    agree = sum(abs(v.train_loss[-1] - s) <= 1e-3 * max(1.0, abs(s)) for v, s in zip(vec, seq) if not v.diverged)
    print(f"torch {torch.__version__}; {args.optimizer}, {len(lrs)} lrs × {len(seeds)} seeds = {len(vec)} trainings "
          f"of {problem.build(0, True).steps} steps on digits_mlp, training loss on {engine.EVAL_EXAMPLES} examples "
          f"at {args.curve_points + 1} points")
    print("| vectorized (s) | sequential torch.optim (s) | speed-up | final losses agreeing to 1e-3 |")
    print(f"|---|---|---|---|\n| {t_vec:.1f} | {t_seq:.1f} | {t_seq / t_vec:.1f}× | {agree}/{sum(not v.diverged for v in vec)} |")


if __name__ == "__main__":
    main()
