"""The dataset catalog: every dataset editharm reads, its original release layout (the files a
fetched folder holds), its embedded demo, licence, attribution and registered real source."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Optional

from editharm.core.registry import Registry
from editharm.data import releaseformat
from editharm.data.releaseformat import Converter

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
    # The RECT paper's NLI numbers are on this split (2,490 pairs): the item count in its released
    # scorer (2,489 unparseable answers = all of them) fits train, not dev (277) or test (3,000).
    DatasetSpec("rte_train", "RTE (GLUE) train", ("train.tsv",), "",
                "GLUE / PASCAL RTE challenge terms (no open licence stated; research use)",
                f"Dagan et al. 2006 and later RTE challenges; {_GLUE_BY}; the train split, which Gu et al. 2024 "
                "(RECT) evaluate NLI on",
                real="hf:nyu-mll/glue@main#rte/train-*.parquet", convert=releaseformat.rte_train_from_parquet),
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
