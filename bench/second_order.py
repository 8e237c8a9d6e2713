"""Second-order methods: the cost of curvature products, and a race on a deep autoencoder.

1. One Hessian-vector and one Gauss–Newton-vector product relative to one gradient, on the digits
   MLP and a small CNN, both through the torch.func oracle (forward-over-reverse) and through a
   closure (double backward, what the optimizers use).
2. The deep autoencoder of Hinton & Salakhutdinov (2006) in small, on scikit-learn's digits:
   64-128-64-32-8 and its mirror, sigmoid units, squared reconstruction error. HessianFree
   (Gauss–Newton), L-BFGS and nonlinear CG on the full batch against SGD, momentum and Nesterov
   (minibatch 64, learning rate tuned on a small grid), all from the sparse initialization of
   Martens (2010), for the same budget of
   gradient-equivalent evaluations (a full-batch gradient = 1; a curvature product = 2; a loss-only
   evaluation = 1; a minibatch gradient = its share of the data).

    python bench/second_order.py [--budget 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn

from deepdescent import init, optim
from deepdescent.curvature import ModelObjective, evaluate_closure, gnvp, hvp
from deepdescent.curvature.vectors import unflat_like
from deepdescent.lab.digits import load_digits


def _median_time(fn, repeats=20):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def product_costs(threads: int) -> list[tuple[str, str, float, float]]:
    torch.set_num_threads(threads)
    data = load_digits()
    x, y = data.x_train, data.y_train
    torch.manual_seed(0)
    models = {
        "digits MLP": (nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)), x),
        "small CNN": (nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                                    nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(1024, 10)), x),
    }
    rows = []
    for name, (model, inputs) in models.items():
        loss_fn = nn.functional.cross_entropy
        obj = ModelObjective(model, loss_fn, inputs, y)
        p = obj.params()
        v = {k: torch.randn_like(t) for k, t in p.items()}
        t_grad = _median_time(lambda: obj.gradient(p))
        t_hvp = _median_time(lambda: obj.hvp(v, p))
        t_gn = _median_time(lambda: obj.gnvp(v, p))
        rows.append((name, "torch.func oracle", t_hvp / t_grad, t_gn / t_grad))
        params = list(model.parameters())
        vec = unflat_like(torch.randn(sum(q.numel() for q in params)), params)

        def closure():
            out = model(inputs)
            return loss_fn(out, y), out

        t_g = _median_time(lambda: evaluate_closure(closure, params))
        t_h = _median_time(lambda: hvp(evaluate_closure(closure, params, create_graph=True), params, vec))
        t_n = _median_time(lambda: gnvp(evaluate_closure(closure, params, create_graph=True, want_output=True),
                                        params, vec))
        # the closure path builds the gradient graph once per product here: subtract one gradient
        rows.append((name, "closure (double backward)", t_h / t_g - 1, t_n / t_g - 1))
    return rows


def autoencoder(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    sizes = [64, 128, 64, 32, 8]
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.Sigmoid()]
    rev = sizes[::-1]
    for i, (a, b) in enumerate(zip(rev[:-1], rev[1:])):
        layers += [nn.Linear(a, b)] + ([nn.Sigmoid()] if i < len(rev) - 2 else [])
    layers.pop(len(sizes) * 2 - 3)  # the code layer (8 units) is linear, as in Hinton & Salakhutdinov
    model = nn.Sequential(*layers)
    # sparse initialization (Martens 2010), as in the HF and Nesterov papers on these autoencoders
    init.apply(model, "sparse", sparse_k=15, generator=torch.Generator().manual_seed(seed))
    return model


def race(budget: float, seed: int) -> list[tuple[str, float, float, float]]:
    torch.set_num_threads(2)
    x = load_digits(seed).x_train
    n = len(x)

    def recon(model):
        with torch.no_grad():
            return nn.functional.mse_loss(model(x), x).item()

    results = []

    def full_batch(name, make, hf=False):
        model = autoencoder(seed)
        opt = make(model.parameters())

        def closure():
            out = model(x)
            loss = nn.functional.mse_loss(out, x)
            return (loss, out) if hf else loss

        state = opt.state
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            while True:
                opt.step(closure)
                st = state[next(iter(model.parameters()))]
                spent = st["func_evals"] + 2 * st["curvature_products"]
                if spent >= budget:
                    break
        results.append((name, recon(model), spent, time.perf_counter() - start))

    full_batch("HessianFree (GN)", lambda p: optim.HessianFree(p, damping=1.0, cg_max_iter=50), hf=True)
    full_batch("L-BFGS", lambda p: optim.LBFGS(p, history=20, max_iter=10))
    full_batch("nonlinear CG (PR)", lambda p: optim.ConjugateGradient(p, max_iter=10, restart_every=50))

    def minibatch(name, make, lrs):
        best = None
        for lr in lrs:
            model = autoencoder(seed)
            opt = make(model.parameters(), lr)
            g = torch.Generator().manual_seed(seed)
            start, spent = time.perf_counter(), 0.0
            while spent < budget:
                for idx in torch.randperm(n, generator=g).split(64):
                    opt.zero_grad()
                    nn.functional.mse_loss(model(x[idx]), x[idx]).backward()
                    opt.step()
                    spent += len(idx) / n
                    if spent >= budget:
                        break
            r = recon(model)
            if best is None or r < best[1]:
                best = (f"{name} (lr={lr:g})", r, spent, time.perf_counter() - start)
        results.append(best)

    grid = [0.03, 0.1, 0.3]
    minibatch("SGD", lambda p, lr: optim.SGD(p, lr=lr), grid)
    minibatch("SGD+momentum 0.9", lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9), [lr / 10 for lr in grid])
    minibatch("SGD+Nesterov 0.9", lambda p, lr: optim.SGD(p, lr=lr, momentum=0.9, nesterov=True), [lr / 10 for lr in grid])
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=400, help="gradient-equivalent evaluations per method")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"torch {torch.__version__}")
    print("\n| model | path | HVP / gradient | GN product / gradient |\n|---|---|---|---|")
    for name, path, h, g in product_costs(threads=2):
        print(f"| {name} | {path} | {h:.2f} | {g:.2f} |")
    print(f"\nDeep autoencoder 64-128-64-32-8-32-64-128-64 (sigmoid), digits, budget {args.budget:g} gradient-equivalents")
    print("\n| method | reconstruction MSE | gradient-equivalents | wall time (s) |\n|---|---|---|---|")
    for name, r, spent, secs in race(args.budget, args.seed):
        print(f"| {name} | {r:.5f} | {spent:.0f} | {secs:.1f} |")


if __name__ == "__main__":
    main()
