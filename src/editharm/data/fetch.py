"""Fetch a named dataset from a source into a folder in its original release layout, with a manifest
(files and their sha256, licence, attribution, demo or not).

A source is a source string of editharm.sources.grammar that can serve a dataset (embedded:demo,
local:<path>, hf:<repo>@<revision>#<files>, url:<https URL>[#sha256=..&member=..]) or "real", which
stands for the dataset's registered, pinned real source. FETCHERS says, per kind, how to fill
a folder and what to say about where the data came from. A real source that serves another format
(Hub parquet, gzipped JSON lines) is converted at fetch time into the original layout
(editharm.data.releaseformat), so each dataset has one reader whatever its source. Every record
is parsed (editharm.data.checks) before the folder is published, so a bad file fails the fetch.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

from editharm.core.fileio import scratch_dir, sha256_file, staging_dir
from editharm.core.registry import Registry
from editharm.data.catalog import (
    DATASETS,
    DEMO_DIR,
    DEMO_LICENCE,
    MANIFEST,
    DatasetSpec,
    dataset_files,
)
from editharm.data.checks import DatasetError, check_dataset
from editharm.sources.grammar import Source, SourceError, kinds_for, parse_source
from editharm.sources.hub import fetch_hub
from editharm.sources.lockfile import SourceLock
from editharm.sources.url import fetch_url

log = logging.getLogger(__name__)


# --- sources ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Provenance:
    demo: bool
    licence: str
    attribution: str


# (spec, source, folder to fill, locked entry or None) -> the entry to lock (None: nothing to pin)
Fetch = Callable[[DatasetSpec, Source, Path, Optional[dict]], Optional[dict]]


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """How one kind of source fills an empty folder with a dataset's files, and what it says about them."""

    fetch: Fetch
    provenance: Callable[[DatasetSpec, Source], Provenance]


FETCHERS: Registry[SourceKind] = Registry("dataset source kind")  # by source kind (editharm.sources.grammar)
REAL = "real"  # the source string that stands for the dataset's registered real source


def _copy_layout(spec: DatasetSpec, origin: Path, dest: Path) -> None:
    """Copy the files of the dataset's layout from a folder (keeping relative paths), or one file."""
    if origin.is_file():
        shutil.copy2(origin, dest / origin.name)
        return
    for path in dataset_files(spec.name, origin):
        target = dest / path.relative_to(origin)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _place(spec: DatasetSpec, served: list[Path], dest: Path) -> None:
    """Served files into the original layout: converted, or placed under their names (a folder,
    such as MuTual's dev/, keeps its name)."""
    if spec.convert is not None:
        spec.convert(served, dest)
        return
    for path in served:
        if path.is_dir():
            shutil.copytree(path, dest / path.name)
        else:
            shutil.copy2(path, dest / path.name)


def _fetch_embedded(spec: DatasetSpec, source: Source, dest: Path, pinned: Optional[dict]) -> None:
    if source.target != "demo":
        raise ValueError(f"embedded dataset source {source.target!r} is unknown; allowed: demo")
    if not spec.demo:
        demos = [n for n in DATASETS.names() if DATASETS.get(n).demo]
        raise ValueError(f"dataset {spec.name!r} has no embedded demo; datasets with one: {', '.join(demos)}")
    _copy_layout(spec, DEMO_DIR / spec.demo, dest)


def _embedded_provenance(spec: DatasetSpec, source: Source) -> Provenance:
    attribution = f"small hand-written demo items in the {spec.title} release layout; not the real dataset"
    return Provenance(demo=True, licence=DEMO_LICENCE, attribution=attribution)


def _fetch_local(spec: DatasetSpec, source: Source, dest: Path, pinned: Optional[dict]) -> None:
    origin = Path(source.target).expanduser()
    if not origin.exists():
        raise FileNotFoundError(f"local dataset source for {spec.name!r}: {origin} does not exist")
    in_layout = any(fnmatch.fnmatch(origin.name, Path(pattern).name) for pattern in spec.files)
    if origin.is_file() and spec.convert is not None and not in_layout:
        spec.convert([origin], dest)  # a local copy of what the real source serves (e.g. a Hub parquet file)
    else:
        _copy_layout(spec, origin, dest)


def _real_provenance(spec: DatasetSpec, source: Source) -> Provenance:
    # a local copy is taken to be the real release, under that release's terms
    return Provenance(demo=False, licence=spec.licence, attribution=spec.attribution)


def _online(fetch_served: Callable[[str, Source, Path, Optional[dict]], tuple[list[Path], dict]]) -> Fetch:
    def fetch(spec: DatasetSpec, source: Source, dest: Path, pinned: Optional[dict]) -> dict:
        with scratch_dir(dest.parent) as work:
            served, entry = fetch_served(spec.name, source, Path(work), pinned)
            _place(spec, served, dest)
        return entry

    return fetch


FETCHERS.add("embedded", SourceKind(_fetch_embedded, _embedded_provenance))
FETCHERS.add("local", SourceKind(_fetch_local, _real_provenance))
FETCHERS.add("hf", SourceKind(_online(fetch_hub), _real_provenance))
FETCHERS.add("url", SourceKind(_online(fetch_url), _real_provenance))


def resolve_source(name: str, source: str) -> str:
    """`source` itself, or for "real" the dataset's registered real source."""
    spec = DATASETS.get(name)
    if source != REAL:
        return source
    if not spec.real:
        raise ValueError(f"dataset {name!r} has no registered real source; give one: "
                         "local:<path>, hf:<repo>@<revision>#<file>, url:<https URL>")
    return spec.real


def _resolve(name: str, source: str) -> tuple[DatasetSpec, SourceKind, Source]:
    spec = DATASETS.get(name)
    text = resolve_source(name, source)
    kind, sep, argument = text.partition(":")
    if not sep or not argument:
        raise SourceError(
            f"dataset source {text!r} for {name!r} must be 'kind:argument' or {REAL!r}; "
            f"kinds: {', '.join(kinds_for('dataset'))}"
        )
    parsed = parse_source(text, "dataset")
    return spec, FETCHERS.get(parsed.kind), parsed


def describe_source(name: str, source: str) -> dict:
    """What fetching `name` from `source` yields, without fetching: name, source (resolved),
    licence, attribution, demo (for report headers)."""
    spec, kind, parsed = _resolve(name, source)
    provenance = kind.provenance(spec, parsed)
    return {"name": name, "source": parsed.text, **dataclasses.asdict(provenance)}


def fetch_dataset(name: str, source: str, dest: Path, lock: Optional[Path] = None) -> dict:
    """Fetch dataset `name` from `source` ("embedded:demo", "local:<path>", "hf:...", "url:..." or
    "real") into folder `dest`, replacing it as a whole only once every record has been parsed
    (editharm.data.checks) and every file and the manifest are written. An online source is pinned
    by the lock file `lock`: its entry is used and checked if present, and written on first use once
    the folder is in place. Returns the manifest."""
    spec, kind, parsed = _resolve(name, source)
    resolved = parsed.text
    dest = Path(dest)
    locked = SourceLock(lock) if lock is not None else None
    pinned = locked.entry(name, resolved) if locked else None
    with staging_dir(dest) as tmp:
        entry = kind.fetch(spec, parsed, tmp, pinned)
        try:
            records = check_dataset(name, tmp)
        except DatasetError as err:
            # the staging folder is removed: name the file by where it would have been published
            published = str(err).replace(str(tmp), str(dest))
            raise DatasetError(f"{published} (fetched from {resolved}; not published)") from None
        files = dataset_files(name, tmp)
        manifest = {
            **describe_source(name, resolved),
            **({"pinned": entry} if entry else {}),
            "files": [
                {"path": p.relative_to(tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                for p in files
            ],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    if locked and entry and entry != {k: v for k, v in (pinned or {}).items() if k != "source"}:
        locked.record(name, {"source": resolved, **entry})
    log.info("fetched dataset %s from %s into %s (%d files, %d records)",
             name, resolved, dest, len(files), records)
    return manifest
