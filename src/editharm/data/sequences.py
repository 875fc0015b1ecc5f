"""Seeded edit sequences: which records are edited, and in which order.

One sequence file per seq is shared by every setting, method and regularizer, so all
configurations edit exactly the same facts in the same order; a setting (editharm.editing.settings)
only decides how the records are grouped into edit calls.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from editharm.core.fileio import atomic_write
from editharm.core.records import EditRecord


@dataclass(frozen=True)
class Sequence:
    records: list[EditRecord]


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


def write_sequence(seq: Sequence, path: Path, metadata: dict) -> None:
    df = pd.DataFrame([r.to_dict() for r in seq.records])
    df.insert(0, "position", range(len(seq.records)))
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
    fields = [c for c in df.columns if c != "position"]
    records = [
        EditRecord.from_dict({k: (None if pd.isna(v) else v) for k, v in row.items()})
        for row in df[fields].to_dict("records")
    ]
    return Sequence(records)
