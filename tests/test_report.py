import json
import re

import pytest

from editharm.aggregate import aggregate, write_metrics
from editharm.report import build_report

CONTEXT = {
    "model": "TinyOrg/tiny-llama",
    "model_source": "local config, revision 0123abc",
    "edit_dataset": "ZsRE demo (30 records)",
    "datasets": [
        {"name": "sst2", "source": "src/editharm/demo/sst2", "licence": "CC0", "demo": True},
        {"name": "gsm8k", "source": "src/editharm/demo/gsm8k", "licence": "MIT", "demo": True},
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


def embedded_spec(page):
    (spec,) = re.findall(r"const spec = (\{.*\});\n", page)
    return json.loads(spec)


def test_spec_holds_the_plotted_values(page):
    spec = embedded_spec(page)
    assert [c.get("mark", c.get("spec", {}).get("mark"))["type"] for c in spec["vconcat"]] == ["line"] * 3
    rows = [row for data in spec["datasets"].values() for row in data]
    mean = {(r["config"], r["step"]): r["mean_general"] for r in rows if "mean_general" in r}
    # mean over tasks of the primary metric, by hand; the shared base is every curve's step 0
    assert mean == {("rome", 0): 0.375, ("rome", 2): (0.375 + 0.0625) / 2,
                    ("rome+rect20", 0): 0.375, ("rome+rect20", 2): (0.4375 + 0.1875) / 2}
    panels = {(r["panel"], r["config"], r["step"]): r["value"] for r in rows if "panel" in r}
    assert panels[("gsm8k (solve_rate)", "rome+rect20", 2)] == 0.1875
    assert len({p for p, _, _ in panels}) == 2
    edit = {(r["metric"], r["config"], r["step"]): r["value"] for r in rows if "metric" in r and "panel" not in r}
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
    build_report(table, tmp_path / "r.html", context={**CONTEXT, "model_name": "large"})
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    rows = [r for data in spec["datasets"].values() for r in data if "mean_general" in r]
    assert [r["mean_general"] for r in rows] == [0.75]


def test_bad_context_names_the_key(table, tmp_path):
    with pytest.raises(ValueError, match="'edit_dataset'"):
        build_report(table, tmp_path / "r.html", context={k: v for k, v in CONTEXT.items() if k != "edit_dataset"})
    bad = {**CONTEXT, "datasets": [{"name": "x", "source": "y", "licence": "z"}]}
    with pytest.raises(ValueError, match=r"datasets\[0\]\.demo"):
        build_report(table, tmp_path / "r.html", context=bad)
    assert not (tmp_path / "r.html").exists()


def test_general_only_table_gives_general_charts_only(tmp_path):
    aggregate([metric_file(tmp_path / "a.json"), metric_file(tmp_path / "b.json", step=1)], tmp_path / "out")
    build_report(tmp_path / "out" / "metrics.csv", tmp_path / "r.html", context=CONTEXT)
    spec = embedded_spec((tmp_path / "r.html").read_text(encoding="utf-8"))
    assert [c.get("title", {}).get("text") for c in spec["vconcat"]] == [
        "Mean general ability vs number of edits", "General ability per task"]
