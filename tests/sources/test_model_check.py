"""check_model_folder: a model folder is checked from config.json and safetensors headers alone, and every
way a download or a hand-made folder goes wrong fails naming the file and what was expected."""
import json
import random
import re
import struct

import pytest
import transformers
from safetensors import safe_open

from editharm.model.architectures import ARCHITECTURES
from editharm.sources.grammar import SourceError
from editharm.sources.modelcheck import INDEX, check_model_folder, num_layers
from editharm.sources.models import fetch_model

WEIGHTS = "model.safetensors"
VALID_FILE = "fetch it again"  # the advice closing every message about a weights file


def _save(model, tok, path, **kw):
    model.save_pretrained(path, safe_serialization=True, **kw)
    tok.save_pretrained(path)
    return path


def test_valid_folders_pass_and_give_their_config(model_tok, tmp_path):
    model, tok = model_tok
    folder = _save(model, tok, tmp_path / "m")
    config = check_model_folder(folder)
    assert config == json.loads((folder / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert num_layers(config) == model.config.num_hidden_layers == 3


def test_sharded_folder_passes(tiny_llama, tmp_path):
    folder = _save(*tiny_llama, tmp_path / "m", max_shard_size="100KB")
    assert len(list(folder.glob("*.safetensors"))) > 1 and (folder / INDEX).exists()
    assert check_model_folder(folder)["model_type"] == "llama"


@pytest.mark.parametrize("config, depth", [
    ({"n_layer": 12}, 12), ({"num_hidden_layers": 32}, 32), ({}, None), ({"num_hidden_layers": True}, None),
])
def test_num_layers_reads_each_familys_key(config, depth):
    assert num_layers(config) == depth


def _split(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _join(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _first_tensor(edit):
    """A corruption that edits the first tensor's header entry and leaves the data as it is."""
    def corrupt(folder):
        header, data = _split(folder / WEIGHTS)
        edit(next(v for k, v in header.items() if k != "__metadata__"))
        _join(folder / WEIGHTS, header, data)
    return corrupt


def _shorten(tensor):
    tensor["data_offsets"][1] -= 4


def _gap(folder):
    header, data = _split(folder / WEIGHTS)
    for k, v in header.items():
        if k != "__metadata__":
            v["data_offsets"] = [o + 4 for o in v["data_offsets"]]
    _join(folder / WEIGHTS, header, b"\0" * 4 + data)


def _bytes(edit):
    def corrupt(folder):
        (folder / WEIGHTS).write_bytes(edit((folder / WEIGHTS).read_bytes()))
    return corrupt


def _config(edit):
    def corrupt(folder):
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return corrupt


def _write(name, text):
    def corrupt(folder):
        (folder / name).write_text(text)
    return corrupt


def _pickled_only(folder):
    (folder / WEIGHTS).unlink()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04")


def _header_len(raw):
    return struct.unpack("<Q", raw[:8])[0]


# (id, corruption of a valid tiny Llama folder, the file the message names, what it must say)
CASES = [
    ("empty file", _bytes(lambda raw: b""), WEIGHTS, ["0 bytes, too short", VALID_FILE]),
    ("random bytes", _bytes(lambda raw: random.Random(0).randbytes(4096)), WEIGHTS,
     ["header length \\d+ does not fit: the file has 4096 bytes", VALID_FILE]),
    ("truncated half", _bytes(lambda raw: raw[:len(raw) // 2]), WEIGHTS,
     ["data section has \\d+ bytes but the header's tensors take \\d+", VALID_FILE]),
    ("header length past the end", _bytes(lambda raw: struct.pack("<Q", len(raw)) + raw[8:]), WEIGHTS,
     ["header length \\d+ does not fit", VALID_FILE]),
    ("header not JSON", _bytes(lambda raw: raw[:8] + b"not json".ljust(_header_len(raw)) + raw[8 + _header_len(raw):]),
     WEIGHTS, ["header is not UTF-8 JSON", VALID_FILE]),
    ("bad dtype", _first_tensor(lambda t: t.update(dtype="Q8")), WEIGHTS,
     ["dtype 'Q8'; allowed: BOOL, .*F32", VALID_FILE]),
    ("offsets not the tensor's size", _first_tensor(_shorten),
     WEIGHTS, ["takes \\d+ bytes but its data_offsets \\[\\d+, \\d+\\] span \\d+", VALID_FILE]),
    ("gap before the first tensor", _gap, WEIGHTS, ["begins at data byte 4, expected 0", VALID_FILE]),
    ("missing config.json", lambda folder: (folder / "config.json").unlink(), "config.json",
     ["missing; a model folder needs a JSON object"]),
    ("config not JSON", _write("config.json", '{\n  "model_type": "llama",\n  "hidden_size": 64,,\n}'), "config.json",
     ["not valid JSON \\(.* at line 3, column 21\\)"]),
    ("unknown model_type", _config(lambda c: c.update(model_type="mamba")), "config.json",
     ["unknown model architecture \\(config.model_type\\) 'mamba'", f"transformers {transformers.__version__}",
      f"allowed: {', '.join(ARCHITECTURES.names())} "]),
    ("no model_type", _config(lambda c: c.pop("model_type")), "config.json",
     ["model_type is None, not the name of a model architecture; allowed: gemma, gpt2"]),
    ("config transformers refuses", _config(lambda c: c.update(num_attention_heads=5)), "config.json",
     ["transformers .* cannot load this 'llama' config", "not a multiple of the number of attention heads"]),
    ("index names a missing file", _write(INDEX, json.dumps({"weight_map": {"a.weight": "model-2.safetensors"}})),
     INDEX, ["'model-2.safetensors', which is not among the folder's .safetensors files \\['model.safetensors'\\]"]),
    ("index names a tensor its file lacks", _write(INDEX, json.dumps({"weight_map": {"nope.weight": WEIGHTS}})),
     INDEX, ["tensor 'nope.weight' to model.safetensors, whose header has no such tensor"]),
    ("pickled weights only", _pickled_only, "",
     ["no .safetensors weights; found only pickled weights \\['pytorch_model.bin'\\]", "safe_serialization=True"]),
]


@pytest.fixture
def llama_dir(tiny_llama, tmp_path):
    return _save(*tiny_llama, tmp_path / "src-model")


@pytest.mark.parametrize("corrupt, file, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_folder_fails_naming_the_file_and_nothing_is_published(llama_dir, tmp_path, corrupt, file, says):
    corrupt(llama_dir)
    with pytest.raises(SourceError) as err:
        check_model_folder(llama_dir)
    message = str(err.value)
    assert message.startswith(f"{llama_dir / file}:")
    for pattern in says:
        assert re.search(pattern, message), (pattern, message)

    out = tmp_path / "models" / "m"
    with pytest.raises(SourceError) as fetched:
        fetch_model(f"local:{llama_dir}", out)
    # The staged copy is gone: the message names the file by its name in the source folder.
    assert str(fetched.value).startswith(f"source 'local:{llama_dir}': {file}:" if file else f"{llama_dir}:")
    assert not out.exists() and list(out.parent.iterdir()) == []


WEIGHTS_CASES = [c for c in CASES if c[2] == WEIGHTS]


@pytest.mark.parametrize("corrupt", [c[1] for c in WEIGHTS_CASES], ids=[c[0] for c in WEIGHTS_CASES])
def test_safetensors_itself_refuses_each_bad_weights_file(llama_dir, corrupt):
    # The check is not stricter than the format: each file it refuses, safetensors cannot open either.
    corrupt(llama_dir)
    with pytest.raises(Exception):
        with safe_open(llama_dir / WEIGHTS, "pt") as f:
            [f.get_slice(k) for k in f.keys()]
