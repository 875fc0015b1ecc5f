"""Check a model folder completely before it is published or used, reading headers only (cheap for a
13 GB model): config.json is a supported architecture that transformers can load, every safetensors
file's header describes exactly the bytes the file holds, and a sharded index names only what exists.
A truncated or corrupt download then fails at fetch time naming its file, not at evaluation time with
safetensors' "incomplete metadata" naming none."""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from editharm.core.registry import UnknownNameError
from editharm.model.architectures import ARCHITECTURES
from editharm.sources.grammar import SourceError

# Weight formats we refuse to read: pickled checkpoints can run code on load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX = "model.safetensors.index.json"
# Bits per element of each safetensors dtype (F4 and F6 pack several elements into bytes).
_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# safetensors itself refuses larger headers; the cap also keeps random bytes from being read as one.
_MAX_HEADER = 100_000_000
_VALID = ("a valid safetensors file is an 8-byte little-endian header length N, N bytes of JSON giving each "
          "tensor's dtype, shape and data_offsets, then exactly the tensors' bytes (a truncated download? "
          "fetch it again)")
# config.json's depth key: GPT-2 and GPT-J write n_layer, every other supported family num_hidden_layers.
_LAYER_KEYS = ("num_hidden_layers", "n_layer")


def check_model_folder(folder: Path) -> dict:
    """Check the model saved in `folder` without loading its weights; return its config.json.

    Fails with a SourceError naming the file and what is wrong: config.json missing, not a JSON object,
    of an unsupported model_type, or not loadable by transformers; no *.safetensors file; a safetensors
    header that is cut off, not JSON, or does not describe exactly the bytes that follow; an index that
    names a missing file or a tensor its file lacks."""
    folder = Path(folder)
    config = _read_config(folder / "config.json")
    headers = {p.name: _safetensors_header(p) for p in safetensors_files(folder)}
    if (folder / INDEX).exists():
        _check_index(folder / INDEX, headers)
    return config


def num_layers(config: dict) -> int | None:
    """The depth a config.json dict gives, or None when it names none."""
    for key in _LAYER_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def safetensors_files(folder: Path) -> list[Path]:
    """The folder's *.safetensors files; none fails, naming any pickled weights found there (refused)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        pickled = sorted(p.name for p in Path(folder).iterdir() if p.suffix in PICKLE_SUFFIXES)
        why = (f"; found only pickled weights {pickled}: refused, they can run code on load" if pickled else "")
        raise SourceError(f"{folder}: no .safetensors weights{why}; save the model with "
                          f"save_pretrained(..., safe_serialization=True)")
    return files


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{path}: missing; a model folder needs {what}") from None
    except UnicodeDecodeError as err:
        raise SourceError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); expected {what}") from None
    except json.JSONDecodeError as err:
        raise SourceError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); "
                          f"expected {what}") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: holds a JSON {type(data).__name__}, expected {what}")
    return data


def _read_config(path: Path) -> dict:
    import transformers

    config = _read_json(path, "a JSON object with the model's settings (transformers' config.json)")
    pinned = f"editharm supports these with the pinned transformers {transformers.__version__}"
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise SourceError(f"{path}: model_type is {model_type!r}, not the name of a model architecture; "
                          f"allowed: {', '.join(ARCHITECTURES.names())} ({pinned})")
    try:
        ARCHITECTURES.get(model_type)
    except UnknownNameError as exc:
        raise SourceError(f"{path}: {exc} ({pinned})") from None
    try:
        transformers.AutoConfig.from_pretrained(path.parent, trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # whatever transformers raises, name the file it could not load
        raise SourceError(f"{path}: transformers {transformers.__version__} cannot load this "
                          f"{model_type!r} config: {type(exc).__name__}: {exc}") from None
    return config


def _safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor entries of `path`'s header, after checking they describe exactly the file's bytes."""
    size = path.stat().st_size

    def bad(what: str) -> SourceError:
        return SourceError(f"{path}: {what}; {_VALID}")

    if size < 8:
        raise bad(f"{size} bytes, too short to hold the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0 or n > _MAX_HEADER or 8 + n > size:
            raise bad(f"header length {n} does not fit: the file has {size} bytes and a header must be "
                      f"1 to {_MAX_HEADER} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad(f"its {n}-byte header is not UTF-8 JSON") from None
    if not isinstance(header, dict):
        raise bad(f"its header is a JSON {type(header).__name__}, not an object")
    header.pop("__metadata__", None)
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise bad(f"tensor {name!r} is {info!r}, not an object of dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_BITS:
            raise bad(f"tensor {name!r} has dtype {dtype!r}; allowed: {', '.join(_DTYPE_BITS)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end] with 0 <= begin <= end")
        bits = math.prod(shape) * _DTYPE_BITS[dtype]
        if bits % 8 or offsets[1] - offsets[0] != bits // 8:
            raise bad(f"tensor {name!r} ({dtype}, shape {shape}) takes {bits / 8:g} bytes but its data_offsets "
                      f"{offsets} span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    # The tensors must tile the data section: no gaps, no overlaps, nothing after the last one.
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            raise bad(f"tensor {name!r} begins at data byte {begin}, expected {end} (where the previous one ends)")
        end = stop
    data = size - 8 - n
    if data != end:
        raise bad(f"its data section has {data} bytes but the header's tensors take {end}")
    return header


def _check_index(path: Path, headers: dict[str, dict]) -> None:
    index = _read_json(path, 'a JSON object whose "weight_map" maps each tensor to its .safetensors file')
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict):
        raise SourceError(f"{path}: no \"weight_map\" object; expected one mapping each tensor to its "
                          f".safetensors file")
    for tensor, file in weight_map.items():
        if file not in headers:
            raise SourceError(f"{path}: maps tensor {tensor!r} to {file!r}, which is not among the folder's "
                              f".safetensors files {sorted(headers)} (an incomplete download?)")
        if tensor not in headers[file]:
            raise SourceError(f"{path}: maps tensor {tensor!r} to {file}, whose header has no such tensor "
                              f"(a mismatched or corrupt shard? fetch it again)")
