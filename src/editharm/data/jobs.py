"""The fetch_dataset and make_sequence rules' jobs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from editharm.core.fileio import read_json
from editharm.data.catalog import MANIFEST
from editharm.data.editsets import load_edit_records
from editharm.data.fetch import fetch_dataset as _fetch_dataset
from editharm.data.sequences import mixed_sequence, sample_sequence, write_sequence

log = logging.getLogger("editharm")


def fetch_dataset(name: str, source: str, out: Path, lock: Path) -> None:
    manifest = _fetch_dataset(name, source, out, lock=lock)
    log.info("dataset %s ready at %s (%d files)", name, out, len(manifest.get("files", [])))


def make_sequence(records: list[Path], dataset: Optional[list[str]], n_edits: int, seed: int, out: Path) -> None:
    """One dataset (`--records FOLDER [--dataset NAME]`), or several mixed by share (`--records` one folder
    per `--dataset NAME=SHARE`, in the same order)."""
    shares = _shares(dataset or [])
    if shares is None:
        if len(records) != 1 or len(dataset or []) > 1:
            raise ValueError(f"--records names {len(records)} folder(s) and --dataset {dataset}: one dataset takes "
                             "one folder; several datasets are given as NAME=SHARE, one folder each")
        edits = load_edit_records(records[0], dataset[0] if dataset else None)
        seq = sample_sequence(edits, n_edits=n_edits, seed=seed)
        write_sequence(seq, out, {"seed": seed, "n_edits": n_edits})
    else:
        if len(records) != len(shares):
            raise ValueError(f"--records names {len(records)} folder(s) for {len(shares)} dataset(s) {list(shares)}; "
                             "give one per --dataset NAME=SHARE, in the same order")
        pools = {name: load_edit_records(_folder_of(name, path), name) for name, path in zip(shares, records)}
        seq, counts = mixed_sequence(pools, shares, n_edits=n_edits, seed=seed)
        write_sequence(seq, out, {"seed": seed, "n_edits": n_edits, "shares": shares, "counts": counts})
        log.info("edits per dataset: %s", ", ".join(f"{name} {count}" for name, count in counts.items()))
    log.info("sequence of %d edits written to %s: %s", len(seq.records), out, ", ".join(r.id for r in seq.records))


def _shares(entries: list[str]) -> Optional[dict[str, float]]:
    """NAME=SHARE entries as {name: share}; None when no entry has a share (one dataset, by name)."""
    if not any("=" in entry for entry in entries):
        return None
    shares: dict[str, float] = {}
    for entry in entries:
        name, sep, share = entry.partition("=")
        if not name or not sep or name in shares:
            raise ValueError(f"--dataset {entry!r}: expected NAME=SHARE for every dataset, each name once")
        try:
            shares[name] = float(share)
        except ValueError:
            raise ValueError(f"--dataset {entry!r}: expected NAME=SHARE with a number as the share") from None
    return shares


def _folder_of(name: str, path: Path) -> Path:
    """`path`, checked to hold dataset `name` when it is a fetched folder (its manifest names it), so
    folders given in another order than their datasets fail here rather than being read as the wrong one."""
    manifest = Path(path) / MANIFEST
    if manifest.is_file():
        found = read_json(manifest, dict, "a dataset manifest").get("name")
        if found != name:
            raise ValueError(f"{path} holds dataset {found!r} (its {MANIFEST}), not {name!r}; "
                             "give the folders in the order of --dataset")
    return Path(path)
