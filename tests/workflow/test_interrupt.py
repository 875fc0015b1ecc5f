"""Interrupted runs resume unaided: `dvc repro` (what `make run` runs once set up) is killed with kill -9 at
five seeded points -- the whole run four times, one job alone once -- and each time the same command is
simply run again. The finished project is byte for byte the project of a run that was never interrupted."""
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


def kill_one_job(proc: subprocess.Popen, timeout: float = 120) -> bool:
    """kill -9 the first editing or evaluation job the run starts; the run itself goes on (and fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        for pid in descendants(proc.pid):
            cmd = command_of(pid)
            if "editharm" in cmd and any(step in cmd for step in (" apply-edits ", " evaluate-task ", " collect-stats ")):
                os.kill(pid, signal.SIGKILL)
                return True
        time.sleep(0.2)
    return False


def snapshot(repo: Path) -> dict[str, bytes]:
    files = {}
    for name in COMPARED:
        path = repo / name
        for file in ([path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())):
            files[str(file.relative_to(repo))] = file.read_bytes()
    return files


def test_a_run_killed_at_five_points_resumes_to_the_same_bytes(tmp_path):
    params = small_params(tmp_path)  # the tiny model and corpus, shared by both projects
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for repo in (clean, killed):
        repo.mkdir()
        make_project(repo, params)
    started = time.monotonic()
    run(clean, DVC, "repro")
    duration = time.monotonic() - started

    rng = random.Random(SEED)
    # four kills of the whole run, at seeded moments spread over a run's length, and one of a single job
    points = [("run", rng.uniform(0.05, 0.9) * duration) for _ in range(4)]
    points.insert(rng.randrange(5), ("job", 0.0))
    survived = []
    for what, delay in points:
        proc = start(killed)
        if what == "job":
            assert kill_one_job(proc), "no job to kill"
            proc.wait(timeout=600)
        else:
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                kill_all(proc, killed)
        assert not working_in(killed)
        survived.append(what)
    run(killed, DVC, "repro")  # the README's command, once more: no --unlock, no manual step
    assert len(survived) == 5
    a, b = snapshot(clean), snapshot(killed)
    assert sorted(a) == sorted(b), set(a) ^ set(b)
    differ = [name for name in a if a[name] != b[name]]
    assert not differ
    assert "Data and pipelines are up to date" in run(killed, DVC, "status", "pipeline")
