"""Text corpora as jsonl: the first n usable texts of a corpus source for the second-moment statistics,
and the held-out texts after them for the perplexity probe."""
from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator, Optional

from editharm.core.fileio import atomic_write, scratch_dir
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


@contextmanager
def _usable_texts(source_text: str, scratch: Path, sha256: Optional[str], lock: Optional[Path],
                  min_chars: int) -> Iterator[tuple[Iterator[str], dict]]:
    """The texts of at least `min_chars` characters of a corpus source, in corpus order, and its
    provenance. Read them inside the `with`: a fetched file lives in a folder under `scratch` until then.

    A MediaWiki XML dump (optionally .bz2) is split into articles and stripped of markup; a .txt
    file gives one text per non-empty paragraph; a .jsonl file or a parquet file (its "text"
    column, e.g. wikimedia/wikipedia or wikitext-103 on the Hub, streamed) gives its texts. A Hub
    branch or tag is resolved to its commit once and pinned in `lock` (section "corpora").
    """
    source = parse_source(source_text, "corpus")
    scratch.mkdir(parents=True, exist_ok=True)
    with scratch_dir(scratch) as work:
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
        yield (text for text in texts_in if len(text) >= min_chars), prov


def _write_jsonl(dest: Path, rows: list[dict]) -> None:
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    atomic_write(dest, lambda tmp: tmp.write_text(lines, encoding="utf-8"))


def read_corpus(path: Path) -> list[dict]:
    """The rows of a corpus file written here: {"text"} (statistics) or {"id", "text"} (held-out)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def fetch_corpus(source_text: str, dest: Path, *, n: int, sha256: Optional[str] = None,
                 min_chars: int = 200, lock: Optional[Path] = None) -> dict:
    """Write `dest` (jsonl of {"text"}) with the first `n` usable texts of a corpus source (see
    `_usable_texts` for the formats)."""
    dest = Path(dest)
    with _usable_texts(source_text, dest.parent, sha256, lock, min_chars) as (usable, prov):
        texts = list(islice(usable, n))
    if not texts:
        raise SourceError(f"corpus {source_text!r}: no text of at least {min_chars} characters")
    if len(texts) < n:
        log.warning("corpus %s has only %d texts of >= %d chars (asked for %d)", source_text, len(texts), min_chars, n)
    _write_jsonl(dest, [{"text": t} for t in texts])
    return {"source": source_text, "n": len(texts), **prov}


def fetch_heldout(source_text: str, dest: Path, *, n: int, exclude: Iterable[str] = (), sha256: Optional[str] = None,
                  min_chars: int = 200, lock: Optional[Path] = None) -> dict:
    """Write `dest` (jsonl of {"id", "text"}) with the first `n` usable texts of a corpus source that
    are neither in `exclude` nor a repeat of an earlier one: held-out texts for the perplexity probe.

    With `exclude` the statistics texts (the first usable texts of the same source, as `fetch_corpus`
    wrote them), these are the texts after them: disjoint by construction, and by this check even
    where the corpus repeats a paragraph. An id is the first 16 hex digits of the text's sha256, so
    equal ids mean equal texts across files and runs.
    """
    dest = Path(dest)
    seen = set(exclude)
    texts: list[str] = []
    with _usable_texts(source_text, dest.parent, sha256, lock, min_chars) as (usable, prov):
        for text in usable:
            if text not in seen:
                seen.add(text)
                texts.append(text)
                if len(texts) == n:
                    break
    if not texts:
        raise SourceError(f"corpus {source_text!r}: no text of at least {min_chars} characters beyond the "
                          "statistics texts")
    if len(texts) < n:
        log.warning("corpus %s has only %d held-out texts of >= %d chars (asked for %d)",
                    source_text, len(texts), min_chars, n)
    _write_jsonl(dest, [{"id": hashlib.sha256(t.encode("utf-8")).hexdigest()[:16], "text": t} for t in texts])
    return {"source": source_text, "n": len(texts), **prov}
