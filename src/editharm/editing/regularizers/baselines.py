"""The RECT paper's baselines: Random k% and PCA k%.

Random k% keeps exactly ceil(k·n) entries of ΔW chosen uniformly at random (seeded), so it
changes as many entries as RECT top-k% but ignores how much each one matters.

PCA k% keeps the leading principal directions of ΔW: for a matrix of shape (m, n) it keeps the
best rank-r approximation U_r S_r V_rᵀ with r = ceil(k · min(m, n)), i.e. k is the share of the
largest possible rank. The result never has more rank than ΔW itself, so a rank-one update (ROME)
passes unchanged for every k.
"""
from __future__ import annotations

import torch

from editharm.editing.regularizers.base import REGULARIZERS, Regularizer
from editharm.editing.regularizers.rect import ShareParams, keep_top_share, n_kept


@REGULARIZERS.register("random")
class RandomShare(Regularizer):
    name = "random"
    Params = ShareParams

    @classmethod
    def apply(cls, delta, params: ShareParams, ctx):
        # The same selection as RECT, with random scores in place of the relative change.
        scores = torch.rand(delta.shape, generator=ctx.generator).to(delta.device)
        return keep_top_share(delta, scores, params.k)


def pca_rank(k: float, shape: torch.Size) -> int:
    return n_kept(k, min(shape))


@REGULARIZERS.register("pca")
class PcaShare(Regularizer):
    name = "pca"
    Params = ShareParams

    @classmethod
    def apply(cls, delta, params: ShareParams, ctx):
        if delta.dim() != 2:
            raise ValueError(f"pca regularizer: {ctx.param_name} has shape {tuple(delta.shape)}; it needs a matrix")
        r = pca_rank(params.k, delta.shape)
        if r >= min(delta.shape):
            return delta
        u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
        return ((u[:, :r] * s[:r]) @ vh[:r]).to(delta.dtype)
