"""The report of a race: the verdict, leaderboards, performance profile, figures (PNG at print
resolution + SVG), one self-contained HTML page, and the terminal tables. Everything is drawn from
the stored runs: writing the report never trains a model."""

from __future__ import annotations

import html
import math
import re
import statistics
import textwrap
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from deepdescent.lab import files, science
from deepdescent.lab.catalog import Catalog
from deepdescent.lab.optimizers import OPTIMIZERS, describe, parse
from deepdescent.lab.pages import html_table, meta_table, pyplot, save_figure
from deepdescent.lab.problems import PROBLEMS, base_name, reference
from deepdescent.lab.science import report as science_report
from deepdescent.lab.verdict import (
    Race,
    Results,
    Row,
    apart,
    board,
    finals,
    clock,
    held_out,
    leaderboard,
    measured,
    median,
    overall,
    performance_profile,
    ranking,
    target,
    time_to_target,
    verdict,
)

__all__ = ["Results", "depth_study", "leaderboard", "performance_profile", "target", "terminal",
           "title", "write"]



def title(problem: str) -> str:
    """The problem and the variant that actually ran: ``deep_linear (depth=20, scheme=orthogonal)``."""
    if base_name(problem) not in PROBLEMS:  # a workload: its name says it all
        return problem
    extra = reference(problem).extra
    shown = {k: v for k, v in extra.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    if "length" in shown:
        shown["T"] = shown.pop("length")
    variant = ", ".join(f"{k}={v}" for k, v in sorted(shown.items()))
    return f"{base_name(problem)} ({variant})" if variant else base_name(problem)


# ------------------------------------------------------------------------------------- figures
_LINESTYLE = {"momentum": "-", "adaptive": "--", "second": "-."}
#: Characters of a figure title per line (an 8-inch axis at 10 pt; longer titles wrap, never cut).
TITLE_WIDTH = 75


#: One colour per optimizer of the lab's registry (21: tab10, Dark2, then three more), in its
#: order, so that no two lab optimizers share one; foreign ones cycle through them.
_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#000000",
            "#b15928", "#6a3d9a", "#fb9a99", "#1a9850", "#08519c"]


def style(name: str) -> dict[str, Any]:
    """A colour of its own per optimizer and one line style per family (solid: SGD and momentum,
    dashed: adaptive rates, dash-dot: second order), so that every curve is distinguishable."""
    names = list(OPTIMIZERS)
    index = names.index(name) if name in names else len(names) + sum(map(ord, name))
    spec = describe(name)
    return {"color": _COLOURS[index % len(_COLOURS)], "linestyle": _LINESTYLE[spec.family if spec else "adaptive"],
            "lw": 1.6}


def _stem(problem: str) -> str:
    """A file name for a problem: ``deep_linear-depth-50-scheme-normalized``."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", problem)


def _loss_scale(ax, values: list[float], axis: str = "y") -> None:
    """Log scale for a positive quantity (tick labels on every decade and, over less than two
    decades, between them); linear where it can be zero or negative."""
    from matplotlib import ticker

    finite = [v for v in values if math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    if max(finite) / min(finite) < 100:  # few decades: label the minor ticks too
        target.set_minor_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(3, 3)))


def _legend(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, frameon=False)


def _curve(run, xs) -> list[float]:
    """The run's recorded loss within its budget, interpolated at ``xs``. A run that spent its
    budget holds its last point to the end (a step that would have crossed the budget does not
    count); one cut short (time limit) stops at its last point."""
    import numpy as np

    n = run.within_budget()
    ge, loss = run.grad_equiv[:n], run.train_loss[:n]
    after = math.nan if run.truncated else loss[-1]
    return list(np.interp(xs, ge, loss, right=after)) if n > 1 else [loss[0] if x == 0 else after for x in xs]


class _LossAxis:
    """How losses are drawn: on a log axis as the distance to the problem's floor (0, or the
    known minimum) when every value lies at or above it — an exact 0 drawn a decade under the
    smallest positive distance, and said so — else (a noisy loss can dip below its floor) on a
    symmetric log axis of the same distance, linear only within the largest dip, so that the
    curves' approach to the floor stays visible."""

    def __init__(self, values: list[float], floor: float) -> None:
        finite = [v for v in values if math.isfinite(v)]
        self.log = bool(finite) and min(finite) >= floor - 1e-6 * max(1.0, abs(floor))  # float32 rounding
        self.floor = floor
        gaps = [v - floor for v in finite if v > floor]
        self.tiny = min(gaps) / 10 if gaps else 1e-12
        self.zeros = self.log and any(v <= floor for v in finite)
        dips = [floor - v for v in finite if v < floor]
        self.linear = max(dips) if dips else 0.0  # the symlog axis's linear range (± the largest dip)
        self.drawn = self(finite)

    def __call__(self, values):
        if not self.log:
            return [v - self.floor if math.isfinite(v) else v for v in values]
        return [max(v - self.floor, self.tiny) if math.isfinite(v) else v for v in values]

    def label(self, text: str) -> str:
        shifted = text if self.floor == 0 else f"{text} − ({self.floor:.4g})"
        if not self.log:
            return shifted + f"\n(symmetric log, linear within ±{self.linear:.1g})"
        return shifted + (f"\n(0 drawn at {self.tiny:.0e})" if self.zeros else "")

    def apply(self, ax) -> None:
        if self.log:
            _loss_scale(ax, self.drawn)
        else:  # ticks at 0 and at the decades beyond the linear range (none crowded around 0)
            from matplotlib import ticker

            ax.set_yscale("symlog", linthresh=self.linear)
            ax.yaxis.set_major_locator(ticker.FixedLocator(
                [t for t in ax.yaxis.get_major_locator()() if t == 0 or abs(t) >= self.linear]))


def _learning_curves(problem: str, race: Race, out: Path, catalog: Catalog) -> str:
    plt = pyplot()
    tgt = board(problem, race, catalog)[0]
    budget = max(r.budget for tracks in race.values() for r in tracks["tuned"])
    xs = [budget * i / 200 for i in range(201)]
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    drawn: dict[str, tuple[str, torch.Tensor]] = {}
    for name, tracks in race.items():
        runs = [r for r in tracks["tuned"] if not r.diverged]
        if runs:
            diverged, cut = len(tracks["tuned"]) - len(runs), sum(r.truncated for r in runs)
            label = name + (f" ({diverged} diverged)" if diverged else "") + (f" (✂ {cut} cut by the time limit)"
                                                                               if cut else "")
            drawn[name] = label, torch.tensor([_curve(r, xs) for r in runs], dtype=torch.float64)
    axis = _LossAxis([tgt] + [float(v) for _, c in drawn.values() for v in c.flatten()], catalog.floor(problem))
    for name, (label, curves) in drawn.items():
        ax.plot(xs, axis(curves.nanmedian(0).values.tolist()), label=label, **style(name))
        if len(curves) > 1:
            ax.fill_between(xs, axis(curves.min(0).values.tolist()), axis(curves.max(0).values.tolist()),
                            color=style(name)["color"], alpha=0.10)
    ax.axhline(axis([tgt])[0], color="black", lw=0.9, ls=(0, (4, 3)), label=f"target T = {tgt:.3g}")
    ax.set_xlim(0, budget)
    axis.apply(ax)
    ax.set_xlabel("gradient-equivalents (full-batch gradients; every optimizer gets the same budget)")
    ax.set_ylabel(axis.label("training loss") + "\nmedian; band: min–max over seeds")
    ax.set_title(textwrap.fill(f"{title(problem)}: learning curves at the tuned learning rate", TITLE_WIDTH), fontsize=10)
    _legend(ax)
    return save_figure(fig, out, f"{_stem(problem)}_curves")


def _sensitivity(problem: str, race: Race, out: Path, catalog: Catalog) -> str | None:
    """Final loss against learning rate; None when no optimizer tried two learning rates (--budget 1)."""
    plt = pyplot()
    lines = {}
    for name, tracks in race.items():
        by_lr: dict[float, list[float]] = {}
        for r in tracks["grid"]:
            if r.lr is not None:
                by_lr.setdefault(r.lr, []).append(r.final_train_loss)
        if len(by_lr) >= 2:
            lrs = sorted(by_lr)
            lines[name] = lrs, [statistics.median(by_lr[lr]) for lr in lrs]
    values = [m for _, med in lines.values() for m in med if math.isfinite(m)]
    if not values:
        return None
    axis = _LossAxis(values, catalog.floor(problem))
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for name, (lrs, med) in lines.items():
        st = style(name)
        ax.plot(lrs, axis([m if math.isfinite(m) else math.nan for m in med]), marker="o", ms=3, label=name, **st)
        tracks = race[name]
        ax.plot([tracks["tuned"][0].lr], axis([median(r.final_train_loss for r in tracks["tuned"])]), marker="*",
                ms=10, color=st["color"])
        failed = [lr for lr, m in zip(lrs, med) if not math.isfinite(m)]
        ax.plot(failed, [1.0] * len(failed), "x", color=st["color"], transform=ax.get_xaxis_transform(), clip_on=False)
    ax.set_xscale("log")
    axis.apply(ax)
    ax.set_xlabel("learning rate (★ tuned; × at the top: diverged)")
    ax.set_ylabel(axis.label("final training loss") + "\nmedian over seeds")
    ax.set_title(textwrap.fill(f"{title(problem)}: learning-rate sensitivity", TITLE_WIDTH), fontsize=10)
    _legend(ax)
    return save_figure(fig, out, f"{_stem(problem)}_sensitivity")


def _surface(task: Any, f: Any, u: Tensor, v: Tensor) -> Tensor:
    """The loss on the grid u × v (rows: v), evaluated in one vectorized call per chunk of points:
    the analytic f, or the task's loss with the model's two parameters set to each point."""
    grid = torch.cartesian_prod(v, u)[:, [1, 0]]  # (θ₁, θ₂) with θ₂ = v outer, as the rows of z
    if f is None:
        name = next(n for n, _ in task.model.named_parameters())

        def f(theta: Tensor) -> Tensor:
            out = torch.func.functional_call(task.model, {name: theta}, (task.x_train,))
            return task.loss(out, task.y_train)
    with torch.no_grad():  # evaluation only, nothing is trained
        z = torch.cat([torch.vmap(f)(chunk) for chunk in grid.split(2048)])
    return z.reshape(len(v), len(u))


def _trajectories(problem: str, race: Race, out: Path, catalog: Catalog) -> str | None:
    runs = {n: t["tuned"][0] for n, t in race.items() if t["tuned"][0].trajectory and not t["tuned"][0].diverged}
    if not runs:
        return None
    task = reference(problem)
    pts = torch.tensor([p for r in runs.values() for p in r.trajectory if all(map(math.isfinite, p))])
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = (hi - lo).clamp_min(0.5) * 0.2
    u = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), 120)
    v = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), 120)
    f = task.extra.get("f")
    z = _surface(task, f, u, v)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.5), constrained_layout=True)
    zz = torch.log10(z - z[torch.isfinite(z)].min() + 1e-3)
    filled = ax.contourf(u, v, zz, levels=30, cmap="Greys")
    fig.colorbar(filled, ax=ax, location="left", pad=0.12).set_label("log₁₀(loss − min + 10⁻³)")
    for name, r in runs.items():
        t = torch.tensor(r.trajectory)
        ax.plot(t[:, 0], t[:, 1], marker=".", ms=2, label=name, **style(name))
    names = ("w", "b") if f is None else ("θ₁", "θ₂")
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(textwrap.fill(f"{title(problem)}: trajectories (tuned lr, seed 0)", TITLE_WIDTH), fontsize=10)
    _legend(ax)
    return save_figure(fig, out, f"{_stem(problem)}_trajectories")


def _instrument_panel(problem: str, race: Race, out: Path, catalog: Catalog) -> str | None:
    """‖g‖ and gᵀHg over training for the best first-order optimizer (the book's Figure 8.1), as
    its instrumented run recorded them; each on its own logarithmic axis."""
    _, rows = board(problem, race, catalog)
    run = next((race[r.optimizer]["instruments"][0] for r in rows if race[r.optimizer].get("instruments")
                and race[r.optimizer]["instruments"][0].grad_norm and race[r.optimizer]["instruments"][0].lr is not None),
               None)
    if run is None:
        return None
    n = run.within_budget()
    x, norm, curv = run.grad_equiv[:n], run.grad_norm[:n], run.gTHg[:n]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    ax.plot(x, norm, color="tab:blue", marker=".")
    _loss_scale(ax, norm)
    ax.set_ylabel("gradient norm ‖g‖", color="tab:blue")
    ax.set_xlabel("gradient-equivalents")
    twin = ax.twinx()
    twin.plot(x, curv, color="tab:red", marker=".")
    finite = [c for c in curv if math.isfinite(c)]
    if finite and min(finite) > 0:
        _loss_scale(twin, finite)
    elif finite:
        twin.set_yscale("symlog", linthresh=max(1e-12, 1e-3 * max(abs(c) for c in finite)))
    twin.set_ylabel("gᵀHg", color="tab:red")
    ax.set_title(textwrap.fill(f"{title(problem)}: {run.optimizer} (lr {run.lr:.3g}, seed 0) — the quantities of "
                               "Fig. 8.1", TITLE_WIDTH), fontsize=10)
    return save_figure(fig, out, f"{_stem(problem)}_instruments")


def _spectrum_panel(problem: str, race: Race, out: Path, catalog: Catalog) -> str | None:
    """λmax·lr (left; the stability limit 2 of gradient descent drawn) and λmin (right; below 0:
    negative curvature, a saddle where ‖g‖ is small) along every measured run."""
    _, rows = board(problem, race, catalog)
    runs = [race[r.optimizer]["instruments"][0] for r in rows
            if race[r.optimizer].get("instruments") and race[r.optimizer]["instruments"][0].lambda_max]
    if not runs:
        return None
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for run in runs:
        n = run.within_budget()
        pts = [(x, hi, lo) for x, hi, lo in zip(run.grad_equiv[:n], run.lambda_max[:n], run.lambda_min[:n])
               if math.isfinite(hi) and math.isfinite(lo)]
        if not pts:
            continue
        xs = [x for x, _, _ in pts]
        kw = {**style(run.optimizer), "label": run.optimizer, "marker": "."}
        if run.lr is not None:
            left.plot(xs, [run.lr * hi for _, hi, _ in pts], **kw)
        right.plot(xs, [lo for _, _, lo in pts], **kw)
    left.axhline(2.0, color="k", lw=0.8, ls="--")
    left.set_yscale("log")
    left.set_ylabel("lr · λmax (gradient descent is stable below 2)")
    right.axhline(0.0, color="k", lw=0.8)
    right.set_yscale("symlog", linthresh=1e-3)
    right.set_ylabel("λmin (below 0: negative curvature)")
    for ax in (left, right):
        ax.set_xlabel("gradient-equivalents")
    _legend(right)
    fig.suptitle(textwrap.fill(f"{title(problem)}: the Hessian's extreme eigenvalues along each measured run (seed 0)",
                               TITLE_WIDTH + 40), fontsize=10)
    return save_figure(fig, out, f"{_stem(problem)}_spectrum")


def _profile_figure(all_results: Results, out: Path, catalog: Catalog) -> str:
    plt = pyplot()
    ratios = performance_profile(all_results, catalog)
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    taus = [1.0 * 10 ** (i / 20) for i in range(0, 61)]
    for name, rs in ratios.items():
        ax.step(taus, [sum(r <= t for r in rs) / len(rs) for t in taus], where="post", label=name, **style(name))
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("τ (epochs to target / the best optimizer's)")
    ax.set_ylabel(f"fraction of the {len(all_results)} problems\nsolved within τ of the best")
    ax.set_title("performance profile (Dolan & Moré 2002): solved = at least half the seeds reach the target",
                 fontsize=10)
    _legend(ax)
    return save_figure(fig, out, "performance_profile")


def depth_study(all_results: Results) -> tuple[float, dict[str, dict[int, dict[str, float]]]]:
    """Saxe et al. (2013) across the ``deep_linear`` variants of a run: a common target (the loosest
    of their targets, so that every variant has an optimizer that reaches it) and, per
    initialization scheme and depth, each optimizer's median gradient-equivalent evaluations
    (epochs) to it, tuned runs."""
    variants = {p: r for p, r in all_results.items() if base_name(p) == "deep_linear"}
    common = max((target(r) for r in variants.values()), default=math.nan)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for p, results in variants.items():
        extra = reference(p).extra
        table.setdefault(extra["scheme"], {})[extra["depth"]] = {
            name: median(time_to_target(r, common) for r in tracks["tuned"]) for name, tracks in results.items()}
    return common, table


def _depth_figure(all_results: Results, out: Path) -> str | None:
    common, table = depth_study(all_results)
    depths = sorted({d for by_depth in table.values() for d in by_depth})
    if len(depths) < 2:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True, sharey=True)
    picks = (lambda t: t.get("SGD", math.inf), lambda t: min(t.values()))
    for ax, pick, name in zip(axes, picks, ("SGD (tuned lr)", "the fastest optimizer at each depth")):
        for scheme, by_depth in sorted(table.items()):
            ds = sorted(by_depth)
            ys = [pick(by_depth[d]) for d in ds]
            line, = ax.plot(ds, ys, "o-", label=scheme)  # never reached: inf, not drawn
            never = [d for d, y in zip(ds, ys) if not math.isfinite(y)]
            if never:
                ax.plot(never, [1.0] * len(never), "x", color=line.get_color(), ms=9, clip_on=False,
                        transform=ax.get_xaxis_transform(), label=f"{scheme}: never")  # at the top edge
        ax.set_xscale("log")
        _loss_scale(ax, [pick(by_depth[d]) for by_depth in table.values() for d in by_depth])
        ax.set_xticks(depths, [str(d) for d in depths], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("depth (layers)")
        ax.set_title(name, fontsize=10)
        ax.legend(title="initialization", fontsize=8)
    axes[0].set_ylabel(f"epochs to train loss {common:.3g}\n(median over seeds; 1/20 of the run resolution)")
    fig.suptitle("deep linear network: training time against depth (Saxe et al. 2013)")
    return save_figure(fig, out, "depth_initialization")


# ------------------------------------------------------------------------------------- tables
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "never" if v > 0 else "-inf"
        return f"{v:.{digits}g}"
    return str(v)


def _loss(v: float, digits: int = 4) -> str:
    return "diverged" if v == math.inf else _fmt(v, digits)


def _lr(row: Row) -> str:
    """The tuned learning rate; ``*`` when it is still at an edge of its (extended) grid."""
    return _fmt(row.best_lr, 2) + ("*" if row.lr_interior is False else "")


def _reached(row: Row) -> str:
    return f"{row.reached}/{row.seeds}" + ("✂" if row.truncated else "")


#: (header, cell) of the leaderboard; the terminal shows the first ``TERMINAL_COLUMNS``.
def _name(name: str) -> str:
    """The optimizer as a table shows it: an import path by its class (its options elided), and a
    method that is not of chapter 8 marked †."""
    spec = describe(name)
    if spec is None or spec.in_book:
        return name
    if spec.foreign:
        path, options = parse(name)
        name = path.replace(":", ".").rsplit(".", 1)[-1] + ("(…)" if options else "")
    return f"{name} †"


COLUMNS = (  # cell(row, digits): ``digits`` those of the final loss (verdict.apart)
    ("optimizer", lambda r, d: _name(r.optimizer)),
    ("lr", lambda r, d: _lr(r)),
    ("final loss", lambda r, d: _loss(r.final, d)),
    ("≤T", lambda r, d: _reached(r)),
    ("epochs→T", lambda r, d: _fmt(r.ge_to_target, 3)),
    ("test loss", lambda r, d: _fmt(r.test_loss, 3)),
    ("acc", lambda r, d: "–" if r.test_accuracy is None else f"{100 * r.test_accuracy:.1f}%"),
    ("div", lambda r, d: str(r.diverged)),
    ("defaults", lambda r, d: _loss(r.defaults_final)),
    ("LS fails", lambda r, d: _fmt(r.line_search_failures)),
)
TERMINAL_COLUMNS = 8

CAPTION = ("lr: tuned learning rate (* still at the edge of its grid after extending it); final loss: median "
           "training loss when the budget is spent; ≤T: seeds that end at or below the target; epochs→T: "
           "median epochs (gradient-equivalents) after which those seeds stay below it; div: diverged runs "
           "of the grid; defaults: median final training loss at the optimizer's default learning rate (untuned); "
           "LS fails: steps whose line search failed, median over seeds (second-order methods); ✂: runs cut by "
           "--time-limit; †: not a method of chapter 8")


def terminal(all_results: Results, console, catalog: Catalog | None = None) -> None:
    """One table per problem that fits 80 columns, and its verdict (``catalog``: what the command
    knows of the names, :class:`~.catalog.Catalog`)."""
    catalog = catalog or Catalog()
    from rich import box
    from rich.table import Table

    for problem, race in all_results.items():
        tgt, rows = board(problem, race, catalog)
        p = catalog.known(problem)
        d = apart(tgt, finals(rows))  # enough digits that no final loss reads as T
        table = Table(title=f"{title(problem)} — {p.challenge or 'challenge not stated'}\ntarget T = {tgt:.{d}g}, budget "
                            f"{_fmt(max(r.budget for t in race.values() for r in t['tuned']), 4)} epochs",
                      title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
        for header, _ in COLUMNS[:TERMINAL_COLUMNS]:
            table.add_column(header, justify="left" if header == "optimizer" else "right", no_wrap=True)
        for r in rows:
            table.add_row(*[cell(r, d) for _, cell in COLUMNS[:TERMINAL_COLUMNS]])
        console.print(table)
        console.print(verdict(problem, race, catalog)[1], soft_wrap=False, width=min(console.width, 100))
        for sentence in measured(problem, race, catalog):
            console.print(f"  measured: {sentence}.", soft_wrap=False, width=min(console.width, 100), highlight=False)
        for sentence in (held_out(problem, race, catalog), clock(problem, race, catalog)):
            if sentence:
                console.print(f"  {sentence}.", soft_wrap=False, width=min(console.width, 100), highlight=False)
        console.print()
    answer = overall(all_results, catalog)
    if answer:
        console.print("Which optimizer? " + " ".join(f"{s}." for s in answer), soft_wrap=False,
                      width=min(console.width, 100), highlight=False)
        console.print()
    console.print(CAPTION, width=min(console.width, 100))


# ------------------------------------------------------------------------------------- the page
def _verdict_matrix(all_results: Results, catalog: Catalog) -> str:
    """Optimizers × problems: seeds reaching the target, epochs to it, tuned learning rate."""
    names = ranking(all_results, catalog)
    boards = {p: {r.optimizer: r for r in board(p, race, catalog)[1]} for p, race in all_results.items()}
    winners = {p: verdict(p, race, catalog)[0] for p, race in all_results.items()}
    rows = []
    for n in names:
        spec = catalog.spec(n)
        book = f" <small>({html.escape(spec.book)})</small>" if spec else ""
        mark = "" if spec is None or spec.in_book else " <span title='not a method of chapter 8'>†</span>"
        cells = [f"{html.escape(n)}{mark}{book}"]
        for p in all_results:
            r = boards[p].get(n)
            if r is None:
                cells.append("<span class='na'>not run</span>")
                continue
            lr = "" if r.best_lr is None else f"<br><small>lr {html.escape(_lr(r))}</small>"
            mark = " class='win'" if n == winners[p] else (" class='ok'" if r.solved else "")
            cells.append(f"<span{mark}>{r.reached}/{r.seeds} · {html.escape(_fmt(r.ge_to_target, 3))}</span>{lr}")
        rows.append(cells)
    heads = "".join(f"<th><a href='#{_stem(p)}'>{html.escape(title(p))}</a><br><small>"
                    f"{html.escape(catalog.known(p).challenge)}</small></th>" for p in all_results)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='matrix'><thead><tr><th>optimizer</th>{heads}</tr></thead><tbody>{body}</tbody></table>"


PROTOCOL_TEXT = (
    "Every optimizer on a problem gets the same compute budget in gradient-equivalents (epochs): a full-batch "
    "gradient counts 1, a minibatch gradient batch/n, a curvature-vector product 2, each line-search evaluation 1. "
    "Results depend only on the protocol and the seeds, never on the machine's load. Each first-order "
    "optimizer's learning rate is tuned on a log grid (4 decades around its default, extended while the best sits "
    "at an edge) with several seeds; the tuned row shows the grid's runs at the best rate. Target: the best "
    "first-order median final training loss plus 5% of its distance to the problem's floor (0, or the loss's known "
    "minimum), AlgoPerf style. A seed reaches the target when it ends the budget at or below it; its time is the "
    "point from which it stays there. Ranking: seeds reaching the target, then time, then final loss.")


def _published_results(out: Path, figs: Path) -> str:
    """The science suite's "Published results" section when ``out`` also holds its records
    (``bench --suite science --out`` the same directory); else nothing."""
    records = science.stored(out)
    return science_report.section(records, figs) if records else ""


def write(all_results: Results, out: Path, meta: dict[str, Any], catalog: Catalog | None = None) -> Path:
    """Figures under ``out/figures`` (PNG and SVG) and ``out/report.html`` (self-contained);
    ``catalog``: what the command knows of the names (:class:`~.catalog.Catalog`)."""
    catalog = catalog or Catalog()
    figs = out / "figures"
    parts = [f"<h1>deepdescent bench — {html.escape(str(meta.get('suite', '')))} suite</h1>"]
    published = _published_results(out, figs)
    parts += [published, "<h2 id='verdict'>Verdict</h2>",
             "<p>Each cell: seeds that reach the problem's target / seeds · median epochs to it (never: none did), "
             "every optimizer with the same budget; the tuned learning rate below (* at the edge of its grid). "
             "Green: the problem's winner; light green: solved (at least half the seeds). Rows: most problems solved "
             "first, then most within 2× of the fastest, then the geometric mean of the time ratios.</p>", _verdict_matrix(all_results, catalog), "<ul class='verdicts'>"]
    for problem, race in all_results.items():
        sentence = verdict(problem, race, catalog)[1]
        why = "".join(f"<li>{html.escape(m)}.</li>" for m in measured(problem, race, catalog))
        for extra in (held_out(problem, race, catalog), clock(problem, race, catalog)):
            sentence += f" {extra}." if extra else ""
        parts.append(f"<li><b>{html.escape(title(problem))}</b>: {html.escape(sentence)}"
                     + (f"<ul class='measured'><small>measured:</small>{why}</ul>" if why else "") + "</li>")
    parts.append("</ul>")
    answer = overall(all_results, catalog)
    if answer:
        parts.append("<h3 id='overall'>Which optimizer?</h3><p>" + " ".join(f"{html.escape(s)}." for s in answer)
                     + "</p>")
    raced = list(dict.fromkeys(n for race in all_results.values() for n in race))
    specs = [(n, catalog.spec(n)) for n in raced]
    notes = [(n, s) for n, s in specs if s is not None and s.in_book and s.note]
    if notes:
        parts.append("<h3>Where the raced variant differs from the book</h3><ul>" + "".join(
            f"<li><b>{html.escape(n)}</b> ({html.escape(s.book)}): {html.escape(s.note)}</li>" for n, s in notes)
            + "</ul>")
    others = [(n, s) for n, s in specs if s is not None and not s.in_book]
    if others:
        parts.append("<h3>† Not methods of chapter 8</h3><p>Raced beside the book's methods under the same "
                     "protocol:</p><ul>" + "".join(
                         f"<li><b>{html.escape(n)}</b> ({html.escape(s.book)}){': ' + html.escape(s.note) if s.note else ''}"
                         "</li>" for n, s in others) + "</ul>")
    parts += [f"<h2>Protocol</h2><p>{html.escape(PROTOCOL_TEXT)}</p>", meta_table(meta)]
    parts.append(f'<h2>Performance profile</h2><img alt="performance profile" '
                 f'src="data:image/png;base64,{_profile_figure(all_results, figs, catalog)}">')
    depth = _depth_figure(all_results, figs)
    if depth:
        parts.append(f'<h2>Depth and initialization</h2><img alt="depth and initialization" '
                     f'src="data:image/png;base64,{depth}">')
    for problem, race in all_results.items():
        tgt, rows = board(problem, race, catalog)
        p = catalog.known(problem)
        budget = max(r.budget for t in race.values() for r in t["tuned"])
        parts.append(f"<h2 id='{_stem(problem)}'>{html.escape(title(problem))}</h2><p>{html.escape(p.description)}"
                     f" — challenge: <b>{html.escape(p.challenge or 'not stated')}</b>; budget {_fmt(budget)} epochs; target "
                     f"training loss T = {tgt:.{apart(tgt, finals(rows))}g}</p>")
        d = apart(tgt, finals(rows))
        parts.append(html_table([h for h, _ in COLUMNS], [[html.escape(c(r, d)) for _, c in COLUMNS] for r in rows]))
        parts.append(f"<p class='cap'>{html.escape(CAPTION)}</p>")
        if p.reference:
            ref, comp = p.reference
            parts.append(f"<p class='ref'>Reference: {html.escape(ref)} — <i>{html.escape(comp)}</i></p>")
        for maker in (_learning_curves, _sensitivity, _trajectories, _instrument_panel, _spectrum_panel):
            data = maker(problem, race, figs, catalog)
            if data:
                parts.append(f'<img alt="{problem} {maker.__name__.strip("_")}" src="data:image/png;base64,{data}">')
    style_ = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
              "font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}"
              "td:first-child{text-align:left}img{max-width:100%;display:block;margin:1em 0}.ref,.cap{color:#555;"
              "font-size:12px}.matrix td{font-size:12px;white-space:nowrap}.win{background:#9be29b;padding:1px 3px}"
              ".ok{background:#dff5df;padding:1px 3px}.na{color:#999}.meta td{text-align:left}"
              ".matrix{display:block;overflow-x:auto}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>deepdescent bench</title>"
            f"<style>{style_}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    files.write_text(path, page)  # a full disk leaves the previous report whole
    return path
