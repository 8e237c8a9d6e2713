"""The executor and the kernel tracer, as the optimizers and the lab use them: the non-finite
guard over several groups and buckets, tracing without touching torch's namespace, and the
layering (no import cycle, no private name of another module)."""

from __future__ import annotations

import ast
import itertools
import pathlib
import threading

import pytest
import torch
from torch import nn

from deepdescent import executor, kernels, optim
from deepdescent.algorithms import REGISTRY
from deepdescent.algorithms.spec import Algorithm, Hyperparameter

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "deepdescent"


def _options(spec: Algorithm) -> dict:
    return {"lr": 0.01} if spec.defaults()["lr"] is None else {}


@pytest.mark.parametrize("impl", ["auto", "eager"])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_a_nan_in_one_of_several_groups_and_buckets_skips_the_whole_step(name, impl):
    """Three buckets — group 0 (float32), group 1 (float32 and float64) — and a NaN only in the
    last one: no parameter and no state changes anywhere, the step is counted as skipped, and the
    next finite step proceeds."""
    spec = REGISTRY[name]
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3))
    c = nn.Parameter(torch.randn(4, dtype=torch.float64))
    opt = optim.optimizer_class(spec)([{"params": [a]}, {"params": [b, c]}], **_options(spec), impl=impl)
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    before = [p.detach().clone() for p in (a, b, c)]
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for p in (a, b, c) for k, v in opt.state[p].items()}
    c.grad = torch.tensor([1.0, float("nan"), 1.0, 1.0], dtype=torch.float64)
    opt.step()
    assert opt.skipped_steps == 1
    assert all(torch.equal(x, y) for x, y in zip(before, (a, b, c)))
    after = {k: v for p in (a, b, c) for k, v in opt.state[p].items()}
    assert all(torch.equal(torch.as_tensor(state[k]), torch.as_tensor(v)) for k, v in after.items())
    c.grad = torch.ones_like(c)
    opt.step()
    assert not torch.equal(before[0], a.detach()) and opt.skipped_steps == 1


def test_a_group_on_two_devices_is_stepped_per_device():
    """One group holding a CPU parameter and a meta one (two devices, one dtype): each device's
    tensors go to their own bucket, so the CPU parameter takes exactly the steps it takes alone and
    the meta one stays on its device."""
    a, m = nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(5, device="meta"))
    alone = nn.Parameter(a.detach().clone())
    opt, ref = optim.Adam([a, m], lr=0.1), optim.Adam([alone], lr=0.1)
    for _ in range(2):
        a.grad, m.grad = torch.randn(5), torch.randn(5, device="meta")
        alone.grad = a.grad.clone()
        opt.step()
        ref.step()
    assert torch.equal(a.detach(), alone.detach()) and m.device.type == "meta"
    assert opt.state[m]["exp_avg"].device.type == "meta"


_NAMES = itertools.count()


def _spec(update, **kw) -> Algorithm:
    # a name of its own: traces are cached by name, and id() of a collected function is reused
    return Algorithm(name=f"test-{next(_NAMES)}", reference="test", update=update, buffers=lambda h: ("buf",),
                     hyperparameters=(Hyperparameter("lr", 0.1, lambda n, v: None, "ε"),
                                      Hyperparameter("momentum", 0.5, lambda n, v: None, "α")), **kw)


def test_tracing_never_replaces_torch_functions():
    """The tracer records through ``__torch_function__``: while an update is traced, torch's
    ``_foreach_*`` functions are torch's own, for the traced code and for every other thread."""
    original = torch._foreach_add_
    seen, other = [], []

    def update(h, params, grads, bufs, steps, lookahead):
        seen.append(torch._foreach_add_ is original)
        worker = threading.Thread(target=lambda: other.append(torch._foreach_add_ is original))
        worker.start()
        worker.join()
        torch._foreach_mul_(bufs["buf"], h["momentum"])
        torch._foreach_add_(bufs["buf"], grads)
        torch._foreach_add_(params, bufs["buf"], alpha=-h["lr"])

    trace, names = kernels.traced(_spec(update), {"lr": 0.1, "momentum": 0.5})
    assert seen == [True] and other == [True]
    assert names == ["lr", "momentum"] and set(trace.outputs) == {0, 2}


def test_a_symbolic_hyperparameter_used_as_a_bool_raises():
    """``if momentum:`` would silently take one branch for every momentum: it must raise."""
    def update(h, params, grads, bufs, steps, lookahead):
        if h["momentum"]:
            torch._foreach_add_(params, grads)

    with pytest.raises(kernels.NotTraceable, match="cannot decide a branch"):
        kernels.traced(_spec(update), {"lr": 0.1, "momentum": 0.5})


def test_an_op_the_tracer_cannot_follow_raises_a_clear_error():
    def update(h, params, grads, bufs, steps, lookahead):
        torch._foreach_exp_(params)

    with pytest.raises(kernels.NotTraceable, match="_foreach_exp_"):
        kernels.traced(_spec(update), {"lr": 0.1, "momentum": 0.5})


def test_vectorized_members_flag_a_nonfinite_gradient_per_member():
    g = [torch.zeros(3, 4, 2), torch.zeros(3, 5)]
    g[1][2, 1] = float("inf")
    assert executor.nonfinite_members(g).tolist() == [False, False, True]


# ------------------------------------------------------------------ layering
_BASE = {"algorithms": set(), "checkpoints": set(), "schedules": set(), "curvature": set(), "init": set(),
         "training": set()}
_LAYERS = {  # a package (or top-level module) may import those listed, never any other
    **_BASE,
    "kernels": {"algorithms"},
    "executor": {"algorithms", "kernels"},
    "second_order": {"algorithms", "checkpoints", "curvature"},
    "optim": {"algorithms", "checkpoints", "curvature", "executor", "kernels", "second_order"},
    "diagnostics": {"curvature"},
}
_LAYERS["lab"] = {*_LAYERS, "diagnostics"} - {"lab"}
_LAYERS["cli"] = {*_LAYERS} - {"cli"}


def _imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepdescent"):
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("deepdescent")]
    return found


def _targets(module: str, names: list[str]) -> list[str]:
    """The packages (or top-level modules) an import reaches: ``deepdescent.x.y`` → x;
    ``from deepdescent import x, y`` → x, y."""
    parts = module.split(".")
    return [parts[1]] if len(parts) > 1 else names


def test_every_package_imports_only_the_layers_below_it():
    """Every package and top-level module of deepdescent imports only those below it (at module
    level or inside a function: a local import may not hide a circle), and every one is placed."""
    wrong, unplaced = [], set()
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        package = rel.parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        if package not in _LAYERS:
            unplaced.add(package)
            continue
        for module, names in _imports(path):
            for target in _targets(module, names):
                if target != package and target not in _LAYERS[package]:
                    wrong.append(f"{rel} imports {module} {names}")
    assert not unplaced, f"packages with no layer in _LAYERS: {sorted(unplaced)}"
    assert not wrong, "\n".join(wrong)


#: The lab's modules, lowest first: each imports only those before it (a module-level or a local
#: import alike), so that following `bench` to a stored trial and back to the report never circles.
LAB_ORDER = [
    "files", "workers", "paths", "workload", "challenges", "data", "workloads", "storage", "pages",
    "optimizers", "digits", "problems", "suites", "catalog", "protocol", "engine", "claims", "search",
    "study", "verdict", "science", "report",
]


def _lab_unit(rel: pathlib.PurePath) -> str:
    return rel.parts[1].removesuffix(".py")


def test_the_lab_imports_only_the_modules_below_each_module():
    wrong, unplaced = [], set()
    for path in sorted((SRC / "lab").rglob("*.py")):
        rel = path.relative_to(SRC)
        unit = _lab_unit(rel)
        if unit == "__init__":
            continue
        if unit not in LAB_ORDER:
            unplaced.add(unit)
            continue
        for module, names in _imports(path):
            parts = module.split(".")
            if parts[:2] != ["deepdescent", "lab"]:
                continue
            targets = [parts[2]] if len(parts) > 2 else names
            for target in targets:
                if target != unit and LAB_ORDER.index(target) > LAB_ORDER.index(unit):
                    wrong.append(f"{rel} imports {module} {names}: {target} is above {unit}")
    assert not unplaced, f"lab modules with no place in LAB_ORDER: {sorted(unplaced)}"
    assert not wrong, "\n".join(wrong)


def test_no_package_imports_a_private_module_of_another():
    """``deepdescent.algorithms._x`` is the algorithms package's own business."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        package = path.relative_to(SRC).parts[0].removesuffix(".py")
        for module, _ in _imports(path):
            parts = module.split(".")
            private = [p for p in parts[1:] if p.startswith("_") and not p.startswith("__")]
            if private and len(parts) > 1 and parts[1] != package:
                wrong.append(f"{path.relative_to(SRC)} imports {module}")
    assert not wrong, "\n".join(wrong)


#: The private names of other libraries deepdescent reads, each with its reason; any other fails.
OTHER_LIBRARIES_PRIVATE = {
    "_optimizer_load_state_dict_pre_hooks": "load_state_dict runs torch.optim's load hooks in torch's order around "
                                            "its own checks (checkpoints.py); torch has no public switch for that",
    "_optimizer_load_state_dict_post_hooks": "as the pre-hooks",
    "_optimizer_state_dict_post_hooks": "state_dict adds deepdescent's entry before torch.optim's state_dict "
                                        "post-hooks run, as torch orders its own (checkpoints.state_dict_with)",
    "_exit": "os._exit is public (the documented way out of a forked child)",
    "_BatchNorm": "torch.nn's base class of the batch-norm layers (an isinstance check)",
    "_NormBase": "torch.nn's base class of the normalization layers (an isinstance check)",
    "_ConvNd": "torch.nn's base class of the convolutions (an isinstance check)",
}


def test_no_module_reads_another_librarys_private_names_but_those_listed():
    """``obj._name`` where obj is not ``self``/``cls``/``super()`` nor a Sym of the tracer itself,
    and not torch's multi-tensor ``_foreach_*`` ops (torch.optim's own building blocks)."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                continue
            base = node.value
            if isinstance(base, ast.Name) and base.id in ("self", "cls") or isinstance(base, ast.Call) and \
                    isinstance(base.func, ast.Name) and base.func.id == "super":
                continue
            if node.attr.startswith("_foreach_") or node.attr in OTHER_LIBRARIES_PRIVATE or \
                    (path.name == "trace.py" and node.attr == "_op"):
                continue
            wrong.append(f"{path.relative_to(SRC)}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, "\n".join(wrong)


_IMPORT_EACH = """
import importlib, os, sys
for heavy in ("torch", "numpy", "scipy", "optuna", "matplotlib.pyplot", "sklearn", "typer", "rich"):
    try:  # third-party libraries load once, before the fork; deepdescent never in this parent
        importlib.import_module(heavy)
    except ImportError:
        pass
assert not any(m.startswith("deepdescent") for m in sys.modules)
bad = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child whose first deepdescent import is this module
        os.close(read)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException as err:  # noqa: BLE001
            os.write(write, f"{name}: {type(err).__name__}: {err}".encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as f:
        message = f.read()
    if os.waitpid(pid, 0)[1]:
        bad.append(message or f"{name}: the import crashed")
print("\\n".join(bad))
"""


def test_every_module_imports_first_in_a_new_interpreter():
    """Each module of the package, imported first (a circle between packages shows only then: a
    test run has imported everything already). One interpreter loads torch & co., then a forked
    child per module imports it as the first deepdescent module."""
    import subprocess
    import sys

    modules = sorted(".".join(("deepdescent", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
                     for p in SRC.rglob("*.py") if p.name != "__main__.py")
    done = subprocess.run([sys.executable, "-c", _IMPORT_EACH, *modules], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr

def test_no_module_reads_a_private_name_of_another_module():
    """No ``from deepdescent.x import _private`` and no ``module._private`` attribute of another
    deepdescent module, anywhere in the package (an object's own ``self._x`` is its business)."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = {}
        for module, names in _imports(path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    wrong.append(f"{path.relative_to(SRC)}: from {module} import {n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepdescent"):
                aliases.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names})
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name.startswith("deepdescent")})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    wrong.append(f"{path.relative_to(SRC)}:{node.lineno}: {aliases[base.id]}.{node.attr}")
    assert not wrong, "\n".join(wrong)


def test_the_documented_table_lists_every_registered_algorithm():
    readme = (SRC.parents[1] / "docs" / "getting-started.md").read_text()  # the optimizer table lives there
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    missing = [n for n, spec in REGISTRY.items()
               if not any(line.startswith(f"| `{optim.optimizer_class(spec).__name__}(") for line in table)]
    assert not missing, f"the optimizer table of docs/getting-started.md lacks {missing}"


def test_a_step_never_waits_for_the_compiler_and_an_owner_keeps_its_path(monkeypatch, tmp_path, caplog):
    """A kernel that is not on disk compiles in the background: the owner that asked runs the
    eager path (same values as impl="eager") for its whole life, even after the build finished,
    the notice is said once, and an owner created after the build uses the kernel. The compiler
    is replaced by one that blocks until released."""
    import logging

    monkeypatch.setenv("DEEPDESCENT_KERNEL_CACHE", str(tmp_path))  # nothing on disk
    monkeypatch.setenv("DEEPDESCENT_KERNEL_BUILD", "background")
    monkeypatch.setattr(executor, "_NOTICES", set())
    release, fused_calls = threading.Event(), []

    def update(h, params, grads, bufs, steps, lookahead):
        torch._foreach_mul_(bufs["buf"], h["momentum"])
        torch._foreach_add_(bufs["buf"], grads)
        torch._foreach_add_(params, bufs["buf"], alpha=-h["lr"])

    spec = _spec(update)

    def slow_compiler(ext):
        assert release.wait(60)
        with kernels._LOCK:
            for name in ext.functions:
                kernels._FUNCTIONS[name] = lambda lists, s, ts: (fused_calls.append(1),
                                                                 executor.eager(spec, {"lr": s[0], "momentum": s[1]},
                                                                                lists, ts, False))
    monkeypatch.setattr(kernels, "_compile", slow_compiler)
    monkeypatch.setattr(kernels, "_BUILDERS", {})
    # the runtime is loaded (as after setup); this algorithm's kernels are not
    monkeypatch.setattr(kernels, "_FUNCTIONS", {"run_kernel": None, "any_nonfinite": None})
    run = executor.Executor("auto")
    p, g, buf = torch.ones(4), torch.full((4,), 0.5), torch.zeros(4)
    ref_p, ref_buf = p.clone(), buf.clone()
    with caplog.at_level(logging.WARNING, logger="deepdescent"):
        for _ in range(3):
            run.run(spec, {"lr": 0.1, "momentum": 0.5}, [[p], [g], [buf]], [1], False)
            executor.eager(spec, {"lr": 0.1, "momentum": 0.5}, [[ref_p], [g], [ref_buf]], [1], False)
    assert torch.equal(p, ref_p) and not fused_calls and not run.fused_off and run.path == "eager"
    assert caplog.text.count("in the background") == 1
    release.set()
    assert kernels.wait_for_build(60)
    run.run(spec, {"lr": 0.1, "momentum": 0.5}, [[p], [g], [buf]], [1], False)
    assert fused_calls == [] and run.path == "eager"  # the running owner never switches
    later = executor.Executor("auto")
    later.run(spec, {"lr": 0.1, "momentum": 0.5}, [[p], [g], [buf]], [1], False)
    assert fused_calls == [1] and later.path == "fused"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_the_class_defaults_are_the_specs(name):
    """One source: each optimizer class's signature has the spec's hyperparameters with the spec's
    defaults (and nothing else but params/nonfinite/impl), and passes them through."""
    import inspect

    from deepdescent.algorithms.spec import REQUIRED

    spec = REGISTRY[name]
    cls = optim.optimizer_class(spec)
    signature = inspect.signature(cls.__init__).parameters
    assert set(signature) - {"self", "params", "nonfinite", "impl"} == set(spec.names)
    for hp in spec.hyperparameters:
        default = signature[hp.name].default
        if hp.default is REQUIRED:
            assert default in (inspect.Parameter.empty, None), hp.name
        else:
            assert default == hp.default and type(default) is type(hp.default), \
                f"{cls.__name__}({hp.name}={default!r}) but the spec says {hp.default!r}"
    required = {hp.name: 0.1 for hp in spec.hyperparameters if hp.default is REQUIRED}
    opt = cls([torch.nn.Parameter(torch.ones(2))], **required)
    assert {k: opt.defaults[k] for k in spec.names} == spec.defaults(**required)


#: The lab's module-level state that is the process's by nature: the one heartbeat thread that
#: beats for every claim the process holds (lab.claims), and the claims it has seen without one.
LAB_PROCESS_STATE = {("claims", "_held"), ("claims", "_first_seen"), ("claims", "_beating")}


def test_the_lab_keeps_no_module_level_mutable_state():
    """What a command knows of the names it races (workloads, foreign optimizers) lives in its
    :class:`~deepdescent.lab.catalog.Catalog`, never in a module: no module-level empty container,
    no ``global`` statement, outside the claims' heartbeat. Memoized pure functions (lru_cache of
    data that ships, of a lab problem's reference task) are not state."""
    found = []
    for path in sorted((SRC / "lab").rglob("*.py")):
        unit = _lab_unit(path.relative_to(SRC))
        tree = ast.parse(path.read_text())
        for node in tree.body:
            target = node.target if isinstance(node, ast.AnnAssign) else (
                node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
            value = getattr(node, "value", None)
            empty = (isinstance(value, (ast.Dict, ast.List, ast.Set)) and not getattr(value, "keys", None)
                     and not getattr(value, "elts", None)) or (
                isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id in ("dict", "list", "set") and not value.args)
            if isinstance(target, ast.Name) and empty and (unit, target.id) not in LAB_PROCESS_STATE:
                found.append(f"{path.name}: {target.id} = an empty container at module level")
        for node in ast.walk(tree):
            if isinstance(node, ast.Global) and not all((unit, n) in LAB_PROCESS_STATE for n in node.names):
                found.append(f"{path.name}: global {', '.join(node.names)}")
    assert not found, "\n".join(found)
