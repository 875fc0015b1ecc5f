"""Editing methods: one registry (`METHODS`), one interface (`EditMethod`, in base.py), typed
hyperparameters. Importing this package registers every method."""
from editharm.editing.methods import alphaedit, emmet, ft, kn, memit, mend, r_rome, rome  # noqa: F401  (they register)
from editharm.editing.methods.base import METHODS, EditMethod, Editor, Stats

__all__ = ["METHODS", "EditMethod", "Editor", "Stats"]
