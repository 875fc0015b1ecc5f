"""Conversions from the files a real source serves to the original release layout the loaders read.

The Hub serves GLUE, BoolQ, GSM8K and SAMSum as parquet, and NQ's passages come as gzipped
JSON lines; each converter writes the dataset's original files (GLUE dev.tsv or train.tsv, BoolQ
dev.jsonl, GSM8K test.jsonl, SAMSum test.json, NQ test.jsonl with passages) so that one reader per
dataset serves the demo, `local:` copies of the original release, and every real source alike. Rows
that do not fit fail with file and row.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

Converter = Callable[[Sequence[Path], Path], None]  # (fetched files, dataset folder to fill)


class ReleaseFormatError(ValueError):
    """A row of a served file that cannot be written in the original layout."""


def _parquet_rows(paths: Sequence[Path], columns: Sequence[str]) -> Iterator[tuple[str, dict]]:
    """(where, row) over the parquet files in order, checking that each has `columns`."""
    import pyarrow.parquet as pq

    for path in paths:
        table = pq.read_table(path)
        missing = [c for c in columns if c not in table.column_names]
        if missing:
            raise ReleaseFormatError(f"{path}: no column(s) {missing}; has {table.column_names}, expected {list(columns)}")
        for n, row in enumerate(table.select(list(columns)).to_pylist()):
            yield f"{path}, row {n}", row


def _jsonl_lines(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _tsv_cell(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str) or any(c in value for c in "\t\r\n"):
        raise ReleaseFormatError(f"{where}: column {column!r} must be a string without tabs or line breaks, got {value!r}")
    return value


def _label(value: Any, names: Sequence[str], where: str) -> str:
    if not isinstance(value, int) or not 0 <= value < len(names):
        raise ReleaseFormatError(f"{where}: label {value!r} is not one of {list(range(len(names)))} ({', '.join(names)})")
    return names[value]


def gsm8k_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """openai/gsm8k main/test-*.parquet (question, answer) -> test.jsonl."""
    rows = [row for _, row in _parquet_rows(paths, ("question", "answer"))]
    (dest / "test.jsonl").write_text(_jsonl_lines(rows), encoding="utf-8")


RTE_NAMES = ("entailment", "not_entailment")  # the Hub's class label order for glue/rte


def _rte_tsv(paths: Sequence[Path], dest: Path) -> None:
    """nyu-mll/glue rte/<split>-*.parquet (sentence1, sentence2, label, idx) -> the GLUE tsv `dest`."""
    lines = ["index\tsentence1\tsentence2\tlabel"]
    for where, row in _parquet_rows(paths, ("idx", "sentence1", "sentence2", "label")):
        cells = [_tsv_cell(row[c], c, where) for c in ("sentence1", "sentence2")]
        lines.append("\t".join([str(row["idx"]), *cells, _label(row["label"], RTE_NAMES, where)]))
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")


def rte_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """nyu-mll/glue rte/validation-*.parquet -> GLUE dev.tsv."""
    _rte_tsv(paths, dest / "dev.tsv")


def rte_train_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """nyu-mll/glue rte/train-*.parquet -> GLUE train.tsv."""
    _rte_tsv(paths, dest / "train.tsv")


def sst2_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """nyu-mll/glue sst2/validation-*.parquet (sentence, label 0 negative / 1 positive) -> GLUE dev.tsv."""
    lines = ["sentence\tlabel"]
    for where, row in _parquet_rows(paths, ("sentence", "label")):
        label = _label(row["label"], ("0", "1"), where)
        lines.append(f"{_tsv_cell(row['sentence'], 'sentence', where)}\t{label}")
    (dest / "dev.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def boolq_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """google/boolq data/validation-*.parquet (question, answer, passage) -> dev.jsonl (the Hub copy
    has no article title; the prompt does not use it)."""
    rows = []
    for where, row in _parquet_rows(paths, ("question", "answer", "passage")):
        if not isinstance(row["answer"], bool):
            raise ReleaseFormatError(f"{where}: column 'answer' must be true or false, got {row['answer']!r}")
        rows.append(row)
    (dest / "dev.jsonl").write_text(_jsonl_lines(rows), encoding="utf-8")


def samsum_from_parquet(paths: Sequence[Path], dest: Path) -> None:
    """Samsung/samsum samsum/test-*.parquet (id, dialogue, summary) -> test.json."""
    rows = [row for _, row in _parquet_rows(paths, ("id", "summary", "dialogue"))]
    (dest / "test.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def nq_from_oracle(paths: Sequence[Path], dest: Path) -> None:
    """Lost in the Middle's nq-open-oracle.jsonl.gz (question, answers, ctxs[{title, text, isgold}])
    -> test.jsonl with question, answer and output[0] = the gold Wikipedia passage, the layout the
    reference evaluation reads."""
    rows = []
    for path in paths:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}, line {line_no}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ReleaseFormatError(f"{where}: not valid JSON ({err.msg})") from None
                gold = [c for c in rec.get("ctxs") or [] if isinstance(c, dict) and c.get("isgold")]
                if not gold or not isinstance(gold[0].get("text"), str):
                    raise ReleaseFormatError(f"{where}: no gold passage (a 'ctxs' item with isgold true and a text)")
                answers = rec.get("answers")
                if not isinstance(rec.get("question"), str) or not isinstance(answers, list) or not answers:
                    raise ReleaseFormatError(f"{where}: expected 'question' (string) and 'answers' (non-empty list)")
                rows.append({"question": rec["question"], "answer": answers, "output": [gold[0]["text"]]})
    (dest / "test.jsonl").write_text(_jsonl_lines(rows), encoding="utf-8")
