"""PRUNE bounds the accumulated ΔW's singular values as specified, once per checkpoint (`final`) or
after every call (`per_call`); null-space projection spares preserved keys."""
import math
from typing import ClassVar

import pytest
import torch
from helpers import reg_context

from editharm.core.records import EditRecord
from editharm.editing.methods.base import EditMethod
from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.regularizers.base import NoParams
from editharm.editing.regularizers.nullspace import null_space_projector
from editharm.editing.regularizers.prune import restrain
from editharm.editing.run import run_edits
from editharm.editing.settings import Setting
from editharm.model.deltas import load_delta


def _spectral(x):
    return torch.linalg.matrix_norm(x.double(), ord=2).item()


def test_restrain_is_identity_below_the_ceiling_and_logarithmic_above():
    s = torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    out = restrain(s, ceiling=2.0, alpha=math.e)
    assert out[1:].tolist() == [2.0, 1.0, 0.5]
    assert out[0].item() == pytest.approx(math.log(5.0) - math.log(2.0) + 2.0)
    assert restrain(s, 2.0, 10.0)[0].item() == pytest.approx(math.log10(5.0) - math.log10(2.0) + 2.0)


def by_hand(raw: torch.Tensor, ceiling: float, alpha: float = math.e) -> torch.Tensor:
    """U F(Σ) Vᵀ with F written out: log_α σ − log_α σ̄ + σ̄ above the ceiling σ̄, σ below it."""
    u, s, vh = torch.linalg.svd(raw.double(), full_matrices=False)
    f = [math.log(x, alpha) - math.log(ceiling, alpha) + ceiling if x > ceiling else x for x in s.tolist()]
    return u @ torch.diag(torch.tensor(f, dtype=torch.float64)) @ vh


def test_prune_restrains_at_the_end_of_the_sequence_by_default():
    assert REGULARIZERS.get("prune").Params.from_dict({}).restrain == "final"


def test_prune_bounds_the_accumulated_update_over_a_sequence():
    g = torch.Generator().manual_seed(0)
    original = torch.randn(20, 12, generator=g, dtype=torch.float64) * 0.1
    ceiling = _spectral(original)
    prune = REGULARIZERS.get("prune")
    params = prune.Params.from_dict({"restrain": "per_call"})
    state: dict = {}
    weight = original.clone()
    raw = torch.zeros_like(original)
    for i in range(4):
        delta = torch.outer(torch.randn(20, generator=g), torch.randn(12, generator=g)).double() * 3
        raw += delta
        ctx = reg_context(weight, original=original, state=state)
        out = prune.apply(delta, params, ctx)
        # the rule before the exact state: the restrained raw sum minus what the weight holds now
        torch.testing.assert_close(out, by_hand(raw, ceiling) - (weight - original), rtol=0, atol=1e-12)
        assert torch.equal(prune.snapshot(weight - original + out, params, ctx), weight - original + out)
        weight = weight + out
        applied = weight - original
        # the applied accumulation is U F(Σ) Vᵀ of the raw accumulation
        u, s, vh = torch.linalg.svd(raw, full_matrices=False)
        expected_top = math.log(s[0].item()) - math.log(ceiling) + ceiling if s[0] > ceiling else s[0].item()
        assert _spectral(applied) == pytest.approx(expected_top, rel=1e-9)
        assert _spectral(applied) <= s[0].item() + 1e-12
        torch.testing.assert_close(applied, (u * restrain(s, ceiling, math.e)) @ vh)


def test_prune_final_passes_edits_through_and_restrains_their_sum_once():
    g = torch.Generator().manual_seed(1)
    original = torch.randn(20, 12, generator=g, dtype=torch.float64) * 0.1
    ceiling = _spectral(original)
    prune = REGULARIZERS.get("prune")
    params = prune.Params.from_dict({"alpha": 2.0})
    state: dict = {}
    raw = torch.zeros_like(original)
    for _ in range(5):
        delta = torch.outer(torch.randn(20, generator=g), torch.randn(12, generator=g)).double()
        ctx = reg_context(original + raw, original=original, state=state)
        assert torch.equal(prune.apply(delta, params, ctx), delta)
        raw += delta
    assert _spectral(raw) > ceiling  # the restraint has something to do
    held = prune.snapshot(raw, params, reg_context(original + raw, original=original, state=state))
    torch.testing.assert_close(held, by_hand(raw, ceiling, 2.0), rtol=0, atol=1e-12)


@pytest.mark.parametrize("restrain_when", ["final", "per_call"])
def test_prune_leaves_small_updates_alone(restrain_when):
    original = torch.eye(6, dtype=torch.float64) * 10
    delta = torch.outer(torch.ones(6), torch.ones(6)).double() * 0.01
    prune = REGULARIZERS.get("prune")
    params = prune.Params.from_dict({"restrain": restrain_when})
    ctx = reg_context(original, state={})
    out = prune.apply(delta, params, ctx)
    torch.testing.assert_close(prune.snapshot(out, params, ctx), delta)


def test_prune_rejects_bad_params():
    with pytest.raises(ValueError, match="alpha=1.0 is not allowed"):
        REGULARIZERS.get("prune").Params.from_dict({"alpha": 1.0})
    with pytest.raises(ValueError, match="restrain='always' is not allowed; allowed: 'final', 'per_call'"):
        REGULARIZERS.get("prune").Params.from_dict({"restrain": "always"})


class _Toy(torch.nn.Module):
    def __init__(self, dtype: torch.dtype):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.proj = torch.nn.Linear(12, 20, bias=False, dtype=dtype)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(20, 12, generator=g) * 0.1)


def _scripted(deltas: list[torch.Tensor]) -> type[EditMethod]:
    """A method whose call for record i returns deltas[i] and notes the weight it was computed on."""

    class Scripted(EditMethod):
        name = "scripted"
        Hparams = NoParams
        seen: ClassVar[list[torch.Tensor]] = []

        @classmethod
        def param_names(cls, model, hparams):
            return ["proj.weight"]

        @classmethod
        def compute_delta(cls, model, tok, records, hparams, *, stats=None, state=None, editor=None):
            cls.seen.append(model.proj.weight.detach().double().clone())
            return {"proj.weight": deltas[int(records[0].id)]}

    return Scripted


def _run_scripted(model, n: int, steps: list[int], reg_params: dict, tmp_path):
    g = torch.Generator().manual_seed(3)
    deltas = [torch.outer(torch.randn(20, generator=g), torch.randn(12, generator=g)) * 0.3 for _ in range(n)]
    method = _scripted(deltas)
    records = [EditRecord(id=str(i), subject="s", prompt="p s", target_new="t", ground_truth="",
                          rephrase_prompt="", locality_prompt="", locality_answer="") for i in range(n)]
    prune = REGULARIZERS.get("prune")
    paths = run_edits(model, None, method, NoParams(), prune, prune.Params.from_dict(reg_params),
                      Setting("instance_sequential"), records, {s: tmp_path / f"step-{s}.safetensors" for s in steps},
                      metadata={})
    return method.seen, deltas, [load_delta(p)[0]["proj.weight"].double() for p in paths]


@pytest.mark.parametrize("restrain_when", ["final", "per_call"])
def test_each_checkpoint_is_the_restraint_of_its_unrestrained_sum(restrain_when, tmp_path):
    model = _Toy(torch.float64)
    original = model.proj.weight.detach().clone()
    ceiling = _spectral(original)
    seen, deltas, held = _run_scripted(model, 5, [0, 2, 5], {"restrain": restrain_when}, tmp_path)
    sums = [sum(deltas[:k], torch.zeros_like(original)) for k in range(6)]
    assert _spectral(sums[2]) > ceiling
    for file, step in zip(held, [0, 2, 5]):  # "make `step` edits, then restrain once", at every checkpoint
        torch.testing.assert_close(file, by_hand(sums[step], ceiling), rtol=0, atol=1e-6)
    torch.testing.assert_close(model.proj.weight.detach(), original + by_hand(sums[5], ceiling))
    # final: each edit is computed on the unrestrained weights; per_call: on the restrained ones
    for k, weight in enumerate(seen):
        expected = sums[k] if restrain_when == "final" else by_hand(sums[k], ceiling)
        torch.testing.assert_close(weight, original + expected)


@pytest.mark.parametrize("restrain_when", ["final", "per_call"])
def test_bf16_weights_stay_close_to_the_exact_restraint(restrain_when, tmp_path):
    model = _Toy(torch.bfloat16)
    ceiling = _spectral(model.proj.weight.detach())
    _, deltas, (held,) = _run_scripted(model, 20, [20], {"restrain": restrain_when}, tmp_path)
    exact = by_hand(sum(d.double() for d in deltas), ceiling)
    # reading the rounded bf16 weight back instead of the exact sum drifted 1.7e-3 here
    assert (torch.linalg.matrix_norm(held - exact) / torch.linalg.matrix_norm(exact)).item() < 1e-3


def _low_rank_moment(dim, rank, seed=0):
    keys = torch.randn(200, rank, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ torch.randn(
        rank, dim, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return keys, keys.T @ keys / keys.shape[0]


def test_projector_is_symmetric_idempotent_and_spans_the_small_eigenvalues():
    keys, c = _low_rank_moment(16, 5)
    p = null_space_projector(c, 1e-6)
    torch.testing.assert_close(p, p.T)
    torch.testing.assert_close(p @ p, p)
    assert round(torch.trace(p).item()) == 11
    assert (keys.double() @ p).abs().max() < 1e-8


@pytest.mark.parametrize("transposed", [False, True])
def test_nullspace_update_leaves_preserved_keys_unchanged(transposed):
    keys, c = _low_rank_moment(16, 5)
    reg = REGULARIZERS.get("nullspace")
    params = reg.Params.from_dict({"threshold": 1e-6})
    delta = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))  # (out, in)
    layout = delta.T.contiguous() if transposed else delta
    weight = torch.zeros_like(layout)
    ctx = reg_context(weight, name="mlp.down.weight", transposed=transposed, stats=lambda path: c, state={})
    out = reg.apply(layout, params, ctx)
    as_linear = out.T if transposed else out
    assert (as_linear.double() @ keys.double().T).abs().max() < 1e-5  # ΔW' k = 0 for preserved keys
    fresh = torch.randn(16, generator=torch.Generator().manual_seed(9))
    assert (as_linear @ fresh).abs().max() > 1e-2  # other directions still move


def test_nullspace_threshold_relative_and_missing_stats():
    _, c = _low_rank_moment(10, 4)
    top = torch.linalg.eigvalsh(c.double()).max().item()
    assert torch.allclose(null_space_projector(c, 1e-3, relative=True), null_space_projector(c, 1e-3 * top))
    reg = REGULARIZERS.get("nullspace")
    with pytest.raises(ValueError, match="no second-moment statistics for 'mlp'"):
        reg.apply(torch.ones(3, 10), reg.Params.from_dict({}), reg_context(torch.ones(3, 10), name="mlp.weight"))
    with pytest.raises(ValueError, match="threshold=2.0 is not allowed"):
        reg.Params.from_dict({"threshold": 2, "relative": True})
