"""Settings: which records each checkpoint holds, and its number of edits, for all four kinds."""
import pytest

from editharm.core.records import EditRecord
from editharm.editing.settings import Setting

RECORDS = [EditRecord(id=f"r{i}", subject="S", prompt="S is", target_new="x", ground_truth="y",
                      rephrase_prompt="", locality_prompt="", locality_answer="") for i in range(8)]


def ids(plan):
    return [(step, [r.id for r in recs]) for step, recs in plan]


def test_instance_sequential_one_record_per_call_up_to_the_last_step():
    s = Setting("instance_sequential")
    steps = s.resolve_steps([0, 1, 2, 4], 8)
    assert steps == [0, 1, 2, 4]
    assert ids(s.plan(RECORDS, steps)) == [(1, ["r0"]), (2, ["r1"]), (3, ["r2"]), (4, ["r3"])]
    assert [s.edits_at(x) for x in steps] == [0, 1, 2, 4]


def test_batch_sequential_counts_batches_and_drops_global_steps_that_do_not_fit():
    s = Setting("batch_sequential", batch_size=3)
    steps = s.resolve_steps([0, 1, 2, 4, 8], 8)
    assert steps == [0, 1, 2]  # 8 records hold two whole batches of 3
    assert ids(s.plan(RECORDS, steps)) == [(1, ["r0", "r1", "r2"]), (2, ["r3", "r4", "r5"])]
    assert s.edits_at(2) == 6
    with pytest.raises(ValueError, match="must be in 0..2"):
        Setting("batch_sequential", batch_size=3, steps=(1, 3)).resolve_steps([], 8)


def test_instance_single_edits_each_step_record_alone():
    s = Setting("instance_single")
    steps = s.resolve_steps([0, 2, 5], 8)
    assert ids(s.plan(RECORDS, steps)) == [(2, ["r1"]), (5, ["r4"])]
    assert s.edits_at(5) == 1 and s.edits_at(0) == 0


def test_batch_single_steps_are_batch_sizes_of_the_sequence_prefix():
    s = Setting.from_params("batch_single", {"batch_sizes": [4, 2]})
    steps = s.resolve_steps([0, 1, 8], 8)
    assert steps == [0, 2, 4]
    assert ids(s.plan(RECORDS, steps)) == [(2, ["r0", "r1"]), (4, ["r0", "r1", "r2", "r3"])]
    assert s.edits_at(4) == 4
    with pytest.raises(ValueError, match="1..8"):
        Setting("batch_single", batch_sizes=(16,)).resolve_steps([], 8)


@pytest.mark.parametrize("kind, spec, match", [
    ("sideways", {}, "allowed: instance_single"),
    ("batch_single", {}, "needs 'batch_sizes'"),
    ("instance_sequential", {"batch_size": 4}, "belongs to batch_sequential"),
    ("batch_sequential", {"batch_sizes": [2]}, "belongs to batch_single"),
])
def test_bad_settings_are_named(kind, spec, match):
    with pytest.raises(ValueError, match=match):
        Setting.from_params(kind, spec)
