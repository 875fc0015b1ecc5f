"""Lock files: what each online source resolved to on first use (datasets.lock.json, models.lock.json,
corpora.lock.json).

    {"version": 1, "datasets": {"<name>": {"source": "<source string>", "commit": "<hub commit>",
                                           "files": {"<path in repo>": "<sha256>"}}          # hf:
                                "<name>": {"source": "<source string>", "sha256": "<hex>"}}}  # url:
    {"version": 1, "models": {"<name>": {"source": "hf:<repo>@<revision>", "commit": "<hub commit>",
                                         "files": {"<file>": "<sha256>"}}}}

An entry holds only while its source string is unchanged; a later fetch uses the locked commit and
checks every file against the locked sha256. The file lives in the repository and is reviewed in
git like code. Parallel fetches update it under an exclusive lock of its folder, each rewriting
the whole file atomically, so no entry is lost.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from editharm.core.fileio import atomic_write, read_json
from editharm.sources.grammar import ChecksumError

log = logging.getLogger(__name__)

VERSION = 1


@contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class SourceLock:
    """One section ("datasets" or "models") of a lock file: name -> what its source resolved to."""

    def __init__(self, path: Path, section: str = "datasets"):
        self.path = Path(path)
        self.section = section
        self.kind = section.rstrip("s")  # for messages: "dataset", "model"

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": VERSION, self.section: {}}
        data = read_json(self.path, dict, "a lock object")
        if data.get("version") != VERSION or not isinstance(data.setdefault(self.section, {}), dict):
            raise ValueError(f"{self.path}: expected {{'version': {VERSION}, '{self.section}': {{...}}}}")
        return data

    def entry(self, name: str, source: str) -> Optional[dict]:
        """The locked entry of `name` if it was recorded for this same `source`, else None."""
        entry = self._read()[self.section].get(name)
        if entry is None:
            return None
        if entry.get("source") != source:
            log.warning("%s: %s %s was locked for source %r; %r is new and will be locked on this fetch",
                        self.path, self.kind, name, entry.get("source"), source)
            return None
        return entry

    def record(self, name: str, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.path.parent):
            data = self._read()
            data[self.section][name] = entry
            data[self.section] = dict(sorted(data[self.section].items()))
            text = json.dumps(data, indent=2) + "\n"
            atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log.info("locked %s %s in %s: %s", self.kind, name, self.path, json.dumps(entry, sort_keys=True))


def mismatch(kind: str, name: str, file: str, expected: str, actual: str) -> ChecksumError:
    """The error for a fetched file whose sha256 differs from the locked one (`kind`: dataset, model)."""
    return ChecksumError(
        f"{kind} {name!r}: sha256 mismatch for {file}: expected {expected}, got {actual}; nothing was written "
        "(if the release really changed, delete its entry from the lock file and fetch again)"
    )


def check_files(kind: str, name: str, expected: dict[str, str], actual: dict[str, str], where: str) -> None:
    """Fetched files (name -> sha256) against a locked entry's: the same files, the same hashes."""
    if set(expected) != set(actual):
        raise ChecksumError(f"{kind} {name!r}: {where} has files {sorted(actual)}, the lock file lists "
                            f"{sorted(expected)}; nothing was written")
    for file, digest in actual.items():
        if digest != expected[file]:
            raise mismatch(kind, name, file, expected[file], digest)
