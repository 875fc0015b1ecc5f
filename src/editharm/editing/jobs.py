"""The train_editor and apply_edits rules' jobs."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

from editharm.core.fileio import load_tensors, save_tensors
from editharm.data.editsets import load_edit_records
from editharm.data.sequences import read_sequence
from editharm.editing.methods import METHODS
from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.run import run_edits
from editharm.editing.settings import Setting
from editharm.model.architectures import check_model
from editharm.model.loading import load_model, setup_torch
from editharm.model.stats import stats_provider

log = logging.getLogger("editharm")


def _method(spec: dict):
    method_cls = METHODS.get(spec["kind"])
    return method_cls, method_cls.Hparams.from_dict(spec["hparams"])


def train_editor(model: Path, method: dict, records: Path, seed: int, out: Path,
                 device: str, dtype: str, threads: Optional[int]) -> None:
    method_cls, hparams = _method(method)
    if not method_cls.trainable():
        raise ValueError(f"method {method_cls.name!r} has no training step; trainable methods need one")
    train = load_edit_records(records)
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    check_model(lm)
    t0 = time.perf_counter()
    editor = method_cls.train(lm, tok, train, hparams, seed=seed)
    save_tensors(out, editor, {"method": method, "model": str(model), "seed": seed, "train_records": len(train)})
    log.info("%s editor trained on %d records in %.1f s", method_cls.name, len(train), time.perf_counter() - t0)


def apply_edits(model: Path, sequence: Path, method: dict, reg: dict, setting: dict, steps: list[int],
                stats: list[Path], editor: Optional[Path], seed: int, out: list[Path],
                device: str, dtype: str, threads: Optional[int]) -> None:
    """Edit the sequence as the setting says, writing the ΔW held at `steps[i]` to `out[i]`."""
    if len(out) != len(steps):
        raise ValueError(f"--out names {len(out)} file(s) for {len(steps)} step(s) {steps}; give one per step")
    method_cls, hparams = _method(method)
    regularizer = REGULARIZERS.get(reg["kind"])
    reg_params = regularizer.Params.from_dict(reg["params"])
    plan = Setting.from_params(setting["kind"], {k: v for k, v in setting.items() if k != "kind"})
    if method_cls.trainable() and editor is None:
        raise ValueError(f"method {method_cls.name!r} needs a trained editor (--editor); see the train_editor rule")
    trained = load_tensors(editor)[0] if editor else None
    seq = read_sequence(sequence)
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    check_model(lm)
    t0 = time.perf_counter()
    run_edits(lm, tok, method_cls, hparams, regularizer, reg_params, plan, seq.records, dict(zip(steps, out)),
              stats=stats_provider(stats), editor=trained, seed=seed,
              metadata={"model": str(model), "method": method, "regularizer": reg, "setting_params": setting})
    n = sum(len(batch) for _, batch in plan.plan(seq.records, steps))
    seconds = time.perf_counter() - t0
    log.info("%d edits in %.1f s (%.2f s per edit)", n, seconds, seconds / max(n, 1))
