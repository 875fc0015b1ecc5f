"""The fetch_model, fetch_corpus and make_heldout rules' jobs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from editharm.sources.corpora import fetch_corpus as _fetch_corpus, fetch_heldout, read_corpus
from editharm.sources.models import fetch_model as _fetch_model

log = logging.getLogger("editharm")


def fetch_model(source: str, out: Path, sha256: Optional[str], trust_remote_code: bool, lock: Path,
                name: Optional[str]) -> None:
    prov = _fetch_model(source, out, sha256=sha256, trust_remote_code=trust_remote_code, lock=lock,
                        name=name or out.name)
    log.info("model ready at %s: %s", out, json.dumps(prov, sort_keys=True))


def fetch_corpus(source: str, out: Path, n: int, sha256: Optional[str], lock: Path) -> None:
    prov = _fetch_corpus(source, out, n=n, sha256=sha256, lock=lock)
    log.info("corpus ready at %s: %d texts", out, prov["n"])


def make_heldout(source: str, out: Path, n: int, exclude: list[Path], sha256: Optional[str], lock: Path) -> None:
    """Held-out texts for the perplexity probe: none of them among the statistics corpus files `exclude`."""
    stats_texts = [row["text"] for path in exclude for row in read_corpus(path)]
    prov = fetch_heldout(source, out, n=n, exclude=stats_texts, sha256=sha256, lock=lock)
    log.info("%d held-out texts at %s (disjoint from the %d statistics texts)", prov["n"], out, len(stats_texts))
