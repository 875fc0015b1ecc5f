"""Edit sequences: seeded, shared, reproducible, and independent of file order; one dataset's as they
always were, several datasets mixed by share."""
import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import dry_run

from editharm.core.records import EditRecord
from editharm.data.catalog import DEMO_DIR
from editharm.data.editsets import load_edit_records
from editharm.data.fetch import fetch_dataset
from editharm.data.jobs import make_sequence
from editharm.data.sequences import edit_counts, read_sequence, sample_sequence, write_sequence

ROOT = Path(__file__).resolve().parents[2]


def _records(n):
    return [EditRecord(id=f"r{i}", subject=f"S{i}", prompt=f"S{i} lives in", target_new="Paris",
                       ground_truth="Rome", rephrase_prompt=f"Where does S{i} live?",
                       locality_prompt="The sky is", locality_answer="blue") for i in range(n)]


def test_same_seed_same_sequence_regardless_of_order():
    recs = _records(20)
    a = sample_sequence(recs, n_edits=8, seed=3)
    b = sample_sequence(list(reversed(recs)), n_edits=8, seed=3)
    c = sample_sequence(recs, n_edits=8, seed=4)
    assert [r.id for r in a.records] == [r.id for r in b.records]
    assert [r.id for r in a.records] != [r.id for r in c.records]
    assert len({r.id for r in a.records}) == 8


def test_roundtrip_and_byte_identical(tmp_path):
    seq = sample_sequence(_records(10), n_edits=5, seed=0)
    write_sequence(seq, tmp_path / "a.parquet", {"seed": 0})
    write_sequence(seq, tmp_path / "b.parquet", {"seed": 0})
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    back = read_sequence(tmp_path / "a.parquet")
    assert back.records == seq.records
    assert not list(tmp_path.glob(".*tmp"))


def test_too_many_edits_and_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="only 3 records"):
        sample_sequence(_records(3), n_edits=4, seed=0)
    recs = _records(3) + _records(1)
    with pytest.raises(ValueError, match="'r0'"):
        sample_sequence(recs, n_edits=2, seed=0)


@pytest.mark.parametrize("n_edits", [64, 80])
def test_embedded_demo_yields_long_sequences_of_distinct_records(n_edits):
    records = load_edit_records(DEMO_DIR / "zsre_demo.json")
    seq = sample_sequence(records, n_edits=n_edits, seed=0)
    assert len(seq.records) == n_edits
    assert len({r.id for r in seq.records}) == n_edits
    assert len({r.subject for r in seq.records}) == n_edits
    assert [r.id for r in sample_sequence(records, n_edits=n_edits, seed=0).records] == [r.id for r in seq.records]


# --- one dataset: what existing runs hold must not change -------------------------------------------------

# sha256 of `editharm make-sequence` on the embedded demo ZsRE, taken before sequences could mix datasets
# (pyarrow 26.0.1, requirements/lock.txt). (64, 0) is the default params.yaml's data/sequences/seq0.parquet.
ONE_DATASET_SHA256 = {
    (64, 0): "2de3fe8b98c7ba1252ba54b4a52b2f0bf621546e12708149c60497dc663cb4c5",
    (8, 0): "a1e33506347dbba84b87940227a25764bebf5096f03078405ac083205bdd1122",
    (3, 5): "5eedc530f46b50d39e6d36cd7be5b48ef74dc4d5f89720e3b9804a575989943e",
}


@pytest.fixture(scope="module")
def demo_folders(tmp_path_factory):
    """The embedded demo ZsRE and its train split as fetch_dataset writes them (layout and manifest)."""
    root = tmp_path_factory.mktemp("datasets")
    for name in ("zsre", "zsre_train"):
        fetch_dataset(name, "embedded:demo", root / name)
    return root


@pytest.mark.parametrize("n_edits, seed", sorted(ONE_DATASET_SHA256))
def test_a_one_dataset_sequence_keeps_its_bytes(demo_folders, tmp_path, n_edits, seed):
    out = tmp_path / "seq.parquet"
    make_sequence([demo_folders / "zsre"], ["zsre"], n_edits, seed, out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ONE_DATASET_SHA256[n_edits, seed]
    assert "dataset" not in pq.read_schema(out).names
    assert read_sequence(out).datasets == ()


# --- several datasets (KnowEdit's continual setting) ------------------------------------------------------


@pytest.mark.parametrize("shares, n_edits, counts", [
    # quotas 5, 2.5, 2.5 -> floors 5, 2, 2 (9); the 1 edit left goes to the largest remainder, .5 for b and c
    # alike, so to b, named first
    ({"a": 0.5, "b": 0.25, "c": 0.25}, 10, {"a": 5, "b": 3, "c": 2}),
    # the same tie, named the other way round: c first, so c gets it
    ({"c": 0.25, "b": 0.25, "a": 0.5}, 10, {"c": 3, "b": 2, "a": 5}),
    ({"a": 0.5, "b": 0.25, "c": 0.25}, 100, {"a": 50, "b": 25, "c": 25}),  # exact quotas: nothing left over
    # quotas 2.8, 2.45, 1.75 -> floors 2, 2, 1 (5); 2 left: remainders .8 (a), .75 (c), .45 (b) -> a and c
    ({"a": 0.4, "b": 0.35, "c": 0.25}, 7, {"a": 3, "b": 2, "c": 2}),
    # quotas .5, .25, .25 -> floors 0; the 1 edit goes to a; b and c give none
    ({"a": 0.5, "b": 0.25, "c": 0.25}, 1, {"a": 1, "b": 0, "c": 0}),
    # quotas .02, .49, 9.49 -> floors 0, 0, 9; the 1 left goes to b, tied with c at .49 and named first. In
    # floats c's remainder, 0.949 * 10 - 9, is 0.4900000000000002 and would take it: shares are read as decimals
    ({"a": 0.002, "b": 0.049, "c": 0.949}, 10, {"a": 0, "b": 1, "c": 9}),
    ({"zsre": 1.0}, 8, {"zsre": 8}),
])
def test_shares_become_counts_by_largest_remainder(shares, n_edits, counts):
    got = edit_counts(shares, n_edits)
    assert got == counts and list(got) == list(counts) and sum(got.values()) == n_edits


@pytest.mark.parametrize("shares, needle", [
    ({"a": 0.5, "b": 0.6}, "sum to 1.1; allowed: shares that sum to 1"),
    ({"a": 1.5, "b": -0.5}, "the share of 'a' is 1.5; allowed: a number above 0 and at most 1"),
    ({"a": 1.0, "b": 0}, "the share of 'b' is 0"),
])
def test_bad_shares_are_refused(shares, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        edit_counts(shares, 10)


MIX = ["zsre=0.75", "zsre_train=0.25"]


def _mixed(demo_folders, out, seed=0, n_edits=40, mix=MIX):
    make_sequence([demo_folders / "zsre", demo_folders / "zsre_train"], mix, n_edits, seed, out)
    return read_sequence(out)


def test_a_mixed_sequence_draws_each_datasets_count_with_unique_ids(demo_folders, tmp_path):
    seq = _mixed(demo_folders, tmp_path / "seq.parquet")
    assert len(seq.records) == 40 and len(seq.datasets) == 40
    assert Counter(seq.datasets) == {"zsre": 30, "zsre_train": 10}
    ids = [r.id for r in seq.records]
    assert len(set(ids)) == 40  # both files number their records from 0: the prefix keeps them apart
    assert all(r.id.startswith(f"{name}:") for r, name in zip(seq.records, seq.datasets))
    # each record is its dataset's record under that id
    pools = {name: {r.id: r for r in load_edit_records(demo_folders / name)} for name in ("zsre", "zsre_train")}
    for r, name in zip(seq.records, seq.datasets):
        assert dataclasses.replace(pools[name][r.id.split(":", 1)[1]], id=r.id) == r
    # the datasets alternate along the sequence rather than following one another in blocks
    runs = 1 + sum(a != b for a, b in zip(seq.datasets, seq.datasets[1:]))
    assert runs > 2
    meta = json.loads(pq.read_schema(tmp_path / "seq.parquet").metadata[b"editharm"])
    assert meta == {"seed": 0, "n_edits": 40, "shares": {"zsre": 0.75, "zsre_train": 0.25},
                    "counts": {"zsre": 30, "zsre_train": 10}}
    assert pd.read_parquet(tmp_path / "seq.parquet")["dataset"].tolist() == list(seq.datasets)


def test_a_mixed_sequence_is_reproducible_and_follows_the_seed(demo_folders, tmp_path):
    a = _mixed(demo_folders, tmp_path / "a.parquet", seed=3)
    _mixed(demo_folders, tmp_path / "b.parquet", seed=3)
    c = _mixed(demo_folders, tmp_path / "c.parquet", seed=4)
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    assert [r.id for r in a.records] != [r.id for r in c.records]
    assert {r.id for r in a.records} != {r.id for r in c.records}  # other records, not only another order


def test_a_dataset_with_too_few_records_is_named(demo_folders, tmp_path):
    # half of 150 edits is 75: the demo ZsRE holds 96 records, its train split 60
    with pytest.raises(ValueError, match=r"dataset 'zsre_train' is to give 75 of the 150 edits \(share 0.5\) "
                                         r"but has only 60 records"):
        _mixed(demo_folders, tmp_path / "seq.parquet", n_edits=150, mix=["zsre=0.5", "zsre_train=0.5"])
    assert not (tmp_path / "seq.parquet").exists()


def test_folders_given_in_another_order_than_their_datasets_fail(demo_folders, tmp_path):
    with pytest.raises(ValueError, match=r"zsre_train holds dataset 'zsre_train' \(its manifest.json\), not 'zsre'"):
        make_sequence([demo_folders / "zsre_train", demo_folders / "zsre"], MIX, 8, 0, tmp_path / "seq.parquet")
    with pytest.raises(ValueError, match=r"1 folder\(s\) for 2 dataset\(s\)"):
        make_sequence([demo_folders / "zsre"], MIX, 8, 0, tmp_path / "seq.parquet")
    with pytest.raises(ValueError, match="NAME=SHARE for every dataset"):
        make_sequence([demo_folders / "zsre", demo_folders / "zsre_train"], ["zsre=0.5", "zsre_train"], 8, 0,
                      tmp_path / "seq.parquet")


def test_a_mixed_config_dry_runs_to_one_sequence_job_reading_both_datasets(tmp_path):
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["datasets"]["zsre_train"] = "embedded:demo"
    cfg["sequences"]["dataset"] = {"zsre": 0.5, "zsre_train": 0.5}
    (tmp_path / "mixed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (job,) = dry_run(tmp_path, tmp_path / "mixed.yaml")["make_sequence"]
    assert "input: data/datasets/zsre, data/datasets/zsre_train\n" in job
    assert ("make-sequence --records data/datasets/zsre data/datasets/zsre_train "
            "--dataset zsre=0.5 zsre_train=0.5 --n-edits 64 --seed 0") in job
