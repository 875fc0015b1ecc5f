"""Token ids: the one padding rule, left-padded batches, and the one rule for a continuation's ids
after its prompt (`continuation_ids`), which editing methods (`target_ids`) and scoring share."""
from __future__ import annotations

import logging
from typing import Sequence

import torch

log = logging.getLogger(__name__)


def pad_id(tok) -> int:
    """The id used for padding: the tokenizer's pad token, else its EOS token, else 0.

    The value never reaches attention (padded positions are masked) but must be a valid
    embedding index. `load_model` sets the pad token to EOS when a tokenizer has none.
    """
    for value in (tok.pad_token_id, tok.eos_token_id):
        if value is not None:
            return int(value)
    return 0


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


def spaced(text: str) -> str:
    """An answer as it follows its prompt: with a leading space unless it starts with whitespace.

    Edit targets are stored bare ("Rome") but follow a prompt ending in a word; EasyEdit scores
    `prompt + " " + answer`.
    """
    return text if text[:1].isspace() else " " + text


def target_ids(tok, prompt: str, target: str) -> list[int]:
    """Token ids of an edit target as editing methods train on it and evaluation scores it: the
    ids `continuation_ids` gives `spaced(target)` after `prompt`.

    Encoding " Rome" alone is not the same: a tokenizer that prepends "▁" to every text (Llama-2's
    SentencePiece normalizer under transformers 4.x) turns it into "▁▁Rome", a lone "▁" token then
    "▁Rome", while after a prompt the space is the word's own "▁".
    """
    return continuation_ids(tok, [prompt], [spaced(target)])[0]


def continuation_ids(
    tok, prompts: Sequence[str], continuations: Sequence[str], contexts: list[list[int]] | None = None
) -> list[list[int]]:
    """Each continuation's ids after its prompt: the tail of `tok(prompt + continuation)` after the
    prompt's own ids `contexts[i]` (default `tok(prompt)`) when those are a prefix of it (the
    natural tokenisation in context); when a token merges across the boundary, the continuation
    encoded alone (no special tokens)."""
    if contexts is None:
        contexts = [list(ids) for ids in tok(list(prompts))["input_ids"]] if prompts else []
    joint = tok([p + c for p, c in zip(prompts, continuations)])["input_ids"]
    ids = []
    for prompt, cont, ctx, whole in zip(prompts, continuations, contexts, joint):
        if whole[: len(ctx)] == ctx:
            ids.append(list(whole[len(ctx) :]))
        else:
            log.debug("a token merges across the boundary of %r + %r; encoding the continuation alone", prompt, cont)
            ids.append(list(tok(cont, add_special_tokens=False)["input_ids"]))
    return ids


