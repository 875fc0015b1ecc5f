"""Evaluation: the general-ability tasks (tasks/: YAML, loaders, parsers; metrics.py), running them
(general.py), editing metrics (edits.py), the prediction cache (predcache.py), lm-evaluation-harness
probes (lmeval.py), the one loop over checkpoints (checkpoints.py), and the evaluation jobs (jobs.py)."""
