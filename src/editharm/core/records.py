"""The one edit-record schema every editing dataset is mapped to."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Optional


@dataclass(frozen=True)
class EditRecord:
    id: str
    subject: str
    prompt: str  # contains `subject` verbatim
    target_new: str
    ground_truth: str
    rephrase_prompt: str
    locality_prompt: str
    locality_answer: str
    portability_prompt: Optional[str] = None
    portability_answer: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ("id", "subject", "prompt", "target_new"):
            if not getattr(self, name):
                raise ValueError(f"edit record {self.id!r}: field {name!r} is empty")
        if self.subject not in self.prompt:
            raise ValueError(
                f"edit record {self.id!r}: subject {self.subject!r} does not occur in prompt {self.prompt!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EditRecord":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(
                f"edit record {d.get('id')!r}: unknown field(s) {sorted(unknown)}; allowed: {sorted(known)}"
            )
        return cls(**{k: (str(v) if k == "id" else v) for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
