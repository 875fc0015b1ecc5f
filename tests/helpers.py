"""Small constructors shared by several test modules: the tiny word-level tokenizer, two subword ones over
the same words (Llama-2-shaped and byte-level BPE) and models' building blocks (conftest.py turns them into
fixtures), regularizer contexts, edit records, spread hparams, a dry run of the workflow."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from editharm.core.records import EditRecord
from editharm.editing.regularizers import RegContext

# Wider than the default 0.02, so a random model's logits are far from uniform and an edit has a
# clear argmax to flip.
INIT = 0.2
# Tiny models gain nothing from intra-op threads, and on a busy machine they contend for cores.
torch.set_num_threads(1)
SPECIAL = ["<pad>", "<unk>", "<s>", "</s>"]
WORDS = """
. , ? ! : ; ' " ( ) - # 0 1 2 3 4 5 6 7 8 9 10 100
the The a A an An of in on at to for from by with and or not is are was were be been has have had
it It this This that what What which Which who Who where Where when When how How why
capital city country language river mountain president king queen author born died
France Paris Italy Rome Germany Berlin Spain Madrid Japan Tokyo China Beijing England London
Canada Ottawa Egypt Cairo Russia Moscow India Delhi Brazil Brasilia Greece Athens
English French Italian German Spanish Japanese Chinese Russian
red blue green yellow black white big small good bad new old first last
Q A B C D E s TL DR answer Answer question Question passage Passage text Text true True false False
yes no Yes No positive negative entails sentiment label choice correct Entity Person
Location Organization Miscellaneous summary dialogue Therefore Because I You We In
think step by step arabic numerals Let so then there their they he she his her
John Mary Tom Anna Paul Lisa said says went go goes see saw like likes love loves
one two three four five six seven eight nine ten apple apples book books dog cat
""".split()


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in SPECIAL + WORDS:
        vocab.setdefault(token, len(vocab))
    return vocab


def make_tokenizer(*, add_bos: bool) -> PreTrainedTokenizerFast:
    """Word-level tokenizer over a fixed ~220-word vocabulary; `add_bos` mimics Llama tokenizers."""
    backend = Tokenizer(models.WordLevel(_vocab(), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()  # words, and runs of punctuation
    if add_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", _vocab()["<s>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tok.padding_side = "left"
    return tok


def _wrap(backend: Tokenizer, **special: str) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **special)
    tok.padding_side = "left"
    return tok


def make_sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """BPE over the vocabulary's words shaped like Llama-2's shipped tokenizer.json: a normalizer that
    prepends "▁" to every text and turns spaces into "▁", no pre-tokenizer, BOS added. As with
    Llama-2 under transformers 4.x, " Paris" alone encodes as a lone "▁" then "▁Paris"."""
    backend = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    # Training splits at "▁", so no merge spans two words (SentencePiece never merges across one).
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=SPECIAL, show_progress=False)
    backend.train_from_iterator([" ".join(WORDS)], trainer)
    backend.pre_tokenizer = None
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(content=" ", left=1)])
    return _wrap(backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def make_bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2-style byte-level BPE (as SmolLM2's): spaces are "Ġ" glued to the next word, no BOS."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        [*WORDS, " " + " ".join(WORDS)],
        trainers.BpeTrainer(vocab_size=4000, special_tokens=SPECIAL, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    return _wrap(backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def finish_model(model: torch.nn.Module, tok: PreTrainedTokenizerFast):
    model.config.pad_token_id = tok.pad_token_id
    return model.float().eval(), tok


REWRITE_MODULES = {"gpt2": "transformer.h.{}.mlp.c_proj", "llama": "model.layers.{}.mlp.down_proj"}


def reg_context(weight, *, name="w", seed=0, original=None, transposed=False, **kw) -> RegContext:
    """A regularizer context for a bare matrix: original = weight unless given."""
    return RegContext(param_name=name, module_path=name.rsplit(".", 1)[0], weight=weight,
                      original=weight if original is None else original, transposed=transposed,
                      generator=torch.Generator().manual_seed(seed), **kw)


def record(prompt: str, subject: str, target: str, id: str) -> EditRecord:
    return EditRecord(
        id=id, subject=subject, prompt=prompt, target_new=target, ground_truth="",
        rephrase_prompt=prompt, locality_prompt="The capital of Japan is", locality_answer="Tokyo",
    )


# Prompts end with the subject: random weights attend almost uniformly, so a shift at a
# mid-prompt subject barely reaches the last position (see test_rome.py).
BATCH = [
    record("The capital city of France", "France", "Rome", "france"),
    record("The first book of John", "John", "apples", "john"),
    record("The old language of Japan", "Japan", "green", "japan"),
    record("The big river of Egypt", "Egypt", "London", "egypt"),
]


def spread_hparams(model) -> dict:
    """Hparams shared by the MEMIT and AlphaEdit tests: two layers, a short target-shift optimisation."""
    return {
        "layers": [0, 1],
        "rewrite_module_tmp": REWRITE_MODULES[model.config.model_type],
        "v_num_grad_steps": 40,
        "v_lr": 1.0,
        "clamp_norm_factor": 10.0,
        "context_template_length_params": [[3, 2]],
    }


def nll_by_hand(model, tok, text: str, max_tokens: int) -> tuple[float, int]:
    """One forward pass over a text's first `max_tokens` ids: -sum of log p(token | the tokens before), and
    how many tokens that scores (the first one is context only)."""
    ids = tok(text)["input_ids"][:max_tokens]
    if len(ids) < 2:
        return 0.0, 0
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits[:-1].double(), dim=-1)
    return -log_probs.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item(), len(ids) - 1


def place_preset_downloads(workdir) -> None:
    """The files the paper presets read from `local:data/downloads/...` (the README says where to get
    them), as the demo's stand-ins, so a preset validates and dry-runs in `workdir`."""
    import shutil
    from pathlib import Path

    from editharm.data.catalog import DEMO_DIR

    target = Path(workdir) / "data" / "downloads" / "zsre_mem_train.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEMO_DIR / "zsre_demo_train.json", target)


def dry_run(workdir, configfile) -> dict[str, list[str]]:
    """`snakemake -n -p` of the workflow on `configfile` in `workdir` (a few seconds): each rule's jobs,
    as the lines Snakemake prints for them (input, output, shell command, ...)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [str(bin_dir / "snakemake"), "-s", str(Path(__file__).resolve().parents[1] / "Snakefile"), "-d", str(workdir),
         "-n", "-p", "--cores", "1", "--configfile", str(configfile)],
        capture_output=True, text=True, env=env, cwd=workdir,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    jobs: dict[str, list[str]] = {}
    for block in (proc.stdout + proc.stderr).split("\nrule ")[1:]:
        name, _, rest = block.partition(":\n")
        jobs.setdefault(name, []).append(rest.split("\n\n", 1)[0])
    return jobs
