"""The torch.optim contract where real programs reach it: another default dtype, deepcopy and
pickle (EMA/SWA helpers, Ray/Optuna checkpoints, multiprocessing), frozen groups under
``step(closure)`` (Lightning), extra param-group keys (timm, HF), schedulers that add keys
(OneCycleLR, CyclicLR) and learning rates of any real type."""

from __future__ import annotations

import copy
import fractions
import multiprocessing as mp
import pickle
import warnings

import numpy as np

import pytest
import torch
from resume_helper import CONFIGS
from torch import nn

from deepdescent import kernels, optim

ALL = dict(CONFIGS)  # every registered first-order algorithm, in each variant


def _model(seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def _train(model: nn.Module, opt, steps: range, closure: bool = False) -> None:
    for k in steps:
        gen = torch.Generator().manual_seed(1000 + k)
        dtype = next(model.parameters()).dtype
        x, y = torch.randn(16, 6, generator=gen, dtype=dtype), torch.randn(16, 2, generator=gen, dtype=dtype)

        def loss_fn():
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _make(name: str, params, impl: str):
    opt = ALL[name](params)
    if impl == "eager":
        opt.impl = impl  # the eager path (and its non-finite check) where the fused one would serve
    return opt


@pytest.mark.parametrize("impl", ["auto", "eager"])
@pytest.mark.parametrize("default", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", list(ALL))
def test_another_default_dtype_changes_nothing(name, default, impl):
    """Scientific code sets float64 by default: every internal tensor has an explicit dtype, so
    float32 parameters train bit for bit as under the float32 default, on every path."""
    model = _model()
    _train(model, _make(name, model.parameters(), impl), range(4))
    expected = _params(model)
    model = _model()
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        _train(model, _make(name, model.parameters(), impl), range(4))
    finally:
        torch.set_default_dtype(old)
    for p, q in zip(_params(model), expected):
        assert torch.equal(p, q)


@pytest.mark.parametrize("name", list(ALL))
def test_deepcopy_continues_bit_identically(name):
    model = _model()
    opt = ALL[name](model.parameters())
    _train(model, opt, range(3))
    twin_model, twin_opt = copy.deepcopy((model, opt))  # as EMA/SWA helpers copy them
    _train(model, opt, range(3, 7))
    _train(twin_model, twin_opt, range(3, 7))
    for p, q in zip(_params(model), _params(twin_model)):
        assert torch.equal(p, q)
    assert twin_opt.impl == opt.impl and twin_opt.nonfinite == opt.nonfinite
    assert twin_opt._interim_mode == opt._interim_mode


def _continue_elsewhere(payloads: dict[str, bytes], queue) -> None:
    results = {}
    for name, payload in payloads.items():
        model, opt = pickle.loads(payload)
        _train(model, opt, range(3, 7))
        results[name] = (_params(model), opt.skipped_steps)
    queue.put(pickle.dumps(results))


PICKLED = ["nesterov", "rmsprop-nesterov", "adam", "deltabardelta"]


@pytest.fixture(scope="module")
def continued_in_a_new_process():
    """Each optimizer of PICKLED trained 3 steps, pickled with its model, and continued for 4 more
    in one fresh (spawned) process; returns the originals, the pickles and that process's results."""
    originals, payloads = {}, {}
    for name in PICKLED:
        model = _model()
        opt = ALL[name](model.parameters()) if name != "adam" else optim.Adam(model.parameters(), nonfinite="raise")
        _train(model, opt, range(3))
        originals[name], payloads[name] = (model, opt), pickle.dumps((model, opt))
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_continue_elsewhere, args=(payloads, queue))
    proc.start()
    results = pickle.loads(queue.get(timeout=180))
    proc.join(60)
    return originals, payloads, results


@pytest.mark.parametrize("name", PICKLED)
def test_pickle_round_trip_into_a_new_process_continues_bit_identically(name, continued_in_a_new_process):
    originals, payloads, results = continued_in_a_new_process
    model, opt = originals[name]
    _train(model, opt, range(3, 7))
    params, skipped = results[name]
    assert skipped == opt.skipped_steps
    for p, q in zip(params, _params(model)):
        assert torch.equal(p, q)
    restored = pickle.loads(payloads[name])[1]
    assert restored.nonfinite == opt.nonfinite and "differentiable" not in restored.defaults


@pytest.mark.parametrize("name", list(ALL))
def test_frozen_and_late_groups_under_step_with_a_closure(name):
    """Lightning always calls ``step(closure=...)``: a group without gradients (frozen, or whose
    gradients appear later) must not crash, for every optimizer, with weight decay too."""
    model = _model()
    head = nn.Linear(2, 2)  # never used in the loss at first: its gradients stay None
    opt = ALL[name]([{"params": model.parameters()}, {"params": head.parameters(), "lr": 0.01}])
    for group in opt.param_groups:
        group["weight_decay"] = 1e-3
    opt.add_param_group({"params": [], "lr": 0.1})  # an empty group too
    _train(model, opt, range(3), closure=True)
    assert all(p.grad is None for p in head.parameters())
    before = [p.detach().clone() for p in head.parameters()]
    x, y = torch.randn(16, 6), torch.randn(16, 2)

    def with_head():  # the head's gradients appear
        opt.zero_grad()
        loss = nn.functional.mse_loss(head(model(x)), y)
        loss.backward()
        return loss
    for _ in range(2):
        opt.step(with_head)
    assert all(not torch.equal(p, b) for p, b in zip(head.parameters(), before))


def test_extra_group_keys_are_kept_and_ignored_by_the_math():
    """timm's layer decay and user tags put their own keys in a group: torch keeps them."""
    a, b = _model(), _model()
    tagged = optim.Adam([{"params": a.parameters(), "lr_scale": 0.5, "tag": "backbone"}], lr=1e-2)
    plain = optim.Adam(b.parameters(), lr=1e-2)
    _train(a, tagged, range(4))
    _train(b, plain, range(4))
    assert tagged.param_groups[0]["lr_scale"] == 0.5 and tagged.param_groups[0]["tag"] == "backbone"
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    tagged.load_state_dict(tagged.state_dict())
    assert tagged.param_groups[0]["lr_scale"] == 0.5


@pytest.mark.parametrize("make_sched", [
    lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=20, cycle_momentum=True,
                                                  base_momentum=0.8, max_momentum=0.95),
    lambda o: torch.optim.lr_scheduler.CyclicLR(o, base_lr=0.01, max_lr=0.1, step_size_up=3, cycle_momentum=True,
                                                base_momentum=0.8, max_momentum=0.95),
], ids=["OneCycleLR", "CyclicLR"])
def test_schedulers_that_add_keys_never_compile_a_kernel(make_sched, monkeypatch):
    """OneCycleLR/CyclicLR add numeric keys and change momentum every step: only the keys the
    algorithm reads may enter a kernel's structure, so nothing compiles (a compilation takes
    minutes on 2 cores)."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    warm = _model()
    _train(warm, optim.SGD(warm.parameters(), lr=0.01, momentum=0.9), range(1))  # loads the standard kernels

    def no_compile(*args, **kwargs):
        raise AssertionError("a kernel was compiled")
    monkeypatch.setattr(kernels, "_compile", no_compile)
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, impl="fused")
    sched = make_sched(opt)
    for k in range(8):
        _train(model, opt, range(k, k + 1))
        sched.step()
    assert opt.param_groups[0]["momentum"] != 0.9 and set(opt.param_groups[0]) - set(opt.defaults) - {"params"}


@pytest.mark.parametrize("name", ["momentum", "nesterov", "adagrad", "rmsprop-nesterov", "adam", "adadelta"])
def test_per_group_hyperparameters_in_any_key_order_never_compile_a_kernel(name, monkeypatch):
    """HF's decay/no-decay groups list weight_decay (and tags) before the defaults are filled in;
    traced in a fresh process (no trace cached yet), such a group must map onto the standard
    kernels, not compile a new extension (minutes on 2 cores)."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    kernels.build()  # the standard extension (setup.sh built it; loading it compiles nothing)
    monkeypatch.setattr(kernels, "_TRACES", {})  # as in a new process: nothing traced yet

    def no_compile(*args, **kwargs):
        raise AssertionError("a kernel was compiled")
    monkeypatch.setattr(kernels, "_compile", no_compile)
    model = _model()
    groups = [{"weight_decay": 0.01, "lr_scale": 0.5, "params": list(model[0].parameters())},
              {"tag": "head", "weight_decay": 0.0, "params": list(model[2].parameters())}]
    opt = ALL[name](groups)
    opt.impl = "fused"
    _train(model, opt, range(2))


@pytest.mark.parametrize("lr", [np.float32(0.01), np.float64(0.01), fractions.Fraction(1, 100), 1 / 100],
                         ids=["numpy32", "numpy64", "Fraction", "float"])
@pytest.mark.parametrize("impl", ["eager", "fused"])
def test_learning_rates_of_any_real_type(lr, impl):
    if impl == "fused" and kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    a, b = _model(), _model()
    _train(a, optim.SGD(a.parameters(), lr=lr, momentum=0.9, impl=impl), range(3))
    _train(b, optim.SGD(b.parameters(), lr=float(np.float32(lr)) if isinstance(lr, np.float32) else float(lr),
                        momentum=0.9, impl=impl), range(3))
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    with pytest.raises(ValueError, match="lr must be a real number"):
        optim.SGD(a.parameters(), lr="0.01")


def test_distributed_checkpoint_state_dicts_round_trip():
    """torch.distributed.checkpoint's get/set_optimizer_state_dict (the FSDP2/DCP path) rebuild
    the dict without deepdescent's entry: it loads, and training continues bit-identically."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, range(3))
    # (the dict holds the live state tensors: a checkpoint is a copy of it)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(get_optimizer_state_dict(model, opt))
    assert "deepdescent" not in saved and "0.weight" in saved["state"]
    _train(model, opt, range(3, 6))
    expected = _params(model)
    other = _model(seed=5)
    other.load_state_dict(saved_model)
    fresh = optim.Adam(other.parameters(), lr=1e-2)
    set_optimizer_state_dict(other, fresh, saved)
    _train(other, fresh, range(3, 6))
    assert all(torch.equal(p, q) for p, q in zip(_params(other), expected))


@pytest.mark.parametrize("name", list(ALL))
def test_an_in_memory_state_dict_round_trip_continues_in_lockstep(name):
    """get/set_optimizer_state_dict on a plain module (no process group, no copy in between): the
    restored optimizer shares no state tensor with the original, so both continue in lockstep."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    model = _model()
    opt = ALL[name](model.parameters())
    _train(model, opt, range(3))
    other = _model(seed=5)
    other.load_state_dict(model.state_dict())
    restored = ALL[name](other.parameters())
    set_optimizer_state_dict(other, restored, get_optimizer_state_dict(model, opt))
    _train(model, opt, range(3, 6))
    _train(other, restored, range(3, 6))
    assert all(torch.equal(p, q) for p, q in zip(_params(other), _params(model)))


def _bad(sd: dict, edit) -> dict:
    sd = copy.deepcopy(sd)
    edit(sd)
    return sd


BAD_CHECKPOINTS = {
    "lr=nan": (lambda sd: sd["param_groups"][0].update(lr=float("nan")), "lr"),
    "lr=-1": (lambda sd: sd["param_groups"][0].update(lr=-1.0), "lr"),
    "eps=0": (lambda sd: sd["param_groups"][0].update(eps=0.0), "eps"),
    "three betas": (lambda sd: sd["param_groups"][0].update(betas=(0.9, 0.99, 0.5)), "betas"),
    "missing key": (lambda sd: sd["param_groups"][0].pop("betas"), "lacks \\['betas'\\]"),
    "string lr": (lambda sd: sd["param_groups"][0].update(lr="0.1"), "lr"),
    "wrong shape": (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(3)), "shape"),
    "integer state": (lambda sd: sd["state"][0].update(exp_avg=torch.zeros(8, 6, dtype=torch.long)), "floating"),
    "step 1.5": (lambda sd: sd["state"][0].update(step=1.5), "step"),
    "step -1": (lambda sd: sd["state"][0].update(step=-1), "step"),
    "skipped_steps": (lambda sd: sd["deepdescent"].update(skipped_steps="2"), "skipped_steps"),
    "interim_mode": (lambda sd: sd["deepdescent"].update(interim_mode="sideways"), "interim_mode"),
    "other class": (lambda sd: sd["deepdescent"].update(optimizer="SGD"), "of SGD into Adam"),
    "group count": (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "param groups"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_refused_and_changes_nothing(case):
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, range(3))
    edit, message = BAD_CHECKPOINTS[case]
    bad = _bad(opt.state_dict(), edit)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"] and after["deepdescent"] == before["deepdescent"]
    for i, s in before["state"].items():
        assert all(torch.equal(torch.as_tensor(v), torch.as_tensor(after["state"][i][k])) for k, v in s.items())


def test_hooks_run_in_torchs_order():
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, range(2))
    seen = {}
    opt.register_state_dict_post_hook(lambda o, sd: seen.update(meta="deepdescent" in sd))
    sd = opt.state_dict()
    assert seen["meta"]  # the metadata is there when post-hooks run

    def repair(o, sd):  # a pre-hook that mends a dict runs before the checks
        sd["param_groups"][0]["lr"] = 0.5
        return sd
    opt.register_load_state_dict_pre_hook(repair)
    opt.register_load_state_dict_post_hook(lambda o: seen.update(lr=o.param_groups[0]["lr"]))
    opt.load_state_dict(_bad(sd, lambda d: d["param_groups"][0].update(lr=float("nan"))))
    assert opt.param_groups[0]["lr"] == 0.5 and seen["lr"] == 0.5


# ------------------------------------------------------------------ the second-order methods
SECOND = {
    "Newton": lambda p, **k: optim.Newton(p, **k),
    "HessianFree": lambda p, **k: optim.HessianFree(p, curvature="hessian", **k),
    "CG": lambda p, **k: optim.ConjugateGradient(p, **k),
    "BFGS": lambda p, **k: optim.BFGS(p, **k),
    "L-BFGS": lambda p, **k: optim.LBFGS(p, **k),
}
_A = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)


def _quadratic(*params):
    def closure():
        x = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * x @ _A @ x - x.sum()
    return closure


@pytest.mark.parametrize("name", list(SECOND))
def test_second_order_methods_take_an_lr_that_schedulers_drive(name):
    x = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = SECOND[name]([x])
    assert opt.param_groups[0]["lr"] == 1.0  # torch.optim.LBFGS's default
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.0 if k == 0 else 1.0)  # every torch scheduler needs lr
    before = x.detach().clone()
    loss = opt.step(_quadratic(x))
    assert torch.equal(x.detach(), before)  # lr = 0: nothing moves
    assert isinstance(loss, torch.Tensor) and loss.item() == pytest.approx(_quadratic(before)().item())
    sched.step()
    for _ in range(30):
        opt.step(_quadratic(x))
    torch.testing.assert_close(x.detach(), torch.linalg.solve(_A, torch.ones(2, dtype=torch.float64)))


def test_newtons_lr_scales_its_step():
    x = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    optim.Newton([x], lr=0.5).step(_quadratic(x))
    start = torch.tensor([1.0, -1.0], dtype=torch.float64)
    newton = -torch.linalg.solve(_A, _A @ start - 1)
    torch.testing.assert_close(x.detach(), start + 0.5 * newton)


@pytest.mark.parametrize("name", list(SECOND))
def test_second_order_groups_added_later_are_optimized(name):
    a = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([-1.0], dtype=torch.float64))
    frozen = nn.Parameter(torch.zeros(1), requires_grad=False)
    opt = SECOND[name]([frozen])  # no parameter requires grad yet: allowed, as in torch
    opt.add_param_group({"params": [a]})
    opt.add_param_group({"params": [b], "tag": "late"})
    for _ in range(30):
        opt.step(_quadratic(a, b))
    torch.testing.assert_close(torch.cat([a, b]).detach(), torch.linalg.solve(_A, torch.ones(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="cannot differ per param group"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(1))], "lr": 0.5})
    assert len(opt.param_groups) == 3


@pytest.mark.parametrize("name", list(SECOND))
def test_a_group_added_after_steps_extends_the_method(name):
    """A param group added after steps (the method has memory sized for the old parameters): the
    next steps run over all parameters and reach the joint minimum (the memory grows; it used to
    fail at the next step with a size mismatch)."""
    a = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([-1.0], dtype=torch.float64))
    opt = SECOND[name]([a])
    opt.step(_quadratic(a, b))
    opt.add_param_group({"params": [b]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a line search may fail once at the minimum
        for _ in range(30):
            opt.step(_quadratic(a, b))
    torch.testing.assert_close(torch.cat([a, b]).detach(), torch.linalg.solve(_A, torch.ones(2, dtype=torch.float64)))


def test_newton_steps_under_torch_compile():
    """``torch.compile(opt.step)``: the step keeps nothing on the optimizer between its parts."""
    w = nn.Parameter(torch.tensor([1.5, -0.5], dtype=torch.float64))
    opt = optim.Newton([w])
    loss = torch.compile(opt.step, backend="eager")(lambda: 0.5 * w @ _A @ w - w.sum())
    assert isinstance(loss, torch.Tensor) and torch.allclose(
        w.detach(), torch.linalg.solve(_A, torch.ones(2, dtype=torch.float64)))


@pytest.mark.parametrize("name", ["CG", "BFGS", "L-BFGS"])
def test_closures_may_return_a_number_after_backward(name):
    """torch.optim.LBFGS accepts a closure that calls backward() and returns a float."""
    x, y = (nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64)) for _ in range(2))
    opt_x, opt_y = SECOND[name]([x]), SECOND[name]([y])

    def number():
        opt_y.zero_grad()
        loss = _quadratic(y)()
        loss.backward()
        return loss.item()
    for _ in range(3):
        opt_x.step(_quadratic(x))
        assert isinstance(opt_y.step(number), float)
    # the same iterates (autograd.grad and backward() may round the gradient differently in the last bit)
    torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="tolerance_grad"):
        SECOND[name]([x], tolerance_grad=float("nan"))
    still = SECOND[name]([x], tolerance_grad=float("inf"))  # stop at once, as torch allows
    before = x.detach().clone()
    still.step(_quadratic(x))
    assert torch.equal(x.detach(), before)
    z = nn.Parameter(torch.tensor([3.0, -2.0], dtype=torch.float64))
    default, never = SECOND[name]([z], max_iter=50), SECOND[name]([z], tolerance_grad=float("-inf"),
                                                                    tolerance_change=float("-inf"), max_iter=50)
    default.step(_quadratic(z))  # stops once the gradient is below 1e-7 ...
    z.data = torch.tensor([3.0, -2.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        never.step(_quadratic(z))  # ... -inf (torch accepts it) never stops on the gradient
    stats = [o.state[z] for o in (default, never)]
    assert stats[1]["n_iter"] + stats[1]["line_search_failures"] > stats[0]["n_iter"]


BAD_SECOND_ORDER = {
    "lr=-1": (lambda sd: sd["param_groups"][0].update(lr=-1.0), "lr=-1"),
    "line_search": (lambda sd: sd["param_groups"][0].update(line_search="exact"), "line_search='exact'"),
    "missing key": (lambda sd: sd["param_groups"][0].pop("max_iter"), "lacks \\['max_iter'\\]"),
    "counter": (lambda sd: sd["state"][0].update(n_iter=-2), "'n_iter'=-2"),
    "matrix shape": (lambda sd: sd["state"][0].update(inverse_hessian=torch.eye(3, dtype=torch.float64)), "3, 3"),
    "integer matrix": (lambda sd: sd["state"][0].update(inverse_hessian=torch.eye(2, dtype=torch.long)), "floating"),
    "group count": (lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0])), "param groups"),
    "not a dict": (lambda sd: sd.update(state=[]), "'state' and 'param_groups'"),
}


@pytest.mark.parametrize("case", list(BAD_SECOND_ORDER))
def test_a_bad_second_order_checkpoint_is_refused_and_changes_nothing(case):
    w = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = optim.BFGS([w], max_iter=2)
    opt.step(_quadratic(w))
    edit, message = BAD_SECOND_ORDER[case]
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(_bad(opt.state_dict(), edit))
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    assert all(_equal(v, after["state"][0][k]) for k, v in before["state"][0].items())


def _equal(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_hessian_free_gauss_newton_on_a_loss_linear_in_the_output():
    model = nn.Linear(3, 1)
    opt = optim.HessianFree(model.parameters())
    x = torch.randn(8, 3)

    def closure():
        out = model(x)
        return out.sum() + 0.5 * sum((p ** 2).sum() for p in model.parameters()), out
    opt.step(closure)  # the loss's Hessian in the output is 0: GN products are 0, damping does the rest
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", list(SECOND))
def test_second_order_deepcopy_continues_bit_identically(name):
    x = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    opt = SECOND[name]([x], lr=0.7)
    opt.step(_quadratic(x))
    x2, opt2 = copy.deepcopy((x, opt))
    for _ in range(2):
        opt.step(_quadratic(x))
        opt2.step(_quadratic(x2))
    assert torch.equal(x.detach(), x2.detach())


def _delta_bar_delta_box(w, grads, lr0, factors, kappa=1e-3, phi=0.1, theta=0.7):
    """Jacobs (1988) in float64, the step scaled by the schedule's factor lr_k/lr_0."""
    eps, avg = torch.full_like(w, lr0), torch.zeros_like(w)
    for g, c in zip(grads, factors):
        agree = avg * g
        eps = torch.where(agree > 0, eps + kappa, torch.where(agree < 0, eps * (1 - phi), eps))
        avg = theta * avg + (1 - theta) * g
        w = w - c * eps * g
    return w


def test_delta_bar_delta_follows_its_learning_rate():
    """Schedulers (and lr = 0 for a frozen group) drive DeltaBarDelta like any optimizer."""
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(8)]
    factors = [1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.0, 0.0]
    w = nn.Parameter(torch.ones(5, dtype=torch.float64))
    frozen = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = optim.DeltaBarDelta([{"params": [w]}, {"params": [frozen]}], lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda k: factors[min(k, 7)], lambda k: 0.0])
    for g in grads:
        w.grad, frozen.grad = g.clone(), torch.ones(3, dtype=torch.float64)
        opt.step()
        sched.step()
    torch.testing.assert_close(w.detach(), _delta_bar_delta_box(torch.ones(5, dtype=torch.float64), grads, 0.05,
                                                                factors), rtol=1e-12, atol=1e-14)
    assert torch.equal(frozen.detach(), torch.ones(3, dtype=torch.float64))


def _complex_loss(p: torch.Tensor) -> torch.Tensor:
    """A real loss of a complex tensor (or of its real view), neither separable nor symmetric in re/im."""
    w = p if p.is_complex() else torch.view_as_complex(p)
    return (w.abs() ** 2 * torch.arange(1.0, 4.0, dtype=w.real.dtype)).sum() + (w * (1 + 2j)).real.sum() \
        + (w.real * w.imag).sum() + 0.1 * (w.abs() ** 4).sum()


@pytest.mark.parametrize("closure", [False, True])
@pytest.mark.parametrize("impl", ["auto", "eager"])
@pytest.mark.parametrize("name", list(ALL))
def test_a_complex_parameter_is_optimized_as_its_real_view(name, impl, closure):
    """torch.optim's convention: the iterates of a complex parameter are those of
    torch.view_as_real(p) optimized as a real parameter (fused and eager paths, Nesterov's interim
    point with and without a closure); the state stays complex, and a checkpoint round trip works."""
    torch.manual_seed(0)
    z = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64))
    r = nn.Parameter(torch.view_as_real(z.detach()).clone())
    opts = {}
    for p in (z, r):
        opts[p.is_complex()] = _make(name, [p], impl)
        for _ in range(4):
            def loss_fn(p=p, opt=opts[p.is_complex()]):
                opt.zero_grad()
                loss = _complex_loss(p)
                loss.backward()
                return loss
            if closure:
                opts[p.is_complex()].step(loss_fn)
            else:
                loss_fn()
                opts[p.is_complex()].step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    state = opts[True].state[z]
    assert all(v.is_complex() for k, v in state.items() if k != "step")
    fresh = _make(name, [nn.Parameter(z.detach().clone())], impl)
    fresh.load_state_dict(opts[True].state_dict())


@pytest.mark.parametrize("name", list(SECOND))
def test_second_order_methods_optimize_a_complex_parameter_as_its_real_view(name):
    torch.manual_seed(0)
    z = nn.Parameter(torch.randn(3, dtype=torch.complex128))
    r = nn.Parameter(torch.view_as_real(z.detach()).clone())
    start = _complex_loss(z).item()
    for p in (z, r):
        opt = SECOND[name]([p])
        for _ in range(3):
            opt.step(lambda p=p: _complex_loss(p))
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    assert _complex_loss(z).item() < start


@pytest.mark.parametrize("make", [*ALL.values(), *SECOND.values()])
def test_complex32_parameters_are_refused_at_construction(make):
    z = nn.Parameter(torch.randn(3, dtype=torch.complex64).to(torch.complex32))
    with pytest.raises(ValueError, match="complex64 and complex128.*complex32"):
        make([z])
