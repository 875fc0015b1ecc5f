"""The HTML report: a headline computed from the data, then general ability, held-out perplexity,
the editing-success/general-ability trade-off and the editing metrics vs number of edits, each with
its bootstrap interval, and optionally how far the edits moved the weights, one page.

It draws the points table of editharm.results.aggregate (one row per configuration, setting, step,
task and metric, pooled over sequences, with its interval and its paired difference to the unedited
model) and recomputes nothing. Bands are the intervals; a larger diamond marks a checkpoint whose
paired interval against the unedited model excludes 0; the dashed rule is the unedited model.

The page is altair's inline template (the vega/vega-lite/vega-embed bundle from vl-convert is
embedded once, so it renders with no network) with our header and number tables injected around
the chart; the weight-change chart is a second embed that uses the same bundle. Nothing time- or
machine-dependent goes in: the same inputs and context give the same bytes.
"""
from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

import altair as alt
import pandas as pd

from editharm.core.fileio import atomic_write
from editharm.editing.settings import KINDS
from editharm.results.aggregate import MEAN_GENERAL, POINT_COLUMNS
from editharm.results.records import (
    BASE_METHOD,
    EDITING_METRICS,
    EDITING_TASK,
    LMEVAL_PREFIX,
    PERPLEXITY_TASK,
)
from editharm.results.uncertainty import DEFAULT_LEVEL
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
WEIGHT_KEYS = ["model", "method", "reg", "config", "setting", "seq", "step", "edits", "param"]
HEATMAP_COLUMNS = ["model", "config", "setting", "seq", "step", "param", "row", "col", "value"]
# The points table's numbers; NaN (no interval) is written to CSV as an empty field.
NUMBER_COLUMNS = ["value", "lo", "hi", "delta", "delta_lo", "delta_hi"]
# What a curve's data holds (everything else stays out of the page).
CURVE_COLUMNS = ["config", "step", "edits", "x", *NUMBER_COLUMNS, "significant", "n_seqs"]
# The papers' protocol generates every answer; ranking the labels by log-likelihood is not it.
CHOICE_MARK = "choice scoring, not the paper's protocol"
# Registered method and regularizer kinds as the papers write them; other labels show as they are.
DISPLAY_NAMES = {
    "rome": "ROME", "memit": "MEMIT", "alphaedit": "AlphaEdit", "kn": "KN", "ft_l": "FT-L", "ft_m": "FT-M",
    "mend": "MEND", "r_rome": "r-ROME", "emmet": "EMMET", "rect": "RECT", "random": "Random", "pca": "PCA",
    "prune": "PRUNE",
    "nullspace": "null-space projection",
}
# Headline measures of harm: (task, metric, words, unit of the change).
HARM_MEASURES = [(PERPLEXITY_TASK, "perplexity", "held-out perplexity", "%"),
                 (MEAN_GENERAL, MEAN_GENERAL, "mean general ability", "points")]
REFERENCE = "unedited model"
SIG_SHAPE = "diamond"
# Markers in altair's inline template, where the header and the table go; checked to occur once.
HEAD_MARKER = '<meta charset="UTF-8">'
DIV_MARKER = f'<div class="vega-visualization" id="{CHART_DIV}"></div>'
EMBED_OPTIONS = {"actions": False, "renderer": "svg"}  # no editor links; SVG stays sharp when printed
PAGE_STYLE = """<title>{title}</title>
  <style>
    body {{ font-family: sans-serif; margin: 1.5em 2em; color: #222; }}
    .demo {{ background: #fff3cd; border: 1px solid #e0b100; padding: 0.5em 1em; font-weight: bold; }}
    ul.headline {{ font-size: 1.05em; line-height: 1.5; }}
    table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
    th, td {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
    th small {{ font-weight: normal; }}
    table.numbers td {{ text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }}
    table.numbers td:nth-child(-n+2), table.weights td:nth-child(3) {{ text-align: left; }}
    table.points td:nth-child(-n+3) {{ text-align: left; }}
    td .delta {{ color: #555; }}
    td .sig {{ color: #000; font-weight: bold; }}
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
    if path.suffix != ".csv":
        return pd.read_parquet(path)
    # names such as reg "none" must stay strings; only a number column's empty field is missing
    return pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in NUMBER_COLUMNS})


def _read_points(path: Path) -> pd.DataFrame:
    points = _read_table(Path(path))
    missing = [c for c in POINT_COLUMNS if c not in points]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a points table (editharm aggregate) holds "
                         f"{POINT_COLUMNS}")
    return points


def _select_model(table: pd.DataFrame, context: dict[str, Any]) -> str:
    """One report per model: the table's only model, or the one `context["model"]` names."""
    models = sorted(table["model"].unique())
    if len(models) == 1:
        return models[0]
    name = context["model"]
    if name not in models:
        raise ValueError(f"table holds models {models}; context['model'] ({name!r}) names none of them")
    return name


def _edited(points: pd.DataFrame) -> pd.DataFrame:
    """The edited configurations' points (each starts at the unedited model, its step 0); the unedited
    model alone when nothing was edited."""
    edited = points[points["method"] != BASE_METHOD]
    return edited if len(edited) else points


def _metric_order(names) -> list[str]:
    """aggregate's EDITING_METRICS order, then any other editing metric by name."""
    known = {m: i for i, m in enumerate(EDITING_METRICS)}
    return sorted(set(names), key=lambda m: (known.get(m, len(known)), m))


def _in_setting_order(settings) -> list[str]:
    """Settings in editharm.editing.settings' order (single before sequential, instance before batch)."""
    known = {k: i for i, k in enumerate(KINDS)}
    return sorted(set(settings), key=lambda s: (known.get(s, len(known)), s))


def _x_field(rows: pd.DataFrame) -> str:
    """What a setting's curves run along: the number of edits, or the step where several steps of a
    configuration hold the same number of edits (instance_single: step s is record s edited alone)."""
    checkpoints = rows[["config", "step", "edits"]].drop_duplicates()
    return "step" if checkpoints.duplicated(["config", "edits"]).any() else "edits"


def _with_x(points: pd.DataFrame) -> pd.DataFrame:
    """`x`: the value a point is drawn at, per setting as `_x_field` says."""
    fields = {s: _x_field(points[points["setting"] == s]) for s in points["setting"].unique()}
    x = [step if fields[s] == "step" else edits for s, step, edits in zip(points["setting"], points["step"], points["edits"])]
    return points.assign(x=pd.Series(x, index=points.index, dtype="int64"))


def _display(config: str) -> str:
    return " + ".join(DISPLAY_NAMES.get(part, part) for part in config.split("+"))


def _percent(level: float) -> str:
    return f"{level * 100:g}%"


def _finite(*values: float) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _signed(value: float, digits: int) -> str:
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text.replace("-", "−")


def _num(value: float) -> str:
    """Three decimals for scores, fewer for larger numbers such as perplexity."""
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 3
    return f"{value:.{digits}f}".replace("-", "−")


def _dnum(value: float) -> str:
    digits = 1 if abs(value) >= 100 else 2 if abs(value) >= 10 else 3
    return _signed(value, digits)


def _heading(task: str, metric: str) -> str:
    if task == MEAN_GENERAL:
        return "mean general ability"
    return "held-out perplexity" if (task, metric) == (PERPLEXITY_TASK, "perplexity") else f"{task}: {metric}"


def _choice_tasks(rows: pd.DataFrame) -> list[str]:
    """The choice-scored tasks among those mean general ability averages."""
    general = rows[(rows["kind"] == "general") & rows["primary"] & (rows["task"] != MEAN_GENERAL)
                   & ~rows["task"].str.startswith(LMEVAL_PREFIX)]
    return sorted(general.loc[general["scoring"] == "choice", "task"].unique())


def _scoring_note(scoring: str, choice_tasks: Sequence[str] = ()) -> str:
    """How a result was scored, with CHOICE_MARK wherever choice scoring went into it."""
    if scoring == "choice":
        return CHOICE_MARK
    if choice_tasks:
        return f"{scoring} scoring; {', '.join(choice_tasks)}: {CHOICE_MARK}"
    return f"{scoring.replace('_', '-')} scoring"


# ------------------------------------------------------------------ headline


def _where(row: pd.Series, x_field: str, lead: str) -> str:
    """"after 8 edits", "at 1 edit", "up to 8 edits"; where steps are records edited alone, "at step 3"."""
    if x_field == "step":
        return f"{'up to' if lead == 'up to' else 'at'} step {int(row['step'])}"
    edits = int(row["edits"])
    return f"{lead} {edits} edit{'' if edits == 1 else 's'}"


def _significance(rows: pd.DataFrame, x_field: str) -> str:
    """When the measure first moved significantly in the harmful direction, or that it never did."""
    later = rows[rows["step"] > 0]
    higher = bool(rows["higher_is_better"].iloc[0])
    harmful = later[later["significant"] & ((later["delta_hi"] < 0) if higher else (later["delta_lo"] > 0))]
    word = "drop" if higher else "rise"
    if len(harmful):
        return f"first significant {word} {_where(harmful.iloc[0], x_field, 'at')}"
    up_to = _where(rows.iloc[-1], x_field, "up to")
    # a significant improvement is not "no change"
    return f"no significant {word if later['significant'].any() else 'change'} at any step ({up_to})"


def _change_clause(run: pd.DataFrame, task: str, metric: str, words: str, unit: str, pct: str, x_field: str,
                   at: str) -> str | None:
    rows = run[(run["task"] == task) & (run["metric"] == metric)].sort_values("step")
    if rows.empty:
        return None
    last = rows.iloc[-1]
    start = rows[rows["step"] == 0]
    if _finite(last["delta"]):
        change, lo, hi, base = last["delta"], last["delta_lo"], last["delta_hi"], last["value"] - last["delta"]
    elif len(start):
        base = start["value"].iloc[0]
        change, lo, hi = last["value"] - base, math.nan, math.nan
    else:
        return f"{words} {_num(last['value'])}{at} (no unedited model to compare with)"
    scale = 100 / base if unit == "%" else 100
    suffix = "%" if unit == "%" else ""
    clause = f"{words} {_signed(change * scale, 1)}{suffix}{'' if unit == '%' else ' points'}{at}"
    if not _finite(lo, hi):
        return f"{clause} (no interval: no bootstrap replicates)"
    return (f"{clause} ({pct} CI {_signed(lo * scale, 1)}{suffix} to {_signed(hi * scale, 1)}{suffix}), "
            f"{_significance(rows, x_field)}")


def _interval(row: pd.Series, pct: str) -> str:
    return f" ({pct} CI {row['lo']:.2f}–{row['hi']:.2f})" if _finite(row["lo"], row["hi"]) else ""


def _editing_clause(run: pd.DataFrame, pct: str, at: str) -> str | None:
    editing = run[run["task"] == EDITING_TASK]
    reliability = editing[editing["metric"] == "reliability"].sort_values("step")
    if reliability.empty:
        return None
    last = reliability.iloc[-1]
    clause = f"reliability {last['value']:.2f}{at}{_interval(last, pct)}"
    retained = editing[(editing["metric"] == "reliability_all") & (editing["step"] == last["step"])]
    if len(retained):
        clause += f", reliability over all edits so far {retained['value'].iloc[0]:.2f}{_interval(retained.iloc[0], pct)}"
    return clause


def headline(points: pd.DataFrame, level: float = DEFAULT_LEVEL) -> list[str]:
    """The findings in words, from one model's points table: per edited configuration (and setting, when
    there are several), the change at its last checkpoint of held-out perplexity (when probed, in percent)
    and of mean general ability (in points: hundredths of a score), each with its paired interval and the
    first checkpoint where it moved significantly in the harmful direction; then reliability there and
    over all edits so far. Last, whether mean general ability includes choice-scored tasks."""
    pct = _percent(level)
    edited = points[points["method"] != BASE_METHOD]
    settings = _in_setting_order(edited["setting"])
    sentences = []
    for setting in settings:
        in_setting = edited[edited["setting"] == setting]
        x_field = _x_field(in_setting)
        for config in sorted(in_setting["config"].unique()):
            run = in_setting[in_setting["config"] == config]
            at = " " + _where(run.loc[run["step"].idxmax()], x_field, "after")
            clauses: list[str] = []
            for task, metric, words, unit in HARM_MEASURES:
                clause = _change_clause(run, task, metric, words, unit, pct, x_field, "" if clauses else at)
                if clause:
                    clauses.append(clause)
            editing = _editing_clause(run, pct, "" if clauses else at)
            if editing:
                clauses.append(editing)
            if clauses:
                name = _display(config) + (f" ({setting})" if len(settings) > 1 else "")
                sentences.append(f"{name}: {'; '.join(clauses)}.")
    choice = _choice_tasks(edited)
    if choice and (edited["task"] == MEAN_GENERAL).any():
        sentences.append(f"Mean general ability includes choice-scored tasks ({', '.join(choice)}): {CHOICE_MARK}.")
    return sentences


# ------------------------------------------------------------------ charts


def _edits_axis(data: pd.DataFrame) -> alt.X:
    # symlog spreads the usual 0, 1, 2, 5, 10, 20... evaluation points evenly and still shows 0
    return alt.X("edits:Q", title="number of edits", scale=alt.Scale(type="symlog"),
                 axis=alt.Axis(values=sorted(int(e) for e in data["edits"].unique())))


def _x_axis(data: pd.DataFrame, x_field: str) -> alt.X:
    title = "number of edits" if x_field == "edits" else "step (record s edited alone into the unedited model)"
    return alt.X("x:Q", title=title, scale=alt.Scale(type="symlog"),
                 axis=alt.Axis(values=sorted(int(v) for v in data["x"].unique())))


def _x_words(x_field: str) -> str:
    return "vs number of edits" if x_field == "edits" else "per record edited alone"


def _config_color(configs: list[str]) -> alt.Color:
    # a fixed domain gives each config the same colour in every chart of the page
    # the legend shows the lines' colour, not the pale bands'
    return alt.Color("config:N", title="method + regularizer", scale=alt.Scale(domain=configs),
                     legend=alt.Legend(symbolOpacity=1))


def _line(data: pd.DataFrame, y: str, y_title: str | None, configs: list[str]) -> alt.Chart:
    return alt.Chart(data).mark_line(point=True).encode(
        x=_edits_axis(data),
        y=alt.Y(f"{y}:Q", title=y_title),
        color=_config_color(configs),
        tooltip=list(data.columns),
    )


def _y(field: str, title: str, aggregate: str | None = None) -> alt.Y:
    # fitted to the data and its bands, so a 0.25-0.26 curve is not a flat line on a 0-1 axis
    return alt.Y(f"{field}:Q", title=title, aggregate=aggregate or alt.Undefined,
                 scale=alt.Scale(zero=False, nice=True))


def _tooltip(field: str) -> list[alt.Tooltip]:
    lo, hi = ("lo", "hi") if field == "value" else ("delta_lo", "delta_hi")
    return [alt.Tooltip("config:N"), alt.Tooltip("edits:Q"), alt.Tooltip("step:Q"),
            *[alt.Tooltip(f"{c}:Q", format=".4f") for c in (field, lo, hi)],
            alt.Tooltip("significant:N", title="significant vs unedited"), alt.Tooltip("n_seqs:Q", title="sequences")]


def _significant_layer(chart: alt.Chart, y: alt.Y, sig_label: str, tooltip: list) -> alt.Chart:
    """A larger outlined diamond over every checkpoint whose paired interval excludes 0, with a legend entry."""
    return chart.transform_filter("datum.significant").transform_calculate(marker=json.dumps(sig_label)).mark_point(
        filled=True, size=120, stroke="black", strokeWidth=0.8, opacity=1,
    ).encode(y=y, tooltip=tooltip,
             shape=alt.Shape("marker:N", title=None, scale=alt.Scale(domain=[sig_label], range=[SIG_SHAPE])))


def _reference_layer(data: pd.DataFrame, field: str, title: str) -> alt.Chart:
    """The unedited model's level (step 0: the paired difference there is 0) as a dashed rule."""
    return alt.Chart(data).transform_filter("datum.step == 0").transform_calculate(
        reference=json.dumps(REFERENCE)).mark_rule(color="#444", strokeWidth=1.2).encode(
        y=_y(field, title, "mean"),
        strokeDash=alt.StrokeDash("reference:N", title=None,
                                  scale=alt.Scale(domain=[REFERENCE], range=[[6, 4]])),
        tooltip=[alt.Tooltip(f"mean({field}):Q", title=REFERENCE, format=".4f")],
    )


def _curve(data: pd.DataFrame, field: str, y_title: str, x_field: str, configs: list[str],
           sig_label: str) -> alt.LayerChart:
    """`field` ("value" or "delta") per configuration with its interval as a band, the unedited level as
    a dashed rule, and significant checkpoints marked."""
    data = data[CURVE_COLUMNS].sort_values(["config", "step"], kind="mergesort").reset_index(drop=True)
    lo, hi = ("lo", "hi") if field == "value" else ("delta_lo", "delta_hi")
    base = alt.Chart(data).encode(x=_x_axis(data, x_field), color=_config_color(configs))
    y, tooltip = _y(field, y_title), _tooltip(field)
    layers = [
        base.mark_area(opacity=0.18).encode(y=_y(lo, y_title), y2=f"{hi}:Q"),
        base.mark_line(strokeWidth=1.8).encode(y=y),
        base.mark_point(filled=True, size=24, opacity=1).encode(y=y, tooltip=tooltip),
    ]
    if (data["step"] == 0).any() and data.loc[data["step"] == 0, field].notna().any():
        layers.insert(1, _reference_layer(data, field, y_title))
    if data["significant"].any():
        layers.append(_significant_layer(base, y, sig_label, tooltip))
    return alt.layer(*layers)


def _title(text: str, *subtitle: str, size: int = 13) -> alt.Title:
    return alt.Title(text, subtitle=[s for s in subtitle if s], anchor="start", fontSize=size)


def _tradeoff(rows: pd.DataFrame, x_field: str, configs: list[str], sig_label: str, scoring: str,
              pct: str) -> alt.LayerChart | None:
    """Editing success against retained general ability, one point per configuration and checkpoint."""
    reliability = rows[(rows["task"] == EDITING_TASK) & (rows["metric"] == "reliability")]
    general = rows[rows["task"] == MEAN_GENERAL]
    data = reliability[["config", "step", "edits", "x", "value", "lo", "hi"]].rename(
        columns={"value": "reliability", "lo": "reliability_lo", "hi": "reliability_hi"}).merge(
        general[["config", "step", "value", "lo", "hi", "delta", "significant"]].rename(
            columns={"value": "general", "lo": "general_lo", "hi": "general_hi"}), on=["config", "step"])
    if data.empty:
        return None
    data = data.sort_values(["config", "step"], kind="mergesort").reset_index(drop=True)
    x_title, y_title = "editing success: reliability", "retained general ability: mean general ability"
    x = alt.X("reliability:Q", title=x_title, scale=alt.Scale(zero=False, nice=True))
    y = _y("general", y_title)
    tooltip = [alt.Tooltip("config:N"), alt.Tooltip("edits:Q"), alt.Tooltip("step:Q"),
               *[alt.Tooltip(f"{c}:Q", format=".4f") for c in ("reliability", "reliability_lo", "reliability_hi",
                                                                "general", "general_lo", "general_hi", "delta")],
               alt.Tooltip("significant:N", title="general: significant vs unedited")]
    base = alt.Chart(data).encode(x=x, y=y, color=_config_color(configs))
    layers = [
        base.mark_line(strokeWidth=1.2, opacity=0.6).encode(order="step:Q"),
        base.mark_rule(strokeWidth=1).encode(x=alt.X("reliability_lo:Q", title=x_title), x2="reliability_hi:Q"),
        base.mark_rule(strokeWidth=1).encode(y=_y("general_lo", y_title), y2="general_hi:Q"),
        base.mark_point(filled=True, size=36, opacity=1).encode(tooltip=tooltip),
        base.mark_text(align="left", dx=6, dy=-7, fontSize=10).encode(text="x:Q"),
    ]
    if data["significant"].any():
        layers.append(_significant_layer(base, y, sig_label, tooltip))
    unedited = general[general["step"] == 0]
    if len(unedited):
        layers.insert(0, _reference_layer(unedited[CURVE_COLUMNS], "value", y_title))
    label = "the number of edits" if x_field == "edits" else "the step"
    return alt.layer(*layers).properties(width=330, height=260, title=_title(
        "Trade-off: editing success vs retained general ability",
        f"one point per configuration and checkpoint, connected in order and labelled with {label}",
        f"error bars: {pct} bootstrap intervals over items; dashed: {REFERENCE}'s general ability",
        f"general ability: {scoring}"))


def _panels(rows: pd.DataFrame, key: str, order: list[str], titles: dict[str, tuple[str, ...]], x_field: str,
            configs: list[str], sig_label: str) -> list[alt.LayerChart]:
    return [_curve(rows[rows[key] == name], "value", "score", x_field, configs, sig_label).properties(
        width=200, height=140, title=_title(*titles[name], size=12)) for name in order]


def _setting_charts(rows: pd.DataFrame, configs: list[str], pct: str) -> list:
    x_field = _x_field(rows)
    sig_label = f"significant vs unedited (paired {pct} CI excludes 0)"
    sequences = int(rows["n_seqs"].max())
    pooled = f"pooled over {sequences} edit sequence{'' if sequences == 1 else 's'}"
    bands = f"band: {pct} bootstrap interval over items"
    charts = []
    mean = rows[rows["task"] == MEAN_GENERAL]
    mean_scoring = ""
    if len(mean):
        mean_scoring = _scoring_note(mean["scoring"].iloc[0], _choice_tasks(rows))
        top = [_curve(mean, "value", "mean general ability", x_field, configs, sig_label).properties(
            width=330, height=220, title=_title(
                f"Mean general ability {_x_words(x_field)}",
                f"mean over the general tasks' primary metrics (lm-eval probes left out), {pooled}",
                f"{bands}; dashed: {REFERENCE}", mean_scoring))]
        if mean["delta"].notna().any():
            top.append(_curve(mean, "delta", "Δ mean general ability", x_field, configs, sig_label).properties(
                width=330, height=220, title=_title(
                    f"Change in mean general ability vs the {REFERENCE}",
                    "paired difference on the same items (below 0: harm)",
                    f"band: its paired {pct} bootstrap interval; dashed: no change", mean_scoring)))
        charts.append(alt.hconcat(*top))
    second = []
    tradeoff = _tradeoff(rows, x_field, configs, sig_label, mean_scoring, pct)
    if tradeoff is not None:
        second.append(tradeoff)
    probes = rows[(rows["kind"] == "probe") & rows["primary"]]
    for (task, metric), probe in probes.groupby(["task", "metric"], sort=True):
        words = _heading(task, metric)
        direction = "higher" if probe["higher_is_better"].iloc[0] else "lower"
        second.append(_curve(probe, "value", metric, x_field, configs, sig_label).properties(
            width=330, height=220, title=_title(
                f"{words[0].upper()}{words[1:]} {_x_words(x_field)} ({direction} is better)",
                f"{pooled}; {bands}; dashed: {REFERENCE}",
                _scoring_note(probe["scoring"].iloc[0]))))
    if second:
        charts.append(alt.hconcat(*second))
    tasks = rows[(rows["kind"] == "general") & rows["primary"] & (rows["task"] != MEAN_GENERAL)]
    if len(tasks):
        names = sorted(tasks["task"].unique())
        titles = {}
        for name in names:
            task = tasks[tasks["task"] == name]
            probe = " (lm-eval probe, not in the mean)" if name.startswith(LMEVAL_PREFIX) else ""
            titles[name] = (f"{name}: {task['metric'].iloc[0]}{probe}", _scoring_note(task["scoring"].iloc[0]))
        charts.append(alt.concat(*_panels(tasks, "task", names, titles, x_field, configs, sig_label), columns=4,
                                 title=_title(f"General ability per task {_x_words(x_field)}",
                                              f"each task's primary metric, {pooled}; {bands}; dashed: {REFERENCE}",
                                              size=14)))
    editing = rows[rows["kind"] == "editing"]
    if len(editing):
        order = _metric_order(editing["metric"])
        scoring = _scoring_note(editing["scoring"].iloc[0])
        titles = {m: (m, "share of base-model answer tokens unchanged" if "locality" in m else "",
                      "over every edit made so far" if m.endswith("_all") else "") for m in order}
        charts.append(alt.concat(*_panels(editing, "metric", order, titles, x_field, configs, sig_label), columns=4,
                                 title=_title(f"Editing metrics {_x_words(x_field)}",
                                              f"{pooled}; {bands}; {scoring}", size=14)))
    return charts


def _setting_title(setting: str) -> alt.Title:
    return alt.Title(f"Setting: {setting}", anchor="start", fontSize=16)


def _chart(points: pd.DataFrame, configs: list[str], level: float) -> alt.VConcatChart:
    """One block per setting: edit counts mean different things in different settings, so their
    configurations never share a line or an axis."""
    blocks = [alt.vconcat(*_setting_charts(points[points["setting"] == setting], configs, _percent(level)),
                          spacing=28, title=_setting_title(setting))
              for setting in _in_setting_order(points["setting"])]
    return alt.vconcat(*blocks, spacing=40).configure_legend(orient="right", labelLimit=360)


# ------------------------------------------------------------------ number tables


def _cell(row: pd.Series) -> str:
    """"0.512 [0.470, 0.550]" and, after the unedited model, the paired difference; significant ones bold with *."""
    text = _num(row["value"])
    if _finite(row["lo"], row["hi"]):
        text += f" [{_num(row['lo'])}, {_num(row['hi'])}]"
    if row["step"] > 0 and _finite(row["delta"]):
        delta = f"Δ {_dnum(row['delta'])}"
        if _finite(row["delta_lo"], row["delta_hi"]):
            delta += f" [{_dnum(row['delta_lo'])}, {_dnum(row['delta_hi'])}]"
        kind = "sig" if row["significant"] else "delta"
        text += f'<br><span class="{kind}">{delta}{" *" if row["significant"] else ""}</span>'
    return text


def _points_table(rows: pd.DataFrame, columns: list[tuple[str, str, str, str]], x_field: str) -> str:
    """Rows: configuration × checkpoint; columns: (task, metric, heading, note) → `_cell`."""
    e = html.escape
    keys = ["config", "step", "edits"]
    cells = {(r["task"], r["metric"], r["config"], int(r["step"])): _cell(r) for _, r in rows.iterrows()}
    heads = ["configuration", "edits", "step"] if x_field == "step" else ["configuration", "edits"]
    out = ['<table class="numbers points"><tr>' + "".join(f"<th>{h}</th>" for h in heads)]
    out += [f"<th>{e(heading)}<br><small>{e(note)}</small></th>" for _, _, heading, note in columns]
    out.append("</tr>")
    for config, step, edits in rows[keys].drop_duplicates().sort_values(["config", "step"]).itertuples(index=False):
        labels = [config, str(edits), str(step)] if x_field == "step" else [config, str(edits)]
        out.append("<tr>" + "".join(f"<td>{e(v)}</td>" for v in labels)
                   + "".join(f"<td>{cells.get((t, m, config, int(step)), '–')}</td>" for t, m, _, _ in columns)
                   + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _numbers(points: pd.DataFrame, level: float) -> str:
    pct = _percent(level)
    parts = [(f"<p>Each cell: the value pooled over edit sequences, with its {pct} bootstrap interval over items; "
              f"below it (Δ), the paired difference to the {REFERENCE} on the same items, with its {pct} paired "
              "interval. <strong>Bold with *</strong>: significant, the paired interval excludes 0. "
              "–: not evaluated.</p>")]
    for setting in _in_setting_order(points["setting"]):
        rows = points[points["setting"] == setting]
        x_field = _x_field(rows)
        general = rows[((rows["kind"] == "general") | (rows["kind"] == "probe")) & rows["primary"]]
        choice = _choice_tasks(rows)
        probes = set(general.loc[general["kind"] == "probe", "task"])
        columns = []
        for task in sorted(general["task"].unique(), key=lambda t: (
                0 if t == MEAN_GENERAL else 3 if t in probes else 2 if t.startswith(LMEVAL_PREFIX) else 1, t)):
            first = general[general["task"] == task].iloc[0]
            note = _scoring_note(first["scoring"], choice if task == MEAN_GENERAL else [])
            if not first["higher_is_better"]:
                note += "; lower is better"
            columns.append((task, first["metric"], _heading(task, first["metric"]), note))
        parts.append(f"<h3>Setting: {html.escape(setting)}</h3>")
        if columns:
            parts += ["<h4>General ability</h4>", _points_table(general, columns, x_field)]
        editing = rows[rows["kind"] == "editing"]
        if len(editing):
            note = _scoring_note(editing["scoring"].iloc[0])
            columns = [(EDITING_TASK, m, m, note) for m in _metric_order(editing["metric"])]
            parts += ["<h4>Editing metrics</h4>", _points_table(editing, columns, x_field)]
    return "\n".join(parts)


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


def _header(points: pd.DataFrame, context: dict[str, Any], demo: bool, level: float) -> str:
    e = html.escape
    counts = []
    for setting in _in_setting_order(points["setting"]):
        rows = points[points["setting"] == setting]
        if _x_field(rows) == "step":
            steps = sorted(int(s) for s in rows["step"].unique())
            counts.append(f"{setting}: one record edited alone per step (steps {', '.join(map(str, steps))})")
        else:
            edits = sorted(int(n) for n in rows["edits"].unique())
            counts.append(f"{setting}: up to {edits[-1]} (evaluated after {', '.join(map(str, edits))} edits)")
    title = context.get("title", f"Model editing vs general abilities: {context['model']}")
    parts = [f"<h1>{e(title)}</h1>"]
    if demo:
        parts.append('<p class="demo">Demo data: these numbers come from the small bundled demo data sets '
                     "and show that the pipeline works; they are not research results.</p>")
    sentences = headline(points, level)
    if sentences:
        parts.append("<h2>Headline</h2>")
        parts.append('<ul class="headline">' + "".join(f"<li>{e(s)}</li>" for s in sentences) + "</ul>")
    pct = _percent(level)
    facts = [
        ("Model", context["model"]),
        ("Model source", context["model_source"]),
        ("Edit dataset", context["edit_dataset"]),
        ("Number of edits", "; ".join(counts)),
        ("Settings", ", ".join(_in_setting_order(points["setting"]))),
        ("Configs (method + regularizer)", ", ".join(sorted(points["config"].unique()))),
        ("Edit sequences per point", f"{int(points['n_seqs'].max())} (each point pools them)"),
        ("Intervals", f"{pct} percentile bootstrap over items; changes are paired against the {REFERENCE} on "
                      "the same items, and significant where that paired interval excludes 0"),
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
    points: Path, out_html: Path, *, context: dict[str, Any], weights: Path | None = None,
    heatmaps: Path | None = None, level: float = DEFAULT_LEVEL,
) -> None:
    """Write a self-contained HTML report of the points table (editharm aggregate's points.parquet or
    .csv), whose intervals were computed at confidence `level`.

    `weights` (statistics per checkpoint and edited matrix: WEIGHT_KEYS plus editharm.results.weight_change'
    columns) and `heatmaps` (HEATMAP_COLUMNS) add the weight-change section; give both or neither.
    """
    _check_context(context)
    if (weights is None) != (heatmaps is None):
        raise ValueError("weights and heatmaps: give both files or neither")
    full = _read_points(Path(points))
    model = _select_model(full, context)
    data = _with_x(_edited(full[full["model"] == model]))
    configs = sorted(data["config"].unique())
    section = ""
    if weights is not None:
        stats = _read_weight_file(weights, WEIGHT_KEYS + ["manhattan"], model)
        heat = _read_weight_file(heatmaps, HEATMAP_COLUMNS, model)
        configs = sorted(set(configs) | set(stats["config"]) | set(heat["config"]))
        section = _weight_section(stats, heat, configs)
    demo = bool(data["demo"].any()) or any(ds["demo"] for ds in context["datasets"])
    page = _chart(data, configs, level).to_html(inline=True, output_div=CHART_DIV, embed_options=EMBED_OPTIONS)
    title = html.escape(context.get("title", f"editharm report: {context['model']}"))
    page = _inject(page, HEAD_MARKER, HEAD_MARKER + "\n  " + PAGE_STYLE.format(title=title, weights=WEIGHT_DIV))
    page = _inject(page, DIV_MARKER, "\n".join([
        _header(data, context, demo, level), DIV_MARKER, "<h2>Numbers</h2>", _numbers(data, level), section,
    ]))
    atomic_write(Path(out_html), lambda p: p.write_text(page, encoding="utf-8"))
    log.info("wrote report %s", out_html)
