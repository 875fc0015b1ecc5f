"""General-ability tasks. Each task is data: one YAML file in this folder (prompt template,
dataset, scoring mode, parser, metric), loaded and validated into TASKS at import.

Scoring modes: "choice" ranks the task's `choices` by log-likelihood; "generate" decodes greedily
and maps the text to an answer with the task's parser. Classification tasks support both, so a
run can switch mode with `task.with_options(scoring=...)` (validated again).
"""
from __future__ import annotations

import dataclasses
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Sequence

import yaml

from editharm.core.registry import Registry
from editharm.data.catalog import dataset_files
from editharm.evaluation.metrics import METRICS
from editharm.evaluation.tasks.loaders import LOADERS, Item, Loader
from editharm.evaluation.tasks.parsers import PARSERS

__all__ = ["SCORING_MODES", "TASKS", "Item", "Task", "TaskConfigError", "load_task_file"]

SCORING_MODES = ("generate", "choice")
OVERRIDABLE = ("scoring", "max_new_tokens")  # what a run may change per task (params.yaml)


class TaskConfigError(ValueError):
    """A task definition that is invalid; the message names the file, the key and what is allowed."""


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    dataset: str  # the dataset (editharm.data.catalog.DATASETS) whose files the task reads
    prompt: str  # str.format template over the loader's fields
    scoring: str  # "generate" | "choice"
    choices: list[str] | None  # continuations ranked in choice mode
    max_new_tokens: int
    parser: str  # generate mode: raw text -> answer (editharm.evaluation.tasks.parsers.PARSERS)
    metric: str  # editharm.evaluation.metrics.METRICS
    stop: list[str] = field(default_factory=list)  # generation stops at any of these strings
    loader_args: dict[str, str] = field(default_factory=dict)
    verbalizer: dict[str, str] | None = None  # raw dataset label -> answer word
    variant_of: str | None = None  # the task this one varies (other split or compatibility); not a default task
    description: str = ""
    source: str = field(default="", compare=False, repr=False)  # defining file, for messages

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def loader(self) -> Loader:
        return LOADERS.get(self.dataset)

    @property
    def supports_choice(self) -> bool:
        return self.choices is not None

    def with_options(self, **options: Any) -> Task:
        """This task with run-time overrides (scoring, max_new_tokens), validated like the YAML."""
        unknown = sorted(set(options) - set(OVERRIDABLE))
        if unknown:
            raise TaskConfigError(f"task {self.name!r}: option(s) {unknown} cannot be set; allowed: {', '.join(OVERRIDABLE)}")
        return dataclasses.replace(self, **options)

    @property
    def labels(self) -> tuple[str, ...]:
        """Answer labels of a classification task (what parsers look for), else empty."""
        return tuple(self.verbalizer.values()) if self.verbalizer else self.loader.labels

    def load_items(self, data_dir: Path, limit: int | None = None) -> list[Item]:
        """Items from the dataset's files in `data_dir` (original layout), the first `limit` records."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"task {self.name!r}: limit must be a positive integer or None, got {limit!r}")
        files = dataset_files(self.dataset, Path(data_dir))
        items = self.loader.read(files, limit, **self.loader_args)
        if not self.labels:
            return items
        gold_choice = {self.parse(c): c for c in self.choices or []} if self.scoring == "choice" else {}
        finished = []
        for item in items:
            reference = self.verbalizer[item.reference] if self.verbalizer else item.reference
            finished.append(Item(item.id, item.fields, reference, gold_choice.get(reference, reference)))
        return finished

    def render(self, item: Item) -> str:
        # An empty field takes its leading space with it ("step by step. {hint} Therefore" with
        # no hint must not leave a double space the model never saw in training).
        template = self.prompt
        for key, value in item.fields.items():
            if value == "":
                template = template.replace(" {" + key + "}", "{" + key + "}")
        return template.format(**item.fields)

    def choices_for(self, item: Item) -> list[str]:
        if not self.choices:
            raise ValueError(f"task {self.name!r} has no choices, so it cannot be scored in choice mode")
        return list(self.choices)

    def parse(self, text: str) -> str:
        return PARSERS.get(self.parser)(text, self.labels)

    def score(self, predictions: Sequence[str], items: Sequence[Item]) -> tuple[list[float], float]:
        """Per-example scores and the aggregate. Predictions may be raw generations, parsed answers or
        chosen choice strings: all are parsed first (parsers are idempotent)."""
        if len(predictions) != len(items):
            raise ValueError(f"task {self.name!r}: {len(predictions)} predictions for {len(items)} items")
        return METRICS.get(self.metric).compute([self.parse(p) for p in predictions], items)


# --- validation -------------------------------------------------------------------------------

_REQUIRED = ("name", "title", "dataset", "prompt", "scoring", "max_new_tokens", "parser", "metric")
_OPTIONAL = ("choices", "stop", "loader_args", "verbalizer", "variant_of", "description")


def _fail(task: Task, key: str, value: Any, allowed: str) -> NoReturn:
    where = task.source or f"task {task.name!r}"
    raise TaskConfigError(f"{where}: key {key!r}: {value!r} is not allowed; allowed: {allowed}")


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _validate(task: Task) -> None:
    for key in ("name", "title", "dataset", "prompt", "parser", "metric"):
        if not isinstance(getattr(task, key), str) or not getattr(task, key).strip():
            _fail(task, key, getattr(task, key), "a non-empty string")
    if not re.fullmatch(r"[a-z0-9_]+", task.name):
        _fail(task, "name", task.name, "lower-case letters, digits and '_'")
    if task.dataset not in LOADERS:
        _fail(task, "dataset", task.dataset, ", ".join(LOADERS.names()))
    loader = task.loader
    if not isinstance(task.loader_args, dict):
        _fail(task, "loader_args", task.loader_args, f"a mapping over {sorted(loader.options) or 'no options'}")
    for key, value in task.loader_args.items():
        if key not in loader.options:
            _fail(task, f"loader_args.{key}", value, f"options of {task.dataset}: {sorted(loader.options) or 'none'}")
        if value not in loader.options[key]:
            _fail(task, f"loader_args.{key}", value, ", ".join(loader.options[key]))
    for _, name, _, _ in string.Formatter().parse(task.prompt):
        if name is not None and name not in loader.fields:
            _fail(task, "prompt", "{" + name + "}", "placeholders " + ", ".join("{%s}" % f for f in loader.fields))
    if task.scoring not in SCORING_MODES:
        _fail(task, "scoring", task.scoring, ", ".join(SCORING_MODES))
    if task.parser not in PARSERS:
        _fail(task, "parser", task.parser, ", ".join(PARSERS.names()))
    if task.metric not in METRICS:
        _fail(task, "metric", task.metric, ", ".join(METRICS.names()))
    if isinstance(task.max_new_tokens, bool) or not isinstance(task.max_new_tokens, int) or task.max_new_tokens < 1:
        _fail(task, "max_new_tokens", task.max_new_tokens, "a positive integer")
    if not _is_str_list(task.stop):
        _fail(task, "stop", task.stop, "a list of non-empty strings")
    if task.variant_of is not None and not isinstance(task.variant_of, str):
        _fail(task, "variant_of", task.variant_of, "a task name or null")
    _validate_labels(task, loader)


def _validate_labels(task: Task, loader: Loader) -> None:
    if task.verbalizer is not None:
        if not isinstance(task.verbalizer, dict) or set(task.verbalizer) != set(loader.labels):
            _fail(task, "verbalizer", task.verbalizer, f"a mapping from each label of {task.dataset} {list(loader.labels)}")
        if not all(isinstance(v, str) and v for v in task.verbalizer.values()):
            _fail(task, "verbalizer", task.verbalizer, "non-empty answer words")
    if task.choices is None:
        if task.scoring == "choice":
            _fail(task, "scoring", task.scoring, "generate (choice mode needs 'choices')")
        return
    if not loader.labels:
        _fail(task, "choices", task.choices, f"null ({task.dataset} has no fixed answer labels)")
    if not _is_str_list(task.choices) or sorted(map(task.parse, task.choices)) != sorted(task.labels):
        _fail(task, "choices", task.choices, f"one string per label {list(task.labels)} that parser {task.parser!r} maps to it")


# --- registry ---------------------------------------------------------------------------------


def load_task_file(path: Path) -> Task:
    """A Task from one YAML file; unknown or missing keys fail naming the file and the key."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise TaskConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict):
        raise TaskConfigError(f"{path}: expected a mapping of task keys, got {type(spec).__name__}")
    allowed = ", ".join(_REQUIRED + _OPTIONAL)
    for key in spec:
        if key not in _REQUIRED + _OPTIONAL:
            raise TaskConfigError(f"{path}: unknown key {key!r}; allowed: {allowed}")
    for key in _REQUIRED:
        if key not in spec:
            raise TaskConfigError(f"{path}: missing key {key!r}; required: {', '.join(_REQUIRED)}")
    if spec["name"] != path.stem:
        raise TaskConfigError(f"{path}: key 'name': {spec['name']!r} must equal the file name {path.stem!r}")
    return Task(**spec, source=str(path))


def _load_tasks(folder: Path) -> Registry[Task]:
    tasks: Registry[Task] = Registry("task")
    for path in sorted(folder.glob("*.yaml")):
        task = load_task_file(path)
        tasks.add(task.name, task)
    for name in tasks:
        task = tasks.get(name)
        if task.variant_of is not None and task.variant_of not in tasks:
            _fail(task, "variant_of", task.variant_of, ", ".join(n for n in tasks if n != name))
    return tasks


TASKS: Registry[Task] = _load_tasks(Path(__file__).resolve().parent)
