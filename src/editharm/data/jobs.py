"""The fetch_dataset and make_sequence rules' jobs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from editharm.data.editsets import load_edit_records
from editharm.data.fetch import fetch_dataset as _fetch_dataset
from editharm.data.sequences import sample_sequence, write_sequence

log = logging.getLogger("editharm")


def fetch_dataset(name: str, source: str, out: Path, lock: Path) -> None:
    manifest = _fetch_dataset(name, source, out, lock=lock)
    log.info("dataset %s ready at %s (%d files)", name, out, len(manifest.get("files", [])))


def make_sequence(records: Path, dataset: Optional[str], n_edits: int, seed: int, out: Path) -> None:
    edits = load_edit_records(records, dataset)
    seq = sample_sequence(edits, n_edits=n_edits, seed=seed)
    write_sequence(seq, out, {"seed": seed, "n_edits": n_edits})
    log.info("sequence of %d edits written to %s: %s", len(seq.records), out, ", ".join(r.id for r in seq.records))
