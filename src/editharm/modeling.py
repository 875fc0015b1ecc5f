"""Causal LMs: loading from local folders, batching token ids, and finding and hooking the modules edits touch."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.pytorch_utils import Conv1D

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


def pad_id(tok) -> int:
    """The id used for padding: the tokenizer's pad token, or 0 when it has none."""
    return tok.pad_token_id if tok.pad_token_id is not None else 0


def input_device(model: torch.nn.Module) -> torch.device:
    """Where input ids go: the embedding's device (the first layer's, under device maps)."""
    return model.get_input_embeddings().weight.device


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """No parameter requires grad inside the block, so backward computes only the gradients of the
    tensors an edit optimises; the flags are restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the block, restoring the caller's train/eval state; autograd stays on."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def get_module(model: torch.nn.Module, path: str) -> torch.nn.Module:
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"module {path!r} does not exist in {type(model).__name__}") from None


def edited_matrix(model: torch.nn.Module, module_path: str) -> tuple[str, torch.nn.Parameter, bool]:
    """(parameter name, weight, transposed); GPT-2's Conv1D stores (in, out), nn.Linear (out, in)."""
    module = get_module(model, module_path)
    if isinstance(module, Conv1D):
        transposed = True
    elif isinstance(module, torch.nn.Linear):
        transposed = False
    else:
        raise TypeError(
            f"module {module_path!r} is a {type(module).__name__}; only nn.Linear and Conv1D can be edited"
        )
    name = f"{module_path}.weight"
    params = dict(model.named_parameters())
    if params.get(name) is not module.weight:
        raise ValueError(f"weight of {module_path!r} is not a parameter named {name!r} (tied or shared?)")
    return name, module.weight, transposed


def padded_batch(
    sequences: list[list[int]], pad_id: int, device: torch.device, *, first_positions: list[int] | None = None
) -> tuple[dict[str, torch.Tensor], list[int]]:
    """Left-padded model inputs with explicit position ids, and each row's pad count.

    Explicit position ids make a padded row compute the same as the unpadded sequence; some models
    otherwise count positions from the first column, padding included. `first_positions` gives each
    row's first position when the rows continue cached prefixes.
    """
    width = max(len(s) for s in sequences)
    pads = [width - len(s) for s in sequences]
    ids = torch.tensor([[pad_id] * p + s for p, s in zip(pads, sequences)], device=device)
    mask = torch.tensor([[0] * p + [1] * len(s) for p, s in zip(pads, sequences)], device=device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    if first_positions is not None:
        positions = positions + torch.tensor(first_positions, device=device)[:, None]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, pads


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted activation is seen."""


def _first_activation(model: torch.nn.Module, module_path: str, inputs: dict[str, torch.Tensor],
                      *, output: bool) -> torch.Tensor:
    """One module's input (or output) for a batch, running the model only up to that module."""
    seen: list[torch.Tensor] = []

    def grab(_module, args, out=None):
        value = out if output else args[0]
        seen.append((value[0] if isinstance(value, tuple) else value).detach())
        raise _Stop  # the layers above cost nothing

    module = get_module(model, module_path)
    handle = module.register_forward_hook(grab) if output else module.register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"module {module_path!r} was not called in the forward pass")
    return seen[0]


def module_input(model: torch.nn.Module, module_path: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The input of one module for a batch, running the model only up to that module."""
    return _first_activation(model, module_path, inputs, output=False)


def module_output(model: torch.nn.Module, module_path: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The output of one module (its first element when it returns a tuple, as decoder blocks do)."""
    return _first_activation(model, module_path, inputs, output=True)


def output_hook(model: torch.nn.Module, module_path: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Register `fn` to replace a module's output tensor; returns the hook handle."""
    return get_module(model, module_path).register_forward_hook(lambda _m, _a, out: fn(out))


def continuation_ids(tok, text: str) -> list[int]:
    """Token ids of `text` appended after a prompt: a leading space is added when missing.

    Edit targets are stored bare ("Rome") but follow a prompt ending in a word, so the model sees
    " Rome". Editing and edit evaluation must tokenize targets the same way; both use this.
    """
    if not text.startswith(" "):
        text = " " + text
    return tok(text, add_special_tokens=False)["input_ids"]
