"""Shampoo against a float64 transcription of Gupta et al. (2018) Alg. 1 with Anil et al. (2020)'s
blocking and grafting (inverse roots by scipy's fractional_matrix_power, not an eigendecomposition),
and against pytorch-optimizer's Shampoo where the configurations match."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power
from torch import nn

from deepdescent import optim


def _reference(theta0, bias0, grads, *, lr, momentum, beta2, eps, graft, graft_eps, update_freq, block, wd):
    """numpy float64: ``grads(k, theta, bias)`` gives (G, g_bias) at step k."""
    theta, bias = theta0.copy(), bias0.copy()
    m, n = theta.shape
    cuts = [(slice(i, i + block), slice(j, j + block)) for i in range(0, m, block) for j in range(0, n, block)]
    stats = {c: [0.0, 0.0] for c in range(len(cuts))}
    roots = {}
    v = {"w": np.zeros_like(theta), "b": np.zeros_like(bias)}
    vel = {"w": np.zeros_like(theta), "b": np.zeros_like(bias)}
    for k in range(1, len(grads) + 1):
        g_w, g_b = grads[k - 1]
        g_w, g_b = g_w + wd * theta, g_b + wd * bias
        directions = {}
        for key, g in (("w", g_w), ("b", g_b)):
            if graft == "adam":
                v[key] = beta2 * v[key] + (1 - beta2) * g * g if beta2 < 1 else v[key] + g * g
                vhat = v[key] / (1 - beta2 ** k) if beta2 < 1 else v[key]
                directions[key] = g / (np.sqrt(vhat) + graft_eps)
            else:
                directions[key] = g
        u = np.zeros_like(theta)
        for c, (rows, cols) in enumerate(cuts):
            gb = g_w[rows, cols]
            for side, stat in enumerate((gb @ gb.T, gb.T @ gb)):
                stats[c][side] = beta2 * stats[c][side] + (1 - beta2) * stat if beta2 < 1 else stats[c][side] + stat
            if (k - 1) % update_freq == 0:
                roots[c] = [np.real(fractional_matrix_power(s + eps * np.eye(len(s)), -0.25)) for s in stats[c]]
            s = roots[c][0] @ gb @ roots[c][1]
            if graft != "none":
                s = s * np.linalg.norm(directions["w"][rows, cols]) / np.linalg.norm(s)
            u[rows, cols] = s
        for key, d, p in (("w", u, theta), ("b", directions["b"], bias)):
            vel[key] = momentum * vel[key] - lr * d
            p += vel[key]
    return theta, bias


CONFIGS = [
    dict(lr=0.05, momentum=0.9, beta2=0.99, eps=1e-3, graft="adam", graft_eps=1e-8, update_freq=2, block=3, wd=0.1),
    dict(lr=0.05, momentum=0.0, beta2=1.0, eps=1e-4, graft="sgd", graft_eps=1e-8, update_freq=1, block=4, wd=0.0),
    dict(lr=0.01, momentum=0.5, beta2=0.9, eps=1e-2, graft="none", graft_eps=1e-8, update_freq=3, block=8, wd=0.0),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["adam-blocked", "sgd-sums", "none-one-block"])
def test_iterates_match_the_float64_transcription(config):
    gen = torch.Generator().manual_seed(0)
    w = nn.Parameter(torch.randn(5, 7, generator=gen, dtype=torch.float64))
    b = nn.Parameter(torch.randn(5, generator=gen, dtype=torch.float64))
    x = torch.randn(7, 16, generator=gen, dtype=torch.float64)
    target = torch.randn(5, 16, generator=gen, dtype=torch.float64)
    c = dict(config)
    opt = optim.Shampoo([w, b], lr=c["lr"], momentum=c["momentum"], beta2=c["beta2"], eps=c["eps"],
                        graft=c["graft"], graft_eps=c["graft_eps"], update_freq=c["update_freq"],
                        block_size=c["block"], weight_decay=c["wd"])
    theta0, bias0 = w.detach().numpy().copy(), b.detach().numpy().copy()
    grads = []
    for _ in range(6):
        opt.zero_grad()
        (torch.tanh(w @ x + b[:, None]) - target).pow(2).mean().backward()
        grads.append((w.grad.numpy().copy(), b.grad.numpy().copy()))
        opt.step()
    # the reference replays the same gradients (each was taken at the iterate the reference also reaches)
    theta, bias = _reference(theta0, bias0, grads, **c)
    np.testing.assert_allclose(w.detach().numpy(), theta, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(b.detach().numpy(), bias, rtol=1e-9, atol=1e-11)


def test_each_block_takes_the_norm_of_its_graft():
    gen = torch.Generator().manual_seed(3)
    w = nn.Parameter(torch.randn(6, 5, generator=gen, dtype=torch.float64))
    w0 = w.detach().clone()
    opt = optim.Shampoo([w], lr=1.0, momentum=0.0, graft="sgd", block_size=4)
    w.grad = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    opt.step()
    step = (w0 - w).detach()
    for rows in (slice(0, 4), slice(4, 6)):
        for cols in (slice(0, 4), slice(4, 5)):
            torch.testing.assert_close(step[rows, cols].norm(), w.grad[rows, cols].norm(), rtol=1e-12, atol=0)
    assert not torch.allclose(step, w.grad)  # the direction is preconditioned, not the gradient's


def test_matches_pytorch_optimizers_shampoo_where_the_configurations_agree():
    """pytorch-optimizer's Shampoo is Gupta's Alg. 1 (L₀ = εI, sums, roots every step, no
    grafting): ours at beta2=1, graft="none", update_freq=1, one block, no momentum."""
    reference = pytest.importorskip("pytorch_optimizer")
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(4, 10, generator=gen, dtype=torch.float64)
    target = torch.randn(6, 10, generator=gen, dtype=torch.float64)
    ours, theirs = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    opts = [optim.Shampoo([ours], lr=0.1, momentum=0.0, beta2=1.0, eps=1e-4, graft="none", update_freq=1),
            reference.Shampoo([theirs], lr=0.1, momentum=0.0, matrix_eps=1e-4, preconditioning_compute_steps=1)]
    for _ in range(5):
        for p, opt in zip((ours, theirs), opts):
            opt.zero_grad()
            (torch.tanh(p @ x) - target).pow(2).mean().backward()
            opt.step()
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-8, atol=1e-10)
    assert not torch.allclose(ours, start)


def test_vectors_take_the_graft_direction():
    """A bias (one dimension) is stepped by the graft alone: with graft="adam", momentum 0, Adam's
    first step −η·g/(|g| + δ)."""
    b = nn.Parameter(torch.zeros(4, dtype=torch.float64))
    opt = optim.Shampoo([b], lr=0.1, momentum=0.0)
    b.grad = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(b.detach(), -0.1 * b.grad / (b.grad.abs() + 1e-8))


def test_load_state_dict_checks_the_block_statistics():
    w = nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
    opt = optim.Shampoo([w], lr=0.1, block_size=4)
    w.grad = torch.ones_like(w)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    assert {"L0.0", "L1.1", "R0.1", "PL1.0"} <= set(sd["state"][0])
    sd["state"][0]["R0.1"] = torch.zeros(4, 4, dtype=torch.float64)  # block (0, 1) has 3 columns
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"R0\.1.*shape \(3, 3\)"):
        opt.load_state_dict(sd)
    assert torch.equal(opt.state[w]["R0.1"], before["state"][0]["R0.1"])


@pytest.mark.parametrize("nonfinite", ["skip", "raise"])
def test_statistics_that_overflow_leave_the_step_out(nonfinite):
    """A finite gradient whose products overflow float32 (|g| ~ 1e25): no usable root, so the step
    is left out (or raises) and parameters and state are as before."""
    w = nn.Parameter(torch.ones(3, 4))
    opt = optim.Shampoo([w], lr=0.1, nonfinite=nonfinite)
    w.grad = torch.full((3, 4), 0.5)
    opt.step()
    before, state = w.detach().clone(), copy.deepcopy(opt.state_dict())
    w.grad = torch.full((3, 4), 1e25)
    if nonfinite == "raise":
        with pytest.raises(optim.NonFiniteGradientError, match="not finite"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert torch.equal(w.detach(), before)
    for key, value in state["state"][0].items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt.state_dict()["state"][0][key])), key


def test_a_state_dict_loads_into_an_optimizer_built_with_another_block_size():
    """The blocks a checkpoint holds are checked against the block size it was saved with (which
    the load then restores), not the new optimizer's."""
    w = nn.Parameter(torch.randn(5, 7, dtype=torch.float64))
    opt = optim.Shampoo([w], lr=0.1, block_size=4)
    w.grad = torch.ones_like(w)
    opt.step()
    twin = optim.Shampoo([nn.Parameter(w.detach().clone())], lr=0.1, block_size=256)
    twin.load_state_dict(opt.state_dict())
    assert twin.param_groups[0]["block_size"] == 4 and "L1.1" in twin.state_dict()["state"][0]
