import json

import pandas as pd
import pytest

from editharm.results.aggregate import aggregate, general_means, with_shared_base
from editharm.results.records import (
    MetricFileError,
    MetricRecord,
    read_metrics,
    write_metrics,
)


def record(**over):
    base = dict(model="tiny", method="rome", reg="none", setting="instance_sequential", seq=0, step=0,
                task="sst2", metrics={"accuracy": 0.5}, n=20, scoring="choice", demo=True)
    return {**base, **over}


def general(task, metric, scoring="choice"):
    return lambda value, **kw: record(task=task, metrics={metric: value}, scoring=scoring, **kw)


sst2 = general("sst2", "accuracy")
gsm8k = general("gsm8k", "solve_rate", "generate")


def editing(rel, gen, loc, **kw):
    return record(task="editing", scoring="teacher_forced",
                  metrics={"reliability": rel, "generalization": gen, "locality": loc}, **kw)


@pytest.fixture
def files(tmp_path):
    """Two configs, two sequences of rome, steps 0 and 2, two tasks and editing metrics."""
    recs = [
        sst2(0.50, step=0), gsm8k(0.20, step=0), editing(0.1, 0.1, 1.0, step=0),
        sst2(0.40, step=2), gsm8k(0.10, step=2), editing(1.0, 0.5, 0.8, step=2),
        sst2(0.50, step=0, seq=1), gsm8k(0.20, step=0, seq=1),
        sst2(0.30, step=2, seq=1), gsm8k(0.00, step=2, seq=1), editing(0.8, 0.3, 0.6, step=2, seq=1),
        sst2(0.50, step=0, reg="rect20"), gsm8k(0.20, step=0, reg="rect20"),
        sst2(0.45, step=2, reg="rect20"), gsm8k(0.15, step=2, reg="rect20"),
        editing(0.9, 0.4, 0.95, step=2, reg="rect20"),
        # a multi-metric task names its headline metric
        record(task="samsum", scoring="generate", primary="rouge_mean", step=2, reg="rect20",
               metrics={"rouge1": 0.3, "rouge2": 0.1, "rougeL": 0.2, "rouge_mean": 0.2}),
    ]
    paths = []
    for i, r in enumerate(recs):
        paths.append(tmp_path / "in" / f"{i:02d}.json")
        write_metrics(paths[-1], r)
    return paths


def test_table_is_tidy_with_configs_and_primary_flags(files, tmp_path):
    table = aggregate(files, tmp_path / "out")
    assert list(table.columns) == ["model", "method", "reg", "config", "setting", "seq", "step", "edits", "task", "metric",
                                   "value", "primary", "kind", "n", "scoring", "demo",
                                   "lo", "hi", "delta", "delta_lo", "delta_hi", "significant"]
    assert table["lo"].isna().all() and not table["significant"].any()  # no replicates in these records
    assert len(table) == 12 + 4 * 3 + 4  # single-metric general rows, editing files x 3, samsum x 4
    assert set(table["config"]) == {"rome", "rome+rect20"}
    samsum = table[table["task"] == "samsum"].set_index("metric")
    assert samsum["primary"].to_dict() == {"rouge1": False, "rouge2": False, "rougeL": False, "rouge_mean": True}
    assert set(table.loc[table["task"] == "editing", "kind"]) == {"editing"}
    assert not table.loc[table["task"] == "editing", "primary"].any()
    row = table[(table["config"] == "rome") & (table["seq"] == 1) & (table["step"] == 2) & (table["task"] == "sst2")]
    assert row["value"].tolist() == [0.30] and row["primary"].tolist() == [True]


def test_summary_values_computed_by_hand(files, tmp_path):
    aggregate(files, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["tiny"]
    # base: step 0 of every run pooled per task: sst2 0.5, gsm8k 0.2
    assert summary["base"] == {"mean_general": pytest.approx(0.35), "n_tasks": 2}
    rome = summary["settings"]["instance_sequential"]["rome"]
    # seq 0: (0.40 + 0.10) / 2 = 0.25; seq 1: (0.30 + 0.00) / 2 = 0.15; mean 0.20
    assert rome["step"] == 2
    assert rome["mean_general"] == pytest.approx(0.20)
    assert rome["reliability"] == pytest.approx(0.9)
    assert rome["generalization"] == pytest.approx(0.4)
    assert rome["locality"] == pytest.approx(0.7)
    rect = summary["settings"]["instance_sequential"]["rome+rect20"]
    # three tasks at step 2: sst2 0.45, gsm8k 0.15, samsum rouge_mean 0.2
    assert rect["mean_general"] == pytest.approx((0.45 + 0.15 + 0.2) / 3)
    assert rect["n_tasks"] == 3
    assert (rect["reliability"], rect["generalization"], rect["locality"]) == (0.9, 0.4, 0.95)


def test_outputs_match_table_and_ignore_input_order(files, tmp_path):
    table = aggregate(files, tmp_path / "a")
    aggregate(list(reversed(files)), tmp_path / "b")
    for name in ("metrics.parquet", "metrics.csv", "summary.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "metrics.parquet"), table)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "metrics.csv"), table)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("change, key", [
    (lambda d: d.pop("step"), "'step'"),
    (lambda d: d.update(seq="1"), "'seq'"),
    (lambda d: d.update(step=True), "'step'"),
    (lambda d: d.update(demo="yes"), "'demo'"),
    (lambda d: d.update(metrics={"accuracy": "high"}), "'metrics.accuracy'"),
    (lambda d: d.update(scoring="greedy"), "'scoring'"),
    (lambda d: d.update(colour="red"), "colour"),
    (lambda d: d.update(metrics={"a": 0.1, "b": 0.2}), "'primary'"),
    (lambda d: d.update(task="editing"), "'scoring'"),
    (lambda d: d.update(method="base", step=2), "'method'"),
])
def test_bad_file_is_rejected_naming_file_and_key(tmp_path, change, key):
    d = record()
    change(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(MetricFileError) as err:
        aggregate([path], tmp_path / "out")
    assert str(path) in str(err.value) and key in str(err.value)
    assert not (tmp_path / "out").exists()


def test_duplicate_run_names_both_files(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    write_metrics(a, record())
    write_metrics(b, record(metrics={"accuracy": 0.9}))
    with pytest.raises(MetricFileError, match="same .*") as err:
        aggregate([a, b], tmp_path / "out")
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_write_metrics_validates_before_writing(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(MetricFileError, match="'n'"):
        write_metrics(path, record(n=-1))
    assert list(tmp_path.iterdir()) == []
    write_metrics(path, MetricRecord(**record(metrics={"accuracy": 1})))
    back = read_metrics(path)
    assert back.metrics == {"accuracy": 1.0} and back.config == "rome" and back.kind == "general"


def test_a_file_may_hold_a_list_of_records_each_validated_by_index(tmp_path):
    many = tmp_path / "lmeval.json"
    probe = dict(task="lmeval:piqa", metrics={"acc": 0.6, "acc_stderr": 0.05}, primary="acc")
    write_metrics(many, [record(step=1, **probe), record(step=2, **probe, scoring="loglikelihood")])
    write_metrics(tmp_path / "sst2.json", sst2(0.5, step=1))
    table = aggregate([many, tmp_path / "sst2.json"], tmp_path / "out")
    rows = table[table["task"] == "lmeval:piqa"]
    assert list(zip(rows["step"], rows["metric"], rows["primary"])) == [
        (1, "acc", True), (1, "acc_stderr", False), (2, "acc", True), (2, "acc_stderr", False)]
    # the probe is charted but kept out of the headline mean over the built-in tasks
    assert general_means(table).set_index("step")["n_tasks"].to_dict() == {1: 1}
    with pytest.raises(MetricFileError, match=r"\[1\]: key 'n'"):
        write_metrics(tmp_path / "bad.json", [record(), record(n=-1)])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(MetricFileError, match="empty list"):
        aggregate([tmp_path / "empty.json"], tmp_path / "out2")
    assert not (tmp_path / "bad.json").exists()


def test_base_evaluated_once_is_step_zero_of_every_run(tmp_path):
    base = dict(method="base", setting="base", step=0)
    recs = [sst2(0.5, **base), gsm8k(0.25, **base),
            sst2(0.25, step=1), gsm8k(0.0, step=1), sst2(0.5, step=1, seq=1), gsm8k(0.25, step=1, seq=1),
            sst2(0.25, step=1, reg="rect20"), gsm8k(0.25, step=1, reg="rect20")]
    paths = [tmp_path / f"{i}.json" for i in range(len(recs))]
    for path, r in zip(paths, recs):
        write_metrics(path, r)
    table = aggregate(paths, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["tiny"]
    assert summary["base"] == {"mean_general": 0.375, "n_tasks": 2}
    assert list(summary["settings"]) == ["instance_sequential"]
    assert summary["settings"]["instance_sequential"]["rome"]["mean_general"] == pytest.approx(0.25)
    curves = general_means(with_shared_base(table))
    assert "base" not in set(curves["config"])
    start = curves[curves["step"] == 0]
    assert sorted(zip(start["config"], start["setting"], start["seq"])) == [
        ("rome", "instance_sequential", 0), ("rome", "instance_sequential", 1),
        ("rome+rect20", "instance_sequential", 0)]
    assert set(start["mean_general"]) == {0.375}
