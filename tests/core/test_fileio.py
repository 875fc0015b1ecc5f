"""Safetensors files: identical contents give identical bytes, whatever the process or the key order."""
import subprocess
import sys

import torch

from editharm.core.fileio import load_tensors, save_tensors

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
