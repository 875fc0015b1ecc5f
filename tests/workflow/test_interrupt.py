"""Interrupted runs resume unaided: `dvc repro` (what `make run` runs once set up) is killed with kill -9 at
five points along the pipeline -- the whole run four times, one job alone once, at seeded moments -- and
each time the same command is simply run again. The finished project is byte for byte the project of a
run that was never interrupted."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_dvc import DVC, GIT_IDENTITY, make_project, run, small_params
from test_workflow import BIN

pytestmark = pytest.mark.workflow
SEED = 20261202
# Results compared between the runs: every artifact and the DVC lock (logs and benchmarks hold timings).
COMPARED = ("data", "reports", "dvc.lock")


def env() -> dict:
    return {**os.environ, **GIT_IDENTITY, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children first found through /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def start(repo: Path) -> subprocess.Popen:
    return subprocess.Popen([DVC, "repro"], cwd=repo, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def working_in(repo: Path) -> list[int]:
    """Processes whose working folder is the project: the run, its jobs, and any orphan of a killed run."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if Path(os.readlink(entry / "cwd")) == repo:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def kill_all(proc: subprocess.Popen, repo: Path) -> None:
    """kill -9 the run and everything it started, as a crash or `kill -9 -<pgid>` would."""
    while pids := [proc.pid, *descendants(proc.pid), *working_in(repo)] if proc.poll() is None else working_in(repo):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.poll()
        time.sleep(0.2)
    proc.wait()


def wait_for_job(proc: subprocess.Popen, step: str, timeout: float = 300) -> int | None:
    """The pid of the run's first `editharm <step>` job, once it is running (None: the run ended first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in descendants(proc.pid):
            if f" {step} " in command_of(pid) and "editharm" in command_of(pid):
                return pid
        time.sleep(0.05)
    return None


def snapshot(repo: Path) -> dict[str, bytes]:
    files = {}
    for name in COMPARED:
        path = repo / name
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            files[str(file.relative_to(repo))] = file.read_bytes()
    return files


def test_a_run_killed_at_five_points_resumes_to_the_same_bytes(tmp_path):
    params = small_params(tmp_path)  # the tiny model and corpus, shared by both projects
    params["regularizers"] = {"rect": {"k": 0.5}}  # one configuration: every rule, fewest jobs
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for repo in (clean, killed):
        repo.mkdir()
        make_project(repo, params)
    run(clean, DVC, "repro")

    rng = random.Random(SEED)
    # five points along the pipeline, each hit while a job of that step runs (a seeded moment into it):
    # one of them kills that job alone, the others kill the whole run
    steps = ["fetch-dataset", "collect-stats", "apply-edits", "evaluate-task", "build-report"]
    alone = rng.randrange(len(steps))
    survived = []
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
        survived.append(step)
    run(killed, DVC, "repro")  # the README's command, once more: no --unlock, no manual step
    assert len(survived) == 5
    a, b = snapshot(clean), snapshot(killed)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ
    assert "Data and pipelines are up to date" in run(killed, DVC, "status", "pipeline")
