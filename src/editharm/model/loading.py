"""Causal LMs: the device to run on, and loading a model and its tokenizer from a local folder."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str) -> torch.device:
    """The device for a spec: "auto" is CUDA when present, else CPU; cpu, cuda and cuda:N are taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec != "cpu" and not spec.startswith("cuda"):
        raise ValueError(f"device {spec!r} is not allowed; use auto, cpu, cuda or cuda:N")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but CUDA is not available")
    return device


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    *,
    trust_remote_code: bool = False,
):
    """A causal LM and its tokenizer from a local safetensors folder, ready for batched inference."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not allowed; allowed: {', '.join(_DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=_DTYPES[dtype], use_safetensors=True, trust_remote_code=trust_remote_code
    )
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    # Left padding keeps every prompt's last token in the last column, which batched decoding needs.
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def setup_torch(device: str, threads: int | None = None) -> torch.device:
    """A job's torch set-up: its intra-op threads (when given) and the device it runs on."""
    if threads:
        torch.set_num_threads(threads)
    return resolve_device(device)
