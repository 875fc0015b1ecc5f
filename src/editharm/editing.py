"""Sequential editing: apply edits one after another and snapshot the accumulated ΔW at chosen steps."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from editharm.deltas import apply_delta, save_delta
from editharm.methods import EditMethod, Stats, TypedParams
from editharm.records import EditRecord
from editharm.regularizers import Regularizer

log = logging.getLogger(__name__)


def step_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / f"step-{step}.safetensors"


def run_sequence(
    model: torch.nn.Module,
    tok,
    method_cls: type[EditMethod],
    hparams: TypedParams,
    reg: type[Regularizer],
    reg_params: TypedParams,
    records: Sequence[Union[EditRecord, Sequence[EditRecord]]],
    steps: list[int],
    out_dir: str | Path,
    *,
    stats: Optional[Stats] = None,
    seed: int = 0,
    metadata: dict[str, Any],
) -> list[Path]:
    """Edit the model in place, one step per element of `records` (a record, or a batch as a list).

    After step s for each s in `steps` (0 = before any edit) writes `out_dir/step-{s}.safetensors`:
    the accumulated ΔW = W_now − W_original of every parameter the method edits, in float32,
    computed from kept originals so rounding does not build up over many steps. Edits after the
    last requested step would be written nowhere, so they are not made.
    """
    batches = [[r] if isinstance(r, EditRecord) else list(r) for r in records]
    wanted = sorted(set(steps))
    if wanted and not 0 <= wanted[0] <= wanted[-1] <= len(batches):
        raise ValueError(f"steps {wanted} are not allowed; each must be in 0..{len(batches)} (edits given)")
    names = method_cls.param_names(model, hparams)
    params = dict(model.named_parameters())
    originals = {n: params[n].detach().clone() for n in names}
    generator = torch.Generator().manual_seed(seed)
    done: list[str] = []
    paths: list[Path] = []

    def snapshot(step: int) -> None:
        accumulated = {n: params[n].detach().float() - originals[n].float() for n in names}
        path = step_path(out_dir, step)
        save_delta(path, accumulated, {
            **metadata,
            "method": method_cls.name,
            "hparams": hparams.to_dict(),
            "regularizer": reg.name,
            "reg_params": reg_params.to_dict(),
            "seed": seed,
            "step": step,
            "record_ids": list(done),
        })
        paths.append(path)
        log.info("step %d: accumulated ΔW of %d edit(s) written to %s", step, len(done), path)

    if 0 in wanted:
        snapshot(0)
    last = wanted[-1] if wanted else 0
    for step, batch in enumerate(tqdm(batches[:last], desc=f"{method_cls.name}+{reg.name}", disable=None), start=1):
        delta = method_cls.compute_delta(model, tok, batch, hparams, stats=stats)
        unexpected = sorted(set(delta) - set(names))
        if unexpected:
            raise RuntimeError(f"{method_cls.name} changed {unexpected}, not among its declared parameters {names}")
        delta = {n: reg.apply(n, params[n].detach(), d, reg_params, generator) for n, d in delta.items()}
        apply_delta(model, delta)
        done.extend(r.id for r in batch)
        if step in wanted:
            snapshot(step)
    return paths
