"""https downloads: one file, its sha256 checked before anything is unpacked, and optionally a file
or folder unpacked from it (a zip). Without a `#sha256=` the hash seen on first use is trusted and
locked (lockfile.py)."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Optional
from urllib.request import urlopen

from editharm.sources.files import extract_member
from editharm.sources.grammar import Source
from editharm.sources.lockfile import mismatch

log = logging.getLogger(__name__)


def fetch_url(name: str, source: Source, work: Path, pinned: Optional[dict]) -> tuple[list[Path], dict]:
    """Download a dataset's `url:` source into `work`, check its sha256, and unpack the member if one is named."""
    url = source.target
    expected = source.sha256 or (pinned or {}).get("sha256")
    download = work / (url.rstrip("/").rsplit("/", 1)[-1] or "download")
    digest = hashlib.sha256()
    log.info("downloading %s", url)
    with urlopen(url, timeout=120) as response, download.open("wb") as out:
        while block := response.read(1 << 20):
            digest.update(block)
            out.write(block)
    actual = digest.hexdigest()
    if expected and actual != expected:
        raise mismatch("dataset", name, url, expected, actual)
    if expected is None:
        log.warning("dataset %s: no sha256 given for %s; trusting %s on first use", name, url, actual)
    path = extract_member(download, source.member, work / "unpacked") if source.member else download
    return [path], {"sha256": actual}
