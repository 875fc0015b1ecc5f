"""`local:` sources tracked by content: a digest of the file, or of every file of the folder, that
the fetch rules receive as a parameter, so changing a local model or dataset in place reruns its
fetch job and everything downstream, while touching it without a change reruns nothing.

Hashing a 7B model folder takes a while, so each file's sha256 is kept in a cache file keyed by its
path, size, modification time and inode: a file is hashed again only when one of those changes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from editharm.core.fileio import atomic_write, sha256_file
from editharm.sources.grammar import SourceError, parse_source


def _files(path: Path) -> list[Path]:
    """The file itself, or every file under the folder but those under hidden names (.git, .cache)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))


def _read_cache(cache: Optional[Path]) -> dict:
    if cache is None or not cache.is_file():
        return {}
    try:
        entries = json.loads(cache.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return {}  # an unreadable cache is rebuilt
    return entries if isinstance(entries, dict) else {}


def content_digest(path: Path | str, cache: Optional[Path] = None) -> str:
    """sha256 over the relative path and sha256 of every file of `path` (a file or a folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    entries = _read_cache(cache)
    changed = False
    digest = hashlib.sha256()
    for file in _files(path):
        stat = file.stat()
        key = str(file.resolve())
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        known = entries.get(key)
        if isinstance(known, list) and known[:3] == stamp and len(known) == 4:
            sha = known[3]
        else:
            sha = sha256_file(file)
            entries[key] = [*stamp, sha]
            changed = True
        name = file.name if file == path else file.relative_to(path).as_posix()
        digest.update(f"{name}\0{sha}\n".encode())
    if changed and cache is not None:
        text = json.dumps(entries, sort_keys=True)
        atomic_write(cache, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return digest.hexdigest()


def source_digest(text: str, cache: Optional[Path] = None) -> str:
    """The content digest of a `local:` source string, "" for any other kind (pinned by revision
    or checksum instead), or for a string that is not a source (validation reports it)."""
    try:
        source = parse_source(text)
    except SourceError:
        return ""
    if source.kind != "local":
        return ""
    return content_digest(source.target, cache)


def digest_cache(workdir: Path | str = ".") -> Path:
    """Where the workflow keeps the per-file hashes: beside Snakemake's own state."""
    return Path(workdir) / ".snakemake" / "editharm" / "local-digests.json"
