"""The model: loading (loading.py), token ids and padding (tokens.py), the modules edits touch
(modules.py), batched decoding and scoring (generation.py), weight changes ΔW and their files
(deltas.py), and second-moment statistics (stats.py)."""
