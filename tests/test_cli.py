"""The command line as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest
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


@pytest.mark.parametrize("width", [80, 120])
def test_the_progress_bar_cuts_its_description_never_its_times(width, monkeypatch):
    """Two long race names at 80 columns: the description ends in …, the counts, the elapsed time
    and the ETA show whole."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    import deepdescent.cli as cli

    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True, color_system=None)
    monkeypatch.setattr(cli, "console", console)
    with Progress(*cli._columns(eta=True), console=console, auto_refresh=False) as bar:
        task = bar.add_task(cli._running([("linear_autoencoder", "RMSProp+Nesterov"),
                                          ("digits_autoencoder", "HessianFree")]), total=100)
        bar.update(task, completed=5)
        bar.refresh()
    line = out.getvalue().split("\r")[-1]
    assert "…" in line and "5/100" in line and "0:00:00" in line and "ETA -:--:--" in line
