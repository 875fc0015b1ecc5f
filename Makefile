# Two entry points: `make run` (set up, then run the pipeline on params.yaml) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c requirements/constraints.txt
export PATH := $(BIN):$(PATH)

.PHONY: setup run test lint pull clean-results

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements/constraints.txt requirements/lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -r requirements/lock.txt
	$(PIP) --no-deps -e .
	touch $@

# `dvc repro` runs `snakemake --cores all` (dvc.yaml) and records the results in DVC's cache.
run: setup
	dvc repro

# After cloning (or `git pull`): fetch the results dvc.lock records from the DVC remote, then mark them up to
# date for Snakemake in DAG order. DVC restores contents, not modification times; `--touch --forceall` also
# records each job's params and code as a run would, so later params changes rerun exactly what they affect.
# Uses dvc and snakemake from .venv when `make setup` made one, else from PATH.
pull:
	dvc pull
	snakemake --cores all --touch --forceall --quiet

# The tests also exercise the optional lm-evaluation-harness bridge, so they install that extra.
$(VENV)/.installed-lmeval: $(VENV)/.installed requirements/lmeval.txt
	$(PIP) -r requirements/lmeval.txt
	touch $@

test: setup $(VENV)/.installed-lmeval
	$(BIN)/python -m pytest -q

lint: setup
	snakemake --lint

# Generated results only: fetched models and datasets stay, and so do the .gitignore files under reports/.
clean-results:
	rm -rf data/sequences data/edits data/eval data/stats data/cache data/editors data/probes .snakemake logs benchmarks
	rm -f reports/index.html local-sources.json
	find reports/metrics -type f ! -name .gitignore -delete
