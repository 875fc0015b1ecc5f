"""local: sources tracked by content: an edit in place changes the digest, a touch does not."""
import json
import os

from editharm.sources.local import content_digest, source_digest


def test_digest_follows_content_not_timestamps(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")  # hidden: not part of the model
    cache = tmp_path / "digests.json"
    first = content_digest(folder, cache)
    os.utime(folder / "config.json", ns=(1, 1))  # touched, same bytes
    (folder / ".cache" / "lock").write_text("y")
    assert content_digest(folder, cache) == first
    (folder / "config.json").write_text('{"model_type": "gpt2"}')  # fixed in place
    assert content_digest(folder, cache) != first
    (folder / "config.json").write_text('{"model_type": "llama"}')
    assert content_digest(folder, cache) == first
    (folder / "extra.txt").write_text("")  # a new file is a change
    assert content_digest(folder, cache) != first


def test_cached_hash_is_used_until_the_file_stat_changes(tmp_path):
    data = tmp_path / "train.json"
    data.write_text("[]")
    cache = tmp_path / "digests.json"
    digest = content_digest(data, cache)
    entries = json.loads(cache.read_text())
    (key,) = entries
    entries[key][3] = "0" * 64  # a cached hash is trusted while size, mtime and inode are unchanged
    cache.write_text(json.dumps(entries))
    assert content_digest(data, cache) != digest
    data.write_text("[ ]")  # a new size: hashed again
    assert content_digest(data, cache) == content_digest(data, None)
    assert json.loads(cache.read_text())[key][3] != "0" * 64


def test_only_local_sources_have_a_digest(tmp_path):
    (tmp_path / "c.txt").write_text("text")
    assert len(source_digest(f"local:{tmp_path / 'c.txt'}")) == 64
    assert source_digest("hf:openai/gsm8k@main#main/test-*.parquet") == ""
    assert source_digest("embedded:demo") == ""
    assert source_digest("real") == ""
