# Validated params and the grid they describe; input functions are named get_<thing>.
import json
import re
import shlex

from pathlib import Path

from snakemake_interface_executor_plugins.settings import ExecMode

from editharm.config import derive as ehc
from editharm.config.load import read_params, validate_params
from editharm.config.runstate import check_cli, claim_workdir
from editharm.evaluation.tasks import TASKS as TASK_REGISTRY
from editharm.sources.local import digest_cache, source_digest

check_cli()  # the rules call `editharm`: the one beside this Python, without an activated venv
# The main process of a run holds the folder; what a killed run left (locks, temporaries) is cleared.
if workflow.exec_mode == ExecMode.DEFAULT:
    claim_workdir(".")
for _path in workflow.overwrite_configfiles:
    read_params(_path)  # a key written twice in a --configfile (Snakemake keeps the last one silently)
cfg = validate_params(config, source=", ".join(map(str, workflow.configfiles)) or "config", workdir=Path("."))

MODELS = list(cfg["models"])
METHODS = list(cfg["methods"])
REGS = list(cfg["regularizers"])
SETTINGS = list(cfg["settings"])
SEQS = list(range(cfg["sequences"]["count"]))
SEQUENCE_RECORDS = [f"data/datasets/{name}" for name in ehc.sequence_datasets(cfg)]
SETTING_STEPS = {label: ehc.setting_steps(cfg, label) for label in SETTINGS}
SETTING_METHODS = {label: ehc.setting_methods(cfg, label) for label in SETTINGS}
TASKS = list(cfg["evaluation"]["tasks"])
GPU = 0 if cfg["device"] == "cpu" else 1
CORPUS = f"{ehc.corpus_key(cfg)}-n{cfg['stats']['n']}"


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    method="|".join(map(re.escape, METHODS)),
    reg="|".join(map(re.escape, REGS)),
    setting="|".join(map(re.escape, SETTINGS)),
    task="|".join(TASKS),
    seq=r"\d+",


def as_json(value):
    return json.dumps(value, sort_keys=True)


def local_content(source, other=None):
    """A fetch rule's param: a local: source's content digest, so an edited local file reruns its
    fetch job and everything downstream (README: Real data). For any other source it is the value of
    another of the rule's params (`other`, by default the source itself): Snakemake compares a job's
    params as a set of values, so the param adds nothing there and results computed before it existed
    are not rerun."""
    digest = source_digest(source, digest_cache(".")) if source else ""
    return digest or (source if other is None else other)


def sha256_flag(sha256):
    return f"--sha256 {sha256}" if sha256 else ""


def get_method(w):
    return as_json(ehc.method_hparams(cfg, w.model, w.method))


def get_regularizer(w):
    return as_json(ehc.regularizer_params(cfg, w.reg))


def get_stats(w):
    return [f"data/stats/{w.model}/{CORPUS}/{module}.safetensors"
            for module in ehc.stats_modules(cfg, w.model, w.method, w.reg)]


def get_editor(w):
    return [f"data/editors/{w.model}/{w.method}.safetensors"] if ehc.trainable(cfg, w.method) else []


def get_config_deltas(w):
    return step_deltas(w, w.setting, SETTING_STEPS[w.setting])


def get_task_data(w):
    return f"data/datasets/{TASK_REGISTRY.get(w.task).dataset}"


def get_seed(w):
    """Sequence `seq` is sampled, and edited, with the run's seed plus its number."""
    return cfg["seed"] + int(w.seq)


def step_deltas(w, setting, steps):
    """The dW files of one configuration at `steps` of `setting` (a rule per setting fixes it)."""
    return [f"data/edits/{w.model}/{w.method}/{w.reg}/{setting}/seq{w.seq}/step-{step}.safetensors" for step in steps]


def bootstrap_flag():
    options = ehc.bootstrap_options(cfg)
    return f"--bootstrap '{as_json(options)}'" if options else ""


def cache_flag():
    cache = cfg["evaluation"]["cache"]
    return f"--cache {cache}" if cache else ""


def labels(w, **extra):
    """Who a metrics file belongs to; `demo` marks results on the embedded demo data. A checkpoint's
    step and edits come from its dW file."""
    datasets = [TASK_REGISTRY.get(w.task).dataset] if hasattr(w, "task") else ehc.sequence_datasets(cfg)
    out = {"model": w.model, "demo": any(ehc.is_demo(cfg, dataset) for dataset in datasets), **extra}
    for key in ("method", "reg", "setting"):
        if hasattr(w, key):
            out[key] = getattr(w, key)
    if hasattr(w, "seq"):
        out["seq"] = int(w.seq)
    return as_json(out)


def get_all_metrics(w=None):
    base = expand("data/eval/{model}/base/{task}.json", model=MODELS, task=TASKS)
    edited = [
        path
        for setting in SETTINGS
        for path in expand(
            "data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/{task}.json",
            model=MODELS, method=SETTING_METHODS[setting], reg=REGS, setting=[setting], seq=SEQS,
            step=[s for s in SETTING_STEPS[setting] if s > 0], task=TASKS + ["editing"],
        )
    ]
    return base + edited + get_lmeval_metrics() + get_perplexity_metrics()


def get_all_weights(kind):
    """Every configuration's weight-change table (kind "weights") or heatmap table (kind "heatmap")."""
    return [
        path
        for setting in SETTINGS
        for path in expand(
            "data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/{kind}.parquet",
            model=MODELS, method=SETTING_METHODS[setting], reg=REGS, setting=[setting], seq=SEQS, kind=[kind],
        )
    ]


# lm-evaluation-harness probes (rules/lmeval.smk); off while evaluation.lm_eval.tasks is empty.
LMEVAL_ARGS = " ".join(map(shlex.quote, ehc.lmeval_args(cfg)))


def get_lmeval_deltas(w):
    """The configuration's edited checkpoints (step 0 is the unedited model, scored once per model)."""
    return step_deltas(w, w.setting, [s for s in SETTING_STEPS[w.setting] if s > 0])


def get_lmeval_metrics(w=None):
    """Every lm-eval metric file of the grid, or [] when the probes are off."""
    if not LMEVAL_ARGS:
        return []
    edited = [
        path
        for setting in SETTINGS
        for path in expand(
            "data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/lmeval.json",
            model=MODELS, method=SETTING_METHODS[setting], reg=REGS, setting=[setting], seq=SEQS,
        )
    ]
    return expand("data/eval/{model}/base/lmeval.json", model=MODELS) + edited


# Held-out perplexity (make_heldout, evaluate_perplexity*); off while probes.perplexity is null or its texts 0.
HELDOUT_ARGS = " ".join(map(shlex.quote, ehc.heldout_args(cfg)))
PERPLEXITY_ARGS = " ".join(map(shlex.quote, ehc.perplexity_args(cfg)))
# The statistics texts, which no held-out text may repeat (none when no statistics corpus is set).
STATS_TEXTS = [f"data/corpora/{CORPUS}.jsonl"] if cfg["stats"].get("corpus") else []


def get_perplexity_metrics(w=None):
    """Every perplexity metric file of the grid, or [] when the probe is off."""
    if not PERPLEXITY_ARGS:
        return []
    edited = [
        path
        for setting in SETTINGS
        for path in expand(
            "data/eval/{model}/{method}/{reg}/{setting}/seq{seq}/step-{step}/perplexity.json",
            model=MODELS, method=SETTING_METHODS[setting], reg=REGS, setting=[setting], seq=SEQS,
            step=[s for s in SETTING_STEPS[setting] if s > 0],
        )
    ]
    return expand("data/eval/{model}/base/perplexity.json", model=MODELS) + edited
