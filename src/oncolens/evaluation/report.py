"""One self-contained HTML report per evaluation: every image embedded, readable offline."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from ..files import atomic_write_text
from .metrics import MetricsReport, format_metric

__all__ = ["render_report", "embed_png", "REPORT_SECTIONS"]

REPORT_SECTIONS = ("summary", "metrics", "per-class", "plots", "groups", "errors", "confused", "explanations",
                   "config", "dataset")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#16324f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;opacity:.85}main{padding:8px 28px 40px;max-width:1200px}
section{background:#fff;border-radius:8px;padding:14px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:17px;margin:4px 0 12px;color:#16324f}table{border-collapse:collapse;font-size:13px}
td,th{border-bottom:1px solid #e3e6ea;padding:5px 10px;text-align:right}th{background:#eef1f5}
td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #e3e6ea;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid figure{margin:0;flex:1 1 420px}
figcaption{font-size:12px;color:#5b6473}.note{background:#fff7e0;border-left:4px solid #f0b400;padding:6px 10px;
margin:6px 0;font-size:13px}.big{font-size:26px;font-weight:600}.kpis{display:flex;gap:26px;flex-wrap:wrap}
.kpi span{display:block;font-size:12px;color:#5b6473}pre{background:#f1f3f6;padding:10px;overflow:auto;font-size:12px}
"""


def embed_png(path: str | Path) -> str:
    """A ``data:`` URI of a PNG file, so the report needs no other file."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def _table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "<p>none</p>"
    columns = list(columns or rows[0].keys())

    def cell(value) -> str:
        if value is None:
            return "undefined"
        if isinstance(value, float):
            return f"{value:.3f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(images: Sequence[tuple[str, Path]]) -> str:
    return "<div class='grid'>" + "".join(
        f"<figure><img alt='{html.escape(caption)}' src='{embed_png(path)}'><figcaption>{html.escape(caption)}"
        "</figcaption></figure>" for caption, path in images if path and Path(path).exists()) + "</div>"


def render_report(out: Path, *, title: str, subtitle: str, report: MetricsReport, metrics: dict, metric_rows: list[dict],
                  per_class: list[dict], plots: list[tuple[str, Path]], groups: dict[str, list[dict]],
                  group_plots: list[tuple[str, Path]], gallery: Path | None, confused: list[dict],
                  config: dict, dataset: dict, notes: list[str],
                  explanations: list[tuple[str, Path]] | None = None) -> Path:
    """Write the report to ``out`` and return its path."""
    note_html = "".join(f"<div class='note'>{html.escape(n)}</div>" for n in notes)
    kpis = "".join(
        f"<div class='kpi'><span>{html.escape(k.replace('_', ' '))}</span><div class='big'>"
        f"{format_metric(report.value(k))}</div><span>"
        f"{'95% CI ' + format_metric(report.value(k), report.interval(k)).partition(' ')[2] if report.interval(k) else ''}"
        "</span></div>" for k in ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc_macro") if k in report.headline)
    group_html = "".join(f"<h3>{html.escape(col)}</h3>{_table(rows)}" for col, rows in groups.items())
    sections = {
        "summary": f"<h2>Summary</h2><div class='kpis'>{kpis}</div>{note_html}",
        "metrics": "<h2>Metrics (95% bootstrap CI, resampling by "
                   f"{html.escape(report.bootstrap_unit)})</h2>{_table(metric_rows)}",
        "per-class": f"<h2>Per class (one-vs-rest)</h2>{_table(per_class)}",
        "plots": f"<h2>Plots</h2>{_figures(plots)}",
        "groups": f"<h2>By group</h2>{group_html or '<p>the data has no grouping columns</p>'}{_figures(group_plots)}",
        "errors": "<h2>Highest-loss images</h2>" + (_figures([("true / predicted (probability)", gallery)])
                                                     if gallery else "<p>no images</p>"),
        "confused": f"<h2>Most confused class pairs</h2>{_table(confused)}",
        "explanations": "<h2>Explanations</h2>" + (_figures(explanations) if explanations
                                                    else "<p>no explanation was computed for this evaluation</p>"),
        "config": f"<h2>Run configuration</h2><pre>{html.escape(json.dumps(config, indent=2, default=str))}</pre>",
        "dataset": f"<h2>Dataset</h2><pre>{html.escape(json.dumps(dataset, indent=2, default=str))}</pre>",
    }
    body = "".join(f"<section id='{name}'>{sections[name]}</section>" for name in REPORT_SECTIONS)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>"
            f"</header><main>{body}</main></body></html>")
    return atomic_write_text(out, page)
