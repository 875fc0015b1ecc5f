"""Configuration: params.yaml loaded and validated (load.py, against params.schema.json), and the
values the rules derive from it (derive.py)."""
