"""Parity with torch.optim wherever the mathematics coincide (float32, same model and data)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deepdescent import optim

STEPS = 60


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(model, opt, steps=STEPS, sched=None, data_seed=1):
    gen = torch.Generator().manual_seed(data_seed)
    for _ in range(steps):
        x = torch.randn(32, 10, generator=gen)
        y = torch.randint(0, 3, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()
    return [p.detach().clone() for p in model.parameters()]


def _groups(model, **second):
    params = list(model.parameters())
    return [{"params": params[:2]}, {"params": params[2:], **second}]


PAIRS = [
    ("sgd", lambda p: optim.SGD(p, lr=0.1, weight_decay=1e-3), lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=1e-3)),
    ("momentum-torch", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, convention="torch"),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("momentum-book", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("nesterov-torch", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, convention="torch"),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    ("nesterov-book", lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    ("adagrad", lambda p: optim.AdaGrad(p, lr=0.05, eps=1e-10, weight_decay=1e-3),
     lambda p: torch.optim.Adagrad(p, lr=0.05, eps=1e-10, weight_decay=1e-3)),
    ("rmsprop-torch", lambda p: optim.RMSProp(p, lr=1e-3, rho=0.99, eps=1e-8, convention="torch"),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.99, eps=1e-8)),
    ("rmsprop-momentum-torch", lambda p: optim.RMSProp(p, lr=1e-3, momentum=0.9, convention="torch", weight_decay=1e-3),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.9, weight_decay=1e-3)),
    ("adam", lambda p: optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), weight_decay=1e-3),
     lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), weight_decay=1e-3)),
    ("adadelta", lambda p: optim.AdaDelta(p, lr=0.9, rho=0.9, weight_decay=1e-3),
     lambda p: torch.optim.Adadelta(p, lr=0.9, weight_decay=1e-3)),
]


@pytest.mark.parametrize("name,ours,theirs", PAIRS, ids=[p[0] for p in PAIRS])
def test_parity_with_torch_optim(name, ours, theirs):
    m1, m2 = _model(), _model()
    got = _train(m1, ours(m1.parameters()))
    want = _train(m2, theirs(m2.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_rmsprop_book_eps_placement_differs_from_torch():
    """Book 8.5 puts δ inside the root; torch outside. With a large δ the difference shows."""
    m1, m2 = _model(), _model()
    got = _train(m1, optim.RMSProp(m1.parameters(), lr=1e-2, eps=1e-2), steps=5)
    want = _train(m2, torch.optim.RMSprop(m2.parameters(), lr=1e-2, alpha=0.9, eps=1e-2), steps=5)
    assert max((g - w).abs().max().item() for g, w in zip(got, want)) > 1e-3


def test_per_group_hyperparameters_match_torch():
    m1, m2 = _model(), _model()
    got = _train(m1, optim.Adam(_groups(m1, lr=1e-2, betas=(0.5, 0.9)), lr=1e-3))
    want = _train(m2, torch.optim.Adam(_groups(m2, lr=1e-2, betas=(0.5, 0.9)), lr=1e-3))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_tensor_lr_and_torch_scheduler():
    """lr as a 0-dim tensor, driven by a torch scheduler: same as torch.optim with the same schedule."""
    m1, m2 = _model(), _model()
    o1 = optim.Adam(m1.parameters(), lr=torch.tensor(0.01))
    o2 = torch.optim.Adam(m2.parameters(), lr=0.01)
    got = _train(m1, o1, sched=torch.optim.lr_scheduler.StepLR(o1, step_size=10, gamma=0.5))
    want = _train(m2, o2, sched=torch.optim.lr_scheduler.StepLR(o2, step_size=10, gamma=0.5))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def _registered_pairs():
    """Every registered algorithm's kernel structures (with and without weight decay) that
    torch.optim computes the same way, as its spec maps them."""
    from deepdescent.algorithms import REGISTRY

    for name, spec in REGISTRY.items():
        if spec.torch_options is None:
            continue
        for i, (h, look) in enumerate(spec.kernel_structures()):
            options = spec.torch_options({**h, "lr": 0.01})
            if options is not None and not look:
                yield pytest.param(spec, {k: v for k, v in h.items() if k != "lr"}, options, id=f"{name}-{i}")


@pytest.mark.parametrize("spec,ours,theirs", list(_registered_pairs()))
def test_every_registered_algorithm_matches_torch_where_the_math_is_the_same(spec, ours, theirs):
    m1, m2 = _model(), _model()
    got = _train(m1, optim.optimizer_class(spec)(m1.parameters(), **{**ours, "lr": 0.01}), steps=20)
    want = _train(m2, getattr(torch.optim, spec.torch_class)(m2.parameters(), **{**theirs, "lr": 0.01}), steps=20)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
