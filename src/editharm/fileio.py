"""Writing artifacts so that nothing half-written is ever left under a final name, and reading
JSON with errors that name the file."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file in the same folder, then rename it to `path`.
    A plainly created temp file (not mkstemp's 0600) leaves the result with umask permissions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staging_dir(dest: Path) -> Iterator[Path]:
    """A temporary folder next to `dest` that replaces `dest` only if the block succeeds."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        tmp.chmod(0o755)  # mkdtemp makes it private; the artifact is shared like any other
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
