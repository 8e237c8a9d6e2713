"""Experiment 4 — saddle points (Dauphin et al. 2014, §8.2.3).

Newton's method as Algorithm 8.8 writes it (full steps −H⁻¹g through an indefinite H), saddle-free
Newton ((|H| + αI)Δθ = −g, |H| = Q|Λ|Qᵀ, α = 0.1, an Armijo line search) and gradient descent, each started next to a saddle point: on the
lab's saddle x² − y² + y⁴/4 (saddle at 0, minima at (0, ±√2)) and on its linear autoencoder 20-5-20
(only global minima and saddle points, Baldi & Hornik 1989; a small initialization starts next to
the saddle at 0). Where each ends is read off the Hessian's extreme eigenvalues there, from the
curvature instruments' Lanczos iteration: λmin < 0 with a vanishing gradient is a saddle.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from deepdescent import optim
from deepdescent.curvature import spectrum
from deepdescent.lab import problems
from deepdescent.lab.science.experiment import Experiment, Summary, judged, num

SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(newton_steps=5, gd_steps=200, net_newton_steps=3, net_gd_steps=300, seeds=2),
    "cpu": dict(newton_steps=30, gd_steps=2000, net_newton_steps=60, net_gd_steps=3000, seeds=3),
    "full": dict(newton_steps=50, gd_steps=5000, net_newton_steps=40, net_gd_steps=10000, seeds=5),
}
#: The 2-D saddle starts at the same point whatever the seed (it has no data); the network's
#: initialization and data come from the seed, so it runs every seed.
SEEDED = ("linear_autoencoder",)
#: Saddle-free Newton is damped, as Dauphin et al.'s: (|H| + αI)Δθ = −g, with an Armijo line search (near
#: the saddle |H| has eigenvalues near 0, and full undamped steps through them are huge).
SFN_DAMPING = 0.1
METHODS = ("Newton (Alg. 8.8)", "saddle-free Newton", "gradient descent")


def _make(method: str, params, lr: float):
    if method == METHODS[0]:
        return optim.Newton(params, indefinite="solve")
    if method == METHODS[1]:
        return optim.Newton(params, saddle_free=True, damping=SFN_DAMPING, line_search="armijo")
    return optim.SGD(params, lr=lr)


def extremes(model: torch.nn.Module, loss_fn) -> dict[str, float]:
    """‖g‖, λmin and λmax of the loss's Hessian at the model's parameters (Lanczos, the curvature
    instruments' core; exact for n ≤ its iteration count)."""
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    flat_g = torch.cat([g.reshape(-1) for g in grads])
    n = flat_g.numel()

    def op(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat_g, params, v.to(flat_g.dtype), retain_graph=True)
        return torch.cat([h.reshape(-1) for h in hv]).detach()

    res = spectrum.lanczos(op, n, k=min(n, 60), generator=torch.Generator().manual_seed(0), dtype=flat_g.dtype)
    return {"grad_norm": float(flat_g.detach().norm()), "lambda_min": res.lambda_min, "lambda_max": res.lambda_max,
            "converged": bool(res.converged)}


def _train(problem: str, method: str, steps: int, lr: float, seed: int = 0) -> dict[str, Any]:
    task = problems.problem(problem).build(seed, False)
    model = task.model
    opt = _make(method, model.parameters(), lr)

    def loss_fn():
        return task.loss(model(task.x_train), task.y_train)

    curve = [float(loss_fn().detach())]
    for _ in range(steps):
        if isinstance(opt, optim.Newton):
            opt.step(loss_fn)
        else:
            opt.zero_grad()
            loss_fn().backward()
            opt.step()
        curve.append(float(loss_fn().detach()))
        if not math.isfinite(curve[-1]):
            break
    end = extremes(model, loss_fn) if math.isfinite(curve[-1]) else {}
    return {"curve": curve, "final": curve[-1], **end,
            "theta": [float(v) for v in next(model.parameters()).detach().flatten()[:2]]}


def run(scale: str, device: str = "cpu") -> dict[str, Any]:
    s = SIZES[scale]
    out: dict[str, Any] = {"scale": scale, **s, "runs": {}}
    for problem, (newton, gd, lr) in {"saddle": (s["newton_steps"], s["gd_steps"], 0.01),
                                      "linear_autoencoder": (s["net_newton_steps"], s["net_gd_steps"], 0.5)}.items():
        out["runs"][problem] = {m: _train(problem, m, gd if m == METHODS[2] else newton, lr) for m in METHODS}
        if problem in SEEDED:  # the other seeds: where each method ends, not its curve
            out.setdefault("other_seeds", {})[problem] = [
                {m: _where(_train(problem, m, gd if m == METHODS[2] else newton, lr, seed)) for m in METHODS}
                for seed in range(1, s["seeds"])]
    return out


def _where(r: dict[str, Any]) -> dict[str, bool]:
    return {"at_saddle": _at_saddle(r), "escaped": _escaped(r)}


def _at_saddle(r: dict[str, Any]) -> bool:
    """Ended at a critical point (‖g‖ ≤ 10⁻³) where the Hessian has a clearly negative eigenvalue."""
    return (num(r.get("grad_norm")) <= 1e-3
            and num(r.get("lambda_min")) < -1e-3 * max(1.0, abs(num(r.get("lambda_max")))))


def _escaped(r: dict[str, Any]) -> bool:
    """Ended away from a saddle with a loss clearly under the starting one."""
    return not _at_saddle(r) and num(r["final"]) < r["curve"][0] - 1e-3 * max(1.0, abs(r["curve"][0]))


def summarize(raw: dict[str, Any]) -> Summary:
    parts, trapped, escape = [], [], []
    for problem, runs in raw["runs"].items():
        cells = [f"{m}: loss {num(r['final']):.3g}, λmin {num(r.get('lambda_min')):.3g}, ‖g‖ "
                 f"{num(r.get('grad_norm')):.2g}" for m, r in runs.items()]
        parts.append(f"{problem} — " + "; ".join(cells))
        ends = [{m: _where(r) for m, r in runs.items()}, *raw.get("other_seeds", {}).get(problem, [])]
        trapped += [e[METHODS[0]]["at_saddle"] for e in ends]
        escape += [e[METHODS[1]]["escaped"] and e[METHODS[2]]["escaped"] for e in ends]
        if len(ends) > 1:
            parts[-1] += f" (seed 0; {len(ends)} seeds run)"
    newton_trapped, others_escape = all(trapped), all(escape)
    return Summary(
        ours=" | ".join(parts), comparable=False,
        why="the lab's 2-D saddle and a 20-5-20 linear autoencoder (Dauphin et al.: MNIST/CIFAR networks, "
            "saddle-free Newton in a Krylov subspace); exact Hessians here",
        **judged({"Newton is drawn to the saddle": tuple(trapped), "the other methods escape": tuple(escape)},
                 newton_trapped or others_escape),
        explanation=("Newton ends at a saddle (λmin < 0) on every problem" if newton_trapped else
                     "Newton does not end at a saddle everywhere")
                    + ("; saddle-free Newton and gradient descent escape (lower loss, not at a saddle)" if others_escape else
                       "; saddle-free Newton or gradient descent ends at a saddle somewhere"),
        numbers={f"{p}/{m}/lambda_min": r.get("lambda_min", math.nan) for p, rs in raw["runs"].items()
                 for m, r in rs.items()})


def figure(raw: dict[str, Any], fig: Any) -> None:
    for i, (problem, runs) in enumerate(raw["runs"].items()):
        ax = fig.add_subplot(1, len(raw["runs"]), i + 1)
        for m, r in runs.items():
            xs = [j / max(1, len(r["curve"]) - 1) for j in range(len(r["curve"]))]
            ax.plot(xs, r["curve"], label=f"{m} (λmin {r.get('lambda_min', math.nan):.2g})")
        ax.set(xlabel="fraction of the run", ylabel="training loss", title=problem)
        ax.legend(fontsize=8)


EXPERIMENT = Experiment(
    key="saddles", title="Saddle points: Newton against saddle-free Newton and gradient descent",
    claim="Newton's method is attracted to saddle points; gradient descent and saddle-free Newton escape them "
          "(§8.2.3)",
    source="Dauphin et al. (2014)",
    published="Newton converges to saddles (λmin < 0); saddle-free Newton escapes where SGD plateaus",
    budget=lambda scale: f"{SIZES[scale]['newton_steps']}/{SIZES[scale]['net_newton_steps']} Newton steps, "
                         f"{SIZES[scale]['gd_steps']}/{SIZES[scale]['net_gd_steps']} gradient steps (saddle/network); "
                         f"the network {SIZES[scale]['seeds']} seeds, each must agree (the saddle has no seed)",
    run=run, summarize=summarize, figure=figure, seeded=True)
