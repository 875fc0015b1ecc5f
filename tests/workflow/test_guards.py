"""The checks as Snakemake runs them: a bad params.yaml or a broken local model stops the run when the
Snakefile is read (no job, nothing under data/), naming the file, line or key; and the venv's snakemake
finds the project's CLI without an activated venv."""
import os
import shutil
import subprocess

import pytest
import yaml
from test_workflow import BIN, ROOT, tiny_params

pytestmark = pytest.mark.workflow


def bare_snakemake(workdir, *args, path="/usr/bin:/bin"):
    """The venv's snakemake as a user runs it without activating the venv (PATH without its bin)."""
    env = {**os.environ, "PATH": path, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, env=env, cwd=workdir)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    work = tmp_path_factory.mktemp("guards")
    params = tiny_params(work)
    params["evaluation"]["tasks"] = {"sst2": {}}
    return work, params


def write(work, text):
    (work / "params.yaml").write_text(text)
    shutil.rmtree(work / "data", ignore_errors=True)


@pytest.mark.parametrize("breakage, expected", [
    (lambda t: t.replace("steps:\n", "steps: [0, 1\n", 1), ["params.yaml, line", "column", "not valid YAML"]),
    (lambda t: t.replace("methods:\n  rome: {}\n", "methods:\n  rome: {}\n  rome: {}\n"),
     ["params.yaml, line", "key 'rome' is written twice", "allowed: each key once"]),
], ids=["yaml-syntax", "method-twice"])
def test_a_bad_params_file_stops_the_run_before_any_job(project, breakage, expected):
    work, params = project
    write(work, breakage(yaml.safe_dump(params, sort_keys=False)))
    proc = bare_snakemake(work, "--cores", "1")
    assert proc.returncode != 0
    for needle in expected:
        assert needle in proc.stderr, proc.stderr[-3000:]
    assert not (work / "data").exists()


def test_a_truncated_local_model_stops_the_run_naming_the_file(project, tmp_path):
    work, params = project
    broken = tmp_path / "tiny-model"
    shutil.copytree(work / "tiny-model", broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    params = {**params, "models": {"tiny": {**params["models"]["tiny"], "source": f"local:{broken}"}}}
    write(work, yaml.safe_dump(params, sort_keys=False))
    proc = bare_snakemake(work, "--cores", "1")
    assert proc.returncode != 0
    assert "models.tiny.source" in proc.stderr and f"{weights}" in proc.stderr
    assert not (work / "data").exists()


def test_the_venv_snakemake_runs_jobs_without_an_activated_venv(project):
    work, params = project
    write(work, yaml.safe_dump(params, sort_keys=False))
    proc = bare_snakemake(work, "--cores", "1", "data/datasets/sst2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "data" / "datasets" / "sst2" / "dev.tsv").is_file()
