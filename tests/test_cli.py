"""The command line: registered names listed, failures reported in one line naming step, input and cause."""
from editharm.cli import main


def test_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for expected in ("methods:", "rome", "regularizers:", "rect", "tasks:", "sst2", "source kinds:", "pypi",
                     "embedded", "datasets:", "zsre", "architectures", "gptj", "gpt_neox"):
        assert expected in out


def test_failure_names_command_input_and_cause(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text("sead: 1\n")
    log = tmp_path / "job.log"
    assert main(["--log", str(log), "validate", "--params", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "editharm validate failed" in err and "unknown key 'sead'" in err and str(bad) in err
    assert "Traceback" not in err  # the console gets one line; the job log gets the trace
    assert "Traceback" in log.read_text()


def _saved_tiny(tiny_llama, folder):
    model, tok = tiny_llama
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_materialize_writes_base_plus_delta_as_a_full_checkpoint(tiny_llama, tmp_path):
    import json

    import torch
    from safetensors.torch import load_file

    from editharm.model.deltas import delta_layout, save_delta

    model = _saved_tiny(tiny_llama, tmp_path / "base")
    name = "model.layers.1.mlp.down_proj.weight"
    g = torch.Generator().manual_seed(0)
    delta = torch.outer(torch.randn(64, generator=g), torch.randn(128, generator=g))  # rank one: stored factored
    save_delta(tmp_path / "step-1.safetensors", {name: delta}, {"method": "rome", "step": 1})
    assert delta_layout(tmp_path / "step-1.safetensors")[name]["format"] == "lowrank"
    assert main(["materialize", "--model", str(tmp_path / "base"), "--delta", str(tmp_path / "step-1.safetensors"),
                 "--out", str(tmp_path / "edited")]) == 0
    weights = load_file(tmp_path / "edited" / "model.safetensors")
    torch.testing.assert_close(weights[name], model.state_dict()[name] + delta, rtol=0, atol=1e-5)
    untouched = "model.layers.0.mlp.down_proj.weight"
    assert torch.equal(weights[untouched], model.state_dict()[untouched])
    assert json.loads((tmp_path / "edited" / "editharm-delta.json").read_text()) == {"method": "rome", "step": 1}
    assert not list(tmp_path.glob("edited*.tmp*")) and not list((tmp_path / "edited").glob("*.bin"))


def test_editor_commands_refuse_what_cannot_work(tiny_llama, tmp_path, capsys):
    import json

    _saved_tiny(tiny_llama, tmp_path / "base")
    rome = json.dumps({"kind": "rome", "hparams": {"layer": 1, "rewrite_module_tmp": "model.layers.{}.mlp.down_proj"}})
    assert main(["train-editor", "--model", str(tmp_path / "base"), "--method", rome, "--records", str(tmp_path),
                 "--out", str(tmp_path / "editor.safetensors")]) == 1
    assert "'rome' has no training step" in capsys.readouterr().err
    mend = json.dumps({"kind": "mend", "hparams": {"layers": [1], "rewrite_module_tmps": ["model.layers.{}.mlp.down_proj"]}})
    assert main(["apply-edits", "--model", str(tmp_path / "base"), "--sequence", str(tmp_path / "s.parquet"),
                 "--method", mend, "--reg", json.dumps({"kind": "none", "params": {}}),
                 "--setting", json.dumps({"kind": "instance_sequential"}), "--steps", "0,1",
                 "--out", str(tmp_path / "edits" / "step-0.safetensors"), str(tmp_path / "edits" / "step-1.safetensors")]) == 1
    assert "needs a trained editor (--editor)" in capsys.readouterr().err
    assert not (tmp_path / "editor.safetensors").exists() and not (tmp_path / "edits").exists()
