"""Killing a run as a crash would, for the interruption test in test_dvc.py: the run's processes found
through /proc, a job of a given step waited for, and the artifacts compared byte for byte."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from test_workflow import BIN

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "editharm", "GIT_AUTHOR_EMAIL": "editharm@example.org",
                "GIT_COMMITTER_NAME": "editharm", "GIT_COMMITTER_EMAIL": "editharm@example.org"}
DVC = str(BIN / "dvc")
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
