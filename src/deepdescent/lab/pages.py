"""The building blocks of a report page, shared by the race's report and the science suite's:
figures saved at print resolution (PNG + SVG) and embedded, HTML tables, the run's facts."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

DPI = 200  # print resolution of the PNG figures


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, stem: str) -> str:
    """``fig`` as ``out/stem.png`` and ``.svg``, closed; returns the PNG as base64 (for the page)."""
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    (out / f"{stem}.png").write_bytes(buf.getvalue())
    fig.savefig(out / f"{stem}.svg")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def html_table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table; the cells are HTML already (escape them first)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def meta_table(meta: dict[str, Any]) -> str:
    """The run's facts (suite, protocol, machine, times) as a two-column table."""
    labels = {"suite": "suite", "protocol": "protocol", "problems": "problems", "optimizers": "optimizers",
              "storage": "result storage", "started": "started", "seconds": "race time (s, this machine)",
              "torch": "torch", "machine": "machine"}
    rows = []
    for key, value in meta.items():
        if key in HIDDEN:
            continue
        text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        rows.append([html.escape(labels.get(key, key)), html.escape(text)])
    return html_table(["", ""], rows, "meta")


#: meta.json's entries for the report's own use (how to describe the raced optimizers and
#: workloads without importing them; the database file): shown elsewhere on the page, not here.
HIDDEN = ("described", "problems_described", "database")
