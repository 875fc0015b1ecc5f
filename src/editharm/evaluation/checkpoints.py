"""The one loop over checkpoints: a base model loaded once, each checkpoint's ΔW put on it, scored,
and taken off again (the touched matrices restored exactly; editharm.model.deltas.applied).

A checkpoint is a ΔW file (or None: the unedited model) and its metadata, whose `step` and `edits`
label the checkpoint's metric records."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch

from editharm.model.deltas import Deltas, applied, load_delta


@dataclass(frozen=True)
class Checkpoint:
    path: Optional[Path]  # None: the unedited model
    deltas: Deltas = field(default_factory=dict, repr=False)
    meta: dict[str, Any] = field(default_factory=dict)

    def labels(self, run: dict[str, Any]) -> dict[str, Any]:
        """The run's labels plus this checkpoint's own step and number of edits (from its ΔW file)."""
        return {**run, **{key: self.meta[key] for key in ("step", "edits") if key in self.meta}}


def check_files(paths: Sequence[Path]) -> None:
    """Fail before any model loads when a ΔW file is missing."""
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--delta {path}: no such file")


def load(path: Optional[Path]) -> Checkpoint:
    if path is None:
        return Checkpoint(None)
    deltas, meta = load_delta(path)
    return Checkpoint(Path(path), deltas, meta)


def loaded(paths: Sequence[Path]) -> Iterator[Checkpoint]:
    """Each ΔW file loaded in turn (lazily); the unedited model alone when `paths` is empty."""
    return (load(path) for path in (paths or [None]))


def on_model(model: torch.nn.Module, checkpoints: Iterable[Checkpoint]) -> Iterator[Checkpoint]:
    """Yield each checkpoint while the model holds its weights: base + ΔW inside the loop body, the
    exact base weights again before the next one and after the loop (also when the body raises)."""
    for checkpoint in checkpoints:
        with applied(model, checkpoint.deltas):
            yield checkpoint
