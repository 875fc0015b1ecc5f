"""Results: the metric-record schema every job writes (records.py), aggregation into tables
(aggregate.py), weight-change statistics (weight_change.py), the HTML report (report.py), and their
jobs (jobs.py)."""
