"""The science suite's report: the "Published results" table (published number, ours, comparable,
verdict) and one section per experiment with its figure — everything derived from the stored records."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from deepdescent.lab import files
from deepdescent.lab.pages import html_table, meta_table, pyplot, save_figure
from deepdescent.lab.science import EXPERIMENTS, summaries


def _checks(failed: tuple[str, ...]) -> str:
    """The checks that did not hold, those that failed clearly apart from those that straddle."""
    unsure = [f.removeprefix("inconclusive: ") for f in failed if f.startswith("inconclusive: ")]
    fails = [f for f in failed if not f.startswith("inconclusive: ")]
    return ((f"; failed: {', '.join(fails)}" if fails else "")
            + (f"; inconclusive: {', '.join(unsure)}" if unsure else ""))


HEADERS = ["claim", "source", "published", "ours", "comparable", "verdict", "budget"]


def rows(records: dict[str, dict[str, Any]]) -> list[dict[str, str]]:
    """One row per stored experiment, in the suite's order."""
    found = summaries(records)
    out = []
    for key, exp in EXPERIMENTS.items():
        if key not in found:
            continue
        s, rec = found[key], records[key]
        out.append({"key": key, "title": exp.title, "claim": exp.claim, "source": exp.source,
                    "published": exp.published, "ours": s.ours,
                    "comparable": "yes" if s.comparable else f"no — {s.why}",
                    "comparable_why": s.why, "verdict": s.verdict,
                    "explanation": s.explanation + _checks(s.failed) + (
                        "; stored with one seed per setting by an earlier version: rerun this experiment "
                        "(delete its record) for intervals over seeds"
                        if exp.seeded and "other_seeds" not in rec["raw"] else ""),
                    "budget": f"{rec['budget']} ({rec['seconds']:g} s, {rec.get('device', 'cpu')})"})
    return out


#: Said above the results of a run at the tiny scale.
SMOKE = ("Scale tiny: a smoke test of the code path, not a verdict — each experiment ran for seconds, far too "
         "little for its claim; run --scale cpu (or full on a GPU) for verdicts.")


def smoke_test(records: dict[str, dict[str, Any]]) -> bool:
    """Whether any record ran at the tiny scale (its verdicts mean nothing)."""
    return any(r.get("scale") == "tiny" for r in records.values())


def markdown(records: dict[str, dict[str, Any]]) -> str:
    """The table as Markdown (BENCHMARKS.md repeats it)."""
    lines = ["| experiment | source | published | ours | comparable | verdict |", "|---|---|---|---|---|---|"]
    for r in rows(records):
        cells = [r["title"], r["source"], r["published"], r["ours"], r["comparable"],
                 f"**{r['verdict']}**: {r['explanation']}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return "\n".join(lines)


def section(records: dict[str, dict[str, Any]], figures: Path) -> str:
    """The "Published results" HTML: the table, then each experiment with its figure."""

    table_rows = []
    for r in rows(records):
        cls = {"reproduced": "win", "partly": "ok"}.get(r["verdict"], "na")
        table_rows.append([f"<a href='#sci-{r['key']}'>{html.escape(r['title'])}</a><br><small>"
                           f"{html.escape(r['claim'])}</small>", html.escape(r["source"]), html.escape(r["published"]),
                           html.escape(r["ours"]), html.escape(r["comparable"]),
                           f"<span class='{cls}'>{html.escape(r['verdict'])}</span><br><small>"
                           f"{html.escape(r['explanation'])}</small>", html.escape(r["budget"])])
    parts = ["<h2 id='published'>Published results</h2>",
             *([f"<p class='smoke'><b>{html.escape(SMOKE)}</b></p>"] if smoke_test(records) else []),
             "<p>Each claim of chapter 8 (or of the paper it cites) tested here at our scale: the published number, "
             "ours (derived from the runs stored in <code>science/*.json</code>), whether the two measure the same "
             "thing at the same scale, and the verdict.</p>",
             html_table(["claim", "source", "published", "ours", "comparable", "verdict", "budget"], table_rows,
                    "science")]
    plt = pyplot()
    for r in rows(records):
        exp = EXPERIMENTS[r["key"]]
        fig = plt.figure(figsize=(11, 4.2))
        exp.figure(records[r["key"]]["raw"], fig)
        fig.tight_layout()
        data = save_figure(fig, figures, f"science-{r['key']}")
        parts.append(f"<h3 id='sci-{r['key']}'>{html.escape(r['title'])}</h3><p><b>Claim</b> "
                     f"({html.escape(r['source'])}): {html.escape(r['claim'])}.<br><b>Published</b>: "
                     f"{html.escape(r['published'])}.<br><b>Ours</b>: {html.escape(r['ours'])}.<br><b>Comparable</b>: "
                     f"{html.escape(r['comparable'])}.<br><b>Verdict</b>: {html.escape(r['verdict'])} — "
                     f"{html.escape(r['explanation'])}.<br><b>Budget</b>: {html.escape(r['budget'])}.</p>"
                     f"<p class='cap'>{html.escape(_doc(exp))}</p>"
                     f'<img alt="{html.escape(r["title"])}" src="data:image/png;base64,{data}">')
    return "".join(parts)


def _doc(exp) -> str:
    """The experiment module's docstring after its title line: how it is run."""
    import sys

    doc = sys.modules[exp.run.__module__].__doc__ or ""
    return " ".join(doc.split("\n\n", 1)[-1].split())


def write(records: dict[str, dict[str, Any]], out: Path, meta: dict[str, Any]) -> Path:
    """``out/report.html``: the Published results section and the run's facts."""

    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:13px;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;"
             "vertical-align:top}img{max-width:100%;display:block;margin:1em 0}.cap{color:#555;font-size:12px}"
             ".win{background:#9be29b;padding:1px 3px}.ok{background:#f5e6a8;padding:1px 3px}"
             ".na{background:#f5c6c6;padding:1px 3px}.smoke{background:#fff3c4;padding:.5em}")
    body = (f"<h1>deepdescent bench — science suite</h1>{section(records, out / 'figures')}"
            f"<h2>Run</h2>{meta_table(meta)}")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>deepdescent science</title>"
            f"<style>{style}</style></head><body>{body}</body></html>")
    path = out / "report.html"
    files.write_text(path, page)  # a full disk leaves the previous report whole
    return path
