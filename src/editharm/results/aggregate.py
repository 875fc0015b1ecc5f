"""Metric files aggregated into one tidy table plus a DVC summary (reports/metrics)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from editharm.core.fileio import atomic_write, write_json
from editharm.results.records import (
    BASE_METHOD,
    EDITING_METRICS,
    LMEVAL_PREFIX,
    MetricFileError,
    MetricRecord,
    read_metric_records,
)

log = logging.getLogger(__name__)

RUN_KEYS = ["model", "method", "reg", "config", "setting", "seq"]
GROUP_KEYS = [*RUN_KEYS, "step", "edits"]
SORT_KEYS = ["model", "setting", "config", "seq", "step", "kind", "task", "metric"]
TABLE_COLUMNS = [
    "model", "method", "reg", "config", "setting", "seq", "step", "edits", "task", "metric", "value",
    "primary", "kind", "n", "scoring", "demo",
]


def _rows(record: MetricRecord) -> list[dict[str, Any]]:
    primary = record.primary_metric
    return [
        {
            "model": record.model, "method": record.method, "reg": record.reg,
            "config": record.config, "setting": record.setting, "seq": record.seq,
            "step": record.step, "edits": record.step if record.edits is None else record.edits,
            "task": record.task, "metric": name, "value": value,
            "primary": name == primary, "kind": record.kind, "n": record.n,
            "scoring": record.scoring, "demo": record.demo,
        }
        for name, value in sorted(record.metrics.items())
    ]


def build_table(metric_files: list[Path]) -> pd.DataFrame:
    """Read and validate metric files into the tidy table, sorted so input order never matters."""
    if not metric_files:
        raise ValueError("no metric files given")
    seen: dict[tuple, Path] = {}
    rows: list[dict[str, Any]] = []
    for path in map(Path, metric_files):
        for record in read_metric_records(path):
            key = (record.model, record.method, record.reg, record.setting, record.seq, record.step, record.task)
            if key in seen:
                raise MetricFileError(f"{path}: same (model, method, reg, setting, seq, step, task) as {seen[key]}")
            seen[key] = path
            rows.extend(_rows(record))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    table = table.astype({"seq": "int64", "step": "int64", "edits": "int64", "n": "int64", "value": "float64",
                          "primary": "bool", "demo": "bool"})
    return table.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)


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
    copies = base.drop(columns=RUN_KEYS[1:]).merge(need, on="model")[TABLE_COLUMNS]
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


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """The DVC metrics summary: per model the unedited (step 0) mean general ability, and per
    setting and edited config the values at the last step, averaged over sequences."""
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
        edited = runs[runs["method"] != BASE_METHOD]
        for (setting, config), run in edited.groupby(["setting", "config"], sort=True):
            last = int(run["step"].max())
            final: dict[str, Any] = {"step": last}
            g = general[(general["model"] == model) & (general["setting"] == setting)
                        & (general["config"] == config) & (general["step"] == last)]
            if len(g):
                final["mean_general"] = float(g["mean_general"].mean())
                final["n_tasks"] = int(g["n_tasks"].max())
            e = editing[(editing["model"] == model) & (editing["setting"] == setting)
                        & (editing["config"] == config) & (editing["step"] == last)]
            for metric, value in zip(e["metric"], e["value"]):
                if metric in EDITING_METRICS:
                    final[metric] = float(value)
            entry["settings"].setdefault(setting, {})[config] = final
        summary[model] = entry
    return summary


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


def aggregate(metric_files: list[Path], out_dir: Path) -> pd.DataFrame:
    """Write `metrics.parquet`, `metrics.csv` and `summary.json` to `out_dir`; return the table."""
    out_dir = Path(out_dir)
    table = build_table(metric_files)
    atomic_write(out_dir / "metrics.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(out_dir / "metrics.csv", lambda p: table.to_csv(p, index=False, lineterminator="\n"))
    write_json(out_dir / "summary.json", summarize(table))
    log.info("aggregated %d metric files into %d rows in %s", len(metric_files), len(table), out_dir)
    return table
