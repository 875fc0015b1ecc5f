"""ΔW sets: weight updates keyed by parameter name, their files, and applying them to a model.

A ΔW set is `dict[str, Tensor]` keyed by `model.named_parameters()` names, each tensor in its
parameter's own layout, so applying it is `param += delta`.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from editharm.fileio import atomic_write

Deltas = dict[str, torch.Tensor]


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically; each metadata value is stored JSON-encoded.

    The file appears under its final name only when complete (temp file in the same folder, then
    os.replace), so an interrupted job never leaves a file that a pipeline would take as done.
    """
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    encoded = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    atomic_write(Path(path), lambda tmp: save_file(cpu, str(tmp), metadata=encoded))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
    return tensors, metadata


def save_delta(path: str | Path, deltas: Deltas, metadata: dict[str, Any]) -> None:
    save_tensors(path, deltas, metadata)


def load_delta(path: str | Path) -> tuple[Deltas, dict[str, Any]]:
    return load_tensors(path)


def _params(model: torch.nn.Module, names) -> dict[str, torch.nn.Parameter]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"ΔW names parameter(s) {missing} that {type(model).__name__} does not have")
    return {n: params[n] for n in names}


@torch.no_grad()
def apply_delta(model: torch.nn.Module, deltas: Deltas) -> None:
    for name, param in _params(model, deltas).items():
        if param.shape != deltas[name].shape:
            raise ValueError(f"ΔW for {name!r} has shape {tuple(deltas[name].shape)}, parameter {tuple(param.shape)}")
        param.data += deltas[name].to(param)


@contextmanager
def applied(model: torch.nn.Module, deltas: Deltas) -> Iterator[None]:
    """Apply ΔW for the duration of a block, then restore the exact original tensors.

    Restoring copies back kept originals rather than subtracting, because (W + Δ) − Δ need not
    round to W in floating point.
    """
    params = _params(model, deltas)
    originals = {name: param.data.clone() for name, param in params.items()}
    try:
        apply_delta(model, deltas)
        yield
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.data.copy_(originals[name])
