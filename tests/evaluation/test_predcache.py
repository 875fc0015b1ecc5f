"""Evaluating several checkpoints on one loaded model, and the per-example prediction cache."""
import json

import pandas as pd
import pytest
import torch

from editharm.cli import main
from editharm.core.fileio import SOURCE_MANIFEST
from editharm.data.catalog import DEMO_DIR
from editharm.evaluation import general as evaluation
from editharm.evaluation.predcache import (
    EMPTY_DELTA,
    PredictionCache,
    delta_key,
    model_key,
)
from editharm.evaluation.tasks import TASKS
from editharm.model.deltas import save_delta

NAME = "model.layers.1.mlp.down_proj.weight"


@pytest.fixture
def saved(tiny_llama, tmp_path):
    """The tiny Llama saved as a model folder, and two ΔW files of it: a mild and a strong edit."""
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    g = torch.Generator().manual_seed(1)
    u, v = torch.randn(64, generator=g), torch.randn(128, generator=g)
    for step, scale in ((1, 0.3), (2, 3.0)):
        save_delta(tmp_path / f"step-{step}.safetensors", {NAME: scale * torch.outer(u, v)},
                   {"step": step, "edits": step, "method": "rome"})
    return tmp_path


def evaluate(folder, task, deltas, tag, *extra):
    out = folder / tag
    n = max(len(deltas), 1)
    preds = [out / f"{i}.parquet" for i in range(n)]
    metrics = [out / f"{i}.json" for i in range(n)]
    labels = {"model": "tiny", "demo": True, "method": "rome", "reg": "none", "setting": "instance_sequential", "seq": 0}
    if not deltas:
        labels.update(method="base", setting="base", step=0)
    args = ["evaluate-task", "--model", str(folder / "model"), "--task", task, "--data", str(DEMO_DIR / TASKS.get(task).dataset),
            "--options", json.dumps({"limit": 6, "batch_size": 4}), "--labels", json.dumps(labels),
            "--device", "cpu", "--threads", "1", *extra]
    if deltas:
        args += ["--delta", *map(str, deltas)]
    assert main(args + ["--out-predictions", *map(str, preds), "--out-metrics", *map(str, metrics)]) == 0
    return [pd.read_parquet(p) for p in preds], [json.loads(m.read_text()) for m in metrics]


def test_delta_key_follows_the_tensors_not_the_file_metadata(tmp_path):
    delta = {NAME: torch.arange(6.0).reshape(2, 3)}
    save_delta(tmp_path / "a.safetensors", delta, {"method": "rome", "step": 1})
    save_delta(tmp_path / "b.safetensors", delta, {"method": "memit", "step": 4, "setting": "x"})
    save_delta(tmp_path / "c.safetensors", {NAME: delta[NAME] + 1e-3}, {"method": "rome", "step": 1})
    save_delta(tmp_path / "empty.safetensors", {}, {"step": 0})
    assert delta_key(tmp_path / "a.safetensors") == delta_key(tmp_path / "b.safetensors")
    assert delta_key(tmp_path / "a.safetensors") != delta_key(tmp_path / "c.safetensors")
    assert delta_key(tmp_path / "empty.safetensors") == delta_key(None) == EMPTY_DELTA


def test_model_key_reads_the_manifest_checksums_and_the_dtype(saved):
    folder = saved / "model"
    hashed = model_key(folder, "float32", "cpu")  # no manifest: every file hashed here
    assert model_key(folder, "bfloat16", "cpu") != hashed
    (folder / SOURCE_MANIFEST).write_text(json.dumps({"source": "local:x", "files": {"model.safetensors": "ab" * 32}}))
    from_manifest = model_key(folder, "float32", "cpu")
    assert from_manifest != hashed
    (folder / SOURCE_MANIFEST).write_text(json.dumps({"source": "local:y", "files": {"model.safetensors": "ab" * 32}}))
    assert model_key(folder, "float32", "cpu") == from_manifest  # the files decide, not where they came from


@pytest.mark.parametrize("task", ["sst2", "gsm8k"])  # choice and generate scoring
def test_checkpoints_in_one_job_equal_one_load_per_checkpoint(saved, task):
    deltas = [saved / "step-1.safetensors", saved / "step-2.safetensors"]
    together, together_metrics = evaluate(saved, task, deltas, "together")
    for i, delta in enumerate(deltas):
        (alone,), (alone_metrics,) = evaluate(saved, task, [delta], f"alone-{i}")
        pd.testing.assert_frame_equal(together[i], alone)
        assert together_metrics[i] == alone_metrics
    assert [m["step"] for m in together_metrics] == [1, 2] and [m["edits"] for m in together_metrics] == [1, 2]
    # the strong edit changes what the model says, so the checkpoints really were told apart
    assert list(together[0]["raw"]) != list(together[1]["raw"])
    (base,), _ = evaluate(saved, task, [], "base")
    assert list(base["raw"]) != list(together[1]["raw"])


def test_cached_predictions_are_not_decoded_again(saved, monkeypatch):
    deltas = [saved / "step-1.safetensors", saved / "step-2.safetensors"]
    cache = saved / "cache"
    first, first_metrics = evaluate(saved, "gsm8k", deltas, "first", "--cache", str(cache))

    def must_not_decode(*args, **kwargs):
        raise AssertionError("an item in the cache was decoded again")

    monkeypatch.setattr(evaluation, "greedy_generate", must_not_decode)
    again, again_metrics = evaluate(saved, "gsm8k", deltas, "again", "--cache", str(cache))
    for a, b in zip(first, again):
        pd.testing.assert_frame_equal(a, b)
    assert first_metrics == again_metrics
    # The same ΔW written by another configuration (other metadata) is the same cache entry.
    copy = saved / "other-config.safetensors"
    save_delta(copy, {NAME: _tensor(deltas[1])}, {"step": 7, "method": "memit"})
    (other,), _ = evaluate(saved, "gsm8k", [copy], "other", "--cache", str(cache))
    pd.testing.assert_frame_equal(other, first[1])


def test_outputs_are_reused_only_for_the_same_batches(tiny_llama, tmp_path, monkeypatch):
    """A row's output depends (by float rounding) on what it is batched with, so the cache serves a job
    only the outputs of the same items in the same batches: never a mix of two batchings."""
    model, tok = tiny_llama
    task = TASKS.get("gsm8k")
    items = task.load_items(DEMO_DIR / "gsm8k", limit=5)
    cache = PredictionCache(tmp_path, "m").at(EMPTY_DELTA)
    decoded = []
    real = evaluation.greedy_generate

    def counting(model, tok, prompts, **kwargs):
        decoded.extend(prompts)
        return real(model, tok, prompts, **kwargs)

    monkeypatch.setattr(evaluation, "greedy_generate", counting)
    small, _ = evaluation.evaluate_task(model, tok, task, items[:3], batch_size=2, cache=cache)
    assert len(decoded) == 3
    again, _ = evaluation.evaluate_task(model, tok, task, items[:3], batch_size=2, cache=cache)
    assert len(decoded) == 3  # the same job again: nothing decoded
    pd.testing.assert_frame_equal(again, small)
    full, _ = evaluation.evaluate_task(model, tok, task, items, batch_size=2, cache=cache)
    assert decoded[3:] == [task.render(item) for item in items]  # other batches: every item decoded
    fresh, _ = evaluation.evaluate_task(model, tok, task, items, batch_size=2)
    assert full["raw"].tolist() == fresh["raw"].tolist()
    evaluation.evaluate_task(model, tok, task, items[:3], batch_size=3, cache=cache)
    assert len(decoded) == 16  # another batch size: decoded again (5 of the uncached run above)
    # another token limit is another decoding: nothing is reused across it
    shorter = task.with_options(max_new_tokens=task.max_new_tokens - 1)
    evaluation.evaluate_task(model, tok, shorter, items[:3], batch_size=2, cache=cache)
    assert len(decoded) == 19


def test_mismatched_outputs_fail_before_the_model_loads(saved, capsys):
    args = ["evaluate-task", "--model", str(saved / "missing-model"), "--task", "sst2", "--data", str(DEMO_DIR / "sst2"),
            "--labels", "{}", "--delta", str(saved / "step-1.safetensors"), str(saved / "step-2.safetensors"),
            "--out-predictions", str(saved / "p.parquet"), "--out-metrics", str(saved / "m.json")]
    assert main(args) == 1
    assert "--out-predictions names 1 file(s) for 2 checkpoint(s)" in capsys.readouterr().err


def _tensor(path):
    from editharm.model.deltas import load_delta

    return load_delta(path)[0][NAME]
