"""Edit sequences: seeded, shared, reproducible, and independent of file order."""
import pytest

from editharm.core.records import EditRecord
from editharm.data.catalog import DEMO_DIR
from editharm.data.editsets import load_edit_records
from editharm.data.sequences import read_sequence, sample_sequence, write_sequence


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
