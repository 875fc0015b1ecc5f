"""Regularizers: one registry (`REGULARIZERS`), one interface (`Regularizer`, in base.py). They see
only an edited matrix's ΔW, its weights, statistics and their own state, so they wrap any method.
Importing this package registers every regularizer."""
from editharm.editing.regularizers import baselines, nullspace, prune, rect  # noqa: F401  (they register)
from editharm.editing.regularizers.base import REGULARIZERS, RegContext, Regularizer

__all__ = ["REGULARIZERS", "RegContext", "Regularizer"]
