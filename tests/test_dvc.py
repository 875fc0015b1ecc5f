"""DVC over the Snakemake workflow: `dvc repro` runs it, then has nothing to do, and a params change
reruns only the jobs that depend on it."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from test_workflow import ROOT, job_counts, tiny_params

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.workflow


def run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def test_dvc_repro_then_nothing_to_do_then_only_the_changed_branch(tmp_path_factory):
    repo = tmp_path_factory.mktemp("dvc-repo")
    for name in ("Snakefile", "dvc.yaml"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("rules", "src/editharm"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_params(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(repo, "git", "init", "-q")
    run(repo, str(BIN / "dvc"), "init", "-q")

    first = run(repo, str(BIN / "dvc"), "repro")
    assert job_counts(first)["apply_edits_instance_sequential"] == 2
    assert (repo / "reports/index.html").exists() and (repo / "dvc.lock").exists()

    again = run(repo, str(BIN / "dvc"), "repro")
    assert "didn't change, skipping" in again or "up to date" in again
    assert "Job stats" not in again  # Snakemake was not even started

    params["regularizers"]["rect"]["k"] = 0.25
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    changed = run(repo, str(BIN / "dvc"), "repro")
    counts = job_counts(changed)
    assert counts == {"apply_edits_instance_sequential": 1, "evaluate_instance_sequential": 2,
                      "evaluate_edits_instance_sequential": 1, "weight_stats": 1, "aggregate_metrics": 1,
                      "build_report": 1, "all": 1, "total": 8}
    assert "up to date" in run(repo, str(BIN / "dvc"), "status")
