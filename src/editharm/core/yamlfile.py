"""Reading YAML strictly: a key written twice in one mapping is an error (PyYAML keeps the last and
drops the first without a word), and every error names the file, line and column."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class YamlFileError(ValueError):
    """A YAML file that cannot be read as written; the message names the file, line and column."""


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in (<<) may be overridden by the mapping's own
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it itself
                    continue
                if first is not None:
                    mark = key_node.start_mark
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key {key!r} is written twice in one mapping (first at line {first.start_mark.line + 1}); "
                        "allowed: each key once",
                        mark,
                    )
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _where(path: Path, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return str(path)
    return f"{path}, line {mark.line + 1}, column {mark.column + 1}"


def parse_yaml(text: str, path: Path | str) -> Any:
    """The value of YAML `text` read from `path` (named in errors)."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise YamlFileError(f"{_where(Path(path), exc)}: not valid YAML: {problem}") from None


def read_yaml(path: Path | str) -> Any:
    """The value of the YAML file at `path`, read strictly (see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise YamlFileError(f"{path}: file not found") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise YamlFileError(f"{path}, line {line} (byte offset {exc.start}): not UTF-8 text; "
                            "allowed: a UTF-8 YAML file") from None
    return parse_yaml(text, path)
