"""The model families editing supports: per `config.model_type`, where a family keeps the modules that
methods edit and hook, so one method serves every family.

A method names modules by templates with "{}" for the layer. The MLP output projection is what ROME,
MEMIT, AlphaEdit, KN and FT rewrite (hparams key `rewrite_module_tmp`); MEND edits the input
projections too (`rewrite_module_tmps`); a preset that leaves such a key out gets the family's value
(`default_templates`). Everything else methods find without a path: the decoder block is the rewrite
template cut after its "{}" (OPT's MLP matrices sit directly in the block), the unembedding is
`get_output_embeddings()` (GPT-NeoX's `embed_out`, Gemma's tied embedding), the layer count is
`config.num_hidden_layers`, which every family's config maps. Gemma scales its input embeddings by
√hidden; no method reads the input embeddings, so that needs nothing here.

What every family shares and the methods rely on: the MLP output is added to the residual stream as
it is (no norm after it; MEMIT's target is a residual shift), which pre-norm OPT (all sizes but 350m)
and parallel-residual GPT-J and GPT-NeoX satisfy. Gemma 2/3 norm the MLP output, so they are other
model types and unsupported. OPT runs its MLP on (batch·seq, features) rows; `modules.token_hook` shows
methods tokens, but MEND's gradient hooks read the rows as they are, so MEND does not edit OPT yet.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from editharm.core.registry import Registry


# The hparams keys that name modules, which a family can fill in.
TEMPLATE_KEYS = ("rewrite_module_tmp", "rewrite_module_tmps")


@dataclass(frozen=True)
class Architecture:
    model_type: str  # config.model_type
    title: str
    blocks: str  # the decoder blocks' ModuleList
    mlp_in: tuple[str, ...]  # the MLP input projection(s), e.g. gate and up
    mlp_out: str  # the MLP output projection
    conv1d: bool  # GPT-2's Conv1D, weight (in, out); otherwise nn.Linear, weight (out, in)
    names: tuple[str, ...]  # lower-case parts of checkpoint names that mean this family

    def default_templates(self) -> dict[str, Any]:
        """The value of each hparams key that names modules, for presets that leave it out."""
        return dict(zip(TEMPLATE_KEYS, (self.mlp_out, [*self.mlp_in, self.mlp_out])))


ARCHITECTURES: Registry[Architecture] = Registry("model architecture (config.model_type)")

for _arch in [
    Architecture("gpt2", "GPT-2", "transformer.h", ("transformer.h.{}.mlp.c_fc",), "transformer.h.{}.mlp.c_proj",
                 conv1d=True, names=("gpt2",)),
    Architecture("llama", "Llama", "model.layers", ("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"),
                 "model.layers.{}.mlp.down_proj", conv1d=False, names=("llama", "smollm")),
    Architecture("gptj", "GPT-J", "transformer.h", ("transformer.h.{}.mlp.fc_in",), "transformer.h.{}.mlp.fc_out",
                 conv1d=False, names=("gpt-j", "gptj")),
    Architecture("gpt_neox", "GPT-NeoX / Pythia", "gpt_neox.layers", ("gpt_neox.layers.{}.mlp.dense_h_to_4h",),
                 "gpt_neox.layers.{}.mlp.dense_4h_to_h", conv1d=False, names=("gpt-neox", "pythia")),
    Architecture("opt", "OPT", "model.decoder.layers", ("model.decoder.layers.{}.fc1",), "model.decoder.layers.{}.fc2",
                 conv1d=False, names=("opt-",)),
    Architecture("qwen2", "Qwen2 / Qwen2.5", "model.layers",
                 ("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"), "model.layers.{}.mlp.down_proj",
                 conv1d=False, names=("qwen2", "qwen1.5")),
    Architecture("mistral", "Mistral", "model.layers",
                 ("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"), "model.layers.{}.mlp.down_proj",
                 conv1d=False, names=("mistral",)),
    Architecture("gemma", "Gemma", "model.layers",
                 ("model.layers.{}.mlp.gate_proj", "model.layers.{}.mlp.up_proj"), "model.layers.{}.mlp.down_proj",
                 conv1d=False, names=("gemma",)),
]:
    ARCHITECTURES.add(_arch.model_type, _arch)


def architecture(model_type: str) -> Architecture:
    """The family of `model_type`; an unsupported one fails with the supported ones listed."""
    return ARCHITECTURES.get(model_type)


def architecture_of_folder(path: str | Path) -> Architecture:
    """The family of the model saved in `path`, from its config.json alone (no weights are read)."""
    config = Path(path) / "config.json"
    try:
        model_type = json.loads(config.read_text())["model_type"]
    except FileNotFoundError:
        raise ValueError(f"{path}: no config.json, so the model's architecture is unknown") from None
    except (KeyError, json.JSONDecodeError):
        raise ValueError(f"{config}: no model_type, so the model's architecture is unknown") from None
    return architecture(model_type)


def architecture_by_name(model_name: str) -> Architecture:
    """The one family a checkpoint name (a path or Hub id, as in EasyEdit's `model_name`) names."""
    base = Path(str(model_name)).name.lower()
    found = [ARCHITECTURES.get(t) for t in ARCHITECTURES if any(n in base for n in ARCHITECTURES.get(t).names)]
    if len(found) != 1:
        raise ValueError(f"model_name={model_name!r} names no one supported model family "
                         f"({', '.join(ARCHITECTURES.names())})")
    return found[0]


def check_model(model) -> Architecture:
    """The loaded model's family, after checking its modules are where and what the registry says."""
    # Imported here: config validation and fetching read this registry without loading torch.
    import torch
    from transformers.pytorch_utils import Conv1D

    from editharm.model.modules import get_module

    arch = architecture(model.config.model_type)
    blocks = get_module(model, arch.blocks)
    if len(blocks) != model.config.num_hidden_layers:
        raise ValueError(f"{arch.title}: {arch.blocks!r} holds {len(blocks)} blocks, the config says "
                         f"{model.config.num_hidden_layers}")
    kind = Conv1D if arch.conv1d else torch.nn.Linear
    for template in (*arch.mlp_in, arch.mlp_out):
        module = get_module(model, template.format(0))
        if not isinstance(module, kind):
            raise TypeError(f"{arch.title}: {template.format(0)!r} is a {type(module).__name__}, "
                            f"expected {kind.__name__}")
    return arch
