"""The HTML report: general-ability and editing-metric curves vs number of edits, and optionally
how far the edits moved the weights, one page.

The page is altair's inline template (the vega/vega-lite/vega-embed bundle from vl-convert is
embedded once, so it renders with no network) with our header and number tables injected around
the chart; the weight-change chart is a second embed that uses the same bundle. Nothing time- or
machine-dependent goes in: the same inputs and context give the same bytes.
"""
from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd

from editharm.core.fileio import atomic_write
from editharm.editing.settings import KINDS
from editharm.results.aggregate import general_means, with_shared_base
from editharm.results.records import EDITING_METRICS
from editharm.results.weight_change import SHARE_PREFIX, STAT_COLUMNS

log = logging.getLogger(__name__)

CONTEXT_KEYS: dict[str, type] = {
    "model": str, "model_source": str, "edit_dataset": str, "datasets": list, "settings": dict,
}
# title replaces the default heading
OPTIONAL_CONTEXT_KEYS: dict[str, type] = {"note": str, "title": str}
DATASET_KEYS: dict[str, type] = {"name": str, "source": str, "licence": str, "attribution": str, "demo": bool}
CHART_DIV = "charts"
WEIGHT_DIV = "weights"
# A plotted point. Averaging over everything else pools the sequences, and in instance_single the
# records each edited alone (all its steps hold one edit).
POINT = ["config", "setting", "edits"]
WEIGHT_KEYS = ["model", "method", "reg", "config", "setting", "seq", "step", "edits", "param"]
HEATMAP_COLUMNS = ["model", "config", "setting", "seq", "step", "param", "row", "col", "value"]
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
    table.numbers td:nth-child(-n+2), table.weights td:nth-child(3) {{ text-align: left; }}
    #{weights}.vega-embed {{ width: 100%; display: flex; }}
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


def _select_model(table: pd.DataFrame, context: dict[str, Any]) -> str:
    """One report per model: the table's only model, or the one `context["model"]` names."""
    models = sorted(table["model"].unique())
    if len(models) == 1:
        return models[0]
    name = context["model"]
    if name not in models:
        raise ValueError(f"table holds models {models}; context['model'] ({name!r}) names none of them")
    return name


def _with_edits(table: pd.DataFrame) -> pd.DataFrame:
    """Tables from before the `edits` column (edits in the model at the checkpoint) existed held
    instance_sequential runs only, where it equals the step."""
    return table if "edits" in table else table.assign(edits=table["step"])


def _metric_order(names) -> list[str]:
    """aggregate's EDITING_METRICS order, then any other editing metric by name."""
    known = {m: i for i, m in enumerate(EDITING_METRICS)}
    return sorted(set(names), key=lambda m: (known.get(m, len(known)), m))


def _curves(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Plotted values, one per POINT: mean general ability, per-task primary metric, every
    editing metric present."""
    mean = general_means(table).groupby(POINT, sort=True)["mean_general"].mean().reset_index()
    primary = table[(table["kind"] == "general") & table["primary"]]
    tasks = primary.groupby(["task", "metric", *POINT], sort=True)["value"].mean().reset_index()
    tasks.insert(0, "panel", tasks["task"] + " (" + tasks["metric"] + ")")
    editing = table[table["kind"] == "editing"].groupby(["metric", *POINT], sort=True)["value"].mean().reset_index()
    return mean, tasks, editing


def _edits_axis(data: pd.DataFrame) -> alt.X:
    # symlog spreads the usual 0, 1, 2, 5, 10, 20... evaluation points evenly and still shows 0
    return alt.X("edits:Q", title="number of edits", scale=alt.Scale(type="symlog"),
                 axis=alt.Axis(values=sorted(int(e) for e in data["edits"].unique())))


def _config_color(configs: list[str]) -> alt.Color:
    # a fixed domain gives each config the same colour in every chart of the page
    return alt.Color("config:N", title="method + regularizer", scale=alt.Scale(domain=configs))


def _line(data: pd.DataFrame, y: str, y_title: str | None, configs: list[str]) -> alt.Chart:
    return alt.Chart(data).mark_line(point=True).encode(
        x=_edits_axis(data),
        y=alt.Y(f"{y}:Q", title=y_title),
        color=_config_color(configs),
        tooltip=list(data.columns),
    )


def _in_setting_order(settings) -> list[str]:
    """Settings in editharm.editing.settings' order (single before sequential, instance before batch)."""
    known = {k: i for i, k in enumerate(KINDS)}
    return sorted(set(settings), key=lambda s: (known.get(s, len(known)), s))


def _setting_title(setting: str) -> alt.Title:
    return alt.Title(f"Setting: {setting}", anchor="start", fontSize=16)


def _setting_charts(mean: pd.DataFrame, tasks: pd.DataFrame, editing: pd.DataFrame, configs: list[str]) -> list:
    charts = []
    if len(mean):
        charts.append(_line(mean, "mean_general", "mean general ability", configs).properties(
            width=560, height=300,
            title=alt.Title("Mean general ability vs number of edits",
                            subtitle="mean over tasks of each task's primary metric, averaged over edit sequences"),
        ))
        charts.append(_line(tasks, "value", "score", configs).properties(width=220, height=160).facet(
            facet=alt.Facet("panel:N", title=None), columns=4,
            title=alt.Title("General ability per task", subtitle="each task's primary metric"),
        ).resolve_scale(y="independent"))
    if len(editing):
        notes = ["locality: share of base-model answer tokens unchanged"]
        if editing["metric"].str.endswith("_all").any():
            notes.append("…_all: over every edit made so far")
        charts.append(_line(editing, "value", "score", configs).properties(width=220, height=160).facet(
            facet=alt.Facet("metric:N", title=None, sort=_metric_order(editing["metric"])), columns=4,
            title=alt.Title("Editing metrics vs number of edits", subtitle=notes),
        ).resolve_scale(y="independent"))
    return charts


def _chart(mean: pd.DataFrame, tasks: pd.DataFrame, editing: pd.DataFrame, configs: list[str]) -> alt.VConcatChart:
    """One block per setting: edit counts mean different things in different settings, so their
    configurations never share a line or an axis."""
    blocks = []
    for setting in _in_setting_order(s for frame in (mean, tasks, editing) for s in frame["setting"]):
        parts = [frame[frame["setting"] == setting].drop(columns="setting") for frame in (mean, tasks, editing)]
        blocks.append(alt.vconcat(*_setting_charts(*parts, configs), title=_setting_title(setting)))
    return alt.vconcat(*blocks).configure_legend(orient="right")


def _numbers(mean: pd.DataFrame, tasks: pd.DataFrame, editing: pd.DataFrame) -> str:
    index = ["setting", "config", "edits"]
    wide = mean.set_index(index)[["mean_general"]].rename(columns={"mean_general": "mean general"})
    for frame, column in ((tasks, "task"), (editing, "metric")):
        if len(frame):
            wide = wide.join(frame.pivot_table(index=index, columns=column, values="value", sort=True), how="outer")
    return wide.reset_index().to_html(
        index=False, na_rep="–", float_format=lambda v: f"{v:.4f}", border=0, classes="numbers"
    )


def _read_weight_file(path: Path, columns: list[str], model: str) -> pd.DataFrame:
    frame = _read_table(Path(path))
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected {columns}")
    if model not in set(frame["model"]):
        raise ValueError(f"{path}: no rows for model {model!r}; it holds {sorted(frame['model'].unique())}")
    return frame[frame["model"] == model]


def _stat_columns(weights: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(every statistic column present, the share_above_<t> ones by ascending t)."""
    shares = sorted((c for c in weights if c.startswith(SHARE_PREFIX)), key=lambda c: float(c[len(SHARE_PREFIX):]))
    return [c for c in STAT_COLUMNS if c in weights] + shares, shares


def _weight_curves(weights: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Long table (setting, config, edits, measure, value), and the measures in panel order: the
    Manhattan distance summed over the edited matrices and each share averaged over them, then
    both averaged as the metric curves are."""
    _, shares = _stat_columns(weights)
    keys = ["setting", "config", "seq", "step", "edits"]
    per_checkpoint = weights.groupby(keys, sort=True).agg(manhattan=("manhattan", "sum"),
                                                          **{s: (s, "mean") for s in shares})
    wide = per_checkpoint.groupby(["setting", "config", "edits"], sort=True).mean().reset_index()
    labels = {"manhattan": "Manhattan distance Σ|ΔW|",
              **{s: f"share of entries with |ΔW|/|W| > {s[len(SHARE_PREFIX):]}" for s in shares}}
    long = wide.melt(id_vars=["setting", "config", "edits"], value_vars=list(labels), var_name="measure")
    long["measure"] = long["measure"].map(labels)
    long = long.sort_values(["setting", "measure", "config", "edits"], kind="mergesort").reset_index(drop=True)
    return long, list(labels.values())


def _last_heatmaps(heat: pd.DataFrame) -> pd.DataFrame:
    """Each (setting, config)'s map at its last step, averaged over sequences, with values to 4
    significant digits: colours cannot show more, and the page stays small."""
    last = heat.groupby(["setting", "config"], sort=True)["step"].transform("max")
    keys = ["setting", "config", "param", "row", "col"]
    maps = heat[heat["step"] == last].groupby(keys, sort=True)["value"].mean().reset_index()
    return maps.assign(value=[float(f"{v:.4g}") for v in maps["value"]])


def _weight_chart(curves: pd.DataFrame, measures: list[str], heat: pd.DataFrame, configs: list[str]) -> alt.VConcatChart:
    blocks = []
    for setting in _in_setting_order([*curves["setting"], *heat["setting"]]):
        charts = []
        lines = curves[curves["setting"] == setting].drop(columns="setting")
        if len(lines):
            charts.append(_line(lines, "value", None, configs).properties(width=220, height=160).facet(
                facet=alt.Facet("measure:N", title=None, sort=measures), columns=3,
                title=alt.Title("Weight change vs number of edits",
                                subtitle="over the edited matrices: distance summed, shares averaged; "
                                         "averaged over edit sequences"),
            ).resolve_scale(y="independent"))
        maps = heat[heat["setting"] == setting].drop(columns="setting")
        if len(maps):
            charts.append(alt.Chart(maps).mark_rect().encode(
                x=alt.X("col:O", axis=None),
                y=alt.Y("row:O", axis=None),
                fill=alt.Fill("value:Q", title="mean |ΔW|", scale=alt.Scale(scheme="viridis")),
                tooltip=list(maps.columns),
            ).properties(width=144, height=144).facet(  # whole pixels per block for 48, 24, 16... bins
                row=alt.Row("param:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left")),
                column=alt.Column("config:N", title=None, sort=configs),
                title=alt.Title("|ΔW| at each configuration's last checkpoint",
                                subtitle="mean |ΔW| per block; rows: output dimension, columns: input "
                                         "dimension; averaged over edit sequences"),
            ))
        blocks.append(alt.vconcat(*charts, title=_setting_title(setting)))
    # each setting's maps get their own colour range: batch edits move weights far more
    return alt.vconcat(*blocks).resolve_scale(fill="independent").configure_legend(orient="right")


def _weight_numbers(weights: pd.DataFrame) -> str:
    stats, _ = _stat_columns(weights)
    index = ["setting", "config", "param", "edits"]
    table = weights.groupby(index, sort=True)[stats].mean().reset_index()
    return table.to_html(index=False, na_rep="–", float_format=lambda v: f"{v:.4g}", border=0,
                         classes="numbers weights")


def _embed(div: str, chart: alt.TopLevelMixin) -> str:
    """A second chart for the page: its own div and vegaEmbed call, using the bundle inlined once."""
    # heatmaps hold thousands of rows each; their size is bounded by the bins they were made with
    with alt.data_transformers.disable_max_rows():
        spec = json.dumps(chart.to_dict(), sort_keys=True).replace("</", "<\\/")  # never closes the <script>
    options = json.dumps({**EMBED_OPTIONS, "mode": "vega-lite"}, sort_keys=True)
    return (f'<div class="vega-visualization" id="{div}"></div>\n<script type="text/javascript">\n'
            f"  const {div}Spec = {spec};\n  vegaEmbed('#{div}', {div}Spec, {options}).catch(console.error);\n"
            "</script>")


def _weight_section(weights: pd.DataFrame, heat: pd.DataFrame, configs: list[str]) -> str:
    curves, measures = _weight_curves(weights)
    return "\n".join([
        "<h2>Weight change</h2>",
        "<p>How far the edits move the edited matrices from the original weights W: the Manhattan "
        "distance Σ|ΔW| and the share of entries whose relative change |ΔW|/|W| exceeds each threshold "
        "(RECT's measure; an entry with W = 0 counts as changed when ΔW ≠ 0).</p>",
        _embed(WEIGHT_DIV, _weight_chart(curves, measures, _last_heatmaps(heat), configs)),
        "<h3>Numbers</h3>",
        "<p>Per edited matrix, averaged as the curves are; rank: numerical rank of ΔW; sigma_max: its "
        "largest singular value; relative_frobenius: ‖ΔW‖/‖W‖.</p>",
        _weight_numbers(weights),
    ])


def _header(table: pd.DataFrame, context: dict[str, Any], demo: bool) -> str:
    e = html.escape
    counts = []
    for setting in _in_setting_order(table["setting"]):
        edits = sorted(int(n) for n in table.loc[table["setting"] == setting, "edits"].unique())
        counts.append(f"{setting}: up to {edits[-1]} (evaluated after {', '.join(map(str, edits))} edits)")
    title = context.get("title", f"Model editing vs general abilities: {context['model']}")
    parts = [f"<h1>{e(title)}</h1>"]
    if demo:
        parts.append('<p class="demo">Demo data: these numbers come from the small bundled demo data sets '
                     "and show that the pipeline works; they are not research results.</p>")
    facts = [
        ("Model", context["model"]),
        ("Model source", context["model_source"]),
        ("Edit dataset", context["edit_dataset"]),
        ("Number of edits", "; ".join(counts)),
        ("Settings", ", ".join(_in_setting_order(table["setting"]))),
        ("Configs (method + regularizer)", ", ".join(sorted(table["config"].unique()))),
        ("Edit sequences (seeds)", f"{table['seq'].nunique()} (seq {', '.join(str(s) for s in sorted(table['seq'].unique()))})"),
    ]
    if context.get("note"):
        facts.append(("Note", context["note"]))
    parts.append("<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>")
    parts.append("<h2>Datasets</h2><table><tr><th>dataset</th><th>source</th><th>licence</th><th>attribution</th><th>data</th></tr>")
    for ds in context["datasets"]:
        label = "demo data" if ds["demo"] else "real data"
        parts.append(f"<tr><td>{e(ds['name'])}</td><td>{e(ds['source'])}</td>"
                     f"<td>{e(ds['licence'])}</td><td>{e(ds['attribution'])}</td><td>{label}</td></tr>")
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


def build_report(
    table: Path, out_html: Path, *, context: dict[str, Any], weights: Path | None = None,
    heatmaps: Path | None = None,
) -> None:
    """Write a self-contained HTML report of the aggregated metrics table (parquet or CSV).

    `weights` (statistics per checkpoint and edited matrix: WEIGHT_KEYS plus editharm.results.weight_change'
    columns) and `heatmaps` (HEATMAP_COLUMNS) add the weight-change section; give both or neither.
    """
    _check_context(context)
    if (weights is None) != (heatmaps is None):
        raise ValueError("weights and heatmaps: give both files or neither")
    full = _read_table(Path(table))
    model = _select_model(full, context)
    data = with_shared_base(_with_edits(full[full["model"] == model]))
    mean, tasks, editing = _curves(data)
    configs = sorted(data["config"].unique())
    section = ""
    if weights is not None:
        stats = _read_weight_file(weights, WEIGHT_KEYS + ["manhattan"], model)
        heat = _read_weight_file(heatmaps, HEATMAP_COLUMNS, model)
        configs = sorted(set(configs) | set(stats["config"]) | set(heat["config"]))
        section = _weight_section(stats, heat, configs)
    demo = bool(data["demo"].any()) or any(ds["demo"] for ds in context["datasets"])
    page = _chart(mean, tasks, editing, configs).to_html(inline=True, output_div=CHART_DIV,
                                                         embed_options=EMBED_OPTIONS)
    title = html.escape(context.get("title", f"editharm report: {context['model']}"))
    page = _inject(page, HEAD_MARKER, HEAD_MARKER + "\n  " + PAGE_STYLE.format(title=title, weights=WEIGHT_DIV))
    page = _inject(page, DIV_MARKER, "\n".join([
        _header(data, context, demo), DIV_MARKER, "<h2>Numbers</h2>",
        "<p>Values averaged over edit sequences (in instance_single also over the records, each edited "
        "alone); general tasks show their primary metric.</p>",
        _numbers(mean, tasks, editing),
        section,
    ]))
    atomic_write(Path(out_html), lambda p: p.write_text(page, encoding="utf-8"))
    log.info("wrote report %s", out_html)
