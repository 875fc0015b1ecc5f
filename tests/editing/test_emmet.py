"""EMMET on tiny random GPT-2 (Conv1D) and Llama (Linear): a batch of facts flips, and the solve is the
equality-constrained minimum of ‖ΔW C^½‖ (ROME's update for a batch of one)."""
from __future__ import annotations

from importlib import resources

import pytest
import torch
import yaml
from helpers import BATCH, spread_hparams

from editharm.editing.methods import METHODS
from editharm.editing.methods.emmet import Emmet, EmmetHparams, emmet_update
from editharm.editing.methods.memit import memit_update
from editharm.editing.methods.rome import rank_one_update
from editharm.model.deltas import applied
from editharm.model.stats import collect_second_moment
from editharm.model.tokens import target_ids

SOLVER = {"rtol": 1e-8, "atol": 1e-10}  # float64 round-off


def tiny_hparams(model, **overrides) -> EmmetHparams:
    return EmmetHparams.from_dict({**spread_hparams(model), **overrides})


def stats_for(model, tok, hp, texts):
    by_module = {path: collect_second_moment(model, tok, path, texts)[0] for path in Emmet.stats_modules(hp)}
    return by_module.__getitem__


@torch.no_grad()
def next_token(model, tok, prompt: str) -> int:
    return model(input_ids=tok(prompt, return_tensors="pt")["input_ids"]).logits[0, -1].argmax().item()


def problem(n: int, seed: int = 0, n_in: int = 12, n_out: int = 5):
    """Random keys (in × n), residuals (out × n) and a well-conditioned second moment, float64."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(n_in, n, generator=g, dtype=torch.float64)
    residual = torch.randn(n_out, n, generator=g, dtype=torch.float64)
    a = torch.randn(3 * n_in, n_in, generator=g, dtype=torch.float64)
    return keys, residual, a.T @ a / (3 * n_in)


def exact(**overrides) -> EmmetHparams:
    base = {"layers": [1], "rewrite_module_tmp": "m.{}", "emmet_lambda": 0.0}
    return EmmetHparams.from_dict({**base, **overrides})


def constrained_minimum(keys, residual, c):
    """argmin tr(X C Xᵀ) s.t. X K = R by its KKT system [2C K; Kᵀ 0] [Xᵀ; Λ] = [0; Rᵀ], solved as one matrix."""
    n_in, n = keys.shape
    kkt = torch.cat([torch.cat([2 * c, keys], 1), torch.cat([keys.T, torch.zeros(n, n, dtype=c.dtype)], 1)])
    rhs = torch.cat([torch.zeros(n_in, residual.shape[0], dtype=c.dtype), residual.T])
    return torch.linalg.solve(kkt, rhs)[:n_in].T


def test_registered():
    assert METHODS.get("emmet") is Emmet


@pytest.mark.parametrize("with_c", [True, False])
def test_update_meets_the_constraints_with_the_least_c_norm(with_c):
    keys, residual, c = problem(4)
    if not with_c:
        c = torch.eye(keys.shape[0], dtype=torch.float64)
    update = emmet_update(keys, residual, c if with_c else None, exact(mom2_update_weight=7.0))
    torch.testing.assert_close(update @ keys, residual, **SOLVER)  # (W + ΔW) K = V
    assert torch.linalg.matrix_rank(update).item() == keys.shape[1]  # ≤ B (= B for independent keys)
    torch.testing.assert_close(update, constrained_minimum(keys, residual, c), **SOLVER)
    # Any other update that meets the constraints (ΔW + E with E K = 0) has a larger C-weighted norm.
    g = torch.Generator().manual_seed(1)
    null = torch.linalg.svd(keys.T).Vh[keys.shape[1]:]  # rows orthogonal to every key

    def cost(x):
        return torch.trace(x @ c @ x.T).item()

    for _ in range(20):
        other = update + torch.randn(residual.shape[0], null.shape[0], generator=g, dtype=torch.float64) @ null
        torch.testing.assert_close(other @ keys, residual, **SOLVER)
        assert cost(other) > cost(update)


def test_update_norm_lambda_adds_to_the_weighted_second_moment():
    keys, residual, c = problem(3)
    hp = exact(mom2_update_weight=5.0, update_norm_lambda=2.0)
    c_tilde = 5.0 * c + 2.0 * torch.eye(keys.shape[0], dtype=torch.float64)
    torch.testing.assert_close(emmet_update(keys, residual, c, hp), constrained_minimum(keys, residual, c_tilde),
                               **SOLVER)


def test_one_key_is_romes_rank_one_update():
    keys, residual, c = problem(1)
    u = torch.linalg.solve(c, keys[:, 0])
    rome = rank_one_update(u, keys[:, 0], residual[:, 0], transposed=False).double()
    # emmet_lambda is added only for batches of more than one key (the authors' code) ...
    update = emmet_update(keys, residual, c, exact(emmet_lambda=0.1))
    torch.testing.assert_close(update, rome, rtol=1e-6, atol=1e-6)  # ROME's update is stored in float32
    assert torch.linalg.matrix_rank(update).item() == 1
    # ... unless emmet_lambda_single (EasyEdit's code), which shrinks it by kᵀC⁻¹k / (kᵀC⁻¹k + λ).
    quad = keys[:, 0] @ u
    shrunk = emmet_update(keys, residual, c, exact(emmet_lambda=0.1, emmet_lambda_single=True))
    torch.testing.assert_close(shrunk, update * quad / (quad + 0.1), **SOLVER)


def test_regularised_solve_is_memit_with_the_product_of_the_weights():
    # (Kᵀ (λC)⁻¹ K + μI)⁻¹ Kᵀ (λC)⁻¹ = Kᵀ (K Kᵀ + μλ C)⁻¹: EMMET with emmet_lambda μ is MEMIT with λ_MEMIT = μλ.
    keys, residual, c = problem(4)
    hp = exact(mom2_update_weight=300.0, emmet_lambda=0.1)
    update = emmet_update(keys, residual, c, hp)
    torch.testing.assert_close(update, memit_update(keys, residual, c, 30.0), rtol=1e-7, atol=1e-9)
    assert (update @ keys - residual).norm() > 1e-3  # the constraints no longer hold exactly


def test_repeated_keys_fall_back_to_the_pseudo_inverse():
    keys, residual, c = problem(2)
    keys = torch.cat([keys[:, :1], keys[:, :1]], 1)
    residual = torch.cat([residual[:, :1], residual[:, :1]], 1)
    update = emmet_update(keys, residual, c, exact())
    torch.testing.assert_close(update @ keys, residual, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mom2", [True, False])
def test_batch_flips_every_fact_and_leaves_the_model_unchanged(model_tok, tiny_texts, mom2):
    model, tok = model_tok
    hp = tiny_hparams(model, mom2_adjustment=mom2)
    targets = [target_ids(tok, r.prompt, r.target_new)[0] for r in BATCH]
    assert all(next_token(model, tok, r.prompt) != t for r, t in zip(BATCH, targets))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    delta = Emmet.compute_delta(model, tok, BATCH, hp, stats=stats_for(model, tok, hp, tiny_texts))
    assert list(delta) == Emmet.param_names(model, hp)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    with applied(model, delta):
        assert [next_token(model, tok, r.prompt) for r in BATCH] == targets


def test_one_layer_update_meets_the_models_constraints(model_tok, tiny_texts):
    model, tok = model_tok
    hp = tiny_hparams(model, layers=[1], emmet_lambda=0.0)
    stats = stats_for(model, tok, hp, tiny_texts)
    (step,) = Emmet.steps(model, tok, BATCH, hp, stats=stats)
    update = (step.update.T if model.config.model_type == "gpt2" else step.update).double()  # (out, in)
    # ΔW K = R up to the float32 the update is stored in
    torch.testing.assert_close(update @ step.keys, step.residual, rtol=1e-4, atol=1e-4)
    assert torch.linalg.matrix_rank(step.update).item() == len(BATCH)
    torch.testing.assert_close(update, constrained_minimum(step.keys, step.residual, stats(hp.module_path(1)).double()),
                               rtol=1e-4, atol=1e-5)
    # A batch of one: ROME's update for MEMIT's key and residual.
    (single,) = Emmet.steps(model, tok, BATCH[:1], hp, stats=stats)
    key = single.keys[:, 0]
    rome = rank_one_update(torch.linalg.solve(stats(hp.module_path(1)).double(), key), key, single.residual[:, 0],
                           transposed=model.config.model_type == "gpt2")
    torch.testing.assert_close(single.update, rome, rtol=1e-4, atol=1e-6)


def test_stats_are_needed_when_adjusting(tiny_gpt2):
    model, tok = tiny_gpt2
    hp = tiny_hparams(model)
    assert Emmet.stats_modules(hp) == ["transformer.h.0.mlp.c_proj", "transformer.h.1.mlp.c_proj"]
    assert Emmet.stats_modules(tiny_hparams(model, mom2_adjustment=False)) == []
    with pytest.raises(ValueError, match="second-moment"):
        Emmet.compute_delta(model, tok, BATCH, hp)


def test_hparams_are_checked():
    base = {"layers": [5], "rewrite_module_tmp": "model.layers.{}.mlp.down_proj"}
    with pytest.raises(ValueError, match=r"emmet_lambda=-0.1.*≥ 0"):
        EmmetHparams.from_dict({**base, "emmet_lambda": -0.1})
    with pytest.raises(ValueError, match=r"mom2_update_weight=0.0.*> 0"):
        EmmetHparams.from_dict({**base, "mom2_update_weight": 0})
    with pytest.raises(ValueError, match=r"update_norm_lambda=-1.0.*≥ 0"):
        EmmetHparams.from_dict({**base, "update_norm_lambda": -1})
    hp = EmmetHparams.from_dict(base)
    assert (hp.emmet_lambda, hp.emmet_lambda_single, hp.mom2_update_weight) == (0.1, False, 1.0)
    assert EmmetHparams.from_dict(hp.to_dict()) == hp


EASYEDIT_YAML = """
layers: [5]
clamp_norm_factor: 4
layer_selection: "all"
fact_token: "subject_last"
v_num_grad_steps: 25
v_lr: 5e-1
v_loss_layer: 31
v_weight_decay: 1e-3
kl_factor: 0.0625
mom2_adjustment: true
mom2_update_weight: 100000
rewrite_module_tmp: "model.layers.{}.mlp.down_proj"
layer_module_tmp: "model.layers.{}"
mlp_module_tmp: "model.layers.{}.mlp"
attn_module_tmp: "model.layers.{}.self_attn"
ln_f_module: "model.norm"
lm_head_module: "lm_head"
mom2_dataset: "wikipedia"
mom2_n_samples: 100000
mom2_dtype: "float32"
update_norm_lambda: 0
emmet_lambda: 0.1
model_parallel: false

stats_dir: "./data/stats"
device: 4
model_name: "./hugging_cache/llama-2-7b"
alg_name: "EMMET"
"""


def test_easyedit_hparams_are_read():
    easyedit = yaml.safe_load(EASYEDIT_YAML)
    hp = EmmetHparams.from_easyedit(easyedit)
    assert hp.layers == [5] and hp.block_path(5) == "model.layers.5"
    assert (hp.v_lr, hp.v_weight_decay, hp.mom2_update_weight, hp.emmet_lambda) == (0.5, 1e-3, 100000.0, 0.1)
    assert hp.emmet_lambda_single  # EasyEdit regularises a batch of one too
    assert EmmetHparams.from_easyedit({**easyedit, "calculate_objective_value": False}) == hp  # the authors' key
    with pytest.raises(ValueError, match=r"mom2_adjustment=False.*always uses second-moment"):
        EmmetHparams.from_easyedit({**easyedit, "mom2_adjustment": False})
    with pytest.raises(ValueError, match="layer_selection='random'"):
        EmmetHparams.from_easyedit({**easyedit, "layer_selection": "random"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batch_size'\]"):
        EmmetHparams.from_easyedit({**easyedit, "batch_size": 16})


@pytest.mark.parametrize("preset", ["gpt2-xl", "llama-7b", "llama-2-7b", "smollm2-135m", "tiny-llama"])
def test_presets_load(preset):
    text = resources.files("editharm.editing").joinpath(f"presets/emmet/{preset}.yaml").read_text()
    assert EmmetHparams.from_dict(yaml.safe_load(text)).mom2_adjustment


def test_tiny_llama_preset_edits_the_tiny_llama(tiny_llama, tiny_texts):
    model, tok = tiny_llama
    text = resources.files("editharm.editing").joinpath("presets/emmet/tiny-llama.yaml").read_text()
    hp = EmmetHparams.from_dict(yaml.safe_load(text))
    delta = Emmet.compute_delta(model, tok, BATCH[:2], hp, stats=stats_for(model, tok, hp, tiny_texts))
    with applied(model, delta):
        assert [next_token(model, tok, r.prompt) for r in BATCH[:2]] == [
            target_ids(tok, r.prompt, r.target_new)[0] for r in BATCH[:2]
        ]
