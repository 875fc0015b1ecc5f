"""A checkpoint's raw outputs do not depend on what the same job scored before it: scored alone, first or
after others on one loaded model, its choice log-probs and generated texts are bit-identical."""
import json

import pandas as pd
import pytest
import torch

from editharm.cli import main
from editharm.data.catalog import DEMO_DIR
from editharm.model.deltas import save_delta

LABELS = {"model": "tiny", "demo": True, "method": "rome", "reg": "none", "setting": "instance_sequential", "seq": 0}
# Each checkpoint touches the MLP matrices of its own layers, overlapping the others' (layer 1 is in all).
LAYERS = {"a": (0, 1), "b": (1, 2), "c": (1,)}


def _low_rank_deltas(model, layers, seed: int, rank: int = 4, size: float = 0.5) -> dict[str, torch.Tensor]:
    """A random rank-`rank` update of every MLP matrix in `layers`, `size` times the matrix's norm (an edit
    that changes what the tiny model says, as sequential ROME and MEMIT updates do)."""
    g = torch.Generator().manual_seed(seed)
    deltas = {}
    for name, param in model.named_parameters():
        if param.dim() == 2 and ".mlp." in name and any(f".{i}." in name for i in layers):
            m, n = param.shape
            update = torch.randn(m, rank, generator=g) @ torch.randn(rank, n, generator=g)
            deltas[name] = update * (size * param.detach().norm() / update.norm())
    return deltas


@pytest.fixture(params=["tiny_gpt2", "tiny_llama"])
def saved(request, tmp_path):
    """A tiny model saved as a model folder (Conv1D and Linear MLPs) and three ΔW files of it."""
    model, tok = request.getfixturevalue(request.param)
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    for seed, (tag, layers) in enumerate(LAYERS.items()):
        save_delta(tmp_path / f"{tag}.safetensors", _low_rank_deltas(model, layers, seed),
                   {"step": seed + 1, "edits": seed + 1})
    return tmp_path


@pytest.fixture
def two_threads():
    """Two intra-op threads (the job sets them), restored after: parallel kernels are where order could leak in."""
    before = torch.get_num_threads()
    yield 2
    torch.set_num_threads(before)


def _evaluate(folder, tags, out, scoring, threads, *extra) -> list[pd.DataFrame]:
    """`editharm evaluate-task` on SST-2 with the checkpoints `tags`, in that order, in one job."""
    options = {"limit": 16, "batch_size": 4, "scoring": scoring}
    if scoring == "generate":
        options["max_new_tokens"] = 6
    preds = [folder / out / f"{tag}.parquet" for tag in tags]
    args = ["evaluate-task", "--model", str(folder / "model"), "--task", "sst2", "--data", str(DEMO_DIR / "sst2"),
            "--options", json.dumps(options), "--labels", json.dumps(LABELS), "--device", "cpu",
            "--threads", str(threads), *extra, "--delta", *(str(folder / f"{tag}.safetensors") for tag in tags),
            "--out-predictions", *map(str, preds),
            "--out-metrics", *(str(folder / out / f"{tag}.json") for tag in tags)]
    assert main(args) == 0
    return [pd.read_parquet(p) for p in preds]


@pytest.mark.parametrize("scoring", ["choice", "generate"])
def test_a_checkpoint_scores_the_same_alone_first_and_after_others(saved, scoring, two_threads):
    (alone,) = _evaluate(saved, ["c"], "alone", scoring, two_threads)
    *_, last = _evaluate(saved, ["a", "b", "c"], "last", scoring, two_threads, "--cache", str(saved / "cache"))
    first, *_ = _evaluate(saved, ["c", "a", "b"], "first", scoring, two_threads)
    assert list(last["raw"]) == list(alone["raw"]) == list(first["raw"])  # strings: bit for bit
    pd.testing.assert_frame_equal(last, alone, check_exact=True)
    pd.testing.assert_frame_equal(first, alone, check_exact=True)
    # the checkpoints really are told apart: an earlier one's weights would have shown
    a, b = _evaluate(saved, ["a", "b"], "others", scoring, two_threads)
    assert list(a["raw"]) != list(alone["raw"]) and list(b["raw"]) != list(alone["raw"])
