"""Batched greedy decoding vs a naive one-prompt-at-a-time loop: same predictions, how much faster.

Usage: python benchmarks/bench_generation.py [MODEL_DIR] [--prompts 16] [--new-tokens 24] [--batch-size 8]

MODEL_DIR is a local Hugging Face folder with safetensors weights. The naive loop is written
out here on purpose (not `greedy_generate(batch_size=1)`), so the comparison also checks the
batched code against an independent implementation of greedy decoding.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from editharm.model.generation import greedy_generate

# Varied lengths on purpose: batches then mix long and short prompts and need real left padding.
SNIPPETS = [
    "The capital of France is",
    "Q: What is 12 plus 30? A: Let's think step by step.",
    "For each snippet of text, label the sentiment of the text as positive or negative. text: a gorgeous, witty film answer:",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "Photosynthesis is the process by which",
    "Please answer the given question based on the passage. passage: The Nile is a major north-flowing river in Africa. question: is the nile in africa. answer:",
    "The three primary colours are",
    "In 1969, the first humans to walk on the Moon were",
]


def make_prompts(n: int) -> list[str]:
    prompts = []
    for i in range(n):
        parts = [SNIPPETS[(i + j) % len(SNIPPETS)] for j in range(1 + i % 3)]
        prompts.append(" ".join(reversed(parts)))
    return prompts


def naive_greedy(model, tok, prompt: str, max_new_tokens: int, eos: set[int]) -> list[int]:
    ids = torch.tensor([tok(prompt)["input_ids"]])
    past, generated = None, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            if token in eos:
                break
            generated.append(token)
            ids = torch.tensor([[token]])
    return generated


def eos_ids(model, tok) -> set[int]:
    ids = {tok.eos_token_id}
    config_eos = model.generation_config.eos_token_id
    ids.update(config_eos if isinstance(config_eos, list) else [config_eos])
    return {i for i in ids if i is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default="data/models/smollm2-135m", help="model folder (default: the embedded model fetched by the pipeline)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"], help="attention implementation")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, use_safetensors=True, dtype=torch.float32, attn_implementation=args.attn
    ).eval()
    eos = eos_ids(model, tok)
    prompts = make_prompts(args.prompts)

    greedy_generate(model, tok, prompts[:2], max_new_tokens=2, batch_size=2, progress=False)  # warm-up

    start = time.perf_counter()
    naive_ids = [naive_greedy(model, tok, p, args.new_tokens, eos) for p in prompts]
    naive_s = time.perf_counter() - start
    naive = [tok.decode(ids, skip_special_tokens=True) for ids in naive_ids]

    start = time.perf_counter()
    batched = greedy_generate(
        model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=args.batch_size, progress=False
    )
    batched_s = time.perf_counter() - start

    tokens = sum(len(ids) for ids in naive_ids)
    same = sum(a == b for a, b in zip(naive, batched))
    print(f"model {args.model_dir}  attn {args.attn}  threads {args.threads}  prompts {len(prompts)}  "
          f"new tokens <= {args.new_tokens}  generated {tokens}")
    print(f"{'':>22} {'seconds':>9} {'tokens/s':>9} {'prompts/s':>10}")
    for name, secs in (("naive batch 1", naive_s), (f"greedy_generate b{args.batch_size}", batched_s)):
        print(f"{name:>22} {secs:9.2f} {tokens / secs:9.1f} {len(prompts) / secs:10.2f}")
    print(f"speed-up {naive_s / batched_s:.2f}x   identical predictions {same}/{len(prompts)}")
    for i, (a, b) in enumerate(zip(naive, batched)):
        if a != b:
            print(f"  prompt {i}: naive {a!r}\n  {'':>9} batch {b!r}")
    return 0 if same == len(prompts) else 1


if __name__ == "__main__":
    sys.exit(main())
