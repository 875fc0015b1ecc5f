import json
import re

import pandas as pd
import pytest
import torch
import vl_convert

from editharm.results.aggregate import aggregate
from editharm.results.records import write_metrics
from editharm.results.report import build_report
from editharm.results.weight_change import weight_tables

CONTEXT = {
    "model": "TinyOrg/tiny-llama",
    "model_source": "local config, revision 0123abc",
    "edit_dataset": "ZsRE demo (30 records)",
    "datasets": [
        {"name": "sst2", "source": "src/editharm/demo/sst2", "licence": "CC0", "attribution": "Socher et al. 2013",
         "demo": True},
        {"name": "gsm8k", "source": "src/editharm/demo/gsm8k", "licence": "MIT", "attribution": "Cobbe et al. 2021",
         "demo": True},
    ],
    "settings": {"steps": [0, 2], "rect": {"k": 0.2}},
    "note": "unit test <b>escaped</b>",
}


def metric_file(path, **over):
    d = dict(model="tiny", method="rome", reg="none", setting="instance_sequential", seq=0, step=0,
             task="sst2", metrics={"accuracy": 0.5}, n=20, scoring="choice", demo=True)
    d.update(over)
    write_metrics(path, d)
    return path


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The pipeline's layout: the unedited model evaluated once (method "base"), edits from step 1."""
    root = tmp_path_factory.mktemp("metrics")
    base = dict(method="base", setting="base", step=0)
    files = [
        metric_file(root / "base-sst2.json", metrics={"accuracy": 0.5}, **base),
        metric_file(root / "base-gsm8k.json", task="gsm8k", scoring="generate", metrics={"solve_rate": 0.25}, **base),
    ]
    values = {"none": (0.375, 0.0625, 1.0), "rect20": (0.4375, 0.1875, 0.875)}  # sst2, gsm8k, reliability at step 2
    for reg, (acc, solve, rel) in values.items():
        common = dict(reg=reg, step=2)
        files += [
            metric_file(root / f"{reg}-sst2.json", metrics={"accuracy": acc}, **common),
            metric_file(root / f"{reg}-gsm8k.json", task="gsm8k", scoring="generate",
                        metrics={"solve_rate": solve}, **common),
            metric_file(root / f"{reg}-editing.json", task="editing", scoring="teacher_forced",
                        metrics={"reliability": rel, "generalization": rel / 2, "locality": 1.0}, **common),
        ]
    aggregate(files, root / "out")
    return root / "out" / "metrics.parquet"


@pytest.fixture(scope="module")
def page(table, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(table, out, context=CONTEXT)
    return out.read_text(encoding="utf-8")


def embedded_spec(page, name="spec"):
    (spec,) = re.findall(r"const %s = (\{.*\});\n" % name, page)
    return json.loads(spec)


def block_rows(spec, block):
    """The rows of every dataset one block of the chart plots."""
    names = re.findall(r'"data": \{"name": "([^"]+)"\}', json.dumps(block))
    return [row for name in dict.fromkeys(names) for row in spec["datasets"][name]]


def test_spec_holds_the_plotted_values(page):
    spec = embedded_spec(page)
    (block,) = spec["vconcat"]  # one block per setting
    assert block["title"]["text"] == "Setting: instance_sequential"
    assert [c.get("mark", c.get("spec", {}).get("mark"))["type"] for c in block["vconcat"]] == ["line"] * 3
    rows = [row for data in spec["datasets"].values() for row in data]
    mean = {(r["config"], r["edits"]): r["mean_general"] for r in rows if "mean_general" in r}
    # mean over tasks of the primary metric, by hand; the shared base is every curve's step 0
    assert mean == {("rome", 0): 0.375, ("rome", 2): (0.375 + 0.0625) / 2,
                    ("rome+rect20", 0): 0.375, ("rome+rect20", 2): (0.4375 + 0.1875) / 2}
    panels = {(r["panel"], r["config"], r["edits"]): r["value"] for r in rows if "panel" in r}
    assert panels[("gsm8k (solve_rate)", "rome+rect20", 2)] == 0.1875
    assert len({p for p, _, _ in panels}) == 2
    edit = {(r["metric"], r["config"], r["edits"]): r["value"] for r in rows if "metric" in r and "panel" not in r}
    assert edit[("reliability", "rome+rect20", 2)] == 0.875
    assert edit[("generalization", "rome", 2)] == 0.5


def test_page_is_self_contained(page):
    assert not re.search(r"<script[^>]*\bsrc\s*=", page)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']https?:", page)
    assert "vegaEmbed(" in page and "window.vegaEmbed=" in page  # the bundle is inline


def test_header_names_model_data_and_escapes(page):
    assert "TinyOrg/tiny-llama" in page and "revision 0123abc" in page
    assert "up to 2 (evaluated after 0, 2 edits)" in page
    assert "Demo data:" in page and page.count("<td>demo data</td>") == 2
    assert "<td>MIT</td><td>Cobbe et al. 2021</td><td>demo data</td>" in page  # licence and attribution shown
    assert "unit test &lt;b&gt;escaped&lt;/b&gt;" in page
    assert "0.4375" in page.split("<h2>Numbers</h2>")[1]  # the number table follows the charts


def test_builds_are_byte_identical(table, tmp_path):
    first, second = tmp_path / "first.html", tmp_path / "second.html"
    build_report(table, first, context=CONTEXT)
    build_report(table, second, context=CONTEXT)
    assert first.read_bytes() == second.read_bytes()


def test_one_model_per_report(tmp_path):
    files = [metric_file(tmp_path / "a.json", model="small"), metric_file(tmp_path / "b.json", model="large",
                                                                          metrics={"accuracy": 0.75})]
    aggregate(files, tmp_path / "out")
    table = tmp_path / "out" / "metrics.parquet"
    with pytest.raises(ValueError, match=r"\['large', 'small'\]"):
        build_report(table, tmp_path / "r.html", context=CONTEXT)
    build_report(table, tmp_path / "r.html", context={**CONTEXT, "model": "large"})
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    rows = [r for data in spec["datasets"].values() for r in data if "mean_general" in r]
    assert [r["mean_general"] for r in rows] == [0.75]


def test_bad_context_names_the_key(table, tmp_path):
    with pytest.raises(ValueError, match="'edit_dataset'"):
        build_report(table, tmp_path / "r.html", context={k: v for k, v in CONTEXT.items() if k != "edit_dataset"})
    bad = {**CONTEXT, "datasets": [{"name": "x", "source": "y", "licence": "z"}]}
    with pytest.raises(ValueError, match=r"datasets\[0\]\.attribution"):
        build_report(table, tmp_path / "r.html", context=bad)
    assert not (tmp_path / "r.html").exists()


def test_general_only_table_gives_general_charts_only(tmp_path):
    aggregate([metric_file(tmp_path / "a.json"), metric_file(tmp_path / "b.json", step=1)], tmp_path / "out")
    build_report(tmp_path / "out" / "metrics.csv", tmp_path / "r.html", context=CONTEXT)
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert [c.get("title", {}).get("text") for c in spec["vconcat"][0]["vconcat"]] == [
        "Mean general ability vs number of edits", "General ability per task"]


def editing_file(path, metrics, **over):
    return metric_file(path, task="editing", scoring="teacher_forced", metrics=metrics, **over)


def test_curves_use_edits_per_setting(tmp_path):
    """batch_sequential (batch size 4) at step 2 holds 8 edits; instance_single's steps each hold one
    edit and pool into one point; settings get blocks of their own in editharm.settings' order."""
    files = [metric_file(tmp_path / "base.json", method="base", setting="base", step=0)]
    runs = [("batch_sequential", 2, 8, 0.25, 0.5), ("instance_single", 1, 1, 0.5, 1.0),
            ("instance_single", 2, 1, 0.75, 0.5)]
    for setting, step, edits, acc, rel in runs:
        over = dict(setting=setting, step=step, edits=edits)
        files += [metric_file(tmp_path / f"{setting}-{step}.json", metrics={"accuracy": acc}, **over),
                  editing_file(tmp_path / f"{setting}-{step}-e.json", {"reliability": rel, "reliability_all": rel / 2,
                                                                      "fluency": 5.0, "zz_custom": 0.1}, **over)]
    aggregate(files, tmp_path / "out")
    build_report(tmp_path / "out" / "metrics.parquet", tmp_path / "r.html", context=CONTEXT)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    spec = embedded_spec(page)
    assert [b["title"]["text"] for b in spec["vconcat"]] == ["Setting: instance_single", "Setting: batch_sequential"]
    single, batch = (block_rows(spec, b) for b in spec["vconcat"])
    assert {(r["edits"], r["mean_general"]) for r in single if "mean_general" in r} == {(0, 0.5), (1, 0.625)}
    assert {(r["edits"], r["mean_general"]) for r in batch if "mean_general" in r} == {(0, 0.5), (8, 0.25)}
    assert {(r["metric"], r["value"]) for r in single if r.get("edits") == 1 and "metric" in r and "panel" not in r} == {
        ("reliability", 0.75), ("reliability_all", 0.375), ("fluency", 5.0), ("zz_custom", 0.1)}
    editing = spec["vconcat"][0]["vconcat"][2]
    assert editing["spec"]["encoding"]["x"]["field"] == "edits"
    assert editing["facet"]["sort"] == ["reliability", "fluency", "reliability_all", "zz_custom"]
    assert "instance_single: up to 1 (evaluated after 0, 1 edits); batch_sequential: up to 8 (evaluated after 0, 8 edits)" in page


def test_tables_without_edits_plot_steps(table, tmp_path):
    old = pd.read_parquet(table).drop(columns="edits")
    old.to_parquet(tmp_path / "old.parquet", index=False)
    build_report(tmp_path / "old.parquet", tmp_path / "r.html", context=CONTEXT)
    rows = [r for data in embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))["datasets"].values()
            for r in data if "mean_general" in r]
    assert sorted({r["edits"] for r in rows}) == [0, 2]


# weights: every entry 1, so |ΔW|/|W| = |ΔW|; ΔW = v everywhere, v as below; param "p.b" moves twice as far
SHAPE = (4, 6)


def fill(config, seq, step, param):
    return 0.05 * step * (seq + 1) * (1.0 if config == "rome" else 0.5) * (2 if param == "p.b" else 1)


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """The pipeline's layout: weight_tables per sequence, concatenated with their run's labels."""
    root = tmp_path_factory.mktemp("weights")
    weights = {p: (torch.ones(SHAPE), False) for p in ("p.a", "p.b")}
    stats, heats = [], []
    for setting, batch in (("instance_sequential", 1), ("batch_sequential", 4)):
        for reg, config in (("none", "rome"), ("rect20", "rome+rect20")):
            for seq in (0, 1):
                deltas = {step: {p: torch.full(SHAPE, fill(config, seq, step, p)) for p in weights} for step in (1, 2)}
                s, h = weight_tables(weights, deltas, thresholds=(0.077, 0.171))
                labels = dict(model="tiny", method="rome", reg=reg, config=config, setting=setting, seq=seq)
                stats.append(s.assign(**labels, edits=s["step"] * batch))
                heats.append(h.assign(**labels))
    label_columns = ["model", "method", "reg", "config", "setting", "seq", "step"]
    stats = pd.concat(stats, ignore_index=True)
    stats = stats[[*label_columns, "edits", *[c for c in stats if c not in label_columns and c != "edits"]]]
    heats = pd.concat(heats, ignore_index=True)
    stats.to_parquet(root / "weights.parquet", index=False)
    heats[[*label_columns, *[c for c in heats if c not in label_columns]]].to_parquet(root / "heat.parquet", index=False)
    return root / "weights.parquet", root / "heat.parquet"


@pytest.fixture(scope="module")
def weight_page(table, weight_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(table, out, context=CONTEXT, weights=weight_files[0], heatmaps=weight_files[1])
    return out.read_text(encoding="utf-8")


def test_weight_section_only_when_given(page, weight_page):
    assert "Weight change" not in page and "weightsSpec" not in page
    assert weight_page.count("<h2>Weight change</h2>") == 1 and weight_page.count("const weightsSpec = ") == 1
    assert weight_page.index("<h2>Numbers</h2>") < weight_page.index("<h2>Weight change</h2>")
    assert embedded_spec(weight_page) == embedded_spec(page)  # the metric charts do not change
    assert not re.search(r"<script[^>]*\bsrc\s*=", weight_page)


def test_weight_curves_by_hand(weight_page):
    spec = embedded_spec(weight_page, "weightsSpec")
    assert [b["title"]["text"] for b in spec["vconcat"]] == ["Setting: instance_sequential", "Setting: batch_sequential"]
    rows = block_rows(spec, spec["vconcat"][1])
    curves = {(r["measure"], r["config"], r["edits"]): r["value"] for r in rows if "measure" in r}
    # Manhattan: 24 entries of v for p.a plus 24 of 2v for p.b, averaged over seq 0 (v) and 1 (2v)
    v = fill("rome", 0, 2, "p.a")  # 0.1 at step 2
    assert curves[("Manhattan distance Σ|ΔW|", "rome", 8)] == pytest.approx(24 * (v + 2 * v) * 1.5)
    # step 1, rome: v = 0.05 (seq 0), 0.1 (seq 1); p.b 0.1, 0.2. Above 0.077: p.a 0, 1; p.b 1, 1 -> 0.75
    assert curves[("share of entries with |ΔW|/|W| > 0.077", "rome", 4)] == pytest.approx(0.75)
    # above 0.171 at step 2, rome+rect20: p.a 0.05, 0.1; p.b 0.1, 0.2 -> one of four
    assert curves[("share of entries with |ΔW|/|W| > 0.171", "rome+rect20", 8)] == pytest.approx(0.25)
    assert {e for _, _, e in curves} == {4, 8}
    maps = [r for r in rows if "row" in r]
    assert len(maps) == 2 * 2 * SHAPE[0] * SHAPE[1]  # configs × params × blocks, last step only
    values = {(r["config"], r["param"]): r["value"] for r in maps}  # constant over each map
    assert values == {("rome", "p.a"): 0.15, ("rome", "p.b"): 0.3, ("rome+rect20", "p.a"): 0.075,
                      ("rome+rect20", "p.b"): 0.15}
    numbers = weight_page.split("<h2>Weight change</h2>")[1]
    assert 'class="dataframe numbers weights"' in numbers and "<td>p.b</td>" in numbers


def test_both_specs_compile_to_vega(weight_page):
    for name in ("spec", "weightsSpec"):
        assert vl_convert.vegalite_to_vega(embedded_spec(weight_page, name))["marks"]


def test_weight_builds_are_byte_identical(table, weight_files, tmp_path):
    for name in ("first", "second"):
        build_report(table, tmp_path / f"{name}.html", context=CONTEXT, weights=weight_files[0], heatmaps=weight_files[1])
    assert (tmp_path / "first.html").read_bytes() == (tmp_path / "second.html").read_bytes()


def test_weight_files_are_checked(table, weight_files, tmp_path):
    with pytest.raises(ValueError, match="both files or neither"):
        build_report(table, tmp_path / "r.html", context=CONTEXT, weights=weight_files[0])
    pd.read_parquet(weight_files[0]).drop(columns="edits").to_parquet(tmp_path / "w.parquet")
    with pytest.raises(ValueError, match=r"w.parquet: missing column\(s\) \['edits'\]"):
        build_report(table, tmp_path / "r.html", context=CONTEXT, weights=tmp_path / "w.parquet",
                     heatmaps=weight_files[1])
    assert not (tmp_path / "r.html").exists()
