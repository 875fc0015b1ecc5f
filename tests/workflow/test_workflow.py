"""The workflow end to end: a dry run of the default grid, and a full run of a tiny config."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import make_tokenizer

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or dict(os.environ)
    env = {**env, "PATH": f"{BIN}{os.pathsep}{env['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True, text=True, env=env, cwd=workdir,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a Snakemake run or dry run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def test_default_grid_dry_run_job_counts(tmp_path):
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(ROOT / "params.yaml"))
    counts = job_counts(proc.stdout + proc.stderr)
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    (setting,) = cfg["settings"]
    configs = len(cfg["methods"]) * len(cfg["regularizers"]) * cfg["sequences"]["count"]
    tasks = len(cfg["evaluation"]["tasks"])
    assert counts == {
        "all": 1,
        "fetch_model": 1,
        "fetch_dataset": 9,
        "fetch_corpus": 1,
        "collect_stats": 1,  # one (model, module), shared by both configurations
        "make_sequence": 1,  # one sequence, shared by both configurations
        f"apply_edits_{setting}": configs,
        "weight_change": configs,
        "evaluate_base": tasks,
        # one job per (configuration, task) covers every checkpoint step of the setting
        f"evaluate_{setting}": configs * tasks,
        f"evaluate_edits_{setting}": configs,
        # held-out perplexity: the texts once, the unedited model once, one job per configuration
        "make_heldout": 1,
        "evaluate_perplexity_base": 1,
        f"evaluate_perplexity_{setting}": configs,
        "aggregate_metrics": 1,
        "build_report": 1,
        "total": 18 + 2 * configs + tasks + configs * (tasks + 2),
    }


def tiny_params(work: Path) -> dict:
    """A tiny random Llama, 3 edits, 2 tasks, 4 items each, ROME with and without RECT."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer(add_bos=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    ))
    model.save_pretrained(work / "tiny-model")
    tok.save_pretrained(work / "tiny-model")
    (work / "corpus.txt").write_text("\n\n".join(
        f"The capital of country {i} is a city with a river and a king who was born in {1900 + i}. " * 4
        for i in range(30)
    ))
    return {
        "seed": 0, "device": "cpu", "threads": 1,
        "models": {"tiny": {"source": f"local:{work / 'tiny-model'}", "preset": "tiny-llama"}},
        "datasets": {"zsre": "embedded:demo", "sst2": "embedded:demo", "gsm8k": "embedded:demo"},
        "sequences": {"dataset": "zsre", "n_edits": 3, "count": 1},
        "settings": {"instance_sequential": {}},
        "methods": {"rome": {}},
        "regularizers": {"none": {}, "rect": {"k": 0.5}},
        "steps": [0, 1, 3],
        "evaluation": {"limit": 4, "batch_size": 4,
                       "tasks": {"sst2": {}, "gsm8k": {"max_new_tokens": 8}}},
        "stats": {"corpus": f"local:{work / 'corpus.txt'}", "n": 20, "max_length": 32},
        "report": {"title": "tiny"},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("tiny-run")
    (work / "tiny.yaml").write_text(yaml.safe_dump(tiny_params(work)))
    proc = snakemake(work, "--cores", "2", "--configfile", str(work / "tiny.yaml"))
    return work, proc


def test_tiny_run_writes_report_and_artifacts(tiny_run):
    work, proc = tiny_run
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["apply_edits_instance_sequential"] == 2 and counts["evaluate_instance_sequential"] == 2 * 2 and counts["evaluate_base"] == 2
    html = (work / "reports/index.html").read_text()
    assert "demo data" in html and "tiny" in html and "<script src=" not in html
    edits = work / "data/edits/tiny/rome"
    for reg in ("none", "rect"):
        assert sorted(p.name for p in (edits / reg / "instance_sequential/seq0").glob("*.safetensors")) == [
            "step-0.safetensors", "step-1.safetensors", "step-3.safetensors"]
    table = pd.read_parquet(work / "reports/metrics/metrics.parquet")
    assert set(table["task"]) == {"sst2", "gsm8k", "editing"}
    assert set(table[table.task == "editing"]["step"]) == {1, 3}
    summary = json.loads((work / "reports/metrics/summary.json").read_text())
    assert "tiny" in summary
    preds = pd.read_parquet(work / "data/eval/tiny/rome/rect/instance_sequential/seq0/step-3/sst2.parquet")
    assert list(preds.columns)[:5] == ["id", "prompt", "prediction", "reference", "score"] and len(preds) == 4


def test_rect_keeps_the_configured_share_in_the_pipeline(tiny_run):
    from editharm.model.deltas import load_delta

    work, _ = tiny_run
    step1, _ = load_delta(work / "data/edits/tiny/rome/rect/instance_sequential/seq0/step-1.safetensors")
    (name, delta), = step1.items()
    assert (delta != 0).sum().item() == -(-delta.numel() // 2)  # ceil(0.5 * n) entries survive one edit


def test_rerun_with_nothing_changed_does_nothing(tiny_run):
    work, _ = tiny_run
    proc = snakemake(work, "-n", "--cores", "2", "--configfile", str(work / "tiny.yaml"))
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_a_local_source_is_tracked_by_content(tiny_run):
    work, _ = tiny_run
    corpus, config = work / "corpus.txt", str(work / "tiny.yaml")
    original = corpus.read_text()
    os.utime(corpus)  # touched, same bytes: nothing to do
    assert "Nothing to be done" in snakemake(work, "-n", "--configfile", config).stdout
    corpus.write_text(original.replace("river", "lake", 1))  # fixed in place
    counts = job_counts(snakemake(work, "-n", "--configfile", config).stdout)
    assert counts["fetch_corpus"] == 1 and counts["collect_stats"] >= 1
    corpus.write_text(original)
    assert "Nothing to be done" in snakemake(work, "-n", "--configfile", config).stdout


def test_changing_rect_k_reruns_only_the_rect_branch(tiny_run):
    work, _ = tiny_run
    params = yaml.safe_load((work / "tiny.yaml").read_text())
    params["regularizers"]["rect"]["k"] = 0.25
    (work / "tiny-k.yaml").write_text(yaml.safe_dump(params))
    proc = snakemake(work, "-n", "--cores", "2", "--configfile", str(work / "tiny-k.yaml"))
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts == {"apply_edits_instance_sequential": 1, "evaluate_instance_sequential": 2,
                      "evaluate_edits_instance_sequential": 1, "weight_change": 1, "aggregate_metrics": 1,
                      "build_report": 1, "all": 1, "total": 8}
    jobs = proc.stdout + proc.stderr
    assert "reg=rect" in jobs and "reg=none" not in jobs


METHOD_KINDS = ["rome", "memit", "alphaedit", "kn", "ft_l", "ft_m", "mend"]
REG_SPECS = {"none": {}, "rect": {"k": 0.5}, "random": {"k": 0.5}, "pca": {"k": 0.5}, "prune": {},
             "nullspace": {"threshold": 0.01, "relative": True}}
SETTING_SPECS = {"instance_single": {}, "instance_sequential": {}, "batch_single": {"batch_sizes": [2, 3]},
                 "batch_sequential": {"batch_size": 2}}


def grid_params(work: Path, methods, regs, settings) -> dict:
    params = tiny_params(work)
    params["datasets"]["zsre_train"] = "embedded:demo"
    params["methods"] = {m: ({"train_dataset": "zsre_train"} if m == "mend" else {}) for m in methods}
    params["regularizers"] = {r: REG_SPECS[r] for r in regs}
    params["settings"] = {s: SETTING_SPECS[s] for s in settings}
    params["evaluation"] = {"limit": 2, "batch_size": 2, "fluency_tokens": 4, "tasks": {"sst2": {}}}
    return params


def test_full_grid_dry_run_job_counts(tmp_path):
    """Every method × regularizer × setting in one params file, with the job counts worked out by hand."""
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid_params(tmp_path, METHOD_KINDS, REG_SPECS, SETTING_SPECS)))
    proc = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(tmp_path / "grid.yaml"))
    counts = job_counts(proc.stdout + proc.stderr)
    configs = 7 * 6
    # one evaluation job per (configuration, task) and setting, whatever its checkpoint steps
    # statistics: down_proj 1 (ROME), 0 and 1 (MEMIT, AlphaEdit), 2 (KN, for nullspace), gate/up of layers 1
    # and 2 (MEND, for nullspace): 7 modules, each computed once for every method and regularizer reading it
    assert counts == {
        "fetch_model": 1, "fetch_dataset": 3, "fetch_corpus": 1, "make_sequence": 1, "collect_stats": 7,
        "train_editor": 1,
        **{f"apply_edits_{s}": configs for s in SETTING_SPECS},
        "weight_change": configs * 4, "evaluate_base": 1,
        **{f"evaluate_{s}": configs for s in SETTING_SPECS}, **{f"evaluate_edits_{s}": configs for s in SETTING_SPECS},
        "aggregate_metrics": 1, "build_report": 1, "all": 1,
        "total": 18 + configs * 4 + configs * 4 + 2 * configs * 4,
    }


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """Each method, each regularizer and each setting through the real pipeline, in three runs sharing one
    working directory (so the later runs reuse the model, data, sequence, statistics and base evaluation)."""
    work = tmp_path_factory.mktemp("grid-run")
    runs = {
        "methods": (METHOD_KINDS, ["none"], ["batch_sequential"]),
        "regs": (["rome"], list(REG_SPECS), ["instance_sequential"]),
        "settings": (["memit"], ["none"], ["instance_single", "batch_single"]),
    }
    procs = {}
    for name, (methods, regs, settings) in runs.items():
        (work / f"{name}.yaml").write_text(yaml.safe_dump(grid_params(work, methods, regs, settings)))
        procs[name] = snakemake(work, "--cores", "2", "--configfile", str(work / f"{name}.yaml"))
    return work, procs


def test_every_method_regularizer_and_setting_runs_to_a_report(grid_run):
    from editharm.model.deltas import delta_layout, load_delta

    work, procs = grid_run
    counts = {name: job_counts(p.stdout + p.stderr) for name, p in procs.items()}
    assert counts["methods"]["train_editor"] == 1 and counts["methods"]["apply_edits_batch_sequential"] == 7
    # statistics computed in the first run are reused: the later runs compute only modules new to them
    assert "collect_stats" not in counts["settings"]
    assert "Weight change" in (work / "reports/index.html").read_text()
    edits = work / "data/edits/tiny"
    for method in METHOD_KINDS:
        delta, meta = load_delta(edits / method / "none/batch_sequential/seq0/step-1.safetensors")
        assert meta["edits"] == 2 and len(meta["record_ids"]) == 2 and meta["latest_ids"] == meta["record_ids"]
        assert any(d.abs().sum() > 0 for d in delta.values()), method
    # rank-one ROME sums stay factored on disk; RECT's survivors are stored as a mask
    assert {e["format"] for e in delta_layout(edits / "rome/none/instance_sequential/seq0/step-3.safetensors").values()} == {"lowrank"}
    assert {e["format"] for e in delta_layout(edits / "rome/rect/instance_sequential/seq0/step-1.safetensors").values()} == {"masked"}
    weights = pd.read_parquet(work / "data/eval/tiny/rome/prune/instance_sequential/seq0/weights.parquet")
    assert list(weights["step"]) == [0, 1, 3] and weights["manhattan"].iloc[0] == 0
    singles = pd.read_parquet(work / "reports/metrics/metrics.parquet")
    edits_col = singles[(singles.setting == "batch_single") & (singles.task == "editing")]
    assert sorted(set(edits_col["edits"])) == [2, 3]
    assert set(singles[(singles.setting == "instance_single") & (singles.step > 0)]["edits"]) == {1}
    assert {"reliability", "reliability_all", "fluency"} <= set(singles[singles.task == "editing"]["metric"])
