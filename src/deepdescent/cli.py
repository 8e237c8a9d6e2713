"""The ``deepdescent`` command line."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(help="deepdescent: optimization of deep models after chapter 8 of Deep Learning.",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def _main() -> None:
    """deepdescent: optimization of deep models after chapter 8 of Deep Learning."""


@app.command()
def bench(
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training set per optimizer.")] = 30,
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialization and the minibatch order.")] = 0,
    optimizer: Annotated[list[str] | None, typer.Option(help="Race only these optimizers (repeatable).")] = None,
) -> None:
    """Race every optimizer on the digits MLP and print a table (the lab's quick suite grows from here)."""
    from deepdescent.lab import digits

    chosen = optimizer or list(digits.OPTIMIZERS)
    unknown = [o for o in chosen if o not in digits.OPTIMIZERS]
    if unknown:
        raise typer.BadParameter(f"unknown optimizer(s) {unknown}; valid: {', '.join(digits.OPTIMIZERS)}",
                                 param_hint="--optimizer")
    data = digits.load_digits(seed)
    console = Console()
    results = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("digits MLP", total=len(chosen))
        for name in chosen:
            progress.update(task, description=f"digits MLP: {name}")
            results.append(digits.train(name, digits.OPTIMIZERS[name], data, epochs=epochs, seed=seed))
            progress.advance(task)
    table = Table(title=f"digits MLP 64-64-64-10 (tanh), batch 32, {epochs} epochs, seed {seed}")
    for col in ("optimizer", "final train loss", "test accuracy", "wall time (s)"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for r in results:
        table.add_row(r.name, f"{r.train_loss:.4f}", f"{100 * r.test_accuracy:.1f}%", f"{r.seconds:.2f}")
    console.print(table)


if __name__ == "__main__":
    app()
