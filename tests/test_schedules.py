"""LinearDecay (eq. 8.14) with our optimizers and with torch's."""

from __future__ import annotations

import pytest
import torch

import reference as ref
from deepdescent import optim
from deepdescent.schedules import LinearDecay


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.5), lambda p: optim.Adam(p, lr=0.5)])
def test_linear_decay_follows_eq_8_14_and_then_stays_constant(make):
    opt = make([torch.nn.Parameter(torch.zeros(1))])
    sched = LinearDecay(opt, tau=20, final_factor=0.01)
    seen = []
    for _ in range(40):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for k, lr in enumerate(seen):
        assert lr == pytest.approx(ref.linear_decay(k, 0.5, 20, 0.01), rel=1e-12)
    assert seen[20] == seen[-1] == pytest.approx(0.005)


def test_linear_decay_per_group_base_rates_and_state_dict():
    opt = optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                     {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1.0}], lr=0.1)
    sched = LinearDecay(opt, tau=10, final_factor=0.0)
    for _ in range(5):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.05, 0.5])
    fresh = LinearDecay(optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), tau=3)
    fresh.load_state_dict(sched.state_dict())
    assert fresh.tau == 10 and fresh.last_epoch == 5


@pytest.mark.parametrize("kwargs,message", [
    (dict(tau=0), "tau=0"), (dict(tau=2.5), "tau=2.5"), (dict(tau=10, final_factor=1.5), "final_factor=1.5"),
    (dict(tau=10, final_factor=-0.1), "final_factor=-0.1"), (dict(tau=10, final_factor=float("nan")), "final_factor=nan"),
])
def test_linear_decay_rejects_bad_arguments(kwargs, message):
    opt = optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=message):
        LinearDecay(opt, **kwargs)
