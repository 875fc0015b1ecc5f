"""Editing settings: instance or batch × single or sequential, all read from one seeded sequence.

A setting turns a sequence of records into checkpoints. Each checkpoint has a step number (its
file name) and holds some edits:
- instance_sequential: one record per edit call, edits accumulate; step s = after s edits;
- batch_sequential (batch_size b): b records per call, batches accumulate; step s = after s
  batches (s·b edits);
- instance_single: step s = record s edited alone into the unedited model (the usual
  one-edit-at-a-time evaluation, over as many records as there are steps);
- batch_single (batch_sizes): step b = the sequence's first b records edited in one call into
  the unedited model, for each b.
Step 0 is always the unedited model. Every method and regularizer reads the same sequence, so
configurations differ only in how they edit it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from editharm.core.records import EditRecord

KINDS = ("instance_single", "instance_sequential", "batch_single", "batch_sequential")


@dataclass(frozen=True)
class Setting:
    kind: str
    batch_size: int = 1  # batch_sequential
    batch_sizes: tuple[int, ...] = ()  # batch_single
    steps: Optional[tuple[int, ...]] = None  # None: the global steps that fit

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"setting {self.kind!r} is not allowed; allowed: {', '.join(KINDS)}")
        if self.kind == "batch_single" and not self.batch_sizes:
            raise ValueError("setting batch_single needs 'batch_sizes', a list of sizes ≥ 1")
        if self.kind != "batch_single" and self.batch_sizes:
            raise ValueError(f"setting {self.kind}: 'batch_sizes' belongs to batch_single only")
        if self.kind != "batch_sequential" and self.batch_size != 1:
            raise ValueError(f"setting {self.kind}: 'batch_size' belongs to batch_sequential only")
        if self.kind == "batch_single" and self.steps is not None:
            raise ValueError("setting batch_single: its steps are its batch sizes; give 'batch_sizes', not 'steps'")

    @classmethod
    def from_params(cls, kind: str, spec: dict[str, Any]) -> "Setting":
        spec = dict(spec)
        sizes = tuple(spec.pop("batch_sizes", ()))
        steps = spec.pop("steps", None)
        return cls(kind, batch_sizes=sizes, steps=None if steps is None else tuple(steps), **spec)

    @property
    def sequential(self) -> bool:
        return self.kind.endswith("_sequential")

    def max_step(self, n_edits: int) -> int:
        """The largest step a sequence of `n_edits` records can give."""
        if self.kind == "batch_single":
            return n_edits
        return n_edits // self.batch_size

    def resolve_steps(self, global_steps: list[int], n_edits: int) -> list[int]:
        """Checkpoint steps, 0 first. Explicit steps beyond the sequence are an error; the global
        steps are filtered to those that fit (batch_sequential has fewer steps than edits)."""
        top = self.max_step(n_edits)
        if self.kind == "batch_single":
            wanted = sorted(set(self.batch_sizes))
            if wanted[-1] > n_edits or wanted[0] < 1:
                raise ValueError(f"setting batch_single: batch_sizes {wanted} must be in 1..{n_edits} "
                                 "(sequences.n_edits)")
        elif self.steps is not None:
            wanted = sorted(set(self.steps))
            if wanted[0] < 0 or wanted[-1] > top:
                raise ValueError(f"setting {self.kind}: steps {wanted} must be in 0..{top} "
                                 f"(sequences.n_edits {n_edits} / batch size {self.batch_size})")
        else:
            wanted = sorted(s for s in set(global_steps) if s <= top)
        return sorted({0, *wanted})

    def edits_at(self, step: int) -> int:
        """Number of edits in the model at a checkpoint (the x-axis of the report's curves)."""
        if step == 0:
            return 0
        return {"instance_single": 1, "instance_sequential": step, "batch_single": step,
                "batch_sequential": step * self.batch_size}[self.kind]

    def plan(self, records: list[EditRecord], steps: list[int]) -> list[tuple[int, list[EditRecord]]]:
        """The edit calls: (step, records of that call), in order.

        Sequential settings return every call up to the last step (each builds on the ones before);
        single settings return one call per nonzero step, each from the unedited model.
        """
        last = max(steps)
        if self.kind == "instance_sequential":
            return [(s, [records[s - 1]]) for s in range(1, last + 1)]
        if self.kind == "batch_sequential":
            b = self.batch_size
            return [(s, records[(s - 1) * b : s * b]) for s in range(1, last + 1)]
        if self.kind == "instance_single":
            return [(s, [records[s - 1]]) for s in steps if s > 0]
        return [(s, records[:s]) for s in steps if s > 0]
