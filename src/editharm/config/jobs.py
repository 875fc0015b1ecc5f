"""`editharm list` and `editharm validate`: what is registered, and whether a params file is valid."""
from __future__ import annotations

from pathlib import Path

from editharm.config.load import load_params


def list_names() -> None:
    from editharm.data.catalog import DATASET_NAMES
    from editharm.editing.methods import METHODS
    from editharm.editing.regularizers import REGULARIZERS
    from editharm.editing.settings import KINDS
    from editharm.evaluation.tasks import TASKS
    from editharm.model.architectures import ARCHITECTURES
    from editharm.sources.grammar import SOURCE_KINDS

    sections = [
        ("methods", METHODS.names()),
        ("regularizers", REGULARIZERS.names()),
        ("tasks", [f"{n:<24} {TASKS.get(n).title}" for n in TASKS.names()]),
        ("settings", list(KINDS)),
        ("source kinds", [f"{k:<9} {SOURCE_KINDS.get(k)}" for k in SOURCE_KINDS.names()]),
        ("datasets", sorted(DATASET_NAMES)),
        ("architectures (config.model_type)", [f"{t:<9} {ARCHITECTURES.get(t).title}" for t in ARCHITECTURES.names()]),
    ]
    for title, items in sections:
        print(f"{title}:")
        for item in items:
            print(f"  {item}")


def validate(params: Path) -> None:
    cfg = load_params(params)
    print(f"{params}: valid ({len(cfg['models'])} model(s), {len(cfg['methods'])} method(s), "
          f"{len(cfg['regularizers'])} regularizer(s), {len(cfg['evaluation']['tasks'])} task(s))")


def local_digests(params: Path, out: Path) -> None:
    """Write the content digest of every `local:` source that `params` names (a JSON object by params
    key), so that `dvc repro` sees a local model, dataset or corpus changed in place."""
    from editharm.config.load import read_params
    from editharm.core.fileio import write_json
    from editharm.sources.local import digest_cache, source_digest

    raw = read_params(params)
    named = {f"models.{name}.source": (spec or {}).get("source") for name, spec in (raw.get("models") or {}).items()}
    named |= {f"datasets.{name}": text for name, text in (raw.get("datasets") or {}).items()}
    named["stats.corpus"] = (raw.get("stats") or {}).get("corpus")
    named["probes.perplexity.corpus"] = ((raw.get("probes") or {}).get("perplexity") or {}).get("corpus")
    cache = digest_cache(".")
    digests = {key: source_digest(text, cache) for key, text in named.items() if isinstance(text, str)}
    write_json(out, {key: value for key, value in digests.items() if value})
