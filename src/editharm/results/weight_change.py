"""How far edits move the edited matrices: per (checkpoint, matrix) change statistics and |ΔW| heatmaps.

These are the RECT paper's measures (Gu et al., 2024): the Manhattan distance Σ|ΔW| grows with the
number of edits, and the share of entries whose relative change |ΔW| / |W| exceeds a threshold
tracks how much of the matrix an edit rewrites. `weight` is always the original, unedited matrix.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import pandas as pd
import torch

from editharm.model.deltas import load_delta, relative_change
from editharm.model.modules import edited_matrix

DEFAULT_THRESHOLDS = (0.077, 0.171)
SHARE_PREFIX = "share_above_"
STAT_COLUMNS = ("manhattan", "frobenius", "max_abs", "relative_frobenius", "sigma_max", "rank", "nonzero_share")
HEAT_COLUMNS = ("row", "col", "value")
# ΔW sets are float32 (methods compute and save them so); its rounding is the noise floor for rank.
RANK_EPS = torch.finfo(torch.float32).eps


def threshold_column(t: float) -> str:
    """share_above_<t>, with t written as Python writes the float (0.077 -> share_above_0.077)."""
    return f"{SHARE_PREFIX}{float(t)!r}"


def _check_thresholds(thresholds: Iterable[float]) -> list[float]:
    out = [float(t) for t in thresholds]
    for t in out:
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"thresholds: {t!r} is not allowed; each must be a finite number >= 0")
    if len(set(out)) != len(out):
        raise ValueError(f"thresholds: {out} holds duplicates; each names its own column")
    return out


def _singular_values(d: torch.Tensor) -> torch.Tensor:
    """Singular values, largest first, as square roots of the eigenvalues of the shorter side's
    Gram matrix in float64: several times faster than an SVD on CPU, and its error (about
    √eps64 · σ_max ≈ 1e-8 · σ_max) is far below the rank tolerance."""
    x = d.double()
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def change_stats(
    weight: torch.Tensor, delta: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, float]:
    """Statistics of one matrix's ΔW against its original weight W (any layout: all are
    orientation-free).

    relative_frobenius is ‖ΔW‖_F / ‖W‖_F (+inf when W = 0 and ΔW ≠ 0, 0 when both are 0, as for
    the entrywise δ). rank counts singular values of ΔW above σ_max · max(m, n) · eps(float32),
    NumPy's matrix_rank default for float32 data, the precision ΔW is computed and stored in.
    share_above_<t> is the share of entries with δ = |ΔW| / |W| > t, δ as RECT defines it.
    """
    thresholds = _check_thresholds(thresholds)
    if delta.dim() != 2 or weight.shape != delta.shape:
        raise ValueError(f"ΔW must be a matrix shaped like its weight; got ΔW {tuple(delta.shape)}, "
                         f"W {tuple(weight.shape)}")
    # on the weight's device: the model's, where the linear algebra runs fastest
    w = weight.detach().float()
    d = delta.detach().to(w.device).float()
    n = d.numel()
    frobenius = torch.linalg.vector_norm(d, dtype=torch.float64).item()
    w_norm = torch.linalg.vector_norm(w, dtype=torch.float64).item()
    singular = _singular_values(d)
    sigma_max = singular[0].item()
    magnitude = d.abs()
    stats = {
        "manhattan": magnitude.sum(dtype=torch.float64).item(),
        "frobenius": frobenius,
        "max_abs": magnitude.max().item(),
        "relative_frobenius": frobenius / w_norm if w_norm else (math.inf if frobenius else 0.0),
        "sigma_max": sigma_max,
        "rank": float(torch.count_nonzero(singular > sigma_max * max(d.shape) * RANK_EPS).item()),
        "nonzero_share": torch.count_nonzero(d).item() / n,
    }
    delta_rel = relative_change(w, d)
    for t in thresholds:
        stats[threshold_column(t)] = torch.count_nonzero(delta_rel > t).item() / n
    return stats


def _block_ids(size: int, blocks: int, device: torch.device) -> torch.Tensor:
    return torch.arange(size, device=device) * blocks // size


def _sum_rows(a: torch.Tensor, ids: torch.Tensor, blocks: int) -> torch.Tensor:
    return torch.zeros(blocks, a.shape[1], dtype=a.dtype, device=a.device).index_add_(0, ids, a)


def heatmap(delta: torch.Tensor, transposed: bool, bins: int = 48) -> pd.DataFrame:
    """Mean |ΔW| over a grid of at most bins × bins blocks, in (out, in) orientation.

    `transposed` says ΔW is stored (in, out) (GPT-2's Conv1D). A side of length n is cut into
    min(bins, n) blocks; index i goes to block ⌊i · blocks / n⌋, so block sizes differ by at most
    one and no index is dropped or shared. Each value is the exact mean over the entries its block
    covers. Rows: row (out block), col (in block), value; row-major order.
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins={bins!r} is not allowed; must be an integer >= 1")
    if delta.dim() != 2:
        raise ValueError(f"ΔW must be a matrix; got shape {tuple(delta.shape)}")
    a = delta.detach().abs().double()
    n_out, n_in = reversed(a.shape) if transposed else a.shape
    n_rows, n_cols = min(bins, n_out), min(bins, n_in)
    rows, cols = _block_ids(n_out, n_rows, a.device), _block_ids(n_in, n_cols, a.device)
    # Stored rows first, then the stored columns as rows of the small transpose: index_add_ along
    # dim 0 reads whole contiguous rows, which is fast on large matrices.
    if transposed:  # stored (in, out)
        sums = _sum_rows(_sum_rows(a, cols, n_cols).T, rows, n_rows)
    else:
        sums = _sum_rows(_sum_rows(a, rows, n_rows).T, cols, n_cols).T
    counts = torch.outer(torch.bincount(rows, minlength=n_rows), torch.bincount(cols, minlength=n_cols))
    grid_r, grid_c = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    return pd.DataFrame({
        "row": grid_r.flatten().numpy().astype("int64"),
        "col": grid_c.flatten().numpy().astype("int64"),
        "value": (sums / counts).flatten().cpu().numpy(),
    })


def weight_tables(
    weights: Mapping[str, tuple[torch.Tensor, bool]],
    deltas_by_step: Mapping[int, Mapping[str, torch.Tensor]],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    *,
    heatmap_steps: Iterable[int] | None = None,
    bins: int = 48,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stats, heatmaps) for the ΔW sets of one edit sequence.

    `weights` maps each edited parameter to its original weight and whether it is stored (in, out);
    `deltas_by_step` maps a checkpoint's step to its ΔW set. Stats: one row per (step, param) with
    columns step, param, STAT_COLUMNS, one share_above_<t> per threshold. Heatmaps (columns step,
    param, row, col, value) for `heatmap_steps`, by default the last step. Rows sorted by step, param.
    """
    thresholds = _check_thresholds(thresholds)
    if not deltas_by_step:
        raise ValueError("deltas_by_step is empty: no checkpoint to describe")
    steps = sorted(deltas_by_step)
    heat_steps = [steps[-1]] if heatmap_steps is None else sorted(set(heatmap_steps))
    unknown = [s for s in heat_steps if s not in deltas_by_step]
    if unknown:
        raise ValueError(f"heatmap_steps: {unknown} are not checkpoints; steps held: {steps}")
    stat_rows, heat_frames = [], []
    for step in steps:
        for param in sorted(deltas_by_step[step]):
            if param not in weights:
                raise ValueError(f"step {step}: ΔW for {param!r} has no original weight; weights hold {sorted(weights)}")
            weight, transposed = weights[param]
            delta = deltas_by_step[step][param]
            stat_rows.append({"step": step, "param": param, **change_stats(weight, delta, thresholds)})
            if step in heat_steps:
                heat = heatmap(delta, transposed, bins)
                heat_frames.append(heat.assign(step=step, param=param)[["step", "param", *HEAT_COLUMNS]])
    share_columns = [threshold_column(t) for t in thresholds]
    stats = pd.DataFrame(stat_rows, columns=["step", "param", *STAT_COLUMNS, *share_columns])
    stats = stats.astype({"step": "int64", "rank": "int64"})
    heat_columns = ["step", "param", *HEAT_COLUMNS]
    heat = pd.concat(heat_frames, ignore_index=True) if heat_frames else pd.DataFrame(columns=heat_columns)
    return stats, heat.astype({"step": "int64", "row": "int64", "col": "int64", "value": "float64"})


def configuration_tables(
    model: torch.nn.Module, delta_paths: Sequence[Path], labels: Mapping[str, object],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, bins: int = 48,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`weight_tables` of one configuration's checkpoint files against the unedited `model`'s
    weights, each row labelled with `labels` (model, method, reg, setting, seq) and, in the
    statistics, the checkpoint's number of edits."""
    deltas_by_step, edits_at = {}, {}
    for path in delta_paths:
        deltas, meta = load_delta(path)
        deltas_by_step[meta["step"]] = deltas
        edits_at[meta["step"]] = meta["edits"]
    names = sorted({n for d in deltas_by_step.values() for n in d})
    weights = {}
    for name in names:
        _, weight, transposed = edited_matrix(model, name.rsplit(".", 1)[0])
        weights[name] = (weight.detach(), transposed)
    stats, heat = weight_tables(weights, deltas_by_step, tuple(thresholds), bins=bins)
    stats.insert(0, "edits", stats["step"].map(edits_at))
    for frame in (stats, heat):
        for i, (key, value) in enumerate(sorted(labels.items())):
            frame.insert(i, key, value)
    return stats, heat
