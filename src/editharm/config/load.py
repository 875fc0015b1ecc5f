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

from editharm.config.derive import (
    method_hparams,
    perplexity_probe,
    regularizer_params,
    sequence_datasets,
    setting_methods,
    setting_steps,
    stats_modules,
    train_dataset,
)
from editharm.config import sources as checks
from editharm.core.registry import UnknownNameError
from editharm.core.yamlfile import YamlFileError, read_yaml


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
    if err.validator == "pattern":
        return ParamsError(f"{source}: key {where!r} is {err.instance!r}; allowed: values matching {err.validator_value}")
    if err.validator == "enum":
        return ParamsError(
            f"{source}: key {where!r} is {err.instance!r}; allowed: {', '.join(map(str, err.validator_value))}"
        )
    return ParamsError(f"{source}: key {where!r}: {err.message}")


def read_params(path: str | Path) -> dict:
    """The mapping in a params file, read strictly: a syntax error or a key written twice names the
    file, line and column (editharm.core.yamlfile)."""
    try:
        raw = read_yaml(path)
    except YamlFileError as exc:
        raise ParamsError(str(exc)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of params keys at the top level, got {type(raw).__name__}")
    return raw


def load_params(path: str | Path, workdir: Path | None = Path(".")) -> dict:
    """Read and validate a params file; `workdir` as for `validate_params`."""
    return validate_params(read_params(path), source=str(path), workdir=workdir)


def validate_params(raw: dict, source: str = "params.yaml", workdir: Path | None = None) -> dict:
    """Return a validated deep copy of `raw` with defaults filled in; raise ParamsError otherwise.

    With `workdir` (the folder the workflow runs in), a model an earlier run fetched there is checked
    too, and the local datasets already read in full are remembered there (under .snakemake/)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of params keys at the top level, got {type(raw).__name__}")
    cfg = copy.deepcopy(dict(raw))
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), _key(e.absolute_path)))
    if errors:
        raise _schema_error(errors[0], source)
    _fill_defaults(schema, cfg)
    try:
        _check_names(cfg, source, workdir)
    except checks.SourceProblem as exc:
        raise ParamsError(f"{source}: key {exc.key!r}: {exc}") from None
    return cfg


def _check_names(cfg: dict, source: str, workdir: Path | None) -> None:
    from editharm.data.catalog import DATASET_NAMES
    from editharm.data.editsets import edit_set
    from editharm.editing.methods import METHODS
    from editharm.editing.regularizers import REGULARIZERS
    from editharm.evaluation.tasks import TASKS

    from editharm.sources.local import digest_cache

    folders = {}
    for name, spec in cfg["models"].items():
        fetched = workdir / "data" / "models" / name if workdir is not None else None
        folders[name] = checks.model_folder(name, spec["source"], fetched)
        _check_architecture(name, spec, folders[name], source)
    for name in cfg["datasets"]:
        if name not in DATASET_NAMES:
            raise ParamsError(
                f"{source}: key 'datasets.{name}' is not a known dataset; allowed: {', '.join(sorted(DATASET_NAMES))}"
            )
    state = workdir / ".snakemake" / "editharm" if workdir is not None else None
    for name, text in cfg["datasets"].items():
        checks.dataset_source(name, text, state / "checked-datasets.json" if state else None,
                              digest_cache(workdir) if workdir is not None else None)
    if cfg["stats"].get("corpus"):
        checks.corpus_source("stats.corpus", cfg["stats"]["corpus"])
    _check_sequence_datasets(cfg, source)
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
    if probe and cfg["probes"]["perplexity"]["corpus"]:
        checks.corpus_source("probes.perplexity.corpus", probe["corpus"])
    for label, spec in cfg["methods"].items():
        _registered(METHODS, "methods", label, spec, source)
        for model in cfg["models"]:
            try:
                method_hparams(cfg, model, label)
            except (ValueError, TypeError, FileNotFoundError) as exc:
                raise ParamsError(f"{source}: key 'methods.{label}.hparams' (model {model!r}): {exc}") from None
            if folders[model] is not None:
                _check_modules(cfg, model, label, folders[model], source)
    for label, spec in cfg["methods"].items():
        if METHODS.get(spec.get("kind", label)).trainable():
            train = train_dataset(cfg, label)
            if train not in cfg["datasets"]:
                raise ParamsError(
                    f"{source}: key 'methods.{label}.train_dataset' is {train!r}, which has no source under "
                    f"'datasets'; add 'datasets.{train}' (a train split, disjoint from the edited records)"
                )
            try:  # any editing dataset: one dataset's train split may train the editor for another's edits
                edit_set(train)
            except (KeyError, ValueError) as exc:
                raise ParamsError(f"{source}: key 'methods.{label}.train_dataset': {exc}") from None
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


def _check_sequence_datasets(cfg: dict, source: str) -> None:
    """Every dataset a sequence draws from is an editing dataset with a source under `datasets`; mixed
    datasets' shares are above 0 and sum to 1."""
    from editharm.data.editsets import EDIT_SETS, edit_set
    from editharm.data.sequences import edit_counts

    dataset = cfg["sequences"]["dataset"]
    mixed = isinstance(dataset, dict)
    with_source = [name for name in cfg["datasets"] if name in EDIT_SETS]
    for name in sequence_datasets(cfg):
        key = f"sequences.dataset.{name}" if mixed else "sequences.dataset"
        if mixed and not 0 < dataset[name] <= 1:
            raise ParamsError(f"{source}: key {key!r} is {dataset[name]!r}; allowed: a share above 0 and at most 1, "
                              "the shares summing to 1")
        try:
            edit_set(name)
        except (KeyError, ValueError) as exc:
            raise ParamsError(f"{source}: key {key!r}: {exc}") from None
        if name not in cfg["datasets"]:
            raise ParamsError(f"{source}: key {key!r} names {name!r}, which has no source under 'datasets'; "
                              f"allowed: {', '.join(with_source) or '(none)'}, or add 'datasets.{name}'")
    if mixed:
        try:
            edit_counts(dataset, cfg["sequences"]["n_edits"])
        except ValueError as exc:
            raise ParamsError(f"{source}: key 'sequences.dataset': {exc}") from None


def _check_architecture(name: str, spec: dict, folder: Path | None, source: str) -> None:
    """A declared architecture is a supported one; so is the model folder's (its config.json), when
    there is one already (local, or fetched by an earlier run), and it is the declared one."""
    from editharm.model.architectures import ARCHITECTURES, architecture_of_folder

    declared = spec.get("architecture")
    if declared is not None and declared not in ARCHITECTURES:
        raise ParamsError(f"{source}: key 'models.{name}.architecture' is {declared!r}, not a supported "
                          f"architecture; allowed: {', '.join(ARCHITECTURES.names())}")
    if folder is None:
        return
    try:
        found = architecture_of_folder(folder).model_type
    except (KeyError, ValueError) as exc:
        raise ParamsError(f"{source}: key 'models.{name}.source': {exc}") from None
    if declared is not None and declared != found:
        raise ParamsError(f"{source}: key 'models.{name}.architecture' is {declared!r} but the model at "
                          f"{folder} is {found!r}")


def _check_modules(cfg: dict, model: str, label: str, folder: Path, source: str) -> None:
    """The modules method `label` edits or reads statistics of are in the model's weights (a layer
    index past the model's depth fails here, not in the statistics job)."""
    from editharm.editing.methods import METHODS

    resolved = method_hparams(cfg, model, label)
    cls = METHODS.get(resolved["kind"])
    hp = cls.Hparams.from_dict(resolved["hparams"])
    try:
        modules = list(dict.fromkeys([*cls.edited_modules(hp), *cls.stats_modules(hp)]))
    except (ValueError, NotImplementedError):
        return  # known only from the loaded model (kn over every layer)
    missing = checks.missing_modules(modules, checks.tensor_names(folder))
    if missing:
        layers = checks.depth(folder)
        has = f"it has {layers} layers, 0 to {layers - 1}" if layers else "see its config.json"
        raise ParamsError(f"{source}: key 'methods.{label}.hparams' (model {model!r}): module(s) {missing} are not "
                          f"in the model at {folder} ({has}); allowed: modules of that model, layer indices "
                          "below its depth")


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
