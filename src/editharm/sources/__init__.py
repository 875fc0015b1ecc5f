"""Sources: one grammar for source strings (grammar.py), the places they reach (hub, pypi wheels via
files.py, https URLs, local paths), lock files that pin what online sources resolved to, and the
fetchers of models and statistics corpora. Datasets are fetched by editharm.data.fetch on top of these."""
