"""PRUNE bounds the accumulated ΔW's singular values as specified; null-space projection spares preserved keys."""
import math

import pytest
import torch
from helpers import reg_context

from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.regularizers.nullspace import null_space_projector
from editharm.editing.regularizers.prune import restrain


def _spectral(x):
    return torch.linalg.matrix_norm(x.double(), ord=2).item()


def test_restrain_is_identity_below_the_ceiling_and_logarithmic_above():
    s = torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64)
    out = restrain(s, ceiling=2.0, alpha=math.e)
    assert out[1:].tolist() == [2.0, 1.0, 0.5]
    assert out[0].item() == pytest.approx(math.log(5.0) - math.log(2.0) + 2.0)
    assert restrain(s, 2.0, 10.0)[0].item() == pytest.approx(math.log10(5.0) - math.log10(2.0) + 2.0)


def test_prune_bounds_the_accumulated_update_over_a_sequence():
    g = torch.Generator().manual_seed(0)
    original = torch.randn(20, 12, generator=g, dtype=torch.float64) * 0.1
    ceiling = _spectral(original)
    prune = REGULARIZERS.get("prune")
    params = prune.Params.from_dict({})
    state: dict = {}
    weight = original.clone()
    raw = torch.zeros_like(original)
    for i in range(4):
        delta = torch.outer(torch.randn(20, generator=g), torch.randn(12, generator=g)).double() * 3
        raw += delta
        out = prune.apply(delta, params, reg_context(weight, original=original, state=state))
        weight = weight + out
        applied = weight - original
        # the applied accumulation is U F(Σ) Vᵀ of the raw accumulation
        u, s, vh = torch.linalg.svd(raw, full_matrices=False)
        expected_top = math.log(s[0].item()) - math.log(ceiling) + ceiling if s[0] > ceiling else s[0].item()
        assert _spectral(applied) == pytest.approx(expected_top, rel=1e-9)
        assert _spectral(applied) <= s[0].item() + 1e-12
        torch.testing.assert_close(applied, (u * restrain(s, ceiling, math.e)) @ vh)


def test_prune_leaves_small_updates_alone():
    original = torch.eye(6, dtype=torch.float64) * 10
    delta = torch.outer(torch.ones(6), torch.ones(6)).double() * 0.01
    prune = REGULARIZERS.get("prune")
    out = prune.apply(delta, prune.Params.from_dict({}), reg_context(original, state={}))
    torch.testing.assert_close(out, delta)


def test_prune_rejects_alpha_at_most_one():
    with pytest.raises(ValueError, match="alpha=1.0 is not allowed"):
        REGULARIZERS.get("prune").Params.from_dict({"alpha": 1.0})


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
