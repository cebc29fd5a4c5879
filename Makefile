# One-command setup: `make run` trains and analyses the default config, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: run test lint report dryrun clean-results

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when a requirements file or pyproject.toml changes.
$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, torchvision, snakemake, zarr, xarray, robrep"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --report results/report.zip

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/ruff format --check workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES)
