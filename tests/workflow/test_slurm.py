"""The workflow on a real one-node SLURM cluster (tests/cluster), through the shipped profile as a site
fills it in plus an overlay that only shortens the status-check waits: the non-local jobs go through
SLURM with accounting, the GPU rules get a GPU, and the results equal a local run's."""
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from cluster.local_slurm import LocalSlurm, unavailable_reason
from test_dvc import small_params
from test_workflow import ROOT, job_counts, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]
UNAVAILABLE = unavailable_reason()
OVERLAY = Path(__file__).resolve().parents[1] / "cluster/profile"
LOCAL_RULES = {"fetch_model", "fetch_dataset", "fetch_corpus", "make_sequence", "aggregate_metrics",
               "build_report", "all"}


def site_profile(dest: Path, partition: str, account: str) -> Path:
    """slurm/config.yaml with its two commented site lines filled in, as the README tells users to."""
    text = (ROOT / "slurm/config.yaml").read_text()
    for key, value in (("slurm_partition", partition), ("slurm_account", account)):
        text, found = re.subn(rf"^(\s*)# {key}: .*$", rf'\g<1>{key}: "{value}"', text, flags=re.M)
        assert found == 1, f"slurm/config.yaml has no commented `{key}:` line to fill in"
    dest.mkdir()
    (dest / "config.yaml").write_text(text)
    return dest


def uses_gpu(rule: str) -> bool:
    return rule.startswith(("apply_edits_", "evaluate_", "collect_stats", "train_editor"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if UNAVAILABLE:
        pytest.skip(UNAVAILABLE)
    base = tmp_path_factory.mktemp("slurm")
    params = small_params(base)
    # device auto: the rules ask SLURM for a GPU; without CUDA the jobs then run on the CPU.
    params.update(device="auto", regularizers={"none": {}})
    (base / "tiny.yaml").write_text(yaml.safe_dump(params))
    config = ("--configfile", str(base / "tiny.yaml"))
    (base / "local").mkdir()
    (base / "slurm").mkdir()
    snakemake(base / "local", "--cores", "2", *config)
    profile = site_profile(base / "site-profile", LocalSlurm.partition, LocalSlurm.account)
    cluster = LocalSlurm(base / "cluster")
    with cluster:
        proc = snakemake(base / "slurm", "--cores", "all", "--profile", str(profile), "--profile", str(OVERLAY),
                         *config, env=cluster.env)
        sacct = cluster.run("sacct", "-n", "-P", "-X", "-S", "now-1days", "-o", "JobID,State,Account,AllocTRES,Comment")
        squeue = cluster.run("squeue", "-h", "-t", "all", "-o", "%i|%T")
    return SimpleNamespace(
        base=base, cluster=cluster, counts=job_counts(proc.stdout + proc.stderr), leftovers=cluster.leftover_processes(),
        jobs=[dict(zip(("id", "state", "account", "tres", "comment"), line.split("|")))
              for line in sacct.stdout.splitlines()],
        queue=dict(line.split("|") for line in squeue.stdout.splitlines()),
    )


def test_every_non_local_job_ran_as_a_slurm_job_with_its_resources(runs):
    by_rule = {}
    for job in runs.jobs:
        rule = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
        by_rule[rule] = by_rule.get(rule, 0) + 1
        assert job["state"] == "COMPLETED" and job["account"] == LocalSlurm.account, job
        assert ("gres/gpu=1" in job["tres"]) == uses_gpu(rule), job
    expected = {rule: n for rule, n in runs.counts.items() if rule not in LOCAL_RULES | {"total"}}
    assert by_rule == expected
    assert {"weight_change", "collect_stats", "evaluate_base"} <= set(by_rule)
    assert any(rule.startswith("apply_edits_") for rule in by_rule)
    # squeue still lists the finished jobs (MinJobAge) under the same ids as the accounting records
    assert runs.queue == {job["id"]: "COMPLETED" for job in runs.jobs}


def test_slurm_results_equal_a_local_run(runs):
    local, slurm = runs.base / "local", runs.base / "slurm"
    files = sorted(p.relative_to(local) for folder in ("data", "reports") for p in (local / folder).rglob("*")
                   if p.is_file())
    assert any(str(f).endswith(".safetensors") for f in files) and Path("reports/index.html") in files
    assert files == sorted(p.relative_to(slurm) for folder in ("data", "reports")
                           for p in (slurm / folder).rglob("*") if p.is_file())
    differ = [str(f) for f in files if not same_content(local / f, slurm / f)]
    assert not differ


def same_content(a: Path, b: Path) -> bool:
    """Equal bytes; for safetensors equal tensors and metadata (the header's metadata order varies)."""
    if a.suffix != ".safetensors":
        return a.read_bytes() == b.read_bytes()
    from safetensors import safe_open

    with safe_open(a, "pt") as fa, safe_open(b, "pt") as fb:
        return fa.metadata() == fb.metadata() and sorted(fa.keys()) == sorted(fb.keys()) and all(
            torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())


def test_cluster_starts_and_stops_quickly_and_leaves_no_process(runs):
    assert runs.cluster.up_seconds + runs.cluster.down_seconds < 120
    assert runs.leftovers == {}
    assert not runs.cluster.state.exists()
