"""The results rules' jobs: weight-change tables of a configuration, the aggregate tables, the report."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from editharm.core.fileio import write_parquet
from editharm.model.loading import load_model
from editharm.results.aggregate import aggregate as _aggregate
from editharm.results.aggregate import concat_tables
from editharm.results.report import build_report as _build_report
from editharm.results.weight_change import configuration_tables

log = logging.getLogger("editharm")


def weight_change(model: Path, deltas: list[Path], thresholds: list[float], bins: int, labels: dict[str, Any],
                  out_stats: Path, out_heatmap: Path) -> None:
    lm, _ = load_model(model, "cpu", "float32")
    stats, heat = configuration_tables(lm, deltas, labels, thresholds, bins=bins)
    write_parquet(out_stats, stats)
    write_parquet(out_heatmap, heat)
    log.info("weight-change statistics of %d matrices over %d checkpoints", stats["param"].nunique(), len(deltas))


def aggregate(metrics: list[Path], out_dir: Path, weights: list[Path], heatmaps: list[Path], level: float) -> None:
    table = _aggregate(metrics, out_dir, level)
    log.info("aggregated %d metric files into %d rows", len(metrics), len(table))
    for name, paths in (("weights", weights), ("heatmaps", heatmaps)):
        if paths:
            rows = concat_tables(paths, out_dir / f"{name}.parquet")
            log.info("aggregated %d %s files into %d rows", len(paths), name, rows)


def build_report(points: Path, context: dict[str, Any], out: Path, weights: Optional[Path],
                 heatmaps: Optional[Path], level: float) -> None:
    _build_report(points, out, context=context, weights=weights, heatmaps=heatmaps, level=level)
    log.info("report written to %s", out)
