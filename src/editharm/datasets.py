"""Datasets behind one interface: fetch a named dataset from a source into a folder in its original
release layout, with a manifest (files and their sha256, licence, attribution, demo or not).

A source is "kind:argument" (embedded:demo, local:<path>, hf:<repo>@<revision>#<files>,
url:<https URL>[#sha256=..&member=..]) or "real", which stands for the dataset's registered,
pinned real source. Kinds live in DATASET_SOURCES: how to fill a folder, and what to say about
where the data came from. A real source that serves another format (Hub parquet, gzipped JSON
lines) is converted at fetch time into the original layout (editharm.releaseformat), so each
dataset has one reader whatever its source.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import json
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from editharm import releaseformat
from editharm.datasources import fetch_hub, fetch_url
from editharm.editsets import edit_set
from editharm.fileio import read_json, staging_dir
from editharm.lockfile import SourceLock
from editharm.records import EditRecord
from editharm.registry import Registry
from editharm.releaseformat import Converter
from editharm.sources import sha256_file

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
MANIFEST = "manifest.json"
DEMO_LICENCE = "editharm demo data: same licence as the editharm project"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    files: tuple[str, ...]  # glob patterns of the original release layout, relative to the folder
    demo: str  # the dataset's file or folder inside the embedded demo bundle ("" = none)
    licence: str  # terms of the real release
    attribution: str
    real: str = ""  # the pinned source that the source string "real" stands for ("" = none registered)
    convert: Optional[Converter] = None  # served files -> the original layout (None: they are the layout)


DATASETS: Registry[DatasetSpec] = Registry("dataset")
_ROME = "https://rome.baulab.info/data/dsets"
_KNOWEDIT = "hf:zjunlp/KnowEdit@c3a6bccb5fc37a59dea3197ac36526d44606acd0#benchmark"
_KNOWEDIT_LICENCE = "MIT (zjunlp/KnowEdit dataset card)"
_KNOWEDIT_BY = "Zhang et al. 2024, A Comprehensive Study of Knowledge Editing for Large Language Models (KnowEdit)"
_ZSRE_BY = ("Levy et al. 2017, Zero-Shot Relation Extraction via Reading Comprehension; "
            "split for editing by De Cao et al. 2021 and Mitchell et al. 2022 (MEND)")
_GLUE_BY = "Wang et al. 2019, GLUE (nyu-mll/glue on the Hugging Face Hub)"
for _spec in (
    DatasetSpec(
        "zsre", "ZsRE (editing)", ("*.json",), "zsre_demo.json",
        "no licence stated by the ROME / MEND releases; the underlying relation data is from Levy et al. 2017",
        f"{_ZSRE_BY}; file zsre_mem_eval.json as released with ROME (Meng et al. 2022)",
        real=f"url:{_ROME}/zsre_mem_eval.json",
    ),
    DatasetSpec(
        "zsre_train", "ZsRE train split (for trainable editors such as MEND)", ("*.json",), "zsre_demo_train.json",
        "no licence stated by the ROME / MEND releases; the underlying relation data is from Levy et al. 2017",
        f"{_ZSRE_BY}; the train split (zsre_mem_train.json)",
    ),
    DatasetSpec(
        "counterfact", "CounterFact (editing)", ("*.json",), "",
        "released with ROME by its authors; the ROME code repository is MIT-licensed",
        "Meng et al. 2022, Locating and Editing Factual Associations in GPT (ROME); file counterfact.json",
        real=f"url:{_ROME}/counterfact.json",
    ),
    DatasetSpec("knowedit_zsre", "KnowEdit ZsRE test (editing, with portability)", ("*.json",), "",
                _KNOWEDIT_LICENCE, f"{_KNOWEDIT_BY}; built on {_ZSRE_BY}",
                real=f"{_KNOWEDIT}/ZsRE/ZsRE-test-all.json"),
    DatasetSpec("knowedit_recent", "KnowEdit WikiData_recent test (editing, with portability)", ("*.json",), "",
                _KNOWEDIT_LICENCE, f"{_KNOWEDIT_BY}; built on RippleEdits (Cohen et al. 2024)",
                real=f"{_KNOWEDIT}/wiki_recent/recent_test.json"),
    DatasetSpec("knowedit_counterfact", "KnowEdit WikiData_counterfact test (editing, with portability)",
                ("*.json",), "", _KNOWEDIT_LICENCE, f"{_KNOWEDIT_BY}; built on RippleEdits (Cohen et al. 2024)",
                real=f"{_KNOWEDIT}/wiki_counterfact/test_cf.json"),
    DatasetSpec("knowedit_wikibio", "KnowEdit WikiBio test (editing)", ("*.json",), "",
                _KNOWEDIT_LICENCE, f"{_KNOWEDIT_BY}; built on WikiBio hallucination data (Manakul et al. 2023, "
                "SelfCheckGPT) as used by GRACE (Hartvigsen et al. 2023)",
                real=f"{_KNOWEDIT}/WikiBio/wikibio-test-all.json"),
    DatasetSpec("knowedit_convsent", "KnowEdit ConvSent test (sentiment editing; not a fact edit)",
                ("*.json",), "", _KNOWEDIT_LICENCE,
                f"{_KNOWEDIT_BY}; built on ConvSent (Mitchell et al. 2022, SERAC)",
                real=f"{_KNOWEDIT}/Convsent/blender_test.json"),
    DatasetSpec("knowedit_sanitation", "KnowEdit Sanitation test (knowledge erasure; not a fact edit)",
                ("*.json",), "", _KNOWEDIT_LICENCE,
                f"{_KNOWEDIT_BY}; built on TriviaQA (Joshi et al. 2017) as used by Ishibashi and Shimodaira 2023",
                real=f"{_KNOWEDIT}/trivia/trivia_qa_test.json"),
    DatasetSpec("gsm8k", "GSM8K test", ("test.jsonl",), "gsm8k", "MIT",
                "Cobbe et al. 2021, Training Verifiers to Solve Math Word Problems (openai/gsm8k)",
                real="hf:openai/gsm8k@main#main/test-*.parquet", convert=releaseformat.gsm8k_from_parquet),
    DatasetSpec("rte", "RTE (GLUE) dev", ("dev.tsv",), "rte",
                "GLUE / PASCAL RTE challenge terms (no open licence stated; research use)",
                f"Dagan et al. 2006 and later RTE challenges; {_GLUE_BY}",
                real="hf:nyu-mll/glue@main#rte/validation-*.parquet", convert=releaseformat.rte_from_parquet),
    DatasetSpec("nq", "Natural Questions (NQ-open test) with gold passages", ("test.jsonl",), "nq",
                "CC BY-SA 3.0 (Natural Questions; the passages are Wikipedia text, CC BY-SA); "
                "Lost in the Middle data release: MIT",
                "Kwiatkowski et al. 2019, Natural Questions; Lee et al. 2019 (NQ-open); passages: the NQ-annotated "
                "gold Wikipedia paragraph of each NQ-open test question, from Liu et al. 2023, Lost in the Middle "
                "(qa_data/nq-open-oracle.jsonl.gz: the 2,655 of 3,610 questions that have one)",
                real="url:https://raw.githubusercontent.com/nelson-liu/lost-in-the-middle/"
                     "dc5c20a60a52c46cce60d13c659f698c1343596e/qa_data/nq-open-oracle.jsonl.gz",
                convert=releaseformat.nq_from_oracle),
    DatasetSpec("boolq", "BoolQ dev", ("dev.jsonl",), "boolq", "CC BY-SA 3.0",
                "Clark et al. 2019, BoolQ (google/boolq)",
                real="hf:google/boolq@main#data/validation-*.parquet", convert=releaseformat.boolq_from_parquet),
    DatasetSpec("mutual", "MuTual dev", ("dev/*.txt",), "mutual",
                "no licence stated in the release (github.com/Nealcly/MuTual); research use",
                "Cui et al. 2020, MuTual: A Dataset for Multi-Turn Dialogue Reasoning",
                real="url:https://github.com/Nealcly/MuTual/archive/b7b16a072679af4769f4201a47e4926464d91725.zip"
                     "#member=MuTual-b7b16a072679af4769f4201a47e4926464d91725/data/mutual/dev"),
    DatasetSpec("samsum", "SAMSum test", ("test.json",), "samsum", "CC BY-NC-ND 4.0",
                "Gliwa et al. 2019, SAMSum Corpus (Samsung/samsum, parquet conversion a3e27aa)",
                real="hf:Samsung/samsum@a3e27aad035a3d2fb53a0ed5f58fb17e9c4d28e7#samsum/test-*.parquet",
                convert=releaseformat.samsum_from_parquet),
    DatasetSpec("conll2003", "CoNLL-2003 English test", ("test.txt",), "conll2003",
                "Reuters Corpus (RCV1) terms for the text; CoNLL-2003 shared task annotations",
                "Tjong Kim Sang and De Meulder 2003, CoNLL-2003 shared task (the test.txt that the Hugging Face "
                "conll2003 loader reads)",
                real="url:https://data.deepai.org/conll2003.zip#member=test.txt"),
    DatasetSpec("sst2", "SST-2 (GLUE) dev", ("dev.tsv",), "sst2",
                "GLUE / Stanford Sentiment Treebank terms (no open licence stated; research use)",
                f"Socher et al. 2013 (SST); {_GLUE_BY}",
                real="hf:nyu-mll/glue@main#sst2/validation-*.parquet", convert=releaseformat.sst2_from_parquet),
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


# (spec, argument, folder to fill, locked entry or None) -> the entry to lock (None: nothing to pin)
Fetch = Callable[[DatasetSpec, str, Path, Optional[dict]], Optional[dict]]


@dataclasses.dataclass(frozen=True)
class SourceKind:
    """How one kind of source fills an empty folder with a dataset's files, and what it says about them."""

    fetch: Fetch
    provenance: Callable[[DatasetSpec, str], Provenance]


DATASET_SOURCES: Registry[SourceKind] = Registry("dataset source kind")
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


def _fetch_embedded(spec: DatasetSpec, argument: str, dest: Path, pinned: Optional[dict]) -> None:
    if argument != "demo":
        raise ValueError(f"embedded dataset source {argument!r} is unknown; allowed: demo")
    if not spec.demo:
        demos = [n for n in DATASETS.names() if DATASETS.get(n).demo]
        raise ValueError(f"dataset {spec.name!r} has no embedded demo; datasets with one: {', '.join(demos)}")
    _copy_layout(spec, DEMO_DIR / spec.demo, dest)


def _embedded_provenance(spec: DatasetSpec, argument: str) -> Provenance:
    attribution = f"small hand-written demo items in the {spec.title} release layout; not the real dataset"
    return Provenance(demo=True, licence=DEMO_LICENCE, attribution=attribution)


def _fetch_local(spec: DatasetSpec, argument: str, dest: Path, pinned: Optional[dict]) -> None:
    origin = Path(argument).expanduser()
    if not origin.exists():
        raise FileNotFoundError(f"local dataset source for {spec.name!r}: {origin} does not exist")
    in_layout = any(fnmatch.fnmatch(origin.name, Path(pattern).name) for pattern in spec.files)
    if origin.is_file() and spec.convert is not None and not in_layout:
        spec.convert([origin], dest)  # a local copy of what the real source serves (e.g. a Hub parquet file)
    else:
        _copy_layout(spec, origin, dest)


def _real_provenance(spec: DatasetSpec, argument: str) -> Provenance:
    # a local copy is taken to be the real release, under that release's terms
    return Provenance(demo=False, licence=spec.licence, attribution=spec.attribution)


def _online(fetch_served: Callable[[str, str, Path, Optional[dict]], tuple[list[Path], dict]]) -> Fetch:
    def fetch(spec: DatasetSpec, argument: str, dest: Path, pinned: Optional[dict]) -> dict:
        with tempfile.TemporaryDirectory(dir=dest.parent) as work:
            served, entry = fetch_served(spec.name, argument, Path(work), pinned)
            _place(spec, served, dest)
        return entry

    return fetch


DATASET_SOURCES.add("embedded", SourceKind(_fetch_embedded, _embedded_provenance))
DATASET_SOURCES.add("local", SourceKind(_fetch_local, _real_provenance))
DATASET_SOURCES.add("hf", SourceKind(_online(fetch_hub), _real_provenance))
DATASET_SOURCES.add("url", SourceKind(_online(fetch_url), _real_provenance))


def resolve_source(name: str, source: str) -> str:
    """`source` itself, or for "real" the dataset's registered real source."""
    spec = DATASETS.get(name)
    if source != REAL:
        return source
    if not spec.real:
        raise ValueError(f"dataset {name!r} has no registered real source; give one: "
                         "local:<path>, hf:<repo>@<revision>#<file>, url:<https URL>")
    return spec.real


def _resolve(name: str, source: str) -> tuple[DatasetSpec, SourceKind, str, str]:
    spec = DATASETS.get(name)
    source = resolve_source(name, source)
    kind, sep, argument = source.partition(":")
    if not sep or not argument:
        raise ValueError(
            f"dataset source {source!r} for {name!r} must be 'kind:argument' or {REAL!r}; "
            f"kinds: {', '.join(DATASET_SOURCES.names())}"
        )
    return spec, DATASET_SOURCES.get(kind), argument, source


def describe_source(name: str, source: str) -> dict:
    """What fetching `name` from `source` yields, without fetching: name, source (resolved),
    licence, attribution, demo (for report headers)."""
    spec, kind, argument, resolved = _resolve(name, source)
    provenance = kind.provenance(spec, argument)
    return {"name": name, "source": resolved, **dataclasses.asdict(provenance)}


def fetch_dataset(name: str, source: str, dest: Path, lock: Optional[Path] = None) -> dict:
    """Fetch dataset `name` from `source` ("embedded:demo", "local:<path>", "hf:...", "url:..." or
    "real") into folder `dest`, replacing it as a whole only once every file and the manifest are
    written. An online source is pinned by the lock file `lock`: its entry is used and checked if
    present, and written on first use once the folder is in place. Returns the manifest."""
    spec, kind, argument, resolved = _resolve(name, source)
    dest = Path(dest)
    locked = SourceLock(lock) if lock is not None else None
    pinned = locked.entry(name, resolved) if locked else None
    with staging_dir(dest) as tmp:
        entry = kind.fetch(spec, argument, tmp, pinned)
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
    log.info("fetched dataset %s from %s into %s (%d files)", name, resolved, dest, len(files))
    return manifest


# --- editing records --------------------------------------------------------------------------


def load_edit_records(path: Path, dataset: Optional[str] = None) -> list[EditRecord]:
    """EditRecords from an editing dataset's JSON file, or from its fetched folder (one JSON file).
    The layout is `dataset`'s; without it, the folder manifest's name, else ZsRE."""
    path = Path(path)
    if path.is_dir():
        manifest = path / MANIFEST
        name = dataset or (read_json(manifest, dict, "a dataset manifest")["name"] if manifest.exists() else "zsre")
        files = dataset_files(name, path)
        if len(files) != 1:
            raise ValueError(f"{path}: expected one {DATASETS.get(name).title} JSON file, found {[f.name for f in files]}")
        path = files[0]
    else:
        name = dataset or "zsre"
    mapping = edit_set(name)
    data = read_json(path, list, mapping.what)
    records = []
    for index, rec in enumerate(data):
        try:
            records.append(mapping.record(rec, index))
        except ValueError as err:
            raise ValueError(f"{path}, record {index}: {err}") from None
    return records
