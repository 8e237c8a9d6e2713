"""A dashboard of a Monitor's JSONL log, drawn with matplotlib."""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any

from deepdescent.diagnostics.sinks import check_record, read_jsonl


def _series(records: list[dict[str, Any]], instrument: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for r in records:
        if r["instrument"] == instrument and isinstance(r["values"].get(key), (int, float)):
            xs.append(r["step"])
            ys.append(float(r["values"][key]))
    return xs, ys


def _pair(ax, records, instrument: str, keys: dict[str, str], title: str, log: bool) -> bool:
    """Two values of one instrument over steps on one axis (or an empty panel); whether drawn."""
    series = [(label, *_series(records, instrument, key)) for key, label in keys.items()]
    if not series[0][1]:
        _empty(ax, title, _why(records, instrument))
        return False
    for label, steps, values in series:
        (ax.semilogy if log else ax.plot)(steps, values, marker=".", label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend()
    return True


def _unconverged(ax, records: list[dict[str, Any]]) -> None:
    """Rings around the λ values whose end of the spectrum did not converge (their flags in the
    log): a researcher should not read a trend into those."""
    points = [(r["step"], float(r["values"][key])) for r in records if r["instrument"] == "curvature"
              for key, flag in (("lambda_max", "converged_max"), ("lambda_min", "converged_min"))
              if r["values"].get(flag) is False and isinstance(r["values"].get(key), (int, float))]
    if points:
        ax.scatter(*zip(*points), s=60, facecolors="none", edgecolors="black", zorder=3, label="not converged")
        ax.legend()


def _empty(ax, title: str, why: str = "not measured") -> None:
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="gray", wrap=True, fontsize=9)


def _why(records: list[dict[str, Any]], instrument: str) -> str:
    """Why a panel has no data, from the Monitor's own records: failed (the reason), waiting for
    budget (how long), or not enabled."""
    state = next((r["values"] for r in reversed(records) if r["instrument"] == "monitor"), None)
    if state is None:
        return "not measured (no Monitor record in the log)"
    reason = state.get("disabled", {}).get(instrument)
    if reason:
        return "failed, dropped:\n" + textwrap.fill(reason[:160], 45)
    if instrument in state.get("measured", {}):
        return f"not measured: waited {state.get('postponed', {}).get(instrument, 0)} steps for budget\n" \
               "(raise budget= or lengthen every=)"
    return "not enabled (add it to instruments=)"


def plot(log: str | os.PathLike[str] | list[dict[str, Any]], path: str | os.PathLike[str] | None = None):
    """Render the dashboard: the Figure 8.1 panel (gradient norm and gᵀHg over training), λmax
    and λmin, gradient noise, a per-layer gradient-norm heatmap, per-time-step gradient norms, the
    interpolation curve, tr H with its standard error, the SLQ spectral density, the 2-D loss
    slice, the per-example gradient histogram, the batch-size tests and the Monitor's schedule
    (measurements and steps waited per instrument). A panel without data says why (the instrument
    failed, waited for budget, or is off). Returns the figure; saves it when ``path`` is given (PNG,
    SVG or PDF by the suffix)."""
    import matplotlib

    matplotlib.use("Agg", force=False) if not os.environ.get("MPLBACKEND") else None
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_jsonl(log) if not isinstance(log, list) else log
    for i, record in enumerate(records):
        check_record(record, f"records[{i}]")
    fig, axes = plt.subplots(4, 3, figsize=(15, 16.5), constrained_layout=True)
    (a1, a2, a3), (a4, a5, a6), (a7, a8, a9), (a10, a11, a12) = axes

    xs, gn = _series(records, "cheap", "grad_norm")
    hx, ghg = _series(records, "ill_conditioning", "gTHg")
    if xs or hx:
        a1.set_title("§8.2.1 ill-conditioning (book Fig. 8.1)")
        if xs:
            a1.plot(xs, gn, color="tab:blue", lw=1)
            a1.set_ylabel("gradient norm", color="tab:blue")
        if hx:
            twin = a1.twinx()
            twin.plot(hx, ghg, color="tab:red", marker=".", lw=1)
            twin.set_ylabel("gᵀHg", color="tab:red")
        a1.set_xlabel("step")
    else:
        _empty(a1, "§8.2.1 ill-conditioning (book Fig. 8.1)", _why(records, "ill_conditioning"))

    if _pair(a2, records, "curvature", {"lambda_max": "λmax", "lambda_min": "λmin"},
             "§8.2.3 Hessian extreme eigenvalues (Lanczos)", log=False):
        a2.axhline(0, color="gray", lw=0.5)
        _unconverged(a2, records)
    _pair(a3, records, "gradient_noise", {"b_simple": "B_simple = tr Σ / ‖G‖²", "snr": "SNR ‖G‖² m / tr Σ"},
          "§8.1.3 gradient noise", log=True)

    layer = [r for r in records if r["instrument"] == "cheap" and isinstance(r["values"].get("layer_grad_norms"), dict)]
    if layer:
        names = list(layer[0]["values"]["layer_grad_norms"])
        grid = np.array([[float(r["values"]["layer_grad_norms"].get(n, math.nan)) for r in layer] for n in names])
        im = a4.imshow(np.log10(np.maximum(grid, 1e-30)), aspect="auto", cmap="viridis", interpolation="nearest",
                       extent=(layer[0]["step"], layer[-1]["step"], len(names) - 0.5, -0.5))
        a4.set_yticks(range(len(names)), names, fontsize=7)
        a4.set_title("per-layer gradient norm (log₁₀)")
        a4.set_xlabel("step")
        fig.colorbar(im, ax=a4)
    else:
        _empty(a4, "per-layer gradient norm", _why(records, "cheap"))

    rec = [r for r in records if r["instrument"] == "recurrent"]
    if rec:
        for name, norms in rec[-1]["values"]["grad_norm_per_step"].items():
            a5.semilogy(range(1, len(norms) + 1), [max(float(v), 1e-30) for v in norms], marker=".", label=name)
        a5.set_title(f"§8.2.5 ‖∂L/∂h_t‖ per time step (step {rec[-1]['step']})")
        a5.set_xlabel("time step t")
        a5.legend()
    else:
        _empty(a5, "§8.2.5 per-time-step gradient norms", _why(records, "recurrent"))

    interp = [r for r in records if r["instrument"] == "interpolation"]
    if interp:
        v = interp[-1]["values"]
        a6.plot(v["alpha"], [float(x) for x in v["loss"]], marker=".")
        a6.axvline(0, color="gray", lw=0.5)
        a6.axvline(1, color="gray", lw=0.5)
        a6.set_title(f"§8.2.7 loss from θ₀ (α=0) to θ (α=1), step {interp[-1]['step']}")
        a6.set_xlabel("α")
    else:
        _empty(a6, "§8.2.7 interpolation θ₀ → θ", _why(records, "interpolation"))
    _trace(a7, records)
    _density(a8, records, np)
    _slice(a9, fig, records, np)
    _histogram(a10, records)
    _pair(a11, records, "gradient_noise", {"norm_test": "norm test", "inner_product_test": "inner-product test",
                                           "orthogonality_test": "orthogonality test"},
          "§8.1.3 batch-size tests (× m / θ²: the batch asked for)", log=True)
    _schedule(a12, records)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _trace(ax, records) -> None:
    steps, trace = _series(records, "curvature", "trace")
    _, err = _series(records, "curvature", "trace_stderr")
    title = "§8.2.3 tr H (Hutchinson, ± 2 standard errors)"
    if not steps:
        _empty(ax, title, _why(records, "curvature"))
        return
    ax.plot(steps, trace, marker=".", color="tab:purple")
    if len(err) == len(trace):
        ax.fill_between(steps, [t - 2 * e for t, e in zip(trace, err)], [t + 2 * e for t, e in zip(trace, err)],
                        color="tab:purple", alpha=0.2)
    ax.set_title(title)
    ax.set_xlabel("step")


def _density(ax, records, np) -> None:
    spectra = [r for r in records if r["instrument"] == "spectrum"]
    title = "§8.2.3 Hessian spectral density (SLQ)"
    if not spectra:
        _empty(ax, title, _why(records, "spectrum"))
        return
    curves = []
    for r in spectra[-3:]:  # the last three measurements, to see it move
        nodes, weights = np.array(r["values"]["nodes"], float), np.array(r["values"]["weights"], float)
        span = max(nodes.max() - nodes.min(), 1e-12)
        grid = np.linspace(nodes.min() - 0.05 * span, nodes.max() + 0.05 * span, 400)
        sigma = span / 100
        density = (weights[None, :] * np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2)).sum(1) / (
            sigma * math.sqrt(2 * math.pi))
        curves.append((grid, density, r["step"]))
    top = max(float(d.max()) for _, d, _ in curves)
    for grid, density, step in curves:
        ax.semilogy(grid, np.maximum(density, top * 1e-6), label=f"step {step}")
    ax.set_ylim(top * 1e-5, top * 2)  # the bulk and the outliers, not the quadrature's numerical floor
    ax.set_title(title)
    ax.set_xlabel("eigenvalue")
    ax.legend()


def _slice(ax, fig, records, np) -> None:
    slices = [r for r in records if r["instrument"] == "slice2d"]
    title = "§8.2.7 loss on a 2-D slice around θ"
    if not slices:
        _empty(ax, title, _why(records, "slice2d"))
        return
    v = slices[-1]["values"]
    coords, loss = np.array(v["coords"], float), np.array(v["loss"], float)
    filled = ax.contourf(coords, coords, np.log10(np.maximum(loss, 1e-12)), levels=20, cmap="viridis")
    ax.plot([0], [0], "r+", ms=10)
    fig.colorbar(filled, ax=ax, label="log₁₀ loss")
    ax.set_title(f"{title} (step {slices[-1]['step']})")
    ax.set_xlabel("a (direction 1)")
    ax.set_ylabel("b (direction 2)")


def _histogram(ax, records) -> None:
    """The last gradient-noise measurement's histogram of per-example gradient elements."""
    found = [r for r in records if r["instrument"] == "gradient_noise" and isinstance(r["values"].get("histogram"), dict)]
    title = "per-example gradient elements (histogram)"
    if not found:
        _empty(ax, title, _why(records, "gradient_noise"))
        return
    h = found[-1]["values"]["histogram"]
    edges, counts = [float(e) for e in h["edges"]], [float(c) for c in h["counts"]]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
           color="tab:gray", log=any(c > 0 for c in counts))
    ax.set_title(f"{title}, step {found[-1]['step']}")
    ax.set_xlabel("gradient element")


def _schedule(ax, records) -> None:
    """Measurements and steps waited for budget per instrument, from the last Monitor record."""
    state = next((r["values"] for r in reversed(records) if r["instrument"] == "monitor"), None)
    title = "the Monitor's schedule"
    if not state or not state.get("measured"):
        _empty(ax, title, "no Monitor record in the log")
        return
    names = list(state["measured"])
    measured = [int(state["measured"][n]) for n in names]
    waited = [int(state.get("postponed", {}).get(n, 0)) for n in names]
    at = range(len(names))
    ax.barh([i - 0.2 for i in at], measured, height=0.4, label="measurements")
    ax.barh([i + 0.2 for i in at], waited, height=0.4, label="steps waited for budget")
    ax.set_yticks(list(at), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{title} (step {next(r['step'] for r in reversed(records) if r['instrument'] == 'monitor')})")
    ax.legend(fontsize=8)
