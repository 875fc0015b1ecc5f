"""Dataset sources that reach the network, each pinned on first use:

    hf:<repo_id>@<revision>#<path or glob>      files of a Hub dataset repo; a branch or tag is
                                                resolved to its commit once, then that commit is used
    url:<https URL>[#sha256=<hex>][&member=<path in zip>]
                                                one file (or a file / folder inside a zip); the sha256
                                                is checked before anything is unpacked

`fetch_hub` and `fetch_url` bring the files into a work folder and return them with the entry to
lock (editharm.lockfile); given a locked entry they use its commit and check every sha256 against
it, failing with dataset, file, expected and actual hash. The `#sha256=` fragment follows pip's
convention for hashes in URLs; without one, the hash seen on first use is trusted and locked.
"""
from __future__ import annotations

import fnmatch
import hashlib
import logging
import re
import shutil
from pathlib import Path
from typing import Optional
from urllib.request import urlopen

from editharm.sources import SourceError, extract_member, parse_source, sha256_file

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
URL_KEYS = ("sha256", "member")


class ChecksumError(SourceError):
    """Fetched bytes differ from the pinned sha256."""


def _mismatch(name: str, file: str, expected: str, actual: str) -> ChecksumError:
    return ChecksumError(
        f"dataset {name!r}: sha256 mismatch for {file}: expected {expected}, got {actual}; nothing was written "
        "(if the release really changed, delete its entry from the lock file and fetch again)"
    )


# --- Hugging Face Hub -------------------------------------------------------------------------


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


def fetch_hub(name: str, argument: str, work: Path, pinned: Optional[dict]) -> tuple[list[Path], dict]:
    """Download the files of `hf:<argument>` at the locked (or newly resolved) commit into `work`."""
    source = parse_source(f"hf:{argument}")
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
        expected = pinned["files"]
        if set(expected) != set(hashes):
            raise ChecksumError(f"dataset {name!r}: {source.target}@{commit} has files {sorted(hashes)} for "
                                f"{source.member!r}, the lock file lists {sorted(expected)}")
        for file, actual in hashes.items():
            if actual != expected[file]:
                raise _mismatch(name, file, expected[file], actual)
    paths = []
    for p in found:  # out of the shared Hub cache, so that nothing downstream can touch the cache
        paths.append(work / p.name)
        shutil.copyfile(p, paths[-1])
    return paths, {"commit": commit, "files": hashes}


# --- https URLs -------------------------------------------------------------------------------


def parse_url(name: str, argument: str) -> tuple[str, Optional[str], Optional[str]]:
    """(URL, sha256 or None, member or None) of a `url:` source argument."""
    url, _, fragment = argument.partition("#")
    if not url.startswith("https://"):
        raise SourceError(f"dataset {name!r}: url source {argument!r} must be an https:// URL")
    options = {}
    for part in filter(None, fragment.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in URL_KEYS or not value:
            raise SourceError(f"dataset {name!r}: url source fragment {part!r}: allowed: "
                              + ", ".join(f"{k}=<{k}>" for k in URL_KEYS))
        options[key] = value
    sha256 = options.get("sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise SourceError(f"dataset {name!r}: sha256={sha256!r} is not 64 lowercase hex digits")
    return url, sha256, options.get("member")


def fetch_url(name: str, argument: str, work: Path, pinned: Optional[dict]) -> tuple[list[Path], dict]:
    """Download a `url:` source into `work`, check its sha256, and unpack the member if one is named."""
    url, given, member = parse_url(name, argument)
    expected = given or (pinned or {}).get("sha256")
    download = work / (url.rstrip("/").rsplit("/", 1)[-1] or "download")
    digest = hashlib.sha256()
    log.info("downloading %s", url)
    with urlopen(url, timeout=120) as response, download.open("wb") as out:
        while block := response.read(1 << 20):
            digest.update(block)
            out.write(block)
    actual = digest.hexdigest()
    if expected and actual != expected:
        raise _mismatch(name, url, expected, actual)
    if expected is None:
        log.warning("dataset %s: no sha256 given for %s; trusting %s on first use", name, url, actual)
    path = extract_member(download, member, work / "unpacked") if member else download
    return [path], {"sha256": actual}
