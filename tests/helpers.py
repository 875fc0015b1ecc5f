"""Small constructors shared by several test modules."""
from __future__ import annotations

import torch

from editharm.regularizers import RegContext


def reg_context(weight, *, name="w", seed=0, original=None, transposed=False, **kw) -> RegContext:
    """A regularizer context for a bare matrix: original = weight unless given."""
    return RegContext(param_name=name, module_path=name.rsplit(".", 1)[0], weight=weight,
                      original=weight if original is None else original, transposed=transposed,
                      generator=torch.Generator().manual_seed(seed), **kw)
