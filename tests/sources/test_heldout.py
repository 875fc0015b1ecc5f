"""Held-out texts for the perplexity probe: the corpus's usable texts after the statistics texts,
disjoint from them, without repeats, with ids that name their text."""
import hashlib
import json

import pytest

from editharm.cli import main
from editharm.sources.corpora import fetch_corpus, fetch_heldout, read_corpus
from editharm.sources.grammar import SourceError


def _paragraph(i: int) -> str:
    return " ".join([f"Paragraph {i} of the corpus talks about river number {i} and the city near it."] * 4)


@pytest.fixture
def corpus(tmp_path):
    """A .txt corpus of 30 usable paragraphs with short ones between them and two repeats: paragraph 2
    (a statistics text) again after paragraph 12, and paragraph 14 (a held-out text) again after 15."""
    paragraphs = []
    for i in range(30):
        paragraphs += [_paragraph(i), "short"]
        if i == 12:
            paragraphs.append(_paragraph(2))
        if i == 15:
            paragraphs.append(_paragraph(14))
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paragraphs))
    return path


def test_heldout_texts_follow_the_statistics_texts_and_never_repeat_one(corpus, tmp_path):
    fetch_corpus(f"local:{corpus}", tmp_path / "stats.jsonl", n=10)
    stats = [row["text"] for row in read_corpus(tmp_path / "stats.jsonl")]
    assert stats == [_paragraph(i) for i in range(10)]

    prov = fetch_heldout(f"local:{corpus}", tmp_path / "heldout.jsonl", n=8, exclude=stats)
    rows = read_corpus(tmp_path / "heldout.jsonl")
    texts = [row["text"] for row in rows]
    assert texts == [_paragraph(i) for i in range(10, 18)]  # the repeats of 2 and 14 are skipped
    assert not set(texts) & set(stats) and len(set(texts)) == len(texts) and prov["n"] == 8
    assert [row["id"] for row in rows] == [hashlib.sha256(t.encode()).hexdigest()[:16] for t in texts]


def test_fewer_texts_than_asked_warn_and_none_fail(corpus, tmp_path, caplog):
    everything = [_paragraph(i) for i in range(30)]
    fetch_heldout(f"local:{corpus}", tmp_path / "heldout.jsonl", n=50, exclude=everything[:25])
    assert [row["text"] for row in read_corpus(tmp_path / "heldout.jsonl")] == everything[25:]
    assert "only 5 held-out texts" in caplog.text
    with pytest.raises(SourceError, match="no text"):
        fetch_heldout(f"local:{corpus}", tmp_path / "none.jsonl", n=5, exclude=everything)
    assert not (tmp_path / "none.jsonl").exists()


def test_make_heldout_command_leaves_out_the_statistics_file(corpus, tmp_path):
    stats = tmp_path / "stats.jsonl"
    assert main(["fetch-corpus", "--source", f"local:{corpus}", "--n", "4", "--out", str(stats)]) == 0
    out = tmp_path / "probes" / "heldout.jsonl"
    assert main(["make-heldout", "--source", f"local:{corpus}", "--n", "3", "--exclude", str(stats),
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["text"] for row in rows] == [_paragraph(i) for i in (4, 5, 6)]
