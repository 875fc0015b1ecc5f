"""The papers' grids as `--configfile` presets: each dry-runs to the job list worked out by hand."""
import pytest
from helpers import place_preset_downloads
from test_workflow import ROOT, job_counts, snakemake

pytestmark = pytest.mark.workflow

TASKS = 8


def rect_grid(model_stats_modules: int) -> dict[str, int]:
    # KN, ROME instance-sequential; MEND, MEMIT batch-single and batch-sequential; 8 regularizers each
    configs = 2 * 8
    settings = ("instance_sequential", "batch_single", "batch_sequential")
    counts = {
        "fetch_model": 1,
        "fetch_dataset": 10,  # zsre, MEND's train split, 8 tasks
        "fetch_corpus": 1,
        "collect_stats": model_stats_modules,
        "make_sequence": 1,
        "train_editor": 1,  # MEND, once
        **{f"apply_edits_{s}": configs for s in settings},
        "weight_change": 3 * configs,
        "evaluate_base": TASKS,
        **{f"evaluate_{s}": configs * TASKS for s in settings},
        **{f"evaluate_edits_{s}": configs for s in settings},
        "aggregate_metrics": 1, "build_report": 1, "all": 1,
    }
    return {**counts, "total": sum(counts.values())}


@pytest.mark.parametrize("preset, stats_modules", [
    ("rect-gpt2-xl", 5),  # ROME's layer 17 and MEMIT's 13-17: five c_proj modules
    ("rect-llama-2-7b", 5),  # MEMIT's layers 4-8 (ROME's Llama preset uses C = I)
])
def test_rect_presets_dry_run_to_the_paper_grid(tmp_path, preset, stats_modules):
    place_preset_downloads(tmp_path)
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(ROOT / "configs" / f"{preset}.yaml"))
    out = proc.stdout + proc.stderr
    assert job_counts(out) == rect_grid(stats_modules)
    # the paper pairs methods with settings: no KN batch edits, no MEMIT instance-sequential run
    jobs = [line for line in out.splitlines() if line.startswith("    output:")]
    assert not any("/kn/" in j and "batch_s" in j for j in jobs)
    assert not any("/memit/" in j and "instance_sequential" in j for j in jobs)
    assert any("/rect80/batch_sequential/seq0/step-64/gsm8k.json" in j for j in jobs)


def test_knowedit_preset_dry_runs_single_edits_of_each_method(tmp_path):
    place_preset_downloads(tmp_path)
    preset = str(ROOT / "configs" / "knowedit-llama-2-7b-chat.yaml")
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", preset)
    counts = {
        "fetch_model": 1, "fetch_dataset": 10, "fetch_corpus": 1,
        "collect_stats": 5,  # MEMIT's layers 4-8
        "make_sequence": 1, "train_editor": 1,
        "apply_edits_instance_single": 5, "weight_change": 5, "evaluate_base": TASKS,
        "evaluate_instance_single": 5 * TASKS, "evaluate_edits_instance_single": 5,
        "evaluate_lmeval_base": 1, "evaluate_lmeval": 5,  # KnowEdit's own tasks through lm-eval
        "aggregate_metrics": 1, "build_report": 1, "all": 1,
    }
    assert job_counts(proc.stdout + proc.stderr) == {**counts, "total": sum(counts.values())}
    # another KnowEdit dataset is one override away
    other = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", preset,
                      "--config", "sequences={dataset: knowedit_zsre}")
    out = other.stdout + other.stderr
    assert "data/datasets/knowedit_zsre" in out and "data/datasets/knowedit_recent" not in out
