"""Run a setting's edit calls and snapshot the ΔW held by the model at every checkpoint step."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from tqdm.auto import tqdm

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.editing.methods.base import EditMethod, Editor, Stats
from editharm.editing.regularizers.base import RegContext, Regularizer
from editharm.editing.settings import Setting
from editharm.model.deltas import save_delta
from editharm.model.modules import edited_matrix

log = logging.getLogger(__name__)


def _module_path(name: str) -> str:
    return name.rsplit(".", 1)[0]


class _Run:
    """The edited parameters, their originals and the exact ΔW accumulated in float64.

    Parameters are set to original + accumulated after every call rather than incremented, so
    rounding does not build up over many edits and the saved ΔW is exactly the sum of the
    applied updates (which keeps sums of low-rank updates low-rank on disk).
    """

    def __init__(self, model: torch.nn.Module, names: list[str]):
        params = dict(model.named_parameters())
        self.params = {n: params[n] for n in names}
        self.originals = {n: p.detach().clone() for n, p in self.params.items()}
        self.transposed = {n: edited_matrix(model, _module_path(n))[2] for n in names}
        self.reset()

    def reset(self) -> None:
        """Back to the original weights, with fresh method and regularizer state."""
        self.accumulated = {n: torch.zeros(p.shape, dtype=torch.float64, device=p.device)
                            for n, p in self.params.items()}
        self.method_state: dict[str, Any] = {}
        self.reg_state: dict[str, dict[str, Any]] = {n: {} for n in self.params}
        with torch.no_grad():
            for n, p in self.params.items():
                p.data.copy_(self.originals[n])

    def add(self, deltas: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, d in deltas.items():
                self.accumulated[n] += d.double()
                self.params[n].data.copy_((self.originals[n].double() + self.accumulated[n]).to(self.params[n].dtype))

    def hold(self, deltas: dict[str, torch.Tensor]) -> None:
        """Set the parameters to original + `deltas` without changing what the edits accumulated."""
        with torch.no_grad():
            for n, d in deltas.items():
                self.params[n].data.copy_((self.originals[n].double() + d.double()).to(self.params[n].dtype))


def run_edits(
    model: torch.nn.Module,
    tok,
    method_cls: type[EditMethod],
    hparams: TypedParams,
    reg: type[Regularizer],
    reg_params: TypedParams,
    setting: Setting,
    records: list[EditRecord],
    outputs: Mapping[int, str | Path],
    *,
    stats: Optional[Stats] = None,
    editor: Optional[Editor] = None,
    seed: int = 0,
    metadata: dict[str, Any],
) -> list[Path]:
    """Edit `records` as `setting` says and write, for each checkpoint step s of `outputs`, the file
    `outputs[s]`.

    Each file holds the ΔW = W − W_original of every parameter the method edits (float32, compact
    on disk) and metadata: the resolved hparams and regularizer params, the step, the number of
    edits in the model, the ids of all records edited into it (`record_ids`) and of the last edit
    call's records (`latest_ids`). Sequential settings stop after the last requested step; single
    settings start every call from the original weights. The model ends with the last
    checkpoint's weights.

    A regularizer that acts on the sequence's whole ΔW (PRUNE with `restrain: final`) passes the
    edits through and transforms the accumulated ΔW only in the files (`Regularizer.snapshot`):
    the edits go on from the unregularized weights, and each file holds the transform of the sum
    at its step.
    """
    wanted = sorted(outputs)
    top = setting.max_step(len(records))
    if not wanted or wanted[0] < 0 or wanted[-1] > top:
        raise ValueError(f"steps {wanted} are not allowed for {setting.kind} with {len(records)} records; "
                         f"each must be in 0..{top}")
    names = method_cls.param_names(model, hparams)
    run = _Run(model, names)
    generator = torch.Generator().manual_seed(seed)
    paths: list[Path] = []
    done: list[str] = []
    latest: list[str] = []

    def context(n: str) -> RegContext:
        return RegContext(
            param_name=n, module_path=_module_path(n), weight=run.params[n].detach(), original=run.originals[n],
            transposed=run.transposed[n], generator=generator, stats=stats, state=run.reg_state[n],
        )

    def snapshot(step: int) -> None:
        path = Path(outputs[step])
        held = {n: reg.snapshot(a, reg_params, context(n)) for n, a in run.accumulated.items()}
        save_delta(path, {n: d.float() for n, d in held.items()}, {
            **metadata,
            "method": method_cls.name,
            "hparams": hparams.to_dict(),
            "regularizer": reg.name,
            "reg_params": reg_params.to_dict(),
            "setting": setting.kind,
            "seed": seed,
            "step": step,
            "edits": setting.edits_at(step),
            "record_ids": list(done),
            "latest_ids": list(latest),
        })
        paths.append(path)
        if step == wanted[-1]:
            run.hold(held)
        log.info("step %d: ΔW of %d edit(s) written to %s", step, len(done), path)

    if 0 in wanted:
        snapshot(0)
    calls = setting.plan(records, wanted)
    for step, batch in tqdm(calls, desc=f"{method_cls.name}+{reg.name} {setting.kind}", disable=None):
        if not setting.sequential:
            run.reset()
            done = []
        delta = method_cls.compute_delta(model, tok, batch, hparams, stats=stats, state=run.method_state,
                                         editor=editor)
        unexpected = sorted(set(delta) - set(names))
        if unexpected:
            raise RuntimeError(f"{method_cls.name} changed {unexpected}, not among its declared parameters {names}")
        run.add({n: reg.apply(d, reg_params, context(n)) for n, d in delta.items()})
        latest = [r.id for r in batch]
        done.extend(latest)
        if step in wanted:
            snapshot(step)
    return paths
