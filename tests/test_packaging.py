"""The package as a user installs it (issue 29): a wheel built from the repository, installed by a
plain (non-editable) `pip install` into a fresh virtual environment without the setup script,
imports, steps, compiles its kernel on first use and answers `deepdescent --version`; the version
is one number in pyproject (from the package), the changelog and the command."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

from typer.testing import CliRunner

import deepdescent
from deepdescent.cli import app

ROOT = pathlib.Path(__file__).resolve().parents[1]

FIRST_STEP = r"""
import os, torch, deepdescent
from deepdescent import optim
p = torch.nn.Parameter(torch.ones(1000))
opt = optim.Adam([p], lr=0.1)
p.grad = torch.ones(1000)
opt.step()
assert opt.path == "fused", opt.path  # compiled on first use (DEEPDESCENT_KERNEL_BUILD=wait)
assert os.listdir(os.environ["DEEPDESCENT_KERNEL_CACHE"])
print(deepdescent.__file__, float(p[0]))
"""


def test_the_version_is_one_number_everywhere():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    top = re.search(r"^## (\S+)", changelog, re.M).group(1)
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"deepdescent {deepdescent.__version__}"
    assert top == deepdescent.__version__
    assert 'version = { attr = "deepdescent.__version__" }' in (ROOT / "pyproject.toml").read_text()


def test_a_wheel_installs_and_runs_in_a_fresh_virtual_environment(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(wheels)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(wheels.glob("deepdescent-*.whl"))
    assert wheel.name.startswith(f"deepdescent-{deepdescent.__version__}-")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, command = venv / "bin" / "python", venv / "bin" / "deepdescent"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # pip must not see the repository's copy
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel), "torch==2.13.0"],
                          capture_output=True, text=True, env=clean, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "DEEPDESCENT_KERNEL_CACHE": str(tmp_path / "kernels"), "DEEPDESCENT_KERNEL_BUILD": "wait"}
    step = subprocess.run([str(python), "-c", FIRST_STEP], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=900)
    assert step.returncode == 0, step.stderr[-3000:]
    assert str(venv) in step.stdout  # the installed copy, not the repository's
    version = subprocess.run([str(command), "--version"], capture_output=True, text=True, env=env, timeout=300)
    assert version.stdout.strip() == f"deepdescent {deepdescent.__version__}", version.stderr
    listed = subprocess.run([str(command), "list"], capture_output=True, text=True, env=env, timeout=300)
    assert listed.returncode == 0 and "resnet_mnist" in listed.stdout, listed.stderr[-2000:]
