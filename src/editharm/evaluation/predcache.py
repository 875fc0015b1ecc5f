"""Per-example prediction cache: what a checkpoint produced for one prompt is decoded once.

An entry is keyed by (base model, ΔW, task decoding, item): the base model by its fetched files'
checksums plus dtype and device type, the ΔW by the stored tensors' bytes (not the file's
metadata, so the same ΔW reached by two configurations, or the empty ΔW of step 0, is one key),
the task by what decides the model's output (scoring mode, token limit, stop strings, and the
batches: batch size and the job's item list, because a row's output depends by float rounding on
the rows it is padded and batched with), and the item by its rendered prompt and choices. The value is the raw output (generated text, or the
choice log-probs as JSON); parsing and scoring run again on every use, so a changed parser or
metric never reads a stale score.

Layout: <root>/<model key>/<ΔW key>/<task>-<decoding key>.parquet with columns key and raw. A
file is replaced whole (temp file, then rename). Two jobs adding to the same file at once can
each miss the other's new rows (they are decoded again later), but never see a torn file.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open

from editharm.core.fileio import SOURCE_MANIFEST, atomic_write, read_json, sha256_file
from editharm.model.deltas import LAYOUT_KEY

log = logging.getLogger(__name__)

EMPTY_DELTA = "base"  # key of the unedited model (no ΔW, or a ΔW file with no tensors)
_KEY_CHARS = 20


def _digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:_KEY_CHARS]


def model_key(model_dir: Path, dtype: str, device: torch.device | str) -> str:
    """The base model's identity: its files' sha256 (from the fetch manifest when it lists them,
    else hashed here), with the dtype and device type that shape its outputs."""
    model_dir = Path(model_dir)
    manifest = model_dir / SOURCE_MANIFEST
    files = read_json(manifest, dict, "a source manifest").get("files") if manifest.exists() else None
    if not files:
        log.info("%s lists no file checksums: hashing the model's files for the prediction cache", model_dir)
        files = {p.name: sha256_file(p) for p in sorted(model_dir.iterdir()) if p.is_file() and p.name != SOURCE_MANIFEST}
    return _digest({"files": files, "dtype": dtype, "device": torch.device(device).type})


def delta_key(path: Path | None) -> str:
    """The ΔW's identity from its stored tensors and layout, whatever metadata the file carries."""
    if path is None:
        return EMPTY_DELTA
    h = hashlib.sha256()
    with safe_open(str(path), framework="pt") as f:
        names = sorted(f.keys())
        if not names:
            return EMPTY_DELTA
        h.update(json.dumps(json.loads((f.metadata() or {}).get(LAYOUT_KEY, "{}")), sort_keys=True).encode())
        for name in names:
            tensor = f.get_tensor(name).contiguous()
            h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:_KEY_CHARS]


def item_key(prompt: str, choices: Sequence[str] | None) -> str:
    return _digest({"prompt": prompt, "choices": list(choices) if choices is not None else None})


class PredictionCache:
    """Raw outputs of one base model, by ΔW key, task and item key. `root=None` caches nothing."""

    def __init__(self, root: Path | None, model: str):
        self.root = Path(root) if root is not None else None
        self.model = model

    def at(self, delta: str) -> CheckpointCache:
        """The part of the cache that belongs to the checkpoint with ΔW key `delta`."""
        folder = self.root / self.model / delta if self.root is not None else None
        return CheckpointCache(folder)


class CheckpointCache:
    """Raw outputs of one checkpoint: task -> item key -> raw output."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def _file(self, task: str, decoding: Mapping[str, Any]) -> Path:
        assert self.folder is not None
        return self.folder / f"{task}-{_digest(dict(decoding))}.parquet"

    def get(self, task: str, decoding: Mapping[str, Any]) -> dict[str, str]:
        if self.folder is None:
            return {}
        path = self._file(task, decoding)
        if not path.exists():
            return {}
        table = pq.read_table(path)
        return dict(zip(table.column("key").to_pylist(), table.column("raw").to_pylist()))

    def put(self, task: str, decoding: Mapping[str, Any], new: Mapping[str, str]) -> None:
        if self.folder is None or not new:
            return
        rows = {**self.get(task, decoding), **new}  # read again: another job may have added rows
        keys = sorted(rows)
        table = pa.table({"key": keys, "raw": [rows[k] for k in keys]})
        atomic_write(self._file(task, decoding), lambda tmp: pq.write_table(table, tmp))
