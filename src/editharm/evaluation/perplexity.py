"""Held-out perplexity: a continuous general-ability probe that moves at any model size, where the
eight tasks sit at their floor on a small model.

The texts are held out from the second-moment statistics (editharm.sources.corpora.fetch_heldout), so
a method that preserves the statistics' keys is not scored on the very texts it protected. Perplexity
is exp(total NLL / total tokens) over all texts, every scored token weighing the same; the per-text
`nll` (summed) and `n_tokens` columns are what a bootstrap over texts needs: exp(sum nll / sum
n_tokens) of each resample.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from editharm.model.generation import text_nll
from editharm.results.uncertainty import Bootstrap
from editharm.sources.corpora import read_corpus

log = logging.getLogger(__name__)


def read_heldout(path: Path) -> tuple[list[str], list[str]]:
    """(ids, texts) of a held-out texts file (jsonl of {"id", "text"})."""
    rows = read_corpus(path)
    if not rows:
        raise ValueError(f"{path}: no held-out texts")
    bad = next((i for i, row in enumerate(rows) if not {"id", "text"} <= set(row)), None)
    if bad is not None:
        raise ValueError(f"{path}: line {bad + 1} lacks 'id' or 'text'; held-out files hold {{\"id\", \"text\"}}")
    return [row["id"] for row in rows], [row["text"] for row in rows]


def mean_nll(nll: Sequence[float], n_tokens: Sequence[int]) -> float:
    """NLL per token over all texts: the sum of the texts' summed NLLs over the sum of their token counts."""
    tokens = sum(n_tokens)
    if tokens == 0:
        raise ValueError("no scored tokens: every text is a single token")
    return math.fsum(nll) / tokens


def score_heldout(model, tok, ids: Sequence[str], texts: Sequence[str], *, batch_size: int,
                  max_tokens: int) -> tuple[pd.DataFrame, dict[str, float]]:
    """One row per text (id, n_tokens, nll: summed over its scored tokens) and the metrics
    {"perplexity", "nll": mean NLL per token}; `replicates` bootstraps them over texts."""
    scores = text_nll(model, tok, texts, batch_size=batch_size, max_tokens=max_tokens, progress=True)
    frame = pd.DataFrame({"id": list(ids), "n_tokens": [n for _, n in scores], "nll": [s for s, _ in scores]})
    nll = mean_nll(frame["nll"], frame["n_tokens"])
    metrics = {"perplexity": math.exp(nll), "nll": nll}
    log.info("perplexity %.4f (%.4f nats per token) over %d texts, %d tokens",
             metrics["perplexity"], nll, len(frame), int(frame["n_tokens"].sum()))
    return frame, metrics


def replicates(bootstrap: Bootstrap, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Perplexity and NLL per token on each resample of the texts: ratios of the resampled sums."""
    stats = frame[["nll", "n_tokens"]].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        nll = bootstrap.replicates("perplexity", list(frame["id"]), stats, lambda sums, n: sums[:, 0] / sums[:, 1])
    return {"perplexity": np.exp(nll), "nll": nll}
