import hashlib
import json
import re

import pytest

from editharm.core.records import EditRecord
from editharm.data.catalog import DATASET_NAMES, DATASETS, DEMO_DIR, dataset_files
from editharm.data.editsets import load_edit_records, locality_prompt
from editharm.data.fetch import FETCHERS, describe_source, fetch_dataset
from editharm.evaluation.tasks import TASKS
from editharm.sources.grammar import kinds_for

TASK_DATASETS = ["gsm8k", "rte", "nq", "boolq", "mutual", "samsum", "conll2003", "sst2"]
EDIT_DATASETS = ["counterfact", "knowedit_zsre", "knowedit_recent", "knowedit_counterfact", "knowedit_wikibio",
                 "knowedit_convsent", "knowedit_sanitation"]


def zsre(**overrides):
    record = {
        "subject": "Danube", "src": "The Danube flows into the", "pred": "Black Sea",
        "rephrase": "The river Danube ends in the", "alt": "Red Sea", "answers": ["Black Sea"],
        "loc": "nq question: who sang hey jude", "loc_ans": "The Beatles",
    }
    record.update(overrides)
    return record


# --- registry and sources ---------------------------------------------------------------------


def test_dataset_and_source_registries():
    assert set(DATASET_NAMES) == set(DATASETS.names()) == {"zsre", "zsre_train", "rte_train", *TASK_DATASETS, *EDIT_DATASETS}
    assert set(FETCHERS.names()) == set(kinds_for("dataset")) == {"embedded", "local", "hf", "url"}


def test_describe_source_without_fetching(tmp_path):
    demo = describe_source("samsum", "embedded:demo")
    assert demo == {
        "name": "samsum", "source": "embedded:demo", "demo": True,
        "licence": "editharm demo data: same licence as the editharm project",
        "attribution": "small hand-written demo items in the SAMSum test release layout; not the real dataset",
    }
    local = describe_source("samsum", f"local:{tmp_path}")
    assert (local["demo"], local["licence"]) == (False, "CC BY-NC-ND 4.0")
    assert "Gliwa" in local["attribution"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if DATASETS.get(n).demo])
def test_fetch_embedded_demo_writes_files_and_manifest(tmp_path, name):
    dest = tmp_path / "data" / name
    manifest = fetch_dataset(name, "embedded:demo", dest)
    assert manifest["name"] == name
    assert manifest["source"] == "embedded:demo"
    assert manifest["demo"] is True
    assert "same licence as the editharm project" in manifest["licence"]
    assert "not the real dataset" in manifest["attribution"]
    assert json.loads((dest / "manifest.json").read_text()) == manifest
    assert manifest["files"], "a dataset has files"
    for entry in manifest["files"]:
        data = (dest / entry["path"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [name]  # no temporary folders left


def test_fetch_replaces_old_folder_as_a_whole(tmp_path):
    dest = tmp_path / "rte"
    dest.mkdir()
    (dest / "stale.tsv").write_text("old")
    fetch_dataset("rte", "embedded:demo", dest)
    assert sorted(p.name for p in dest.iterdir()) == ["dev.tsv", "manifest.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rte"]


def test_failed_fetch_leaves_previous_folder_untouched(tmp_path):
    dest = tmp_path / "rte"
    fetch_dataset("rte", "embedded:demo", dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset 'rte': no file matching 'dev.tsv'"):
        fetch_dataset("rte", f"local:{empty}", dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "rte"]


def test_fetch_local_folder_copies_only_the_layout(tmp_path):
    origin = tmp_path / "glue" / "SST-2"
    origin.mkdir(parents=True)
    (origin / "dev.tsv").write_text("sentence\tlabel\nfine .\t1\n")
    (origin / "train.tsv").write_text("sentence\tlabel\n")
    manifest = fetch_dataset("sst2", f"local:{origin}", tmp_path / "out")
    assert manifest["demo"] is False
    assert manifest["licence"] == DATASETS.get("sst2").licence
    assert [f["path"] for f in manifest["files"]] == ["dev.tsv"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dev.tsv", "manifest.json"]
    assert TASKS.get("sst2").load_items(tmp_path / "out")[0].reference == "positive"


def test_fetch_local_file_and_nested_layout(tmp_path):
    zsre_file = tmp_path / "zsre_mend_eval.json"
    zsre_file.write_text(json.dumps([zsre()]))
    manifest = fetch_dataset("zsre", f"local:{zsre_file}", tmp_path / "zsre")
    assert [f["path"] for f in manifest["files"]] == ["zsre_mend_eval.json"]

    origin = tmp_path / "MuTual" / "data" / "mutual"
    (origin / "dev").mkdir(parents=True)
    for n in (1, 2):
        (origin / "dev" / f"dev_{n}.txt").write_text(json.dumps(
            {"answers": "A", "options": ["a", "b", "c", "d"], "article": "x", "id": f"dev_{n}"}))
    fetch_dataset("mutual", f"local:{origin}", tmp_path / "mutual")
    assert [p.name for p in dataset_files("mutual", tmp_path / "mutual")] == ["dev_1.txt", "dev_2.txt"]


@pytest.mark.parametrize(
    "name, source, error, message",
    [
        ("rte", "demo", ValueError,
         r"dataset source 'demo' for 'rte' must be 'kind:argument' or 'real'; kinds: embedded, hf, local, url"),
        ("rte", "ftp:host/rte", ValueError, r"source 'ftp:host/rte': unknown kind 'ftp'; allowed: embedded, hf, local, url"),
        ("counterfact", "embedded:demo", ValueError, r"dataset 'counterfact' has no embedded demo; datasets with one: "),
        ("zsre_train", "real", ValueError, r"dataset 'zsre_train' has no registered real source; give one: local:"),
        ("rte", "embedded:full", ValueError, r"embedded dataset source 'full' is unknown; allowed: demo"),
        ("rte", "local:/no/such/folder", FileNotFoundError, r"/no/such/folder does not exist"),
        ("imdb", "embedded:demo", KeyError, r"unknown dataset 'imdb'; allowed: boolq, conll2003"),
    ],
)
def test_bad_sources_fail_clearly(tmp_path, name, source, error, message):
    with pytest.raises(error, match=message):
        fetch_dataset(name, source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- ZsRE edit records ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loc, prompt",
    [
        ("nq question: who sang hey jude", "who sang hey jude?"),
        ("nq question: where is the eiffel tower?", "where is the eiffel tower?"),
        ("who wrote hamlet", "who wrote hamlet?"),
    ],
)
def test_locality_prompt(loc, prompt):
    assert locality_prompt(loc) == prompt


def test_load_edit_records_maps_zsre_fields(tmp_path):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([zsre(), zsre(subject="Rhine", src="The Rhine flows into the", answers=["North Sea", "Wadden Sea"])]))
    records = load_edit_records(path)
    assert records[0] == EditRecord(
        id="0", subject="Danube", prompt="The Danube flows into the", target_new="Red Sea",
        ground_truth="Black Sea", rephrase_prompt="The river Danube ends in the",
        locality_prompt="who sang hey jude?", locality_answer="The Beatles",
    )
    assert (records[1].id, records[1].ground_truth) == ("1", "North Sea")
    assert load_edit_records(tmp_path) == records  # a dataset folder holding one file works too


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"alt": None}, r"record 1: field 'alt' must be a non-empty string"),
        ({"answers": []}, r"record 1: field 'answers' must be a non-empty list of strings"),
        ({"src": "Where does the river end?"}, r"record 1: .*subject 'Danube' does not occur in prompt"),
    ],
)
def test_bad_edit_records_name_file_and_record(tmp_path, bad, message):
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps([zsre(), zsre(**bad)]))
    with pytest.raises(ValueError, match=message) as err:
        load_edit_records(path)
    assert str(path) in str(err.value)


def test_edit_record_missing_fields_and_wrong_shapes(tmp_path):
    path = tmp_path / "zsre.json"
    record = zsre()
    del record["loc_ans"]
    path.write_text(json.dumps([record]))
    with pytest.raises(ValueError, match=r"zsre.json, record 0: missing field\(s\) \['loc_ans'\]"):
        load_edit_records(path)
    path.write_text(json.dumps({"data": []}))
    with pytest.raises(ValueError, match=r"zsre.json: expected a JSON list of ZsRE records, got dict"):
        load_edit_records(path)
    (tmp_path / "second.json").write_text("[]")
    with pytest.raises(ValueError, match=r"expected one ZsRE \(editing\) JSON file, found \['second.json', 'zsre.json'\]"):
        load_edit_records(tmp_path)


# --- the embedded demo bundle -----------------------------------------------------------------


def test_demo_zsre_bundle():
    records = load_edit_records(DEMO_DIR / "zsre_demo.json")
    assert len(records) >= 80  # enough distinct records for sequences of 64, and up to 80, edits
    raw = json.loads((DEMO_DIR / "zsre_demo.json").read_text())
    keys = {"subject", "src", "pred", "rephrase", "alt", "answers", "loc", "loc_ans"}
    for rec, edit in zip(raw, records):
        assert set(rec) == keys
        assert edit.target_new != edit.ground_truth
        assert rec["pred"] == rec["answers"][0]
        assert 1 <= len(rec["alt"].split()) <= 3 and 1 <= len(rec["pred"].split()) <= 4  # "J. R. R. Tolkien"
        assert rec["subject"] in rec["src"] and rec["subject"] in rec["rephrase"]
        for prompt in (rec["src"], rec["rephrase"]):  # the prompts end before the answer
            assert not re.search(rf"\b{re.escape(rec['pred'])}\b", prompt)
            assert not re.search(rf"\b{re.escape(rec['alt'])}\b", prompt)
        assert rec["loc"].startswith("nq question: ") and edit.locality_prompt.endswith("?")
    assert len({r.subject for r in records}) == len(records)
    assert len({r.locality_prompt for r in records}) == len(records)
    assert len({(r.prompt, r.target_new) for r in records}) == len(records)


@pytest.mark.parametrize("task", TASK_DATASETS)
def test_demo_task_bundles_have_enough_items(task):
    items = TASKS.get(task).load_items(DEMO_DIR / task)
    per_record = 4 if task == "conll2003" else 1  # CoNLL: one item per entity type and sentence
    assert len(items) >= 24 * per_record
    assert len({it.id for it in items}) == len(items)


@pytest.mark.parametrize("task", ["rte", "boolq", "mutual", "sst2"])
def test_demo_labels_are_balanced(task):
    items = TASKS.get(task).load_items(DEMO_DIR / task)
    counts = [sum(it.reference == label for it in items) for label in TASKS.get(task).labels]
    assert min(counts) >= len(items) // len(counts) - 2


def test_demo_gsm8k_arithmetic_is_right():
    for line in (DEMO_DIR / "gsm8k" / "test.jsonl").read_text().splitlines():
        answer = json.loads(line)["answer"]
        steps = re.findall(r"<<([0-9+\-*/. ]+)=([0-9.]+)>>", answer)
        assert steps
        for expression, result in steps:
            assert eval(expression) == pytest.approx(float(result)), expression  # digits and operators only
        assert float(answer.split("####")[1]) == float(steps[-1][1])


def test_demo_readme_labels_the_data():
    text = (DEMO_DIR / "README.md").read_text()
    assert "hand-written demo data" in text and "not the real datasets" in text
    assert "Licence: the same as the editharm project" in text
