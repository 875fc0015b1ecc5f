"""The run lock: a live run keeps its folder, a dead run's locks and temporaries are cleared by the next."""
import os
import signal
import subprocess
import sys

import pytest

from editharm.config.runstate import RUN_LOCK, check_cli, claim_workdir, release_workdir

HOLD = "import sys, time; from editharm.config.runstate import claim_workdir; " \
       "print(claim_workdir(sys.argv[1]), flush=True); time.sleep(60)"
CLAIM = "import sys; from editharm.config.runstate import claim_workdir; print(claim_workdir(sys.argv[1]))"


@pytest.fixture(autouse=True)
def _release():
    yield
    release_workdir()


def leftovers(work):
    """What a run killed mid-job leaves: Snakemake's lock and the jobs' temporaries."""
    (work / ".snakemake" / "locks").mkdir(parents=True)
    (work / ".snakemake" / "locks" / "0.output.lock").write_text("data/eval/x.json\n")
    staged = work / "data" / "models" / ".tiny.k2j3.tmp"
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"partial")
    (work / "data" / "eval").mkdir(parents=True)
    (work / "data" / "eval" / ".gsm8k.json.4242.tmp").write_text("{")
    (work / "data" / "datasets" / ".sst2.old").mkdir(parents=True)
    (work / "data" / "eval" / "gsm8k.json").write_text("{}")  # a finished artifact stays
    return [staged, work / "data" / "eval" / ".gsm8k.json.4242.tmp", work / "data" / "datasets" / ".sst2.old"]


def test_a_dead_runs_lock_and_temporaries_are_cleared(tmp_path):
    temporaries = leftovers(tmp_path)
    # a run that was killed with -9 while holding the folder
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "True"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert claim_workdir(tmp_path) is True
    assert not (tmp_path / ".snakemake" / "locks").exists()
    assert not any(p.exists() for p in temporaries)
    assert (tmp_path / "data" / "eval" / "gsm8k.json").read_text() == "{}"
    assert (tmp_path / RUN_LOCK).read_text().strip() == str(os.getpid())


def test_a_live_run_keeps_its_folder(tmp_path):
    assert claim_workdir(tmp_path) is True  # this process is the live run
    temporaries = leftovers(tmp_path)
    second = subprocess.run([sys.executable, "-c", CLAIM, str(tmp_path)], capture_output=True, text=True)
    assert second.stdout.strip() == "False"
    assert f"pid {os.getpid()}" in second.stderr and "do not --unlock" in second.stderr
    assert (tmp_path / ".snakemake" / "locks" / "0.output.lock").exists()
    assert all(p.exists() for p in temporaries)
    release_workdir()  # the live run ends
    again = subprocess.run([sys.executable, "-c", CLAIM, str(tmp_path)], capture_output=True, text=True)
    assert again.stdout.strip() == "True" and not any(p.exists() for p in temporaries)


def test_the_cli_is_found_beside_the_interpreter(tmp_path, monkeypatch):
    fake = tmp_path / "venv" / "bin"
    fake.mkdir(parents=True)
    (fake / "editharm").write_text("#!/bin/sh\n")
    (fake / "editharm").chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    check_cli(fake / "python")
    assert os.environ["PATH"].split(os.pathsep)[0] == str(fake)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeError, match="activate it"):
        check_cli(tmp_path / "elsewhere" / "python")
