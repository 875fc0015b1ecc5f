"""One reader per original file layout of the task datasets, registered under the dataset's name.

A reader gets the dataset's files (as `editharm.data.catalog.dataset_files` finds them), reads at most
`limit` records, and returns Items whose `reference` is the raw label for classification layouts
(the task's verbalizer maps it to an answer word). Malformed records fail with file and record.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from editharm.core.fileio import read_json
from editharm.core.registry import Registry
from editharm.evaluation.metrics import bio_spans, detokenize, last_number


@dataclass(frozen=True)
class Item:
    id: str
    fields: dict[str, Any]  # template variables
    reference: str | list[str]
    gold: str  # the gold choice string in choice mode, else the reference as text


@dataclass(frozen=True)
class Loader:
    read: Callable[..., list[Item]]  # (files, limit, **options)
    fields: tuple[str, ...]  # template variables each item provides
    labels: tuple[str, ...] = ()  # raw labels of a classification layout
    options: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # option -> allowed values


LOADERS: Registry[Loader] = Registry("loader")


class RecordError(ValueError):
    """A record that does not follow its file's layout."""


def _loader(name: str, fields: tuple[str, ...], labels: tuple[str, ...] = (), **options: tuple[str, ...]):
    def add(read: Callable[..., list[Item]]) -> Callable[..., list[Item]]:
        LOADERS.add(name, Loader(read, fields, labels, options))
        return read

    return add


# --- shared readers ---------------------------------------------------------------------------


def _single(files: Sequence[Path]) -> Path:
    if len(files) != 1:
        raise ValueError(f"expected exactly one data file, got {[str(f) for f in files]}")
    return files[0]


def _jsonl(path: Path, limit: int | None) -> Iterator[tuple[str, dict]]:
    """(where, record) for each non-blank line, `where` naming the file and line."""
    count = 0
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            where = f"{path}, line {line_no}"
            yield where, _json_object(line.rstrip("\r\n"), where, "one JSON object per line")
            count += 1


def _json_object(text: str, where: str, expected: str) -> dict:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        at = f"column {err.colno}" if err.lineno == 1 else f"line {err.lineno}, column {err.colno}"
        raise RecordError(f"{where}: not valid JSON ({err.msg} at {at}); expected {expected}") from None
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected {expected}, got a JSON {type(record).__name__}")
    return record


def _tsv(path: Path, columns: Sequence[str], limit: int | None) -> Iterator[tuple[str, dict[str, str]]]:
    """GLUE-style TSV: a header row, tab-separated, no quoting; yields (where, row by column name)."""
    with path.open(encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
        missing = [c for c in columns if c not in header]
        if missing:
            raise RecordError(f"{path}, line 1: header {header} lacks column(s) {missing}; expected {list(columns)}")
        count = 0
        for line_no, line in enumerate(fh, 2):
            if limit is not None and count >= limit:
                return
            if not line.strip():
                continue
            values = line.rstrip("\r\n").split("\t")
            where = f"{path}, line {line_no}"
            if len(values) != len(header):
                raise RecordError(f"{where}: {len(values)} tab-separated values; expected {len(header)}, "
                                  f"one per header column {header}")
            yield where, dict(zip(header, values))
            count += 1


def _got(record: Mapping[str, Any], key: str) -> str:
    """What a record holds under `key`, for messages: a missing field said so, a long value cut short."""
    if key not in record:
        return "no such field"
    shown = repr(record[key])
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _text(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"{where}: field {key!r} must be a non-empty string, got {_got(record, key)}")
    return value


def _texts(record: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = record.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise RecordError(
            f"{where}: field {key!r} must be a non-empty list of non-empty strings, got {_got(record, key)}"
        )
    return value


def _label(record: Mapping[str, Any], key: str, allowed: Sequence[str], where: str) -> str:
    value = record.get(key)
    if value not in allowed:
        raise RecordError(f"{where}: label {value!r} is not one of {list(allowed)} (field {key!r})")
    return value


# --- layouts ----------------------------------------------------------------------------------


@_loader("gsm8k", ("question", "hint"), hint=("none", "rationale"))
def read_gsm8k(files: Sequence[Path], limit: int | None = None, hint: str = "none") -> list[Item]:
    """GSM8K jsonl: question, answer = rationale + "#### <number>". `hint="rationale"` puts the gold
    rationale into {hint} as the reference evaluation did (a leak, for comparison only)."""
    items = []
    for n, (where, rec) in enumerate(_jsonl(_single(files), limit)):
        question = _text(rec, "question", where)
        rationale, sep, final = _text(rec, "answer", where).rpartition("####")
        answer = last_number(final)
        if not sep or not answer:
            raise RecordError(f"{where}: field 'answer' does not end with '#### <number>'")
        shown = rationale.strip() if hint == "rationale" else ""
        items.append(Item(str(n), {"question": question, "hint": shown}, answer, answer))
    return items


RTE_LABELS = ("entailment", "not_entailment")


@_loader("rte", ("sentence1", "sentence2"), labels=RTE_LABELS)
@_loader("rte_train", ("sentence1", "sentence2"), labels=RTE_LABELS)
def read_rte(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """GLUE RTE tsv (dev.tsv, or train.tsv for rte_train): index, sentence1, sentence2, label
    (entailment | not_entailment)."""
    items = []
    for where, row in _tsv(_single(files), ("index", "sentence1", "sentence2", "label"), limit):
        label = _label(row, "label", RTE_LABELS, where)
        fields = {"sentence1": _text(row, "sentence1", where), "sentence2": _text(row, "sentence2", where)}
        items.append(Item(row["index"], fields, label, label))
    return items


@_loader("nq", ("question", "document"))
def read_nq(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """NQ-open with passages, jsonl: question, answer (list), output (list; output[0] is the passage)."""
    items = []
    for n, (where, rec) in enumerate(_jsonl(_single(files), limit)):
        fields = {"question": _text(rec, "question", where), "document": _texts(rec, "output", where)[0].strip()}
        answers = _texts(rec, "answer", where)
        items.append(Item(str(n), fields, answers, answers[0]))
    return items


@_loader("boolq", ("question", "passage", "title"), labels=("true", "false"))
def read_boolq(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """BoolQ jsonl: question, title, answer (JSON bool), passage; raw labels "true" / "false"."""
    items = []
    for n, (where, rec) in enumerate(_jsonl(_single(files), limit)):
        if not isinstance(rec.get("answer"), bool):
            raise RecordError(f"{where}: field 'answer' must be true or false, got {_got(rec, 'answer')}")
        label = "true" if rec["answer"] else "false"
        fields = {
            "question": _text(rec, "question", where),
            "passage": _text(rec, "passage", where),
            "title": str(rec.get("title", "")),
        }
        items.append(Item(str(n), fields, label, label))
    return items


MUTUAL_LABELS = ("A", "B", "C", "D")
MUTUAL_FILE = "one JSON object (answers, options, article, id) per dialogue file"


@_loader("mutual", ("article", "o0", "o1", "o2", "o3"), labels=MUTUAL_LABELS)
def read_mutual(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """MuTual: one JSON object per dialogue file: answers ("A".."D"), options (4), article, id."""
    items = []
    for path in files[:limit]:
        where = str(path)
        rec = _json_object(path.read_text(encoding="utf-8"), where, MUTUAL_FILE)
        options = _texts(rec, "options", where)
        if len(options) != 4:
            raise RecordError(f"{where}: field 'options' must hold 4 options, got {len(options)}")
        label = _label(rec, "answers", MUTUAL_LABELS, where)
        fields = {"article": _text(rec, "article", where), **{f"o{i}": opt for i, opt in enumerate(options)}}
        items.append(Item(str(rec.get("id", path.stem)), fields, label, label))
    return items


@_loader("samsum", ("dialogue",))
def read_samsum(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """SAMSum json: a list of {id, summary, dialogue}; dialogue turns separated by CRLF or LF."""
    path = _single(files)
    records = read_json(path, list, "a JSON list of dialogues", RecordError)
    items = []
    for n, rec in enumerate(records[:limit]):
        where = f"{path}, record {n}"
        if not isinstance(rec, dict):
            raise RecordError(f"{where}: expected a JSON object (id, summary, dialogue), got {type(rec).__name__}")
        dialogue = _text(rec, "dialogue", where).replace("\r\n", "\n").strip()
        summary = _text(rec, "summary", where).strip()
        items.append(Item(str(rec.get("id", n)), {"dialogue": dialogue}, summary, summary))
    return items


# CoNLL-2003 tag types in the order and wording of the paper's prompt.
ENTITY_TYPES = {"PER": "Person", "LOC": "Location", "ORG": "Organization", "MISC": "Miscellaneous"}
_NER_TAG = re.compile(rf"O|[BI]-(?:{'|'.join(ENTITY_TYPES)})")


@_loader("conll2003", ("sentence", "entity_type"))
def read_conll2003(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """CoNLL-2003 columns "token POS chunk NER", blank lines between sentences, -DOCSTART- lines
    between documents. Each sentence gives one item per entity type (the paper prompts per type);
    `limit` counts items, like every task. Reference: the gold surfaces of that type ("A, B" or "None")."""
    sentences = None if limit is None else -(-limit // len(ENTITY_TYPES))
    items = []
    for n, (tokens, tags) in enumerate(_conll_sentences(_single(files), sentences)):
        spans = bio_spans(tokens, tags)
        for tag, name in ENTITY_TYPES.items():
            surfaces = [surface for kind, surface in spans if kind == tag]
            fields = {"sentence": detokenize(tokens), "entity_type": name}
            items.append(Item(f"{n}-{name}", fields, surfaces, ", ".join(surfaces) or "None"))
    return items[:limit]


def _conll_sentences(path: Path, limit: int | None) -> Iterator[tuple[list[str], list[str]]]:
    tokens: list[str] = []
    tags: list[str] = []
    count = 0
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate([*fh, "\n"], 1):
            columns = line.split()
            if columns and columns[0] != "-DOCSTART-":
                if len(columns) != 4 or not _NER_TAG.fullmatch(columns[3]):
                    raise RecordError(
                        f"{path}, line {line_no}: expected 'token POS chunk NER' with NER tag O or "
                        f"B-/I- + {'/'.join(ENTITY_TYPES)}, got {line.strip()!r}"
                    )
                tokens.append(columns[0])
                tags.append(columns[3])
            elif tokens:
                if limit is not None and count >= limit:
                    return
                yield tokens, tags
                count += 1
                tokens, tags = [], []


SST2_LABELS = ("0", "1")


@_loader("sst2", ("text",), labels=SST2_LABELS)
def read_sst2(files: Sequence[Path], limit: int | None = None) -> list[Item]:
    """GLUE SST-2 tsv: sentence, label (0 negative, 1 positive)."""
    items = []
    for n, (where, row) in enumerate(_tsv(_single(files), ("sentence", "label"), limit)):
        label = _label(row, "label", SST2_LABELS, where)
        items.append(Item(str(n), {"text": _text(row, "sentence", where).strip()}, label, label))
    return items
