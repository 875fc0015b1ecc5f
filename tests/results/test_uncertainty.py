import math

import numpy as np
import pandas as pd
import pytest

from editharm.evaluation.metrics import METRICS
from editharm.evaluation.tasks import Item
from editharm.results.aggregate import aggregate, collect, points, with_shared_base
from editharm.results.records import MetricFileError, write_metrics
from editharm.results.uncertainty import (
    Bootstrap,
    excludes_zero,
    interval,
    items_digest,
    mean_combine,
    present_stats,
)

IDS = [f"item{i}" for i in range(50)]


def test_all_correct_gives_the_degenerate_interval_one_one():
    reps = Bootstrap(200, seed=3).replicates("sst2", IDS, np.ones(len(IDS)))
    assert interval(reps) == (1.0, 1.0)


def test_weights_are_resamples_with_replacement_and_a_pure_function_of_seed_key_and_items():
    boot = Bootstrap(100, seed=7)
    w = boot.weights("rte", IDS)
    assert w.shape == (100, 50) and (w.sum(axis=1) == 50).all() and (w >= 0).all()
    assert np.array_equal(w, Bootstrap(100, seed=7).weights("rte", IDS))
    assert not np.array_equal(w, Bootstrap(100, seed=8).weights("rte", IDS))
    assert not np.array_equal(w, boot.weights("boolq", IDS))
    assert not np.array_equal(w, boot.weights("rte", IDS[::-1]))


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    scores = np.random.default_rng(0).integers(0, 2, len(IDS)).astype(float)
    boot = Bootstrap(500, seed=0)
    base, edited = boot.replicates("nq", IDS, scores), boot.replicates("nq", IDS, scores.copy())
    diff = edited - base
    assert (diff == 0).all() and interval(diff) == (0.0, 0.0) and not excludes_zero(*interval(diff))


def test_percentile_interval_of_a_mean_matches_its_normal_approximation():
    # 50 items, 25 correct: the bootstrap sd of the mean is sqrt(p(1-p)/n) = 0.0707, so a 95% interval
    # is about 0.5 +- 0.139.
    scores = np.array([1.0, 0.0] * 25)
    lo, hi = interval(Bootstrap(4000, seed=1).replicates("sst2", IDS, scores))
    assert lo == pytest.approx(0.5 - 1.96 * math.sqrt(0.25 / 50), abs=0.03)
    assert hi == pytest.approx(0.5 + 1.96 * math.sqrt(0.25 / 50), abs=0.03)


def test_a_consistent_drop_is_significant_and_a_swap_is_not():
    boot = Bootstrap(1000, seed=0)
    base = np.array([1.0] * 40 + [0.0] * 10)
    dropped = base.copy()
    dropped[:15] = 0.0  # 15 right answers lost, none gained
    lo, hi = interval(boot.replicates("t", IDS, dropped) - boot.replicates("t", IDS, base))
    assert hi < 0 and excludes_zero(lo, hi)
    swapped = base.copy()
    swapped[0], swapped[45] = 0.0, 1.0  # one lost, one gained: no change on the whole
    lo, hi = interval(boot.replicates("t", IDS, swapped) - boot.replicates("t", IDS, base))
    assert lo < 0 < hi and not excludes_zero(lo, hi)


def test_replicates_with_no_resampling_reproduce_the_metric_of_the_full_sample():
    # A micro F1 is not a mean of per-example F1s; its replicates must come from summed tp/fp/fn.
    f1 = METRICS.get("entity_f1")
    items = [Item(f"s{i}", {"entity_type": "Person"}, gold, gold) for i, gold in
             enumerate([["Ann", "Bob"], ["Cy"], [], ["Dee"]])]
    predictions = ["Ann", "Cy, Ed", "None", "Dee"]
    per, value = f1.compute(predictions, items)
    stats = f1.statistics(predictions, items)
    assert stats.tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 0], [1, 0, 0]]
    assert f1.combine(stats.sum(axis=0)[None, :], len(items))[0] == pytest.approx(value)
    reps = f1.replicates(Bootstrap(300, seed=0), "conll2003", predictions, items, per)
    assert reps.shape == (300,) and np.isfinite(reps).all() and reps.min() < value < reps.max()


def test_means_with_missing_values_leave_them_out():
    stats = present_stats([1.0, math.nan, 0.0, 1.0])
    assert mean_combine(stats.sum(axis=0)[None, :], 4)[0] == pytest.approx(2 / 3)
    reps = Bootstrap(200, seed=0).replicates("editing/latest", ["a"], present_stats([math.nan]), mean_combine)
    assert np.isnan(reps).all() and all(map(math.isnan, interval(reps)))


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="resamples"):
        Bootstrap(0)
    with pytest.raises(ValueError, match="unknown key"):
        Bootstrap.from_options({"resamples": 10, "samples": 3})
    assert Bootstrap.from_options({"resamples": 0, "seed": 1}) is None
    with pytest.raises(ValueError, match="level"):
        interval(np.ones(3), level=95)


# --- metric records and the aggregate ---------------------------------------------------------------


def _record(method, step, scores, task="sst2", boot=Bootstrap(400, seed=0), reg="none", seq=0, ids=IDS):
    scores = np.asarray(scores, dtype=float)
    return dict(model="tiny", method=method, reg=reg, setting="base" if method == "base" else "instance_sequential",
                seq=seq, step=step, task=task, metrics={"accuracy": float(scores.mean())}, n=len(scores),
                scoring="choice", demo=True,
                bootstrap=boot.block(task, ids, {"accuracy": boot.replicates(task, ids, scores)}))


def test_aggregate_pairs_each_checkpoint_with_the_unedited_model(tmp_path):
    base = np.array([1.0] * 40 + [0.0] * 10)
    same, dropped = base.copy(), base.copy()
    dropped[:20] = 0.0
    files = []
    for i, rec in enumerate([_record("base", 0, base), _record("rome", 1, same), _record("rome", 4, dropped)]):
        files.append(tmp_path / f"{i}.json")
        write_metrics(files[-1], rec)
    table = aggregate(files, tmp_path / "out").set_index(["method", "step"])
    assert table.loc[("base", 0), "delta"] == 0 and table.loc[("base", 0), "delta_hi"] == 0
    assert table.loc[("rome", 1), ["delta", "delta_lo", "delta_hi"]].tolist() == [0.0, 0.0, 0.0]
    assert not table.loc[("rome", 1), "significant"]
    row = table.loc[("rome", 4)]
    assert row["delta"] == pytest.approx(-0.4) and row["delta_hi"] < 0 and row["significant"]
    assert row["lo"] < 0.4 < row["hi"]
    pts = pd.read_parquet(tmp_path / "out" / "points.parquet")
    mean = pts[(pts["task"] == "mean_general") & (pts["step"] == 4)].iloc[0]
    assert mean["value"] == pytest.approx(0.4) and mean["delta"] == pytest.approx(-0.4) and mean["significant"]
    # The step-0 point of the edited run is the unedited model, with a paired difference of 0.
    start = pts[(pts["config"] == "rome") & (pts["step"] == 0) & (pts["task"] == "sst2")].iloc[0]
    assert start["value"] == pytest.approx(0.8) and start["delta"] == 0 and not start["significant"]


def test_summary_carries_intervals_and_paired_changes(tmp_path):
    import json

    base = np.array([1.0] * 40 + [0.0] * 10)
    dropped = base.copy()
    dropped[:20] = 0.0
    boot = Bootstrap(400, seed=0)
    texts = [f"t{i}" for i in range(30)]

    def ppl(method, step, nll):
        nll = np.asarray(nll, dtype=float)
        reps = boot.replicates("perplexity", texts, np.stack([nll, np.full(30, 10.0)], axis=1),
                               lambda sums, n: np.exp(sums[:, 0] / sums[:, 1]))
        return dict(model="tiny", method=method, reg="none", setting="base" if method == "base" else "instance_sequential",
                    seq=0, step=step, task="perplexity", metrics={"perplexity": float(np.exp(nll.sum() / 300))},
                    primary="perplexity", n=30, scoring="loglikelihood", demo=False,
                    bootstrap=boot.block("perplexity", texts, {"perplexity": reps}))

    nll = np.linspace(20, 40, 30)
    recs = [_record("base", 0, base), _record("rome", 4, dropped), ppl("base", 0, nll), ppl("rome", 4, nll + 5)]
    files = []
    for i, rec in enumerate(recs):
        files.append(tmp_path / f"{i}.json")
        write_metrics(files[-1], rec)
    aggregate(files, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["tiny"]
    assert summary["base"]["mean_general"] == pytest.approx(0.8)
    assert summary["base"]["mean_general_lo"] < 0.8 < summary["base"]["mean_general_hi"]
    assert summary["base"]["perplexity"] == pytest.approx(np.exp(nll.sum() / 300))
    rome = summary["settings"]["instance_sequential"]["rome"]
    assert rome["mean_general_delta"] == pytest.approx(-0.4) and rome["mean_general_significant"] is True
    # every text's NLL rose by 5 over 10 tokens: perplexity exactly e^0.5 times the unedited one, in every resample
    assert rome["perplexity"] == pytest.approx(summary["base"]["perplexity"] * math.exp(0.5))
    assert rome["perplexity_delta_lo"] > 0 and rome["perplexity_significant"] is True


def test_points_pool_sequences_replicate_by_replicate(tmp_path):
    base = np.array([1.0] * 30 + [0.0] * 20)
    seq0, seq1 = base.copy(), base.copy()
    seq0[:10] = 0.0
    seq1[:2] = 0.0
    files = []
    for i, rec in enumerate([_record("base", 0, base), _record("rome", 1, seq0), _record("rome", 1, seq1, seq=1)]):
        files.append(tmp_path / f"{i}.json")
        write_metrics(files[-1], rec)
    table, reps = collect(files)
    pts = points(with_shared_base(table), reps)
    pooled = pts[(pts["config"] == "rome") & (pts["step"] == 1) & (pts["task"] == "sst2")].iloc[0]
    assert pooled["n_seqs"] == 2 and pooled["value"] == pytest.approx((0.4 + 0.56) / 2)
    assert pooled["delta"] == pytest.approx(pooled["value"] - 0.6)
    assert pooled["delta_lo"] <= pooled["delta"] <= pooled["delta_hi"]


def test_different_items_are_not_paired(tmp_path):
    files = [tmp_path / "a.json", tmp_path / "b.json"]
    write_metrics(files[0], _record("base", 0, np.ones(50)))
    write_metrics(files[1], _record("rome", 1, np.ones(49), ids=IDS[:49]))
    row = aggregate(files, tmp_path / "out").set_index("method").loc["rome"]
    assert row["lo"] == 1.0 and math.isnan(row["delta"]) and not row["significant"]


def test_a_malformed_bootstrap_block_names_the_file_and_key(tmp_path):
    rec = _record("base", 0, np.ones(50))
    rec["bootstrap"]["replicates"]["accuracy"] = rec["bootstrap"]["replicates"]["accuracy"][:3]
    with pytest.raises(MetricFileError, match=r"bootstrap\.replicates\.accuracy.*400"):
        write_metrics(tmp_path / "m.json", rec)
    rec = _record("base", 0, np.ones(50))
    rec["bootstrap"]["replicates"] = {"f1": rec["bootstrap"]["replicates"]["accuracy"]}
    with pytest.raises(MetricFileError, match="not among metrics"):
        write_metrics(tmp_path / "m.json", rec)


def test_items_digest_depends_on_order():
    assert items_digest(["a", "b"]) != items_digest(["b", "a"])


def test_per_type_recall_replicates_come_from_per_type_counts():
    metric = METRICS.get("per_type_recall")
    rows = [("Person", ["Ann"], "Ann said"), ("Person", [], "nothing"), ("Location", ["Rome", "Oslo"], "Rome"),
            ("Miscellaneous", [], "x")]
    items = [Item(f"s{i}", {"entity_type": t}, gold, gold) for i, (t, gold, _) in enumerate(rows)]
    predictions = [p for *_, p in rows]
    per, value = metric.compute(predictions, items)
    stats = metric.statistics(predictions, items)
    # columns: Location (found, counted), Miscellaneous (...), Person (...); the skipped Person example is all 0
    assert stats.tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0], [1, 2, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
    assert metric.combine(stats.sum(axis=0)[None, :], 4)[0] == pytest.approx(value) == pytest.approx((1 + 0.5 + 0) / 3)
    reps = metric.replicates(Bootstrap(200, seed=0), "conll2003_recall_compat", predictions, items, per)
    assert np.isfinite(reps).all()
