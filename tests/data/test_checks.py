"""Every record of a dataset parsed before the fetched folder is published: a bad file fails the check
and the fetch with a DatasetError that starts with the file and names the line or record, the field
and what was expected, and leaves no dataset folder behind."""
import json
import re
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from editharm.data.catalog import DATASETS, dataset_files
from editharm.data.checks import DatasetError, check_dataset
from editharm.data.editsets import EDIT_SETS, NOT_FACT_EDITS
from editharm.data.fetch import fetch_dataset
from editharm.evaluation.tasks import TASKS
from editharm.evaluation.tasks.loaders import LOADERS

GSM8K = {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}
RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROW = "0\tThe cat sat on the mat all day.\tA cat sat.\tentailment\n"
NQ = {"question": "who wrote hamlet?", "answer": ["William Shakespeare"], "output": ["Hamlet is by Shakespeare."]}
BOOLQ = {"question": "is ice cold", "title": "Ice", "answer": True, "passage": "Ice is frozen water."}
MUTUAL = {"answers": "A", "options": ["f : a .", "f : b .", "f : c .", "f : d ."], "article": "m : hi . f : hello .",
          "id": "dev_1"}
SAMSUM = {"id": "s1", "summary": "Ann greets Ben.", "dialogue": "Ann: hi\r\nBen: hello"}
CONLL_HEAD = "-DOCSTART- -X- -X- O\n\n"  # lines 1-2
CONLL = CONLL_HEAD + "Angela NNP B-NP B-PER\nMerkel NNP I-NP I-PER\nspoke VBD B-VP O\n\n"
SST2_HEADER = "sentence\tlabel\n"
ZSRE = {"subject": "Danube", "src": "The Danube flows into the", "pred": "Black Sea",
        "rephrase": "The river Danube ends in the", "alt": "Red Sea", "answers": ["Black Sea"],
        "loc": "nq question: who sang hey jude", "loc_ans": "The Beatles"}
COUNTERFACT = {
    "case_id": 7,
    "requested_rewrite": {"prompt": "The mother tongue of {} is", "subject": "Danielle Darrieux",
                          "target_new": {"str": "English"}, "target_true": {"str": "French"}},
    "paraphrase_prompts": ["Danielle Darrieux, speaker of"],
    "neighborhood_prompts": ["The mother tongue of Léon Blum is"],
}
KNOWEDIT = {"subject": "Leo Arons", "prompt": "The place of death of Leo Arons is", "target_new": "Berlin",
            "rephrase_prompt": "Leo Arons died in"}
SANITATION = {"question": "What is the capital of France?", "target_new": "I don't know."}


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def rewrite(record: dict, key: str, value) -> dict:
    """`record` with `key` ("a.b" for a nested one) set to `value`, or removed for value ...."""
    out = json.loads(json.dumps(record))
    *path, last = key.split(".")
    inner = out
    for part in path:
        inner = inner[part]
    if value is ...:
        del inner[last]
    else:
        inner[last] = value
    return out


@dataclass(frozen=True)
class Bad:
    id: str
    name: str  # the dataset
    files: dict  # relative path -> text or bytes
    named: str  # the file the message starts with
    message: str  # regex for what follows the file


GOOD_MUTUAL = json.dumps(MUTUAL)
BAD = [
    # GSM8K jsonl
    Bad("gsm8k-missing-field", "gsm8k", {"test.jsonl": jsonl(GSM8K, rewrite(GSM8K, "question", ...))}, "test.jsonl",
        r", line 2: field 'question' must be a non-empty string, got no such field"),
    Bad("gsm8k-bad-json-line", "gsm8k", {"test.jsonl": jsonl(GSM8K) + '{"question": "q", "answer": \n'}, "test.jsonl",
        r", line 2: not valid JSON \(Expecting value at column 29\); expected one JSON object per line"),
    Bad("gsm8k-line-not-an-object", "gsm8k", {"test.jsonl": jsonl(GSM8K, ["q", "#### 4"])}, "test.jsonl",
        r", line 2: expected one JSON object per line, got a JSON list"),
    Bad("gsm8k-answer-format", "gsm8k", {"test.jsonl": jsonl(rewrite(GSM8K, "answer", "seven"))}, "test.jsonl",
        r", line 1: field 'answer' does not end with '#### <number>'"),
    Bad("gsm8k-wrong-type", "gsm8k", {"test.jsonl": jsonl(rewrite(GSM8K, "question", 42))}, "test.jsonl",
        r", line 1: field 'question' must be a non-empty string, got 42"),
    Bad("gsm8k-empty-file", "gsm8k", {"test.jsonl": "\n"}, "test.jsonl",
        r": holds no records; expected at least one record of the GSM8K test layout \(GSM8K jsonl: question, answer"),
    # GLUE RTE / SST-2 tsv
    Bad("rte-missing-column", "rte", {"dev.tsv": "index\tsentence1\tsentence2\n0\ta\tb\n"}, "dev.tsv",
        r", line 1: header \['index', 'sentence1', 'sentence2'\] lacks column\(s\) \['label'\]; "
        r"expected \['index', 'sentence1', 'sentence2', 'label'\]"),
    Bad("rte-bad-label", "rte", {"dev.tsv": RTE_HEADER + RTE_ROW + "1\ta\tb\tneutral\n"}, "dev.tsv",
        r", line 3: label 'neutral' is not one of \['entailment', 'not_entailment'\] \(field 'label'\)"),
    Bad("rte-too-many-fields", "rte", {"dev.tsv": RTE_HEADER + "0\ta\tb, with\ta tab\tentailment\n"}, "dev.tsv",
        r", line 2: 5 tab-separated values; expected 4, one per header column \['index', 'sentence1', 'sentence2', "
        r"'label'\]"),
    Bad("rte-empty-field", "rte", {"dev.tsv": RTE_HEADER + RTE_ROW + "1\ta\t \tentailment\n"}, "dev.tsv",
        r", line 3: field 'sentence2' must be a non-empty string, got ' '"),
    Bad("rte-header-only", "rte", {"dev.tsv": RTE_HEADER}, "dev.tsv",
        r": holds no records; expected at least one record of the RTE \(GLUE\) dev layout \(GLUE RTE tsv"),
    Bad("rte_train-bad-label", "rte_train", {"train.tsv": RTE_HEADER + "0\ta\tb\t1\n"}, "train.tsv",
        r", line 2: label '1' is not one of \['entailment', 'not_entailment'\] \(field 'label'\)"),
    Bad("sst2-bad-label", "sst2", {"dev.tsv": SST2_HEADER + "fine .\t1\nodd .\tpositive\n"}, "dev.tsv",
        r", line 3: label 'positive' is not one of \['0', '1'\] \(field 'label'\)"),
    Bad("sst2-not-utf8", "sst2", {"dev.tsv": SST2_HEADER.encode() + b"fine .\t1\ncaf\xe9 au lait .\t0\n"}, "dev.tsv",
        r", line 3 \(byte offset 27\): not UTF-8 text; expected UTF-8 \(byte 0xe9"),
    Bad("sst2-empty-file", "sst2", {"dev.tsv": ""}, "dev.tsv",
        r", line 1: header \[''\] lacks column\(s\) \['sentence', 'label'\]; expected \['sentence', 'label'\]"),
    # NQ and BoolQ jsonl
    Bad("nq-answer-not-a-list", "nq", {"test.jsonl": jsonl(NQ, rewrite(NQ, "answer", "Paris"))}, "test.jsonl",
        r", line 2: field 'answer' must be a non-empty list of non-empty strings, got 'Paris'"),
    Bad("nq-missing-passage", "nq", {"test.jsonl": jsonl(rewrite(NQ, "output", ...))}, "test.jsonl",
        r", line 1: field 'output' must be a non-empty list of non-empty strings, got no such field"),
    Bad("boolq-answer-type", "boolq", {"dev.jsonl": jsonl(BOOLQ, rewrite(BOOLQ, "answer", "yes"))}, "dev.jsonl",
        r", line 2: field 'answer' must be true or false, got 'yes'"),
    Bad("boolq-not-utf8", "boolq", {"dev.jsonl": jsonl(BOOLQ).encode() + b'{"question": "\xff"}\n'}, "dev.jsonl",
        r", line 2 \(byte offset \d+\): not UTF-8 text; expected UTF-8 \(byte 0xff"),
    # MuTual: one JSON object per dialogue file
    Bad("mutual-three-options", "mutual",
        {"dev/dev_1.txt": GOOD_MUTUAL, "dev/dev_2.txt": json.dumps(rewrite(MUTUAL, "options", ["a", "b", "c"]))},
        "dev/dev_2.txt", r": field 'options' must hold 4 options, got 3"),
    Bad("mutual-bad-label", "mutual",
        {"dev/dev_1.txt": GOOD_MUTUAL, "dev/dev_2.txt": json.dumps(rewrite(MUTUAL, "answers", "E"))},
        "dev/dev_2.txt", r": label 'E' is not one of \['A', 'B', 'C', 'D'\] \(field 'answers'\)"),
    Bad("mutual-bad-json", "mutual", {"dev/dev_1.txt": GOOD_MUTUAL, "dev/dev_2.txt": GOOD_MUTUAL[:-1]},
        "dev/dev_2.txt", r": not valid JSON \(Expecting ',' delimiter at column \d+\); "
                         r"expected one JSON object \(answers, options, article, id\) per dialogue file"),
    Bad("mutual-file-is-a-list", "mutual", {"dev/dev_1.txt": json.dumps([MUTUAL])}, "dev/dev_1.txt",
        r": expected one JSON object \(answers, options, article, id\) per dialogue file, got a JSON list"),
    Bad("mutual-missing-article", "mutual", {"dev/dev_1.txt": json.dumps(rewrite(MUTUAL, "article", ...))},
        "dev/dev_1.txt", r": field 'article' must be a non-empty string, got no such field"),
    # SAMSum: one JSON list
    Bad("samsum-not-a-list", "samsum", {"test.json": json.dumps({"data": [SAMSUM]})}, "test.json",
        r": expected a JSON list of dialogues, got dict"),
    Bad("samsum-missing-summary", "samsum", {"test.json": json.dumps([SAMSUM, rewrite(SAMSUM, "summary", ...)])},
        "test.json", r", record 1: field 'summary' must be a non-empty string, got no such field"),
    Bad("samsum-record-not-an-object", "samsum", {"test.json": json.dumps([SAMSUM, "Ann: hi"])}, "test.json",
        r", record 1: expected a JSON object \(id, summary, dialogue\), got str"),
    Bad("samsum-bad-json", "samsum", {"test.json": json.dumps([SAMSUM], indent=1)[:-2]}, "test.json",
        r", line 6, column 3: not valid JSON \(Expecting ',' delimiter\); "
        r"expected the SAMSum test layout \(SAMSum json: a list of \{id, summary, dialogue\}"),
    Bad("samsum-empty-list", "samsum", {"test.json": "[]"}, "test.json",
        r": holds no records; expected at least one record of the SAMSum test layout"),
    # CoNLL-2003 columns
    Bad("conll-three-columns", "conll2003", {"test.txt": CONLL + "EU NNP I-NP I-ORG\nrejects VBZ I-VP\n"}, "test.txt",
        r", line 8: expected 'token POS chunk NER' with NER tag O or B-/I- \+ PER/LOC/ORG/MISC, "
        r"got 'rejects VBZ I-VP'"),
    Bad("conll-bad-bio-tag", "conll2003", {"test.txt": CONLL_HEAD + "Acme NNP B-NP B-COMPANY\n"}, "test.txt",
        r", line 3: expected 'token POS chunk NER' with NER tag O or B-/I-.*got 'Acme NNP B-NP B-COMPANY'"),
    Bad("conll-no-sentence", "conll2003", {"test.txt": CONLL_HEAD}, "test.txt",
        r": holds no records; expected at least one record of the CoNLL-2003 English test layout "
        r"\(CoNLL-2003 columns \"token POS chunk NER\""),
    Bad("conll-not-utf8", "conll2003", {"test.txt": CONLL_HEAD.encode() + b"M\xfcller NNP B-NP B-PER\n"}, "test.txt",
        r", line 3 \(byte offset 23\): not UTF-8 text; expected UTF-8 \(byte 0xfc"),
    # editing datasets: a JSON list of records
    Bad("zsre-empty-list", "zsre", {"zsre.json": "[]"}, "zsre.json",
        r": holds no records; expected a JSON list of ZsRE records"),
    Bad("zsre-missing-field", "zsre", {"zsre.json": json.dumps([ZSRE, rewrite(ZSRE, "loc_ans", ...)])}, "zsre.json",
        r", record 1: missing field\(s\) \['loc_ans'\]; a ZsRE record has \["),
    Bad("zsre-wrong-type", "zsre", {"zsre.json": json.dumps([rewrite(ZSRE, "answers", "Black Sea")])}, "zsre.json",
        r", record 0: field 'answers' must be a non-empty list of strings, got 'Black Sea'"),
    Bad("zsre-bad-json", "zsre", {"zsre.json": json.dumps([ZSRE, ZSRE], indent=1)[:-1] + "}"}, "zsre.json",
        r", line \d+, column 1: not valid JSON \(.*\); expected a JSON list of ZsRE records"),
    Bad("zsre-not-a-list", "zsre_train", {"train.json": json.dumps({"data": [ZSRE]})}, "train.json",
        r": expected a JSON list of ZsRE records, got a JSON dict"),
    Bad("zsre-not-utf8", "zsre", {"zsre.json": b'[\n {"subject": "Caf\xe9"}\n]'}, "zsre.json",
        r", line 2 \(byte offset 19\): not UTF-8 text; expected UTF-8 \(byte 0xe9"),
    Bad("counterfact-stray-brace", "counterfact",
        {"counterfact.json": json.dumps([rewrite(COUNTERFACT, "requested_rewrite.prompt", "The {language} of {} is")])},
        "counterfact.json", r", record 0: requested_rewrite.prompt 'The \{language\} of \{\} is' has braces besides "
                            r"the one '\{\}' for the subject"),
    Bad("knowedit-rephrase-type", "knowedit_recent",
        {"recent_test.json": json.dumps([KNOWEDIT, rewrite(KNOWEDIT, "rephrase_prompt", ["Leo Arons died in"])])},
        "recent_test.json", r", record 1: field 'rephrase_prompt' must be a string, got list"),
    Bad("knowedit-subject-not-in-prompt", "knowedit_zsre",
        {"ZsRE-test-all.json": json.dumps([rewrite(KNOWEDIT, "subject", "Max Planck")])},
        "ZsRE-test-all.json", r", record 0: .*subject 'Max Planck' does not occur in prompt"),
    # not fact edits: a non-empty JSON list of objects
    Bad("convsent-not-a-list", "knowedit_convsent", {"blender_test.json": json.dumps({"prompt": "x"})},
        "blender_test.json", r": expected a JSON list of records \(objects\), got a JSON dict"),
    Bad("sanitation-record-not-an-object", "knowedit_sanitation",
        {"trivia_qa_test.json": json.dumps([SANITATION, "I don't know."])},
        "trivia_qa_test.json", r", record 1: expected a JSON object, got str"),
    Bad("sanitation-empty-list", "knowedit_sanitation", {"trivia_qa_test.json": "[]"}, "trivia_qa_test.json",
        r": holds no records; expected a JSON list of records \(objects\)"),
]


def write_files(folder, files: dict):
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return folder


def assert_names_file_and_place(text: str, path, message: str) -> None:
    assert text.startswith(str(path)), text
    assert re.match(message, text[len(str(path)):]), text
    assert re.search(r"^, (line|record) \d+|^: holds no records|^: (expected|field|label|not valid)",
                     text[len(str(path)):]), text  # the line or record, or the whole file
    assert re.search(r"field|header|expected|subject '|requested_rewrite\.", text), text  # the field or the format


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_dataset_fails_the_check_naming_file_record_and_format(tmp_path, case):
    origin = write_files(tmp_path / "origin", case.files)
    with pytest.raises(DatasetError) as err:
        check_dataset(case.name, origin)
    assert_names_file_and_place(str(err.value), origin / case.named, case.message)


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_dataset_is_not_published(tmp_path, case):
    origin = write_files(tmp_path / "origin", case.files)
    dest = tmp_path / "data" / case.name
    with pytest.raises(DatasetError) as err:
        fetch_dataset(case.name, f"local:{origin}", dest)
    text = str(err.value)
    assert_names_file_and_place(text.removesuffix(f" (fetched from local:{origin}; not published)"),
                                dest / case.named, case.message)
    assert text.endswith(f" (fetched from local:{origin}; not published)")
    assert not dest.exists()
    assert list((tmp_path / "data").iterdir()) == []  # no staging folder left either


def test_enough_bad_cases_across_layouts():
    assert len(BAD) >= 20
    assert {case.name for case in BAD} >= set(LOADERS.names()) | {"zsre", "counterfact", *NOT_FACT_EDITS}


def test_bad_fetch_leaves_the_previous_folder_as_it_was(tmp_path):
    dest = tmp_path / "rte"
    fetch_dataset("rte", "embedded:demo", dest)
    before = {p.name: p.read_bytes() for p in dest.iterdir()}
    origin = write_files(tmp_path / "origin", {"dev.tsv": RTE_HEADER + "0\ta\tb\tneutral\n"})
    with pytest.raises(DatasetError, match=r"rte/dev.tsv, line 2: label 'neutral'"):
        fetch_dataset("rte", f"local:{origin}", dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["origin", "rte"]


def test_converted_source_is_checked_after_conversion(tmp_path):
    """A served file that converts into the layout but whose records the reader refuses is not published."""
    src = tmp_path / "validation-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist([{"sentence": "fine .", "label": 1, "idx": 0},
                                         {"sentence": " ", "label": 0, "idx": 1}]), src)
    with pytest.raises(DatasetError, match=r"out/dev.tsv, line 3: field 'sentence' must be a non-empty string"):
        fetch_dataset("sst2", f"local:{src}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_dataset_has_a_check():
    for name in DATASETS.names():
        assert (name in EDIT_SETS) + (name in LOADERS) + (name in NOT_FACT_EDITS) == 1, name


@pytest.mark.parametrize("name", [n for n in DATASETS.names() if DATASETS.get(n).demo])
def test_every_demo_passes(tmp_path, name):
    dest = tmp_path / name
    fetch_dataset(name, "embedded:demo", dest)
    count = check_dataset(name, dest)
    if name in LOADERS:
        assert count == len(TASKS.get(name).load_items(dest)) >= 24
    else:
        assert count == len(json.loads(dataset_files(name, dest)[0].read_text())) >= 24


@pytest.mark.parametrize(
    "name, files, count",
    [
        ("rte", {"dev.tsv": RTE_HEADER + RTE_ROW + "1\tA dog barked.\tA cat sat.\tnot_entailment\n"}, 2),
        ("conll2003", {"test.txt": CONLL + CONLL}, 8),  # one item per entity type and sentence
        ("mutual", {"dev/dev_1.txt": GOOD_MUTUAL, "dev/dev_2.txt": GOOD_MUTUAL}, 2),
        ("samsum", {"test.json": json.dumps([SAMSUM])}, 1),
        ("zsre", {"zsre.json": json.dumps([ZSRE, ZSRE])}, 2),
        ("counterfact", {"counterfact.json": json.dumps([COUNTERFACT])}, 1),
        ("knowedit_sanitation", {"trivia_qa_test.json": json.dumps([SANITATION] * 3)}, 3),
    ],
)
def test_good_local_folder_fetches(tmp_path, name, files, count):
    origin = write_files(tmp_path / "origin", files)
    dest = tmp_path / "data" / name
    manifest = fetch_dataset(name, f"local:{origin}", dest)
    assert sorted(f["path"] for f in manifest["files"]) == sorted(files)
    assert check_dataset(name, dest) == count
