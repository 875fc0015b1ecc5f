"""Real dataset sources offline: Hub files and URLs served from local fixtures, pinned by the lock file;
served formats (Hub parquet, gzipped JSON lines) converted to the layouts the task loaders read."""
import copy
import gzip
import hashlib
import io
import json
import types
import zipfile
from pathlib import Path

import huggingface_hub
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import editharm.sources.url as datasources
from editharm.config.load import ParamsError, validate_params
from editharm.data.catalog import DATASETS, DEMO_DIR, dataset_files
from editharm.data.editsets import load_edit_records
from editharm.data.fetch import describe_source, fetch_dataset
from editharm.data.releaseformat import ReleaseFormatError
from editharm.evaluation.tasks import LOADERS, TASKS
from editharm.sources.grammar import ChecksumError
from editharm.sources.lockfile import SourceLock

C1, C2 = "1" * 40, "2" * 40


def parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def items(name, folder):
    return LOADERS.get(name).read(dataset_files(name, folder))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- served formats -> the original layout ----------------------------------------------------


def test_gsm8k_parquet(tmp_path):
    src = parquet(tmp_path / "test-00000-of-00001.parquet", [
        {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=<<3+4=7>>7\n#### 7"},
        {"question": "Half of 10?", "answer": "10/2=<<10/2=5>>5\n#### 5"},
    ])
    fetch_dataset("gsm8k", f"local:{src}", tmp_path / "out")
    got = items("gsm8k", tmp_path / "out")
    assert [(i.fields["question"], i.reference) for i in got] == [
        ("Tom has 3 apples and buys 4. How many?", "7"), ("Half of 10?", "5")]


def test_rte_and_sst2_parquet_become_glue_tsv(tmp_path):
    rte = parquet(tmp_path / "rte.parquet", [
        {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0},
        {"sentence1": "It rained.", "sentence2": "It was dry.", "label": 1, "idx": 1},
    ])
    fetch_dataset("rte", f"local:{rte}", tmp_path / "rte")
    assert (tmp_path / "rte" / "dev.tsv").read_text().splitlines()[0] == "index\tsentence1\tsentence2\tlabel"
    assert [(i.id, i.fields["sentence2"], i.reference) for i in items("rte", tmp_path / "rte")] == [
        ("0", "An animal sat.", "entailment"), ("1", "It was dry.", "not_entailment")]
    sst2 = parquet(tmp_path / "sst2.parquet", [{"sentence": "a gem . ", "label": 1, "idx": 0},
                                               {"sentence": "dull", "label": 0, "idx": 1}])
    fetch_dataset("sst2", f"local:{sst2}", tmp_path / "sst2")
    assert [(i.fields["text"], i.reference) for i in items("sst2", tmp_path / "sst2")] == [("a gem .", "1"), ("dull", "0")]


def test_boolq_and_samsum_parquet(tmp_path):
    boolq = parquet(tmp_path / "boolq.parquet", [{"question": "is ice cold", "answer": True, "passage": "Ice is cold."}])
    fetch_dataset("boolq", f"local:{boolq}", tmp_path / "boolq")
    [item] = items("boolq", tmp_path / "boolq")
    assert (item.fields["passage"], item.fields["title"], item.reference) == ("Ice is cold.", "", "true")
    samsum = parquet(tmp_path / "samsum.parquet", [{"id": "13862", "dialogue": "A: hi\r\nB: hey", "summary": "They greet."}])
    fetch_dataset("samsum", f"local:{samsum}", tmp_path / "samsum")
    [item] = items("samsum", tmp_path / "samsum")
    assert (item.id, item.fields["dialogue"], item.reference) == ("13862", "A: hi\nB: hey", "They greet.")


def nq_oracle(path, records):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    return path


def test_nq_oracle_passages(tmp_path):
    src = nq_oracle(tmp_path / "nq-open-oracle.jsonl.gz", [{
        "question": "who wrote hamlet", "answers": ["William Shakespeare", "Shakespeare"],
        "ctxs": [{"title": "Hamlet", "text": "Hamlet is a tragedy by William Shakespeare.", "hasanswer": True,
                  "isgold": True}],
        "nq_annotated_gold": {"title": "Hamlet"},
    }])
    fetch_dataset("nq", f"local:{src}", tmp_path / "nq")
    [item] = items("nq", tmp_path / "nq")
    assert item.fields == {"question": "who wrote hamlet", "document": "Hamlet is a tragedy by William Shakespeare."}
    assert item.reference == ["William Shakespeare", "Shakespeare"]


def test_nq_reads_the_reference_evaluations_file_named_test_jsonl(tmp_path):
    # The RECT code's test-OpenDomainQA.jsonl: question, answer (list), output (passages; it uses output[0]).
    record = {"question": "who wrote hamlet", "answer": ["Shakespeare"],
              "output": ["Hamlet is a tragedy by William Shakespeare.", "A second passage."]}
    released = tmp_path / "rect" / "test-OpenDomainQA.jsonl"
    released.parent.mkdir()
    released.write_text(json.dumps(record) + "\n")
    with pytest.raises(ReleaseFormatError, match="no gold passage"):  # another name: read as the oracle format
        fetch_dataset("nq", f"local:{released}", tmp_path / "as-released")
    renamed = released.with_name("test.jsonl")
    released.rename(renamed)
    for source in (renamed, renamed.parent):
        fetch_dataset("nq", f"local:{source}", tmp_path / "nq")
        [item] = TASKS.get("nq").load_items(tmp_path / "nq")
        assert item.fields["document"] == "Hamlet is a tragedy by William Shakespeare."
        assert item.reference == ["Shakespeare"]


@pytest.mark.parametrize(
    "name, rows, message",
    [
        ("rte", [{"sentence1": "a", "sentence2": "b", "label": 0, "idx": 0},
                 {"sentence1": "a", "sentence2": "b", "label": -1, "idx": 1}],
         r"bad.parquet, row 1: label -1 is not one of \[0, 1\] \(entailment, not_entailment\)"),
        ("sst2", [{"sentence": "tab\there", "label": 1}], r"bad.parquet, row 0: column 'sentence' must be a string without tabs"),
        ("gsm8k", [{"question": "q"}], r"bad.parquet: no column\(s\) \['answer'\]"),
        ("boolq", [{"question": "q", "answer": None, "passage": "p"}], r"bad.parquet, row 0: column 'answer' must be true or false"),
    ],
)
def test_bad_served_rows_name_file_and_row(tmp_path, name, rows, message):
    src = parquet(tmp_path / "bad.parquet", rows)
    with pytest.raises(ReleaseFormatError, match=message):
        fetch_dataset(name, f"local:{src}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_nq_without_gold_passage_names_the_line(tmp_path):
    src = nq_oracle(tmp_path / "nq.jsonl.gz", [
        {"question": "q", "answers": ["a"], "ctxs": [{"text": "t", "isgold": True}]},
        {"question": "q2", "answers": ["a"], "ctxs": [{"text": "t", "isgold": False}]},
    ])
    with pytest.raises(ReleaseFormatError, match=r"nq.jsonl.gz, line 2: no gold passage"):
        fetch_dataset("nq", f"local:{src}", tmp_path / "out")


# --- local: for every dataset -----------------------------------------------------------------

KNOWEDIT = {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin"}
EDIT_FIXTURES = {
    "counterfact": [{"case_id": 0, "requested_rewrite": {"prompt": "{} speaks", "subject": "Danielle Darrieux",
                                                         "target_new": {"str": "English"}, "target_true": {"str": "French"}},
                     "paraphrase_prompts": ["Danielle Darrieux's mother tongue is"],
                     "neighborhood_prompts": ["Michel Rocard speaks"]}],
    "knowedit_zsre": [KNOWEDIT], "knowedit_recent": [KNOWEDIT], "knowedit_counterfact": [KNOWEDIT],
    "knowedit_wikibio": [{"concept": "jo", "text": "about jo", "labels": "Jo sang."}],
    "knowedit_convsent": [{"topic": "t"}], "knowedit_sanitation": [{"success": []}],
}


@pytest.mark.parametrize("name", DATASETS.names())
def test_local_source_works_for_every_dataset(tmp_path, name):
    spec = DATASETS.get(name)
    if name in EDIT_FIXTURES:
        origin = tmp_path / "copy" / "release.json"
        origin.parent.mkdir()
        origin.write_text(json.dumps(EDIT_FIXTURES[name]))
    elif name == "rte_train":  # no demo of its own: the RTE demo under the train split's file name
        origin = tmp_path / "copy" / "train.tsv"
        origin.parent.mkdir()
        origin.write_bytes((DEMO_DIR / "rte" / "dev.tsv").read_bytes())
    else:  # the demo bundle is in each dataset's original release layout
        origin = DEMO_DIR / spec.demo
    manifest = fetch_dataset(name, f"local:{origin}", tmp_path / "out")
    assert (manifest["demo"], manifest["licence"], manifest["attribution"]) == (False, spec.licence, spec.attribution)
    assert manifest["files"] and all((tmp_path / "out" / f["path"]).is_file() for f in manifest["files"])


# --- hf: pinned by commit ---------------------------------------------------------------------


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A fake Hub: repo -> commit -> snapshot folder; `heads` says where each branch points."""
    state = types.SimpleNamespace(snapshots={}, heads={}, downloads=[])

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None):
        assert repo_type == "dataset"
        state.downloads.append((repo_id, revision, tuple(allow_patterns)))
        return str(state.snapshots[(repo_id, revision)])

    def dataset_info(self, repo_id, revision=None):
        return types.SimpleNamespace(sha=state.heads[(repo_id, revision)])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)

    def publish(repo, commit, files):
        folder = tmp_path / "hub" / repo / commit
        for path, rows in files.items():
            parquet(folder / path, rows)
        state.snapshots[(repo, commit)] = folder
        return folder

    state.publish = publish
    return state


GLUE_RTE = {"rte/validation-00000-of-00001.parquet": [
    {"sentence1": "A cat sat.", "sentence2": "An animal sat.", "label": 0, "idx": 0}],
    "sst2/validation-00000-of-00001.parquet": [{"sentence": "fine", "label": 1, "idx": 0}]}
SOURCE = "hf:nyu-mll/glue@main#rte/validation-*.parquet"


def test_hub_source_is_locked_on_first_use_and_reused(tmp_path, hub):
    first = hub.publish("nyu-mll/glue", C1, GLUE_RTE)
    hub.heads[("nyu-mll/glue", "main")] = C1
    lock = tmp_path / "datasets.lock.json"
    manifest = fetch_dataset("rte", SOURCE, tmp_path / "rte", lock=lock)
    served = (first / "rte/validation-00000-of-00001.parquet").read_bytes()
    entry = {"source": SOURCE, "commit": C1, "files": {"rte/validation-00000-of-00001.parquet": sha(served)}}
    assert json.loads(lock.read_text()) == {"version": 1, "datasets": {"rte": entry}}
    assert manifest["pinned"] == {k: v for k, v in entry.items() if k != "source"}
    assert hub.downloads == [("nyu-mll/glue", C1, ("rte/validation-*.parquet",))]
    assert [i.reference for i in items("rte", tmp_path / "rte")] == ["entailment"]

    # main moves on; the locked commit is still the one fetched, and the lock file is not rewritten
    hub.publish("nyu-mll/glue", C2, {"rte/validation-00000-of-00001.parquet": [
        {"sentence1": "x", "sentence2": "y", "label": 1, "idx": 0}]})
    hub.heads[("nyu-mll/glue", "main")] = C2
    before = lock.stat().st_mtime_ns
    fetch_dataset("rte", SOURCE, tmp_path / "rte", lock=lock)
    assert hub.downloads[-1][1] == C1
    assert lock.stat().st_mtime_ns == before
    assert [i.reference for i in items("rte", tmp_path / "rte")] == ["entailment"]


def test_rte_train_real_is_the_glue_train_split_pinned_and_labelled(tmp_path, hub):
    # The RECT paper's NLI split: "real" stands for GLUE RTE train, converted to GLUE train.tsv
    assert DATASETS.get("rte_train").real == "hf:nyu-mll/glue@main#rte/train-*.parquet"
    assert DATASETS.get("rte").real == "hf:nyu-mll/glue@main#rte/validation-*.parquet"
    described = describe_source("rte_train", "real")
    assert described["source"] == "hf:nyu-mll/glue@main#rte/train-*.parquet" and not described["demo"]
    assert "train split" in described["attribution"]
    hub.publish("nyu-mll/glue", C1, {**GLUE_RTE, "rte/train-00000-of-00001.parquet": [
        {"sentence1": "It rained.", "sentence2": "It was dry.", "label": 1, "idx": 0},
        {"sentence1": "A dog ran.", "sentence2": "An animal ran.", "label": 0, "idx": 1}]})
    hub.heads[("nyu-mll/glue", "main")] = C1
    lock = tmp_path / "datasets.lock.json"
    manifest = fetch_dataset("rte_train", "real", tmp_path / "rte_train", lock=lock)
    assert hub.downloads == [("nyu-mll/glue", C1, ("rte/train-*.parquet",))]
    assert [f["path"] for f in manifest["files"]] == ["train.tsv"]
    assert manifest["source"] == "hf:nyu-mll/glue@main#rte/train-*.parquet"
    assert list(json.loads(lock.read_text())["datasets"]["rte_train"]["files"]) == ["rte/train-00000-of-00001.parquet"]
    got = TASKS.get("rte_train").load_items(tmp_path / "rte_train")
    assert [(i.id, i.reference) for i in got] == [("0", "False"), ("1", "True")]


def test_hub_checksum_mismatch_fails_and_writes_nothing(tmp_path, hub):
    first = hub.publish("nyu-mll/glue", C1, GLUE_RTE)
    lock = tmp_path / "datasets.lock.json"
    source = f"hf:nyu-mll/glue@{C1}#rte/validation-*.parquet"
    fetch_dataset("rte", source, tmp_path / "rte", lock=lock)
    folder_before = {p.name: p.read_bytes() for p in (tmp_path / "rte").iterdir()}
    lock_before = lock.read_text()
    expected = json.loads(lock_before)["datasets"]["rte"]["files"]["rte/validation-00000-of-00001.parquet"]
    served = parquet(first / "rte/validation-00000-of-00001.parquet",
                     [{"sentence1": "tampered", "sentence2": "b", "label": 1, "idx": 0}])
    message = (rf"dataset 'rte': sha256 mismatch for rte/validation-00000-of-00001.parquet: "
               rf"expected {expected}, got {sha(served.read_bytes())}")
    with pytest.raises(ChecksumError, match=message):
        fetch_dataset("rte", source, tmp_path / "rte", lock=lock)
    assert {p.name: p.read_bytes() for p in (tmp_path / "rte").iterdir()} == folder_before
    assert lock.read_text() == lock_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets.lock.json", "hub", "rte"]


def test_hub_source_needs_files_and_finds_them(tmp_path, hub):
    hub.publish("nyu-mll/glue", C1, GLUE_RTE)
    with pytest.raises(ValueError, match=r"must name files: hf:<repo_id>@<revision>#<path or glob>"):
        fetch_dataset("rte", f"hf:nyu-mll/glue@{C1}", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=rf"no file matching 'qnli/\*.parquet' in nyu-mll/glue@{C1}"):
        fetch_dataset("rte", f"hf:nyu-mll/glue@{C1}#qnli/*.parquet", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_knowedit_from_the_hub_maps_to_edit_records(tmp_path, hub):
    folder = tmp_path / "hub" / "zjunlp/KnowEdit" / C1 / "benchmark" / "wiki_recent"
    folder.mkdir(parents=True)
    (folder / "recent_test.json").write_text(json.dumps([KNOWEDIT]))
    hub.snapshots[("zjunlp/KnowEdit", C1)] = tmp_path / "hub" / "zjunlp/KnowEdit" / C1
    fetch_dataset("knowedit_recent", f"hf:zjunlp/KnowEdit@{C1}#benchmark/wiki_recent/recent_test.json", tmp_path / "ke")
    [record] = load_edit_records(tmp_path / "ke")  # the manifest names the layout
    assert (record.subject, record.target_new, record.rephrase_prompt) == ("Leo Arons", "Berlin", "")


# --- url: sha256 given or trusted on first use ------------------------------------------------


@pytest.fixture()
def web(monkeypatch):
    served = {}

    def urlopen(url, timeout=None):
        return io.BytesIO(served[url])

    monkeypatch.setattr(datasources, "urlopen", urlopen)
    return served


CF_URL = "https://example.org/dsets/counterfact.json"


def test_url_trusted_on_first_use_then_verified(tmp_path, web):
    data = json.dumps(EDIT_FIXTURES["counterfact"]).encode()
    web[CF_URL] = data
    lock = tmp_path / "datasets.lock.json"
    fetch_dataset("counterfact", f"url:{CF_URL}", tmp_path / "cf", lock=lock)
    assert json.loads(lock.read_text())["datasets"]["counterfact"] == {"source": f"url:{CF_URL}", "sha256": sha(data)}
    assert [r.target_new for r in load_edit_records(tmp_path / "cf")] == ["English"]

    web[CF_URL] = data.replace(b"English", b"Klingon")
    before = {p.name: p.read_bytes() for p in (tmp_path / "cf").iterdir()}
    with pytest.raises(ChecksumError, match=rf"sha256 mismatch for {CF_URL}: expected {sha(data)}, got "):
        fetch_dataset("counterfact", f"url:{CF_URL}", tmp_path / "cf", lock=lock)
    assert {p.name: p.read_bytes() for p in (tmp_path / "cf").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cf", "datasets.lock.json"]


def test_url_with_wrong_given_sha256_writes_nothing(tmp_path, web):
    web[CF_URL] = b"[]"
    lock = tmp_path / "datasets.lock.json"
    with pytest.raises(ChecksumError, match=rf"expected {'0' * 64}, got {sha(b'[]')}"):
        fetch_dataset("counterfact", f"url:{CF_URL}#sha256={'0' * 64}", tmp_path / "cf", lock=lock)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "source, message",
    [
        ("url:http://example.org/x.json", r"must be an https:// URL"),
        (f"url:{CF_URL}#md5=abc", r"fragment 'md5=abc': allowed: sha256=<sha256>, member=<member>"),
        (f"url:{CF_URL}#sha256=ABC", r"sha256='ABC' is not 64 lowercase hex digits"),
    ],
)
def test_bad_url_sources(tmp_path, web, source, message):
    with pytest.raises(ValueError, match=message):
        fetch_dataset("counterfact", source, tmp_path / "cf")


def test_real_mutual_source_unpacks_the_dev_folder_of_the_release_zip(tmp_path, web):
    spec = DATASETS.get("mutual")
    url, _, fragment = spec.real[len("url:"):].partition("#")
    member = fragment[len("member="):]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for n in (2, 10, 1):
            zf.writestr(f"{member}/dev_{n}.txt", json.dumps(
                {"answers": "B", "options": ["a", "b", "c", "d"], "article": "f : hi . m : hello .", "id": f"dev_{n}"}))
        zf.writestr(member.replace("/dev", "/train") + "/train_1.txt", "{}")
    web[url] = buffer.getvalue()
    assert describe_source("mutual", "real")["source"] == spec.real
    manifest = fetch_dataset("mutual", "real", tmp_path / "mutual", lock=tmp_path / "datasets.lock.json")
    assert [f["path"] for f in manifest["files"]] == ["dev/dev_1.txt", "dev/dev_2.txt", "dev/dev_10.txt"]
    assert [i.id for i in items("mutual", tmp_path / "mutual")] == ["dev_1", "dev_2", "dev_10"]
    assert json.loads((tmp_path / "datasets.lock.json").read_text())["datasets"]["mutual"]["source"] == spec.real


def test_lock_keeps_every_entry_and_drops_a_stale_source(tmp_path):
    lock = SourceLock(tmp_path / "datasets.lock.json")
    lock.record("rte", {"source": "hf:a@main#x", "commit": C1, "files": {}})
    lock.record("gsm8k", {"source": "url:https://e/x", "sha256": "0" * 64})
    assert list(json.loads(lock.path.read_text())["datasets"]) == ["gsm8k", "rte"]
    assert lock.entry("rte", "hf:a@main#x")["commit"] == C1
    assert lock.entry("rte", "hf:a@v2#x") is None  # a changed source string is pinned afresh


def test_params_accept_real_and_online_sources():
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    good = copy.deepcopy(cfg)
    good["datasets"].update(gsm8k="real", rte=SOURCE, counterfact=f"url:{CF_URL}#sha256={'0' * 64}")
    validate_params(good)
    assert describe_source("gsm8k", "real") == {
        "name": "gsm8k", "source": "hf:openai/gsm8k@main#main/test-*.parquet", "demo": False, "licence": "MIT",
        "attribution": DATASETS.get("gsm8k").attribution}
    bad = copy.deepcopy(cfg)
    bad["datasets"]["gsm8k"] = "realest"
    with pytest.raises(ParamsError, match=r"datasets.gsm8k"):
        validate_params(bad)
