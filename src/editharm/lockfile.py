"""The dataset lock file: what each online dataset source resolved to on first use.

    {"version": 1, "datasets": {"<name>": {"source": "<source string>", "commit": "<hub commit>",
                                           "files": {"<path in repo>": "<sha256>"}}          # hf:
                                "<name>": {"source": "<source string>", "sha256": "<hex>"}}}  # url:

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

from editharm.fileio import atomic_write, read_json

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


class DatasetLock:
    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict:
        if not self.path.exists():
            return {"version": VERSION, "datasets": {}}
        data = read_json(self.path, dict, "a dataset lock object")
        if data.get("version") != VERSION or not isinstance(data.get("datasets"), dict):
            raise ValueError(f"{self.path}: expected {{'version': {VERSION}, 'datasets': {{...}}}}")
        return data

    def entry(self, name: str, source: str) -> Optional[dict]:
        """The locked entry of `name` if it was recorded for this same `source`, else None."""
        entry = self._read()["datasets"].get(name)
        if entry is None:
            return None
        if entry.get("source") != source:
            log.warning("%s: dataset %s was locked for source %r; %r is new and will be locked on this fetch",
                        self.path, name, entry.get("source"), source)
            return None
        return entry

    def record(self, name: str, entry: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.path.parent):
            data = self._read()
            data["datasets"][name] = entry
            data["datasets"] = dict(sorted(data["datasets"].items()))
            text = json.dumps(data, indent=2) + "\n"
            atomic_write(self.path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        log.info("locked dataset %s in %s: %s", name, self.path, json.dumps(entry, sort_keys=True))
