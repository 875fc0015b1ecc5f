"""Values derived from validated params: everything a job receives through Snakemake `params:`, so
Snakemake reruns exactly the jobs whose values changed. The rules (rules/common.smk) read these."""
from __future__ import annotations

import json
from dataclasses import fields
from importlib import resources
from pathlib import Path

from editharm.core.yamlfile import read_yaml


def preset_path(method_kind: str, preset: str) -> Path:
    return Path(str(resources.files("editharm.editing").joinpath(f"presets/{method_kind}/{preset}.yaml")))


def method_hparams(cfg: dict, model: str, label: str) -> dict:
    """Resolved hyperparameters of method `label` on `model`: preset, then params.yaml overrides."""
    from editharm.editing.methods import METHODS
    from editharm.model.architectures import ARCHITECTURES, TEMPLATE_KEYS

    spec = cfg["methods"][label]
    kind = spec.get("kind", label)
    Hparams = METHODS.get(kind).Hparams
    if "easyedit" in spec:
        # An EasyEdit hparams file replaces the preset: it was written for one model already.
        path = Path(spec["easyedit"])
        if not path.is_file():
            raise FileNotFoundError(f"EasyEdit hparams file {str(path)!r} (methods.{label}.easyedit) does not exist")
        base = Hparams.from_easyedit(read_yaml(path) or {}).to_dict()
    else:
        preset = cfg["models"][model]["preset"]
        path = preset_path(kind, preset)
        if not path.exists():
            available = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise FileNotFoundError(
                f"no {kind} preset {preset!r} (models.{model}.preset); available: {', '.join(available) or '(none)'}"
            )
        base = {**module_defaults(cfg, model, Hparams), **(read_yaml(path) or {})}
        unnamed = [f.name for f in fields(Hparams) if f.name in TEMPLATE_KEYS
                   and f.name not in base and f.name not in spec.get("hparams", {})]
        if unnamed:
            raise ValueError(f"{kind} preset {preset!r} names no {', '.join(unnamed)} and models.{model}.architecture "
                             f"is not set; set it (allowed: {', '.join(ARCHITECTURES.names())}) or name the modules")
    hp = Hparams.from_dict({**base, **spec.get("hparams", {})})
    return {"kind": kind, "hparams": _as_dict(hp)}


def module_defaults(cfg: dict, model: str, Hparams: type) -> dict:
    """The templates of `model`'s declared architecture (models.<model>.architecture) for the keys of
    `Hparams` that name modules; none without a declared architecture."""
    from editharm.model.architectures import architecture

    declared = cfg["models"][model].get("architecture")
    if declared is None:
        return {}
    keys = {f.name for f in fields(Hparams)}
    return {k: v for k, v in architecture(declared).default_templates().items() if k in keys}


def regularizer_params(cfg: dict, label: str) -> dict:
    from editharm.editing.regularizers import REGULARIZERS

    spec = dict(cfg["regularizers"][label])
    kind = spec.pop("kind", label)
    params = REGULARIZERS.get(kind).Params.from_dict(spec)
    return {"kind": kind, "params": _as_dict(params)}


def task_options(cfg: dict, task: str) -> dict:
    from editharm.evaluation.tasks import TASKS

    t = TASKS.get(task)
    opts = cfg["evaluation"]["tasks"].get(task, {})
    return {
        "scoring": opts.get("scoring", t.scoring),
        "limit": opts.get("limit", cfg["evaluation"]["limit"]),
        "max_new_tokens": opts.get("max_new_tokens", t.max_new_tokens),
        "batch_size": cfg["evaluation"]["batch_size"],
    }


def bootstrap_options(cfg: dict) -> dict | None:
    """`--bootstrap` of the evaluation jobs: resamples under the run's seed (None: intervals off)."""
    resamples = cfg["evaluation"]["bootstrap"]["resamples"]
    return {"resamples": resamples, "seed": cfg["seed"]} if resamples else None


def lmeval_args(cfg: dict) -> list[str]:
    """`editharm lm-eval` options from evaluation.lm_eval and the run's seed; [] when the probes are off."""
    spec = cfg["evaluation"]["lm_eval"]
    if not spec["tasks"]:
        return []
    args = ["--tasks", ",".join(spec["tasks"]), "--batch-size", str(spec["batch_size"]), "--seed", str(cfg["seed"])]
    for key in ("limit", "num_fewshot", "include_path"):
        if spec[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(spec[key])]
    return args


def perplexity_probe(cfg: dict) -> dict | None:
    """The held-out perplexity probe's resolved options, None when it is off: `texts`, `max_tokens`,
    and the `corpus` source its texts come from (probes.perplexity.corpus, else the statistics corpus)
    with that source's `sha256`."""
    spec = cfg["probes"]["perplexity"]
    if not spec or not spec["texts"]:
        return None
    if spec["corpus"]:
        corpus, sha256 = spec["corpus"], spec["sha256"]
    else:
        corpus, sha256 = cfg["stats"].get("corpus"), cfg["stats"].get("sha256")
    return {"texts": spec["texts"], "max_tokens": spec["max_tokens"], "corpus": corpus, "sha256": sha256}


def heldout_args(cfg: dict) -> list[str]:
    """`editharm make-heldout` options for the probe's texts; [] when the probe is off."""
    probe = perplexity_probe(cfg)
    if probe is None:
        return []
    sha256 = ["--sha256", probe["sha256"]] if probe["sha256"] else []
    return ["--source", probe["corpus"], "--n", str(probe["texts"]), *sha256]


def perplexity_args(cfg: dict) -> list[str]:
    """`editharm perplexity` options besides the checkpoints and outputs; [] when the probe is off."""
    probe = perplexity_probe(cfg)
    if probe is None:
        return []
    return ["--max-tokens", str(probe["max_tokens"]), "--batch-size", str(cfg["evaluation"]["batch_size"])]


def eval_steps(cfg: dict) -> list[int]:
    return sorted(cfg["steps"])


def setting_spec(cfg: dict, label: str) -> dict:
    """{"kind": ..., and the setting's own keys} for a label under `settings` (without `methods`,
    which picks configurations rather than shaping the edits)."""
    spec = dict(cfg["settings"][label])
    spec.pop("methods", None)
    return {"kind": spec.pop("kind", label), **spec}


def setting_methods(cfg: dict, label: str) -> list[str]:
    """The method labels a setting runs: its `methods` list, else every method."""
    return list(cfg["settings"][label].get("methods", cfg["methods"]))


def setting_of(cfg: dict, label: str):
    from editharm.editing.settings import Setting

    spec = setting_spec(cfg, label)
    return Setting.from_params(spec.pop("kind"), spec)


def setting_steps(cfg: dict, label: str) -> list[int]:
    """Checkpoint steps of a setting (0 first), see editharm.editing.settings."""
    return setting_of(cfg, label).resolve_steps(eval_steps(cfg), cfg["sequences"]["n_edits"])


def sequence_datasets(cfg: dict) -> list[str]:
    """The editing datasets a sequence draws from, in the order sequences.dataset names them."""
    dataset = cfg["sequences"]["dataset"]
    return list(dataset) if isinstance(dataset, dict) else [dataset]


def sequence_dataset_arg(cfg: dict) -> str | list[str]:
    """`editharm make-sequence --dataset`: the one dataset's name, or NAME=SHARE per mixed dataset."""
    dataset = cfg["sequences"]["dataset"]
    return [f"{name}={share!r}" for name, share in dataset.items()] if isinstance(dataset, dict) else dataset


def trainable(cfg: dict, label: str) -> bool:
    from editharm.editing.methods import METHODS

    return METHODS.get(cfg["methods"][label].get("kind", label)).trainable()


def train_dataset(cfg: dict, label: str) -> str:
    return cfg["methods"][label].get("train_dataset", "zsre_train")


def corpus_key(cfg: dict) -> str:
    """A short name for the statistics corpus: the first hex digits of its source string's sha256."""
    import hashlib

    return "c" + hashlib.sha256(cfg["stats"].get("corpus", "").encode()).hexdigest()[:10]


def _as_dict(params) -> dict:
    # Sorted JSON round trip: Snakemake compares params across runs as strings.
    return json.loads(json.dumps(params.to_dict(), sort_keys=True))


def stats_modules(cfg: dict, model: str, label: str, reg: str | None = None) -> list[str]:
    """Module paths whose second-moment statistics method `label` (wrapped by regularizer `reg`)
    needs on `model`: the method's own, and its edited modules when the regularizer reads them."""
    from editharm.editing.methods import METHODS
    from editharm.editing.regularizers import REGULARIZERS

    resolved = method_hparams(cfg, model, label)
    cls = METHODS.get(resolved["kind"])
    hp = cls.Hparams.from_dict(resolved["hparams"])
    modules = list(cls.stats_modules(hp))
    if reg is not None and REGULARIZERS.get(regularizer_params(cfg, reg)["kind"]).needs_stats:
        modules += [m for m in cls.edited_modules(hp) if m not in modules]
    return modules


def report_context(cfg: dict) -> dict:
    """What the report says about its inputs: model, data (demo data labelled) and the grid."""
    from editharm.data.fetch import describe_source

    model = next(iter(cfg["models"]))  # one report per run; the first model is the one it shows
    return {
        "title": cfg["report"]["title"],
        "model": model,
        "model_source": cfg["models"][model]["source"],
        "edit_dataset": edit_dataset_text(cfg),
        "datasets": [describe_source(name, src) for name, src in cfg["datasets"].items()],
        "settings": {
            "settings": {label: setting_spec(cfg, label) for label in cfg["settings"]},
            "n_edits": cfg["sequences"]["n_edits"],
            "sequences": cfg["sequences"]["count"],
            "steps": eval_steps(cfg),
            "methods": {label: spec.get("kind", label) for label, spec in cfg["methods"].items()},
            "regularizers": {label: dict(spec) for label, spec in cfg["regularizers"].items()},
            "items_per_task": cfg["evaluation"]["limit"],
            "seed": cfg["seed"],
        },
    }


def edit_dataset_text(cfg: dict) -> str:
    """The edit dataset(s) with their sources, and each one's share of the edits when they are mixed."""
    dataset = cfg["sequences"]["dataset"]
    if not isinstance(dataset, dict):
        return f"{dataset} ({cfg['datasets'][dataset]})"
    return "; ".join(f"{name}, share {share!r} ({cfg['datasets'][name]})" for name, share in dataset.items())


def is_demo(cfg: dict, dataset: str) -> bool:
    return cfg["datasets"][dataset].startswith("embedded:")
