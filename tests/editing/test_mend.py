"""MEND on tiny random GPT-2 (Conv1D) and Llama (Linear): the untrained editor is gradient descent,
training makes held-out edits stronger, training is reproducible and the model is left alone."""
from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
import yaml

from editharm.core.fileio import load_tensors, save_tensors
from editharm.core.records import EditRecord
from editharm.data.catalog import DEMO_DIR
from editharm.data.editsets import load_edit_records
from editharm.editing.methods import METHODS
from editharm.editing.methods.mend import Mend, MendHparams, edit_sites, init_editor
from editharm.model.deltas import applied
from editharm.model.tokens import target_ids

TEMPLATES = {
    "gpt2": ["transformer.h.{}.mlp.c_fc", "transformer.h.{}.mlp.c_proj"],
    "llama": ["model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj", "model.layers.{}.mlp.down_proj"],
}
COUNTRIES = "France Italy Germany Spain Japan China England Canada Egypt Russia India Brazil Greece".split()
CITIES = "Paris Rome Berlin Madrid Tokyo Beijing London Ottawa Cairo Moscow Delhi Brasilia Athens".split()
LANGUAGES = "English French Italian German Spanish Japanese Chinese Russian".split()


def synthetic_records() -> list[EditRecord]:
    """26 edits over the fixture vocabulary (capital and language of each country), seeded targets."""
    g = torch.Generator().manual_seed(0)

    def pick(words: list[str]) -> str:
        return words[torch.randint(len(words), (1,), generator=g).item()]

    records = []
    for i, country in enumerate(COUNTRIES):
        for relation, rephrase, answers, loc in (
            ("The capital of {} is", "The capital city of {} is", CITIES, ("The king of {} is", "John")),
            ("The language of {} is", "The first language of {} is", LANGUAGES, ("The river of {} is", "big")),
        ):
            records.append(EditRecord(
                id=f"{relation.split()[1]}-{i}", subject=country, prompt=relation.format(country),
                target_new=pick(answers), ground_truth="", rephrase_prompt=rephrase.format(country),
                locality_prompt=loc[0].format(pick(COUNTRIES)), locality_answer=loc[1],
            ))
    return records


RECORDS = synthetic_records()
TRAIN, HELD_OUT = RECORDS[:20], RECORDS[20:]


def tiny_hparams(model, **overrides) -> MendHparams:
    d = {
        "layers": [1, 2], "rewrite_module_tmps": TEMPLATES[model.config.model_type], "rank": 16,
        "edit_lr": 1e-3, "lr": 1e-3, "lr_lr": 1e-3, "train_steps": 60, "batch_size": 2, "accumulate_bs": 1,
        "cedit": 1.0, "cloc": 1.0,
    }
    return MendHparams.from_dict({**d, **overrides})


@pytest.fixture(scope="module")
def trained():
    """Editors trained once per model fixture, shared by the tests that only read them."""
    return {}


def get_trained(trained, name: str, model, tok):
    if name not in trained:
        trained[name] = Mend.train(model, tok, TRAIN, tiny_hparams(model), seed=0)
    return trained[name]


@torch.no_grad()
def target_nll(model, tok, record: EditRecord) -> float:
    ids = tok(record.prompt)["input_ids"]
    target = target_ids(tok, record.target_new)
    logp = model(input_ids=torch.tensor([ids + target])).logits[0, -len(target) - 1 : -1].log_softmax(-1)
    return -logp.gather(1, torch.tensor(target)[:, None]).mean().item()


def test_registered():
    assert METHODS.get("mend") is Mend
    assert Mend.trainable()


@pytest.mark.parametrize("variant", [{}, {"combine": False}, {"combine": False, "one_sided": True}])
def test_untrained_editor_is_minus_alpha_times_the_gradient(model_tok, variant):
    model, tok = model_tok
    hp = tiny_hparams(model, **variant)
    records = RECORDS[:2]
    # The edit loss, one record at a time without padding: Σ_records mean target NLL.
    params = dict(model.named_parameters())
    names = Mend.param_names(model, hp)
    loss = 0.0
    for r in records:
        ids = tok(r.prompt)["input_ids"]
        target = target_ids(tok, r.target_new)
        logp = model(input_ids=torch.tensor([ids + target])).logits[0, -len(target) - 1 : -1].log_softmax(-1)
        loss = loss - logp.gather(1, torch.tensor(target)[:, None]).mean()
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    delta = Mend.compute_delta(model, tok, records, hp, editor=init_editor(model, hp, seed=0))
    assert list(delta) == names
    for name, grad in zip(names, grads):
        assert delta[name].shape == params[name].shape
        assert grad.abs().max() > 0
        torch.testing.assert_close(delta[name], -hp.edit_lr * grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item())


def test_trained_editor_beats_untrained_on_held_out_edits(request, model_tok, trained):
    model, tok = model_tok
    hp = tiny_hparams(model)
    editors = {"untrained": init_editor(model, hp, seed=0),
               "trained": get_trained(trained, request.node.callspec.id, model, tok)}
    nll = {}
    for kind, editor in editors.items():
        after = []
        for r in HELD_OUT:
            with applied(model, Mend.compute_delta(model, tok, [r], hp, editor=editor)):
                after.append(target_nll(model, tok, r))
        nll[kind] = sum(after) / len(after)
    before = sum(target_nll(model, tok, r) for r in HELD_OUT) / len(HELD_OUT)
    # Measured: before ≈ 6.5-6.7, untrained ≈ 6.2-6.7, trained ≈ 0.3-3.9.
    assert nll["untrained"] < before
    assert nll["trained"] < nll["untrained"] - 1.5


def test_training_is_reproducible_and_leaves_the_model_unchanged(tiny_llama):
    model, tok = tiny_llama
    hp = tiny_hparams(model, train_steps=6)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first = Mend.train(model, tok, TRAIN, hp, seed=3)
    second = Mend.train(model, tok, TRAIN, hp, seed=3)
    other = Mend.train(model, tok, TRAIN, hp, seed=4)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    # Trained: the networks moved from their identity start and the normalisation was fitted.
    untrained = init_editor(model, hp, seed=3)
    assert not torch.equal(first["net.128x64.ud.0.U"], untrained["net.128x64.ud.0.U"])
    assert not torch.equal(first["norm.model.layers.2.mlp.down_proj.weight.d_std"], torch.ones(64))
    Mend.compute_delta(model, tok, HELD_OUT[:2], hp, editor=first)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_editor_is_flat_tensors_that_survive_safetensors(tmp_path, tiny_gpt2, trained):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    editor = get_trained(trained, "tiny_gpt2", model, tok)
    assert all(isinstance(k, str) and type(v) is torch.Tensor and not v.requires_grad for k, v in editor.items())
    save_tensors(tmp_path / "editor.safetensors", editor, {"method": "mend"})
    loaded, _ = load_tensors(tmp_path / "editor.safetensors")
    a = Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=editor)
    b = Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=loaded)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_batch_edit_is_the_sum_of_its_single_edits(request, model_tok, trained):
    model, tok = model_tok
    hp = tiny_hparams(model)
    editor = get_trained(trained, request.node.callspec.id, model, tok)
    batch = Mend.compute_delta(model, tok, HELD_OUT[:3], hp, editor=editor)
    singles = [Mend.compute_delta(model, tok, [r], hp, editor=editor) for r in HELD_OUT[:3]]
    for name, delta in batch.items():
        total = sum(s[name] for s in singles)
        torch.testing.assert_close(delta, total, rtol=1e-4, atol=1e-5 * total.abs().max().item())


def test_compute_delta_needs_a_fitting_editor(tiny_gpt2):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    with pytest.raises(ValueError, match="trained editor.*Mend.train"):
        Mend.compute_delta(model, tok, HELD_OUT[:1], hp)
    other = init_editor(model, tiny_hparams(model, rank=8), seed=0)
    with pytest.raises(ValueError, match="does not fit.*wrong shape"):
        Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=other)


def test_shared_networks_follow_matrix_shapes(tiny_llama):
    model, _ = tiny_llama
    sites = edit_sites(model, tiny_hparams(model))
    # gate and up map 64 → 128 and share one network; down maps 128 → 64; each matrix has its own row.
    assert [(s.group, s.member) for s in sites] == [
        ("64x128", 0), ("64x128", 1), ("128x64", 0), ("64x128", 2), ("64x128", 3), ("128x64", 1)]
    unshared = edit_sites(model, tiny_hparams(model, shared=False))
    assert len({s.group for s in unshared}) == 6


EASYEDIT_YAML = """
alg_name: "MEND"
archive: null
device: 0
model_name: ./hugging_cache/llama-2-7b
model_class: LlamaForCausalLM
tokenizer_class: LlamaTokenizer
tokenizer_name: ./hugging_cache/llama-2-7b
model_parallel: false
inner_params:
- model.layers.29.mlp.gate_proj.weight
- model.layers.29.mlp.up_proj.weight
- model.layers.29.mlp.down_proj.weight
- model.layers.30.mlp.gate_proj.weight
- model.layers.30.mlp.up_proj.weight
- model.layers.30.mlp.down_proj.weight
- model.layers.31.mlp.gate_proj.weight
- model.layers.31.mlp.up_proj.weight
- model.layers.31.mlp.down_proj.weight
alg: MEND
lr: 1e-6
edit_lr: 1e-4
lr_lr: 1e-4
lr_scale: 1.0
seed: 42
cedit: 0.1
cloc: 1.0
cbase: 1.0
dropout: 0.0
train_base: False
no_grad_layers: null
one_sided: False
n_hidden: 1
hidden_dim: null
init: id
norm: True
combine: True
x_only: False
delta_only: False
act: relu
rank: 1920
mlp_class: IDMLP
shared: True
batch_size: 1
model_save_pt: 5000
silent: False
max_iters: 100000
log_interval: 1000
eval_log_interval: 1000
final_eval: True
val_interval: 1000
early_stop_patience: 20000
early_stop_key: "loss/total_edit_val"
eval_only: False
half: False
debug: False
save: False
verbose: True
val_batch_size: 5
accumulate_bs: 10
val_steps: 500
opt: Adam
grad_clip: 100.
results_dir: ./results
"""


def test_easyedit_hparams_are_read():
    d = yaml.safe_load(EASYEDIT_YAML)
    assert isinstance(d["lr"], str)  # PyYAML reads 1e-6 as a string
    hp = MendHparams.from_easyedit(d)
    assert hp.layers == [29, 30, 31]
    assert hp.rewrite_module_tmps == [f"model.layers.{{}}.mlp.{m}_proj" for m in ("gate", "up", "down")]
    assert len(hp.module_paths) == 9 and hp.module_paths[0] == "model.layers.29.mlp.gate_proj"
    assert (hp.lr, hp.edit_lr, hp.lr_lr, hp.rank, hp.cedit) == (1e-6, 1e-4, 1e-4, 1920, 0.1)
    assert (hp.train_steps, hp.accumulate_bs, hp.val_size, hp.grad_clip) == (100000, 10, 2500, 100.0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['lr_decay'\]"):
        MendHparams.from_easyedit({**d, "lr_decay": 0.9})
    with pytest.raises(ValueError, match=r"dropout=0.1 cannot be honoured"):
        MendHparams.from_easyedit({**d, "dropout": 0.1})
    with pytest.raises(ValueError, match="not every module at every layer"):
        MendHparams.from_easyedit({**d, "inner_params": d["inner_params"][:-1]})
    with pytest.raises(ValueError, match=r"one_sided=True .*combine"):
        MendHparams.from_easyedit({**d, "one_sided": True})


@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(preset, tiny_llama):
    text = resources.files("editharm.editing").joinpath(f"presets/mend/{preset}.yaml").read_text()
    hp = MendHparams.from_dict(yaml.safe_load(text))
    if preset == "tiny-llama":
        assert len(Mend.param_names(tiny_llama[0], hp)) == len(hp.module_paths)


def test_demo_train_records_are_separate_from_the_demo_edits():
    train = load_edit_records(DEMO_DIR / "zsre_demo_train.json")
    demo = json.loads((DEMO_DIR / "zsre_demo.json").read_text())
    assert len(train) == 60
    assert not {r.subject for r in train} & {r["subject"] for r in demo}
    assert len({r.subject for r in train}) == 60
    assert all(len(r.target_new.split()) <= 2 and r.target_new != r.ground_truth for r in train)
