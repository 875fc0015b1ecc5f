import html
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
import vl_convert

from editharm.results.aggregate import POINT_COLUMNS, aggregate
from editharm.results.records import write_metrics
from editharm.results.report import CHOICE_MARK, REFERENCE, build_report, headline
from editharm.results.uncertainty import Bootstrap
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
SIG_LABEL = "significant vs unedited (paired 95% CI excludes 0)"


def metric_file(path, **over):
    d = dict(model="tiny", method="rome", reg="none", setting="instance_sequential", seq=0, step=0,
             task="sst2", metrics={"accuracy": 0.5}, n=20, scoring="choice", demo=True)
    d.update(over)
    write_metrics(path, d)
    return path


@pytest.fixture(scope="module")
def points(tmp_path_factory):
    """The pipeline's layout, no bootstrap: the unedited model evaluated once (method "base"), edits from step 1."""
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
    return root / "out" / "points.parquet"


@pytest.fixture(scope="module")
def page(points, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(points, out, context=CONTEXT)
    return out.read_text(encoding="utf-8")


# --- scores with bootstrap replicates: rome loses answers at step 2, rome+rect20 changes nothing -----------

ITEMS = [f"item{i}" for i in range(40)]
EDIT_IDS = [f"edit{i}" for i in range(10)]
BOOT = Bootstrap(200, seed=0)


def scored(path, task, scores, *, scoring, ids=ITEMS, **labels):
    """A metric record whose metrics ({name: per-item scores}) carry bootstrap replicates over `ids`."""
    metrics = {name: float(np.mean(s)) for name, s in scores.items()}
    reps = {name: BOOT.replicates(task, ids, np.asarray(s, dtype=float)) for name, s in scores.items()}
    rec = dict(model="tiny", method="rome", reg="none", setting="instance_sequential", seq=0, step=0, task=task,
               metrics=metrics, n=len(ids), scoring=scoring, demo=False, bootstrap=BOOT.block(task, ids, reps))
    rec.update(labels)
    write_metrics(path, rec)
    return path


def lost(scores, k):
    """The scores with the first k right answers lost."""
    out = np.array(scores, dtype=float)
    out[np.flatnonzero(out)[:k]] = 0.0
    return out


def bootstrap_points(root, choice=True):
    sst2 = np.array([1.0] * 24 + [0.0] * 16)
    gsm8k = np.array([1.0] * 16 + [0.0] * 24)
    tasks = {"gsm8k": ("solve_rate", gsm8k, "generate", 8)}
    if choice:
        tasks["sst2"] = ("accuracy", sst2, "choice", 12)
    files = []

    def add(task, scores, **labels):
        metric, _, scoring, _ = tasks[task]
        files.append(scored(root / f"{len(files)}.json", task, {metric: scores}, scoring=scoring, **labels))

    for task, (_, scores, _, _) in tasks.items():
        add(task, scores, method="base", setting="base")
    for reg in ("none", "rect20"):
        for step in (1, 2):
            for task, (_, scores, _, k) in tasks.items():
                add(task, lost(scores, k) if (reg, step) == ("none", 2) else scores, reg=reg, step=step)
            rel = np.array([1.0] * (10 - step) + [0.0] * step)
            files.append(scored(root / f"{len(files)}.json", "editing",
                                {"reliability": rel, "reliability_all": lost(rel, step)}, scoring="teacher_forced",
                                ids=EDIT_IDS, reg=reg, step=step))
    aggregate(files, root / "out")
    return root / "out" / "points.parquet"


@pytest.fixture(scope="module")
def boot_points(tmp_path_factory):
    return bootstrap_points(tmp_path_factory.mktemp("boot"))


@pytest.fixture(scope="module")
def boot_page(boot_points, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(boot_points, out, context=CONTEXT)
    return out.read_text(encoding="utf-8")


def embedded_spec(page, name="spec"):
    (spec,) = re.findall(r"const %s = (\{.*\});\n" % name, page)
    return json.loads(spec)


def block_rows(spec, block):
    """The rows of every dataset one block of the chart plots."""
    names = re.findall(r'"data": \{"name": "([^"]+)"\}', json.dumps(block))
    return [row for name in dict.fromkeys(names) for row in spec["datasets"][name]]


def views(node, data=None):
    """(view, the dataset its lines draw) for every titled view in a spec, depth first; altair lifts a
    dataset that several views share to their parent."""
    if isinstance(node, dict):
        data = node.get("data", data)
        if isinstance(node.get("title"), dict) and "layer" in node:
            line = next(layer for layer in node["layer"] if layer["mark"]["type"] == "line")
            yield node, line.get("data", data)
        for value in node.values():
            yield from views(value, data)
    elif isinstance(node, list):
        for value in node:
            yield from views(value, data)


def view(spec, title):
    (hit,) = [v for v, _ in views(spec) if v["title"]["text"] == title]
    return hit


def view_rows(spec, title, within=None):
    """The rows the view titled `title` (in the part `within` of the spec) draws its lines from."""
    (name,) = [data["name"] for v, data in views(within or spec) if v["title"]["text"] == title]
    return spec["datasets"][name]


def layer_marks(chart):
    return [layer["mark"]["type"] for layer in chart["layer"]]


def numbers(page):
    return page.split("<h2>Numbers</h2>")[1]


# --- headline -----------------------------------------------------------------------------------------


def point(config, step, task, metric, value, delta=math.nan, ci=(math.nan, math.nan), interval=(math.nan, math.nan),
          sig=False, scoring="generate", kind="general", setting="instance_sequential", edits=None):
    method, _, reg = config.partition("+")
    return dict(model="tiny", method=method, reg=reg or "none", config=config, setting=setting, step=step,
                edits=step if edits is None else edits, task=task, metric=metric, value=value, lo=interval[0],
                hi=interval[1], delta=delta, delta_lo=ci[0], delta_hi=ci[1], significant=sig,
                primary=kind != "editing", kind=kind, scoring=scoring, demo=False, n=100, n_seqs=1,
                higher_is_better=metric != "perplexity")


def test_headline_states_the_change_its_interval_and_the_first_significant_drop():
    rows = []
    for config in ("rome", "rome+rect"):
        rows += [point(config, 0, t, m, v, 0.0, (0.0, 0.0), scoring=s)
                 for t, m, v, s in (("gsm8k", "solve_rate", 0.3, "generate"), ("rte", "accuracy", 0.7, "choice"))]
    # rome: perplexity and mean general ability move significantly from 2 edits on
    for step, ppl, ppl_ci, sig in ((0, 0.0, (0.0, 0.0), False), (1, 0.5, (-0.1, 1.1), False),
                                   (2, 1.0, (0.4, 1.6), True), (4, 2.0, (1.2, 2.8), True)):
        rows.append(point("rome", step, "perplexity", "perplexity", 20.0 + ppl, ppl, ppl_ci, sig=sig,
                          scoring="loglikelihood", kind="probe"))
    for step, d, ci, sig in ((0, 0.0, (0.0, 0.0), False), (1, -0.01, (-0.03, 0.01), False),
                             (2, -0.02, (-0.035, -0.005), True), (4, -0.04, (-0.06, -0.02), True)):
        rows.append(point("rome", step, "mean_general", "mean_general", 0.5 + d, d, ci, sig=sig, scoring="mixed"))
    rows += [point("rome", 4, "editing", "reliability", 0.9, interval=(0.8, 1.0), scoring="teacher_forced",
                   kind="editing"),
             point("rome", 4, "editing", "reliability_all", 0.75, interval=(0.6, 0.85), scoring="teacher_forced",
                   kind="editing")]
    # rome+rect: no significant rise in perplexity; mean general ability significantly better at 1 edit only
    for step, ppl, ppl_ci in ((0, 0.0, (0.0, 0.0)), (1, 0.1, (-0.2, 0.4)), (4, 0.2, (-0.3, 0.7))):
        rows.append(point("rome+rect", step, "perplexity", "perplexity", 20.0 + ppl, ppl, ppl_ci,
                          scoring="loglikelihood", kind="probe"))
    for step, d, ci, sig in ((0, 0.0, (0.0, 0.0), False), (1, 0.01, (0.002, 0.018), True),
                             (4, -0.005, (-0.02, 0.01), False)):
        rows.append(point("rome+rect", step, "mean_general", "mean_general", 0.5 + d, d, ci, sig=sig,
                          scoring="mixed"))
    rows.append(point("rome+rect", 4, "editing", "reliability", 0.85, scoring="teacher_forced", kind="editing"))
    table = pd.DataFrame(rows, columns=POINT_COLUMNS)
    assert headline(table) == [
        "ROME: held-out perplexity +10.0% after 4 edits (95% CI +6.0% to +14.0%), first significant rise at 2 edits; "
        "mean general ability −4.0 points (95% CI −6.0 to −2.0), first significant drop at 2 edits; "
        "reliability 0.90 (95% CI 0.80–1.00), reliability over all edits so far 0.75 (95% CI 0.60–0.85).",
        "ROME + RECT: held-out perplexity +1.0% after 4 edits (95% CI −1.5% to +3.5%), no significant change at "
        "any step (up to 4 edits); mean general ability −0.5 points (95% CI −2.0 to +1.0), no significant drop at "
        "any step (up to 4 edits); reliability 0.85.",
        f"Mean general ability includes choice-scored tasks (rte): {CHOICE_MARK}.",
    ]


def test_headline_names_settings_and_says_when_there_is_no_interval():
    rows = [point("rome", s, "mean_general", "mean_general", v, setting="instance_single", edits=min(s, 1))
            for s, v in ((0, 0.5), (1, 0.45), (2, 0.47))]  # steps: records edited alone, no replicates
    rows += [point("rome", 0, "mean_general", "mean_general", 0.5, 0.0, (0.0, 0.0), setting="batch_sequential"),
             point("rome", 1, "mean_general", "mean_general", 0.4, -0.1, (-0.15, -0.05), sig=True,
                   setting="batch_sequential", edits=4)]
    assert headline(pd.DataFrame(rows, columns=POINT_COLUMNS), level=0.9) == [
        "ROME (instance_single): mean general ability −3.0 points at step 2 (no interval: no bootstrap replicates).",
        "ROME (batch_sequential): mean general ability −10.0 points after 4 edits (90% CI −15.0 to −5.0), "
        "first significant drop at 4 edits.",
    ]


def test_page_opens_with_the_headline(boot_points, boot_page):
    sentences = headline(pd.read_parquet(boot_points))
    assert sentences[0].startswith("ROME: mean general ability −25.0 points after 2 edits (95% CI ")
    assert sentences[0].split("), ")[1].startswith("first significant drop at 2 edits; reliability 0.80")
    assert sentences[1].startswith("ROME + rect20: mean general ability 0.0 points after 2 edits (95% CI 0.0 to 0.0), "
                                   "no significant change at any step (up to 2 edits)")
    top = boot_page.split("<h2>Datasets</h2>")[0]
    assert top.index("<h1>") < top.index("<h2>Headline</h2>")
    assert all(f"<li>{html.escape(s)}</li>" in top for s in sentences)


# --- charts -------------------------------------------------------------------------------------------


def test_curves_have_bands_a_reference_rule_and_marked_significant_points(boot_page):
    spec = embedded_spec(boot_page)
    mean = view(spec, "Mean general ability vs number of edits")
    assert layer_marks(mean) == ["area", "rule", "line", "point", "point"]
    area, rule, _, _, sig = mean["layer"]
    assert (area["encoding"]["y"]["field"], area["encoding"]["y2"]["field"]) == ("lo", "hi")
    assert area["mark"]["opacity"] < 1
    assert rule["transform"][0] == {"filter": "datum.step == 0"} and rule["encoding"]["y"]["aggregate"] == "mean"
    assert rule["encoding"]["strokeDash"]["scale"] == {"domain": [REFERENCE], "range": [[6, 4]]}
    assert sig["transform"][0] == {"filter": "datum.significant"}
    assert sig["encoding"]["shape"]["scale"]["domain"] == [SIG_LABEL]
    assert all(layer["encoding"]["y"]["scale"] == {"nice": True, "zero": False} for layer in mean["layer"])
    rows = view_rows(spec, "Mean general ability vs number of edits")
    by_point = {(r["config"], r["edits"]): r for r in rows}
    assert by_point[("rome", 2)]["significant"] and by_point[("rome", 2)]["value"] == pytest.approx((0.3 + 0.2) / 2)
    assert by_point[("rome", 2)]["lo"] < by_point[("rome", 2)]["value"] < by_point[("rome", 2)]["hi"]
    assert not by_point[("rome+rect20", 2)]["significant"] and by_point[("rome", 0)]["value"] == 0.5
    delta = view(spec, "Change in mean general ability vs the unedited model")
    assert [layer["encoding"]["y"]["field"] for layer in delta["layer"][:3]] == ["delta_lo", "delta", "delta"]
    assert delta["layer"][1]["encoding"]["y"]["aggregate"] == "mean"  # the unedited model's difference: 0


def test_tradeoff_plots_reliability_against_general_ability(boot_page):
    spec = embedded_spec(boot_page)
    chart = view(spec, "Trade-off: editing success vs retained general ability")
    line = next(layer for layer in chart["layer"] if layer["mark"]["type"] == "line")
    assert (line["encoding"]["x"]["field"], line["encoding"]["y"]["field"]) == ("reliability", "general")
    assert line["encoding"]["order"]["field"] == "step"
    bars = [(layer["encoding"].get("x2", {}).get("field"), layer["encoding"].get("y2", {}).get("field"))
            for layer in chart["layer"] if layer["mark"]["type"] == "rule" and "strokeDash" not in layer["encoding"]]
    assert bars == [("reliability_hi", None), (None, "general_hi")]
    rows = {(r["config"], r["edits"]): r for r in view_rows(spec, chart["title"]["text"])}
    assert set(rows) == {(c, e) for c in ("rome", "rome+rect20") for e in (1, 2)}  # no editing metrics at step 0
    assert rows[("rome", 2)]["reliability"] == 0.8 and rows[("rome", 2)]["general"] == pytest.approx(0.25)


def test_choice_scored_results_are_marked_everywhere_they_appear(boot_page, tmp_path):
    spec = embedded_spec(boot_page)
    assert view(spec, "sst2: accuracy")["title"]["subtitle"] == [CHOICE_MARK]
    assert view(spec, "gsm8k: solve_rate")["title"]["subtitle"] == ["generate scoring"]
    for title in ("Mean general ability vs number of edits", "Change in mean general ability vs the unedited model",
                  "Trade-off: editing success vs retained general ability"):
        assert any(CHOICE_MARK in line for line in view(spec, title)["title"]["subtitle"]), title
    heads = re.findall(r"<th>([^<]*)<br><small>([^<]*)</small></th>", numbers(boot_page))
    marked = {head for head, note in heads if html.escape(CHOICE_MARK) in note}
    assert marked == {"mean general ability", "sst2: accuracy"}
    assert html.escape(CHOICE_MARK) in boot_page.split("<h2>Datasets</h2>")[0]  # the headline says so too
    generate_only = bootstrap_points(tmp_path, choice=False)
    build_report(generate_only, tmp_path / "r.html", context=CONTEXT)
    other = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "not the paper" not in other


def test_number_tables_show_intervals_and_paired_differences(boot_page):
    table = numbers(boot_page)
    # sst2 at step 2 of rome: 12 of 24 right answers lost, every resample agrees
    assert re.search(r'<td>0\.300 \[0\.\d{3}, 0\.\d{3}\]<br><span class="sig">Δ −0\.300 \[−0\.\d{3}, −0\.\d{3}\] \*'
                     r"</span></td>", table)
    assert '<td>0.600 [' in table and '<span class="delta">Δ 0.000 [0.000, 0.000]</span>' in table
    assert "<h4>Editing metrics</h4>" in table and "<td>0.800 [" in table


def test_spec_holds_the_plotted_values(page):
    spec = embedded_spec(page)
    (block,) = spec["vconcat"]  # one block per setting
    assert block["title"]["text"] == "Setting: instance_sequential"
    values = {(r["config"], r["edits"]): r["value"] for r in view_rows(spec, "Mean general ability vs number of edits")}
    # mean over tasks of the primary metric; the shared base is every curve's step 0
    assert values == {("rome", 0): 0.375, ("rome", 2): (0.375 + 0.0625) / 2,
                      ("rome+rect20", 0): 0.375, ("rome+rect20", 2): (0.4375 + 0.1875) / 2}
    assert {(r["config"], r["edits"]): r["value"] for r in view_rows(spec, "gsm8k: solve_rate")}[
        ("rome+rect20", 2)] == 0.1875
    assert {(r["config"], r["edits"]): r["value"] for r in view_rows(spec, "reliability")} == {
        ("rome", 2): 1.0, ("rome+rect20", 2): 0.875}
    # no replicates: no paired difference to chart, and no point is called significant
    assert "Change in mean general ability vs the unedited model" not in json.dumps(spec)
    assert "datum.significant" not in json.dumps(spec)


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
    assert "<td>0.188</td>" in numbers(page)  # the number table follows the charts; no interval without replicates
    assert "ROME + rect20: mean general ability −6.2 points after 2 edits (no interval: no bootstrap replicates); " \
           "reliability 0.88." in page


def test_builds_are_byte_identical(boot_points, tmp_path):
    first, second = tmp_path / "first.html", tmp_path / "second.html"
    build_report(boot_points, first, context=CONTEXT)
    build_report(boot_points, second, context=CONTEXT)
    assert first.read_bytes() == second.read_bytes()
    build_report(boot_points.with_suffix(".csv"), tmp_path / "csv.html", context=CONTEXT)  # empty fields: NaN
    assert (tmp_path / "csv.html").read_bytes() == first.read_bytes()


def test_both_specs_compile_to_vega(boot_page, weight_page):
    assert vl_convert.vegalite_to_vega(embedded_spec(boot_page))["marks"]
    for name in ("spec", "weightsSpec"):
        assert vl_convert.vegalite_to_vega(embedded_spec(weight_page, name))["marks"]


def test_one_model_per_report(tmp_path):
    files = [metric_file(tmp_path / "a.json", model="small"), metric_file(tmp_path / "b.json", model="large",
                                                                          metrics={"accuracy": 0.75})]
    aggregate(files, tmp_path / "out")
    points = tmp_path / "out" / "points.parquet"
    with pytest.raises(ValueError, match=r"\['large', 'small'\]"):
        build_report(points, tmp_path / "r.html", context=CONTEXT)
    build_report(points, tmp_path / "r.html", context={**CONTEXT, "model": "large"})
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert [r["value"] for r in view_rows(spec, "Mean general ability vs number of edits")] == [0.75]


def test_bad_inputs_are_named(points, tmp_path):
    with pytest.raises(ValueError, match="'edit_dataset'"):
        build_report(points, tmp_path / "r.html", context={k: v for k, v in CONTEXT.items() if k != "edit_dataset"})
    bad = {**CONTEXT, "datasets": [{"name": "x", "source": "y", "licence": "z"}]}
    with pytest.raises(ValueError, match=r"datasets\[0\]\.attribution"):
        build_report(points, tmp_path / "r.html", context=bad)
    with pytest.raises(ValueError, match=r"metrics.parquet: missing column\(s\) \['n_seqs', 'higher_is_better'\]"):
        build_report(points.with_name("metrics.parquet"), tmp_path / "r.html", context=CONTEXT)
    assert not (tmp_path / "r.html").exists()


def test_general_only_table_gives_general_charts_only(tmp_path):
    aggregate([metric_file(tmp_path / "a.json"), metric_file(tmp_path / "b.json", step=1)], tmp_path / "out")
    build_report(tmp_path / "out" / "points.csv", tmp_path / "r.html", context=CONTEXT)
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert [v["title"]["text"] for v, _ in views(spec)] == ["Mean general ability vs number of edits", "sst2: accuracy"]
    assert spec["vconcat"][0]["vconcat"][1]["title"]["text"] == "General ability per task vs number of edits"


def editing_file(path, metrics, **over):
    return metric_file(path, task="editing", scoring="teacher_forced", metrics=metrics, **over)


def test_curves_use_edits_per_setting_and_steps_where_records_are_edited_alone(tmp_path):
    """batch_sequential (batch size 4) at step 2 holds 8 edits; instance_single's steps each hold one
    edit, so its points run along the step; settings get blocks of their own in editharm.settings' order."""
    files = [metric_file(tmp_path / "base.json", method="base", setting="base", step=0)]
    runs = [("batch_sequential", 2, 8, 0.25, 0.5), ("instance_single", 1, 1, 0.5, 1.0),
            ("instance_single", 2, 1, 0.75, 0.5)]
    for setting, step, edits, acc, rel in runs:
        over = dict(setting=setting, step=step, edits=edits)
        files += [metric_file(tmp_path / f"{setting}-{step}.json", metrics={"accuracy": acc}, **over),
                  editing_file(tmp_path / f"{setting}-{step}-e.json", {"reliability": rel, "reliability_all": rel / 2,
                                                                      "fluency": 5.0, "zz_custom": 0.1}, **over)]
    aggregate(files, tmp_path / "out")
    build_report(tmp_path / "out" / "points.parquet", tmp_path / "r.html", context=CONTEXT)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    spec = embedded_spec(page)
    assert [b["title"]["text"] for b in spec["vconcat"]] == ["Setting: instance_single", "Setting: batch_sequential"]
    single, batch = spec["vconcat"]
    mean = view(single, "Mean general ability per record edited alone")
    assert mean["layer"][0]["encoding"]["x"]["title"] == "step (record s edited alone into the unedited model)"
    assert {(r["x"], r["edits"], r["value"]) for r in view_rows(spec, mean["title"]["text"], single)} == {
        (0, 0, 0.5), (1, 1, 0.5), (2, 1, 0.75)}
    assert {(r["x"], r["value"]) for r in view_rows(spec, "Mean general ability vs number of edits", batch)} == {
        (0, 0.5), (8, 0.25)}
    editing = single["vconcat"][-1]
    assert editing["title"]["text"] == "Editing metrics per record edited alone"
    assert [c["title"]["text"] for c in editing["concat"]] == ["reliability", "fluency", "reliability_all", "zz_custom"]
    assert {r["value"] for r in block_rows(spec, editing["concat"][2])} == {0.5, 0.25}
    assert ("instance_single: one record edited alone per step (steps 0, 1, 2); "
            "batch_sequential: up to 8 (evaluated after 0, 8 edits)") in page


def test_editing_metrics_per_dataset_of_a_mixed_sequence_get_panels_of_their_own(tmp_path):
    files = [metric_file(tmp_path / "base.json", method="base", setting="base", step=0)]
    for step in (1, 2):
        over = dict(setting="instance_sequential", step=step, edits=step)
        files += [metric_file(tmp_path / f"{step}.json", metrics={"accuracy": 0.5}, **over),
                  editing_file(tmp_path / f"{step}-e.json", {"reliability_all": 0.5, "zsre:reliability_all": 0.25 * step,
                                                             "zsre:locality_all": 0.75}, **over)]
    aggregate(files, tmp_path / "out")
    build_report(tmp_path / "out" / "points.parquet", tmp_path / "r.html", context=CONTEXT)
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    editing = spec["vconcat"][0]["vconcat"][-1]
    titles = [(c["title"]["text"], c["title"]["subtitle"]) for c in editing["concat"]]
    assert titles == [("reliability_all", ["over every edit made so far"]),
                      ("zsre:locality_all", ["share of base-model answer tokens unchanged", "over every edit made so far"]),
                      ("zsre:reliability_all", ["over every edit made so far"])]
    assert {r["value"] for r in block_rows(spec, editing["concat"][2])} == {0.25, 0.5}


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
def weight_page(points, weight_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    build_report(points, out, context=CONTEXT, weights=weight_files[0], heatmaps=weight_files[1])
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


def test_weight_builds_are_byte_identical(points, weight_files, tmp_path):
    for name in ("first", "second"):
        build_report(points, tmp_path / f"{name}.html", context=CONTEXT, weights=weight_files[0],
                     heatmaps=weight_files[1])
    assert (tmp_path / "first.html").read_bytes() == (tmp_path / "second.html").read_bytes()


def test_weight_files_are_checked(points, weight_files, tmp_path):
    with pytest.raises(ValueError, match="both files or neither"):
        build_report(points, tmp_path / "r.html", context=CONTEXT, weights=weight_files[0])
    pd.read_parquet(weight_files[0]).drop(columns="edits").to_parquet(tmp_path / "w.parquet")
    with pytest.raises(ValueError, match=r"w.parquet: missing column\(s\) \['edits'\]"):
        build_report(points, tmp_path / "r.html", context=CONTEXT, weights=tmp_path / "w.parquet",
                     heatmaps=weight_files[1])
    assert not (tmp_path / "r.html").exists()
