"""Second-moment statistics E[k kᵀ] of a module's input, which ROME-family methods use as C (and the
null-space regularizer as the preserved keys). In this project "stats" always means these."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from tqdm.auto import tqdm

from editharm.core.fileio import load_tensors, save_tensors
from editharm.model.modules import input_device, module_input
from editharm.model.tokens import pad_id, padded_batch

log = logging.getLogger(__name__)

_KEY = "mom2"


@torch.no_grad()
def collect_second_moment(
    model: torch.nn.Module,
    tok,
    module_path: str,
    texts: list[str],
    *,
    max_length: int = 128,
    batch_size: int = 8,
    n_tokens: Optional[int] = None,
) -> tuple[torch.Tensor, int]:
    """Uncentred E[k kᵀ] over every non-pad token of `texts` (the first `n_tokens` when given).

    Sums are kept in float64: with many tokens a float32 running sum loses the small entries.
    Each forward pass stops at the module, so layers above it cost nothing.
    """
    encoded = [ids for ids in (tok(t, truncation=True, max_length=max_length)["input_ids"] for t in texts) if ids]
    if not encoded:
        raise ValueError("no tokens: every text is empty")
    device, pad = input_device(model), pad_id(tok)
    total: Optional[torch.Tensor] = None
    count = 0
    for start in tqdm(range(0, len(encoded), batch_size), desc=f"stats {module_path}", disable=None):
        inputs, _ = padded_batch(encoded[start : start + batch_size], pad, device)
        keys = module_input(model, module_path, inputs)[inputs["attention_mask"].bool()].double()
        if n_tokens is not None:
            keys = keys[: n_tokens - count]
        total = keys.T @ keys if total is None else total + keys.T @ keys
        count += keys.shape[0]
        if n_tokens is not None and count >= n_tokens:
            break
    if n_tokens is not None and count < n_tokens:
        log.warning("stats %s: asked for %d tokens, the texts hold %d", module_path, n_tokens, count)
    return (total / count).float(), count


def save_stats(path: str | Path, matrix: torch.Tensor, metadata: dict[str, Any]) -> None:
    save_tensors(path, {_KEY: matrix}, metadata)


def load_stats(path: str | Path) -> tuple[torch.Tensor, dict[str, Any]]:
    tensors, metadata = load_tensors(path)
    return tensors[_KEY], metadata


def stats_provider(paths: list[Path]) -> Optional[Callable[[str], torch.Tensor]]:
    """stats(module_path) for the methods, from statistics files (each records its module); None without files."""
    if not paths:
        return None
    by_module = {}
    for path in paths:
        matrix, meta = load_stats(path)
        by_module[meta["module"]] = matrix

    def stats(module_path: str) -> torch.Tensor:
        try:
            return by_module[module_path]
        except KeyError:
            raise KeyError(f"no second-moment statistics for {module_path!r}; have {sorted(by_module)}") from None

    return stats
