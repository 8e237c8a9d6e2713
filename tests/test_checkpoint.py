"""state_dict round trips: a run resumed in a new process is bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import resume_helper as rh
from deepdescent import optim


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    expected = {}
    for name in rh.CONFIGS:
        model, opt, sched = rh.make(name, seed=0)
        rh.train(model, opt, sched, range(rh.FIRST))
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()},
                   tmp_path / f"{name}.pt")
        rh.train(model, opt, sched, range(rh.FIRST, rh.FIRST + rh.SECOND))
        expected[name] = ([p.detach().clone() for p in model.parameters()], opt.skipped_steps)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), *sys.path])}
    subprocess.run([sys.executable, rh.__file__, str(tmp_path)], check=True, env=env, timeout=300)
    for name, (params, skipped) in expected.items():
        got = torch.load(tmp_path / f"{name}.resumed.pt", weights_only=True)
        assert skipped == got["skipped"] == 1, name
        for e, g in zip(params, got["params"]):
            assert torch.equal(e, g), f"{name}: resumed parameters differ"


def _trained(cls, **kw):
    p = torch.nn.Parameter(torch.ones(3, 2))
    opt = cls([p], **kw)
    p.grad = torch.ones(3, 2)
    opt.step()
    return opt


def test_loading_another_optimizer_class_is_refused():
    sd = _trained(optim.Adam).state_dict()
    target = _trained(optim.RMSProp)
    with pytest.raises(ValueError, match="state_dict of Adam into RMSProp"):
        target.load_state_dict(sd)


def test_loading_a_torch_optim_state_dict_is_refused():
    p = torch.nn.Parameter(torch.ones(2))
    sd = torch.optim.Adam([p]).state_dict()
    with pytest.raises(ValueError, match="not from deepdescent.*'maximize'"):  # its options would be lost
        optim.Adam([p]).load_state_dict(sd)


def test_loading_mismatched_shapes_is_refused_and_changes_nothing():
    sd = _trained(optim.Adam).state_dict()
    q = torch.nn.Parameter(torch.ones(2, 3))
    target = optim.Adam([q])
    with pytest.raises(ValueError, match=r"'exp_avg'.*shape \(3, 2\).*shape \(2, 3\)"):
        target.load_state_dict(sd)
    assert not target.state


def test_loading_a_wrong_number_of_parameters_is_refused():
    sd = _trained(optim.SGD, lr=0.1, momentum=0.9).state_dict()
    target = optim.SGD([torch.nn.Parameter(torch.ones(3, 2)), torch.nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(ValueError, match="1 parameters.*2"):
        target.load_state_dict(sd)


def test_loading_garbage_is_refused():
    with pytest.raises(ValueError, match="'state' and 'param_groups'"):
        optim.Adam([torch.nn.Parameter(torch.ones(1))]).load_state_dict({"foo": 1})
