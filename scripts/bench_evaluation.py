"""General-ability evaluation as the pipeline runs it vs the reference protocol's per-example loop.

Usage: python scripts/bench_evaluation.py [--model DIR] [--tasks gsm8k,nq,...] [--limit N]
                                          [--batch-size B] [--deltas F1 F2 ...] [--threads T]

Part 1, decoding: every task in generate mode (the papers' protocol), the same rendered prompts
and the same greedy decoding every way:
  ref+reload  the reference evaluation: one example at a time, the model and tokenizer loaded
              again for each, `model.generate` with batch 1 up to the task's token limit (or
              EOS), the task's stop strings cut afterwards;
  reference   the same loop with the model loaded once;
  batch 1     `evaluate_task` with batch size 1: our decoding, stopping at a stop string too, one
              example at a time (what batching alone gains is batch 1 / editharm);
  editharm    `evaluate_task`: length-sorted left-padded batches with a KV cache, each row
              stopping at EOS, a stop string or the limit.
It checks the final texts are identical and prints the throughput ratios per task and overall.

Part 2, checkpoints: K ΔW files of one sequence on one task, through `editharm evaluate-task`
processes as the pipeline runs them: one job per checkpoint (a process and a model load each), one
job for all K (one load, each ΔW added and taken off), and that job again with the cache warm.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from editharm.data.catalog import DEMO_DIR
from editharm.evaluation.general import evaluate_task
from editharm.evaluation.tasks import TASKS
from editharm.model.loading import load_model

ALL_TASKS = "gsm8k,rte,nq,boolq,mutual,samsum,conll2003,sst2"


def reference_loop(model, tok, task, prompts: list[str], reload: Path | None = None) -> list[str]:
    """One prompt at a time through Hugging Face `generate` (greedy), cut at the stop strings after;
    with `reload`, the model and tokenizer are loaded from that folder again for every prompt, as the
    reference evaluation does."""
    texts = []
    with torch.no_grad():
        for prompt in prompts:
            if reload is not None:
                model, tok = load_model(reload, model.device)
            enc = tok(prompt, return_tensors="pt").to(model.device)
            out = model.generate(**enc, max_new_tokens=task.max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            text = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            cuts = [i for i in (text.find(s) for s in task.stop) if i >= 0]
            texts.append(text[: min(cuts)] if cuts else text)
    return texts


def bench_decoding(model, tok, model_dir: Path, names: list[str], limit: int | None, batch_size: int) -> bool:
    print(f"\n== decoding: reference per-example loop vs batched evaluation (batch {batch_size}) ==")
    print(f"{'task':>10} {'items':>6} {'ref+reload s':>13} {'reference s':>12} {'batch 1 s':>10} {'editharm s':>11} "
          f"{'vs ref+reload':>14} {'vs ref':>7} {'vs b1':>6} {'identical':>10}")
    total_reload = total_ref = total_one = total_ours = 0.0
    all_same = True
    warm = TASKS.get(names[0]).with_options(scoring="generate", max_new_tokens=2)
    evaluate_task(model, tok, warm, warm.load_items(DEMO_DIR / warm.dataset, limit=2), batch_size=2)
    for name in names:
        task = TASKS.get(name).with_options(scoring="generate")
        items = task.load_items(DEMO_DIR / TASKS.get(name).dataset, limit=limit)
        prompts = [task.render(item) for item in items]
        start = time.perf_counter()
        reference = reference_loop(model, tok, task, prompts)
        ref_s = time.perf_counter() - start
        start = time.perf_counter()
        reloaded = reference_loop(model, tok, task, prompts, reload=model_dir)
        reload_s = time.perf_counter() - start
        start = time.perf_counter()
        single, _ = evaluate_task(model, tok, task, items, batch_size=1)
        one_s = time.perf_counter() - start
        start = time.perf_counter()
        frame, _ = evaluate_task(model, tok, task, items, batch_size=batch_size)
        ours_s = time.perf_counter() - start
        same = sum(a == b == c == d for a, b, c, d in zip(reloaded, reference, single["raw"], frame["raw"]))
        all_same &= same == len(items)
        total_reload, total_ref = total_reload + reload_s, total_ref + ref_s
        total_one, total_ours = total_one + one_s, total_ours + ours_s
        print(f"{name:>10} {len(items):>6} {reload_s:13.2f} {ref_s:12.2f} {one_s:10.2f} {ours_s:11.2f} "
              f"{reload_s / ours_s:13.1f}x {ref_s / ours_s:6.1f}x {one_s / ours_s:5.1f}x {same:>5}/{len(items)}")
        for i, (a, b) in enumerate(zip(reference, frame["raw"])):
            if a != b:
                print(f"    item {i}: reference {a!r}\n    {'':>7} editharm  {b!r}")
    print(f"{'all':>10} {'':>6} {total_reload:13.2f} {total_ref:12.2f} {total_one:10.2f} {total_ours:11.2f} "
          f"{total_reload / total_ours:13.1f}x {total_ref / total_ours:6.1f}x {total_one / total_ours:5.1f}x")
    return all_same


def bench_checkpoints(model_dir: Path, deltas: list[Path], name: str, limit: int | None, batch_size: int,
                      threads: int) -> None:
    """The same K checkpoints evaluated by `editharm evaluate-task` processes, as the pipeline runs them."""
    task = TASKS.get(name)
    print(f"\n== {len(deltas)} checkpoints on {name} ({task.scoring} scoring), `editharm evaluate-task` processes ==")
    options = json.dumps({"limit": limit, "batch_size": batch_size})
    labels = json.dumps({"model": model_dir.name, "demo": True, "method": "bench", "reg": "none",
                         "setting": "instance_sequential", "seq": 0})

    def run(out: Path, group: list[Path], cache: Path | None) -> None:
        cmd = [sys.executable, "-m", "editharm.cli", "evaluate-task", "--model", str(model_dir), "--task", name,
               "--data", str(DEMO_DIR / task.dataset), "--options", options, "--labels", labels,
               "--device", "cpu", "--threads", str(threads), "--delta", *map(str, group),
               "--out-predictions", *(str(out / f"{p.stem}.parquet") for p in group),
               "--out-metrics", *(str(out / f"{p.stem}.json") for p in group)]
        if cache is not None:
            cmd += ["--cache", str(cache)]
        subprocess.run(cmd, check=True, capture_output=True)

    with tempfile.TemporaryDirectory() as root:
        root = Path(root)
        timings = {}
        start = time.perf_counter()
        for path in deltas:  # one job per checkpoint: a process, a model load, one evaluation each
            run(root / "per-checkpoint", [path], None)
        timings["one job per checkpoint"] = time.perf_counter() - start
        start = time.perf_counter()
        run(root / "per-configuration", deltas, root / "cache")  # one job: one load, dW added and removed
        timings["one job, K checkpoints"] = time.perf_counter() - start
        start = time.perf_counter()
        run(root / "rerun", deltas, root / "cache")
        timings["the same, cache warm"] = time.perf_counter() - start
        same = all(
            pd.read_parquet(root / "per-checkpoint" / f"{p.stem}.parquet").equals(pd.read_parquet(root / d / f"{p.stem}.parquet"))
            for p in deltas for d in ("per-configuration", "rerun")
        )
    first = timings["one job per checkpoint"]
    for label, seconds in timings.items():
        print(f"{label:>24} {seconds:8.2f} s  {first / seconds:5.1f}x")
    print(f"{'identical predictions':>24} {same}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("data/models/smollm2-135m"))
    parser.add_argument("--tasks", default=ALL_TASKS)
    parser.add_argument("--limit", type=int, default=None, help="items per task (default: every demo item)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--deltas", type=Path, nargs="*", default=None,
                        help="ΔW files of one sequence for part 2 (default: the default run's ROME sequence)")
    parser.add_argument("--checkpoint-task", default="sst2")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, tok = load_model(args.model, device)
    print(f"model {args.model}  threads {args.threads}  torch {torch.__version__}")
    same = bench_decoding(model, tok, args.model, args.tasks.split(","), args.limit, args.batch_size)
    deltas = args.deltas
    if deltas is None:
        folder = Path("data/edits") / args.model.name / "rome/none/instance_sequential/seq0"
        deltas = sorted(folder.glob("step-*.safetensors"), key=lambda p: int(p.stem.split("-")[1]))[1:]
    if deltas:
        bench_checkpoints(args.model, deltas, args.checkpoint_task, args.limit, args.batch_size, args.threads)
    else:
        print("\n(no ΔW files found for part 2: run the pipeline first, or pass --deltas)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
