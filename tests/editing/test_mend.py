"""MEND on tiny random GPT-2 (Conv1D) and Llama (Linear): the editor network is the reference's IDMLP
(checked against a forward computed by hand), the untrained editor is gradient descent, training
makes held-out edits stronger, training is reproducible and the model is left alone."""
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
from editharm.editing.methods.mend import (
    ARCH_KEY, Mend, MendHparams, Site, edit_sites, editor_deltas, init_editor, transform,
)
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
    target = target_ids(tok, record.prompt, record.target_new)
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
        target = target_ids(tok, r.prompt, r.target_new)
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
    # Measured: before ≈ 6.5-6.7, untrained ≈ 6.2-6.7, trained ≈ 0.3-0.4.
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
    assert bytes(loaded[ARCH_KEY].tolist()).decode().startswith("mend IDMLP v1: init=id n_hidden=1 rank=16")
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
    with pytest.raises(ValueError, match="trained as .*rank=8.*these hparams describe .*rank=16"):
        Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=other)
    editor = init_editor(model, hp, seed=0)
    bad = {**editor, "net.64x256.ud.0.bias": torch.zeros(16)}
    with pytest.raises(ValueError, match=r"does not fit.*wrong shape \['net.64x256.ud.0.bias'\]"):
        Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=bad)


def test_an_editor_saved_before_idmlp_is_refused(tmp_path, tiny_gpt2):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    # The earlier editor's tensors: rank-space blocks (V, b, U, scale, shift), no architecture record.
    old = {k: v for k, v in init_editor(model, hp, seed=0).items() if k.startswith(("lr.", "norm."))}
    old.update({"net.64x256.ud.0.V": torch.zeros(16, 320), "net.64x256.ud.0.b": torch.zeros(16),
                "net.64x256.ud.0.U": torch.zeros(320, 16), "net.64x256.ud.0.scale": torch.ones(4, 16),
                "net.64x256.ud.0.shift": torch.zeros(4, 16)})
    save_tensors(tmp_path / "old.safetensors", old, {"method": "mend"})
    loaded, _ = load_tensors(tmp_path / "old.safetensors")
    with pytest.raises(ValueError, match="no 'arch' record.*earlier MEND editor.*train it again"):
        Mend.compute_delta(model, tok, HELD_OUT[:1], hp, editor=loaded)


def hand_hparams(**overrides) -> MendHparams:
    return MendHparams.from_dict({"layers": [0], "rewrite_module_tmps": ["m.{}"], "rank": 1, "n_hidden": 1,
                                  **overrides})


def hand_editor(shared: bool) -> dict[str, torch.Tensor]:
    """One matrix W (1 × 2, member 1 of a shared shape), networks on [u; δ] of width 3 at rank 1."""
    editor = {
        "lr.w": torch.tensor(0.5),
        "norm.w.u_mean": torch.tensor([0.0, 2.0]), "norm.w.u_std": torch.tensor([2.0, 1.0]),
        "norm.w.d_mean": torch.tensor([1.0]), "norm.w.d_std": torch.tensor([2.0]),
        "net.g.ud.0.V": torch.tensor([[1.0, 1.0, 0.0]]), "net.g.ud.0.U": torch.tensor([[1.0], [-1.0], [2.0]]),
        "net.g.ud.0.bias": torch.tensor([1.0, 0.0, -1.0]),
        "net.g.ud.1.V": torch.tensor([[0.0, 1.0, 1.0]]), "net.g.ud.1.U": torch.tensor([[1.0], [1.0], [-1.0]]),
        "net.g.ud.1.bias": torch.tensor([0.0, 0.0, 1.0]),
    }
    if shared:  # row 0 belongs to another matrix and must not be used
        editor.update({
            "net.g.ud.0.scale": torch.tensor([[9.0, 9.0, 9.0], [2.0, 1.0, 0.5]]),
            "net.g.ud.0.shift": torch.tensor([[9.0, 9.0, 9.0], [0.0, 1.0, -3.0]]),
            "net.g.ud.1.scale": torch.tensor([[9.0, 9.0, 9.0], [1.0, -1.0, 1.0]]),
            "net.g.ud.1.shift": torch.tensor([[9.0, 9.0, 9.0], [-1.0, 0.0, 0.0]]),
        })
    return editor


# Two tokens: u = [2, 4], δ = [3] and u = [0, 2], δ = [1]. Normalised, x = [1, 2, 1] and x = [0, 0, 0].
# Each layer: pre = U V x + bias, then (shared) pre ⊙ scale[1] + shift[1], then clamp at 0; init id
# adds x back, init xavier does not. Token 1, shared, id:
#   layer 0: V x = 3, U V x = [3, -3, 6], + bias [4, -3, 5], ⊙ scale [8, -3, 2.5], + shift [8, -2, -0.5],
#            relu [8, 0, 0], + x = [9, 2, 1];
#   layer 1: V x = 3, U V x = [3, 3, -3], + bias [3, 3, -2], ⊙ scale [3, -3, -2], + shift [2, -3, -2],
#            relu [2, 0, 0], + x = [11, 2, 1].
# Token 2, shared, id: layer 0: bias [1, 0, -1] → ⊙ scale [2, 0, -0.5] → + shift [2, 1, -3.5] → relu + x
#   [2, 1, 0]; layer 1: V x = 1, [1, 1, -1] + bias [1, 1, 0] → [1, -1, 0] → [0, -1, 0] → relu 0, x stays.
# Unshared (no scale, shift), token 1: layer 0 relu [4, 0, 5] + x = [5, 2, 6]; layer 1: V x = 8,
#   [8, 8, -8] + bias [8, 8, -7], relu [8, 8, 0] + x = [13, 10, 6]. Token 2: layer 0 relu [1, 0, 0] = x;
#   layer 1: V x = 0, bias [0, 0, 1], relu + x = [1, 0, 1].
# Shared, xavier (no residual), token 1: layer 0 [8, 0, 0]; layer 1: V x = 0, pre = bias [0, 0, 1]
#   ⊙ scale [0, 0, 1] + shift [-1, 0, 1], relu [0, 0, 1]. Token 2: layer 0 [2, 1, 0]; layer 1: V x = 1,
#   [1, 1, -1] + bias → [1, 1, 0] ⊙ scale [1, -1, 0] + shift [0, -1, 0], relu [0, 0, 0].
@pytest.mark.parametrize("shared, init, u_out, d_out", [
    (True, "id", [[11.0, 2.0], [2.0, 1.0]], [[1.0], [0.0]]),
    (False, "id", [[13.0, 10.0], [1.0, 0.0]], [[6.0], [1.0]]),
    (True, "xavier", [[0.0, 0.0], [0.0, 0.0]], [[1.0], [0.0]]),
])
def test_editor_network_is_the_reference_idmlp(shared, init, u_out, d_out):
    hp = hand_hparams(shared=shared, init=init)
    site = Site(name="w", module="m.0", transposed=False, d_in=2, d_out=1, group="g", member=1 if shared else 0)
    u, d = torch.tensor([[2.0, 4.0], [0.0, 2.0]]), torch.tensor([[3.0], [1.0]])
    ut, dt = transform(hand_editor(shared), site, u, d, hp)
    torch.testing.assert_close(ut, torch.tensor(u_out))
    torch.testing.assert_close(dt, torch.tensor(d_out))
    # ΔW = −α Σ_t δ̃_t ũ_tᵀ, α = 0.5.
    delta = editor_deltas(hand_editor(shared), [site], {"w": (u, d)}, hp)["w"]
    torch.testing.assert_close(delta, -0.5 * torch.tensor(d_out).T @ torch.tensor(u_out))


@pytest.mark.parametrize("n_hidden", [0, 2])
def test_untrained_networks_are_the_identity(tiny_llama, n_hidden):
    model, _ = tiny_llama
    hp = tiny_hparams(model, rank=1000, n_hidden=n_hidden)
    editor = init_editor(model, hp, seed=0)
    site = edit_sites(model, hp)[2]  # down_proj: 128 → 64, combined width 192
    layers = sorted({k.split(".")[3] for k in editor if k.startswith("net.")})
    assert layers == [str(i) for i in range(n_hidden + 1)]
    for layer in layers:
        key = f"net.{site.group}.ud.{layer}"
        assert editor[f"{key}.U"].shape == (192, 192) and not editor[f"{key}.U"].any()  # rank capped at 192
        assert editor[f"{key}.V"].shape == (192, 192) and abs(editor[f"{key}.V"].std().item() - 1) < 0.05
        assert not editor[f"{key}.bias"].any() and not editor[f"{key}.shift"].any()
        assert torch.equal(editor[f"{key}.scale"], torch.ones(2, 192))
    u, d = torch.randn(5, 128), torch.randn(5, 64)
    ut, dt = transform(editor, site, u, d, hp)
    torch.testing.assert_close(ut, u, rtol=1e-6, atol=0)
    torch.testing.assert_close(dt, d, rtol=1e-6, atol=0)
    unshared = init_editor(model, tiny_hparams(model, shared=False), seed=0)
    assert not any(k.endswith((".scale", ".shift")) for k in unshared)


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
    assert (hp.init, hp.n_hidden, hp.combine, hp.shared, hp.norm) == ("id", 1, True, True, True)
    assert MendHparams.from_easyedit({**d, "init": "xavier"}).init == "xavier"
    assert MendHparams.from_easyedit({**d, "dropout": 0.1, "hidden_dim": 64}) == hp  # EasyEdit's MEND ignores both
    with pytest.raises(ValueError, match=r"mlp_class='MLP' cannot be honoured; allowed: 'IDMLP'"):
        MendHparams.from_easyedit({**d, "mlp_class": "MLP"})
    with pytest.raises(ValueError, match=r"act='tanh' cannot be honoured; allowed: 'relu'"):
        MendHparams.from_easyedit({**d, "act": "tanh"})
    with pytest.raises(ValueError, match=r"init='ortho' is not allowed; allowed: 'id', 'xavier'"):
        MendHparams.from_easyedit({**d, "init": "ortho"})
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
