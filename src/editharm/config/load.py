"""Load and validate params.yaml: schema (with defaults) first, then registered names and the values
derived from them (editharm.config.derive), so a bad file fails before any job with the key and what
is allowed."""
from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from editharm.config.derive import (
    method_hparams,
    perplexity_probe,
    regularizer_params,
    setting_methods,
    setting_steps,
    stats_modules,
    train_dataset,
)
from editharm.core.registry import UnknownNameError


class ParamsError(ValueError):
    """params.yaml is invalid; the message names the file, the key and what is allowed."""


def _schema() -> dict:
    return json.loads(resources.files("editharm.config").joinpath("params.schema.json").read_text())


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
    from editharm.data.catalog import DATASET_NAMES
    from editharm.data.editsets import edit_set
    from editharm.editing.methods import METHODS
    from editharm.editing.regularizers import REGULARIZERS
    from editharm.evaluation.tasks import TASKS

    for name, spec in cfg["models"].items():
        _check_architecture(name, spec, source)
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
    probe = perplexity_probe(cfg)
    if probe and not probe["corpus"]:
        raise ParamsError(f"{source}: key 'probes.perplexity.corpus' is null and 'stats.corpus' is not set; "
                          "allowed: a corpus source (pypi:, local:, hf:), or set stats.corpus")
    for label, spec in cfg["methods"].items():
        _registered(METHODS, "methods", label, spec, source)
        for model in cfg["models"]:
            try:
                method_hparams(cfg, model, label)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise ParamsError(f"{source}: key 'methods.{label}.hparams' (model {model!r}): {exc}") from None
    for label, spec in cfg["methods"].items():
        if METHODS.get(spec.get("kind", label)).trainable():
            train = train_dataset(cfg, label)
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
        kind = _registered(REGULARIZERS, "regularizers", label, spec, source)
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


def _check_architecture(name: str, spec: dict, source: str) -> None:
    """A declared architecture is a supported one; so is a local model folder's (its config.json),
    and it is the declared one. A Hub or wheel model's is known once fetched (the fetch_model job)."""
    from editharm.model.architectures import ARCHITECTURES, architecture_of_folder
    from editharm.sources.grammar import SourceError, parse_source

    declared = spec.get("architecture")
    if declared is not None and declared not in ARCHITECTURES:
        raise ParamsError(f"{source}: key 'models.{name}.architecture' is {declared!r}, not a supported "
                          f"architecture; allowed: {', '.join(ARCHITECTURES.names())}")
    try:
        model = parse_source(spec["source"], "model")
    except SourceError:
        return  # the fetch_model job names what is wrong with the source
    if model.kind != "local" or not (Path(model.target) / "config.json").is_file():
        return
    try:
        found = architecture_of_folder(model.target).model_type
    except (KeyError, ValueError) as exc:
        raise ParamsError(f"{source}: key 'models.{name}.source': {exc}") from None
    if declared is not None and declared != found:
        raise ParamsError(f"{source}: key 'models.{name}.architecture' is {declared!r} but the model at "
                          f"{model.target} is {found!r}")


def _registered(registry, section: str, label: str, spec: dict, source: str) -> str:
    """The kind of entry `label` under `section` (its `kind`, else its label), checked against `registry`."""
    kind = spec.get("kind", label)
    try:
        registry.get(kind)
    except UnknownNameError as exc:
        raise ParamsError(f"{source}: key '{section}.{label}.kind': {exc}") from None
    return kind


def _check_lm_eval(spec: dict, source: str) -> None:
    """The lm-eval probe keys; task names are checked against lm-eval itself by the job, before it
    loads a model, so validating params never needs the optional extra."""
    include = spec["include_path"]
    if include is not None and not Path(include).is_dir():
        raise ParamsError(f"{source}: key 'evaluation.lm_eval.include_path' is {include!r}, which is not a folder; "
                          "allowed: null or a folder of lm-eval task YAMLs")
