"""A dashboard of a Monitor's JSONL log, drawn with matplotlib."""

from __future__ import annotations

import math
import os
from typing import Any

from deepdescent.diagnostics.sinks import read_jsonl


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
        _empty(ax, title)
        return False
    for label, steps, values in series:
        (ax.semilogy if log else ax.plot)(steps, values, marker=".", label=label)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.legend()
    return True


def _empty(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes, color="gray")


def plot(log: str | os.PathLike[str] | list[dict[str, Any]], path: str | os.PathLike[str] | None = None):
    """Render the dashboard: the Figure 8.1 panel (gradient norm and gᵀHg over training),
    Hessian eigenvalue traces, gradient noise, a per-layer gradient-norm heatmap, per-time-step
    gradient norms, and the interpolation curve. Returns the figure; saves it when ``path`` is
    given (PNG, SVG or PDF by the suffix)."""
    import matplotlib

    matplotlib.use("Agg", force=False) if not os.environ.get("MPLBACKEND") else None
    import matplotlib.pyplot as plt
    import numpy as np

    records = read_jsonl(log) if not isinstance(log, list) else log
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), constrained_layout=True)
    (a1, a2, a3), (a4, a5, a6) = axes

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
        _empty(a1, "§8.2.1 ill-conditioning (book Fig. 8.1)")

    if _pair(a2, records, "curvature", {"lambda_max": "λmax", "lambda_min": "λmin"},
             "§8.2.3 Hessian extreme eigenvalues (Lanczos)", log=False):
        a2.axhline(0, color="gray", lw=0.5)
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
        _empty(a4, "per-layer gradient norm")

    rec = [r for r in records if r["instrument"] == "recurrent"]
    if rec:
        for name, norms in rec[-1]["values"]["grad_norm_per_step"].items():
            a5.semilogy(range(1, len(norms) + 1), [max(float(v), 1e-30) for v in norms], marker=".", label=name)
        a5.set_title(f"§8.2.5 ‖∂L/∂h_t‖ per time step (step {rec[-1]['step']})")
        a5.set_xlabel("time step t")
        a5.legend()
    else:
        _empty(a5, "§8.2.5 per-time-step gradient norms")

    interp = [r for r in records if r["instrument"] == "interpolation"]
    if interp:
        v = interp[-1]["values"]
        a6.plot(v["alpha"], [float(x) for x in v["loss"]], marker=".")
        a6.axvline(0, color="gray", lw=0.5)
        a6.axvline(1, color="gray", lw=0.5)
        a6.set_title(f"§8.2.7 loss from θ₀ (α=0) to θ (α=1), step {interp[-1]['step']}")
        a6.set_xlabel("α")
    else:
        _empty(a6, "§8.2.7 interpolation θ₀ → θ")
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig
