"""ΔW files round-trip with their metadata and are written atomically; `applied` restores exactly; checkpoints reload."""
from __future__ import annotations

import pytest
import torch

from editharm.core import fileio
from editharm.model import deltas as deltas_mod
from editharm.model.deltas import applied, apply_delta, load_delta, save_delta
from editharm.model.loading import load_model, resolve_device

W = "transformer.h.1.mlp.c_proj.weight"


def test_roundtrip_keeps_tensors_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    saved = {
        "a.weight": torch.randn(4, 3, generator=g),
        "b.weight": torch.randn(3, 5, generator=g, dtype=torch.float64).T,  # not contiguous
        "c.weight": torch.randn(2, dtype=torch.bfloat16, generator=g),
    }
    meta = {"method": "rome", "step": 3, "hparams": {"layer": 1, "lr": 0.5, "ctx": [[5, 3]]}, "ids": ["x", "y"],
            "note": None}
    path = tmp_path / "sub" / "step-3.safetensors"
    save_delta(path, saved, meta)
    loaded, loaded_meta = load_delta(path)
    assert loaded_meta == meta
    assert set(loaded) == set(saved)
    for name, tensor in saved.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor)
    assert [p.name for p in path.parent.iterdir()] == ["step-3.safetensors"]  # no temp file left


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    save_delta(path, {"w": torch.ones(2)}, {"version": 1})

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(fileio, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_delta(path, {"w": torch.zeros(2)}, {"version": 2})
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"]
    tensors, meta = load_delta(path)
    assert meta == {"version": 1} and torch.equal(tensors["w"], torch.ones(2))


def test_apply_delta_adds_in_place(tiny_gpt2):
    model, _ = tiny_gpt2
    param = dict(model.named_parameters())[W]
    before = param.detach().clone()
    delta = torch.randn(param.shape, dtype=torch.float64)
    apply_delta(model, {W: delta})
    torch.testing.assert_close(param.detach(), before + delta.float())


def test_apply_delta_rejects_unknown_names_and_shapes(tiny_gpt2):
    model, _ = tiny_gpt2
    with pytest.raises(KeyError, match="no.such.weight"):
        apply_delta(model, {"no.such.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        apply_delta(model, {W: torch.zeros(3, 3)})


def test_applied_restores_bit_identical_weights(tiny_llama):
    model, _ = tiny_llama
    name = "model.layers.1.mlp.down_proj.weight"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # A large ΔW loses the low bits of W: (W + Δ) − Δ != W, so subtracting would not restore.
    delta = torch.full_like(state[name], 1e4) + torch.randn_like(state[name])
    assert not torch.equal((state[name] + delta) - delta, state[name])
    with applied(model, {name: delta}):
        assert not torch.equal(model.state_dict()[name], state[name])
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_applied_restores_after_an_error(tiny_llama):
    model, _ = tiny_llama
    name = "model.layers.0.mlp.down_proj.weight"
    before = model.state_dict()[name].clone()
    with pytest.raises(RuntimeError, match="boom"):
        with applied(model, {name: torch.ones_like(before)}):
            raise RuntimeError("boom")
    assert torch.equal(model.state_dict()[name], before)


def test_materialized_checkpoint_reloads_with_the_edit(tiny_llama, tmp_path):
    model, tok = tiny_llama
    name = "model.layers.1.mlp.down_proj.weight"
    delta = torch.randn_like(model.state_dict()[name])
    apply_delta(model, {name: delta})
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(tmp_path, "cpu", "float32")
    assert not loaded.training and loaded_tok.padding_side == "left"
    assert loaded.config.pad_token_id == loaded_tok.pad_token_id is not None
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_pad_token_falls_back_to_eos(tiny_gpt2, tmp_path):
    model, tok = tiny_gpt2
    tok.pad_token = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    _, loaded_tok = load_model(tmp_path)
    assert loaded_tok.pad_token == loaded_tok.eos_token == "</s>"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="allowed; use auto, cpu, cuda or cuda:N"):
        resolve_device("tpu")
    with pytest.raises(ValueError, match="bfloat8"):
        load_model("unused", dtype="bfloat8")


def _rank(r, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, r, generator=g) @ torch.randn(r, n, generator=g)


@pytest.mark.parametrize("shape", [(64, 96), (96, 64), (40, 300)])
@pytest.mark.parametrize("rank", [1, 3, 8])
def test_low_rank_updates_are_stored_as_factors_and_load_back(tmp_path, shape, rank):
    delta = _rank(rank, *shape)
    path = tmp_path / "d.safetensors"
    save_delta(path, {"w": delta}, {"step": 1})
    layout = deltas_mod.delta_layout(path)["w"]
    assert layout == {"format": "lowrank", "shape": list(shape), "rank": rank}
    back, meta = load_delta(path)
    assert meta == {"step": 1}
    torch.testing.assert_close(back["w"], delta, rtol=1e-5, atol=1e-5 * delta.abs().max().item())
    # the file holds r·(m+n) floats, not m·n
    assert path.stat().st_size < 4 * rank * sum(shape) + 2048


def test_sparse_updates_are_stored_masked_and_load_back_exactly(tmp_path):
    g = torch.Generator().manual_seed(1)
    delta = torch.randn(50, 70, generator=g) * (torch.rand(50, 70, generator=g) < 0.3)
    path = tmp_path / "d.safetensors"
    save_delta(path, {"w": delta}, {})
    assert deltas_mod.delta_layout(path)["w"]["format"] == "masked"
    assert torch.equal(load_delta(path)[0]["w"], delta)
    assert path.stat().st_size < 4 * delta.numel() * 0.5


def test_full_rank_dense_updates_stay_dense_and_zero_stays_small(tmp_path):
    full = torch.randn(30, 30, generator=torch.Generator().manual_seed(2))
    zero = torch.zeros(30, 40)
    path = tmp_path / "d.safetensors"
    save_delta(path, {"full": full, "zero": zero}, {})
    layout = deltas_mod.delta_layout(path)
    assert layout["full"]["format"] == "dense" and layout["zero"]["format"] == "masked"
    back = load_delta(path)[0]
    assert torch.equal(back["full"], full) and torch.equal(back["zero"], zero)


def test_reserved_names_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_delta(tmp_path / "d.safetensors", {"w": torch.ones(2)}, {"layout": 1})
    with pytest.raises(ValueError, match="'::'"):
        save_delta(tmp_path / "d.safetensors", {"w::u": torch.ones(2)}, {})
