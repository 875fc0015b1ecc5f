"""Strict YAML: a key written twice is an error, and every error names the file, line and column."""
import pytest

from editharm.core.yamlfile import YamlFileError, parse_yaml, read_yaml


@pytest.mark.parametrize("text, where, what", [
    ("seed: 0\nmethods:\n  rome: {}\n  rome: {kind: memit}\n", "line 4, column 3", "key 'rome' is written twice"),
    ("seed: 0\nseed: 1\n", "line 2, column 1", "(first at line 1)"),
    ("a: [1, 2\nb: 3\n", "line 2, column 2", "expected ','"),
    ("a: 1\n\tb: 2\n", "line 2, column 1", "'\\t'"),
    ("a: {x: 1, x: 2}\n", "line 1, column 11", "key 'x' is written twice"),
], ids=["nested-twice", "top-twice", "unclosed-list", "tab", "flow-twice"])
def test_errors_name_file_line_and_column(text, where, what):
    with pytest.raises(YamlFileError) as err:
        parse_yaml(text, "params.yaml")
    assert str(err.value).startswith(f"params.yaml, {where}: not valid YAML")
    assert what in str(err.value)


def test_merged_keys_may_be_overridden_and_valid_yaml_reads_as_safe_load():
    text = "base: &b {k: 0.4, seed: 1}\nrect:\n  <<: *b\n  k: 0.5\n"
    assert parse_yaml(text, "p.yaml") == {"base": {"k": 0.4, "seed": 1}, "rect": {"k": 0.5, "seed": 1}}


def test_read_yaml_names_a_missing_or_non_utf8_file(tmp_path):
    with pytest.raises(YamlFileError, match="missing.yaml: file not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 0\ntitle: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlFileError, match=r"latin1.yaml, line 2 \(byte offset 18\): not UTF-8 text"):
        read_yaml(bad)
