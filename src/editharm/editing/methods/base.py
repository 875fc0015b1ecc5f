"""The editing-method interface and its registry."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Optional

import torch

from editharm.core.params import TypedParams
from editharm.core.records import EditRecord
from editharm.core.registry import Registry
from editharm.model.modules import edited_matrix

Stats = Callable[[str], torch.Tensor]
Editor = dict[str, torch.Tensor]


class EditMethod:
    """A model-editing algorithm. Subclasses set `name` and `Hparams` and implement the classmethods."""

    name: ClassVar[str]
    Hparams: ClassVar[type[TypedParams]]

    @classmethod
    def param_names(cls, model: torch.nn.Module, hparams: Any) -> list[str]:
        """Names of the parameters this method changes, known before any edit: by default the weight
        of each of its `edited_modules`."""
        return [edited_matrix(model, path)[0] for path in cls.edited_modules(hparams)]

    @classmethod
    def edited_modules(cls, hparams: Any) -> list[str]:
        """Module paths whose weights this method changes (known from the hparams alone, so the
        pipeline can plan statistics for regularizers that need them before loading a model)."""
        raise NotImplementedError

    @classmethod
    def stats_modules(cls, hparams: Any) -> list[str]:
        """Module paths whose input second moment `compute_delta` needs (empty when none)."""
        return []

    @classmethod
    def trainable(cls) -> bool:
        """True when the method needs an editor trained once per model (`train`) before it can edit."""
        return False

    @classmethod
    def train(
        cls,
        model: torch.nn.Module,
        tok: Any,
        records: list[EditRecord],
        hparams: Any,
        *,
        seed: int = 0,
    ) -> Editor:
        """Train the method's editor on `records` (a train split, never the edited ones); the model is left unchanged."""
        raise NotImplementedError(f"{cls.name} has no training step")

    @classmethod
    def compute_delta(
        cls,
        model: torch.nn.Module,
        tok: Any,
        records: list[EditRecord],
        hparams: Any,
        *,
        stats: Optional[Stats] = None,
        state: Optional[dict[str, Any]] = None,
        editor: Optional[Editor] = None,
    ) -> dict[str, torch.Tensor]:
        """ΔW that makes the model (at its current weights) learn `records`; the model is left unchanged.

        `state` is one dict per edit sequence, empty at its start, for methods that carry something
        from one edit call to the next (AlphaEdit's keys of earlier edits; the context prefixes ROME,
        MEMIT and AlphaEdit generate from the unedited model at the first call); `editor` is the output
        of `train` for trainable methods.
        """
        raise NotImplementedError


METHODS: Registry[type[EditMethod]] = Registry("method")
