"""Seeded edit sequences: which records are edited, and in which order.

One sequence file per seq is shared by every setting, method and regularizer, so all
configurations edit exactly the same facts in the same order; a setting (editharm.editing.settings)
only decides how the records are grouped into edit calls.

A sequence may also mix several editing datasets (KnowEdit's continual setting, `mixed_sequence`):
each gives its share of the edits, and the datasets alternate in a seeded random order.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import pandas as pd

from editharm.core.fileio import atomic_write
from editharm.core.records import EditRecord


@dataclass(frozen=True)
class Sequence:
    records: list[EditRecord]
    # Each record's source dataset, for a sequence mixing several datasets; empty for one dataset.
    datasets: tuple[str, ...] = ()


def sample_sequence(records: list[EditRecord], *, n_edits: int, seed: int) -> Sequence:
    if n_edits > len(records):
        raise ValueError(f"asked for {n_edits} edits but the dataset has only {len(records)} records")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"edit records must have unique ids; {dup!r} occurs more than once")
    # Sort first so the sample depends on the records and the seed, not on file order.
    pool = sorted(records, key=lambda r: r.id)
    return Sequence(random.Random(seed).sample(pool, n_edits))


def edit_counts(shares: dict[str, float], n_edits: int) -> dict[str, int]:
    """Edits per dataset: each share of `n_edits` rounded by the largest-remainder method, so the counts
    add up to exactly `n_edits`; equal remainders go to the dataset named first. Shares are read as the
    decimals they are written as (0.1 is exactly 1/10), so a count does not hinge on float rounding."""
    for name, share in shares.items():
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"the share of {name!r} is {share!r}; allowed: a number above 0 and at most 1")
    total = sum(shares.values())
    if not shares or abs(total - 1) > 1e-9:
        raise ValueError(f"the shares {dict(shares)} sum to {round(total, 12)!r}; allowed: shares that sum to 1")
    quotas = {name: Fraction(str(share)) * n_edits for name, share in shares.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    order = list(shares)
    by_remainder = sorted(order, key=lambda name: (-(quotas[name] - counts[name]), order.index(name)))
    for name in by_remainder[: n_edits - sum(counts.values())]:
        counts[name] += 1
    return counts


def mixed_sequence(pools: dict[str, list[EditRecord]], shares: dict[str, float], *, n_edits: int,
                   seed: int) -> tuple[Sequence, dict[str, int]]:
    """A sequence drawing `edit_counts(shares, n_edits)` records from each dataset's records (`pools`),
    each sampled as `sample_sequence` does under a seed derived from `seed` and the dataset's name, then
    shuffled together under another derived seed. Ids are prefixed with the dataset ("zsre:12"), so
    they stay unique across datasets. Returns the sequence and the counts."""
    counts = edit_counts(shares, n_edits)
    picked: list[tuple[str, EditRecord]] = []
    for name, count in counts.items():
        records = pools[name]
        if count > len(records):
            raise ValueError(f"dataset {name!r} is to give {count} of the {n_edits} edits (share {shares[name]}) "
                             f"but has only {len(records)} records")
        sample = sample_sequence(records, n_edits=count, seed=_derived_seed(seed, "dataset", name))
        picked += [(name, replace(r, id=f"{name}:{r.id}")) for r in sample.records]
    random.Random(_derived_seed(seed, "order")).shuffle(picked)
    return Sequence([r for _, r in picked], tuple(name for name, _ in picked)), counts


def _derived_seed(seed: int, *labels: str) -> int:
    # A pure function of the run's seed and the labels (Python's own hash() is salted per process).
    text = "\x1f".join([str(seed), *labels])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def write_sequence(seq: Sequence, path: Path, metadata: dict) -> None:
    df = pd.DataFrame([r.to_dict() for r in seq.records])
    df.insert(0, "position", range(len(seq.records)))
    if seq.datasets:  # only then: a one-dataset sequence keeps the bytes it always had
        df.insert(1, "dataset", list(seq.datasets))
    import pyarrow.parquet as pq

    table = _with_metadata(df, metadata)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def _with_metadata(df: pd.DataFrame, metadata: dict):
    import pyarrow as pa

    table = pa.Table.from_pandas(df, preserve_index=False)
    meta = {**(table.schema.metadata or {}), b"editharm": json.dumps(metadata, sort_keys=True).encode()}
    return table.replace_schema_metadata(meta)


def read_sequence(path: Path) -> Sequence:
    df = pd.read_parquet(path).sort_values("position")
    fields = [c for c in df.columns if c not in ("position", "dataset")]
    records = [
        EditRecord.from_dict({k: (None if pd.isna(v) else v) for k, v in row.items()})
        for row in df[fields].to_dict("records")
    ]
    return Sequence(records, tuple(df["dataset"]) if "dataset" in df.columns else ())
