"""File I/O every phase shares: writing artifacts so that nothing half-written is ever left under a
final name, reading JSON with errors that name the file, checksums, and safetensors files of tensors
plus JSON metadata."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

# The manifest a fetched model folder carries: its source and every file's sha256 (written by
# editharm.sources.models, read by the prediction cache as the model's identity).
SOURCE_MANIFEST = "editharm-source.json"


def _umask() -> int:
    """The process umask. It can only be read by setting it, so it is set to 0 and put back at once;
    a file another thread creates in between gets the unmasked mode (jobs write from one thread)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it to `path`.
    The result has the mode a plain `open` gives under the umask (0o666 & ~umask), whatever mode
    the writer created the temp file with."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder next to `dest` that replaces `dest` only if the block succeeds, published
    with a plain mkdir's mode (0o777 & ~umask)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; the artifact gets a plain mkdir's mode
        # A folder cannot be renamed over a non-empty one: move the old one aside first.
        old = dest.with_name(f".{dest.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# Every temporary file or folder a job makes next to its outputs is named ".<name>....tmp" (or
# ".<name>.old" while a folder is replaced), so the ones a killed run left behind can be found.
TEMPORARY_SUFFIXES = (".tmp", ".old")


@contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """A temporary working folder under `parent` (on the outputs' file system), removed afterwards."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".editharm-", suffix=".tmp", dir=parent) as work:
        yield Path(work)


def remove_temporaries(root: Path) -> list[Path]:
    """Delete the temporaries (see TEMPORARY_SUFFIXES) under `root` that jobs killed before they
    could clean up left behind; only safe when no job is running. Returns what was deleted."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.rglob(".*") if p.name.endswith(TEMPORARY_SUFFIXES)]
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():
            continue  # inside a temporary folder removed above
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read_json(path: Path, expect: type | tuple[type, ...], what: str, error: type[Exception] = ValueError) -> Any:
    """Parse `path` as JSON holding a `expect` (list or dict); `error` names the file otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(data, expect):
        raise error(f"{path}: expected {what}, got {type(data).__name__}")
    return data


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as indented JSON with sorted keys (no NaN or infinity), atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write(Path(path), lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically; each metadata value is stored JSON-encoded.

    The file appears under its final name only when complete (temp file in the same folder, then
    os.replace), so an interrupted job never leaves a file that a pipeline would take as done.
    """
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    encoded = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}

    def write(tmp: Path) -> None:
        save_file(cpu, str(tmp), metadata=encoded)
        sort_safetensors_header(tmp)

    atomic_write(Path(path), write)


def sort_safetensors_header(path: str | Path) -> None:
    """Rewrite a safetensors file's JSON header with its keys sorted, in place.

    The writer serialises the header from a hash map, so the order of its keys (metadata and tensor
    entries) changes from one process to the next and identical contents give different bytes. The
    sorted header has the same content and, written compactly, the same length; it is padded with
    spaces (which the format allows) to the original length, so the tensor data does not move.
    """
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) > length:
            raise ValueError(f"{path}: the sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(text + b" " * (length - len(text)))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
        metadata = {key: json.loads(value) for key, value in (f.metadata() or {}).items()}
    return tensors, metadata


def write_parquet(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as parquet (no index), atomically."""
    atomic_write(Path(path), lambda tmp: frame.to_parquet(tmp, index=False))
