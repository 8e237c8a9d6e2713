"""K-FAC against independent references: the factors from per-example activations and
back-propagated derivatives computed one example at a time, the exact Fisher of one example (where
A ⊗ G is exact), and the damped Kronecker solve as one dense float64 solve."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from deepdescent import optim


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()


def _data(n: int = 5):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randn(n, 2, generator=gen, dtype=torch.float64)


def _per_example(model: nn.Sequential, x, y):
    """For each Linear layer: the inputs a_n (with a 1 for the bias) and ĝ_n = ∂ℓ_n/∂s_n, each
    example through its own forward and backward pass (ℓ_n the example's own loss)."""
    layers = [m for m in model if isinstance(m, nn.Linear)]
    acts = {id(m): [] for m in layers}
    derivs = {id(m): [] for m in layers}
    for xn, yn in zip(x, y):
        outs = {}
        h = xn[None]
        for m in model:
            if isinstance(m, nn.Linear):
                acts[id(m)].append(torch.cat([h[0].detach(), torch.ones(1, dtype=h.dtype)]))
                h = m(h)
                h.retain_grad()
                outs[id(m)] = h
            else:
                h = m(h)
        F.mse_loss(h, yn[None]).backward()
        for m in layers:
            derivs[id(m)].append(outs[id(m)].grad[0].clone())
        model.zero_grad()
    return layers, acts, derivs


def _assert_state_is(opt, saved):
    """Every state entry of ``opt`` equals the saved state dict's, bit for bit."""
    now = opt.state_dict()["state"]
    for k, entry in saved["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(now[k][key])), key


def _step(opt, model, x, y):
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()


def test_factors_are_the_per_example_second_moments():
    model = _mlp()
    x, y = _data()
    layers, acts, derivs = _per_example(model, x, y)
    opt = optim.KFAC(model, lr=0.1)
    _step(opt, model, x, y)
    for m in layers:
        a = torch.stack(acts[id(m)])
        g = torch.stack(derivs[id(m)])
        state = opt.state[m.weight]
        torch.testing.assert_close(state["factor_A"], a.T @ a / len(a), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(state["factor_G"], g.T @ g / len(g), rtol=1e-12, atol=1e-14)


def test_for_one_example_the_kronecker_product_is_the_exact_fisher_block():
    """One example: F = vec(∇W) vec(∇W)ᵀ = (ĝĝᵀ) ⊗ (aaᵀ) exactly (row-major vec of [W | b])."""
    model = _mlp()
    x, y = _data(1)
    opt = optim.KFAC(model, lr=0.1)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    grads = {id(m): torch.cat([m.weight.grad, m.bias.grad[:, None]], 1).flatten()
             for m in model if isinstance(m, nn.Linear)}
    opt.step()
    for m in (m for m in model if isinstance(m, nn.Linear)):
        state = opt.state[m.weight]
        fisher = torch.outer(grads[id(m)], grads[id(m)])
        torch.testing.assert_close(torch.kron(state["factor_G"], state["factor_A"]), fisher, rtol=1e-10, atol=1e-14)


def _dense_step(a, g, grad, damping):
    """The damped natural gradient as one dense solve: (G_d ⊗ A_d)⁻¹ vec(∇) (row-major vec)."""
    pi = math.sqrt((a.trace() / a.shape[0]) / (g.trace() / g.shape[0]))
    gamma = math.sqrt(damping)
    a_d = a + pi * gamma * torch.eye(a.shape[0], dtype=a.dtype)
    g_d = g + gamma / pi * torch.eye(g.shape[0], dtype=g.dtype)
    return torch.linalg.solve(torch.kron(g_d, a_d), grad.flatten()).reshape(grad.shape)


@pytest.mark.parametrize("kl_clip", [0.0, 1e-4])
def test_step_is_the_damped_kronecker_solve_clipped_by_its_kl_norm(kl_clip):
    model = _mlp()
    before = copy.deepcopy(model)
    x, y = _data()
    layers, acts, derivs = _per_example(model, x, y)
    lr, damping = 0.5, 0.3  # a large damping: π's split between the factors is visible
    opt = optim.KFAC(model, lr=lr, damping=damping, kl_clip=kl_clip, momentum=0.9)
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    grads = {id(m): torch.cat([m.weight.grad, m.bias.grad[:, None]], 1).clone() for m in layers}
    opt.step()
    steps = {}
    for m in layers:
        a, g = torch.stack(acts[id(m)]), torch.stack(derivs[id(m)])
        steps[id(m)] = _dense_step(a.T @ a / len(a), g.T @ g / len(g), grads[id(m)], damping)
    kl = lr * lr * sum(float((steps[id(m)] * grads[id(m)]).sum()) for m in layers)
    nu = min(1.0, math.sqrt(kl_clip / kl)) if kl_clip else 1.0
    assert (nu < 0.5) == bool(kl_clip)  # the clip acts in the clipped case
    old = [m for m in before if isinstance(m, nn.Linear)]
    for m, m0 in zip(layers, old):
        moved = torch.cat([m.weight - m0.weight, (m.bias - m0.bias)[:, None]], 1).detach()
        torch.testing.assert_close(moved, -lr * nu * steps[id(m)], rtol=1e-9, atol=1e-12)


def test_running_averages_and_the_inverse_cadence():
    model = _mlp()
    x, y = _data()
    opt = optim.KFAC(model, lr=0.01, inv_every=3, stat_decay=0.95)
    w = model[0].weight
    _step(opt, model, x, y)
    first_a, first_inv = opt.state[w]["factor_A"].clone(), opt.state[w]["inverse_A"].clone()
    x2 = x.flip(0) * 2.0
    layers, acts, _ = _per_example(model, x2, y)
    a = torch.stack(acts[id(model[0])])
    _step(opt, model, x2, y)  # k = 2: ε = min(1 − 1/2, 0.95) = 1/2
    torch.testing.assert_close(opt.state[w]["factor_A"], 0.5 * first_a + 0.5 * a.T @ a / len(a), rtol=1e-12, atol=1e-14)
    assert torch.equal(opt.state[w]["inverse_A"], first_inv)  # inverses kept until step 1 + inv_every
    _step(opt, model, x, y)
    assert torch.equal(opt.state[w]["inverse_A"], first_inv)
    _step(opt, model, x, y)
    assert not torch.equal(opt.state[w]["inverse_A"], first_inv)


def test_factor_every_gathers_nothing_between_refreshes():
    model = _mlp()
    x, y = _data()
    opt = optim.KFAC(model, lr=0.01, factor_every=2)
    _step(opt, model, x, y)
    after_first = opt.state[model[0].weight]["factor_A"].clone()
    _step(opt, model, x * 3.0, y)  # step 2: not a refresh; its backward gathers nothing
    assert torch.equal(opt.state[model[0].weight]["factor_A"], after_first)
    assert opt._layers[model[0].weight].a_sum is None
    _step(opt, model, x * 3.0, y)
    assert not torch.equal(opt.state[model[0].weight]["factor_A"], after_first)


def _conv_patches(x, kernel, stride, padding):
    """Patches by slicing (no unfold), ordered (channel, row, column) as the weight's flattening."""
    x = F.pad(x, (padding, padding, padding, padding))
    rows = []
    for n in range(x.shape[0]):
        for i in range(0, x.shape[2] - kernel + 1, stride):
            for j in range(0, x.shape[3] - kernel + 1, stride):
                rows.append(torch.cat([x[n, :, i:i + kernel, j:j + kernel].reshape(-1), torch.ones(1, dtype=x.dtype)]))
    return torch.stack(rows)


def test_conv2d_factors_are_the_expanded_patch_moments():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    model = nn.Sequential(conv, nn.Flatten())
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    y = torch.randn(4, 3 * 9, dtype=torch.float64)
    opt = optim.KFAC(model, lr=0.01)
    out = conv(x)
    out.retain_grad()
    F.mse_loss(out.flatten(1), y).backward()
    g = out.grad.permute(0, 2, 3, 1).reshape(-1, 3) * len(x)  # ĝ = B ∂L/∂s, one row per position
    opt.step()
    a = _conv_patches(x, 3, 2, 1)
    torch.testing.assert_close(opt.state[conv.weight]["factor_A"], a.T @ a / len(a), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(opt.state[conv.weight]["factor_G"], g.T @ g / len(x), rtol=1e-12, atol=1e-14)


def test_parameters_of_no_watched_layer_take_momentum_sgd():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2)).double()
    twin = copy.deepcopy(model)
    x, y = _data()
    opt = optim.KFAC(model, lr=0.05, momentum=0.9, weight_decay=0.01)
    ref = optim.SGD(twin[1].parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            F.mse_loss(m(x), y).backward()
            o.step()
        twin.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("1.")}, strict=False)
    for p, q in zip(model[1].parameters(), twin[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_a_step_with_a_non_finite_gradient_changes_nothing():
    model = _mlp()
    x, y = _data()
    opt = optim.KFAC(model, lr=0.1)
    _step(opt, model, x, y)
    saved = copy.deepcopy(opt.state_dict())
    params = [p.detach().clone() for p in model.parameters()]
    bad = x.clone()
    bad[0, 0] = float("inf")
    _step(opt, model, bad, y)
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    _assert_state_is(opt, saved)
    assert opt._layers[model[0].weight].a_sum is None  # the bad batch's statistics were dropped
    m = _mlp()
    raising = optim.KFAC(m, lr=0.1, nonfinite="raise")
    with pytest.raises(optim.NonFiniteGradientError, match="non-finite gradient in parameter"):
        _step(raising, m, bad, y)


def test_load_state_dict_checks_the_factors_and_changes_nothing_on_error():
    model = _mlp()
    x, y = _data()
    opt = optim.KFAC(model, lr=0.1)
    _step(opt, model, x, y)
    sd = copy.deepcopy(opt.state_dict())
    index = next(i for i, s in sd["state"].items() if "factor_A" in s)
    broken = copy.deepcopy(sd)
    broken["state"][index]["factor_A"] = torch.zeros(2, 2, dtype=torch.float64)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="factor_A.*shape"):
        opt.load_state_dict(broken)
    assert all(torch.equal(before["state"][i]["factor_A"], opt.state_dict()["state"][i]["factor_A"])
               for i in before["state"] if "factor_A" in before["state"][i])
    unknown = copy.deepcopy(sd)
    unknown["state"][index]["factor_B"] = torch.zeros(1)
    with pytest.raises(ValueError, match="factor_B"):
        opt.load_state_dict(unknown)
    twin_model = copy.deepcopy(model)
    twin = optim.KFAC(twin_model, lr=0.1)
    twin.load_state_dict(sd)
    _step(opt, model, x, y)
    _step(twin, twin_model, x, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin_model.parameters()))


def test_a_deep_copy_watches_its_own_model_only():
    model = _mlp()
    x, y = _data()
    opt = optim.KFAC(model, lr=0.1)
    _step(opt, model, x, y)
    twin = copy.deepcopy(opt)
    twin_model = twin._layers[next(iter(twin._layers))].module
    assert twin_model is not model[0]
    F.mse_loss(model(x), y).backward()  # the original's forward gathers for the original only
    assert opt._layers[model[0].weight].a_sum is not None
    assert all(layer.a_sum is None for layer in twin._layers.values())
    twin.zero_grad()
    F.mse_loss(twin_model(x), torch.zeros(5, 3, dtype=torch.float64)).backward()  # the copy's first layer alone
    assert twin._layers[twin_model.weight].a_sum is not None  # the copy gathers through its own model
    assert opt._layers[model[0].weight].rows == 5  # … and nothing more reaches the original
    copied = copy.deepcopy(model)  # a copy of the model alone (an EMA model): its hook copies gather nothing
    opt.zero_grad()
    F.mse_loss(copied(x), y).backward()
    hook = next(iter(copied[0]._forward_hooks.values()))
    assert not hook.__self__.collect and hook.__self__.a_sum is None


def test_without_a_model_it_warns_and_steps_every_parameter_by_the_fallback():
    p = nn.Parameter(torch.ones(3))
    with pytest.warns(UserWarning, match="no model"):
        opt = optim.KFAC([p], lr=0.1, momentum=0.0)
    p.grad = torch.full((3,), 2.0)
    opt.step()
    assert torch.equal(p.detach(), torch.full((3,), 0.8))


def test_factors_agree_with_curvlinops_empirical_fisher_kfac():
    """curvlinops-for-pytorch's KFAC (fisher_type="empirical", the "expand" approximation, weight and
    bias as one block): its Kronecker factors of a cross-entropy MLP are ours."""
    curvlinops = pytest.importorskip("curvlinops")
    model = _mlp()
    x = _data(6)[0]
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    loss = nn.CrossEntropyLoss()
    op = curvlinops.KFACLinearOperator(model, loss, list(model.parameters()), [(x, y)], fisher_type="empirical",
                                       separate_weight_and_bias=False, check_deterministic=False)
    op.compute_kronecker_factors()
    opt = optim.KFAC(model, lr=0.1)
    opt.zero_grad()
    loss(model(x), y).backward()
    opt.step()
    for name in ("0", "2"):
        state = opt.state[model[int(name)].weight]
        torch.testing.assert_close(state["factor_A"], op._input_covariances[name], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(state["factor_G"], op._gradient_covariances[name], rtol=1e-12, atol=1e-15)


def test_factors_that_overflow_leave_the_step_out():
    """Finite activations whose second moments overflow float32 (|a| ~ 1e20): the step is left out
    and counted, parameters and factors as before (the lab then marks the run diverged)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    x, y = torch.randn(5, 4), torch.randn(5, 2)
    opt = optim.KFAC(model, lr=0.1)
    _step(opt, model, x, y)
    before = [p.detach().clone() for p in model.parameters()]
    saved = copy.deepcopy(opt.state_dict())
    _step(opt, model, x * 1e20, y)
    assert opt.skipped_steps == 1
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    _assert_state_is(opt, saved)
