"""The HTML report: general-ability and editing-metric curves vs number of edits, one page.

The page is altair's inline template (the vega/vega-lite/vega-embed bundle from vl-convert is
embedded once, so it renders with no network) with our header and number table injected around
the chart. Nothing time- or machine-dependent goes in: the same table and context give the same
bytes.
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from editharm.aggregate import EDITING_METRICS, atomic_write, editing_means, general_means, with_shared_base

log = logging.getLogger(__name__)

CONTEXT_KEYS: dict[str, type] = {
    "model": str, "model_source": str, "edit_dataset": str, "datasets": list, "settings": dict,
}
# title replaces the default heading; model_name picks the table's model when it holds several
OPTIONAL_CONTEXT_KEYS: dict[str, type] = {"note": str, "title": str, "model_name": str}
DATASET_KEYS: dict[str, type] = {"name": str, "source": str, "licence": str, "demo": bool}
CHART_DIV = "charts"
# Markers in altair's inline template, where the header and the table go; checked to occur once.
HEAD_MARKER = '<meta charset="UTF-8">'
DIV_MARKER = f'<div class="vega-visualization" id="{CHART_DIV}"></div>'
EMBED_OPTIONS = {"actions": False, "renderer": "svg"}  # no editor links; SVG stays sharp when printed
PAGE_STYLE = """<title>{title}</title>
  <style>
    body {{ font-family: sans-serif; margin: 1.5em 2em; color: #222; }}
    .demo {{ background: #fff3cd; border: 1px solid #e0b100; padding: 0.5em 1em; font-weight: bold; }}
    table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
    th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
    table.numbers td {{ text-align: right; font-variant-numeric: tabular-nums; }}
    table.numbers td:nth-child(-n+2) {{ text-align: left; }}
  </style>"""


def _check_context(context: dict[str, Any]) -> None:
    unknown = sorted(set(context) - set(CONTEXT_KEYS) - set(OPTIONAL_CONTEXT_KEYS))
    if unknown:
        raise ValueError(f"report context: unknown key(s) {unknown}; allowed: "
                         f"{sorted(CONTEXT_KEYS)} and optional {sorted(OPTIONAL_CONTEXT_KEYS)}")
    for key, kind in {**CONTEXT_KEYS, **OPTIONAL_CONTEXT_KEYS}.items():
        if key not in context:
            if key in OPTIONAL_CONTEXT_KEYS:
                continue
            raise ValueError(f"report context: missing key {key!r}; required: {sorted(CONTEXT_KEYS)}")
        if not isinstance(context[key], kind):
            raise ValueError(f"report context: key {key!r}: expected {kind.__name__}, got {context[key]!r}")
    for i, ds in enumerate(context["datasets"]):
        for key, kind in DATASET_KEYS.items():
            if not isinstance(ds, dict) or not isinstance(ds.get(key), kind):
                raise ValueError(f"report context: key 'datasets[{i}].{key}': expected {kind.__name__}")


def _read_table(path: Path) -> pd.DataFrame:
    # names such as reg "none" must stay strings, and the table never holds missing values
    return pd.read_csv(path, keep_default_na=False) if path.suffix == ".csv" else pd.read_parquet(path)


def _select_model(table: pd.DataFrame, context: dict[str, Any]) -> pd.DataFrame:
    """One report per model: `context["model_name"]` picks it when the table holds several."""
    models = sorted(table["model"].unique())
    name = context.get("model_name")
    if name is None:
        if len(models) != 1:
            raise ValueError(f"table holds models {models}; set context['model_name'] to pick one")
        name = models[0]
    if name not in models:
        raise ValueError(f"model {name!r} not in table; it holds {models}")
    return table[table["model"] == name]


def _curves(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Plotted values, averaged over edit sequences: mean general ability, per-task primary
    metric, editing metrics."""
    run = ["config", "setting", "step"]
    mean = general_means(table).groupby(run, sort=True)["mean_general"].mean().reset_index()
    primary = table[(table["kind"] == "general") & table["primary"]]
    tasks = primary.groupby(["task", "metric", *run], sort=True)["value"].mean().reset_index()
    tasks.insert(0, "panel", tasks["task"] + " (" + tasks["metric"] + ")")
    editing = editing_means(table)
    editing = editing[editing["metric"].isin(EDITING_METRICS)][["metric", *run, "value"]]
    return mean, tasks, editing.reset_index(drop=True)


def _line(data: pd.DataFrame, y: str, y_title: str, steps: list[int]) -> alt.Chart:
    # symlog spreads the usual 0, 1, 2, 5, 10, 20... evaluation steps evenly and still shows 0
    step_axis = alt.X("step:Q", title="number of edits", scale=alt.Scale(type="symlog"),
                      axis=alt.Axis(values=steps))
    return alt.Chart(data).mark_line(point=True).encode(
        x=step_axis,
        y=alt.Y(f"{y}:Q", title=y_title),
        color=alt.Color("config:N", title="method + regularizer"),
        # settings differ by line dash and point shape; vega-lite draws dash legends without
        # visible symbols next to points, so the shape legend stands for both
        strokeDash=alt.StrokeDash("setting:N", legend=None),
        shape=alt.Shape("setting:N", title="setting (shape, dash)"),
        tooltip=list(data.columns),
    )


def _chart(mean: pd.DataFrame, tasks: pd.DataFrame, editing: pd.DataFrame) -> alt.VConcatChart:
    steps = sorted({int(s) for frame in (mean, tasks, editing) for s in frame["step"]})
    charts = []
    if len(mean):
        charts.append(_line(mean, "mean_general", "mean general ability", steps).properties(
            width=560, height=300,
            title=alt.Title("Mean general ability vs number of edits",
                            subtitle="mean over tasks of each task's primary metric, averaged over edit sequences"),
        ))
        charts.append(_line(tasks, "value", "score", steps).properties(width=220, height=160).facet(
            facet=alt.Facet("panel:N", title=None), columns=4,
            title=alt.Title("General ability per task", subtitle="each task's primary metric"),
        ).resolve_scale(y="independent"))
    if len(editing):
        order = [m for m in EDITING_METRICS if m in set(editing["metric"])]
        charts.append(_line(editing, "value", "teacher-forced token accuracy", steps).properties(
            width=220, height=160,
        ).facet(
            column=alt.Column("metric:N", title=None, sort=order),
            title=alt.Title("Editing metrics vs number of edits",
                            subtitle="locality: share of base-model answer tokens unchanged"),
        ))
    return alt.vconcat(*charts).configure_legend(orient="right")


def _numbers(mean: pd.DataFrame, tasks: pd.DataFrame, editing: pd.DataFrame) -> str:
    run = ["setting", "config", "step"]
    wide = mean.set_index(run)[["mean_general"]].rename(columns={"mean_general": "mean general"})
    for frame, column in ((tasks, "task"), (editing, "metric")):
        if len(frame):
            wide = wide.join(frame.pivot_table(index=run, columns=column, values="value", sort=True), how="outer")
    return wide.reset_index().to_html(
        index=False, na_rep="–", float_format=lambda v: f"{v:.4f}", border=0, classes="numbers"
    )


def _header(table: pd.DataFrame, context: dict[str, Any], demo: bool) -> str:
    e = html.escape
    steps = sorted(int(s) for s in table["step"].unique())
    title = context.get("title", f"Model editing vs general abilities: {context['model']}")
    parts = [f"<h1>{e(title)}</h1>"]
    if demo:
        parts.append('<p class="demo">Demo data: these numbers come from the small bundled demo data sets '
                     "and show that the pipeline works; they are not research results.</p>")
    facts = [
        ("Model", context["model"]),
        ("Model source", context["model_source"]),
        ("Edit dataset", context["edit_dataset"]),
        ("Number of edits", f"up to {steps[-1]} (evaluated after {', '.join(map(str, steps))} edits)"),
        ("Settings", ", ".join(sorted(table["setting"].unique()))),
        ("Configs (method + regularizer)", ", ".join(sorted(table["config"].unique()))),
        ("Edit sequences (seeds)", f"{table['seq'].nunique()} (seq {', '.join(str(s) for s in sorted(table['seq'].unique()))})"),
    ]
    if context.get("note"):
        facts.append(("Note", context["note"]))
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>")
    parts.append("<h2>Datasets</h2><table><tr><th>dataset</th><th>source</th><th>licence</th><th>data</th></tr>")
    for ds in context["datasets"]:
        label = "demo data" if ds["demo"] else "real data"
        parts.append(f"<tr><td>{e(ds['name'])}</td><td>{e(ds['source'])}</td>"
                     f"<td>{e(ds['licence'])}</td><td>{label}</td></tr>")
    parts.append("</table><h2>Parameters</h2><table>")
    for key in sorted(context["settings"]):
        value = json.dumps(context["settings"][key], sort_keys=True)
        parts.append(f"<tr><th>{e(str(key))}</th><td><code>{e(value)}</code></td></tr>")
    parts.append("</table><h2>Curves</h2>")
    return "\n".join(parts)


def _inject(page: str, marker: str, text: str) -> str:
    if page.count(marker) != 1:
        raise RuntimeError(f"altair's inline HTML template changed: marker {marker!r} is not there exactly once")
    return page.replace(marker, text)


def build_report(table: Path, out_html: Path, *, context: dict[str, Any]) -> None:
    """Write a self-contained HTML report of the aggregated metrics table (parquet or CSV)."""
    _check_context(context)
    data = with_shared_base(_select_model(_read_table(Path(table)), context))
    mean, tasks, editing = _curves(data)
    demo = bool(data["demo"].any()) or any(ds["demo"] for ds in context["datasets"])
    page = _chart(mean, tasks, editing).to_html(inline=True, output_div=CHART_DIV, embed_options=EMBED_OPTIONS)
    title = html.escape(context.get("title", f"editharm report: {context['model']}"))
    page = _inject(page, HEAD_MARKER, HEAD_MARKER + "\n  " + PAGE_STYLE.format(title=title))
    page = _inject(page, DIV_MARKER, "\n".join([
        _header(data, context, demo), DIV_MARKER, "<h2>Numbers</h2>",
        "<p>Values averaged over edit sequences; general tasks show their primary metric.</p>",
        _numbers(mean, tasks, editing),
    ]))
    atomic_write(Path(out_html), lambda p: p.write_text(page, encoding="utf-8"))
    log.info("wrote report %s", out_html)
