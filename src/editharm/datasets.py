"""Datasets behind one interface: fetch a named dataset from a source into a folder in its original
release layout, with a manifest (files and their sha256, licence, attribution, demo or not).

A source is "kind:argument"; kinds live in DATASET_SOURCES, so a new kind (hf:, url+sha256) is
one registered SourceKind: how to fill a folder, and what to say about where the data came from.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from editharm.fileio import read_json, staging_dir
from editharm.records import EditRecord
from editharm.sources import sha256_file
from editharm.registry import Registry

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
MANIFEST = "manifest.json"
DEMO_LICENCE = "editharm demo data: same licence as the editharm project"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    files: tuple[str, ...]  # glob patterns of the original release layout, relative to the folder
    demo: str  # the dataset's file or folder inside the embedded demo bundle
    licence: str  # terms of the real release
    attribution: str


DATASETS: Registry[DatasetSpec] = Registry("dataset")
for _spec in (
    DatasetSpec(
        "zsre", "ZsRE (editing)", ("*.json",), "zsre_demo.json",
        "see the MEND / ROME ZsRE releases and the underlying zero-shot relation extraction data",
        "Levy et al. 2017, Zero-Shot Relation Extraction via Reading Comprehension; "
        "split for editing by De Cao et al. 2021 and Mitchell et al. 2022 (MEND)",
    ),
    DatasetSpec(
        "zsre_train", "ZsRE train split (for trainable editors such as MEND)", ("*.json",), "zsre_demo_train.json",
        "see the MEND / ROME ZsRE releases and the underlying zero-shot relation extraction data",
        "Levy et al. 2017; the train split of De Cao et al. 2021 and Mitchell et al. 2022 (zsre_mem_train.json)",
    ),
    DatasetSpec("gsm8k", "GSM8K test", ("test.jsonl",), "gsm8k", "MIT",
                "Cobbe et al. 2021, Training Verifiers to Solve Math Word Problems"),
    DatasetSpec("rte", "RTE (GLUE)", ("dev.tsv",), "rte", "GLUE / PASCAL RTE terms",
                "Dagan et al. 2006 and later RTE challenges; Wang et al. 2019 (GLUE)"),
    DatasetSpec("nq", "Natural Questions (NQ-open) with passages", ("test.jsonl",), "nq", "CC BY-SA 3.0",
                "Kwiatkowski et al. 2019, Natural Questions; Lee et al. 2019 (NQ-open)"),
    DatasetSpec("boolq", "BoolQ dev", ("dev.jsonl",), "boolq", "CC BY-SA 3.0",
                "Clark et al. 2019, BoolQ"),
    DatasetSpec("mutual", "MuTual dev", ("dev/*.txt",), "mutual", "see the MuTual release",
                "Cui et al. 2020, MuTual: A Dataset for Multi-Turn Dialogue Reasoning"),
    DatasetSpec("samsum", "SAMSum test", ("test.json",), "samsum", "CC BY-NC-ND 4.0",
                "Gliwa et al. 2019, SAMSum Corpus"),
    DatasetSpec("conll2003", "CoNLL-2003 English test", ("test.txt",), "conll2003",
                "Reuters Corpus (RCV1) terms for the text; CoNLL-2003 shared task annotations",
                "Tjong Kim Sang and De Meulder 2003, CoNLL-2003 shared task"),
    DatasetSpec("sst2", "SST-2 (GLUE) dev", ("dev.tsv",), "sst2", "GLUE / Stanford Sentiment Treebank terms",
                "Socher et al. 2013 (SST); Wang et al. 2019 (GLUE)"),
):
    DATASETS.add(_spec.name, _spec)
DATASET_NAMES = tuple(DATASETS.names())


def _natural_key(path: Path) -> list[Any]:
    # dev_2.txt before dev_10.txt, as the releases number their files
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def dataset_files(name: str, folder: Path) -> list[Path]:
    """The dataset's files in `folder` (natural order), failing clearly when the layout is not there."""
    spec = DATASETS.get(name)
    folder = Path(folder)
    found: list[Path] = []
    for pattern in spec.files:
        matches = [p for p in folder.glob(pattern) if p.is_file() and p.name != MANIFEST]
        if not matches:
            raise FileNotFoundError(
                f"dataset {name!r}: no file matching {pattern!r} in {folder}; "
                f"the {spec.title} layout expects {', '.join(spec.files)}"
            )
        found += sorted(matches, key=lambda p: _natural_key(p.relative_to(folder)))
    return found


# --- sources ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Provenance:
    demo: bool
    licence: str
    attribution: str


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """How one kind of source fills an empty folder with a dataset's files, and what it says about them."""

    fetch: Callable[[DatasetSpec, str, Path], None]  # (spec, argument, folder to fill)
    provenance: Callable[[DatasetSpec, str], Provenance]


DATASET_SOURCES: Registry[SourceKind] = Registry("dataset source kind")


def _copy_layout(spec: DatasetSpec, origin: Path, dest: Path) -> None:
    """Copy the files of the dataset's layout from a folder (keeping relative paths), or one file."""
    if origin.is_file():
        shutil.copy2(origin, dest / origin.name)
        return
    for path in dataset_files(spec.name, origin):
        target = dest / path.relative_to(origin)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def _fetch_embedded(spec: DatasetSpec, argument: str, dest: Path) -> None:
    if argument != "demo":
        raise ValueError(f"embedded dataset source {argument!r} is unknown; allowed: demo")
    _copy_layout(spec, DEMO_DIR / spec.demo, dest)


def _embedded_provenance(spec: DatasetSpec, argument: str) -> Provenance:
    attribution = f"small hand-written demo items in the {spec.title} release layout; not the real dataset"
    return Provenance(demo=True, licence=DEMO_LICENCE, attribution=attribution)


def _fetch_local(spec: DatasetSpec, argument: str, dest: Path) -> None:
    origin = Path(argument).expanduser()
    if not origin.exists():
        raise FileNotFoundError(f"local dataset source for {spec.name!r}: {origin} does not exist")
    _copy_layout(spec, origin, dest)


def _local_provenance(spec: DatasetSpec, argument: str) -> Provenance:
    # the user's copy is taken to be the real release, under that release's terms
    return Provenance(demo=False, licence=spec.licence, attribution=spec.attribution)


DATASET_SOURCES.add("embedded", SourceKind(_fetch_embedded, _embedded_provenance))
DATASET_SOURCES.add("local", SourceKind(_fetch_local, _local_provenance))


def _resolve(name: str, source: str) -> tuple[DatasetSpec, SourceKind, str]:
    spec = DATASETS.get(name)
    kind, sep, argument = source.partition(":")
    if not sep or not argument:
        raise ValueError(
            f"dataset source {source!r} for {name!r} must be 'kind:argument'; kinds: {', '.join(DATASET_SOURCES.names())}"
        )
    return spec, DATASET_SOURCES.get(kind), argument


def describe_source(name: str, source: str) -> dict:
    """What fetching `name` from `source` yields, without fetching: name, source, licence,
    attribution, demo (for report headers)."""
    spec, kind, argument = _resolve(name, source)
    provenance = kind.provenance(spec, argument)
    return {"name": name, "source": source, **dataclasses.asdict(provenance)}


def fetch_dataset(name: str, source: str, dest: Path) -> dict:
    """Fetch dataset `name` from `source` ("embedded:demo", "local:<path>") into folder `dest`,
    replacing it as a whole only once every file and the manifest are written. Returns the manifest."""
    spec, kind, argument = _resolve(name, source)
    dest = Path(dest)
    with staging_dir(dest) as tmp:
        kind.fetch(spec, argument, tmp)
        files = dataset_files(name, tmp)
        manifest = {
            **describe_source(name, source),
            "files": [
                {"path": p.relative_to(tmp).as_posix(), "sha256": sha256_file(p), "bytes": p.stat().st_size}
                for p in files
            ],
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("fetched dataset %s from %s into %s (%d files)", name, source, dest, len(files))
    return manifest


# --- editing records --------------------------------------------------------------------------

ZSRE_FIELDS = ("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")
_NQ_PREFIX = re.compile(r"^\s*nq question:\s*", re.IGNORECASE)


def locality_prompt(loc: str) -> str:
    """ZsRE's `loc` ("nq question: who sang ...") as a question: prefix dropped, "?" appended as the
    ROME / MEND ZsRE code does when it builds the locality prompt."""
    question = _NQ_PREFIX.sub("", loc).strip()
    return question if question.endswith("?") else question + "?"


def load_edit_records(path: Path) -> list[EditRecord]:
    """EditRecords from a ZsRE-layout JSON list (or the dataset folder holding one such file)."""
    path = Path(path)
    if path.is_dir():
        files = dataset_files("zsre", path)
        if len(files) != 1:
            raise ValueError(f"{path}: expected one ZsRE JSON file, found {[f.name for f in files]}")
        path = files[0]
    data = read_json(path, list, "a JSON list of ZsRE records")
    records = []
    for index, rec in enumerate(data):
        try:
            records.append(_edit_record(rec, index))
        except ValueError as err:
            raise ValueError(f"{path}, record {index}: {err}") from None
    return records


def _edit_record(rec: Any, index: int) -> EditRecord:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    missing = [key for key in ZSRE_FIELDS if key not in rec]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a ZsRE record has {list(ZSRE_FIELDS)}")
    for key in ("subject", "src", "rephrase", "alt", "loc", "loc_ans"):
        if not isinstance(rec[key], str) or not rec[key].strip():
            raise ValueError(f"field {key!r} must be a non-empty string, got {rec[key]!r}")
    answers = rec["answers"]
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a for a in answers):
        raise ValueError(f"field 'answers' must be a non-empty list of strings, got {answers!r}")
    return EditRecord(
        id=str(index),
        subject=rec["subject"],
        prompt=rec["src"],
        target_new=rec["alt"],
        ground_truth=answers[0],
        rephrase_prompt=rec["rephrase"],
        locality_prompt=locality_prompt(rec["loc"]),
        locality_answer=rec["loc_ans"],
    )
