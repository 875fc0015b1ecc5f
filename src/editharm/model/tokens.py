"""Token ids: the one padding rule, left-padded batches, and the two ways a continuation is
tokenized after a prompt (`target_ids` for what editing methods train on, `continuation_ids` for
what scoring reads)."""
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


def target_ids(tok, text: str) -> list[int]:
    """Token ids of an edit target as the editing methods train on it: " " + `text` (a leading
    space added when missing) tokenized alone, without special tokens.

    Edit targets are stored bare ("Rome") but follow a prompt ending in a word, so the model sees
    " Rome". Scoring (edit metrics, choice scoring) reads the tail of prompt + continuation
    tokenized together instead (`continuation_ids`); the two agree wherever no token merges across
    the boundary and the tokenizer adds nothing at the start of a lone text.
    """
    if not text.startswith(" "):
        text = " " + text
    return tok(text, add_special_tokens=False)["input_ids"]


def continuation_ids(
    tok, prompts: Sequence[str], continuations: Sequence[str], contexts: list[list[int]]
) -> list[list[int]]:
    """Each continuation's ids as scored after its prompt: the tail of `tok(prompt + continuation)`
    after the prompt's own ids `contexts[i]` when those are a prefix of it (the natural
    tokenisation in context); when a token merges across the boundary, the continuation encoded
    alone (no special tokens)."""
    joint = tok([p + c for p, c in zip(prompts, continuations)])["input_ids"]
    ids = []
    for prompt, cont, ctx, whole in zip(prompts, continuations, contexts, joint):
        if whole[: len(ctx)] == ctx:
            ids.append(list(whole[len(ctx) :]))
        else:
            log.debug("a token merges across the boundary of %r + %r; encoding the continuation alone", prompt, cont)
            ids.append(list(tok(cont, add_special_tokens=False)["input_ids"]))
    return ids


