"""Every editing method on one model: seconds per edit, whether the edits hold, and the stored ΔW size.

Usage: python scripts/bench_methods.py [--model data/models/smollm2-135m] [--preset smollm2-135m]
           [--edits 4] [--methods rome,memit,...] [--corpus data/corpora/<key>-n300.jsonl]

Each method edits the same first --edits demo ZsRE records one after another (instance ×
sequential) with its preset for the model. Second-moment statistics are computed once per module
from the corpus file and shared, as in the pipeline; trainable methods (MEND) train their editor
on the demo train split first (its time is shown apart). Printed side by side, one row per method:
training s, s/edit, teacher-forced reliability of the first edit right after it is made, the same
over all edits after the last one (retention), and the size of the last checkpoint's ΔW file
against the model's weights file.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml

from editharm.config.derive import preset_path
from editharm.data.catalog import DEMO_DIR
from editharm.data.editsets import load_edit_records
from editharm.editing.methods import METHODS
from editharm.editing.regularizers import REGULARIZERS
from editharm.editing.run import run_edits
from editharm.editing.settings import Setting
from editharm.evaluation.edits import edit_metrics
from editharm.model.loading import load_model
from editharm.model.stats import collect_second_moment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("data/models/smollm2-135m"))
    ap.add_argument("--preset", default="smollm2-135m")
    ap.add_argument("--edits", type=int, default=4)
    ap.add_argument("--methods", default=",".join(METHODS.names()))
    ap.add_argument("--corpus", type=Path, default=None, help="jsonl of {text}; default: the first in data/corpora")
    ap.add_argument("--stats-texts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    corpus = args.corpus or sorted(Path("data/corpora").glob("*.jsonl"))[0]
    texts = [json.loads(line)["text"] for line in corpus.read_text().splitlines()][: args.stats_texts]
    records = load_edit_records(DEMO_DIR / "zsre_demo.json")[: args.edits]
    train_records = load_edit_records(DEMO_DIR / "zsre_demo_train.json")
    model, tok = load_model(args.model)
    weights_bytes = sum(p.stat().st_size for p in args.model.glob("*.safetensors"))
    cache: dict[str, torch.Tensor] = {}

    def stats(module: str) -> torch.Tensor:
        if module not in cache:
            cache[module] = collect_second_moment(model, tok, module, texts, max_length=128)[0]
        return cache[module]

    none = REGULARIZERS.get("none")
    rows = []
    for name in args.methods.split(","):
        cls = METHODS.get(name)
        hp = cls.Hparams.from_dict(yaml.safe_load(preset_path(name, args.preset).read_text()))
        for module in cls.stats_modules(hp):
            stats(module)  # outside the timing: the pipeline computes statistics once, in their own job
        train_s = 0.0
        editor = None
        if cls.trainable():
            t0 = time.perf_counter()
            editor = cls.train(model, tok, train_records, hp, seed=0)
            train_s = time.perf_counter() - t0
        original = {k: v.clone() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as out:
            run_edits(model, tok, cls, hp, none, none.Params(), Setting("instance_sequential"), records,
                      {1: Path(out) / "step-1.safetensors"}, stats=stats, editor=editor, metadata={})
        first = edit_metrics(model, tok, records[:1])[1]["reliability"]
        model.load_state_dict(original)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            paths = run_edits(model, tok, cls, hp, none, none.Params(), Setting("instance_sequential"), records,
                              {args.edits: Path(out) / f"step-{args.edits}.safetensors"}, stats=stats, editor=editor,
                              metadata={})
            per_edit = (time.perf_counter() - t0) / args.edits
            size = paths[-1].stat().st_size
        _, summary = edit_metrics(model, tok, records)
        model.load_state_dict(original)
        rows.append((name, train_s, per_edit, first, summary["reliability_all"], size, size / weights_bytes))
        print(f"{name}: done", flush=True)

    print(f"\nmodel {args.model} ({weights_bytes / 1e6:.0f} MB), {args.edits} sequential edits, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<10} {'train s':>8} {'s/edit':>8} {'1st edit':>9} {'retained':>9} {'ΔW MB':>8} {'ΔW / ckpt':>10}")
    for name, train_s, per_edit, first, kept, size, share in rows:
        print(f"{name:<10} {train_s:>8.1f} {per_edit:>8.2f} {first:>9.2f} {kept:>9.2f} {size / 1e6:>8.3f} "
              f"{share:>10.4%}")


if __name__ == "__main__":
    main()
