"""RECT keeps exactly ceil(k·n) entries of ΔW, the ones with the largest relative change."""
from __future__ import annotations

import math

import pytest
import torch
from helpers import reg_context

from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.regularizers.rect import ShareParams, n_kept
from editharm.model.deltas import relative_change

SHAPES = [(7,), (5, 3), (16, 8), (64, 24), (3, 4, 5)]
KS = [0.01, 0.1, 0.25, 0.4, 0.5, 0.9, 1.0]


def apply(weight, delta, k, name="w"):
    rect = REGULARIZERS.get("rect")
    return rect.apply(delta, rect.Params.from_dict({"k": k}), reg_context(weight, name=name))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", KS)
def test_keeps_exactly_ceil_kn_largest_relative_changes(shape, k):
    g = torch.Generator().manual_seed(len(shape) * 100 + int(k * 100))
    weight = torch.randn(shape, generator=g)
    delta = torch.randn(shape, generator=g) * 1e-2
    out = apply(weight, delta, k)
    kept = out != 0
    n = delta.numel()
    assert int(kept.sum()) == math.ceil(round(k * n, 9)) == n_kept(k, n)
    assert torch.equal(out[kept], delta[kept])  # kept entries are not rescaled
    score = (delta / weight).abs()
    if not kept.all():
        assert score[kept].min() >= score[~kept].max()


def test_ceil_reads_k_as_written():
    assert n_kept(0.1, 30) == 3  # 0.1 * 30 == 3.0000000000000004 in floats
    assert n_kept(0.4, 10) == 4
    assert n_kept(0.4, 11) == 5
    assert n_kept(0.01, 7) == 1
    assert n_kept(1.0, 7) == 7


def test_zero_weights_give_no_nan_and_rank_first():
    weight = torch.tensor([[0.0, 1.0, 2.0], [0.0, 4.0, 0.0]])
    delta = torch.tensor([[0.5, 0.9, 0.1], [0.0, 0.2, 0.3]])
    score = relative_change(weight, delta)
    assert not torch.isnan(score).any()
    assert score[0, 0] == math.inf and score[1, 2] == math.inf  # W = 0, ΔW ≠ 0
    assert score[1, 0] == 0  # W = 0, ΔW = 0
    out = apply(weight, delta, 0.5)  # keeps 3 of 6: both infinities, then 0.9 / 1
    assert not torch.isnan(out).any()
    expected = torch.tensor([[0.5, 0.9, 0.0], [0.0, 0.0, 0.3]])
    assert torch.equal(out, expected)


def test_ties_are_broken_by_position_deterministically():
    weight = torch.ones(4, 5)
    delta = torch.full((4, 5), 0.1)
    out = apply(weight, delta, 0.25)
    assert torch.equal(out.flatten() != 0, torch.arange(20) < 5)
    assert torch.equal(out, apply(weight, delta, 0.25))


def test_all_zero_delta_stays_zero():
    weight = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    assert torch.equal(apply(weight, torch.zeros(2, 2), 0.5), torch.zeros(2, 2))


def test_half_precision_delta_keeps_its_dtype():
    weight = torch.randn(6, 4, dtype=torch.float16)
    delta = torch.randn(6, 4, dtype=torch.float16)
    out = apply(weight, delta, 0.5)
    assert out.dtype == torch.float16 and int((out != 0).sum()) == 12


def test_none_is_identity():
    delta = torch.randn(3, 4)
    none = REGULARIZERS.get("none")
    assert none.apply(delta, none.Params.from_dict({}), reg_context(torch.randn(3, 4))) is delta


@pytest.mark.parametrize("bad", [0, 0.0, -0.1, 1.5])
def test_k_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match=r"k=.* must be in \(0, 1\]"):
        ShareParams.from_dict({"k": bad})


def test_params_reject_unknown_keys_and_strings():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['top_k'\]; allowed: \['k'\]"):
        ShareParams.from_dict({"top_k": 0.4})
    with pytest.raises(ValueError, match=r"k='0.4' .*expected float"):
        ShareParams.from_dict({"k": "0.4"})


def test_registry_lists_allowed_names():
    assert {"none", "rect"} <= set(REGULARIZERS.names())
    with pytest.raises(KeyError, match="allowed: .*rect"):
        REGULARIZERS.get("rectt")
