"""Every optimizer and mode against the float64 transcription of its algorithm box, over 120
steps, with two param groups of different hyperparameters, weight decay and LinearDecay."""

from __future__ import annotations

import pytest
import torch

import reference as ref
from deepdescent import executor, optim
from deepdescent.algorithms import REGISTRY
from deepdescent.schedules import LinearDecay

STEPS, TAU, FINAL = 120, 60, 0.05
#: Steps on Triton's interpreter (a tenth of a second per launch): the kernel is the same every step,
#: and 30 steps take the schedule half way
TRITON_STEPS = 30
SHAPES = [[(7, 5), (5,)], [(3, 4, 2), ()]]  # group 0, group 1 (a 0-dim parameter too)

# name: (our class, per-group kwargs, reference class, per-group reference kwargs)
CASES = {
    "sgd": (optim.SGD, [dict(lr=0.05), dict(lr=0.02, weight_decay=0.1)], ref.Sgd,
            [dict(), dict(weight_decay=0.1)]),
    "momentum": (optim.SGD, [dict(lr=0.03, momentum=0.9), dict(lr=0.01, momentum=0.5, weight_decay=0.05)],
                 ref.Sgd, [dict(momentum=0.9), dict(momentum=0.5, weight_decay=0.05)]),
    "nesterov": (optim.SGD, [dict(lr=0.03, momentum=0.9, nesterov=True),
                             dict(lr=0.01, momentum=0.7, nesterov=True, weight_decay=0.05)],
                 ref.Sgd, [dict(momentum=0.9, nesterov=True), dict(momentum=0.7, nesterov=True, weight_decay=0.05)]),
    "adagrad": (optim.AdaGrad, [dict(lr=0.1), dict(lr=0.05, eps=1e-3, weight_decay=0.1)], ref.AdaGrad,
                [dict(), dict(eps=1e-3, weight_decay=0.1)]),
    "rmsprop": (optim.RMSProp, [dict(lr=0.01), dict(lr=0.003, rho=0.99, eps=1e-4, weight_decay=0.1)], ref.RmsProp,
                [dict(), dict(rho=0.99, eps=1e-4, weight_decay=0.1)]),
    "rmsprop_momentum": (optim.RMSProp, [dict(lr=0.003, momentum=0.9), dict(lr=0.001, rho=0.95, momentum=0.5)],
                         ref.RmsProp, [dict(momentum=0.9), dict(rho=0.95, momentum=0.5)]),
    "rmsprop_nesterov": (optim.RMSProp, [dict(lr=0.003, momentum=0.9, nesterov=True),
                                         dict(lr=0.001, rho=0.95, momentum=0.6, nesterov=True, weight_decay=0.05)],
                         ref.RmsProp, [dict(momentum=0.9, nesterov=True),
                                       dict(rho=0.95, momentum=0.6, nesterov=True, weight_decay=0.05)]),
    "adam": (optim.Adam, [dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)], ref.Adam,
             [dict(), dict(betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)]),
    "adadelta": (optim.AdaDelta, [dict(), dict(lr=0.5, rho=0.9, eps=1e-5, weight_decay=0.1)], ref.AdaDelta,
                 [dict(), dict(rho=0.9, eps=1e-5, weight_decay=0.1)]),
    # a large δ (0.1): where δ sits (inside or outside the root, before or after the bias
    # correction) changes the iterates by far more than the tolerance
    "adam_large_eps": (optim.Adam, [dict(lr=0.01, eps=0.1), dict(lr=0.003, betas=(0.8, 0.99), eps=0.3)], ref.Adam,
                       [dict(eps=0.1), dict(betas=(0.8, 0.99), eps=0.3)]),
    "adam_amsgrad": (optim.Adam, [dict(lr=0.01, amsgrad=True), dict(lr=0.003, betas=(0.8, 0.99), amsgrad=True,
                                                                 weight_decay=0.1)], ref.Adam,
                     [dict(amsgrad=True), dict(betas=(0.8, 0.99), amsgrad=True, weight_decay=0.1)]),
    "rmsprop_large_eps": (optim.RMSProp, [dict(lr=0.01, eps=0.1), dict(lr=0.003, momentum=0.9, eps=0.3)], ref.RmsProp,
                          [dict(eps=0.1), dict(momentum=0.9, eps=0.3)]),
}


def _registered_cases() -> dict:
    """Every registered algorithm the hand-written cases leave out, from its spec: two groups (the
    second with other betas, a large δ and weight decay where it has them) against its float64 reference."""
    covered = {cls for cls, *_ in CASES.values()}
    out = {}
    for name, spec in REGISTRY.items():
        cls = optim.optimizer_class(spec)
        if cls in covered or name not in ref.REFERENCES:  # (test_every_algorithm_has_a_reference)
            continue
        # δ = 0.1 and λ = 0.5: where δ sits and when the decay applies change the iterates visibly
        other = {k: v for k, v in (("betas", (0.8, 0.99)), ("eps", 0.1), ("weight_decay", 0.5)) if k in spec.names}
        for label, options in [("", {}), *((f"_{'_'.join(o)}", dict(o)) for o in spec.structures if o)]:
            key = name.lower() + label
            out[key] = (cls, [dict(lr=0.01, **options), dict(lr=0.003, **options, **other)], ref.REFERENCES[name],
                        [dict(options), dict(options, **other)])
    return out


CASES.update(_registered_cases())
DEFAULT_LR = {name: spec.defaults()["lr"] for name, spec in REGISTRY.items()}


class Problem:
    """g_k(θ) = a⊙θ + c_k: a gradient that depends on the point (so Nesterov's interim point
    matters) and a fresh random term each step (so no component settles at zero)."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        shapes = [s for group in SHAPES for s in group]
        # float32 values, held exactly in float64 for the reference
        self.theta0 = [torch.randn(s, generator=gen) for s in shapes]
        self.a = [torch.rand(s, generator=gen) * 0.9 + 0.1 for s in shapes]
        self.c = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(STEPS)]
        self.k = 0

    def grad(self, points):
        return [a * p + c for a, c, p in zip(self.a, self.c[self.k], points)]


def _split(items):
    n0 = len(SHAPES[0])
    return [items[:n0], items[n0:]]


def run_reference(case: str, problem: Problem, low: torch.dtype | None = None,
                  steps: int = STEPS) -> list[torch.Tensor]:
    """The float64 box over the problem's steps. ``low``: the parameters live in that precision
    (rounded after every step) and the oracle is ``low_precision_grad``'s."""
    _, ours, ref_cls, ref_kwargs = CASES[case]
    rounded = (lambda t: t.to(low).double()) if low else (lambda t: t)
    theta = [rounded(t.double()) for t in problem.theta0]
    groups = _split(list(range(len(theta))))
    refs = [ref_cls([theta[i] for i in idx], **kw) for idx, kw in zip(groups, ref_kwargs)]
    lr0 = [kw.get("lr", DEFAULT_LR[CASES[case][0].algorithm.name]) for kw in ours]
    for k in range(steps):
        problem.k = k
        for g, (idx, r) in enumerate(zip(groups, refs)):
            sub = [theta[i] for i in idx]
            a = [problem.a[i].double() for i in idx]
            c = [problem.c[k][i].double() for i in idx]
            if low:
                def oracle(pts, idx=idx):
                    return [low_precision_grad(problem, pts, low, idx)[j].double() for j in range(len(idx))]
            else:
                def oracle(pts, a=a, c=c):
                    return [ai * p + ci for ai, ci, p in zip(a, c, pts)]
            r.step(sub, oracle, ref.linear_decay(k, lr0[g], TAU, FINAL))
            for i, t in zip(idx, sub):
                theta[i] = rounded(t)
    return theta


def low_precision_grad(problem: Problem, points, low: torch.dtype, idx=None) -> list[torch.Tensor]:
    """The oracle at low-precision points (of the parameters ``idx``, all by default): float32
    arithmetic at the rounded point, the gradient rounded to ``low``."""
    idx = range(len(points)) if idx is None else idx
    return [(problem.a[i] * p.to(low).float() + problem.c[problem.k][i]).to(low) for i, p in zip(idx, points)]


def train(case: str, problem: Problem, mode: str, impl: str = "auto", dtype: torch.dtype = torch.float32,
          grad=None, steps: int = STEPS) -> tuple[list[torch.Tensor], object]:
    """Our optimizer over the problem's steps (parameters of ``dtype``; ``grad(points)`` the
    gradient oracle, the problem's by default): the parameters and the optimizer."""
    cls, kwargs, _, _ = CASES[case]
    grad = grad or problem.grad
    params = [t.to(dtype, copy=True).requires_grad_() for t in problem.theta0]
    groups = [dict(params=p, **kw) for p, kw in zip(_split(params), kwargs)]
    opt = cls(groups, impl=impl)
    sched = LinearDecay(opt, tau=TAU, final_factor=FINAL)

    def set_grads():
        for p, g in zip(params, grad([p.detach() for p in params])):
            p.grad = g

    for k in range(steps):
        problem.k = k
        if mode == "closure":
            opt.step(set_grads)
        else:
            set_grads()
            opt.step()
        sched.step()
    return params, opt


def run_ours(case: str, problem: Problem, mode: str, impl: str = "auto", steps: int = STEPS) -> list[torch.Tensor]:
    params, opt = train(case, problem, mode, impl, steps=steps)
    with opt.at_theta():
        return [p.detach().clone() for p in params]


def _modes(case):
    return ["closure", "lookahead"] if "nesterov" in case else ["plain", "closure"]


#: Cases whose Triton kernel generates nothing the others do not (the same ops as adam/rmsprop):
#: Triton's interpreter takes ~10 s a case, so they run on the other paths only.
TRITON_ALIKE = {"adam_large_eps", "rmsprop_large_eps", "adamw", "adamw_amsgrad", "adam_amsgrad"}


def _path_cases():
    """Every case × mode × path, except that Triton's interpreter (seconds per case) runs the
    closure mode only where it changes what the kernel computes (Nesterov's interim point), and
    not the cases of TRITON_ALIKE."""
    for c in CASES:
        for m in _modes(c):
            for path in ("eager", "eager-chunked", "fused", "triton"):
                if path != "triton" or (c not in TRITON_ALIKE and ("nesterov" in c or m == "plain")):
                    yield c, m, path


@pytest.mark.parametrize("case,mode,path", list(_path_cases()))
def test_matches_float64_box(case, mode, path, monkeypatch, request):
    """Every execution path: ``eager`` multi-tensor ops (``eager-chunked``: CPU chunks of 4
    elements, so tensors are cut into flat views and grouped), the ``fused`` generated C++ loop
    and the generated Triton kernel of the GPU path (``triton``, in Triton's interpreter)."""
    monkeypatch.setattr(executor, "CPU_CHUNK_NUMEL", 4 if path == "eager-chunked" else 1 << 16)
    if path == "triton":
        request.getfixturevalue("triton_interpreter")
    problem, steps = Problem(seed=sum(map(ord, case))), TRITON_STEPS if path == "triton" else STEPS
    expected = run_reference(case, problem, steps=steps)
    got = run_ours(case, problem, mode, impl={"triton": "fused"}.get(path, path.split("-")[0]), steps=steps)
    for i, (e, g) in enumerate(zip(expected, got)):
        scale = e.abs().max().item() + 1.0
        err = (g.double() - e).abs().max().item() / scale
        assert err < 2e-6, f"{case}/{mode}: tensor {i} relative error {err:.2e}"


def test_every_algorithm_has_a_reference():
    """A registered algorithm is checked against an independent float64 transcription (except
    delta-bar-delta, whose per-element rates test_drop_in transcribes)."""
    missing = sorted(set(REGISTRY) - set(ref.REFERENCES) - {"DeltaBarDelta"})
    assert not missing, f"no float64 reference in tests/reference.py for {missing}"
