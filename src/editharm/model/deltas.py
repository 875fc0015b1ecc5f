"""ΔW sets: weight updates keyed by parameter name, their files, and applying them to a model.

A ΔW set is `dict[str, Tensor]` keyed by `model.named_parameters()` names, each tensor in its
parameter's own layout, so applying it is `param += delta`.

On disk each matrix takes the smallest of three float32 forms, recorded in the file's "layout"
metadata: dense; masked (a bit mask of the nonzero entries plus their values, what RECT, Random
and KN leave); or low-rank factors U (m×r) and V (r×n) with ΔW = U V (ROME, MEMIT and MEND
updates, and sums of a few of them). The low-rank form is taken only when U V reproduces ΔW to
float32 precision (relative Frobenius error below LOWRANK_TOL), so every form loads back as the
same ΔW up to float32 rounding.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import safe_open

from editharm.core.fileio import load_tensors, save_tensors

Deltas = dict[str, torch.Tensor]


LAYOUT_KEY = "layout"
LOWRANK_TOL = 1e-6
# Largest rank tried for the low-rank form; updates of more rank than this are stored dense or masked.
MAX_RANK = 96
_SEP = "::"


def _low_rank(delta: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """U, V (float64) with U V = ΔW to LOWRANK_TOL and rank ≤ budget, or None.

    A seeded randomized range finder: Q spans ΔW Ω for a Gaussian Ω with budget + 8 columns, which
    captures ΔW's whole range when its rank is at most budget; the SVD of the small QᵀΔW then gives
    the exact rank. Seeded, so the same ΔW gives the same factors.
    """
    m, n = delta.shape
    p = min(budget + 8, m, n)
    d = delta.double()
    omega = torch.randn(n, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(d.device)
    q, _ = torch.linalg.qr(d @ omega)
    small = q.T @ d
    u, s, vh = torch.linalg.svd(small, full_matrices=False)
    norm = torch.linalg.norm(d)
    if norm == 0:
        return None
    r = int((s > s[0] * LOWRANK_TOL).sum())
    if r > budget:
        return None
    left, right = (q @ u[:, :r]) * s[:r], vh[:r]
    if torch.linalg.norm(d - left @ right) > LOWRANK_TOL * norm:
        return None
    return left, right


def _encode(name: str, delta: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The smallest stored form of one ΔW: tensors to write and its layout entry."""
    shape = list(delta.shape)
    dense = ({name: delta}, {"format": "dense", "shape": shape})
    if delta.dim() != 2:
        return dense
    m, n = shape
    mask = delta != 0
    nnz = int(mask.sum())
    sizes = {"dense": 4 * m * n, "masked": (m * n + 7) // 8 + 4 * nnz}
    budget = min(MAX_RANK, (m * n) // (m + n) - 1)
    factors = _low_rank(delta, budget) if budget >= 1 and nnz else None
    if factors is not None:
        sizes["lowrank"] = 4 * factors[0].shape[1] * (m + n)
    best = min(sizes, key=lambda k: (sizes[k], k))
    if best == "lowrank":
        left, right = factors
        return ({f"{name}{_SEP}u": left.float(), f"{name}{_SEP}v": right.float()},
                {"format": "lowrank", "shape": shape, "rank": left.shape[1]})
    if best == "masked":
        bits = torch.from_numpy(np.packbits(mask.cpu().numpy().ravel()))
        return ({f"{name}{_SEP}mask": bits, f"{name}{_SEP}values": delta[mask].float()},
                {"format": "masked", "shape": shape, "nnz": nnz})
    return dense


def _decode(name: str, entry: dict[str, Any], tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    shape = entry["shape"]
    if entry["format"] == "dense":
        return tensors[name]
    if entry["format"] == "lowrank":
        return (tensors[f"{name}{_SEP}u"].double() @ tensors[f"{name}{_SEP}v"].double()).float()
    if entry["format"] == "masked":
        numel = shape[0] * shape[1]
        mask = torch.from_numpy(np.unpackbits(tensors[f"{name}{_SEP}mask"].numpy(), count=numel).astype(bool))
        out = torch.zeros(numel, dtype=torch.float32)
        out[mask] = tensors[f"{name}{_SEP}values"]
        return out.view(shape)
    raise ValueError(f"ΔW {name!r}: unknown stored format {entry['format']!r}; allowed: dense, lowrank, masked")


def save_delta(path: str | Path, deltas: Deltas, metadata: dict[str, Any]) -> None:
    """Write a ΔW set in its compact form (see the module docstring); metadata keys are the caller's."""
    if LAYOUT_KEY in metadata:
        raise ValueError(f"metadata key {LAYOUT_KEY!r} is reserved for the stored layout")
    stored: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, delta in deltas.items():
        if _SEP in name:
            raise ValueError(f"parameter name {name!r} contains {_SEP!r}, which the file format reserves")
        tensors, layout[name] = _encode(name, delta.detach())
        stored.update(tensors)
    save_tensors(path, stored, {**metadata, LAYOUT_KEY: layout})


def load_delta(path: str | Path) -> tuple[Deltas, dict[str, Any]]:
    """Dense ΔW per parameter (float32 for the compact forms), and the writer's metadata."""
    tensors, metadata = load_tensors(path)
    layout = metadata.pop(LAYOUT_KEY, None)
    if layout is None:  # a file of plain dense tensors
        return tensors, metadata
    return {name: _decode(name, entry, tensors) for name, entry in layout.items()}, metadata


def delta_layout(path: str | Path) -> dict[str, Any]:
    """The stored form of each ΔW in a file, without loading the tensors."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get(LAYOUT_KEY, "{}"))


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


def relative_change(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """δ = |ΔW| / |W|; where W = 0 it is +inf if ΔW ≠ 0 (the largest change possible) and 0 if not."""
    w, d = weight.float().abs(), delta.float().abs()
    ratio = d / torch.where(w == 0, torch.ones_like(w), w)
    return torch.where(w == 0, torch.where(d == 0, 0.0, math.inf), ratio)
