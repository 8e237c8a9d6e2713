"""The documentation site (issue 29): it builds strictly, its API reference names every public name
of the package, and every ``python`` code block of the getting-started page and of the guides runs
(blocks fenced as ``py`` are fragments, shown but not run)."""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import re
import subprocess
import sys
import zlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
#: The modules the API reference documents (docs/reference/*.md), each a page.
REFERENCED = ["optim", "algorithms", "second_order", "schedules", "init", "training", "curvature", "diagnostics",
              "executor", "checkpoints", "lab.workload"]
RUN = sorted([DOCS / "getting-started.md", *(DOCS / "guides").glob("*.md")])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """``mkdocs build --strict`` into a folder of its own: a broken link, a missing page or an
    object mkdocstrings cannot find fails the build."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def _inventory(site: pathlib.Path) -> set[str]:
    """The object names of the site's Sphinx inventory (what mkdocstrings rendered)."""
    header, _, _, _, body = (site / "objects.inv").read_bytes().split(b"\n", 4)
    assert header.startswith(b"# Sphinx inventory")
    return {line.split()[0] for line in zlib.decompress(body).decode().splitlines()}


def public_names(module_name: str) -> set[str]:
    """A module's public names: its ``__all__``, else what it defines itself without a leading _."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {n for n, v in vars(module).items() if not n.startswith("_")
            and getattr(v, "__module__", None) == module_name and (inspect.isclass(v) or inspect.isfunction(v))}


def _defined(module_name: str, name: str) -> str:
    """Where a public object is defined (``deepdescent.init.apply.apply`` for ``deepdescent.init.apply``,
    a function that shares its module's name, which the reference documents there)."""
    obj = getattr(importlib.import_module(module_name), name)
    return f"{getattr(obj, '__module__', module_name)}.{getattr(obj, '__qualname__', name)}"


def test_the_site_builds_and_its_reference_names_every_public_name(site):
    documented = _inventory(site)
    missing = [f"deepdescent.{m}.{n}" for m in REFERENCED for n in sorted(public_names(f"deepdescent.{m}"))
               if f"deepdescent.{m}.{n}" not in documented and _defined(f"deepdescent.{m}", n) not in documented]
    assert not missing, f"public names missing from the API reference: {missing}"
    pages = {p.stem for p in (DOCS / "reference").glob("*.md")} - {"index"}
    assert pages == {m.split(".")[-1] for m in REFERENCED}
    assert (site / "mathjax" / "MathJax.js").is_file()  # the boxes render offline
    adam = (site / "algorithms" / "adam" / "index.html").read_text()
    assert 'type="math/tex' in adam and "r ← ρ₂r + (1 − ρ₂)g⊙g" in adam  # the box as math, the spec's code beside it


def test_every_algorithm_of_the_registry_has_a_page():
    from deepdescent.optim import __all__ as classes

    pages = " ".join(p.read_text() for p in (DOCS / "algorithms").glob("*.md"))
    optimizers = [c for c in classes if c[0].isupper() and c not in ("BookOptimizer", "NonFiniteGradientError")]
    assert [c for c in optimizers  # a cross-reference to the class itself: [`name`][name]
            if f"][deepdescent.optim.{c}]" not in pages and f"][deepdescent.second_order.{c}]" not in pages] == []


def _blocks(page: pathlib.Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.M | re.S)


@pytest.mark.parametrize("page", RUN, ids=lambda p: p.stem)
def test_every_code_block_of_the_guides_runs(page, tmp_path):
    """The page's ``python`` blocks in order, as one script, in a fresh process and an empty folder."""
    blocks = _blocks(page)
    if page.stem in ("getting-started", "diagnose", "race", "science", "second-order"):
        assert blocks, f"{page.name} should show a runnable example"
    if not blocks:
        return
    script = tmp_path / f"{page.stem}.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "DEEPDESCENT_KERNEL_BUILD": "wait", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, f"{page.name}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
