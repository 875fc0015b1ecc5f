"""A run's hold on its working folder, so that a run killed at any point (kill -9, a lost node, a
power cut) is resumed by running the same command again, with no `--unlock` by hand, while a second
run started beside a live one is still refused.

The main Snakemake process takes an exclusive `flock` on .snakemake/editharm/run.lock when it reads
the Snakefile and keeps it until it exits; the kernel drops it when the process dies, however it
dies. A run that gets the lock therefore knows that no other run is alive in the folder, so what
Snakemake's own lock files and the temporaries under data/ and reports/ say is left over from a dead
run: they are removed. A run that does not get it leaves everything as it is, and Snakemake refuses
it if it would write what the live run writes. Jobs that a killed run left half done are rerun
because the workflow's default profile (profiles/default) sets `rerun-incomplete`.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path

from editharm.core.fileio import remove_temporaries

RUN_LOCK = Path(".snakemake") / "editharm" / "run.lock"
_HELD: list[int] = []  # the lock's file descriptor, open for the life of the process


def _say(message: str) -> None:
    print(f"editharm: {message}", file=sys.stderr)


def claim_workdir(workdir: Path | str = ".") -> bool:
    """Take the run lock of `workdir`; when taken, clear what a dead run left behind. Returns whether
    it was taken (False: another run is alive here)."""
    workdir = Path(workdir)
    path = workdir / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        _say(f"another run of this workflow is alive in {workdir.resolve()} (pid {owner}); a run that would write "
             "the same files is refused: wait for it to finish, and do not --unlock while it runs")
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD.append(fd)
    locks = workdir / ".snakemake" / "locks"
    if locks.is_dir() and any(locks.iterdir()):
        shutil.rmtree(locks)
        _say("removed the Snakemake lock of a run that was interrupted (no run is alive here)")
    removed = remove_temporaries(workdir / "data") + remove_temporaries(workdir / "reports")
    if removed:
        _say(f"removed {len(removed)} temporary file(s) an interrupted run left under data/ and reports/")
    return True


def release_workdir() -> None:
    """Drop the run lock (tests; a run holds it until it exits)."""
    while _HELD:
        os.close(_HELD.pop())


def check_cli(executable: str | Path = sys.executable) -> None:
    """Make the `editharm` command the rules call the one installed beside the Python running the
    workflow (its bin folder first on PATH, inherited by every job), so a venv's snakemake works
    without activating the venv; fail with what to do when there is none."""
    bin_dir = str(Path(executable).parent)
    if (Path(bin_dir) / "editharm").is_file():
        os.environ["PATH"] = os.pathsep.join([bin_dir, *[p for p in os.environ.get("PATH", "").split(os.pathsep)
                                                            if p != bin_dir]])
    if shutil.which("editharm") is None:
        raise RuntimeError(f"the 'editharm' command is not on PATH nor beside {executable}: install the project "
                           "(`make setup`) and run the workflow with that environment's snakemake "
                           "(.venv/bin/snakemake) or activate it (source .venv/bin/activate)")
