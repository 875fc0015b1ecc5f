"""Statistics corpora: the first n usable texts of a corpus source, as jsonl of {"text"}."""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

from editharm.core.fileio import atomic_write
from editharm.sources.files import fetch_file
from editharm.sources.grammar import Source, SourceError, parse_source
from editharm.sources.hub import resolve_commit, stream_parquet
from editharm.sources.lockfile import SourceLock
from editharm.sources.wikitext import iter_parquet_texts, iter_texts

log = logging.getLogger(__name__)


def _corpus_commit(source: Source, lock: Optional[Path]) -> str:
    """The commit a Hub corpus is read at: the locked one, else the revision's commit now (then locked).
    A streamed file has no whole-file hash to check: the commit is what pins its bytes."""
    locked = SourceLock(lock, "corpora") if lock is not None else None
    pinned = locked.entry(source.text, source.text) if locked else None
    if pinned:
        return pinned["commit"]
    commit = resolve_commit(source.target, source.revision, "dataset")
    if locked:
        locked.record(source.text, {"source": source.text, "commit": commit})
    return commit


def fetch_corpus(source_text: str, dest: Path, *, n: int, sha256: Optional[str] = None,
                 min_chars: int = 200, lock: Optional[Path] = None) -> dict:
    """Write `dest` (jsonl of {"text"}) with the first `n` usable texts of a corpus source.

    A MediaWiki XML dump (optionally .bz2) is split into articles and stripped of markup; a .txt
    file gives one text per non-empty paragraph; a .jsonl file or a parquet file (its "text"
    column, e.g. wikimedia/wikipedia or wikitext-103 on the Hub, streamed) gives its texts. A Hub
    branch or tag is resolved to its commit once and pinned in `lock` (section "corpora").
    """
    source = parse_source(source_text, "corpus")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        if source.kind == "hf":
            if sha256:
                raise SourceError(f"corpus source {source_text!r}: a streamed Hub file is pinned by its revision; "
                                  "drop the sha256")
            commit = _corpus_commit(source, lock)
            stream = stream_parquet(source, commit)
            prov, texts_in = {"repo": source.target, "revision": commit, "file": source.member}, \
                iter_parquet_texts(stream, source.member)
        else:
            path, prov = fetch_file(source, Path(work), sha256)
            texts_in = iter_texts(path)
        texts = []
        for text in texts_in:
            if len(text) >= min_chars:
                texts.append(text)
                if len(texts) == n:
                    break
        if not texts:
            raise SourceError(f"corpus {source_text!r}: no text of at least {min_chars} characters")
        if len(texts) < n:
            log.warning("corpus %s has only %d texts of >= %d chars (asked for %d)",
                        source_text, len(texts), min_chars, n)
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        atomic_write(dest, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return {"source": source_text, "n": len(texts), **prov}
