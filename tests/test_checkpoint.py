"""state_dict round trips: a run resumed in a new process is bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import resume_helper as rh
from deepdescent import kernels, optim


def _in_new_process(mode: str, directory, **env: str) -> None:
    """resume_helper in a new interpreter, as a user's script runs: no DEEPDESCENT_KERNEL_BUILD."""
    clean = {k: v for k, v in os.environ.items() if k != "DEEPDESCENT_KERNEL_BUILD"}
    clean["PYTHONPATH"] = os.pathsep.join([os.path.dirname(__file__), *sys.path])
    subprocess.run([sys.executable, rh.__file__, mode, str(directory)], check=True, env={**clean, **env}, timeout=600)


def _results(directory, mode: str) -> dict:
    return {name: torch.load(directory / f"{name}.{mode}.pt", weights_only=True) for name in rh.CONFIGS}


def test_resume_in_a_new_process_is_bit_identical(tmp_path):
    """Every registered first-order algorithm (each variant): 13 steps in one process, a checkpoint,
    17 more in another, equals 30 in a third, bit for bit — with the kernels the setup built."""
    for mode in ("first", "resume", "full"):
        _in_new_process(mode, tmp_path)
    resumed, full = _results(tmp_path, "resume"), _results(tmp_path, "full")
    for name in rh.CONFIGS:
        assert resumed[name]["skipped"] == full[name]["skipped"] == 1, name
        assert resumed[name]["path"] == full[name]["path"], name
        if rh.SPECS[name].fused and kernels.available("cpu") is None:  # the setup built them: fused from step 1
            assert full[name]["path"] == "fused", name
        for e, g in zip(full[name]["params"], resumed[name]["params"]):
            assert torch.equal(e, g), f"{name}: resumed parameters differ from the uninterrupted run"


def test_a_process_without_kernels_is_eager_throughout_and_gives_the_same_bits(tmp_path):
    """In a clean kernel cache (nothing built, no compiler run: DEEPDESCENT_KERNEL_BUILD=never)
    every optimizer runs eager from its first step to its last; rerun, it gives the same bits —
    and the same bits as the fused path of the previous test's kernels."""
    cache, fused = tmp_path / "cache", tmp_path / "fused"
    fused.mkdir()
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        _in_new_process("full", tmp_path / run, DEEPDESCENT_KERNEL_CACHE=str(cache),
                        DEEPDESCENT_KERNEL_BUILD="never")
    _in_new_process("full", fused)
    a, b, f = _results(tmp_path / "a", "full"), _results(tmp_path / "b", "full"), _results(fused, "full")
    assert not any(cache.rglob("*.so"))
    for name in rh.CONFIGS:
        assert a[name]["path"] in ("eager", None) and b[name]["path"] == a[name]["path"], name
        for x, y, z in zip(a[name]["params"], b[name]["params"], f[name]["params"]):
            assert torch.equal(x, y), f"{name}: two eager runs differ"
            assert torch.equal(x, z), f"{name}: the eager and the fused run differ"


def test_the_path_is_recorded_and_taken_again_or_a_warning_says_why_not(monkeypatch):
    """state_dict() records the path; a resumed optimizer takes it again, and where the fused path
    is unavailable it warns that the iterates may differ in the last bits, then runs eager."""
    opt = _trained(optim.Adam)
    sd = opt.state_dict()
    assert sd["deepdescent"]["path"] == opt.path and opt.path in ("fused", "eager")
    fused = {**sd, "deepdescent": {**sd["deepdescent"], "path": "fused"}}
    again = _trained(optim.Adam, impl="auto")
    again.load_state_dict(fused)
    if kernels.available("cpu") is None:
        assert again.path == "fused"
    monkeypatch.setenv("DEEPDESCENT_NO_FUSED", "1")  # the fused path unavailable here
    elsewhere = _trained(optim.Adam)
    with pytest.warns(RuntimeWarning, match="last bits"):
        elsewhere.load_state_dict(fused)
    assert elsewhere.path == "eager"
    with pytest.raises(ValueError, match="deepdescent.path='gpu'"):
        elsewhere.load_state_dict({**sd, "deepdescent": {**sd["deepdescent"], "path": "gpu"}})


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


def _stepped(make, seed: int = 0):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = make([p])
    for _ in range(2):
        p.grad = torch.randn(3, 2)
        opt.step()
    return opt


def _edited(sd: dict, edit) -> dict:
    import copy

    sd = copy.deepcopy(sd)
    edit(sd["state"][0], sd["param_groups"][0])
    return sd


@pytest.mark.parametrize("name", [n for n in rh.CONFIGS if rh.SPECS[n].buffers(
    rh.CONFIGS[n]([torch.nn.Parameter(torch.ones(1))]).param_groups[0])])  # SGD keeps none: nothing to break
def test_a_state_dict_with_a_broken_buffer_is_refused_and_changes_nothing(name):
    """Every configuration: a buffer given as a list, a missing buffer, step = 0 beside buffers — each
    refused with a ValueError naming it, the target optimizer unchanged (it would otherwise fail at
    the next step, or silently restart that moment at zero, or divide by 1 − β⁰ = 0)."""
    make, spec = rh.CONFIGS[name], rh.SPECS[name]
    sd = _stepped(make).state_dict()
    target = _stepped(make, seed=1)
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in
              target.state[target.param_groups[0]["params"][0]].items()}
    buffers = spec.buffers(target.param_groups[0])
    cases = [(lambda s, g: s.__setitem__("step", 0), r"'step'.*=0 beside its buffers")]
    for b in buffers:
        cases += [(lambda s, g, b=b: s.__setitem__(b, s[b].tolist()), rf"'{b}'.*is a list; it must be a tensor"),
                  (lambda s, g, b=b: s.pop(b), rf"lacks \['{b}'\]")]
    for edit, message in cases:
        with pytest.raises(ValueError, match=message):
            target.load_state_dict(_edited(sd, edit))
        after = target.state[target.param_groups[0]["params"][0]]
        assert sorted(after) == sorted(before)
        assert all(torch.equal(after[k], v) if torch.is_tensor(v) else after[k] == v for k, v in before.items())


def _nesterov(name: str) -> bool:
    return rh.SPECS[name].interim(rh.CONFIGS[name]([torch.nn.Parameter(torch.ones(1))]).param_groups[0])


@pytest.mark.parametrize("name", [n for n in rh.CONFIGS if _nesterov(n)])
def test_a_flipped_nesterov_flag_is_refused(name):
    """A Nesterov configuration's dict with nesterov turned off (the parameters hold θ̃ but would step
    as θ), and one whose mode says it stepped without Nesterov momentum: both refused, naming the mode."""
    make = rh.CONFIGS[name]
    target = _stepped(make, seed=1)
    with pytest.raises(ValueError, match="interim_mode='lookahead'.*no param group"):
        target.load_state_dict(_edited(_stepped(make).state_dict(), lambda s, g: g.__setitem__("nesterov", False)))
    unmoded = _stepped(make).state_dict()
    unmoded["deepdescent"]["interim_mode"] = None
    with pytest.raises(ValueError, match="interim_mode is None"):
        target.load_state_dict(unmoded)
