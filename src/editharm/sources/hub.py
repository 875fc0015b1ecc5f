"""The Hugging Face Hub: a revision's commit, a dataset repo's files, a model snapshot, and a parquet
file streamed row group by row group. Every download is at a commit (the locked one, or the one a
branch or tag points to now, which the caller then locks)."""
from __future__ import annotations

import fnmatch
import logging
import re
import shutil
from pathlib import Path
from typing import Optional

from editharm.core.fileio import sha256_file
from editharm.sources.grammar import Source, SourceError
from editharm.sources.lockfile import check_files

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")
# A model snapshot takes only safetensors weights and the small config / tokenizer files: never pickles.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]


def resolve_commit(repo_id: str, revision: str, repo_type: str = "dataset") -> str:
    """The commit a branch or tag of a Hub repo ("dataset" or "model") points to now (a commit stays as it is)."""
    if _COMMIT.fullmatch(revision):
        return revision
    import huggingface_hub

    api = huggingface_hub.HfApi()
    info = api.dataset_info if repo_type == "dataset" else api.model_info
    commit = info(repo_id, revision=revision).sha
    log.info("resolved %s@%s to commit %s", repo_id, revision, commit)
    return commit


def fetch_hub(name: str, source: Source, work: Path, pinned: Optional[dict]) -> tuple[list[Path], dict]:
    """Download the files of a dataset source `hf:...#<files>` at the locked (or newly resolved) commit into `work`."""
    if not source.member:
        raise SourceError(f"dataset {name!r}: source {source.text!r} must name files: hf:<repo_id>@<revision>#<path or glob>")
    commit = pinned["commit"] if pinned else resolve_commit(source.target, source.revision)
    import huggingface_hub

    snapshot = Path(huggingface_hub.snapshot_download(
        source.target, repo_type="dataset", revision=commit, allow_patterns=[source.member]
    ))
    found = sorted(p for p in snapshot.rglob("*")
                   if p.is_file() and fnmatch.fnmatch(p.relative_to(snapshot).as_posix(), source.member))
    if not found:
        raise FileNotFoundError(f"dataset {name!r}: no file matching {source.member!r} in {source.target}@{commit}")
    hashes = {p.relative_to(snapshot).as_posix(): sha256_file(p) for p in found}
    if pinned:
        check_files("dataset", name, pinned["files"], hashes, f"{source.target}@{commit} for {source.member!r}")
    paths = []
    for p in found:  # out of the shared Hub cache, so that nothing downstream can touch the cache
        paths.append(work / p.name)
        shutil.copyfile(p, paths[-1])
    return paths, {"commit": commit, "files": hashes}


def snapshot_model(source: Source, pinned: Optional[dict] = None) -> tuple[Path, str]:
    """The local snapshot folder of a model repo at the locked (or newly resolved) commit, and that commit."""
    import huggingface_hub

    if source.member:
        raise SourceError(f"model source {source.text!r}: a model is a whole repo; drop '#{source.member}'")
    # A branch or tag moves: download the commit it points to now (or the locked one), and record it.
    commit = pinned["commit"] if pinned else resolve_commit(source.target, source.revision, "model")
    path = huggingface_hub.snapshot_download(source.target, revision=commit, allow_patterns=MODEL_PATTERNS)
    return Path(path), commit


def stream_parquet(source: Source, commit: Optional[str] = None):
    """Open a parquet file of a Hub dataset repo for streaming: only the row groups read are fetched.

    This is how a corpus like hf:wikimedia/wikipedia@<rev>#20231101.en/train-00000-of-00041.parquet
    gives its first n articles without downloading the whole shard. The pinned revision (a commit
    hash) is what makes the stream reproducible; a sha256 of the whole file cannot be checked
    without reading all of it.
    """
    from huggingface_hub import HfFileSystem

    if not source.member or not source.member.endswith(".parquet"):
        raise SourceError(f"corpus source {source.text!r}: a Hub corpus names a parquet file of a dataset repo: "
                          "hf:<repo_id>@<revision>#<path/to/file.parquet>")
    return HfFileSystem().open(f"datasets/{source.target}@{commit or source.revision}/{source.member}", "rb")
