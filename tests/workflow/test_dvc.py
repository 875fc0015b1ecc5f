"""DVC over the Snakemake workflow: results shared through a DVC remote are used by a fresh clone without
recomputation (`make pull`), and `dvc repro` / `dvc exp run -S` rerun exactly the jobs a params change
affects. Expected jobs come from the workflow's own full DAG under the new params, filtered by what the
change touches, so the assertions hold whatever the evaluation rules are called."""
import copy
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from interrupts import DVC, GIT_IDENTITY, kill_all, snapshot, start, wait_for_job, working_in
from test_workflow import BIN, ROOT, tiny_params

pytestmark = pytest.mark.workflow
PROJECT = ["Snakefile", "dvc.yaml", "Makefile", "rules", "profiles", "src/editharm", ".dvc/config", ".dvc/.gitignore",
           ".dvcignore", ".gitignore"]
# Jobs every change reruns: the tables and report that gather all results.
SUMMARY_RULES = {"aggregate_metrics", "build_report", "all"}
# Jobs upstream of (or beside) the edit sequence, which the seed does not reach.
# The unedited model's evaluation depends on the seed too: it picks the bootstrap resamples of its intervals.
SEED_FREE_RULES = {"fetch_model", "fetch_dataset", "fetch_corpus", "collect_stats"}

Job = tuple[str, frozenset]


def run(cwd: Path, *cmd: str) -> str:
    env = {**os.environ, **GIT_IDENTITY, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def jobs_in(output: str) -> Counter[Job]:
    """The jobs a Snakemake run or dry run lists: (rule, its wildcards) -> how often."""
    jobs: list[list] = []
    for line in output.splitlines():
        if header := re.match(r"^(?:local)?rule (\S+):$", line):
            jobs.append([header.group(1), frozenset()])
        elif jobs and line.startswith("    wildcards: "):
            jobs[-1][1] = frozenset(tuple(pair.split("=", 1)) for pair in line.split(": ", 1)[1].split(", "))
    return Counter((rule, wildcards) for rule, wildcards in jobs)


def full_dag(repo: Path, params: dict) -> Counter[Job]:
    """Every job of the workflow under `params`, as if nothing had been computed yet."""
    path = repo.parent / f"{repo.name}-dag.yaml"
    path.write_text(yaml.safe_dump(params))
    return jobs_in(run(repo, "snakemake", "-n", "--forceall", "--configfile", str(path)))


def affected(dag: Counter[Job], touches) -> Counter[Job]:
    return Counter({job: n for job, n in dag.items() if job[0] in SUMMARY_RULES or touches(job[0], dict(job[1]))})


def small_params(work: Path) -> dict:
    """The tiny config with one task and one checkpoint after the edits: the fewest jobs that still have
    every rule."""
    params = tiny_params(work)
    params["steps"] = [0, 3]
    params["evaluation"]["tasks"] = {"sst2": {}}
    return params


def make_project(repo: Path, params: dict) -> None:
    """A git repository holding the project as a user's clone does, with `params` as params.yaml."""
    for name in PROJECT:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    run(repo, "git", "init", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "project")


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Clone A computes the results and shares them as the README says: commit dvc.lock and the metrics
    summary, `dvc push` to the default remote (a folder beside the clone)."""
    base = tmp_path_factory.mktemp("dvc")
    params = small_params(base)
    repo = base / "A"
    repo.mkdir()
    make_project(repo, params)
    first = run(repo, DVC, "repro")
    run(repo, "git", "add", "dvc.lock", "local-sources.json", "reports/metrics/summary.json")
    run(repo, "git", "commit", "-q", "-m", "results")
    run(repo, DVC, "push")
    return SimpleNamespace(base=base, repo=repo, params=params, first=first)


def test_a_run_killed_at_five_points_resumes_to_the_same_bytes(published):
    """`dvc repro` (what `make run` runs once set up) killed with kill -9 at five points along the pipeline
    -- the whole run four times, one job alone once, at seeded moments into the job -- and each time just
    run again: the finished project is byte for byte clone A's, which was never interrupted."""
    killed = published.base / "killed"
    killed.mkdir()
    make_project(killed, published.params)
    rng = random.Random(20261202)
    steps = ["fetch-dataset", "collect-stats", "apply-edits", "evaluate-task", "build-report"]
    alone = rng.randrange(len(steps))
    for index, step in enumerate(steps):
        proc = start(killed)
        pid = wait_for_job(proc, step)
        assert pid is not None, f"the run ended before a {step} job started"
        time.sleep(rng.uniform(0.0, 1.0))
        if index == alone:
            os.kill(pid, signal.SIGKILL)  # a job's imports alone take longer than the wait: it is still running
            assert proc.wait(timeout=600) != 0  # the run stops, reporting the job that failed
        else:
            kill_all(proc, killed)
        assert not working_in(killed)
    run(killed, DVC, "repro")  # the README's command, once more: no --unlock, no manual step
    a, b = snapshot(published.repo), snapshot(killed)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    assert not [name for name in a if a[name] != b[name]]
    assert "Data and pipelines are up to date" in run(killed, DVC, "status", "pipeline")


def test_a_fresh_clone_pulls_the_results_and_has_nothing_to_do(published):
    a, b = published.repo, published.base / "B"
    assert jobs_in(published.first) == full_dag(a, published.params)  # A computed everything once
    assert (published.base / "editharm-dvc-remote").is_dir()
    run(published.base, "git", "clone", "-q", str(a), str(b))
    run(b, "make", "pull")
    # nothing was computed: the edit, statistics and evaluation jobs write benchmarks, every job logs
    assert not (b / "benchmarks").exists()
    assert not [p for p in (b / "logs").rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert "Nothing to be done" in run(b, "snakemake", "-n")
    # the local_sources stage is "always changed" (it rehashes local: sources on every repro); the
    # pipeline it feeds is up to date
    assert "Data and pipelines are up to date" in run(b, DVC, "status", "pipeline")
    for name in ("reports/index.html", "reports/metrics/metrics.parquet", "reports/metrics/summary.json",
                 "data/eval/tiny/rome/rect/instance_sequential/seq0/step-3/editing.json"):
        assert (b / name).read_bytes() == (a / name).read_bytes(), name
    # `make pull` recorded each job's params, so B reruns exactly what a later change affects
    params = copy.deepcopy(published.params)
    params["regularizers"]["rect"]["k"] = 0.25
    expected = affected(full_dag(b, params), lambda rule, w: w.get("reg") == "rect")
    (b / "params.yaml").write_text(yaml.safe_dump(params))
    assert jobs_in(run(b, "snakemake", "-n")) == expected


def set_k(params):
    params["regularizers"]["rect"]["k"] = 0.25


def set_seed(params):
    params["seed"] = 1


def add_task(params):
    params["evaluation"]["tasks"]["gsm8k"] = {"max_new_tokens": 8}


def add_method(params):
    params["methods"]["ft_l"] = {}


# (how the change is made, -S override or None for an edit of params.yaml then `dvc repro`, the change, which
# jobs it touches besides the summary)
CHANGES = [
    ("regularizers.rect.k=0.25", set_k, lambda rule, w: w.get("reg") == "rect"),
    ("seed=1", set_seed, lambda rule, w: rule not in SEED_FREE_RULES),
    ("+evaluation.tasks.gsm8k={max_new_tokens: 8}", add_task,
     lambda rule, w: w.get("task") == "gsm8k" or w.get("dataset") == "gsm8k"),
    (None, add_method, lambda rule, w: w.get("method") == "ft_l"),
]


def test_repro_and_exp_run_rerun_exactly_the_jobs_a_change_affects(published):
    repo, params = published.repo, copy.deepcopy(published.params)
    again = run(repo, DVC, "repro")
    assert "didn't change, skipping" in again or "up to date" in again
    assert "Job stats" not in again  # Snakemake was not even started
    for override, change, touches in CHANGES:
        change(params)
        dag = full_dag(repo, params)
        expected = affected(dag, touches)
        assert sum(expected.values()) < sum(dag.values())
        if override:
            out = run(repo, DVC, "exp", "run", "-S", override)
            assert yaml.safe_load((repo / "params.yaml").read_text()) == params
        else:
            (repo / "params.yaml").write_text(yaml.safe_dump(params))
            out = run(repo, DVC, "repro")
        assert jobs_in(out) == expected, override or change.__name__
    assert "up to date" in run(repo, DVC, "status", "pipeline")
    # a local: source edited in place: its digest changes, so DVC reruns the pipeline stage (where
    # Snakemake reruns its fetch job: test_workflow.py); the stage itself is not rerun here, for time
    corpus = published.base / "corpus.txt"
    corpus.write_text(corpus.read_text() + "\n\nOne more paragraph about a river and a city, long enough to count. " * 4)
    run(repo, DVC, "repro", "--single-item", "local_sources")
    status = run(repo, DVC, "status", "pipeline")
    assert "modified:" in status and "local-sources.json" in status
