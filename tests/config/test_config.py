"""params.yaml validation: defaults filled in, bad input rejected naming the key and what is allowed."""
import copy
import json
from pathlib import Path

import pytest
import yaml
from helpers import place_preset_downloads

from editharm.config.derive import method_hparams, regularizer_params, task_options
from editharm.config.load import ParamsError, load_params, validate_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_params_validate_and_fill_defaults(default):
    cfg = load_params(ROOT / "params.yaml")
    assert cfg["stats"]["max_length"] == 128  # a schema default, absent from params.yaml
    assert cfg["trust_remote_code"] is False
    assert set(cfg["evaluation"]["tasks"]) == {"gsm8k", "rte", "nq", "boolq", "mutual", "samsum", "conll2003", "sst2"}
    assert regularizer_params(cfg, "rect") == {"kind": "rect", "params": {"k": 0.4}}
    assert method_hparams(cfg, "smollm2-135m", "rome")["kind"] == "rome"


@pytest.mark.parametrize("preset", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_paper_presets_validate_and_evaluate_nli_on_the_papers_split(preset, tmp_path, monkeypatch):
    place_preset_downloads(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = load_params(ROOT / "configs" / preset)
    # GLUE RTE train (2,490 pairs) as the RECT paper, generated and parsed as the paper, not RTE dev
    assert cfg["datasets"]["rte_train"] == "real" and "rte" not in cfg["datasets"]
    assert cfg["evaluation"]["tasks"]["rte_train"] == {"scoring": "generate"} and "rte" not in cfg["evaluation"]["tasks"]
    assert len(cfg["evaluation"]["tasks"]) == 8


def _bad(default, mutate):
    cfg = copy.deepcopy(default)
    mutate(cfg)
    with pytest.raises(ParamsError) as err:
        validate_params(cfg)
    return str(err.value)


def test_unknown_top_level_key(default):
    msg = _bad(default, lambda c: c.update(sead=1))
    assert "'sead'" in msg and "allowed" in msg and "seed" in msg


def test_unknown_nested_key(default):
    msg = _bad(default, lambda c: c["evaluation"].update(batchsize=4))
    assert "evaluation.batchsize" in msg and "batch_size" in msg


def test_bad_type(default):
    msg = _bad(default, lambda c: c["evaluation"].update(batch_size="eight"))
    assert "evaluation.batch_size" in msg and "integer" in msg


def test_unknown_method(default):
    msg = _bad(default, lambda c: c["methods"].update(rom={}))
    assert "methods.rom" in msg and "rome" in msg


def test_unknown_regularizer_kind(default):
    msg = _bad(default, lambda c: c["regularizers"].update(top={"kind": "rectt", "k": 0.2}))
    assert "regularizers.top" in msg and "rect" in msg


def test_bad_regularizer_param(default):
    msg = _bad(default, lambda c: c["regularizers"]["rect"].update(k=1.5))
    assert "regularizers.rect" in msg and "k" in msg


def test_unknown_regularizer_param(default):
    msg = _bad(default, lambda c: c["regularizers"]["rect"].update(top=3))
    assert "regularizers.rect" in msg and "'top'" in msg


def test_unknown_task(default):
    msg = _bad(default, lambda c: c["evaluation"]["tasks"].update(sst3={}))
    assert "evaluation.tasks.sst3" in msg and "sst2" in msg


def test_bad_scoring(default):
    msg = _bad(default, lambda c: c["evaluation"]["tasks"].update(rte={"scoring": "vote"}))
    assert "evaluation.tasks.rte.scoring" in msg and "generate" in msg and "choice" in msg


def test_unknown_setting(default):
    msg = _bad(default, lambda c: c["settings"].update(batch_everything={}))
    assert "settings" in msg and "instance_sequential" in msg


def test_unknown_hparam_names_key(default):
    msg = _bad(default, lambda c: c["methods"]["rome"].update(hparams={"layerz": 3}))
    assert "methods.rome.hparams" in msg and "layerz" in msg


def test_steps_beyond_sequence(default):
    msg = _bad(default, lambda c: c.update(steps=[0, 1, 99]))
    assert "'steps'" in msg and "n_edits" in msg


def test_hub_source_must_pin_revision(default):
    msg = _bad(default, lambda c: c["models"]["smollm2-135m"].update(source="hf"))
    assert "models.smollm2-135m.source" in msg


def test_task_options_merge_overrides(default):
    cfg = copy.deepcopy(default)
    cfg["evaluation"]["tasks"]["sst2"] = {"scoring": "generate", "limit": 5}
    opts = task_options(validate_params(cfg), "sst2")
    assert opts["scoring"] == "generate" and opts["limit"] == 5 and opts["batch_size"] == 8


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")


def test_settings_labels_kinds_and_their_keys(default):
    cfg = copy.deepcopy(default)
    cfg["settings"] = {"batch_single": {"batch_sizes": [2, 4]}, "seq4": {"kind": "batch_sequential", "batch_size": 4}}
    from editharm.config.derive import setting_steps

    valid = validate_params(cfg)
    assert setting_steps(valid, "batch_single") == [0, 2, 4]
    assert setting_steps(valid, "seq4") == [0, 1, 4, 16]  # of the global steps 0, 1, 4, 16, 64, 16 batches fit
    msg = _bad(default, lambda c: c["settings"].update(batch_single={}))
    assert "settings.batch_single" in msg and "batch_sizes" in msg
    msg = _bad(default, lambda c: c["settings"].update(b={"kind": "batch_single", "batch_sizes": [99]}))
    assert "settings.b" in msg and "1..64" in msg


def test_a_setting_may_run_only_some_methods(default):
    from editharm.config.derive import setting_methods, setting_spec

    cfg = copy.deepcopy(default)
    cfg["methods"] = {"rome": {}, "memit": {}}
    cfg["settings"] = {"instance_sequential": {"methods": ["rome"]}, "batch_single": {"batch_sizes": [2]}}
    valid = validate_params(cfg)
    assert setting_methods(valid, "instance_sequential") == ["rome"]
    assert setting_methods(valid, "batch_single") == ["rome", "memit"]
    assert setting_spec(valid, "instance_sequential") == {"kind": "instance_sequential"}  # not an edit key
    msg = _bad(default, lambda c: c["settings"].update(instance_sequential={"methods": ["kn"]}))
    assert "settings.instance_sequential.methods" in msg and "['kn']" in msg and "allowed: rome" in msg


def test_trainable_method_needs_its_train_split(default):
    msg = _bad(default, lambda c: c["methods"].update(mend={}))
    assert "methods.mend.train_dataset" in msg and "zsre_train" in msg
    msg = _bad(default, lambda c: c["methods"]["rome"].update(train_dataset="zsre"))
    assert "methods.rome.train_dataset" in msg and "no training step" in msg


def test_statistics_reading_regularizer_needs_named_modules(default):
    msg = _bad(default, lambda c: (c["methods"].update(kn={}), c["regularizers"].update(nullspace={})))
    assert "regularizers.nullspace" in msg and "'kn'" in msg and "list the layers" in msg


def test_easyedit_hparams_file_replaces_the_preset(default, tmp_path):
    (tmp_path / "ROME.yaml").write_text(
        "alg_name: ROME\nmodel_name: gpt2-xl\nlayers: [5]\nfact_token: subject_last\nv_num_grad_steps: 20\n"
        "v_lr: 5e-1\nv_loss_layer: 47\nv_weight_decay: 0.5\nclamp_norm_factor: 4\nkl_factor: 0.0625\n"
        "mom2_adjustment: false\ncontext_template_length_params: [[5, 10], [10, 10]]\n"
        "rewrite_module_tmp: model.layers.{}.mlp.down_proj\n")
    cfg = copy.deepcopy(default)
    cfg["methods"]["rome_ee"] = {"kind": "rome", "easyedit": str(tmp_path / "ROME.yaml"), "hparams": {"v_lr": 0.25}}
    hp = method_hparams(validate_params(cfg), "smollm2-135m", "rome_ee")["hparams"]
    assert hp["layer"] == 5 and hp["v_lr"] == 0.25 and hp["exact_key"] == "prompt"
    msg = _bad(default, lambda c: c["methods"].update(r={"kind": "rome", "easyedit": str(tmp_path / "nope.yaml")}))
    assert "methods.r" in msg and "nope.yaml" in msg


def test_perplexity_probe_params(default, tmp_path, monkeypatch):
    from editharm.config.derive import heldout_args, perplexity_args, perplexity_probe

    cfg = validate_params(default)
    assert perplexity_probe(cfg) == {"texts": 32, "max_tokens": 256, "corpus": default["stats"]["corpus"],
                                     "sha256": default["stats"]["sha256"]}  # null corpus: the statistics corpus
    assert heldout_args(cfg)[:4] == ["--source", default["stats"]["corpus"], "--n", "32"]
    assert perplexity_args(cfg) == ["--max-tokens", "256", "--batch-size", "8"]
    for off in ({"perplexity": None}, {"perplexity": {"texts": 0}}, {}):
        cfg = validate_params({**default, "probes": off})
        assert perplexity_probe(cfg) is None and heldout_args(cfg) == [] and perplexity_args(cfg) == []
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts.txt").write_text("A held-out paragraph.\n")
    own = validate_params({**default, "probes": {"perplexity": {"corpus": "local:texts.txt"}}})
    assert perplexity_probe(own) == {"texts": 64, "max_tokens": 256, "corpus": "local:texts.txt", "sha256": None}


def test_bad_perplexity_probe_params_name_the_key(default):
    msg = _bad(default, lambda c: c["probes"]["perplexity"].update(texts=-1))
    assert "probes.perplexity.texts" in msg and "-1" in msg
    msg = _bad(default, lambda c: c["probes"]["perplexity"].update(max_tokens=1))
    assert "probes.perplexity.max_tokens" in msg
    msg = _bad(default, lambda c: c["probes"]["perplexity"].update(tokens=5))
    assert "probes.perplexity.tokens" in msg and "max_tokens" in msg
    msg = _bad(default, lambda c: c["stats"].pop("corpus"))
    assert "probes.perplexity.corpus" in msg and "stats.corpus" in msg


def test_unsupported_architecture_fails_at_validation_naming_the_supported(default):
    msg = _bad(default, lambda c: c["models"]["smollm2-135m"].update(architecture="bert"))
    assert "models.smollm2-135m.architecture" in msg and "'bert'" in msg and "gptj, llama, mistral" in msg


def test_a_local_model_folder_of_an_unsupported_family_fails_at_validation(default, tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "t5"}')
    msg = _bad(default, lambda c: c["models"]["smollm2-135m"].update(source=f"local:{tmp_path}"))
    assert "models.smollm2-135m.source" in msg and "'t5'" in msg and "allowed: gemma" in msg


def test_a_preset_without_modules_takes_the_declared_architectures(default, tmp_path, monkeypatch):
    import editharm.config.derive as derive

    (tmp_path / "rome.yaml").write_text("layer: 5\n")
    (tmp_path / "mend.yaml").write_text("layers: [5]\n")
    monkeypatch.setattr(derive, "preset_path", lambda kind, preset: tmp_path / f"{kind}.yaml")
    cfg = copy.deepcopy(default)
    cfg["methods"] = {"rome": {}, "mend": {}}
    with pytest.raises(ValueError, match=r"names no rewrite_module_tmp and models.smollm2-135m.architecture is not "
                                         r"set; set it \(allowed: gemma"):
        method_hparams(cfg, "smollm2-135m", "rome")
    cfg["models"]["smollm2-135m"]["architecture"] = "gptj"
    assert method_hparams(cfg, "smollm2-135m", "rome")["hparams"]["rewrite_module_tmp"] == "transformer.h.{}.mlp.fc_out"
    assert method_hparams(cfg, "smollm2-135m", "mend")["hparams"]["rewrite_module_tmps"] == [
        "transformer.h.{}.mlp.fc_in", "transformer.h.{}.mlp.fc_out"]
    # a preset's own templates win over the architecture's
    (tmp_path / "rome.yaml").write_text("layer: 5\nrewrite_module_tmp: transformer.h.{}.mlp.fc_in\n")
    assert method_hparams(cfg, "smollm2-135m", "rome")["hparams"]["rewrite_module_tmp"] == "transformer.h.{}.mlp.fc_in"


def test_a_sequence_may_mix_editing_datasets_by_share(default):
    from editharm.config.derive import edit_dataset_text, sequence_dataset_arg, sequence_datasets

    cfg = copy.deepcopy(default)
    cfg["datasets"]["zsre_train"] = "embedded:demo"
    cfg["sequences"]["dataset"] = {"zsre_train": 0.25, "zsre": 0.75}
    cfg = validate_params(cfg)
    assert sequence_datasets(cfg) == ["zsre_train", "zsre"]  # params order: equal remainders go to the first
    assert sequence_dataset_arg(cfg) == ["zsre_train=0.25", "zsre=0.75"]
    assert edit_dataset_text(cfg) == "zsre_train, share 0.25 (embedded:demo); zsre, share 0.75 (embedded:demo)"
    # one dataset by name, as before
    assert sequence_dataset_arg(validate_params(default)) == "zsre"


@pytest.mark.parametrize("dataset, needles", [
    ({"zsre": 0.5, "zsre_train": -0.5}, ["'sequences.dataset.zsre_train' is -0.5", "allowed: a share above 0"]),
    ({"zsre": 0.5, "sst2": 0.5}, ["'sequences.dataset.sst2'", "unknown editing dataset 'sst2'", "allowed: counterfact"]),
    ({"zsre": 0.5, "knowedit_recent": 0.5}, ["'sequences.dataset.knowedit_recent'", "no source under 'datasets'",
                                             "allowed: zsre, zsre_train", "add 'datasets.knowedit_recent'"]),
    ({"zsre": 0.5, "zsre_train": 0.4}, ["'sequences.dataset'", "sum to 0.9", "allowed: shares that sum to 1"]),
    ({"zsre": 0.5, "zsre_train": 0.5 + 1e-8}, ["sum to 1.00000001"]),
])
def test_bad_mixes_name_the_key_and_what_is_allowed(default, dataset, needles):
    def mix(cfg):
        cfg["datasets"]["zsre_train"] = "embedded:demo"
        cfg["sequences"]["dataset"] = dataset
    msg = _bad(default, mix)
    assert all(needle in msg for needle in needles), msg


def test_an_editor_trained_on_one_dataset_may_edit_another(default, tmp_path, monkeypatch):
    """Cross-domain training: MEND trained on ZsRE's train split edits CounterFact facts."""
    from helpers import dry_run

    monkeypatch.chdir(tmp_path)

    facts = [{"case_id": i, "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": subject,
                                                  "target_new": {"str": "English"}, "target_true": {"str": "French"}},
              "paraphrase_prompts": [f"{subject} is a native speaker of"],
              "neighborhood_prompts": ["The mother tongue of Léon Blum is"]}
             for i, subject in enumerate(["Danielle Darrieux", "Jean Gabin", "Edith Piaf", "Louis Jouvet"])]
    (tmp_path / "counterfact.json").write_text(json.dumps(facts))
    cfg = copy.deepcopy(default)
    cfg["datasets"].update(zsre_train="embedded:demo", counterfact="local:counterfact.json")
    del cfg["datasets"]["zsre"]
    cfg.update(sequences={"dataset": "counterfact", "n_edits": 4, "count": 1}, steps=[0, 1, 4],
               methods={"mend": {"train_dataset": "zsre_train"}}, regularizers={"none": {}})
    (tmp_path / "cross.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    load_params(tmp_path / "cross.yaml", workdir=tmp_path)
    jobs = dry_run(tmp_path, tmp_path / "cross.yaml")
    (train,) = jobs["train_editor"]
    assert "data/datasets/zsre_train" in train and "counterfact" not in train
    (sequence,) = jobs["make_sequence"]
    assert "--records data/datasets/counterfact --dataset counterfact " in sequence
