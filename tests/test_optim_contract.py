"""The project's port of PyTorch's generic optimizer tests (test/test_optim.py over
torch/testing/_internal/common_optimizers.py), run over every optimizer and configuration of
optimizer_infos.py. Tests of an option deepdescent does not have are marked expected-to-fail with
the documented deviation as the reason (docs/guides/differences.md)."""

from __future__ import annotations

import copy
import io
import itertools

import warnings

import pytest
import torch
from optimizer_infos import ALL, FIRST, OptimizerInfo

from deepdescent import optim
from torch import nn
from torch.optim.lr_scheduler import ExponentialLR, ReduceLROnPlateau, StepLR
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")  # line searches' notes
CASES = [pytest.param(info, config, id=f"{info.name}-{i}") for info in ALL for i, config in enumerate(info.configs)]
FIRST_CASES = [c for c in CASES if not c.values[0].second_order]


def _problem(seed: int = 0, dtype: torch.dtype = torch.float32):
    """torch's test problem: a weight and a bias, loss ‖W i + b‖ (not separable, minimum 0)."""
    gen = torch.Generator().manual_seed(seed)
    weight = nn.Parameter(torch.randn(10, 5, generator=gen, dtype=dtype))
    bias = nn.Parameter(torch.randn(10, generator=gen, dtype=dtype))
    inp = torch.randn(5, generator=gen, dtype=dtype)
    return [weight, bias], lambda: (weight.mv(inp) + bias).pow(2).sum()


def _step(info: OptimizerInfo, opt, loss_fn):
    """One step the way each kind is driven: first order after backward() (closure-free), second
    order through a closure returning the loss."""
    if info.second_order:
        return opt.step(loss_fn)
    opt.zero_grad()
    loss = loss_fn()
    loss.backward()
    opt.step()
    return loss


def _run(info, config, steps=5, params_loss=None, opt=None):
    params, loss_fn = params_loss or _problem()
    opt = opt or info.cls(params, **config)
    for _ in range(steps):
        _step(info, opt, loss_fn)
    return params, loss_fn, opt


def _xfail(info: OptimizerInfo, key: str) -> None:
    if key in info.deviations:
        pytest.xfail(info.deviations[key])


# ---------------------------------------------------------------- construction
@pytest.mark.parametrize("info", ALL, ids=lambda i: i.name)
def test_errors(info):
    p = [nn.Parameter(torch.zeros(3))]
    for kwargs, arg in info.errors:
        with pytest.raises(ValueError, match=arg):
            info.cls(p, **kwargs)
    with pytest.raises(ValueError, match="more than one parameter group"):
        info.cls([{"params": p}, {"params": p}], **info.configs[0])
    with pytest.raises(TypeError):
        info.cls(p[0], **info.configs[0])  # a tensor, not an iterable of them (torch's message)


@pytest.mark.parametrize("info,config", CASES)
def test_optimizer_can_be_printed(info, config):
    text = repr(info.cls([nn.Parameter(torch.zeros(2))], **config))
    assert text.startswith(info.name)
    for key, value in config.items():
        assert f"{key}: {value}" in text


@pytest.mark.parametrize("info,config", CASES)
def test_named_parameters_are_accepted_and_named_in_the_state_dict(info, config):
    model = nn.Linear(3, 2)
    opt = info.cls(model.named_parameters(), **config)
    assert opt.state_dict()["param_groups"][0]["param_names"] == ["weight", "bias"]


# ---------------------------------------------------------------- the step
@pytest.mark.parametrize("info,config", CASES)
def test_forloop_goes_right_direction(info, config):
    params, loss_fn = _problem()
    initial = loss_fn().item()
    _run(info, config, steps=5, params_loss=(params, loss_fn))
    assert loss_fn().item() < initial


@pytest.mark.parametrize("info,config", CASES)
def test_param_groups_lr_and_weight_decay_go_right_direction(info, config):
    """Two groups (weight, bias), the second with its own hyperparameters."""
    params, loss_fn = _problem()
    if info.second_order:  # the deviation is what the README says it is: refused, not ignored
        with pytest.raises(ValueError, match="solves over all parameters at once"):
            info.cls([{"params": [params[0]]}, {"params": [params[1]], "lr": 0.5}], **config)
        _xfail(info, "per_group")
    initial = loss_fn().item()
    override = {"lr": 0.01} if "lr" in info.cls([nn.Parameter(torch.zeros(1))], **config).defaults else {}
    if "weight_decay" in config:
        override["weight_decay"] = 0.0
    opt = info.cls([{"params": [params[0]]}, {"params": [params[1]], **override}], **config)
    _run(info, config, params_loss=(params, loss_fn), opt=opt)
    assert loss_fn().item() < initial


@pytest.mark.parametrize("scheduler", ["step", "exponential", "plateau"])
@pytest.mark.parametrize("info,config", CASES)
def test_param_group_with_lrscheduler_goes_right_direction(info, config, scheduler):
    params, loss_fn = _problem()
    initial = loss_fn().item()
    opt = info.cls(params, **config)
    sched = {"step": lambda: StepLR(opt, 2, 0.5), "exponential": lambda: ExponentialLR(opt, 0.9),
             "plateau": lambda: ReduceLROnPlateau(opt, factor=0.5, patience=0)}[scheduler]()
    for _ in range(5):
        loss = _step(info, opt, loss_fn)
        sched.step(float(loss)) if scheduler == "plateau" else sched.step()
    assert loss_fn().item() < initial


@pytest.mark.parametrize("info,config", CASES)
def test_tensor_lr(info, config):
    """A 0-dim tensor lr gives the iterates of the same float lr."""
    lr = info.cls([nn.Parameter(torch.zeros(1))], **config).defaults["lr"]
    a, _, _ = _run(info, config)
    b, _, _ = _run(info, {**config, "lr": torch.tensor(lr)})
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_step_is_noop_when_params_have_no_grad(info, config):
    params, _ = _problem()
    before = [p.detach().clone() for p in params]
    opt = info.cls(params, **config)
    for _ in range(3):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params)) and not opt.state


@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_step_is_noop_for_zero_grads(info, config):
    spec = getattr(info.cls, "algorithm", None)
    if {**(spec.defaults() if spec else {}), **config}.get("weight_decay"):  # AdamW decays by default
        pytest.skip("with weight decay a zero gradient still moves θ (λθ): torch skips these configs too")
    params, _ = _problem()
    before = [p.detach().clone() for p in params]
    opt = info.cls(params, **config)
    for _ in range(3):
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("info,config", CASES)
def test_empty_grad(info, config):
    """A parameter with no elements in the model changes nothing and breaks nothing."""
    params, loss_fn = _problem()
    empty = nn.Parameter(torch.zeros(0, 3))
    opt = info.cls([*params, empty], **config)
    initial = loss_fn().item()
    _run(info, config, params_loss=(params, lambda: loss_fn() + empty.sum()), opt=opt)
    assert loss_fn().item() < initial


@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_non_empty_state(info, config):
    _, _, opt = _run(info, config, steps=1)
    assert len(opt.state) == 2 and all("step" in s for s in opt.state.values())


@pytest.mark.parametrize("info,config", CASES)
def test_mixed_dtype(info, config):
    """float32 and float64 parameters in one group keep their dtypes; first-order methods follow each
    dtype's own iterates (second-order ones solve jointly, in the wider dtype: the loss decreases)."""
    p32, loss32 = _problem(0, torch.float32)
    p64, loss64 = _problem(1, torch.float64)
    mixed = [p.detach().clone().requires_grad_() for p in p32 + p64]
    inp32, inp64 = _inputs(0, torch.float32), _inputs(1, torch.float64)
    joint = lambda: (mixed[0].mv(inp32) + mixed[1]).pow(2).sum() + (mixed[2].mv(inp64) + mixed[3]).pow(2).sum()  # noqa: E731
    initial = joint().item()
    _run(info, config, 4, (mixed, joint))
    assert [p.dtype for p in mixed] == [torch.float32] * 2 + [torch.float64] * 2
    if info.second_order:
        assert joint().item() < initial
        return
    alone32, _, _ = _run(info, config, 4, (p32, loss32))
    alone64, _, _ = _run(info, config, 4, (p64, loss64))
    for a, b in zip(mixed, alone32 + alone64):
        torch.testing.assert_close(a, b)


def _inputs(seed, dtype):
    gen = torch.Generator().manual_seed(seed)
    torch.randn(10, 5, generator=gen, dtype=dtype), torch.randn(10, generator=gen, dtype=dtype)
    return torch.randn(5, generator=gen, dtype=dtype)


@pytest.mark.parametrize("info,config", [c for c in FIRST_CASES
                                         if c.values[0] in FIRST and c.values[0].name != "DeltaBarDelta"])
def test_fused_matches_forloop(info, config):
    """impl='fused' (the generated C++ loop) against impl='eager' (multi-tensor ops)."""
    runs = []
    for impl in ("fused", "eager"):
        params, loss_fn = _problem()
        runs.append(_run(info, config, 5, (params, loss_fn), info.cls(params, **config, impl=impl))[0])
    for a, b in zip(*runs):
        assert torch.equal(a, b)  # the same bits (docs/guides/execution.md)


@pytest.mark.parametrize("info,config", CASES)
def test_complex(info, config):
    """A complex parameter follows the iterates of its real view (torch.optim's convention)."""
    gen = torch.Generator().manual_seed(0)
    z = nn.Parameter(torch.randn(4, 3, dtype=torch.complex64, generator=gen))
    r = nn.Parameter(torch.view_as_real(z.detach()).clone())
    target = torch.randn(4, 3, dtype=torch.complex64, generator=gen)
    _run(info, config, 4, ([z], lambda: (z - target).abs().pow(2).sum() + (z * 1j).real.sum()))
    _run(info, config, 4, ([r], lambda: (torch.view_as_complex(r) - target).abs().pow(2).sum()
                           + (torch.view_as_complex(r) * 1j).real.sum()))
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())


@pytest.mark.parametrize("info,config", [c for c in CASES if c.values[0].cls in (optim.ConjugateGradient, optim.BFGS,
                                                                                 optim.LBFGS)])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=str)
def test_complex_with_torch_protocol(info, config, dtype):
    """PyTorch's test_complex protocol (random gradients and losses from the closure, the complex
    run fed the real run's values) for the methods whose closure may set the gradients itself:
    every iterate of the complex parameters equals its real view's, bit for bit."""
    torch.manual_seed(0)
    complex_params = [torch.randn(10, 5, dtype=dtype, requires_grad=True), torch.randn(10, dtype=dtype, requires_grad=True)]
    real_params = [torch.view_as_real(p).detach().clone().requires_grad_() for p in complex_params]
    fed: list[torch.Tensor] = []

    def real_closure():
        for p in real_params:
            p.grad = torch.randn_like(p)
            fed.append(p.grad.clone())
        fed.append(torch.randn(1))
        return fed[-1].clone()

    def complex_closure():
        for p in complex_params:
            p.grad = torch.view_as_complex(fed.pop(0))
        return fed.pop(0)
    real, cplx = info.cls(real_params, **config), info.cls(complex_params, **config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            real.step(real_closure)
            cplx.step(complex_closure)
            for c, r in zip(complex_params, real_params):
                assert torch.equal(torch.view_as_real(c.detach()), r.detach())
    assert not fed


# ---------------------------------------------------------------- state dicts
def _clone(params):
    return [nn.Parameter(p.detach().clone()) for p in params]


@pytest.mark.parametrize("info,config", CASES)
def test_state_dict_deterministic(info, config):
    """A copy loaded from the state dict takes the same steps; its state dict equals the original's."""
    params, loss_fn, opt = _run(info, config, steps=3)
    twin = _clone(params)
    opt2 = info.cls(twin, **config)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    loss2 = lambda: (twin[0].mv(_inputs(0, torch.float32)) + twin[1]).pow(2).sum()  # noqa: E731
    _run(info, config, 3, (params, loss_fn), opt)
    _run(info, config, 3, (twin, loss2), opt2)
    for a, b in zip(params, twin):
        assert torch.equal(a, b)
    _assert_same_state(opt.state_dict(), opt2.state_dict())


def _assert_same_state(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        for key, value in a["state"][i].items():
            other = b["state"][i][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else _same(value, other), key


def _same(x, y):
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_same(u, v) for u, v in zip(x, y))
    return torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y


@pytest.mark.parametrize("info,config", CASES)
def test_save_load_equality_with_weights_only(info, config):
    params, loss_fn, opt = _run(info, config, steps=3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _assert_same_state(opt.state_dict(), loaded)
    opt2 = info.cls(_clone(params), **config)
    opt2.load_state_dict(loaded)
    _assert_same_state(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_can_load_older_state_dict(info, config):
    """A state dict without deepdescent's metadata entry (older files, torch.distributed.checkpoint)
    loads, and the step continues as from the full one."""
    params, loss_fn, opt = _run(info, config, steps=3)
    old = copy.deepcopy(opt.state_dict())
    del old["deepdescent"]
    opt2 = info.cls(_clone(params), **config)
    with _maybe_warns(opt2):
        opt2.load_state_dict(old)
    _assert_same_state({k: v for k, v in opt.state_dict().items() if k != "deepdescent"},
                       {k: v for k, v in opt2.state_dict().items() if k != "deepdescent"})


def _maybe_warns(opt):
    nesterov = any(g.get("nesterov") for g in opt.param_groups)
    return pytest.warns(RuntimeWarning, match="look-ahead") if nesterov else _nothing()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_load_nontensor_step(info, config):
    """Step counts saved as 0-dim tensors (torch's own optimizers store them so) load and count on."""
    params, loss_fn, opt = _run(info, config, steps=2)
    sd = copy.deepcopy(opt.state_dict())
    for s in sd["state"].values():
        s["step"] = torch.tensor(float(s["step"]))
    opt2 = info.cls(_clone(params), **config)
    opt2.load_state_dict(sd)
    ref = copy.deepcopy(opt)
    twin = [p for g in opt2.param_groups for p in g["params"]]
    ref_params = [p for g in ref.param_groups for p in g["params"]]
    for o, ps in ((ref, ref_params), (opt2, twin)):
        for _ in range(2):
            o.zero_grad()
            (ps[0].mv(_inputs(0, torch.float32)) + ps[1]).pow(2).sum().backward()
            o.step()
    for a, b in zip(ref_params, twin):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("info,config", CASES)
def test_deepcopy_copies_all_public_attrs(info, config):
    _, _, opt = _run(info, config, steps=1)
    twin = copy.deepcopy(opt)
    public = {k for k in vars(opt) if not k.startswith("_")}
    assert public == {k for k in vars(twin) if not k.startswith("_")}
    for key in public - {"state", "param_groups"}:
        assert _same(getattr(opt, key), getattr(twin, key)), key


# ---------------------------------------------------------------- hooks
@pytest.mark.parametrize("info,config", CASES)
def test_step_hooks_in_torchs_order(info, config):
    params, loss_fn = _problem()
    opt = info.cls(params, **config)
    calls = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append("global pre")),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append("global post")),
        opt.register_step_pre_hook(lambda o, a, k: calls.append("pre")),
        opt.register_step_post_hook(lambda o, a, k: calls.append("post")),
    ]
    try:
        _step(info, opt, loss_fn)
    finally:
        for h in handles:
            h.remove()
    assert calls == ["global pre", "pre", "post", "global post"]


@pytest.mark.parametrize("info,config", CASES)
def test_state_dict_and_load_state_dict_hooks(info, config):
    _, _, opt = _run(info, config, steps=1)
    seen = []
    opt.register_state_dict_pre_hook(lambda o: seen.append("sd pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "tag": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load pre second"))
    opt.register_load_state_dict_pre_hook(lambda o, sd: seen.append("load pre first"), prepend=True)
    opt.register_load_state_dict_post_hook(lambda o: seen.append("load post"))
    sd = opt.state_dict()
    assert sd["tag"] == 1
    opt.load_state_dict({k: v for k, v in sd.items() if k != "tag"})
    assert seen == ["sd pre", "load pre first", "load pre second", "load post"]


# ---------------------------------------------------------------- deviations (documented)
@pytest.mark.parametrize("option", ["maximize", "differentiable", "foreach"])
@pytest.mark.parametrize("info", ALL, ids=lambda i: i.name)
def test_torch_options_deepdescent_does_not_have(info, option):
    """Refused (an unknown keyword, as any Python function refuses one), then expected-to-fail with
    the reason the README gives."""
    with pytest.raises(TypeError, match=option):
        info.cls([nn.Parameter(torch.zeros(2))], **info.configs[0], **{option: True})
    _xfail(info, option)


@pytest.mark.parametrize("info", FIRST, ids=lambda i: i.name)
def test_rosenbrock_sparse(info):
    """Sparse gradients are refused with a clear error (torch's SparseAdam/SGD/Adagrad take them)."""
    p = nn.Parameter(torch.zeros(4))
    opt = info.cls([p], **info.configs[0])
    p.grad = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([1.0, 2.0]), (4,))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(4))


def test_every_optimizer_is_in_the_list():
    from deepdescent import optim

    exported = {getattr(optim, n) for n in optim.__all__}
    classes = {c for c in exported if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)}
    classes -= {optim.BookOptimizer}
    assert classes == {info.cls for info in ALL}
    assert len(list(itertools.chain(CASES))) >= 3 * len(ALL)


@pytest.mark.parametrize("nonfinite", ["skip", "propagate", "raise"])
@pytest.mark.parametrize("info,config", FIRST_CASES)
def test_parameters_on_the_meta_device_step_as_in_torch(info, config, nonfinite):
    """Shape tracing (models built on the meta device) steps an optimizer as torch.optim.Adam
    steps there: no values to check for non-finite elements, the state created on the meta device."""
    p = nn.Parameter(torch.empty(4, 3, device="meta"))
    opt = info.cls([p], **{**config, "nonfinite": nonfinite})
    for _ in range(2):
        p.grad = torch.empty(4, 3, device="meta")
        opt.step()
    assert all(v.device.type == "meta" for v in opt.state[p].values() if torch.is_tensor(v) and v.dim())
