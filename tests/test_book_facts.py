"""The chapter's testable facts for first-order methods, and the semantics torch.optim lacks."""

from __future__ import annotations

import math

import pytest
import torch

from deepdescent import optim
from deepdescent.algorithms import momentum as momentum_rule
from deepdescent.algorithms import sgd


def _param(values):
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("alpha", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_terminal_step_under_constant_gradient(alpha, nesterov):
    """Eq. 8.17: under a constant gradient g the step tends to ε‖g‖/(1 − α)."""
    lr, g = 0.01, torch.tensor([3.0, -4.0], dtype=torch.float64)  # ‖g‖ = 5
    p = _param([0.0, 0.0])
    opt = optim.SGD([p], lr=lr, momentum=alpha, nesterov=nesterov)
    prev = p.detach().clone()
    for _ in range(int(40 / (1 - alpha))):
        p.grad = g.clone()
        opt.step()
        step = (p.detach() - prev).norm().item()
        prev = p.detach().clone()
    assert step == pytest.approx(lr * 5.0 / (1 - alpha), rel=1e-6)


def test_alpha_zero_reduces_momentum_and_nesterov_to_sgd():
    """With α = 0, momentum (8.2) and Nesterov (8.3, either mode) are SGD (8.1)."""
    torch.manual_seed(0)
    theta0, grads = torch.randn(5), [torch.randn(5) for _ in range(10)]
    results = []
    for lookahead in (False, True):
        for convention in ("book", "torch"):
            theta, v = [theta0.clone()], [torch.zeros(5)]
            for g in grads:
                momentum_rule.update(theta, v, [g], lr=0.1, momentum=0.0, lookahead=lookahead, convention=convention)
            results.append(theta[0])
    plain = [theta0.clone()]
    for g in grads:
        sgd.update(plain, [g], [], lr=0.1, momentum=0.0, lookahead=False, convention="book", weight_decay=0.0)
    expected = theta0 - 0.1 * torch.stack(grads).sum(0)
    torch.testing.assert_close(plain[0], expected)
    for r in results:
        torch.testing.assert_close(r, plain[0])


def _run_velocity(convention, lrs, grads):
    p = _param([1.0, -2.0])
    opt = optim.SGD([p], lr=lrs[0], momentum=0.9, convention=convention)
    for lr, g in zip(lrs, grads):
        opt.param_groups[0]["lr"] = lr
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_book_and_torch_velocity_agree_at_constant_lr_and_differ_after_a_change():
    """Book: v ← αv − εg, θ ← θ + v. torch: b ← αb + g, θ ← θ − εb. Same while ε is constant;
    after ε changes from ε₁ to ε₂, torch's step is larger by (ε₂/ε₁ − 1)·α·(−v_prev)."""
    torch.manual_seed(1)
    grads = [torch.randn(2, dtype=torch.float64) for _ in range(6)]
    const = [0.1] * 6
    torch.testing.assert_close(_run_velocity("book", const, grads), _run_velocity("torch", const, grads))

    changed = [0.1] * 5 + [0.02]  # ε drops by 5× at the last step
    book, torch_conv = _run_velocity("book", changed, grads), _run_velocity("torch", changed, grads)
    # the velocity after five steps at ε₁ = 0.1 (book form), computed from the formulas
    v = torch.zeros(2, dtype=torch.float64)
    for g in grads[:5]:
        v = 0.9 * v - 0.1 * g
    expected_gap = (0.02 / 0.1 - 1.0) * 0.9 * (-v)  # torch − book, elementwise
    torch.testing.assert_close(torch_conv - book, -expected_gap)
    assert (torch_conv - book).abs().max() > 1e-3


def test_rmsprop_nesterov_safeguard_handles_zero_gradient_components():
    """Algorithm 8.6 has no δ: a component whose gradients are all 0 would compute 0/0. The
    safeguard keeps it at zero update; the other components follow the box exactly."""
    p = _param([1.0, 2.0, 3.0])
    opt = optim.RMSProp([p], lr=0.01, momentum=0.9, nesterov=True)
    r = torch.zeros(3, dtype=torch.float64)
    v = torch.zeros(3, dtype=torch.float64)
    theta = p.detach().clone()
    for k in range(20):
        g = torch.tensor([0.0, 0.5 + k, -1.0], dtype=torch.float64)  # component 0 always zero
        p.grad = g.clone()
        opt.step()
        # the box (lookahead form is equivalent; gradient here does not depend on the point)
        r = 0.9 * r + 0.1 * g * g
        step = torch.where(r > 0, g / r.sqrt().clamp_min(1e-300), torch.zeros_like(g))
        v = 0.9 * v - 0.01 * step
        theta = theta + v
    with opt.at_theta():
        got = p.detach().clone()
    assert torch.isfinite(got).all()
    assert got[0].item() == 1.0
    torch.testing.assert_close(got, theta)


def test_nesterov_closure_and_lookahead_modes_give_the_same_iterates():
    """step(closure) evaluates g at θ̃ = θ + αv; step() keeps θ̃ in the parameters.

    float64: near a minimum RMSProp's g/√r amplifies float32 rounding chaotically (the two modes
    round differently), which would hide what this test checks: the same mathematics."""
    torch.manual_seed(3)
    target = torch.randn(4, 3, dtype=torch.float64)
    a = torch.rand(4, 3, dtype=torch.float64) + 0.5

    def loss_at(p):
        return 0.5 * (a * (p - target) ** 2).sum() + torch.sin(p).sum()

    for cls, kw in [(optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
                    (optim.RMSProp, dict(lr=0.01, momentum=0.8, nesterov=True, weight_decay=0.1))]:
        p1 = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
        p2 = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
        o1, o2 = cls([p1], **kw), cls([p2], **kw)
        for _ in range(50):
            def closure():
                o1.zero_grad()
                loss = loss_at(p1)
                loss.backward()
                return loss
            o1.step(closure)
            o2.zero_grad()
            loss_at(p2).backward()
            o2.step()
        with o2.at_theta():
            theta2 = p2.detach().clone()
        assert not torch.equal(theta2, p2.detach())  # θ̃ ≠ θ: the parameters really held θ̃
        torch.testing.assert_close(p1.detach(), theta2, rtol=1e-10, atol=1e-12)


def test_modes_cannot_be_mixed():
    p = torch.zeros(2, requires_grad=True)
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    p.grad = torch.ones(2)
    opt.step()
    with pytest.raises(RuntimeError, match="without a closure"):
        opt.step(lambda: 0.0)


def test_adam_first_step_is_lr_times_sign():
    """Bias correction (8.7): at t = 1, ŝ = g and r̂ = g², so Δθ = −ε g/(|g| + δ) ≈ −ε sign(g)."""
    p = _param([0.0, 0.0, 0.0])
    opt = optim.Adam([p], lr=0.1, eps=1e-12)
    p.grad = torch.tensor([2.0, -0.5, 1e-3], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.1], dtype=torch.float64))


def test_adagrad_step_shrinks_like_one_over_sqrt_k():
    """Under a constant gradient AdaGrad's k-th step is ε|g|/(δ + √k |g|) ≈ ε/√k."""
    p = _param([0.0])
    opt = optim.AdaGrad([p], lr=1.0, eps=1e-12)
    prev = 0.0
    for _ in range(100):
        p.grad = torch.tensor([2.0], dtype=torch.float64)
        opt.step()
        step = prev - p.item()
        prev = p.item()
    assert step == pytest.approx(1 / math.sqrt(100), rel=1e-9)
