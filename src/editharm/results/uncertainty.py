"""Bootstrap uncertainty over items: seeded resamples, percentile intervals and paired differences.

Every checkpoint of a model is scored on the same items of a task, so its score and the unedited
model's score are paired. The resample weights are a pure function of (seed, task, item ids): every
checkpoint scored on those items draws the very same resamples, and replicate b of a checkpoint
minus replicate b of the unedited model is one draw of the paired bootstrap of their difference.
Identical predictions then give a difference of exactly 0 in every replicate.

A metric enters as per-item statistics (rows: items, columns: whatever its aggregate needs) and a
`combine` that maps column sums to the aggregate; a resample is a row of item counts, so its
replicate is `combine(counts @ stats)`. For a mean that is `sum / n`; for micro F1 the sums of
tp, fp and fn; for perplexity `exp(sum nll / sum tokens)`.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
REPLICATE_DECIMALS = 9  # replicates are stored in JSON; rounding keeps files small and stays far below any CI width

Combine = Callable[[np.ndarray, int], np.ndarray]


def items_digest(item_ids: Sequence[Any]) -> str:
    """A short digest of the item ids in order: two scores are paired only when these agree."""
    joined = "\x1f".join(str(i) for i in item_ids)
    return hashlib.sha256(joined.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Bootstrap:
    """How many resamples, under which seed. `key` (the task) and the item ids pick the stream."""

    resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.resamples, bool) or not isinstance(self.resamples, int) or self.resamples < 1:
            raise ValueError(f"bootstrap resamples must be a positive integer, got {self.resamples!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"bootstrap seed must be an integer, got {self.seed!r}")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None) -> Bootstrap | None:
        """From {"resamples": B, "seed": s}; None or resamples 0 turns the bootstrap off."""
        if not options or not options.get("resamples"):
            return None
        unknown = sorted(set(options) - {"resamples", "seed"})
        if unknown:
            raise ValueError(f"bootstrap options: unknown key(s) {unknown}; allowed: resamples, seed")
        return cls(resamples=options["resamples"], seed=options.get("seed", 0))

    def weights(self, key: str, item_ids: Sequence[Any]) -> np.ndarray:
        """(resamples, n) item counts; each row sums to n. Same key, ids and seed: same array."""
        n = len(item_ids)
        if n == 0:
            raise ValueError(f"{key}: no items to resample")
        digest = hashlib.sha256(f"{self.seed}\x1f{key}\x1f{items_digest(item_ids)}".encode("utf-8")).digest()
        rng = np.random.Generator(np.random.PCG64(int.from_bytes(digest[:8], "little")))
        picks = rng.integers(0, n, size=(self.resamples, n))
        counts = np.zeros((self.resamples, n), dtype=np.float64)
        np.add.at(counts, (np.repeat(np.arange(self.resamples), n), picks.ravel()), 1.0)
        return counts

    def replicates(self, key: str, item_ids: Sequence[Any], stats: np.ndarray, combine: Combine | None = None) -> np.ndarray:
        """The aggregate on every resample: `combine(weights @ stats, n)`, or the weighted mean of a
        single per-item score column when `combine` is None."""
        stats = np.asarray(stats, dtype=np.float64)
        if stats.ndim == 1:
            stats = stats[:, None]
        if stats.shape[0] != len(item_ids):
            raise ValueError(f"{key}: {stats.shape[0]} rows of statistics for {len(item_ids)} items")
        sums = self.weights(key, item_ids) @ stats
        n = len(item_ids)
        if combine is None:
            if stats.shape[1] != 1:
                raise ValueError(f"{key}: {stats.shape[1]} statistics per item need a combine function")
            return sums[:, 0] / n
        return np.asarray(combine(sums, n), dtype=np.float64)

    def block(self, key: str, item_ids: Sequence[Any], replicates: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """What a metric record stores: the settings, the items' digest and the rounded replicates."""
        return {
            "resamples": self.resamples,
            "seed": self.seed,
            "key": key,
            "items": items_digest(item_ids),
            "replicates": {name: rounded(values) for name, values in sorted(replicates.items())},
        }


def rounded(values: np.ndarray) -> list[float | None]:
    """JSON-safe replicates: rounded, NaN (a resample where the metric is undefined) as null."""
    return [None if not math.isfinite(v) else round(float(v), REPLICATE_DECIMALS) for v in np.asarray(values)]


def as_array(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def mean_combine(sums: np.ndarray, n: int) -> np.ndarray:
    """Mean over the items that have a value: statistics (value or 0, 1 if present else 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums[:, 0] / sums[:, 1]


def present_stats(values: Sequence[float]) -> np.ndarray:
    """Per-item statistics for `mean_combine`: NaN items (no such prompt) count as absent."""
    arr = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(arr)
    return np.stack([np.where(present, arr, 0.0), present.astype(np.float64)], axis=1)


def interval(replicates: np.ndarray, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Percentile interval of the replicates at `level`; NaN replicates are left out (NaN, NaN when all are)."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level!r}")
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(reps, [tail, 100 - tail])
    return float(lo), float(hi)


def excludes_zero(lo: float, hi: float) -> bool:
    return bool(math.isfinite(lo) and math.isfinite(hi) and (lo > 0 or hi < 0))
