"""Editing: a setting's edit calls and their checkpoints (run.py, settings.py), the methods and their
hyperparameter presets (methods/, presets/), the regularizers (regularizers/), and the jobs the
train_editor and apply_edits rules run (jobs.py)."""
