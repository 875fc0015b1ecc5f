"""lm-evaluation-harness probes: real lm-eval runs, offline, on a local multiple-choice task whose
accuracy is computed independently from the model's own log-likelihoods (editharm.generation)."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from editharm.cli import main
from editharm.config.derive import lmeval_args
from editharm.config.load import ParamsError, validate_params
from editharm.evaluation import lmeval
from editharm.model.generation import choice_scores

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason=f"lm-evaluation-harness is the optional extra; {lmeval.INSTALL_HINT} to run these tests",
)

CHOICES = ["Paris", "Rome", "Berlin", "Tokyo"]
# (question, gold choice index); six items over the tiny vocabulary of tests/conftest.py
ITEMS = [
    ("The capital of France is", 0), ("The capital of Italy is", 1), ("The capital of Germany is", 2),
    ("The capital of Japan is", 3), ("The city of Rome is in", 1), ("Paris is the capital of", 0),
]
TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
GROUP_YAML = """\
group: capitals_all
task: [capitals, capitals_again]
aggregate_metric_list:
  - metric: acc
    aggregation: mean
    weight_by_size: true
"""
EDITED = "model.layers.2.mlp.down_proj.weight"


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    """A folder of task YAMLs reading local JSONL: `capitals`, `capitals_again` (its first 3 items)
    and the group `capitals_all` of both; nothing comes from the Hub."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "tasks"
    folder.mkdir()
    for name, items in (("capitals", ITEMS), ("capitals_again", ITEMS[:3])):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"question": q, "choices": CHOICES, "label": y}) + "\n" for q, y in items))
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data, cache=tmp_path / "hf-cache"))
    (folder / "capitals_all.yaml").write_text(GROUP_YAML)
    return folder


@pytest.fixture
def local_manager(task_dir):
    """A TaskManager over the local tasks only (indexing lm-eval's own ~15k tasks takes seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def expected(model, tok, items=ITEMS):
    """(log-likelihood of each choice per item, accuracy) computed without lm-eval."""
    scores = choice_scores(model, tok, [q for q, _ in items], [CHOICES] * len(items))
    correct = [max(range(len(s)), key=s.__getitem__) == y for s, (_, y) in zip(scores, items)]
    return scores, sum(correct) / len(correct)


def delta_that_changes_answers(model) -> dict[str, torch.Tensor]:
    """A seeded rank-one ΔW on the last MLP, large enough to move several choices."""
    g = torch.Generator().manual_seed(1)
    weight = dict(model.named_parameters())[EDITED]
    return {EDITED: torch.outer(torch.randn(weight.shape[0], generator=g), torch.randn(weight.shape[1], generator=g))}


def options(task_dir, *tasks, **kw):
    return lmeval.LmEvalOptions(tasks=tasks, include_path=str(task_dir), batch_size=3, **kw)


@pytest.fixture(scope="module")
def default_params():
    return yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())


def test_params_probes_are_off_by_default_and_become_command_options(default_params, tmp_path):
    assert validate_params(default_params)["evaluation"]["lm_eval"] == {
        "tasks": [], "limit": None, "num_fewshot": None, "batch_size": 8, "include_path": None}
    assert lmeval_args(validate_params(default_params)) == []
    on = {**default_params, "seed": 7, "evaluation": {**default_params["evaluation"], "lm_eval": {
        "tasks": ["piqa", "mmlu"], "num_fewshot": 5, "include_path": str(tmp_path)}}}
    assert lmeval_args(validate_params(on)) == [
        "--tasks", "piqa,mmlu", "--batch-size", "8", "--seed", "7", "--num-fewshot", "5", "--include-path", str(tmp_path)]


@pytest.mark.parametrize("spec, message", [
    ({"tasks": "piqa"}, "'evaluation.lm_eval.tasks': 'piqa' is not of type 'array'"),
    ({"tasks": ["piqa,mmlu"]}, "'evaluation.lm_eval.tasks.0'"),
    ({"tasks": ["piqa", "piqa"]}, "has non-unique elements"),
    ({"tasks": ["piqa"], "limit": 0}, "'evaluation.lm_eval.limit'"),
    ({"tasks": ["piqa"], "fewshot": 5}, "unknown key 'evaluation.lm_eval.fewshot'; allowed: batch_size, include_path"),
    ({"tasks": ["piqa"], "include_path": "/no/such/folder"}, "'evaluation.lm_eval.include_path' is '/no/such/folder', "
                                                             "which is not a folder"),
])
def test_params_refuse_bad_probe_keys_naming_them(default_params, spec, message):
    bad = {**default_params, "evaluation": {**default_params["evaluation"], "lm_eval": spec}}
    with pytest.raises(ParamsError, match=message):
        validate_params(bad)


def run(model, tok, opts, manager):
    return lmeval.evaluate(model, tok, opts, manager, lmeval.load_tasks(opts, manager))


def test_missing_extra_names_the_install_line_before_any_model_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(lmeval.LmEvalNotInstalled, match=r"pip install 'editharm\[lmeval\]'"):
        lmeval.require_lm_eval()
    # The model folder does not exist: the command must fail on the extra, not on loading the model.
    assert main(["lm-eval", "--model", str(tmp_path / "absent"), "--tasks", "piqa", "--labels", "{}",
                 "--out-metrics", str(tmp_path / "m.json"), "--out-samples", str(tmp_path / "s.parquet")]) == 1
    err = capsys.readouterr().err
    assert "LmEvalNotInstalled" in err and "editharm[lmeval]" in err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("bad, message", [
    (dict(tasks=()), "non-empty list"),
    (dict(tasks="piqa"), "non-empty list"),
    (dict(tasks=("piqa", "piqa")), r"\['piqa'\] are listed more than once"),
    (dict(tasks=("piqa,mmlu",)), "not task names"),
    (dict(tasks=("piqa",), limit=0), "limit: expected null or an integer >= 1"),
    (dict(tasks=("piqa",), num_fewshot=-1), "num_fewshot: expected null or an integer >= 0"),
    (dict(tasks=("piqa",), batch_size=0), "batch_size: expected an integer >= 1"),
    (dict(tasks=("piqa",), include_path="/no/such/folder"), "is not a folder of task YAMLs"),
])
def test_options_refuse_what_lm_eval_cannot_run(bad, message):
    with pytest.raises(ValueError, match=message):
        lmeval.LmEvalOptions(**bad)


@needs_lm_eval
def test_unknown_task_names_close_matches_and_knowedit_names(local_manager):
    lmeval.check_tasks(["capitals", "capitals_all"], local_manager)  # tasks and groups are both known
    with pytest.raises(lmeval.UnknownLmEvalTask) as err:
        lmeval.check_tasks(["capitals", "capitalz", "CSQA"], local_manager)
    text = str(err.value)
    assert "'capitalz'; close matches: capitals" in text
    assert "'CSQA'; close matches: commonsense_qa" in text  # KnowEdit's name, mapped
    assert "'capitals'" not in text


@needs_lm_eval
def test_accuracy_and_log_likelihoods_match_an_independent_computation(tiny_llama, task_dir, local_manager):
    model, tok = tiny_llama
    want_scores, want_acc = expected(model, tok)
    assert 0 < want_acc < 1  # a task the model gets partly right, so a wrong scorer shows

    (score,), samples = run(model, tok, options(task_dir, "capitals"), local_manager)

    assert (score.task, score.primary, score.n, score.scoring) == ("capitals", "acc", len(ITEMS), "choice")
    assert score.metrics["acc"] == pytest.approx(want_acc, abs=1e-12)
    # lm-eval's stderr of a mean: the sample standard deviation over sqrt(n)
    assert score.metrics["acc_stderr"] == pytest.approx(math.sqrt(want_acc * (1 - want_acc) / (len(ITEMS) - 1)))
    assert list(samples["doc_id"]) == list(range(len(ITEMS))) and set(samples["task"]) == {"capitals"}
    got = [[r[0] for r in json.loads(resp)] for resp in samples["response"]]
    assert got == [pytest.approx(s, abs=1e-4) for s in want_scores]
    assert [json.loads(s)["acc"] for s in samples["scores"]] == [
        float(max(range(4), key=s.__getitem__) == y) for s, (_, y) in zip(want_scores, ITEMS)
    ]
    record = score.record({"model": "tiny", "step": 3})
    assert record["task"] == "lmeval:capitals" and record["primary"] == "acc" and record["step"] == 3


@needs_lm_eval
def test_group_is_one_score_over_its_tasks_items_and_limit_cuts_each_task(tiny_llama, task_dir, local_manager):
    model, tok = tiny_llama
    _, acc_all = expected(model, tok)
    _, acc_first3 = expected(model, tok, ITEMS[:3])

    scores, samples = run(model, tok, options(task_dir, "capitals_all"), local_manager)
    (group,) = scores  # its tasks are reported inside it, not beside it
    assert (group.task, group.n) == ("capitals_all", len(ITEMS) + 3)
    assert group.metrics["acc"] == pytest.approx((acc_all * len(ITEMS) + acc_first3 * 3) / (len(ITEMS) + 3))
    assert samples.groupby("task").size().to_dict() == {"capitals": len(ITEMS), "capitals_again": 3}

    (limited,), samples = run(model, tok, options(task_dir, "capitals", limit=2), local_manager)
    _, acc_first2 = expected(model, tok, ITEMS[:2])
    assert limited.n == 2 and len(samples) == 2 and limited.metrics["acc"] == pytest.approx(acc_first2)


@needs_lm_eval
def test_cli_scores_each_checkpoint_on_one_model_and_aggregates(tiny_llama, task_dir, tmp_path):
    from editharm.model.deltas import applied, save_delta
    from editharm.results.aggregate import build_table

    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    delta = delta_that_changes_answers(model)
    base_scores, base_acc = expected(model, tok)
    with applied(model, delta):
        edited_scores, edited_acc = expected(model, tok)
    assert edited_acc != base_acc  # the ΔW must show in the result
    save_delta(tmp_path / "step-1.safetensors", delta, {"step": 1, "edits": 4})
    # A zero ΔW after the edited checkpoint scores as the base model only if the first ΔW was removed.
    save_delta(tmp_path / "step-2.safetensors", {EDITED: torch.zeros_like(delta[EDITED])}, {"step": 2, "edits": 8})
    labels = {"model": "tiny", "method": "rome", "reg": "none", "setting": "batch_sequential", "seq": 0,
              "demo": True}

    assert main(["lm-eval", "--model", str(tmp_path / "base"), "--device", "cpu",
                 "--delta", str(tmp_path / "step-1.safetensors"), str(tmp_path / "step-2.safetensors"),
                 "--tasks", "capitals", "--include-path", str(task_dir), "--batch-size", "4",
                 "--labels", json.dumps(labels), "--out-metrics", str(tmp_path / "lmeval.json"),
                 "--out-samples", str(tmp_path / "lmeval.parquet")]) == 0

    records = json.loads((tmp_path / "lmeval.json").read_text())
    assert [(r["step"], r["edits"], r["task"], r["scoring"]) for r in records] == [
        (1, 4, "lmeval:capitals", "choice"), (2, 8, "lmeval:capitals", "choice")]
    assert all({k: r[k] for k in labels} == labels for r in records)
    assert records[0]["metrics"]["acc"] == pytest.approx(edited_acc)
    assert records[1]["metrics"]["acc"] == pytest.approx(base_acc)
    samples = pd.read_parquet(tmp_path / "lmeval.parquet")
    for step, want in ((1, edited_scores), (2, base_scores)):
        got = [[r[0] for r in json.loads(x)] for x in samples.loc[samples["step"] == step, "response"]]
        assert got == [pytest.approx(s, abs=1e-4) for s in want]

    table = build_table([tmp_path / "lmeval.json"])
    rows = table[table["step"] == 1].set_index("metric")
    assert rows["primary"].to_dict() == {"acc": True, "acc_stderr": False}
    assert set(rows["kind"]) == {"general"} and set(rows["task"]) == {"lmeval:capitals"}


@needs_lm_eval
def test_cli_refuses_unknown_tasks_and_missing_data_before_loading_the_model(task_dir, tmp_path, capsys, monkeypatch):
    from lm_eval.tasks import TaskManager

    (task_dir / "capitals_lost.yaml").write_text(
        TASK_YAML.format(name="capitals_lost", data=tmp_path / "absent.jsonl", cache=tmp_path / "hf-cache"))
    # An index of the local tasks stands in for lm-eval's full one (same class, seconds less to build).
    monkeypatch.setattr(lmeval, "task_manager", lambda options: TaskManager(include_path=str(task_dir),
                                                                           include_defaults=False))
    # The model folder does not exist: each command must fail on its task, not on loading the model.
    assert main(["lm-eval", "--model", str(tmp_path / "absent"), "--tasks", "capitals_lost",
                 "--include-path", str(task_dir), "--labels", "{}", "--out-metrics", str(tmp_path / "m.json"),
                 "--out-samples", str(tmp_path / "s.parquet")]) == 1
    err = capsys.readouterr().err
    assert "FileNotFoundError" in err and "absent.jsonl" in err
    assert main(["lm-eval", "--model", str(tmp_path / "absent"), "--tasks", "capitals,capitalz",
                 "--include-path", str(task_dir), "--labels", "{}", "--out-metrics", str(tmp_path / "m.json"),
                 "--out-samples", str(tmp_path / "s.parquet")]) == 1
    err = capsys.readouterr().err
    assert "UnknownLmEvalTask" in err and "close matches: capitals" in err
