"""run_edits snapshots the ΔW = W_now − W_0 the model holds at each requested step, in every setting."""
from __future__ import annotations

import pytest
import torch
from helpers import spread_hparams

from editharm.core.records import EditRecord
from editharm.editing.methods import memit, rome
from editharm.editing.methods.memit import Memit, MemitHparams
from editharm.editing.methods.rome import Rome, context_prefixes
from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.regularizers.rect import n_kept
from editharm.editing.run import run_edits
from editharm.editing.settings import Setting
from editharm.model.deltas import apply_delta, load_delta

NAME = "transformer.h.1.mlp.c_proj.weight"


def rec(i: int, prompt: str, subject: str, target: str) -> EditRecord:
    return EditRecord(id=f"e{i}", subject=subject, prompt=prompt, target_new=target, ground_truth="",
                      rephrase_prompt=prompt, locality_prompt="", locality_answer="")


RECORDS = [
    rec(0, "The capital city of France", "France", "Rome"),
    rec(1, "The first book of John", "John", "apples"),
    rec(2, "I like the red dog", "dog", "cat"),
]


def run(model, tok, hp, out_dir, *, records=RECORDS, steps=(0, 1, 3), reg="none", reg_params=None,
        setting=Setting("instance_sequential")):
    reg_cls = REGULARIZERS.get(reg)
    outputs = {step: out_dir / f"step-{step}.safetensors" for step in steps}
    return run_edits(
        model, tok, Rome, hp, reg_cls, reg_cls.Params.from_dict(reg_params or {}), setting, records, outputs,
        seed=0, metadata={"model": "tiny-gpt2", "seq": "s0"},
    )


@pytest.fixture
def gpt2_hp(tiny_gpt2, tiny_rome_hparams):
    return tiny_rome_hparams(tiny_gpt2[0], v_num_grad_steps=10)


def test_snapshots_hold_accumulated_delta(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    original = {k: v.clone() for k, v in model.state_dict().items()}
    paths = run(model, tok, gpt2_hp, tmp_path)
    assert [p.name for p in paths] == ["step-0.safetensors", "step-1.safetensors", "step-3.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # nothing else written

    zero, meta0 = load_delta(paths[0])
    assert list(zero) == [NAME] and not zero[NAME].any()
    assert meta0["step"] == 0 and meta0["record_ids"] == []

    last, meta3 = load_delta(paths[2])
    now = model.state_dict()
    torch.testing.assert_close(last[NAME], now[NAME] - original[NAME], rtol=0, atol=1e-6)
    assert all(torch.equal(now[k], v) for k, v in original.items() if k != NAME)  # only the declared matrix moved
    assert meta3["record_ids"] == ["e0", "e1", "e2"] and meta3["latest_ids"] == ["e2"]
    assert meta3["step"] == meta3["edits"] == 3 and meta3["setting"] == "instance_sequential"
    assert meta3["method"] == "rome" and meta3["regularizer"] == "none" and meta3["reg_params"] == {}
    assert meta3["hparams"] == gpt2_hp.to_dict() and meta3["model"] == "tiny-gpt2"

    one, meta1 = load_delta(paths[1])
    assert meta1["record_ids"] == ["e0"]
    assert one[NAME].any() and not torch.equal(one[NAME], last[NAME])


def test_snapshot_applied_to_base_reproduces_edited_model(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    base = {k: v.clone() for k, v in model.state_dict().items()}
    paths = run(model, tok, gpt2_hp, tmp_path, steps=[2])
    edited = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(base)
    apply_delta(model, load_delta(paths[0])[0])
    torch.testing.assert_close(model.state_dict()[NAME], edited[NAME], rtol=0, atol=1e-6)


def test_edits_after_the_last_step_are_not_made(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    original = model.state_dict()[NAME].clone()
    (path,) = run(model, tok, gpt2_hp, tmp_path, steps=[1])
    torch.testing.assert_close(load_delta(path)[0][NAME], model.state_dict()[NAME] - original, rtol=0, atol=1e-6)
    assert load_delta(path)[1]["record_ids"] == ["e0"]


def test_rect_applies_to_each_edit(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    (path,) = run(model, tok, gpt2_hp, tmp_path, steps=[1], reg="rect", reg_params={"k": 0.4})
    delta, meta = load_delta(path)
    assert int((delta[NAME] != 0).sum()) == n_kept(0.4, delta[NAME].numel())
    assert meta["regularizer"] == "rect" and meta["reg_params"] == {"k": 0.4}


def test_batch_sequential_batches_count_as_one_step(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    records = RECORDS + [rec(3, "The big red apple", "apple", "book")]
    paths = run(model, tok, gpt2_hp, tmp_path, records=records, steps=[1, 2],
                setting=Setting("batch_sequential", batch_size=2))
    metas = [load_delta(p)[1] for p in paths]
    assert [m["record_ids"] for m in metas] == [["e0", "e1"], ["e0", "e1", "e2", "e3"]]
    assert [m["latest_ids"] for m in metas] == [["e0", "e1"], ["e2", "e3"]]
    assert [m["edits"] for m in metas] == [2, 4]


def test_single_settings_edit_from_the_original_weights(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    original = model.state_dict()[NAME].clone()
    singles = run(model, tok, gpt2_hp, tmp_path / "single", steps=[1, 2, 3], setting=Setting("instance_single"))
    model.state_dict()[NAME].copy_(original)
    alone = run(model, tok, gpt2_hp, tmp_path / "alone", records=[RECORDS[1]], steps=[1])
    metas = [load_delta(p)[1] for p in singles]
    assert [m["record_ids"] for m in metas] == [["e0"], ["e1"], ["e2"]]
    assert [m["edits"] for m in metas] == [1, 1, 1]
    # step 2 of instance_single is record e1 edited into the original model, nothing else
    torch.testing.assert_close(load_delta(singles[1])[0][NAME], load_delta(alone[0])[0][NAME], rtol=0, atol=1e-6)

    model.state_dict()[NAME].copy_(original)
    batches = run(model, tok, gpt2_hp, tmp_path / "batch", steps=[1, 3],
                  setting=Setting("batch_single", batch_sizes=(1, 3)))
    metas = [load_delta(p)[1] for p in batches]
    assert [m["record_ids"] for m in metas] == [["e0"], ["e0", "e1", "e2"]]
    assert [m["edits"] for m in metas] == [1, 3]


def test_prune_state_persists_over_a_sequence(tiny_gpt2, gpt2_hp, tmp_path):
    model, tok = tiny_gpt2
    original = model.state_dict()[NAME].clone()
    ceiling = torch.linalg.matrix_norm(original.double(), ord=2).item()
    (raw_path,) = run(model, tok, gpt2_hp, tmp_path / "raw", steps=[3])
    model.state_dict()[NAME].copy_(original)
    (pruned_path,) = run(model, tok, gpt2_hp, tmp_path / "prune", steps=[3], reg="prune", reg_params={"alpha": 1.5})
    raw, pruned = load_delta(raw_path)[0][NAME].double(), load_delta(pruned_path)[0][NAME].double()
    s_raw = torch.linalg.matrix_norm(raw, ord=2).item()
    s_pruned = torch.linalg.matrix_norm(pruned, ord=2).item()
    assert s_pruned <= max(s_raw, ceiling) + 1e-4
    if s_raw > ceiling:
        assert s_pruned < s_raw


@pytest.mark.parametrize("steps", [[4], [-1]])
def test_steps_beyond_the_sequence_are_refused(tiny_gpt2, gpt2_hp, tmp_path, steps):
    model, tok = tiny_gpt2
    with pytest.raises(ValueError, match=r"steps .* must be in 0\.\.3"):
        run(model, tok, gpt2_hp, tmp_path, steps=steps)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["rome", "memit"])
def test_prefixes_come_from_the_unedited_model_once_per_sequence(tiny_gpt2, tiny_rome_hparams, tmp_path,
                                                                  monkeypatch, method):
    model, tok = tiny_gpt2
    if method == "rome":
        method_cls, hp = Rome, tiny_rome_hparams(model, v_num_grad_steps=10)
        view = hp
    else:
        method_cls, hp = Memit, MemitHparams.from_dict({**spread_hparams(model), "mom2_adjustment": False})
        view = hp.at_layer(hp.layers[-1])
    unedited = context_prefixes(model, tok, view)
    generated, used = [], []
    greedy_texts, target_shift = rome._greedy_texts, rome.target_shift

    def counted_greedy_texts(*args):
        generated.append(args)
        return greedy_texts(*args)

    def recorded_target_shift(model, tok, record, hparams, prefixes, base):
        used.append(list(prefixes))
        return target_shift(model, tok, record, hparams, prefixes, base)

    monkeypatch.setattr(rome, "_greedy_texts", counted_greedy_texts)
    monkeypatch.setattr(rome, "target_shift", recorded_target_shift)
    monkeypatch.setattr(memit, "target_shift", recorded_target_shift)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    reg = REGULARIZERS.get("none")
    run_edits(model, tok, method_cls, hp, reg, reg.Params.from_dict({}), Setting("instance_sequential"), RECORDS,
              {3: tmp_path / "step-3.safetensors"}, seed=0, metadata={})
    assert any(not torch.equal(v, original[k]) for k, v in model.state_dict().items())  # the edits landed
    assert len(generated) == len(hp.context_template_length_params) == 1  # one generation pass for 3 edits
    assert used == [unedited] * len(RECORDS)
