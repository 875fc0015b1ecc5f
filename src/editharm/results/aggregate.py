"""Metric files aggregated into one tidy table, the plotted points with their intervals, and a DVC
summary (reports/metrics).

Intervals: every metric record that carries bootstrap replicates (editharm.results.uncertainty) gets a
percentile interval (`lo`, `hi`); a checkpoint scored on the same items as the unedited model also gets
the paired difference to it (`delta`, `delta_lo`, `delta_hi`) and `significant` where that interval
excludes 0. The points table pools sequences (replicate by replicate) and adds the mean over the
general tasks ("mean_general"), whose replicates are the replicate-wise means over tasks.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from editharm.core.fileio import atomic_write, write_json
from editharm.results.records import (
    BASE_METHOD,
    EDITING_METRICS,
    EDITING_TASK,
    PERPLEXITY_TASK,
    LMEVAL_PREFIX,
    MetricFileError,
    MetricRecord,
    read_metric_records,
)
from editharm.results.uncertainty import DEFAULT_LEVEL, as_array, excludes_zero, interval

log = logging.getLogger(__name__)

RUN_KEYS = ["model", "method", "reg", "config", "setting", "seq"]
GROUP_KEYS = [*RUN_KEYS, "step", "edits"]
SORT_KEYS = ["model", "setting", "config", "seq", "step", "kind", "task", "metric"]
TABLE_COLUMNS = [
    "model", "method", "reg", "config", "setting", "seq", "step", "edits", "task", "metric", "value",
    "primary", "kind", "n", "scoring", "demo",
]
INTERVAL_COLUMNS = ["lo", "hi", "delta", "delta_lo", "delta_hi", "significant"]
MEAN_GENERAL = "mean_general"  # the points table's pseudo-task: the mean over general tasks
POINT_KEYS = ["model", "method", "reg", "config", "setting", "step", "edits", "task", "metric"]
POINT_COLUMNS = [*POINT_KEYS, "value", *INTERVAL_COLUMNS, "primary", "kind", "scoring", "demo", "n", "n_seqs",
                 "higher_is_better"]
LOWER_IS_BETTER = frozenset({"perplexity", "nll"})
# Row columns that index the replicate arrays (kept out of the written tables).
_REP, _DELTA = "rep_index", "delta_index"


def _rows(record: MetricRecord, reps: list[np.ndarray], base: MetricRecord | None) -> list[dict[str, Any]]:
    """The record's rows; each metric's replicates (and its paired difference to `base`, the unedited
    model's record of the same task on the same items) are appended to `reps` and indexed by the row."""
    primary = record.primary_metric
    boot = record.bootstrap or {"replicates": {}}
    paired = base is not None and base.bootstrap is not None and all(
        base.bootstrap[k] == boot.get(k) for k in ("resamples", "seed", "key", "items"))
    rows = []
    for name, value in sorted(record.metrics.items()):
        rep = delta = -1
        if name in boot["replicates"]:
            reps.append(as_array(boot["replicates"][name]))
            rep = len(reps) - 1
            if paired and name in base.bootstrap["replicates"]:
                reps.append(reps[rep] - as_array(base.bootstrap["replicates"][name]))
                delta = len(reps) - 1
        rows.append({
            "model": record.model, "method": record.method, "reg": record.reg,
            "config": record.config, "setting": record.setting, "seq": record.seq,
            "step": record.step, "edits": record.step if record.edits is None else record.edits,
            "task": record.task, "metric": name, "value": value,
            "primary": name == primary, "kind": record.kind, "n": record.n,
            "scoring": record.scoring, "demo": record.demo,
            "base_value": base.metrics.get(name, np.nan) if base is not None else np.nan,
            _REP: rep, _DELTA: delta,
        })
    return rows


def collect(metric_files: list[Path]) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The tidy table with replicate indices (`rep_index`, `delta_index`, `base_value`) and the replicates."""
    if not metric_files:
        raise ValueError("no metric files given")
    seen: dict[tuple, Path] = {}
    records: list[MetricRecord] = []
    for path in map(Path, metric_files):
        for record in read_metric_records(path):
            key = (record.model, record.method, record.reg, record.setting, record.seq, record.step, record.task)
            if key in seen:
                raise MetricFileError(f"{path}: same (model, method, reg, setting, seq, step, task) as {seen[key]}")
            seen[key] = path
            records.append(record)
    # Sorted first, so the replicate indices (and everything after) never depend on input order.
    records.sort(key=lambda r: (r.model, r.setting, r.config, r.seq, r.step, r.task))
    bases = {(r.model, r.task): r for r in records if r.method == BASE_METHOD}
    reps: list[np.ndarray] = []
    # The unedited model is paired with itself: its differences are exactly 0.
    rows = [row for r in records for row in _rows(r, reps, bases.get((r.model, r.task)))]
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "base_value", _REP, _DELTA])
    table = table.astype({"seq": "int64", "step": "int64", "edits": "int64", "n": "int64", "value": "float64",
                          "primary": "bool", "demo": "bool", "base_value": "float64", _REP: "int64",
                          _DELTA: "int64"})
    return table.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True), reps


def with_intervals(table: pd.DataFrame, reps: list[np.ndarray], level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """INTERVAL_COLUMNS from the rows' replicate indices; NaN (and not significant) where there are none."""
    out = table.copy()
    los, his, deltas, dlos, dhis, sig = [], [], [], [], [], []
    for row in out.itertuples(index=False):
        lo, hi = interval(reps[row.rep_index], level) if row.rep_index >= 0 else (np.nan, np.nan)
        if row.delta_index >= 0:
            delta = row.value - row.base_value
            dlo, dhi = interval(reps[row.delta_index], level)
        else:
            delta, dlo, dhi = np.nan, np.nan, np.nan
        los.append(lo), his.append(hi), deltas.append(delta), dlos.append(dlo), dhis.append(dhi)
        sig.append(excludes_zero(dlo, dhi))
    out["lo"], out["hi"], out["delta"], out["delta_lo"], out["delta_hi"] = los, his, deltas, dlos, dhis
    out["significant"] = pd.Series(sig, index=out.index, dtype="bool")
    return out


def build_table(metric_files: list[Path], level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Read and validate metric files into the tidy table with intervals, sorted so input order never matters."""
    table, reps = collect(metric_files)
    return with_intervals(table, reps, level)[[*TABLE_COLUMNS, *INTERVAL_COLUMNS]]


def points(table: pd.DataFrame, reps: list[np.ndarray], level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """What the report plots: per (config, setting, step, task, metric) the mean over sequences with its
    interval and paired difference (replicate-wise means over sequences), plus MEAN_GENERAL per step:
    the mean over the general tasks' primary metrics (lm-eval probes left out), replicate-wise likewise.
    `table` is `collect`'s, with the shared base rows copied in (`with_shared_base`)."""
    reps = list(reps)
    general = table[(table["kind"] == "general") & table["primary"] & ~table["task"].str.startswith(LMEVAL_PREFIX)]
    means = []
    for keys, run in general.groupby([*GROUP_KEYS, "demo"], sort=True):
        row = dict(zip([*GROUP_KEYS, "demo"], keys))
        means.append({**row, "task": MEAN_GENERAL, "metric": MEAN_GENERAL, "value": run["value"].mean(),
                      "base_value": run["base_value"].mean(), "primary": True, "kind": "general",
                      "n": int(run["n"].sum()), "scoring": _one(run["scoring"]),
                      _REP: _mean_of(reps, run[_REP]), _DELTA: _mean_of(reps, run[_DELTA])})
    full = pd.concat([table, pd.DataFrame(means, columns=table.columns)], ignore_index=True)
    full = full.astype({_REP: "int64", _DELTA: "int64", "primary": "bool", "demo": "bool"})
    out = []
    for keys, group in full.groupby(POINT_KEYS, sort=True):
        row = dict(zip(POINT_KEYS, keys))
        out.append({**row, "value": group["value"].mean(), "base_value": group["base_value"].mean(),
                    "primary": bool(group["primary"].all()), "kind": _one(group["kind"]),
                    "scoring": _one(group["scoring"]), "demo": bool(group["demo"].any()), "n": int(group["n"].max()),
                    "n_seqs": int(group["seq"].nunique()),
                    _REP: _mean_of(reps, group[_REP]), _DELTA: _mean_of(reps, group[_DELTA])})
    pts = pd.DataFrame(out)
    pts = with_intervals(pts.astype({_REP: "int64", _DELTA: "int64"}), reps, level)
    pts["higher_is_better"] = ~pts["metric"].isin(LOWER_IS_BETTER)
    return pts[POINT_COLUMNS].reset_index(drop=True)


def _one(values: pd.Series) -> str:
    """The common value of a column, or "mixed" (e.g. the scoring modes under a mean over tasks)."""
    unique = sorted(set(values))
    return unique[0] if len(unique) == 1 else "mixed"


def _mean_of(reps: list[np.ndarray], indices: pd.Series) -> int:
    """Index of the replicate-wise mean of `indices`' arrays (appended to `reps`), or -1 if any is missing."""
    idx = [int(i) for i in indices]
    if not idx or min(idx) < 0:
        return -1
    if len(idx) == 1:
        return idx[0]
    reps.append(np.mean([reps[i] for i in idx], axis=0))
    return len(reps) - 1


def with_shared_base(table: pd.DataFrame) -> pd.DataFrame:
    """Curves start at the unedited model: copy the base rows (method BASE_METHOD) in as step 0 of
    every edited run that has no step 0 of its own, and drop the base pseudo-run."""
    is_base = table["method"] == BASE_METHOD
    base, edited = table[is_base], table[~is_base]
    if edited.empty:
        return table
    runs = edited[RUN_KEYS].drop_duplicates()
    started = edited.loc[edited["step"] == 0, RUN_KEYS].drop_duplicates()
    need = runs[~runs.set_index(RUN_KEYS).index.isin(started.set_index(RUN_KEYS).index)]
    copies = base.drop(columns=RUN_KEYS[1:]).merge(need, on="model")[list(table.columns)]
    out = pd.concat([edited, copies], ignore_index=True)
    return out.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)


def general_means(table: pd.DataFrame) -> pd.DataFrame:
    """Mean general ability per run and step: the mean over tasks of each task's primary metric.
    lm-evaluation-harness probes are charted beside the tasks but kept out of this mean, so it stays
    comparable between runs with and without them."""
    rows = table[(table["kind"] == "general") & table["primary"] & ~table["task"].str.startswith(LMEVAL_PREFIX)]
    return (
        rows.groupby(GROUP_KEYS, sort=True)["value"]
        .agg(mean_general="mean", n_tasks="size")
        .reset_index()
    )


def editing_means(table: pd.DataFrame) -> pd.DataFrame:
    """Editing metrics averaged over sequences: one row per (model, config, setting, step, metric)."""
    rows = table[table["kind"] == "editing"]
    keys = ["model", "method", "reg", "config", "setting", "step", "edits", "metric"]
    return rows.groupby(keys, sort=True)["value"].mean().reset_index()


def summarize(table: pd.DataFrame, pts: pd.DataFrame | None = None) -> dict[str, Any]:
    """The DVC metrics summary: per model the unedited (step 0) mean general ability, and per
    setting and edited config the values at the last step, averaged over sequences. With the points
    table, each value also carries its interval ("<name>_lo", "<name>_hi") and mean general ability
    and held-out perplexity their paired difference to the unedited model ("<name>_delta", "_delta_lo",
    "_delta_hi", "<name>_significant")."""
    general = general_means(table)
    editing = editing_means(table)
    summary: dict[str, Any] = {}
    for model, runs in table.groupby("model", sort=True):
        # Every config's step 0 is the same unedited model: pool them per task, then average tasks.
        base_rows = runs[(runs["kind"] == "general") & runs["primary"] & (runs["step"] == 0)]
        per_task = base_rows.groupby("task", sort=True)["value"].mean()
        entry: dict[str, Any] = {"settings": {}}
        if len(per_task):
            entry["base"] = {"mean_general": float(per_task.mean()), "n_tasks": int(len(per_task))}
            entry["base"].update(_point_interval(pts, model, None, None, 0, MEAN_GENERAL, MEAN_GENERAL))
        probe = runs[(runs["task"] == PERPLEXITY_TASK) & (runs["metric"] == PERPLEXITY_TASK) & (runs["step"] == 0)]
        if len(probe):
            entry.setdefault("base", {})[PERPLEXITY_TASK] = float(probe["value"].iloc[0])
            entry["base"].update(_point_interval(pts, model, None, None, 0, PERPLEXITY_TASK, PERPLEXITY_TASK))
        edited = runs[runs["method"] != BASE_METHOD]
        for (setting, config), run in edited.groupby(["setting", "config"], sort=True):
            last = int(run["step"].max())
            final: dict[str, Any] = {"step": last}
            g = general[(general["model"] == model) & (general["setting"] == setting)
                        & (general["config"] == config) & (general["step"] == last)]
            if len(g):
                final["mean_general"] = float(g["mean_general"].mean())
                final["n_tasks"] = int(g["n_tasks"].max())
                final.update(_point_interval(pts, model, config, setting, last, MEAN_GENERAL, MEAN_GENERAL,
                                             paired=True))
            probe = run[(run["task"] == PERPLEXITY_TASK) & (run["metric"] == PERPLEXITY_TASK) & (run["step"] == last)]
            if len(probe):
                final[PERPLEXITY_TASK] = float(probe["value"].mean())
                final.update(_point_interval(pts, model, config, setting, last, PERPLEXITY_TASK, PERPLEXITY_TASK,
                                             paired=True))
            e = editing[(editing["model"] == model) & (editing["setting"] == setting)
                        & (editing["config"] == config) & (editing["step"] == last)]
            for metric, value in zip(e["metric"], e["value"]):
                if metric in EDITING_METRICS:
                    final[metric] = float(value)
                    final.update(_point_interval(pts, model, config, setting, last, EDITING_TASK, metric))
            entry["settings"].setdefault(setting, {})[config] = final
        summary[model] = entry
    return summary


def _point_interval(pts: pd.DataFrame | None, model: str, config: str | None, setting: str | None, step: int,
                    task: str, metric: str, paired: bool = False) -> dict[str, Any]:
    """`<metric>_lo`/`_hi` of a point, and with `paired` its `<metric>_delta`(`_lo`, `_hi`) and
    `<metric>_significant`. config and setting None: the unedited model (any configuration's step 0)."""
    if pts is None:
        return {}
    match = pts[(pts["model"] == model) & (pts["step"] == step) & (pts["task"] == task) & (pts["metric"] == metric)]
    if config is not None:
        match = match[(match["config"] == config) & (match["setting"] == setting)]
    if match.empty or np.isnan(match["lo"].iloc[0]):
        return {}
    row = match.iloc[0]
    out = {f"{metric}_lo": float(row["lo"]), f"{metric}_hi": float(row["hi"])}
    if paired and not np.isnan(row["delta_lo"]):
        out.update({f"{metric}_delta": float(row["delta"]), f"{metric}_delta_lo": float(row["delta_lo"]),
                    f"{metric}_delta_hi": float(row["delta_hi"]), f"{metric}_significant": bool(row["significant"])})
    return out


def concat_tables(paths: list[Path], out: Path) -> int:
    """Concatenate parquet tables of one schema (weight statistics, heatmaps) into `out`; rows written.

    Rows are sorted by every label column first, so the output does not depend on input order.
    """
    frames = [pd.read_parquet(p) for p in paths]
    columns = list(frames[0].columns)
    for path, frame in zip(paths, frames):
        if list(frame.columns) != columns:
            raise ValueError(f"{path}: columns {list(frame.columns)} differ from {paths[0]}'s {columns}")
    table = pd.concat(frames, ignore_index=True)
    if {"method", "reg"} <= set(columns) and "config" not in columns:
        table.insert(columns.index("reg") + 1, "config",
                     [m if r == "none" else f"{m}+{r}" for m, r in zip(table["method"], table["reg"])])
    keys = [c for c in ("model", "setting", "config", "seq", "step", "param", "row", "col") if c in table]
    table = table.sort_values(keys, kind="mergesort").reset_index(drop=True)
    atomic_write(Path(out), lambda p: table.to_parquet(p, index=False))
    return len(table)


def aggregate(metric_files: list[Path], out_dir: Path, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """Write `metrics.parquet`/`.csv` (every record's rows with intervals), `points.parquet`/`.csv` (what
    the report plots) and `summary.json` to `out_dir`; return the metrics table."""
    out_dir = Path(out_dir)
    collected, reps = collect(metric_files)
    table = with_intervals(collected, reps, level)[[*TABLE_COLUMNS, *INTERVAL_COLUMNS]]
    pts = points(with_shared_base(collected), reps, level)
    for name, frame in (("metrics", table), ("points", pts)):
        atomic_write(out_dir / f"{name}.parquet", lambda p, f=frame: f.to_parquet(p, index=False))
        atomic_write(out_dir / f"{name}.csv", lambda p, f=frame: f.to_csv(p, index=False, lineterminator="\n"))
    write_json(out_dir / "summary.json", summarize(table, pts))
    log.info("aggregated %d metric files into %d rows in %s", len(metric_files), len(table), out_dir)
    return table
