"""Safetensors files: identical contents give identical bytes, whatever the process or the key order;
artifacts (files and staged folders) are published at the umask's mode."""
import os
import stat
import subprocess
import sys

import pytest
import torch

from editharm.core.fileio import atomic_write, load_tensors, save_tensors, staging_dir, write_json

WRITE = """
import sys, torch
from editharm.core.fileio import save_tensors
g = torch.Generator().manual_seed(0)
tensors = {name: torch.randn(3, 5, generator=g) for name in ("w.b", "w.a", "w.c", "z", "a")}
metadata = {key: {"value": i, "nested": [i, "x"]} for i, key in enumerate(["step", "record_ids", "edits", "hparams", "a", "layout"])}
save_tensors(sys.argv[1], tensors, metadata)
"""


def test_two_processes_write_the_same_bytes(tmp_path):
    # The writer's header order changes between processes, so the check needs two of them.
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path in paths:
        subprocess.run([sys.executable, "-c", WRITE, str(path)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_key_order_does_not_change_the_bytes_and_contents_survive(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {name: torch.randn(4, 2, generator=g) for name in ("b", "a", "c")}
    metadata = {"step": 3, "record_ids": ["r1", "r2"], "note": "ü"}
    save_tensors(tmp_path / "x.safetensors", tensors, metadata)
    save_tensors(tmp_path / "y.safetensors", dict(reversed(tensors.items())), dict(reversed(metadata.items())))
    assert (tmp_path / "x.safetensors").read_bytes() == (tmp_path / "y.safetensors").read_bytes()
    loaded, meta = load_tensors(tmp_path / "x.safetensors")
    assert meta == metadata and set(loaded) == set(tensors)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    header_length = int.from_bytes((tmp_path / "x.safetensors").read_bytes()[:8], "little")
    assert header_length % 8 == 0  # the data keeps its alignment


@pytest.fixture(params=[(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"])
def umask(request):
    """(file mode, folder mode) the umask under test should give; the process umask is restored after."""
    mask, file_mode, dir_mode = request.param
    old = os.umask(mask)
    try:
        yield file_mode, dir_mode
    finally:
        os.umask(old)


def test_atomic_write_publishes_at_the_umask_mode(tmp_path, umask):
    file_mode, _ = umask

    def private(tmp):  # a writer that creates its file 0600, as mkstemp does
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)

    atomic_write(tmp_path / "a.json", private)
    write_json(tmp_path / "b.json", {"x": 1})
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == file_mode


def test_staging_dir_publishes_at_the_umask_mode(tmp_path, umask):
    _, dir_mode = umask
    with staging_dir(tmp_path / "model") as out:
        (out / "config.json").write_text("{}")
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == dir_mode
    assert (tmp_path / "model" / "config.json").read_text() == "{}"
