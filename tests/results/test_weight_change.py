"""Weight-change statistics and |ΔW| heatmaps against values worked out by hand."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from editharm.core.fileio import write_parquet
from editharm.model.modules import edited_matrix
from editharm.results.weight_change import (
    change_stats,
    heatmap,
    threshold_column,
    weight_tables,
)

# Rows of DELTA are orthogonal, so its singular values are the row norms √0.14 and √0.05.
WEIGHT = torch.tensor([[1.0, -2.0, 0.0], [4.0, 0.5, 0.0]])
DELTA = torch.tensor([[0.1, 0.2, 0.0], [-0.2, 0.1, 0.3]])


def test_change_stats_by_hand():
    stats = change_stats(WEIGHT, DELTA, thresholds=(0.077, 0.171))
    # δ = 0.1, 0.1, 0 (W = 0 and ΔW = 0), 0.05, 0.2, +inf (W = 0, ΔW = 0.3)
    expected = {
        "manhattan": 0.9, "frobenius": math.sqrt(0.19), "max_abs": 0.3,
        "relative_frobenius": math.sqrt(0.19) / math.sqrt(21.25), "sigma_max": math.sqrt(0.14), "rank": 2,
        "nonzero_share": 5 / 6, "share_above_0.077": 4 / 6, "share_above_0.171": 2 / 6,
    }
    assert list(stats) == list(expected)
    for key, value in expected.items():
        assert stats[key] == pytest.approx(value, rel=1e-6), key


def test_stats_do_not_depend_on_layout():
    """A Conv1D matrix is stored (in, out): the same change in either layout has the same statistics."""
    assert change_stats(WEIGHT.T, DELTA.T) == pytest.approx(change_stats(WEIGHT, DELTA), rel=1e-6)


def test_rank_one_and_zero_updates():
    u, v = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, -1.0, 0.5, 2.0])
    stats = change_stats(torch.ones(3, 4), torch.outer(u, v))
    assert stats["rank"] == 1 and stats["sigma_max"] == pytest.approx(math.sqrt(14) * 2.5, rel=1e-6)
    zero = change_stats(torch.zeros(3, 4), torch.zeros(3, 4))
    assert zero == {"manhattan": 0.0, "frobenius": 0.0, "max_abs": 0.0, "relative_frobenius": 0.0,
                    "sigma_max": 0.0, "rank": 0.0, "nonzero_share": 0.0,
                    "share_above_0.077": 0.0, "share_above_0.171": 0.0}
    # any change to an all-zero matrix is infinitely large relative to it
    assert change_stats(torch.zeros(3, 4), torch.outer(u, v))["relative_frobenius"] == math.inf


def test_float32_rounding_does_not_count_as_rank():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(96, 3, generator=g) @ torch.randn(3, 160, generator=g)  # rank 3, float32 products
    assert change_stats(torch.randn(96, 160, generator=g), low)["rank"] == 3
    assert change_stats(torch.randn(30, 50, generator=g), torch.randn(30, 50, generator=g))["rank"] == 30


def test_threshold_columns_and_bad_input():
    assert threshold_column(0.077) == "share_above_0.077" and threshold_column(1) == "share_above_1.0"
    assert "share_above_0.5" in change_stats(WEIGHT, DELTA, thresholds=(0.5,))
    with pytest.raises(ValueError, match="duplicates"):
        change_stats(WEIGHT, DELTA, thresholds=(0.1, 0.1))
    with pytest.raises(ValueError, match="thresholds: -0.1"):
        change_stats(WEIGHT, DELTA, thresholds=(-0.1,))
    with pytest.raises(ValueError, match=r"ΔW \(3, 2\)"):
        change_stats(WEIGHT, DELTA.T)


def test_heatmap_block_means_for_shapes_not_divisible_by_bins():
    """5 × 7 in 2 × 2 blocks: rows {0,1,2}, {3,4}; cols {0..3}, {4..6}. |ΔW| = 7r + c, so a block's mean is
    7 · mean(r) + mean(c)."""
    delta = -torch.arange(35.0).reshape(5, 7)
    heat = heatmap(delta, transposed=False, bins=2)
    assert list(heat.columns) == ["row", "col", "value"]
    assert heat.values.tolist() == [[0, 0, 7 * 1 + 1.5], [0, 1, 7 * 1 + 5], [1, 0, 7 * 3.5 + 1.5], [1, 1, 7 * 3.5 + 5]]
    # Conv1D stores the same matrix as (in, out): the map is still (out, in)
    pd.testing.assert_frame_equal(heatmap(delta.T.contiguous(), transposed=True, bins=2), heat)


def test_heatmap_smaller_than_bins_is_the_matrix():
    heat = heatmap(DELTA, transposed=False, bins=48)
    assert heat.values.tolist() == [[r, c, abs(DELTA[r, c].item())] for r in range(2) for c in range(3)]
    with pytest.raises(ValueError, match="bins=0"):
        heatmap(DELTA, transposed=False, bins=0)


def test_heatmap_blocks_cover_every_entry_once():
    delta = torch.randn(64, 250, generator=torch.Generator().manual_seed(1))
    heat = heatmap(delta, transposed=False, bins=48)
    assert (heat["row"].max(), heat["col"].max(), len(heat)) == (47, 47, 48 * 48)
    rows, cols = (torch.arange(64) * 48 // 64).bincount(), (torch.arange(250) * 48 // 250).bincount()
    assert set(rows.tolist()) == {1, 2} and set(cols.tolist()) == {5, 6}  # sizes differ by at most one
    weighted = sum(v * rows[r].item() * cols[c].item() for r, c, v in heat.itertuples(index=False))
    assert weighted == pytest.approx(delta.double().abs().sum().item(), rel=1e-12)


def test_weight_tables_on_a_conv1d_model(tiny_gpt2):
    model, _ = tiny_gpt2
    matrices = [edited_matrix(model, f"transformer.h.{i}.mlp.c_proj") for i in (0, 1)]
    weights = {name: (weight, transposed) for name, weight, transposed in matrices}
    assert all(t and w.shape == (256, 64) for w, t in weights.values())  # (in, out)
    g = torch.Generator().manual_seed(2)
    deltas = {step: {name: torch.randn(256, 64, generator=g) * step for name in weights} for step in (1, 3)}
    stats, heat = weight_tables(weights, deltas, thresholds=(0.077,), bins=16)
    names = sorted(weights)
    assert stats[["step", "param"]].values.tolist() == [[1, names[0]], [1, names[1]], [3, names[0]], [3, names[1]]]
    assert list(stats.columns[2:]) == ["manhattan", "frobenius", "max_abs", "relative_frobenius", "sigma_max",
                                       "rank", "nonzero_share", "share_above_0.077"]
    assert stats["rank"].dtype == "int64" and set(stats["rank"]) == {64}
    row = stats.iloc[3]
    assert row["manhattan"] == pytest.approx(deltas[3][names[1]].abs().sum().item(), rel=1e-6)
    # heatmaps of the last step only, in (out, in) orientation
    assert set(heat["step"]) == {3} and list(heat.columns) == ["step", "param", "row", "col", "value"]
    one = heat[heat["param"] == names[0]].drop(columns=["step", "param"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(one, heatmap(deltas[3][names[0]].T, transposed=False, bins=16))
    _, chosen = weight_tables(weights, deltas, heatmap_steps=[1, 3], bins=16)
    assert sorted(set(chosen["step"])) == [1, 3]
    with pytest.raises(ValueError, match=r"heatmap_steps: \[2\]"):
        weight_tables(weights, deltas, heatmap_steps=[2])
    with pytest.raises(ValueError, match="no original weight"):
        weight_tables({}, deltas)


def test_written_tables_round_trip_and_repeat(tmp_path):
    weights = {"w": (WEIGHT, False)}
    tables = weight_tables(weights, {2: {"w": DELTA}, 1: {"w": DELTA / 2}})
    again = weight_tables(weights, {1: {"w": DELTA / 2}, 2: {"w": DELTA}})
    for name in ("a", "b"):
        stats, heat = tables if name == "a" else again
        write_parquet(tmp_path / f"{name}-stats.parquet", stats)
        write_parquet(tmp_path / f"{name}-heat.parquet", heat)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a-stats.parquet"), tables[0])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a-heat.parquet"), tables[1])
    for kind in ("stats", "heat"):
        assert (tmp_path / f"a-{kind}.parquet").read_bytes() == (tmp_path / f"b-{kind}.parquet").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-heat.parquet", "a-stats.parquet", "b-heat.parquet", "b-stats.parquet"]
