"""One device run: correctness of every optimizer, second-order method and instrument on CUDA
(against the same code on the CPU and against torch.optim on CUDA). Prints PASS/FAIL lines and
exits non-zero on a failure. Timing is bench/step_speed.py --device cuda.

    python bench/gpu_check.py
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys

import torch
from torch import nn

from deepdescent import diagnostics as dg
from deepdescent import optim
from deepdescent.lab.optimizers import OPTIMIZERS
from deepdescent.curvature.spectrum import lanczos
from deepdescent.diagnostics.instruments import StepContext
from deepdescent.schedules import LinearDecay

FAILED: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name} {detail}", flush=True)
    if not ok:
        FAILED.append(name)


#: Every first-order variant of the registry (the lab's list), at its default learning rate.
CONFIGS = {name: (lambda p, o=o: o.make(p, None)) for name, o in OPTIMIZERS.items() if o.algorithm is not None}
EAGER_ONLY = {name for name, o in OPTIMIZERS.items() if o.algorithm is not None and not o.algorithm.fused}


def trajectory(device: str, make, steps: int = 60, dtype=torch.float32, theta: bool = True):
    """Parameters after ``steps`` steps; ``theta``: θ rather than Nesterov's look-ahead point."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(37, 5), (5,), (3, 4, 2), ()]
    params = [torch.randn(s, generator=gen, dtype=dtype).to(device).requires_grad_() for s in shapes]
    a = [torch.rand(s, generator=gen, dtype=dtype).to(device) + 0.1 for s in shapes]
    cs = [[torch.randn(s, generator=gen, dtype=dtype).to(device) for s in shapes] for _ in range(steps)]
    opt = make([{"params": params[:2]}, {"params": params[2:], "lr": 0.02}])
    sched = LinearDecay(opt, tau=steps // 2)
    for k in range(steps):
        for p, ai, ci in zip(params, a, cs[k]):
            p.grad = ai * p.detach() + ci
        opt.step()
        sched.step()
    with opt.at_theta() if theta and hasattr(opt, "at_theta") else contextlib.nullcontext():
        return [p.detach().cpu().double() for p in params]


def main() -> int:
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, make in CONFIGS.items():
        cpu = trajectory("cpu", make)
        for path in ("eager", "fused"):
            if name in EAGER_ONLY and path == "fused":
                continue
            def made(p, make=make, path=path):
                opt = make(p)
                opt.impl = path
                return opt
            gpu = trajectory("cuda", made)
            err = max(((c - g).abs().max() / (c.abs().max() + 1)).item() for c, g in zip(cpu, gpu))
            check(f"cuda {path} == cpu: {name}", err < 1e-5, f"(max rel err {err:.1e})")
    # mixed precision: bfloat16/float16 parameters, float32 state, same rounding as the CPU's fused loop
    for name, make in CONFIGS.items():
        if name in EAGER_ONLY:
            continue
        for dtype in (torch.bfloat16, torch.float16):
            cpu = trajectory("cpu", make, dtype=dtype)
            gpu = trajectory("cuda", make, dtype=dtype)
            err = max(((c - g).abs().max() / (c.abs().max() + 1)).item() for c, g in zip(cpu, gpu))
            ulp = torch.finfo(dtype).eps
            check(f"cuda fused == cpu fused, {dtype}: {name}", err <= 2 * ulp, f"(max rel err {err / ulp:.2f} ulp)")
    # the per-group plan of the device step follows changes between steps
    pf, pe = ([torch.nn.Parameter(torch.linspace(-1, 1, 3000, device="cuda")),
               torch.nn.Parameter(torch.linspace(2, 3, 700, device="cuda"))] for _ in range(2))
    of, oe = optim.SGD(pf, lr=0.05), optim.SGD(pe, lr=0.05, impl="eager")
    gen = torch.Generator(device="cuda").manual_seed(0)
    worst = 0.0
    for k in range(8):
        grads = [torch.randn(p.shape, generator=gen, device="cuda") for p in pf]
        for i, (x, y, g) in enumerate(zip(pf, pe, grads)):
            x.grad, y.grad = (None, None) if (k == 2 and i == 1) else (g.clone(), g.clone())
        if k == 3:
            pf[0].data, pe[0].data = pf[0].data.clone(), pe[0].data.clone()
        if k == 4:
            for o in (of, oe):
                o.param_groups[0]["momentum"] = 0.9
        if k == 6:
            of.load_state_dict(copy.deepcopy(oe.state_dict()))
        of.step()
        oe.step()
        worst = max(worst, max((x - y).abs().max().item() for x, y in zip(pf, pe)))
    check("cuda device plan follows changes (missing grad, new memory, new state, loaded state)", worst < 1e-5,
          f"(max abs err {worst:.1e})")
    # nonfinite="propagate": no check, the NaN reaches the parameter (as in torch.optim)
    p = torch.nn.Parameter(torch.ones(4, device="cuda"))
    o = optim.SGD([p], lr=0.5, nonfinite="propagate")
    p.grad = torch.tensor([1.0, math.nan, 1.0, 1.0], device="cuda")
    o.step()
    check("cuda nonfinite='propagate'", math.isnan(p[1].item()) and p[0].item() == 0.5 and o.skipped_steps == 0)
    # parity with torch.optim on CUDA
    for name, ours, theirs in [
        ("adam", lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2, fused=True)),
        ("nesterov-torch", lambda p: optim.SGD(p, lr=0.03, momentum=0.9, nesterov=True, convention="torch"),
         lambda p: torch.optim.SGD(p, lr=0.03, momentum=0.9, nesterov=True)),
        ("adadelta", lambda p: optim.AdaDelta(p, rho=0.9), lambda p: torch.optim.Adadelta(p)),
    ]:
        a, b = trajectory("cuda", ours, theta=False), trajectory("cuda", theirs, theta=False)
        err = max(((x - y).abs().max() / (x.abs().max() + 1)).item() for x, y in zip(a, b))
        check(f"cuda parity with torch.optim: {name}", err < 1e-5, f"(max rel err {err:.1e})")
    # a non-finite gradient on CUDA leaves everything unchanged
    p = torch.randn(1000, device="cuda", requires_grad=True)
    opt = optim.Adam([p])
    p.grad = torch.randn(1000, device="cuda")
    opt.step()
    before = p.detach().clone(), opt.state[p]["exp_avg"].clone()
    p.grad[17] = math.nan
    opt.step()
    check("cuda non-finite step skipped", torch.equal(before[0], p.detach()) and torch.equal(before[1], opt.state[p]
          ["exp_avg"]) and opt.skipped_steps == 1)
    # second-order methods on CUDA, against the CPU
    for name, make, gn in [("lbfgs", lambda q: optim.LBFGS(q, max_iter=5), False),
                           ("cg", lambda q: optim.ConjugateGradient(q, max_iter=5), False),
                           ("bfgs", lambda q: optim.BFGS(q, max_iter=5), False),
                           ("hessian-free", lambda q: optim.HessianFree(q, cg_max_iter=20), True),
                           ("newton", lambda q: optim.Newton(q, damping=1e-2), False)]:
        finals = []
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double().to(device)
            x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
            y = torch.sin(x.sum(1, keepdim=True))
            o = make(model.parameters())

            def closure():
                out = model(x)
                loss = nn.functional.mse_loss(out, y)
                return (loss, out) if gn else loss
            for _ in range(3):
                o.step(closure)
            finals.append(float(nn.functional.mse_loss(model(x), y).detach()))
        check(f"cuda == cpu: {name}", math.isclose(finals[0], finals[1], rel_tol=1e-6),
              f"(losses {finals[0]:.6g} / {finals[1]:.6g})")
    # the lab's engine on CUDA (`deepdescent bench --device cuda`), against the same members on the CPU
    from deepdescent.lab import engine, optimizers, problems

    for prob, opt_name in [("quadratic_deep", "Adam"), ("deep_linear", "Nesterov"), ("deep_linear", "AdaDelta"),
                           ("quadratic_deep", "L-BFGS")]:
        problem, spec = problems.problem(prob), optimizers.optimizer(opt_name)
        lr = spec.default_lr
        if spec.kind == "first":
            runs = {d: engine.run_vectorized(problem, spec, [lr], [0, 1], quick=True, device=d) for d in ("cpu", "cuda")}
        else:
            runs = {d: [engine.run_member(problem, spec, lr, 0, quick=True, device=d)] for d in ("cpu", "cuda")}
        err = max(abs(a.train_loss[-1] - b.train_loss[-1]) / max(1e-12, abs(a.train_loss[-1]))
                  for a, b in zip(runs["cpu"], runs["cuda"]))
        check(f"lab engine on cuda == cpu: {prob}/{opt_name}", err < 1e-3, f"(final loss rel diff {err:.1e})")
    # instruments on CUDA
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).cuda()
    x, y = torch.randn(64, 8, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    ctx = StepContext(model, nn.functional.cross_entropy, x, y, None, None, 0, "train",
                      {"initial_params": [p.detach().clone() for p in model.parameters()]})
    op, n, like = ctx.flat_hvp()
    r = lanczos(op, n, k=60, dtype=like.dtype, device=like.device)
    exact = torch.linalg.eigvalsh(torch.stack([op(e) for e in torch.eye(n, device="cuda")]).double())
    check("cuda Lanczos λmax", abs(r.lambda_max - exact[-1].item()) <= 1e-3 * abs(exact[-1].item()),
          f"({r.lambda_max:.5g} vs {exact[-1].item():.5g})")
    values = dg.GradientNoise().measure(ctx)
    check("cuda gradient noise (vmap)", values["vmap"] and math.isfinite(values["b_simple"]))
    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
