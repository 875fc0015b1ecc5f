"""Batched greedy decoding and teacher-forced scoring for causal LMs.

Both entry points pad on the left by hand and pass position ids derived from the attention
mask, so a padded row sees exactly the positions it would see alone. Batched greedy
predictions then equal batch-1 predictions, and batched scores equal batch-1 scores up to
float rounding (about 1e-5 in float32: padding changes the shapes the kernels reduce over).

Tokenisation at the prompt/continuation boundary (`teacher_forced`, `choice_scores`): the
prompt is always encoded on its own, and those ids are the context every continuation is
scored against. The continuation's ids are the tail of `tok(prompt + continuation)` after
the prompt's ids when the prompt's ids are a prefix of it (the usual case: the tokenizer's
natural tokenisation of the continuation in context); when a token merges across the
boundary, the continuation is encoded on its own (no special tokens) and appended. Either
way the context is identical for all choices of a prompt, so their scores are comparable.
"""
from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from editharm.model.modules import eval_mode
from editharm.model.tokens import continuation_ids, pad_id, padded_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Forced:
    """One teacher-forced continuation: its token ids and, per token, the model's log-prob
    of that token and its argmax prediction at that position."""

    target_ids: list[int]
    log_probs: list[float]
    argmax_ids: list[int]


def greedy_generate(
    model,
    tok,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    stop: Sequence[str] | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts` (prompt excluded), in input order.

    A row stops at an EOS token (the tokenizer's or the model's generation config's), when
    its decoded text contains a stop string (the text is cut before the first one), or
    after `max_new_tokens` tokens. Finished rows are dropped from the batch and its cache.

    A stop string counts only where it starts after the first non-whitespace character of the
    continuation: a model that opens its answer with "\n" is not cut to "" by the stop "\n".
    The leading whitespace stays in the returned text (parsers strip it).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    _check_batch_size(batch_size)
    stop = [s for s in (stop or []) if s]
    encoded = _encode_prompts(tok, prompts)
    results = [""] * len(prompts)
    if max_new_tokens == 0:
        return results
    encoded = _keep_last(encoded, _max_positions(model) - max_new_tokens, "prompt")
    eos = _eos_ids(model, tok)
    # Longest first: similar lengths share a batch (little padding) and a memory error shows at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    with _scoring_mode(model), tqdm(total=len(prompts), desc="generate", disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            texts = _generate_batch(model, tok, [encoded[i] for i in rows], max_new_tokens, stop, eos)
            for i, text in zip(rows, texts):
                results[i] = text
            bar.update(len(rows))
    return results


def choice_scores(
    model,
    tok,
    prompts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[list[float]]:
    """Summed log-prob of each choice given its prompt: `result[i][j]` scores `choices[i][j]`.

    Where every choice of a prompt is one token (labels such as " positive" or " A"), one
    forward pass over the prompt scores all of them at once; otherwise each prompt + choice pair
    is teacher-forced.
    """
    if len(prompts) != len(choices):
        raise ValueError(f"{len(prompts)} prompts but {len(choices)} choice lists")
    _check_batch_size(batch_size)
    contexts = _encode_prompts(tok, prompts)
    targets = [
        continuation_ids(tok, [p] * len(cs), list(cs), [ctx] * len(cs)) for p, cs, ctx in zip(prompts, choices, contexts)
    ]
    single = [i for i, ts in enumerate(targets) if ts and all(len(t) == 1 for t in ts)]
    scores: list[list[float]] = [[] for _ in prompts]
    next_lp = _next_token_log_probs(model, tok, [contexts[i] for i in single], batch_size, progress)
    for i, lp in zip(single, next_lp):
        scores[i] = [lp[t[0]].item() for t in targets[i]]
    single_set = set(single)
    multi = [i for i in range(len(prompts)) if i not in single_set]
    pair_prompts = [prompts[i] for i in multi for _ in choices[i]]
    pair_conts = [c for i in multi for c in choices[i]]
    forced = iter(teacher_forced(model, tok, pair_prompts, pair_conts, batch_size=batch_size, progress=progress))
    for i in multi:
        scores[i] = [sum(next(forced).log_probs) for _ in choices[i]]
    return scores


def _next_token_log_probs(model, tok, contexts: list[list[int]], batch_size: int, progress: bool) -> list[torch.Tensor]:
    """Log-softmax over the vocabulary of the token after each context (one row per context)."""
    contexts = _keep_last(contexts, _max_positions(model) - 1, "prompt")
    results: list[torch.Tensor | None] = [None] * len(contexts)
    order = sorted(range(len(contexts)), key=lambda i: -len(contexts[i]))
    with _scoring_mode(model), tqdm(total=len(contexts), desc="score", disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            inputs, _ = padded_batch([contexts[i] for i in rows], pad_id(tok), _device(model))
            out = model(**inputs, logits_to_keep=1)
            log_probs = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
            for i, lp in zip(rows, log_probs):
                results[i] = lp
            bar.update(len(rows))
    return results  # type: ignore[return-value]


def teacher_forced(
    model,
    tok,
    prompts: Sequence[str],
    continuations: Sequence[str],
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Forced]:
    """Feed prompt + continuation and read, at each continuation token, its log-prob and the
    model's argmax. Boundary tokenisation is described in the module docstring."""
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    _check_batch_size(batch_size)
    if not prompts:
        return []
    contexts = _encode_prompts(tok, prompts)
    targets = continuation_ids(tok, prompts, continuations, contexts)
    contexts = _fit_contexts(contexts, targets, _max_positions(model))
    results: list[Forced | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -(len(contexts[i]) + len(targets[i])))
    with _scoring_mode(model), tqdm(total=len(prompts), desc="score", disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = _forced_batch(model, tok, [contexts[i] for i in rows], [targets[i] for i in rows])
            for i, forced in zip(rows, batch):
                results[i] = forced
            bar.update(len(rows))
    return results  # type: ignore[return-value]  # every slot is filled above


def text_nll(
    model,
    tok,
    texts: Sequence[str],
    *,
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
) -> list[tuple[float, int]]:
    """Per text, the summed negative log-likelihood of its tokens and how many tokens were scored.

    A text is its first `max_tokens` tokens (and at most the model's positions), special tokens
    included as the tokenizer adds them; every token after the first is teacher-forced on the ones
    before it, so a text of L tokens scores L - 1 (a lone token scores none: (0.0, 0)).
    """
    _check_batch_size(batch_size)
    limit = _max_positions(model) if max_tokens is None else min(max_tokens, _max_positions(model))
    if limit < 2:
        raise ValueError(f"max_tokens must be >= 2 (one token of context, one scored), got {max_tokens}")
    if not texts:
        return []
    encoded = [list(ids) for ids in tok(list(texts), truncation=True, max_length=limit)["input_ids"]]
    results = [(0.0, 0)] * len(texts)
    order = sorted((i for i, ids in enumerate(encoded) if len(ids) > 1), key=lambda i: -len(encoded[i]))
    with _scoring_mode(model), tqdm(total=len(order), desc="nll", disable=None if progress else True) as bar:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = _forced_batch(model, tok, [encoded[i][:1] for i in rows], [encoded[i][1:] for i in rows])
            for i, forced in zip(rows, batch):
                results[i] = (-math.fsum(forced.log_probs), len(forced.target_ids))
            bar.update(len(rows))
    return results


def _generate_batch(
    model, tok, prompt_ids: list[list[int]], max_new_tokens: int, stop: list[str], eos: set[int]
) -> list[str]:
    device = _device(model)
    inputs, _ = padded_batch(prompt_ids, pad_id(tok), device)
    mask, positions = inputs["attention_mask"], inputs["position_ids"]
    out = model(**inputs, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    next_positions = positions[:, -1:] + 1
    generated: list[list[int]] = [[] for _ in prompt_ids]
    active = list(range(len(prompt_ids)))  # batch row of each row still in the tensors
    while True:
        next_ids = out.logits[:, -1, :].argmax(dim=-1)
        keep = []
        for r, (row, token) in enumerate(zip(active, next_ids.tolist())):
            if token in eos:
                continue
            generated[row].append(token)
            if len(generated[row]) >= max_new_tokens or (stop and _has_stop(tok, generated[row], stop)):
                continue
            keep.append(r)
        if not keep:
            return [_cut_at_stop(tok.decode(ids, skip_special_tokens=True), stop) for ids in generated]
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            next_ids, mask, next_positions = next_ids[index], mask[index], next_positions[index]
            active = [active[r] for r in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        out = model(
            input_ids=next_ids[:, None],
            attention_mask=mask,
            position_ids=next_positions,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        next_positions = next_positions + 1


def _forced_batch(model, tok, contexts: list[list[int]], targets: list[list[int]]) -> list[Forced]:
    width = max(len(t) for t in targets)
    if width == 0:
        return [Forced([], [], []) for _ in targets]
    device = _device(model)
    inputs, _ = padded_batch([c + t for c, t in zip(contexts, targets)], pad_id(tok), device)
    input_ids = inputs["input_ids"]
    # Left padding aligns every row's end, so the last `width + 1` positions hold all the
    # logits any row needs; asking for only those keeps the (batch, length, vocab) tensor small.
    out = model(**inputs, logits_to_keep=width + 1)
    log_probs = torch.log_softmax(out.logits[:, :-1, :].float(), dim=-1)
    wanted = input_ids[:, -width:]
    token_lp = log_probs.gather(-1, wanted[..., None]).squeeze(-1)
    argmax = log_probs.argmax(dim=-1)
    results = []
    for r, target in enumerate(targets):
        n = len(target)
        lp = token_lp[r, width - n :].tolist() if n else []
        am = argmax[r, width - n :].tolist() if n else []
        results.append(Forced(list(target), lp, am))
    return results


def _encode_prompts(tok, prompts: Sequence[str]) -> list[list[int]]:
    encoded = [list(ids) for ids in tok(list(prompts))["input_ids"]] if prompts else []
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            # Nothing to condition on: the first prediction would come from a pad position.
            raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    return encoded


def _max_positions(model) -> int:
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return int(value) if value else 2**31


def _keep_last(rows: list[list[int]], limit: int, what: str) -> list[list[int]]:
    """Cut rows to their last `limit` tokens: the end of a prompt, next to the answer, matters most."""
    if limit < 1:
        raise ValueError(f"no room for a {what}: the model's context is full before the first token")
    long = sum(len(r) > limit for r in rows)
    if long:
        log.warning("%d %s(s) longer than %d tokens: keeping their last %d tokens", long, what, limit, limit)
    return [r[-limit:] for r in rows]


def _fit_contexts(contexts: list[list[int]], targets: list[list[int]], limit: int) -> list[list[int]]:
    """Cut each context from the left so context + continuation fit the model's positions."""
    fitted = [ctx[max(0, len(ctx) + len(t) - limit) :] for ctx, t in zip(contexts, targets)]
    if any(not ctx for ctx in fitted):
        raise ValueError(f"a continuation leaves no room for its prompt within the model's {limit} positions")
    cut = sum(len(a) != len(b) for a, b in zip(contexts, fitted))
    if cut:
        log.warning("%d prompt(s) too long for %d positions with their continuation: keeping their ends", cut, limit)
    return fitted


def _has_stop(tok, ids: list[int], stop: list[str]) -> bool:
    # The whole continuation is decoded: a stop string may span tokens, and decoding a tail
    # alone can split a multi-byte character.
    return _stop_index(tok.decode(ids, skip_special_tokens=True), stop) is not None


def _cut_at_stop(text: str, stop: list[str]) -> str:
    index = _stop_index(text, stop)
    return text if index is None else text[:index]


def _stop_index(text: str, stop: list[str]) -> int | None:
    """Where the earliest stop string starts, searching only after the first non-whitespace
    character, so that leading whitespace before the answer never ends it; None if nowhere."""
    start = len(text) - len(text.lstrip()) + 1
    if start > len(text):
        return None  # no answer text yet
    hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(hits) if hits else None


def _eos_ids(model, tok) -> set[int]:
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    for value in (tok.eos_token_id, getattr(config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif value is not None:
            ids.update(int(v) for v in value)
    return ids


def _device(model) -> torch.device:
    # Any causal LM with parameters, not only Hugging Face ones (tests use a hand-built one).
    return next(model.parameters()).device


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


@contextmanager
def _scoring_mode(model) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd, restoring the caller's train/eval state."""
    with eval_mode(model), torch.no_grad():
        yield
