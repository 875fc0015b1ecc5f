"""Held-out perplexity: the metric is exp(total NLL / total tokens) of a hand computation, every
checkpoint is scored on one loaded model, and the records stay out of the general-ability mean."""
import json
import math

import pandas as pd
import pytest
import torch
from helpers import WORDS, nll_by_hand

from editharm.cli import main
from editharm.evaluation.perplexity import read_heldout, score_heldout
from editharm.model.deltas import applied, save_delta
from editharm.results.aggregate import build_table, general_means
from editharm.results.records import read_metrics, write_metrics

EDITED = "model.layers.1.mlp.down_proj.weight"
LABELS = {"model": "tiny", "method": "rome", "reg": "none", "setting": "instance_sequential", "seq": 0, "demo": False}


@pytest.fixture
def heldout(tmp_path):
    g = torch.Generator().manual_seed(3)
    texts = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(k),), generator=g))
             for k in torch.randint(3, 30, (9,), generator=g)]
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def _expected(model, tok, texts, max_tokens):
    scores = [nll_by_hand(model, tok, t, max_tokens) for t in texts]
    total = sum(s for s, _ in scores) / sum(n for _, n in scores)
    return scores, {"perplexity": math.exp(total), "nll": total}


def test_perplexity_is_exp_of_the_mean_token_nll_by_hand(tiny_llama, heldout):
    model, tok = tiny_llama
    ids, texts = read_heldout(heldout)
    frame, metrics = score_heldout(model, tok, ids, texts, batch_size=4, max_tokens=16)
    scores, want = _expected(model, tok, texts, 16)
    assert list(frame.columns) == ["id", "n_tokens", "nll"] and list(frame["id"]) == ids
    assert list(frame["n_tokens"]) == [n for _, n in scores]
    assert frame["nll"].tolist() == pytest.approx([s for s, _ in scores], rel=1e-5)
    assert metrics == pytest.approx(want, rel=1e-6)


def test_heldout_file_needs_ids_and_texts(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "the city"}\n')
    with pytest.raises(ValueError, match="line 1 lacks 'id'"):
        read_heldout(tmp_path / "bad.jsonl")


def test_cli_scores_base_and_a_delta_on_one_model_and_stays_out_of_the_general_mean(tiny_llama, heldout, tmp_path):
    model, tok = tiny_llama
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    g = torch.Generator().manual_seed(0)
    delta = {EDITED: torch.outer(torch.randn(64, generator=g), torch.randn(128, generator=g))}
    save_delta(tmp_path / "step-1.safetensors", delta, {"step": 1, "edits": 1})
    _, texts = read_heldout(heldout)
    base_scores, base_want = _expected(model, tok, texts, 20)
    with applied(model, delta):
        edited_scores, edited_want = _expected(model, tok, texts, 20)
    assert edited_want["perplexity"] != pytest.approx(base_want["perplexity"], rel=1e-3)  # the ΔW must show

    out = tmp_path / "eval"
    common = ["--model", str(tmp_path / "base"), "--texts", str(heldout), "--max-tokens", "20", "--batch-size", "4",
              "--device", "cpu", "--bootstrap", json.dumps({"resamples": 200, "seed": 0})]
    assert main(["perplexity", *common, "--labels", json.dumps({**LABELS, "method": "base", "setting": "base",
                                                                "step": 0}),
                 "--out-predictions", str(out / "base.parquet"), "--out-metrics", str(out / "base.json")]) == 0
    assert main(["perplexity", *common, "--delta", str(tmp_path / "step-1.safetensors"), "--labels", json.dumps(LABELS),
                 "--out-predictions", str(out / "step-1.parquet"), "--out-metrics", str(out / "step-1.json")]) == 0

    for name, scores, want, step in (("base", base_scores, base_want, 0), ("step-1", edited_scores, edited_want, 1)):
        record = read_metrics(out / f"{name}.json")
        assert (record.task, record.kind, record.primary, record.scoring) == ("perplexity", "probe", "perplexity",
                                                                              "loglikelihood")
        assert (record.step, record.n) == (step, len(texts))
        assert record.metrics == pytest.approx(want, rel=1e-5)
        frame = pd.read_parquet(out / f"{name}.parquet")
        assert frame["nll"].tolist() == pytest.approx([s for s, _ in scores], rel=1e-5)
        assert frame["n_tokens"].tolist() == [n for _, n in scores]

    write_metrics(out / "sst2.json", {**LABELS, "step": 1, "task": "sst2", "metrics": {"accuracy": 0.5}, "n": 4,
                                      "scoring": "choice"})
    table = build_table([out / "base.json", out / "step-1.json", out / "sst2.json"])
    assert set(table.loc[table["task"] == "perplexity", "kind"]) == {"probe"}
    # Both checkpoints resample the same texts: the edited one is paired with the unedited one.
    edited = table[(table["task"] == "perplexity") & (table["metric"] == "perplexity") & (table["step"] == 1)].iloc[0]
    assert edited["delta"] == pytest.approx(edited_want["perplexity"] - base_want["perplexity"], rel=1e-6)
    assert edited["lo"] <= edited["value"] <= edited["hi"] and edited["delta_lo"] <= edited["delta"] <= edited["delta_hi"]
    means = general_means(table)
    assert means["n_tasks"].tolist() == [1] and means["mean_general"].tolist() == [0.5]


def test_one_output_per_checkpoint_is_checked_before_the_model_loads(heldout, tmp_path, capsys):
    assert main(["perplexity", "--model", str(tmp_path / "no-model"), "--texts", str(heldout), "--labels", "{}",
                 "--delta", str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"),
                 "--out-predictions", str(tmp_path / "p.parquet"), "--out-metrics", str(tmp_path / "m.json")]) == 1
    assert "--out-predictions names 1 file(s) for 2 checkpoint(s)" in capsys.readouterr().err


def test_perplexity_replicates_resample_texts_and_take_the_ratio_of_sums():
    from editharm.evaluation.perplexity import replicates
    from editharm.results.uncertainty import Bootstrap

    frame = pd.DataFrame({"id": ["a", "b", "c"], "n_tokens": [10, 30, 20], "nll": [20.0, 30.0, 40.0]})
    boot = Bootstrap(300, seed=1)
    reps = replicates(boot, frame)
    weights = boot.weights("perplexity", ["a", "b", "c"])
    want = (weights @ frame["nll"].to_numpy()) / (weights @ frame["n_tokens"].to_numpy())
    assert reps["nll"] == pytest.approx(want) and reps["perplexity"] == pytest.approx([math.exp(w) for w in want])
    # every resample of texts with one NLL per token gives that same value
    same = replicates(boot, frame.assign(nll=frame["n_tokens"] * 1.5))
    assert set(same["nll"].round(12)) == {1.5}
