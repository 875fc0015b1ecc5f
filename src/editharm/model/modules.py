"""The modules edits touch: finding them, reading their activations, hooking their outputs, and
the grad / train-mode contexts edits run in."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from transformers.pytorch_utils import Conv1D


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


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the wanted activation is seen."""


class _Handles:
    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def token_hook(model: torch.nn.Module, module_path: str, fn: Callable[[torch.Tensor], Optional[torch.Tensor]],
               *, output: bool) -> _Handles:
    """Register `fn` on a module's input (or output, its first element for a tuple), seen as
    (batch, seq, features); a tensor `fn` returns replaces it. Returns the handle to remove.

    OPT runs its MLP on (batch·seq, features) rows, so the batch size is read off the model's own
    input and such rows are viewed as tokens, and back.
    """
    batch: list[int] = []

    def record(_m, args, kwargs):
        ids = kwargs.get("input_ids")
        ids = kwargs.get("inputs_embeds") if ids is None else ids
        batch[:] = [(args[0] if ids is None else ids).shape[0]]

    def call(x: torch.Tensor) -> Optional[torch.Tensor]:
        flat = x.dim() == 2
        y = fn(x.view(batch[0], -1, x.shape[-1]) if flat else x)
        return None if y is None else y.reshape(x.shape) if flat else y

    def pre(_m, args):
        y = call(args[0])
        return None if y is None else (y, *args[1:])

    def post(_m, _args, out):
        if not isinstance(out, tuple):
            return call(out)
        y = call(out[0])
        return None if y is None else (y, *out[1:])

    module = get_module(model, module_path)
    own = module.register_forward_hook(post) if output else module.register_forward_pre_hook(pre)
    return _Handles(model.register_forward_pre_hook(record, with_kwargs=True), own)


def _first_activation(model: torch.nn.Module, module_path: str, inputs: dict[str, torch.Tensor],
                      *, output: bool) -> torch.Tensor:
    """One module's input (or output) for a batch, running the model only up to that module."""
    seen: list[torch.Tensor] = []

    def grab(value: torch.Tensor) -> None:
        seen.append(value.detach())
        raise _Stop  # the layers above cost nothing

    handle = token_hook(model, module_path, grab, output=output)
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


def input_hook(model: torch.nn.Module, module_path: str, fn: Callable[[torch.Tensor], Optional[torch.Tensor]]):
    """Register `fn` on a module's (batch, seq, features) input, which a returned tensor replaces; returns the handle."""
    return token_hook(model, module_path, fn, output=False)


def output_hook(model: torch.nn.Module, module_path: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Register `fn` to replace a module's (batch, seq, features) output tensor; returns the hook handle."""
    return token_hook(model, module_path, fn, output=True)
