"""Plain text from corpus files: MediaWiki XML dumps (markup stripped), .txt and .jsonl.

The markup stripping is deliberately simple: second-moment statistics need English sentences in
the model's input distribution, not a faithful rendering of every template.
"""
from __future__ import annotations

import bz2
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import IO, Iterator

_NESTED = [re.compile(r"\{\{[^{}]*\}\}"), re.compile(r"\{\|[^{}]*?\|\}", re.S)]
_PATTERNS = [
    (re.compile(r"<!--.*?-->", re.S), ""),
    (re.compile(r"<ref[^>/]*/>"), ""),
    (re.compile(r"<ref[^>]*>.*?</ref>", re.S), ""),
    (re.compile(r"<[^>]+>"), ""),
    (re.compile(r"\[\[(?:File|Image|Category|[a-z]{2,3}(?:-[a-z]+)?):[^\[\]]*(?:\[\[[^\]]*\]\][^\[\]]*)*\]\]", re.I), ""),
    (re.compile(r"\[\[[^\]|]*\|([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[\[([^\]]*)\]\]"), r"\1"),
    (re.compile(r"\[https?://[^\s\]]+\s*([^\]]*)\]"), r"\1"),
    (re.compile(r"'{2,}"), ""),
    (re.compile(r"^[*#:;=].*$", re.M), ""),
    (re.compile(r"^\s*\|.*$", re.M), ""),
    (re.compile(r"&nbsp;|&ndash;|&mdash;"), " "),
    (re.compile(r"[ \t]+"), " "),
]


def strip_markup(text: str) -> str:
    for pattern in _NESTED:
        previous = None
        while previous != text:
            previous, text = text, pattern.sub("", text)
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    return text


def paragraphs(text: str) -> Iterator[str]:
    for para in re.split(r"\n\s*\n", text):
        para = " ".join(para.split())
        if para:
            yield para


def _open(path: Path) -> IO[bytes]:
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def iter_wiki_articles(path: Path) -> Iterator[str]:
    """Main-namespace, non-redirect articles of a MediaWiki XML dump, as plain text paragraphs."""
    with _open(path) as f:
        ns, redirect = None, False
        for _, elem in ET.iterparse(f, events=("end",)):
            tag = elem.tag.rsplit("}", 1)[-1]
            if tag == "ns":
                ns = elem.text
            elif tag == "redirect":
                redirect = True
            elif tag == "text" and ns == "0" and not redirect and elem.text:
                yield from paragraphs(strip_markup(elem.text))
            elif tag == "page":
                ns, redirect = None, False
                elem.clear()


def iter_parquet_texts(file, name: str) -> Iterator[str]:
    """The "text" column of a parquet file (a path or an open binary file), one row group at a time."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    if "text" not in parquet.schema_arrow.names:
        raise ValueError(f"{name}: parquet corpus has no 'text' column; columns: {parquet.schema_arrow.names}")
    for batch in parquet.iter_batches(columns=["text"], batch_size=256):
        for text in batch.column(0).to_pylist():
            # wikitext-103 splits articles into lines; blank lines and " = Heading = " lines are skipped
            if text and text.strip() and not text.strip().startswith("="):
                yield text.strip()


def corpus_format(path: Path) -> str:
    """The format of a corpus file by its name: parquet, xml (MediaWiki, optionally .bz2), jsonl or txt."""
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    if ".xml" in name:
        return "xml"
    if name.endswith(".jsonl"):
        return "jsonl"
    if name.endswith(".txt") or name.endswith(".txt.bz2"):
        return "txt"
    raise ValueError(f"{path}: unsupported corpus file; allowed: MediaWiki .xml[.bz2], .txt, .jsonl, .parquet")


def iter_texts(path: Path) -> Iterator[str]:
    kind = corpus_format(path)
    if kind == "parquet":
        yield from iter_parquet_texts(path, str(path))
    elif kind == "xml":
        yield from iter_wiki_articles(path)
    elif kind == "jsonl":
        with open(path) as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)["text"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise ValueError(f"{path}: line {i} is not a JSON object with a 'text' field") from None
    else:
        with _open(path) as f:
            yield from paragraphs(f.read().decode("utf-8"))
