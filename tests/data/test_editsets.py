"""Editing datasets mapped to EditRecords: ROME's CounterFact and KnowEdit's layouts, as the releases
write them; bad records fail naming file and record; datasets that are not fact edits are refused."""
import copy
import json
from pathlib import Path

import pytest
import yaml

from editharm.config.load import ParamsError, validate_params
from editharm.core.records import EditRecord
from editharm.data.editsets import load_edit_records
from editharm.data.fetch import fetch_dataset
from editharm.data.sequences import read_sequence, sample_sequence, write_sequence

ROOT = Path(__file__).resolve().parents[2]

COUNTERFACT = {
    "case_id": 7, "pararel_idx": 2796,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "relation_id": "P103",
                          "target_new": {"str": "English", "id": "Q1860"},
                          "target_true": {"str": "French", "id": "Q150"}, "subject": "Danielle Darrieux"},
    "paraphrase_prompts": ["Shayna does this and Yossel goes still. Danielle Darrieux is a native speaker of",
                           "Danielle Darrieux, speaker of"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is", "The native language of Montesquieu is"],
    "attribute_prompts": ["J.R.R. Tolkien is a native speaker of"],
    "generation_prompts": ["Danielle Darrieux's mother tongue is"],
}
RECENT = {
    "subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
    "portability": {
        "Logical_Generalization": [{"prompt": "Is Leo Arons still alive?", "ground_truth": [["no"], ["incorrect"]]}],
        "Reasoning": [{"prompt": "The name of the continent which the place of death of Leo Arons is part of is",
                       "ground_truth": [["Europe", "European continent"]]}],
        "Subject_Aliasing": [{"prompt": "The place of death of Martin Leo Arons is", "ground_truth": [["Berlin"]]}],
    },
    "locality": {"Relation_Specificity": [{"prompt": "The name of the father of Leo Arons is",
                                           "ground_truth": [["Albert Arons"]]}]},
}
WIKI_COUNTERFACT = {
    "subject": "Frederic Piesch", "prompt": "The name of the position held by Frederic Piesch is",
    "target_new": "Archbishop of León, Mexico", "ground_truth": "mayor of Vienna",
    "portability": {"Subject_Aliasing": [{"prompt": "The name of the position held by Frederic of Pieschen is",
                                          "ground_truth": "Archbishop of León, Mexico"}]},
    "locality": {"Forgetfulness": [{"prompt": "The name of the position held by Frederic Piesch, which is not "
                                              "Archbishop of León, Mexico, is", "ground_truth": "mayor of Vienna"}]},
}
KNOWEDIT_ZSRE = {
    "subject": "Epaspidoceras", "target_new": "Noctuidae", "prompt": "Which family does Epaspidoceras belong to?",
    "ground_truth": ["Aspidoceratidae"], "rephrase_prompt": "What family are Epaspidoceras?",
    "cond": "Geometridae >> Noctuidae || Which family does Epaspidoceras belong to?",
    "locality": {"Relation_Specificity": [{"prompt": "The taxon rank of Epaspidoceras is", "ground_truth": ["genus"]}]},
    "portability": {"Reasoning": [{"prompt": "What is the common name for the family Epaspidoceras belongs to?",
                                   "ground_truth": "Owlet moths"}]},
}
WIKIBIO = {
    "text": "This is a Wikipedia passage about john russell reynolds. Sir John Russell Reynolds was a neurologist.",
    "labels": "He was educated at University College, London.", "concept": "john russell reynolds",
    "locality": {"Relation_Specificity": [{"prompt": "The field of work of john russell reynolds is",
                                           "ground_truth": ["medicine"]}]},
}


def write(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def test_counterfact_maps_as_rome_evaluates_it(tmp_path):
    [record] = load_edit_records(write(tmp_path, [COUNTERFACT]), "counterfact")
    assert record == EditRecord(
        id="7", subject="Danielle Darrieux", prompt="The mother tongue of Danielle Darrieux is",
        target_new="English", ground_truth="French",
        rephrase_prompt="Shayna does this and Yossel goes still. Danielle Darrieux is a native speaker of",
        locality_prompt="The mother tongue of Léon Blum is", locality_answer="French",
    )


def test_knowedit_recent_takes_reasoning_portability_and_unnests_answers(tmp_path):
    [record] = load_edit_records(write(tmp_path, [RECENT]), "knowedit_recent")
    assert record == EditRecord(
        id="0", subject="Leo Arons", prompt="The place of death of Leo Arons is", target_new="Berlin",
        ground_truth="", rephrase_prompt="",
        locality_prompt="The name of the father of Leo Arons is", locality_answer="Albert Arons",
        portability_prompt="The name of the continent which the place of death of Leo Arons is part of is",
        portability_answer="Europe",
    )


def test_knowedit_counterfact_zsre_and_wikibio(tmp_path):
    [cf] = load_edit_records(write(tmp_path, [WIKI_COUNTERFACT]), "knowedit_counterfact")
    assert (cf.ground_truth, cf.portability_answer) == ("mayor of Vienna", "Archbishop of León, Mexico")
    assert (cf.locality_prompt, cf.locality_answer) == (  # no Relation_Specificity: Forgetfulness
        "The name of the position held by Frederic Piesch, which is not Archbishop of León, Mexico, is", "mayor of Vienna")
    [zsre] = load_edit_records(write(tmp_path, [KNOWEDIT_ZSRE]), "knowedit_zsre")
    assert (zsre.ground_truth, zsre.rephrase_prompt, zsre.portability_prompt, zsre.portability_answer) == (
        "Aspidoceratidae", "What family are Epaspidoceras?",
        "What is the common name for the family Epaspidoceras belongs to?", "Owlet moths")
    [bio] = load_edit_records(write(tmp_path, [WIKIBIO]), "knowedit_wikibio")
    assert (bio.subject, bio.target_new, bio.locality_answer, bio.portability_prompt) == (
        "john russell reynolds", "He was educated at University College, London.", "medicine", None)


@pytest.mark.parametrize(
    "name, record, message",
    [
        ("counterfact", {**COUNTERFACT, "requested_rewrite": {**COUNTERFACT["requested_rewrite"], "prompt": "X is"}},
         r"record 1: requested_rewrite.prompt 'X is' has no '\{\}' for the subject"),
        ("counterfact", {**COUNTERFACT, "neighborhood_prompts": []},
         r"record 1: field 'neighborhood_prompts' must be a non-empty list of strings"),
        ("counterfact", {k: v for k, v in COUNTERFACT.items() if k != "paraphrase_prompts"},
         r"record 1: missing field\(s\) \['paraphrase_prompts'\]"),
        ("knowedit_recent", {**RECENT, "target_new": [[]]}, r"record 1: field 'target_new' must be a non-empty string"),
        ("knowedit_recent", {**RECENT, "prompt": "Where did he die?"},
         r"record 1: .*subject 'Leo Arons' does not occur in prompt"),
        ("knowedit_recent", {**RECENT, "locality": {"Relation_Specificity": [{"prompt": "p", "ground_truth": [[]]}]}},
         r"record 1: locality.Relation_Specificity\[0\].ground_truth must be a non-empty string"),
    ],
)
def test_bad_records_name_file_and_record(tmp_path, name, record, message):
    good = COUNTERFACT if name == "counterfact" else RECENT
    path = write(tmp_path, [good, record])
    with pytest.raises(ValueError, match=message) as err:
        load_edit_records(path, name)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("name", ["knowedit_convsent", "knowedit_sanitation"])
def test_datasets_that_are_not_fact_edits_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match=rf"dataset '{name}' cannot be used as edits: .*editing datasets: counterfact, "
                                         r"knowedit_counterfact, knowedit_recent, knowedit_wikibio, knowedit_zsre, zsre"):
        load_edit_records(write(tmp_path, [{}]), name)
    cfg = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    cfg["datasets"][name] = "real"
    cfg["sequences"]["dataset"] = name
    with pytest.raises(ParamsError, match=rf"key 'sequences.dataset': dataset '{name}' cannot be used as edits"):
        validate_params(cfg)


def test_a_fetched_editing_dataset_makes_a_sequence(tmp_path):
    records = [copy.deepcopy(RECENT) for _ in range(3)]
    for i, subject in enumerate(["Leo Arons", "Ada Lovelace", "Alan Turing"]):
        records[i]["subject"] = subject
        records[i]["prompt"] = f"The place of death of {subject} is"
    fetch_dataset("knowedit_recent", f"local:{write(tmp_path, records, 'recent_test.json')}", tmp_path / "ke")
    loaded = load_edit_records(tmp_path / "ke")  # the layout comes from the folder's manifest
    seq = sample_sequence(loaded, n_edits=2, seed=0)
    write_sequence(seq, tmp_path / "seq0.parquet", {"seed": 0})
    assert read_sequence(tmp_path / "seq0.parquet").records == seq.records
    assert all(r.portability_answer == "Europe" for r in seq.records)
