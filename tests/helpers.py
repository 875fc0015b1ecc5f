"""Small constructors shared by several test modules."""
from __future__ import annotations

import torch

from editharm.core.records import EditRecord
from editharm.editing.regularizers import RegContext


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
    from conftest import REWRITE_MODULES

    return {
        "layers": [0, 1],
        "rewrite_module_tmp": REWRITE_MODULES[model.config.model_type],
        "v_num_grad_steps": 40,
        "v_lr": 1.0,
        "clamp_norm_factor": 10.0,
        "context_template_length_params": [[3, 2]],
    }
