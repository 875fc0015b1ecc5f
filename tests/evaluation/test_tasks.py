import json
from pathlib import Path

import pytest

from editharm.evaluation.tasks import TASKS, Item, Task, load_task_file
from editharm.evaluation.tasks.loaders import RecordError

TASK_NAMES = {"gsm8k", "rte", "nq", "boolq", "mutual", "samsum", "conll2003", "sst2"}
VARIANTS = {"gsm8k_hint_leak": "gsm8k", "conll2003_recall_compat": "conll2003"}
SPLITS = {"rte_train": "rte"}  # the same task on another split of its dataset


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# --- registry ---------------------------------------------------------------------------------


def test_registry_holds_the_eight_tasks_and_labelled_variants():
    assert set(TASKS.names()) == TASK_NAMES | set(VARIANTS) | set(SPLITS)
    for name, base in VARIANTS.items():
        task = TASKS.get(name)
        assert task.variant_of == base
        assert "compatibility" in task.title and "ompatibility" in task.description
    assert all(TASKS.get(n).variant_of is None for n in TASK_NAMES)


def test_scoring_defaults():
    assert {n for n in TASK_NAMES if TASKS.get(n).scoring == "choice"} == {"rte", "boolq", "mutual", "sst2"}
    assert TASKS.get("gsm8k").max_new_tokens == 48
    assert TASKS.get("conll2003").stop == ["\n"]


@pytest.mark.parametrize("name", ["rte", "boolq", "mutual", "sst2"])
def test_choice_tasks_also_run_in_generate_mode(name):
    task = TASKS.get(name).with_options(scoring="generate")
    assert task.scoring == "generate"
    for choice in task.choices:  # a generated choice word parses to its label
        assert task.parse(choice + ".\n") == choice.strip()


def test_with_options_overrides_and_validates():
    task = TASKS.get("nq").with_options(max_new_tokens=20)
    assert (task.max_new_tokens, TASKS.get("nq").max_new_tokens) == (20, 12)
    with pytest.raises(ValueError, match=r"key 'max_new_tokens': -1 is not allowed; allowed: a positive integer"):
        TASKS.get("nq").with_options(max_new_tokens=-1)
    with pytest.raises(ValueError, match=r"option\(s\) \['prompt'\] cannot be set; allowed: scoring, max_new_tokens"):
        TASKS.get("nq").with_options(prompt="x")


def test_supports_choice():
    assert {n for n in TASKS.names() if TASKS.get(n).supports_choice} == {"rte", "rte_train", "boolq", "mutual", "sst2"}


def test_choice_mode_needs_choices():
    with pytest.raises(ValueError, match=r"nq.yaml: key 'scoring': 'choice' is not allowed; allowed: generate"):
        TASKS.get("nq").with_options(scoring="choice")
    with pytest.raises(ValueError, match="no choices"):
        TASKS.get("nq").choices_for(Item("0", {}, ["x"], "x"))
    assert TASKS.get("mutual").choices_for(Item("0", {}, "A", " A")) == [" A", " B", " C", " D"]


# --- prompts ----------------------------------------------------------------------------------

RENDERED = {
    "gsm8k": (
        {"question": "Ann has 2 pens and buys 3 more. How many pens does she have?", "hint": ""},
        "Q: Ann has 2 pens and buys 3 more. How many pens does she have? A: Let's think step by step. "
        "Therefore, the answer (arabic numerals) is:",
    ),
    "gsm8k_hint_leak": (
        {"question": "Ann has 2 pens and buys 3 more. How many pens does she have?", "hint": "2 + 3 = 5."},
        "Q: Ann has 2 pens and buys 3 more. How many pens does she have? A: Let's think step by step. "
        "2 + 3 = 5. Therefore, the answer (arabic numerals) is:",
    ),
    "rte": (
        {"sentence1": "Cats sleep a lot", "sentence2": "cats rest"},
        "Cats sleep a lot entails the cats rest. True or False? answer:",
    ),
    "rte_train": (
        {"sentence1": "Cats sleep a lot", "sentence2": "cats rest"},
        "Cats sleep a lot entails the cats rest. True or False? answer:",
    ),
    "nq": (
        {"document": "Rome is in Italy.", "question": "where is rome?"},
        "Refer to the passage below and answer the following question. Passage: Rome is in Italy. "
        "Question: where is rome?",
    ),
    "boolq": (
        {"passage": "Ice floats on water.", "question": "does ice float", "title": "Ice"},
        "Please answer the given question based on the passage. The answer should be exact 'yes' or 'no'. "
        "passage: Ice floats on water. question: does ice float. answer:",
    ),
    "mutual": (
        {"article": "m : hi . f : hello .", "o0": "m : bye .", "o1": "m : how are you ?", "o2": "m : no .", "o3": "m : yes ."},
        "Q: m : hi . f : hello . Which choice is correct? Answer Choices: (A)m : bye . (B)m : how are you ? "
        "(C)m : no . (D)m : yes . A: Among A through D, the answer is",
    ),
    "samsum": (
        {"dialogue": "Ann: Lunch?\nBob: Sure."},
        "Ann: Lunch?\nBob: Sure. TL;DR:",
    ),
    "conll2003": (
        {"sentence": "EU rejects German call.", "entity_type": "Organization"},
        "Please identify Organization Entity from the given text. Text: EU rejects German call. Entity:",
    ),
    "conll2003_recall_compat": (
        {"sentence": "EU rejects German call.", "entity_type": "Miscellaneous"},
        "Please identify Miscellaneous Entity from the given text. Text: EU rejects German call. Entity:",
    ),
    "sst2": (
        {"text": "a lovely film ."},
        "For each snippet of text, label the sentiment of the text as positive or negative. The answer should be "
        "exact 'positive' or 'negative'. text: a lovely film . answer:",
    ),
}


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_render(name):
    fields, expected = RENDERED[name]
    assert TASKS.get(name).render(Item("0", fields, "", "")) == expected


def test_every_task_has_a_render_case():
    assert set(RENDERED) == set(TASKS.names())


def test_render_keeps_braces_in_item_text():
    item = Item("0", {"dialogue": "Ann: use {x} here"}, "", "")
    assert TASKS.get("samsum").render(item) == "Ann: use {x} here TL;DR:"


# --- parsing and scoring ----------------------------------------------------------------------

PARSED = [
    ("sst2", " Positive! It was great", "positive"),
    ("sst2", " neutral", ""),
    ("rte", " false, because", "False"),
    ("boolq", " Yes.", "yes"),
    ("mutual", " (B) because a man says so", "B"),
    ("mutual", " a man says so", ""),
    ("gsm8k", " 18 dollars. Next, 20", "18"),  # the prompt ends "is:": the first number is the answer
    ("gsm8k", "\n3-4 apples", "3"),
    ("nq", "\nAnswer: Paris\nQuestion: who", "Paris"),
    ("samsum", " Ann and Bob will have lunch.", "Ann and Bob will have lunch."),
    ("conll2003", " Peter Blackburn; EU.\nPlease", "Peter Blackburn, EU."),  # the metric normalises "EU."
    ("conll2003", " None", ""),
    ("conll2003_recall_compat", " EU, Germany\n", " EU, Germany\n"),
]


@pytest.mark.parametrize("name, text, answer", PARSED)
def test_parse_and_idempotence(name, text, answer):
    task = TASKS.get(name)
    assert task.parse(text) == answer
    assert task.parse(answer) == answer


def test_score_accepts_choice_strings_and_raw_generations():
    task = TASKS.get("sst2")
    its = [Item("0", {}, "positive", " positive"), Item("1", {}, "negative", " negative")]
    assert task.score([" positive", " positive"], its) == ([1.0, 0.0], 0.5)
    assert task.score(["Negative...", "it is negative"], its) == ([0.0, 1.0], 0.5)
    with pytest.raises(ValueError, match="1 predictions for 2 items"):
        task.score(["x"], its)


def test_score_gsm8k_reads_the_first_number():
    task = TASKS.get("gsm8k")
    its = [Item(str(i), {}, ref, ref) for i, ref in enumerate(["18", "-4", "1200", "-7"])]
    per, rate = task.score(["\n18 dollars. Next, 20", "3-4", "$1,200.", "-7 degrees"], its)
    assert per == [1.0, 0.0, 1.0, 1.0]
    assert rate == 0.75


def test_score_conll_entity_f1():
    task = TASKS.get("conll2003")
    its = [
        Item("0-Person", {"entity_type": "Person"}, ["Peter Blackburn"], "Peter Blackburn"),
        Item("0-Organization", {"entity_type": "Organization"}, ["EU"], "EU"),
        Item("0-Location", {"entity_type": "Location"}, [], "None"),
    ]
    per, f1 = task.score([" Peter Blackburn, EU\n", " European Union", " None"], its)
    assert per == pytest.approx([2 / 3, 0.0, 1.0])
    assert f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 1))


# --- loaders ----------------------------------------------------------------------------------


def test_gsm8k_loader_and_hint_variants(tmp_path):
    write(tmp_path / "test.jsonl", jsonl(
        {"question": "Q one?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
        {"question": "Q two?", "answer": "Sum is 1,200.\n#### 1,200"},
    ))
    items = TASKS.get("gsm8k").load_items(tmp_path)
    assert items == [
        Item("0", {"question": "Q one?", "hint": ""}, "4", "4"),
        Item("1", {"question": "Q two?", "hint": ""}, "1200", "1200"),
    ]
    leak = TASKS.get("gsm8k_hint_leak").load_items(tmp_path, limit=1)
    assert leak == [Item("0", {"question": "Q one?", "hint": "2 + 2 = <<2+2=4>>4"}, "4", "4")]


def test_rte_loader_verbalises_labels(tmp_path):
    write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n"
          "7\tA dog runs.\tAn animal runs.\tentailment\n"
          "8\tA dog sleeps.\tA dog runs.\tnot_entailment\n")
    task = TASKS.get("rte")
    assert task.load_items(tmp_path) == [
        Item("7", {"sentence1": "A dog runs.", "sentence2": "An animal runs."}, "True", " True"),
        Item("8", {"sentence1": "A dog sleeps.", "sentence2": "A dog runs."}, "False", " False"),
    ]
    generate = task.with_options(scoring="generate").load_items(tmp_path)
    assert [it.gold for it in generate] == ["True", "False"]


def test_rte_train_is_rte_on_the_train_split(tmp_path):
    task, base = TASKS.get("rte_train"), TASKS.get("rte")
    assert (task.variant_of, task.dataset) == ("rte", "rte_train")
    same = ("prompt", "scoring", "choices", "verbalizer", "max_new_tokens", "stop", "parser", "metric")
    assert all(getattr(task, key) == getattr(base, key) for key in same)
    # GLUE's train.tsv has the dev layout; the task reads train.tsv and nothing else
    write(tmp_path / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tDev.\tDev.\tentailment\n")
    write(tmp_path / "train.tsv", "index\tsentence1\tsentence2\tlabel\n"
          "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\tnot_entailment\n"
          "1\tA place of sorrow, after Pope John Paul II died.\tPope John Paul II died.\tentailment\n")
    items = task.with_options(scoring="generate").load_items(tmp_path)
    assert [(it.id, it.fields["sentence2"], it.reference) for it in items] == [
        ("0", "Weapons of Mass Destruction Found in Iraq.", "False"), ("1", "Pope John Paul II died.", "True")]
    assert task.score([" False", " false."], items) == ([1.0, 0.0], 0.5)
    (tmp_path / "train.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset 'rte_train': no file matching 'train.tsv'"):
        task.load_items(tmp_path)


def test_nq_loader(tmp_path):
    write(tmp_path / "test.jsonl", jsonl(
        {"question": "who wrote hamlet?", "answer": ["Shakespeare", "William Shakespeare"],
         "output": ["\n\nHamlet was written by Shakespeare.", "unused second passage"]},
    ))
    assert TASKS.get("nq").load_items(tmp_path) == [
        Item("0", {"question": "who wrote hamlet?", "document": "Hamlet was written by Shakespeare."},
             ["Shakespeare", "William Shakespeare"], "Shakespeare"),
    ]


def test_boolq_loader(tmp_path):
    write(tmp_path / "dev.jsonl", jsonl(
        {"question": "is ice cold", "title": "Ice", "answer": True, "passage": "Ice is frozen water."},
        {"question": "is fire cold", "title": "Fire", "answer": False, "passage": "Fire is hot."},
    ))
    items = TASKS.get("boolq").load_items(tmp_path)
    assert [(it.reference, it.gold) for it in items] == [("yes", " yes"), ("no", " no")]
    assert items[1].fields == {"question": "is fire cold", "passage": "Fire is hot.", "title": "Fire"}


def test_mutual_loader_reads_files_in_natural_order(tmp_path):
    for n, answer in [(10, "D"), (2, "B"), (1, "A")]:
        write(tmp_path / "dev" / f"dev_{n}.txt", json.dumps(
            {"answers": answer, "options": ["m : a .", "m : b .", "m : c .", "m : d ."],
             "article": f"f : dialogue {n} .", "id": f"dev_{n}"}))
    items = TASKS.get("mutual").load_items(tmp_path)
    assert [(it.id, it.reference, it.gold) for it in items] == [("dev_1", "A", " A"), ("dev_2", "B", " B"), ("dev_10", "D", " D")]
    assert items[0].fields == {"article": "f : dialogue 1 .", "o0": "m : a .", "o1": "m : b .", "o2": "m : c .", "o3": "m : d ."}
    assert len(TASKS.get("mutual").load_items(tmp_path, limit=2)) == 2


def test_samsum_loader_normalises_line_breaks(tmp_path):
    write(tmp_path / "test.json", json.dumps([
        {"id": "13", "summary": "Ann and Bob will have lunch. ", "dialogue": "Ann: Lunch?\r\nBob: Sure."},
    ]))
    assert TASKS.get("samsum").load_items(tmp_path) == [
        Item("13", {"dialogue": "Ann: Lunch?\nBob: Sure."}, "Ann and Bob will have lunch.", "Ann and Bob will have lunch."),
    ]


CONLL = """-DOCSTART- -X- -X- O

EU NNP I-NP I-ORG
rejects VBZ I-VP O
German JJ I-NP I-MISC
call NN I-NP O
. . O O

Peter NNP I-NP I-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

Rain NN I-NP O
stopped VBD I-VP O
"""


def test_conll_loader_one_item_per_type(tmp_path):
    write(tmp_path / "test.txt", CONLL)
    items = TASKS.get("conll2003").load_items(tmp_path)
    assert len(items) == 12  # 3 sentences x 4 types; -DOCSTART- is not a sentence
    first = {it.fields["entity_type"]: (it.id, it.reference, it.gold) for it in items[:4]}
    assert first == {
        "Person": ("0-Person", [], "None"),
        "Location": ("0-Location", [], "None"),
        "Organization": ("0-Organization", ["EU"], "EU"),
        "Miscellaneous": ("0-Miscellaneous", ["German"], "German"),
    }
    assert items[0].fields["sentence"] == "EU rejects German call."
    assert items[4].reference == ["Peter Blackburn"]
    assert items[8].fields["sentence"] == "Rain stopped"
    limited = TASKS.get("conll2003").load_items(tmp_path, limit=6)  # limit counts items, not sentences
    assert [it.id for it in limited] == [it.id for it in items[:6]]


def test_sst2_loader(tmp_path):
    write(tmp_path / "dev.tsv", "sentence\tlabel\na fine film . \t1\na dull film .\t0\n")
    items = TASKS.get("sst2").load_items(tmp_path)
    assert items == [
        Item("0", {"text": "a fine film ."}, "positive", " positive"),
        Item("1", {"text": "a dull film ."}, "negative", " negative"),
    ]


BAD = [
    ("gsm8k", "test.jsonl", jsonl({"question": "q", "answer": "4\n#### 4"}, {"question": "q", "answer": "no marker"}),
     r"test.jsonl, line 2: field 'answer' does not end with '#### <number>'"),
    ("gsm8k", "test.jsonl", '{"question": "q", "answer": "#### 4"}\n{not json\n', r"test.jsonl, line 2: not valid JSON"),
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n",
     r"dev.tsv, line 2: label 'neutral' is not one of \['entailment', 'not_entailment'\]"),
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n", r"dev.tsv, line 1: header .* lacks column\(s\) \['label'\]"),
    ("rte", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tentailment\n", r"dev.tsv, line 2: 3 tab-separated values"),
    ("nq", "test.jsonl", jsonl({"question": "q", "answer": "Paris", "output": ["p"]}),
     r"test.jsonl, line 1: field 'answer' must be a non-empty list"),
    ("boolq", "dev.jsonl", jsonl({"question": "q", "title": "t", "answer": "yes", "passage": "p"}),
     r"dev.jsonl, line 1: field 'answer' must be true or false"),
    ("mutual", "dev/dev_3.txt", json.dumps({"answers": "A", "options": ["a", "b", "c"], "article": "x", "id": "dev_3"}),
     r"dev_3.txt: field 'options' must hold 4 options"),
    ("mutual", "dev/dev_1.txt", json.dumps({"answers": "E", "options": ["a", "b", "c", "d"], "article": "x"}),
     r"dev_1.txt: label 'E' is not one of"),
    ("samsum", "test.json", json.dumps([{"id": "1", "summary": "s", "dialogue": "d"}, {"id": "2", "dialogue": "d"}]),
     r"test.json, record 1: field 'summary' must be a non-empty string"),
    ("conll2003", "test.txt", "EU NNP I-NP I-ORG\nrejects VBZ I-VP\n", r"test.txt, line 2: expected 'token POS chunk NER'"),
    ("conll2003", "test.txt", "EU NNP I-NP B-COMPANY\n", r"test.txt, line 1: .*got 'EU NNP I-NP B-COMPANY'"),
    ("sst2", "dev.tsv", "sentence\tlabel\nfine .\t1\nodd .\t2\n", r"dev.tsv, line 3: label '2' is not one of \['0', '1'\]"),
]


@pytest.mark.parametrize("name, filename, text, message", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_records_name_file_and_record(tmp_path, name, filename, text, message):
    write(tmp_path / filename, text)
    with pytest.raises(RecordError, match=message):
        TASKS.get(name).load_items(tmp_path)


def test_missing_file_names_expected_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no file matching 'dev.tsv' in .*expects dev.tsv"):
        TASKS.get("rte").load_items(tmp_path)


def test_limit_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        TASKS.get("rte").load_items(tmp_path, limit=0)


# --- YAML validation --------------------------------------------------------------------------

GOOD = """name: mytask
title: My task
dataset: sst2
prompt: "text: {text} answer:"
scoring: choice
choices: [" positive", " negative"]
verbalizer: {"1": positive, "0": negative}
max_new_tokens: 3
stop: ["\\n"]
parser: label
metric: accuracy
"""


def test_valid_yaml_loads(tmp_path):
    task = load_task_file(write(tmp_path / "mytask.yaml", GOOD))
    assert isinstance(task, Task)
    assert (task.name, task.labels, task.stop) == ("mytask", ("positive", "negative"), ["\n"])


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("scoring: choice", "scoring: sample", r"key 'scoring': 'sample' is not allowed; allowed: generate, choice"),
        ("parser: label", "parser: regex", r"key 'parser': 'regex' is not allowed; allowed: entity_list, first_line"),
        ("metric: accuracy", "metric: f1", r"key 'metric': 'f1' is not allowed; allowed: accuracy"),
        ("dataset: sst2", "dataset: imdb", r"key 'dataset': 'imdb' is not allowed; allowed: boolq, conll2003"),
        ("{text}", "{sentence}", r"key 'prompt': '\{sentence\}' is not allowed; allowed: placeholders \{text\}"),
        ("max_new_tokens: 3", "max_new_tokens: 0", r"key 'max_new_tokens': 0 is not allowed; allowed: a positive integer"),
        ('verbalizer: {"1": positive, "0": negative}', 'verbalizer: {"1": positive}', r"key 'verbalizer'.*each label of sst2 \['0', '1'\]"),
        ('choices: [" positive", " negative"]', 'choices: [" good", " bad"]', r"key 'choices'.*one string per label"),
        ('choices: [" positive", " negative"]', "choices: null", r"key 'scoring': 'choice' is not allowed; allowed: generate"),
        ("stop: [", "loader_args: {hint: rationale}\nstop: [", r"key 'loader_args.hint': 'rationale' is not allowed; allowed: options of sst2: none"),
        ("name: mytask", "name: other", r"key 'name': 'other' must equal the file name 'mytask'"),
        ("title: My task", "title: My task\ntemperature: 0.7", r"unknown key 'temperature'; allowed: name, title"),
        ("title: My task\n", "", r"missing key 'title'"),
    ],
)
def test_invalid_yaml_names_file_key_and_allowed(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path / "mytask.yaml", GOOD.replace(old, new))
    with pytest.raises(ValueError, match=message) as err:
        load_task_file(path)
    assert str(path) in str(err.value)


def test_gsm8k_hint_option_is_checked(tmp_path):
    spec = (Path(TASKS.get("gsm8k").source).read_text().replace("name: gsm8k", "name: mygsm")
            .replace("{hint: none}", "{hint: gold}"))
    with pytest.raises(ValueError, match=r"loader_args.hint': 'gold' is not allowed; allowed: none, rationale"):
        load_task_file(write(tmp_path / "mygsm.yaml", spec))
