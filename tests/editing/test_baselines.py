"""Random k% and PCA k%: exactly the documented share of entries or rank, for several shapes."""
import math

import pytest
import torch
from helpers import reg_context

from editharm.config.load import ParamsError
from editharm.editing.regularizers import REGULARIZERS

SHAPES = [(7, 5), (5, 7), (16, 16), (1, 9), (64, 24)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [0.1, 0.4, 1.0])
def test_random_keeps_exactly_ceil_kn_entries_seeded(shape, k):
    reg = REGULARIZERS.get("random")
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(1)) + 10  # no zero entries
    weight = torch.randn(shape)
    params = reg.Params.from_dict({"k": k})
    out = reg.apply(delta, params, reg_context(weight, seed=7))
    kept = out != 0
    assert kept.sum().item() == math.ceil(round(k * delta.numel(), 9))
    assert torch.equal(out[kept], delta[kept])  # kept entries are untouched
    again = reg.apply(delta, params, reg_context(weight, seed=7))
    assert torch.equal(out, again)
    if 1 < kept.sum() < delta.numel():
        other = reg.apply(delta, params, reg_context(weight, seed=8))
        assert not torch.equal(out != 0, other != 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [0.1, 0.5, 1.0])
def test_pca_keeps_the_best_rank_r_approximation(shape, k):
    reg = REGULARIZERS.get("pca")
    delta = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    out = reg.apply(delta, reg.Params.from_dict({"k": k}), reg_context(torch.ones(shape)))
    r = math.ceil(round(k * min(shape), 9))
    assert torch.linalg.matrix_rank(out).item() == r
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    assert torch.allclose(out, (u[:, :r] * s[:r]) @ vh[:r], atol=1e-10)
    # Eckart–Young: the residual is exactly the dropped singular values
    assert torch.allclose(torch.linalg.norm(delta - out), s[r:].norm(), atol=1e-10)


def test_pca_leaves_a_rank_one_update_unchanged():
    reg = REGULARIZERS.get("pca")
    delta = torch.outer(torch.arange(1.0, 7.0), torch.arange(1.0, 5.0))
    out = reg.apply(delta, reg.Params.from_dict({"k": 0.25}), reg_context(torch.ones(6, 4)))
    assert torch.allclose(out, delta, atol=1e-5)


def test_share_out_of_range_is_rejected_naming_k():
    for name in ("random", "pca"):
        with pytest.raises(ValueError, match="k=1.5"):
            REGULARIZERS.get(name).Params.from_dict({"k": 1.5})


def test_params_yaml_accepts_the_baselines(tmp_path):
    from pathlib import Path

    import yaml

    from editharm.config.load import validate_params

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    cfg["regularizers"].update({"random40": {"kind": "random", "k": 0.4}, "pca40": {"kind": "pca", "k": 0.4}})
    assert set(validate_params(cfg)["regularizers"]) == {"none", "rect", "random40", "pca40"}
    cfg["regularizers"]["pca40"]["k"] = 0
    with pytest.raises(ParamsError, match="regularizers.pca40"):
        validate_params(cfg)
