"""The fused path generated from the functional core: same results as the eager path on random
shapes (odd sizes, empty and 0-dim tensors), float32 and float64, several groups."""

from __future__ import annotations

import bisect
import contextlib
import copy
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from deepdescent import executor, kernels, optim
from deepdescent.algorithms import REGISTRY
from deepdescent.executor import CPU_CHUNK_NUMEL
from resume_helper import CONFIGS, ONE_PER_ALGORITHM, SPECS
from deepdescent.kernels.trace import structure_key

shapes = st.lists(st.one_of(st.just(()), st.tuples(st.integers(0, 37)), st.tuples(st.integers(1, 9), st.integers(1, 13))),
                  min_size=1, max_size=5)


def _run(make, shape_list, dtype, impl, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shape_list]
    half = max(1, len(params) // 2)
    groups = [{"params": params[:half]}] + ([{"params": params[half:], "lr": 0.003}] if params[half:] else [])
    opt = make(groups)
    opt.impl = impl
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g, dtype=dtype)
        opt.step()
    return [p.detach() for p in params]


def _configurations():
    """Every standard kernel of every registered algorithm (with and without Nesterov's look-ahead)."""
    for spec, h, look in kernels.standard_configurations():
        options = {k: v for k, v in h.items() if k in spec.names}
        label = ",".join(f"{k}={v}" for k, v in sorted(options.items()) if v != spec.defaults().get(k))
        yield pytest.param(spec.name, options, look, id=f"{spec.name}[{label}]{'-lookahead' if look else ''}")


#: odd sizes, empty and 0-dim tensors, one larger than a chunk of every path
BITWISE_SHAPES = [(), (0,), (37,), (5, 7), (513,), (CPU_CHUNK_NUMEL + 1001,)]


def _steps(name, options, lookahead, dtype, impl, steps=4):
    g = torch.Generator().manual_seed(7)
    params = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for s in BITWISE_SHAPES]
    groups = [{"params": params[:3]}, {"params": params[3:], "lr": options["lr"] * 0.5}]
    opt = optim.optimizer_class(REGISTRY[name])(groups, **options, impl=impl)
    for _ in range(steps):
        grads = [torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) for p in params]

        def closure():
            for p, gr in zip(params, grads):
                p.grad = gr.clone()
            return 0.0
        if lookahead:  # the parameters hold Nesterov's θ̃; else the closure evaluates there
            closure()
            opt.step()
        else:
            opt.step(closure)
    return [p.detach() for p in params] + [v for st in opt.state.values() for v in st.values()
                                           if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,options,lookahead", list(_configurations()))
def test_fused_eager_and_chunked_paths_give_the_same_bits(name, options, lookahead, dtype, monkeypatch):
    """Same inputs, same bits on every CPU path: the generated kernel rounds exactly where ATen's
    multi-tensor ops round (docs/guides/execution.md), for every registered algorithm."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    fused = _steps(name, options, lookahead, dtype, "fused")
    eager = _steps(name, options, lookahead, dtype, "eager")
    monkeypatch.setattr(executor, "CPU_CHUNK_NUMEL", 100)  # the eager path in chunks of 100 elements
    chunked = _steps(name, options, lookahead, dtype, "eager")
    for f, e, c in zip(fused, eager, chunked, strict=True):
        assert torch.equal(f, e), f"fused != eager: {int((f != e).sum())} of {f.numel()} elements differ"
        assert torch.equal(e, c), f"eager != chunked: {int((e != c).sum())} of {e.numel()} elements differ"


#: small tensors beside ones of several chunks (a ResNet's batch-norm vectors and convolutions)
SPLIT_SIZES = [3, 70_000, 17, 1, 2 * CPU_CHUNK_NUMEL + 5, 100, 64, 40_001, 7, CPU_CHUNK_NUMEL, 33]


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)  # the test processes run one thread each (conftest)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _fused_and_eager(make, sizes, seed, steps):
    """The parameters of ``sizes`` after ``steps`` steps of ``make(params, impl)`` on the fused and
    the eager path, from the same gradients."""
    results = []
    for impl in ("fused", "eager"):
        g = torch.Generator().manual_seed(seed)
        params = [torch.randn(n, generator=g).requires_grad_() for n in sizes]
        opt = make(params, impl)
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=g)
            opt.step()
        assert opt.path == impl
        results.append([p.detach() for p in params])
    return results


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_share_the_elements_without_gap_or_overlap(threads):
    """The fused step hands each thread an even share of the elements (not of the chunks), cut
    inside tensors at 16-element lines: every element is updated exactly once (the eager path's
    bits, several steps), and a non-finite gradient is found wherever it lies, next to every cut."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    with _threads(threads):
        fused, eager = _fused_and_eager(lambda ps, impl: optim.Adam(ps, lr=0.01, impl=impl), SPLIT_SIZES, 3, 3)
        for f, e in zip(fused, eager, strict=True):
            assert torch.equal(f, e), f"{int((f != e).sum())} of {f.numel()} elements differ"

        grads = [torch.randn(n) for n in SPLIT_SIZES]
        assert kernels.any_nonfinite(grads) is False
        starts = [0, *itertools.accumulate(SPLIT_SIZES)]
        total = starts[-1]
        near_cuts = {x + d for i in range(1, threads) for x in (total * i // threads,) for d in range(-20, 21)}
        for x in sorted(near_cuts | {0, total - 1}):
            t = bisect.bisect_right(starts, x) - 1
            for bad in (math.nan, math.inf):
                grads[t][x - starts[t]] = bad
                assert kernels.any_nonfinite(grads) is True, f"{bad} at element {x} of {total} missed"
            grads[t][x - starts[t]] = 0.0


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(sizes=[CPU_CHUNK_NUMEL + 1], threads=2)
@example(sizes=[3, 100_000, 0, 70_001, 17], threads=3)
@given(sizes=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 3 * CPU_CHUNK_NUMEL)), min_size=1, max_size=6),
       threads=st.integers(2, 4))
def test_the_threads_cut_anywhere_and_the_bits_stay(sizes, threads):
    """Random lists (empty tensors, small ones, several chunks) on 2–4 threads: wherever the shares
    are cut, the fused step equals the eager one bit for bit."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    with _threads(threads):
        fused, eager = _fused_and_eager(
            lambda ps, impl: optim.RMSProp(ps, lr=0.01, momentum=0.9, impl=impl), sizes, sum(sizes), 2)
    assert all(torch.equal(f, e) for f, e in zip(fused, eager, strict=True))


@pytest.mark.parametrize("name", [name for name in CONFIGS if SPECS[name].fused])
@settings(max_examples=6, deadline=None)
@given(shape_list=shapes, double=st.booleans())
def test_fused_equals_eager_on_random_shapes(name, shape_list, double):
    """Random shapes (odd, empty, 0-dim), two groups: bit-identical for every registered variant."""
    dtype = torch.float64 if double else torch.float32
    fused = _run(CONFIGS[name], shape_list, dtype, "fused")
    eager = _run(CONFIGS[name], shape_list, dtype, "eager")
    for f, e in zip(fused, eager):
        assert torch.equal(f, e)


def test_an_algorithm_the_tracer_cannot_follow_runs_eager_and_leaves_the_others_fused(monkeypatch):
    """A registered toy algorithm whose update uses an op the tracer does not know (Lion's sign):
    it warns once, naming the op, and runs eager; SGD's and Adam's fused paths keep working."""
    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    from deepdescent.algorithms import validation as check
    from deepdescent.algorithms.spec import Algorithm, Hyperparameter
    from deepdescent.optim.base import BookOptimizer

    def update(h, params, grads, bufs, steps, lookahead):
        torch._foreach_add_(params, torch._foreach_sign(grads), alpha=-h["lr"])

    toy = Algorithm(name="SignToy", reference="a test", update=update, buffers=lambda h: (),
                    hyperparameters=(Hyperparameter("lr", 0.1, check.non_negative, "ε"),))

    class SignToy(BookOptimizer):
        algorithm = toy

        def __init__(self, params, lr=0.1, **kw):
            super().__init__(params, {"lr": lr}, **kw)

    monkeypatch.setitem(REGISTRY, "SignToy", toy)
    monkeypatch.setattr(kernels, "_EAGER_ONLY", {})
    p = torch.nn.Parameter(torch.ones(5))
    opt = SignToy([p], lr=0.5)
    p.grad = torch.tensor([1.0, -2.0, 0.0, 3.0, -0.5])
    with pytest.warns(RuntimeWarning, match="_foreach_sign") as caught:
        opt.step()
        opt.step()
    assert len([w for w in caught if "_foreach_sign" in str(w.message)]) == 1
    assert opt.path == "eager" and torch.equal(p.detach(), torch.tensor([0.0, 2.0, 1.0, 0.0, 2.0]))
    for make in (lambda q: optim.SGD(q, lr=0.1, momentum=0.9), lambda q: optim.Adam(q)):
        q = torch.nn.Parameter(torch.ones(5))
        other = make([q])
        q.grad = torch.ones(5)
        other.step()
        assert other.path == "fused"
    with pytest.raises(RuntimeError, match="_foreach_sign"):
        SignToy([p], impl="fused").step()
    assert kernels.build() > 0  # building the standard set skips the toy, builds the others


def test_the_fused_kernel_is_really_used_and_skips_nonfinite_steps():
    p = torch.nn.Parameter(torch.ones(5))
    opt = optim.Adam([p], impl="fused")
    p.grad = torch.ones(5)
    opt.step()
    before = p.detach().clone()
    p.grad = torch.tensor([1.0, math.nan, 1.0, 1.0, 1.0])
    opt.step()
    assert torch.equal(p.detach(), before) and opt.skipped_steps == 1
    assert kernels.any_nonfinite([torch.tensor([1.0, math.inf])]) is True
    assert kernels.any_nonfinite([torch.tensor([1.0, 3e38])]) is False


@pytest.mark.parametrize("name", [name for name, spec in ONE_PER_ALGORITHM.items() if spec.fused])
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape_list=shapes)
def test_triton_kernel_equals_eager_on_random_shapes(name, shape_list, triton_interpreter):
    """The GPU path's generated Triton kernel (in Triton's interpreter), every fused algorithm:
    odd, empty and 0-dim shapes."""
    fused = _run(CONFIGS[name], shape_list, torch.float32, "fused", steps=3)
    eager = _run(CONFIGS[name], shape_list, torch.float32, "eager", steps=3)
    for f, e in zip(fused, eager):
        torch.testing.assert_close(f, e, rtol=2e-6, atol=2e-6)


def test_triton_kernel_skips_a_nonfinite_step_on_the_device(triton_interpreter):
    p = torch.nn.Parameter(torch.ones(3000, dtype=torch.bfloat16))
    opt = optim.Adam([p], lr=0.1, impl="fused")
    p.grad = torch.ones(3000, dtype=torch.bfloat16)
    opt.step()
    before, state = p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}
    assert isinstance(state["step"], torch.Tensor)  # the device path keeps the counter as a tensor
    p.grad[2500] = math.inf
    opt.step()
    assert torch.equal(p.detach(), before) and opt.skipped_steps == 1
    assert all(torch.equal(v, state[k]) for k, v in opt.state[p].items())
    p.grad = torch.ones(3000, dtype=torch.bfloat16)
    opt.step()
    assert float(opt.state[p]["step"]) == 2.0 and not torch.equal(p.detach(), before)


def test_impl_option_is_validated():
    p = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match="impl='cuda'"):
        optim.Adam([p], impl="cuda")


def test_trace_records_the_box_of_adam():
    """The traced graph of Adam evaluates, element by element, to the box's formula."""
    spec = optim.Adam.algorithm
    t, names = kernels.traced(spec, spec.defaults(lr=0.1, betas=(0.8, 0.9), eps=1e-3))
    values = {"lr": 0.1, "betas0": 0.8, "betas1": 0.9, "eps": 1e-3, "weight_decay": 0.0}
    inputs = [0.5, 2.0, 0.1, 0.3]  # θ, g, s, r
    env = []
    for node in t.graph.nodes:
        kind = node[0]
        if kind == "load":
            env.append(inputs[node[1]])
        elif kind == "scalar":
            env.append(values[node[1]])
        elif kind == "tensor_scalar":
            env.append(3.0)  # t
        elif kind == "const":
            env.append(node[1])
        else:
            a = [env[i] for i in node[1:]]
            env.append({"add": lambda: a[0] + a[1], "sub": lambda: a[0] - a[1], "mul": lambda: a[0] * a[1],
                        "div": lambda: a[0] / a[1], "neg": lambda: -a[0], "sqrt": lambda: math.sqrt(a[0]),
                        "pow": lambda: a[0] ** a[1], "max": lambda: max(a), "fma": lambda: a[0] * a[1] + a[2],
                        "lerp": lambda: a[0] + a[2] * (a[1] - a[0])}[kind]())
    s = 0.8 * 0.1 + 0.2 * 2.0
    r = 0.9 * 0.3 + 0.1 * 4.0
    theta = 0.5 - 0.1 * (s / (1 - 0.8**3)) / (math.sqrt(r / (1 - 0.9**3)) + 1e-3)
    assert env[t.outputs[0]] == pytest.approx(theta, rel=1e-12)
    assert env[t.outputs[2]] == pytest.approx(s) and env[t.outputs[3]] == pytest.approx(r)
    assert 1 not in t.outputs  # the gradient is never written
    assert structure_key({"lr": 0.1, "momentum": 0.0}) != structure_key({"lr": 0.1, "momentum": 0.9})


def test_non_contiguous_gradients_fall_back_to_eager_and_fused_refuses():
    def run(impl):
        p = torch.nn.Parameter(torch.ones(4, 3))
        opt = optim.Adam([p], lr=0.1, impl=impl)
        for k in range(3):
            p.grad = (torch.arange(12.0).reshape(3, 4) + k).T  # a transposed, non-contiguous gradient
            opt.step()
        return p.detach()

    torch.testing.assert_close(run("auto"), run("eager"), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="impl='fused' needs contiguous"):
        run("fused")
    g = torch.arange(6.0).reshape(2, 3).T
    assert kernels.any_nonfinite([g]) is None  # the compiled check declines; the optimizer uses another


@pytest.mark.parametrize("path", ["eager", "fused", "triton"])
def test_nonfinite_propagate_does_not_look(path, request):
    """``nonfinite="propagate"`` behaves like torch.optim: the NaN reaches the parameter."""
    if path == "triton":
        request.getfixturevalue("triton_interpreter")
    p = torch.nn.Parameter(torch.ones(4))
    opt = optim.SGD([p], lr=0.5, nonfinite="propagate", impl="eager" if path == "eager" else "fused")
    p.grad = torch.tensor([1.0, math.nan, 1.0, 1.0])
    opt.step()
    assert math.isnan(p[1].item()) and p[0].item() == 0.5 and opt.skipped_steps == 0
    with pytest.raises(ValueError, match="nonfinite"):
        optim.SGD([p], lr=0.5, nonfinite="ignore")


def test_device_step_follows_changes_between_steps(triton_interpreter):
    """The GPU step keeps a plan per group (state, addresses); it must notice a parameter without a
    gradient, a parameter given new memory, a hyperparameter that adds state, and a loaded state."""
    def make(impl):
        a, b = torch.nn.Parameter(torch.linspace(-1, 1, 300)), torch.nn.Parameter(torch.linspace(2, 3, 70))
        return [a, b], optim.SGD([a, b], lr=0.05, impl=impl)

    (pf, of), (pe, oe) = make("fused"), make("eager")
    gen = torch.Generator().manual_seed(0)
    for k in range(8):
        grads = [torch.randn(p.shape, generator=gen) for p in pf]
        for i, (x, y, g) in enumerate(zip(pf, pe, grads)):
            x.grad, y.grad = (None, None) if (k == 2 and i == 1) else (g.clone(), g.clone())
        if k == 3:
            pf[0].data, pe[0].data = pf[0].data.clone(), pe[0].data.clone()
        if k == 4:
            for o in (of, oe):
                o.param_groups[0]["momentum"] = 0.9  # the update now needs a velocity buffer
        if k == 6:
            of.load_state_dict(copy.deepcopy(oe.state_dict()))  # (torch.optim shares loaded tensors)
        of.step()
        oe.step()
        for x, y in zip(pf, pe):
            torch.testing.assert_close(x.detach(), y.detach(), rtol=2e-6, atol=2e-6, msg=lambda m: f"step {k}: {m}")
    assert isinstance(of.state[pf[0]]["step"], torch.Tensor) and float(of.state[pf[0]]["step"]) == 8
    assert float(of.state[pf[1]]["step"]) == 7


def test_a_build_killed_midway_blocks_nobody(monkeypatch, tmp_path, caplog):
    """A process holding an extension's build lock is killed with -9: a process waiting for it says
    whom it waits for, then takes the lock at once and builds (the system releases the lock of a
    dead process; no stale lock file can block anyone)."""
    import logging
    import os
    import signal
    import subprocess
    import sys
    import threading

    if kernels.available("cpu"):
        pytest.skip(f"no fused CPU path here: {kernels.available('cpu')}")
    kernels.build()  # the runtime is loaded in this process
    monkeypatch.setenv("DEEPDESCENT_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(kernels, "_FUNCTIONS", {k: v for k, v in kernels._FUNCTIONS.items()
                                                if k in ("run_kernel", "any_nonfinite")})
    ext = kernels._algorithm_extension(REGISTRY["Adam"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom deepdescent import kernels\nfrom deepdescent.algorithms import "
         "REGISTRY\nwith kernels._exclusive(kernels._algorithm_extension(REGISTRY['Adam'])):\n    print('held', "
         "flush=True)\n    time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "DEEPDESCENT_KERNEL_CACHE": str(tmp_path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        builder = threading.Thread(target=kernels._compile, args=(ext,))
        with caplog.at_level(logging.WARNING, logger="deepdescent"):
            builder.start()
            builder.join(3)
            assert builder.is_alive()  # it waits for the holder...
            assert f"waiting for process {holder.pid}" in caplog.text and "Adam" in caplog.text
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    builder.join(120)  # ...and builds once the holder is gone
    assert not builder.is_alive() and all(n in kernels._FUNCTIONS for n in ext.functions)
    assert os.path.exists(kernels._library(ext))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_the_eager_square_root_is_correctly_rounded(dtype):
    """algorithms.common.sqrt (the eager path's √, which the fused kernels' processor root must
    match bit for bit) against Python's math.sqrt, correctly rounded (IEEE 754), on values across
    the exponent range and the special ones; torch.sqrt (MKL's VML on CPU) is not, at this size."""
    import math

    from deepdescent.algorithms.common import sqrt, sqrt_

    g = torch.Generator().manual_seed(3)
    low = -300 if dtype == torch.float64 else -40
    x = torch.rand(30_000, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(low, 30, (30_000,), generator=g)
    special = [0.0, -0.0, float("inf"), float("nan"), -1.0, torch.finfo(dtype).tiny / 8, torch.finfo(dtype).max]
    x = torch.cat([x.to(dtype), torch.tensor(special, dtype=dtype)])
    exact = torch.tensor([math.sqrt(v) if v >= 0 else math.nan for v in x.double().tolist()], dtype=torch.float64)
    exact = exact.to(dtype)  # for float32: the double root rounded again, exact for a root of a float32
    ours = sqrt([x])[0]
    assert torch.equal(ours.isnan(), exact.isnan())
    finite = ~exact.isnan()
    assert torch.equal(ours[finite], exact[finite]) and torch.equal(ours[finite].signbit(), exact[finite].signbit())
    inplace = x.clone()
    sqrt_([inplace])
    assert torch.equal(inplace[finite], exact[finite])
    if torch.backends.mkl.is_available():  # the reason for it: MKL's √ is not correctly rounded
        assert not torch.equal(torch.sqrt(x)[finite], exact[finite])
