"""The collect_stats rule's job, and `editharm materialize` (a full checkpoint: base model + ΔW)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from editharm.core.fileio import staging_dir
from editharm.model.architectures import check_model
from editharm.model.deltas import apply_delta, load_delta
from editharm.model.loading import load_model, setup_torch
from editharm.model.stats import collect_second_moment, save_stats

log = logging.getLogger("editharm")


def collect_stats(model: Path, module: str, corpus: Path, n: int, max_length: int, out: Path,
                  device: str, dtype: str, threads: int | None) -> None:
    lm, tok = load_model(model, setup_torch(device, threads), dtype)
    check_model(lm)
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines() if line.strip()][:n]
    matrix, count = collect_second_moment(lm, tok, module, texts, max_length=max_length)
    save_stats(out, matrix, {"module": module, "n_texts": len(texts), "n_tokens": count, "max_length": max_length})


def materialize(model: Path, delta: Path, dtype: str, out: Path) -> None:
    lm, tok = load_model(model, "cpu", dtype)
    deltas, meta = load_delta(delta)
    apply_delta(lm, deltas)
    with staging_dir(out) as folder:
        lm.save_pretrained(folder, safe_serialization=True)
        tok.save_pretrained(folder)
        (folder / "editharm-delta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("full checkpoint written to %s", out)
