"""Editing datasets as EditRecords: one mapper per release layout, registered under the dataset's name.

    zsre, zsre_train      ROME / MEND ZsRE JSON: subject, src, rephrase, alt, answers, loc, loc_ans
    counterfact           ROME CounterFact JSON: requested_rewrite{prompt with "{}", subject,
                          target_new{str}, target_true{str}}, paraphrase_prompts, neighborhood_prompts
    knowedit_zsre, knowedit_recent, knowedit_counterfact, knowedit_wikibio
                          KnowEdit JSON (zjunlp/KnowEdit): subject, prompt, target_new, ground_truth,
                          rephrase_prompt, portability{...}, locality{...}; WikiBio says concept, text,
                          labels for subject, prompt, target_new

KnowEdit is mapped as EasyEdit's KnowEditDataset reads it (easyeditor/dataset/knowedit.py): the
locality pair is the first Relation_Specificity item, else the first Forgetfulness item; the
portability pair is the first Reasoning item, else Subject_Aliasing, else Logical_Generalization;
an answer nested in lists ([["Berlin", "Berlin, Germany"]]) is its first string. A metric whose
prompt a dataset lacks is left empty, which the editing metrics count as not measured.
ConvSent (a sentiment edit of a topic) and Sanitation (erasing an answer to "I don't know") are
not (subject, relation, object) facts and have no mapping here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from editharm.core.fileio import read_json
from editharm.core.records import EditRecord
from editharm.core.registry import Registry
from editharm.data.catalog import DATASETS, MANIFEST, dataset_files


@dataclass(frozen=True)
class EditSet:
    what: str  # the layout, for "expected ..." messages
    record: Callable[[Any, int], EditRecord]  # (JSON record, index in the file)


EDIT_SETS: Registry[EditSet] = Registry("editing dataset")
# Registered datasets that are not fact edits: why, for the error that names what is allowed.
NOT_FACT_EDITS = {
    "knowedit_convsent": "ConvSent edits the sentiment of replies about a topic, not a (subject, relation, object) fact",
    "knowedit_sanitation": "Sanitation erases an answer (the target is \"I don't know.\") and names no subject",
}


def edit_set(name: str) -> EditSet:
    """The mapper of dataset `name`, failing with what is allowed for datasets that are not fact edits."""
    if name in NOT_FACT_EDITS:
        raise ValueError(
            f"dataset {name!r} cannot be used as edits: {NOT_FACT_EDITS[name]}; "
            f"editing datasets: {', '.join(EDIT_SETS.names())}"
        )
    return EDIT_SETS.get(name)


# --- field helpers ----------------------------------------------------------------------------


def _object(rec: Any) -> dict:
    if not isinstance(rec, dict):
        raise ValueError(f"expected a JSON object, got {type(rec).__name__}")
    return rec


def _text(rec: dict, key: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _first_text(value: Any, key: str) -> str:
    """The first string of an answer that KnowEdit nests in lists to a varying depth."""
    while isinstance(value, list) and value:
        value = value[0]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string or a list holding one, got {value!r}")
    return value


def _require(rec: dict, keys: tuple[str, ...], layout: str) -> None:
    missing = [key for key in keys if key not in rec]
    if missing:
        raise ValueError(f"missing field(s) {missing}; a {layout} record has {list(keys)}")


# --- ZsRE (ROME / MEND release) ---------------------------------------------------------------

ZSRE_FIELDS = ("subject", "src", "rephrase", "alt", "answers", "loc", "loc_ans")
_NQ_PREFIX = re.compile(r"^\s*nq question:\s*", re.IGNORECASE)


def locality_prompt(loc: str) -> str:
    """ZsRE's `loc` ("nq question: who sang ...") as a question: prefix dropped, "?" appended as the
    ROME / MEND ZsRE code does when it builds the locality prompt."""
    question = _NQ_PREFIX.sub("", loc).strip()
    return question if question.endswith("?") else question + "?"


def zsre_record(rec: Any, index: int) -> EditRecord:
    rec = _object(rec)
    _require(rec, ZSRE_FIELDS, "ZsRE")
    for key in ("subject", "src", "rephrase", "alt", "loc", "loc_ans"):
        _text(rec, key)
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


# --- CounterFact (ROME release) ---------------------------------------------------------------

COUNTERFACT_FIELDS = ("case_id", "requested_rewrite", "paraphrase_prompts", "neighborhood_prompts")


def counterfact_record(rec: Any, index: int) -> EditRecord:
    """As ROME evaluates CounterFact: the rewrite prompt with the subject filled in, the first
    paraphrase for generalization, the first neighborhood prompt (another subject that shares the
    relation and the true object) with target_true as its answer for locality."""
    rec = _object(rec)
    _require(rec, COUNTERFACT_FIELDS, "CounterFact")
    rewrite = _object(rec["requested_rewrite"])
    template, subject = _text(rewrite, "prompt"), _text(rewrite, "subject")
    if "{}" not in template:
        raise ValueError(f"requested_rewrite.prompt {template!r} has no '{{}}' for the subject")
    rest = template.replace("{}", "", 1)
    if "{" in rest or "}" in rest:  # str.format would fail on it
        raise ValueError(
            f"requested_rewrite.prompt {template!r} has braces besides the one '{{}}' for the subject"
        )
    targets = {}
    for key in ("target_new", "target_true"):
        target = rewrite.get(key)
        if not isinstance(target, dict):
            raise ValueError(f"requested_rewrite.{key} must be an object with 'str', got {target!r}")
        targets[key] = _text(target, "str").strip()
    paraphrases, neighbours = rec["paraphrase_prompts"], rec["neighborhood_prompts"]
    for key, value in (("paraphrase_prompts", paraphrases), ("neighborhood_prompts", neighbours)):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
            raise ValueError(f"field {key!r} must be a non-empty list of strings, got {value!r}")
    return EditRecord(
        id=str(rec["case_id"]),
        subject=subject,
        prompt=template.format(subject),
        target_new=targets["target_new"],
        ground_truth=targets["target_true"],
        rephrase_prompt=paraphrases[0],
        locality_prompt=neighbours[0],
        locality_answer=targets["target_true"],
    )


# --- KnowEdit ---------------------------------------------------------------------------------

LOCALITY_KINDS = ("Relation_Specificity", "Forgetfulness")
PORTABILITY_KINDS = ("Reasoning", "Subject_Aliasing", "Logical_Generalization")


def _first_pair(rec: dict, group: str, kinds: tuple[str, ...]) -> tuple[str, str]:
    """(prompt, answer) of the first item of the first non-empty kind in rec[group]; ("", "") if none."""
    found = rec.get(group) or {}
    if not isinstance(found, dict):
        raise ValueError(f"field {group!r} must be an object of {list(kinds)} lists, got {type(found).__name__}")
    for kind in kinds:
        items = found.get(kind)
        if items:
            item = _object(items[0] if isinstance(items, list) else items)
            where = f"{group}.{kind}[0]"
            return _first_text(item.get("prompt"), f"{where}.prompt"), _first_text(item.get("ground_truth"), f"{where}.ground_truth")
    return "", ""


def knowedit_record(rec: Any, index: int) -> EditRecord:
    rec = _object(rec)
    subject_key = "subject" if "subject" in rec else "concept"
    prompt_key = "prompt" if "prompt" in rec else "text"
    target_key = "target_new" if "target_new" in rec else "labels"
    _require(rec, (subject_key, prompt_key, target_key), "KnowEdit")
    loc_prompt, loc_answer = _first_pair(rec, "locality", LOCALITY_KINDS)
    port_prompt, port_answer = _first_pair(rec, "portability", PORTABILITY_KINDS)
    truth = rec.get("ground_truth")
    rephrase_key = "rephrase_prompt" if rec.get("rephrase_prompt") else "rephrase"
    rephrase = rec.get(rephrase_key) or ""
    if not isinstance(rephrase, str):
        raise ValueError(f"field {rephrase_key!r} must be a string, got {type(rephrase).__name__}")
    return EditRecord(
        id=str(index),
        subject=_text(rec, subject_key),
        prompt=_text(rec, prompt_key),
        target_new=_first_text(rec[target_key], f"field {target_key!r}"),
        ground_truth=_first_text(truth, "field 'ground_truth'") if truth else "",
        rephrase_prompt=rephrase,
        locality_prompt=loc_prompt,
        locality_answer=loc_answer,
        portability_prompt=port_prompt or None,
        portability_answer=port_answer or None,
    )


for _name, _set in (
    ("zsre", EditSet("a JSON list of ZsRE records", zsre_record)),
    ("zsre_train", EditSet("a JSON list of ZsRE records", zsre_record)),
    ("counterfact", EditSet("a JSON list of CounterFact records", counterfact_record)),
    ("knowedit_zsre", EditSet("a JSON list of KnowEdit records", knowedit_record)),
    ("knowedit_recent", EditSet("a JSON list of KnowEdit records", knowedit_record)),
    ("knowedit_counterfact", EditSet("a JSON list of KnowEdit records", knowedit_record)),
    ("knowedit_wikibio", EditSet("a JSON list of KnowEdit records", knowedit_record)),
):
    EDIT_SETS.add(_name, _set)


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
