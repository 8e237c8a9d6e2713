"""Invalid hyperparameters, non-finite gradients, sparse gradients: clear errors, nothing corrupted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepdescent import optim
from deepdescent.optim import NonFiniteGradientError

P = lambda: [torch.zeros(3, requires_grad=True)]  # noqa: E731

BAD = [
    (optim.SGD, dict(lr=-0.1), "lr=-0.1"),
    (optim.SGD, dict(lr=math.nan), "lr=nan"),
    (optim.SGD, dict(lr=math.inf), "lr=inf"),
    (optim.SGD, dict(lr=torch.tensor([0.1, 0.2])), "0-dim"),
    (optim.SGD, dict(lr="0.1"), "real number"),
    (optim.SGD, dict(lr=0.1, momentum=1.0), "momentum=1.0"),
    (optim.SGD, dict(lr=0.1, momentum=-0.1), "momentum=-0.1"),
    (optim.SGD, dict(lr=0.1, nesterov=True), "requires momentum > 0"),
    (optim.SGD, dict(lr=0.1, weight_decay=-1.0), "weight_decay=-1.0"),
    (optim.SGD, dict(lr=0.1, momentum=0.9, convention="keras"), "convention='keras'"),
    (optim.AdaGrad, dict(eps=0.0), "eps=0.0"),
    (optim.AdaGrad, dict(eps=-1e-7), "eps=-1e-07"),
    (optim.RMSProp, dict(rho=1.0), "rho=1.0"),
    (optim.RMSProp, dict(rho=math.nan), "rho=nan"),
    (optim.RMSProp, dict(momentum=0.9, nesterov=True, convention="torch"), "convention='book'"),
    (optim.Adam, dict(betas=(0.9, 1.0)), r"betas\[1\]=1.0"),
    (optim.Adam, dict(betas=(-0.1, 0.9)), r"betas\[0\]=-0.1"),
    (optim.Adam, dict(betas=0.9), "pair"),
    (optim.Adam, dict(eps=0), "eps=0"),
    (optim.AdaDelta, dict(rho=1.5), "rho=1.5"),
    (optim.AdaDelta, dict(lr=-1), "lr=-1"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD)
def test_invalid_hyperparameter_names_argument_value_and_range(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(P(), **kwargs)


def test_invalid_value_in_a_param_group_is_caught():
    with pytest.raises(ValueError, match="momentum=1.5"):
        optim.SGD([{"params": P()}, {"params": P(), "momentum": 1.5}], lr=0.1)


def test_unknown_group_options_are_kept_as_torch_keeps_them():
    opt = optim.SGD([{"params": P(), "betas": (0.9, 0.99)}], lr=0.1)  # timm/HF add their own keys
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)


def test_sgd_without_lr_says_it_is_required():
    with pytest.raises(ValueError, match="needs lr"):
        optim.SGD(P())


def test_unknown_keyword_is_a_type_error():
    with pytest.raises(TypeError):
        optim.Adam(P(), momentum=0.9)  # Adam has no momentum


def test_nonfinite_choice_is_validated():
    with pytest.raises(ValueError, match="nonfinite='ignore'"):
        optim.Adam(P(), nonfinite="ignore")


ALL = [
    lambda p, **k: optim.SGD(p, lr=0.1, **k),
    lambda p, **k: optim.SGD(p, lr=0.1, momentum=0.9, **k),
    lambda p, **k: optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, **k),
    lambda p, **k: optim.AdaGrad(p, **k),
    lambda p, **k: optim.RMSProp(p, **k),
    lambda p, **k: optim.RMSProp(p, momentum=0.9, nesterov=True, **k),
    lambda p, **k: optim.Adam(p, **k),
    lambda p, **k: optim.AdaDelta(p, **k),
]


def _snapshot(model, opt):
    params = [p.detach().clone() for p in model.parameters()]
    state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for p, s in opt.state.items()}
    return params, state


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_gradient_skips_the_step_and_leaves_everything_unchanged(make, bad):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = make(model.parameters())
    for _ in range(3):  # some state first
        opt.zero_grad()
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    before = _snapshot(model, opt)
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    model[2].weight.grad[1, 3] = bad  # one element of one tensor of the last group
    opt.step()
    after = _snapshot(model, opt)
    assert opt.skipped_steps == 1
    for b, a in zip(before[0], after[0]):
        assert torch.equal(b, a)
    for key in before[1]:
        for name, value in before[1][key].items():
            other = after[1][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other
    # and training goes on normally afterwards
    opt.zero_grad()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.state_dict()["deepdescent"]["skipped_steps"] == 1


def test_large_finite_gradients_are_not_mistaken_for_nonfinite():
    p = torch.zeros(4, requires_grad=True)
    opt = optim.SGD([p], lr=1e-30)
    p.grad = torch.full((4,), 3e38)  # the sum of squares would overflow; max|g| does not
    opt.step()
    assert opt.skipped_steps == 0 and p[0].item() != 0.0


def test_raise_mode_names_the_parameter():
    model = nn.Linear(3, 2)
    opt = optim.Adam(model.named_parameters(), nonfinite="raise")
    model(torch.randn(5, 3)).sum().backward()
    model.bias.grad[0] = math.nan
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteGradientError, match="'bias'.*shape \\(2,\\)"):
        opt.step()
    assert torch.equal(model.weight, before) and not opt.state


def test_sparse_gradients_get_a_clear_error():
    emb = nn.Embedding(10, 3, sparse=True)
    opt = optim.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()
