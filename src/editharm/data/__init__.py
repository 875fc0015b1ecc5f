"""Data: the dataset catalog (catalog.py), fetching a dataset into its release layout (fetch.py, with
release-format conversion in releaseformat.py), editing datasets as edit records (editsets.py) and
seeded edit sequences (sequences.py). The embedded demo bundle lives in demo/."""
