"""The fetch_model and fetch_corpus rules' jobs."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from editharm.sources.corpora import fetch_corpus as _fetch_corpus
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
