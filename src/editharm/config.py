"""Load and validate params.yaml: schema (with defaults) first, then registered names.

Everything a job needs is derived here from the validated params, so Snakemake rules can pass
it through `params:` (and rerun exactly the jobs whose values changed).
"""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from editharm.registry import UnknownNameError


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the file, the key and what is allowed."""


def _schema() -> dict:
    return json.loads(resources.files("editharm").joinpath("schema/params.schema.json").read_text())


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _fill_defaults(schema: dict, value: Any) -> None:
    """Insert schema defaults for missing keys, recursively (jsonschema does not)."""
    if not isinstance(value, dict):
        return
    for name, sub in schema.get("properties", {}).items():
        if name not in value and "default" in sub:
            value[name] = copy.deepcopy(sub["default"])
        if name in value:
            _fill_defaults(sub, value[name])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for name, item in value.items():
            if name not in schema.get("properties", {}):
                _fill_defaults(extra, item)


def _schema_error(err: jsonschema.ValidationError, source: str) -> ParamsError:
    where = _key(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        unexpected = sorted(set(err.instance) - set(allowed))
        key = ".".join(filter(None, [where if err.absolute_path else "", unexpected[0]]))
        return ParamsError(f"{source}: unknown key {key!r}; allowed: {', '.join(allowed) or '(none)'}")
    if err.validator == "propertyNames":
        allowed = err.schema.get("propertyNames", {}).get("enum")
        bad = err.instance
        hint = f"; allowed: {', '.join(allowed)}" if allowed else f" ({err.message})"
        return ParamsError(f"{source}: key {where!r} has an entry {bad!r} that is not allowed{hint}")
    if err.validator == "enum":
        return ParamsError(
            f"{source}: key {where!r} is {err.instance!r}; allowed: {', '.join(map(str, err.validator_value))}"
        )
    if err.validator == "required":
        return ParamsError(f"{source}: key {where!r}: {err.message}")
    return ParamsError(f"{source}: key {where!r}: {err.message}")


def load_params(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return validate_params(raw or {}, source=str(path))


def validate_params(raw: dict, source: str = "params.yaml") -> dict:
    """Return a validated deep copy of `raw` with defaults filled in; raise ParamsError otherwise."""
    cfg = copy.deepcopy(dict(raw))
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise _schema_error(errors[0], source)
    _fill_defaults(schema, cfg)
    _check_names(cfg, source)
    return cfg


def _check_names(cfg: dict, source: str) -> None:
    from editharm.datasets import DATASET_NAMES
    from editharm.editsets import edit_set
    from editharm.methods import METHODS
    from editharm.regularizers import REGULARIZERS
    from editharm.tasks import TASKS

    for name in cfg["datasets"]:
        if name not in DATASET_NAMES:
            raise ParamsError(
                f"{source}: key 'datasets.{name}' is not a known dataset; allowed: {', '.join(sorted(DATASET_NAMES))}"
            )
    seq_ds = cfg["sequences"]["dataset"]
    if seq_ds not in cfg["datasets"]:
        raise ParamsError(
            f"{source}: key 'sequences.dataset' is {seq_ds!r}, which has no source under 'datasets'; "
            f"allowed: {', '.join(cfg['datasets'])}"
        )
    try:
        edit_set(seq_ds)
    except (KeyError, ValueError) as exc:
        raise ParamsError(f"{source}: key 'sequences.dataset': {exc}") from None
    if max(cfg["steps"]) > cfg["sequences"]["n_edits"]:
        raise ParamsError(
            f"{source}: key 'steps' asks for step {max(cfg['steps'])} but 'sequences.n_edits' is "
            f"{cfg['sequences']['n_edits']}; allowed: steps from 0 to n_edits"
        )
    tasks = cfg["evaluation"].setdefault(
        "tasks", {name: {} for name in TASKS.names() if TASKS.get(name).variant_of is None}
    )
    for name, opts in tasks.items():
        try:
            task = TASKS.get(name)
        except UnknownNameError as exc:
            raise ParamsError(f"{source}: key 'evaluation.tasks.{name}': {exc}") from None
        if task.dataset not in cfg["datasets"]:
            raise ParamsError(
                f"{source}: key 'evaluation.tasks.{name}' reads dataset {task.dataset!r}, which has no source "
                f"under 'datasets'; add 'datasets.{task.dataset}'"
            )
        if opts.get("scoring") == "choice" and not task.supports_choice:
            raise ParamsError(
                f"{source}: key 'evaluation.tasks.{name}.scoring' is 'choice' but task {name!r} has no label set; "
                "allowed: generate"
            )
    _check_lm_eval(cfg["evaluation"]["lm_eval"], source)
    for label, spec in cfg["methods"].items():
        kind = spec.get("kind", label)
        try:
            METHODS.get(kind)
        except UnknownNameError as exc:
            raise ParamsError(f"{source}: key 'methods.{label}.kind': {exc}") from None
        for model in cfg["models"]:
            try:
                method_hparams(cfg, model, label)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise ParamsError(f"{source}: key 'methods.{label}.hparams' (model {model!r}): {exc}") from None
    for label, spec in cfg["methods"].items():
        if METHODS.get(spec.get("kind", label)).trainable():
            train = spec.get("train_dataset", "zsre_train")
            if train not in cfg["datasets"]:
                raise ParamsError(
                    f"{source}: key 'methods.{label}.train_dataset' is {train!r}, which has no source under "
                    f"'datasets'; add 'datasets.{train}' (a train split, disjoint from the edited records)"
                )
        elif "train_dataset" in spec:
            raise ParamsError(f"{source}: key 'methods.{label}.train_dataset': method {label!r} has no training "
                              "step; allowed only for trainable methods (mend)")
    for label in cfg["settings"]:
        try:
            setting_steps(cfg, label)
        except ValueError as exc:
            raise ParamsError(f"{source}: key 'settings.{label}': {exc}") from None
        unknown = [m for m in setting_methods(cfg, label) if m not in cfg["methods"]]
        if unknown:
            raise ParamsError(f"{source}: key 'settings.{label}.methods': {unknown} not under 'methods'; "
                              f"allowed: {', '.join(cfg['methods'])}")
    for label, spec in cfg["regularizers"].items():
        kind = spec.get("kind", label)
        try:
            REGULARIZERS.get(kind)
        except UnknownNameError as exc:
            raise ParamsError(f"{source}: key 'regularizers.{label}.kind': {exc}") from None
        try:
            regularizer_params(cfg, label)
        except (ValueError, TypeError) as exc:
            raise ParamsError(f"{source}: key 'regularizers.{label}': {exc}") from None
        if REGULARIZERS.get(kind).needs_stats:
            for method in cfg["methods"]:
                for model in cfg["models"]:
                    try:
                        stats_modules(cfg, model, method, label)
                    except (ValueError, NotImplementedError) as exc:
                        raise ParamsError(f"{source}: key 'regularizers.{label}' reads statistics of the modules "
                                          f"method {method!r} edits, which it cannot name: {exc}") from None


def _check_lm_eval(spec: dict, source: str) -> None:
    """The lm-eval probe keys; task names are checked against lm-eval itself by the job, before it
    loads a model, so validating params never needs the optional extra."""
    include = spec["include_path"]
    if include is not None and not Path(include).is_dir():
        raise ParamsError(f"{source}: key 'evaluation.lm_eval.include_path' is {include!r}, which is not a folder; "
                          "allowed: null or a folder of lm-eval task YAMLs")


# ---- derived values (what each job receives through Snakemake `params:`) ----

def preset_path(method_kind: str, preset: str) -> Path:
    return Path(str(resources.files("editharm").joinpath(f"presets/{method_kind}/{preset}.yaml")))


def method_hparams(cfg: dict, model: str, label: str) -> dict:
    """Resolved hyperparameters of method `label` on `model`: preset, then params.yaml overrides."""
    from editharm.methods import METHODS

    spec = cfg["methods"][label]
    kind = spec.get("kind", label)
    Hparams = METHODS.get(kind).Hparams
    if "easyedit" in spec:
        # An EasyEdit hparams file replaces the preset: it was written for one model already.
        path = Path(spec["easyedit"])
        if not path.is_file():
            raise FileNotFoundError(f"EasyEdit hparams file {str(path)!r} (methods.{label}.easyedit) does not exist")
        base = Hparams.from_easyedit(yaml.safe_load(path.read_text()) or {}).to_dict()
    else:
        preset = cfg["models"][model]["preset"]
        path = preset_path(kind, preset)
        if not path.exists():
            available = sorted(p.stem for p in path.parent.glob("*.yaml"))
            raise FileNotFoundError(
                f"no {kind} preset {preset!r} (models.{model}.preset); available: {', '.join(available) or '(none)'}"
            )
        base = yaml.safe_load(path.read_text()) or {}
    hp = Hparams.from_dict({**base, **spec.get("hparams", {})})
    return {"kind": kind, "hparams": _as_dict(hp)}


def regularizer_params(cfg: dict, label: str) -> dict:
    from editharm.regularizers import REGULARIZERS

    spec = dict(cfg["regularizers"][label])
    kind = spec.pop("kind", label)
    params = REGULARIZERS.get(kind).Params.from_dict(spec)
    return {"kind": kind, "params": _as_dict(params)}


def task_options(cfg: dict, task: str) -> dict:
    from editharm.tasks import TASKS

    t = TASKS.get(task)
    opts = cfg["evaluation"]["tasks"].get(task, {})
    return {
        "scoring": opts.get("scoring", t.scoring),
        "limit": opts.get("limit", cfg["evaluation"]["limit"]),
        "max_new_tokens": opts.get("max_new_tokens", t.max_new_tokens),
        "batch_size": cfg["evaluation"]["batch_size"],
    }


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
    from editharm.settings import Setting

    spec = setting_spec(cfg, label)
    return Setting.from_params(spec.pop("kind"), spec)


def setting_steps(cfg: dict, label: str) -> list[int]:
    """Checkpoint steps of a setting (0 first), see editharm.settings."""
    return setting_of(cfg, label).resolve_steps(eval_steps(cfg), cfg["sequences"]["n_edits"])


def edits_at(cfg: dict, label: str, step: int) -> int:
    return setting_of(cfg, label).edits_at(step)


def trainable(cfg: dict, label: str) -> bool:
    from editharm.methods import METHODS

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
    from editharm.methods import METHODS
    from editharm.regularizers import REGULARIZERS

    resolved = method_hparams(cfg, model, label)
    cls = METHODS.get(resolved["kind"])
    hp = cls.Hparams.from_dict(resolved["hparams"])
    modules = list(cls.stats_modules(hp))
    if reg is not None and REGULARIZERS.get(regularizer_params(cfg, reg)["kind"]).needs_stats:
        modules += [m for m in cls.edited_modules(hp) if m not in modules]
    return modules


def report_context(cfg: dict) -> dict:
    """What the report says about its inputs: model, data (demo data labelled) and the grid."""
    from editharm.datasets import describe_source

    model = next(iter(cfg["models"]))  # one report per run; the first model is the one it shows
    return {
        "title": cfg["report"]["title"],
        "model": model,
        "model_name": model,
        "model_source": cfg["models"][model]["source"],
        "edit_dataset": f"{cfg['sequences']['dataset']} ({cfg['datasets'][cfg['sequences']['dataset']]})",
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


def is_demo(cfg: dict, dataset: str) -> bool:
    return cfg["datasets"][dataset].startswith("embedded:")
