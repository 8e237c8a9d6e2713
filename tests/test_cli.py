"""The command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from deepdescent.cli import app


def test_digits_prints_the_table():
    result = CliRunner().invoke(app, ["digits", "--epochs", "1", "--optimizer", "Adam", "--optimizer", "SGD"])
    assert result.exit_code == 0, result.output
    for word in ("Adam", "SGD", "test accuracy", "final train loss", "wall time"):
        assert word in result.output


def test_digits_rejects_an_unknown_optimizer():
    result = CliRunner().invoke(app, ["digits", "--optimizer", "Adamm"])
    assert result.exit_code != 0
    assert "unknown optimizer" in result.output and "Adamm" in result.output


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "deepdescent.cli", "--help"], capture_output=True, text=True, check=True)
    assert "bench" in out.stdout
