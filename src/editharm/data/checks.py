"""Every record of a fetched dataset parsed before the folder is published, so that a fault fails the
fetch, naming the file, the line or record, the field and what was expected, instead of an evaluation
or editing job later on.

Each dataset is read by what reads it downstream, all of it: an editing dataset by its edit-record
mapper (editharm.data.editsets), a task dataset by its reader (editharm.evaluation.tasks.loaders).
ConvSent and Sanitation have neither (they are not fact edits and no task reads them), so for them
only the JSON list of objects is checked.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Callable

from editharm.data.catalog import DATASETS, dataset_files
from editharm.data.editsets import EDIT_SETS, NOT_FACT_EDITS, load_edit_records


class DatasetError(ValueError):
    """A dataset file that does not follow its release layout; the message starts with the file."""


def check_dataset(name: str, folder: Path) -> int:
    """Parse every record of dataset `name` in `folder` (its release layout) as editing and evaluation
    will read it; returns the number of records (editing and JSON-list datasets) or items (tasks)."""
    # The task readers belong to the evaluation phase, a later one than data: imported only when used.
    from editharm.evaluation.tasks.loaders import LOADERS

    folder = Path(folder)
    try:
        files = dataset_files(name, folder)
        for path in files:
            _check_utf8(path)
        if name in EDIT_SETS:
            what = EDIT_SETS.get(name).what
            for path in files:
                _json_list(path, what)
            return len(load_edit_records(folder, name))
        if name in LOADERS:
            read = LOADERS.get(name).read
            layout = _layout(read, name)
            for path in files:
                if path.suffix == ".json":  # parsed here too, for a syntax error that says what was expected
                    _json(path, layout)
            count = len(read(files, None))
            if not count:
                where = files[0] if len(files) == 1 else folder
                raise DatasetError(f"{where}: holds no records; expected at least one record of {layout}")
            return count
        if name in NOT_FACT_EDITS:
            return sum(_objects(path, _json_list(path, "a JSON list of records (objects)")) for path in files)
        raise DatasetError(f"{folder}: dataset {name!r} has no edit set or reader to check it with")
    except DatasetError:
        raise
    except (ValueError, OSError) as err:  # RecordError, JSON and layout errors, missing files
        text = str(err)
        raise DatasetError(text if text.startswith(str(folder)) else f"{folder}: {text}") from None


def _check_utf8(path: Path) -> None:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DatasetError(
            f"{path}, line {line} (byte offset {err.start}): not UTF-8 text; expected UTF-8 "
            f"(byte 0x{data[err.start]:02x}: {err.reason})"
        ) from None


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}, line {err.lineno}, column {err.colno}: not valid JSON ({err.msg}); expected {what}"
        ) from None


def _json_list(path: Path, what: str) -> list:
    """The file's JSON list, which must not be empty."""
    data = _json(path, what)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
    if not data:
        raise DatasetError(f"{path}: holds no records; expected {what}")
    return data


def _objects(path: Path, records: list) -> int:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DatasetError(f"{path}, record {index}: expected a JSON object, got {type(record).__name__}")
    return len(records)


def _layout(read: Callable, name: str) -> str:
    """The layout a reader reads, for messages: the first sentence of its docstring, where each reader
    describes it ("GLUE SST-2 tsv: sentence, label (0 negative, 1 positive)")."""
    first = " ".join((inspect.getdoc(read) or "").split()).split(". ")[0].rstrip(".")
    return f"the {DATASETS.get(name).title} layout" + (f" ({first})" if first else "")
