# One-command setup: `make run` trains and analyses the default config, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: run test lint report dryrun verify bench-env bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when a requirements file or pyproject.toml changes.
$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt requirements-robustbench.txt pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, torchvision, snakemake, zarr, xarray, robrep"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --report results/report.zip

# Every artefact under results/ checked (checksums, completeness, comparison stores aligned).
verify: $(STAMP)
	$(BIN)/robrep verify results

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/ruff format --check workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES)

# The competitors of benchmarks/bench_cka.py, kept out of the project's venv.
BENCH_ENV := benchmarks/.env
$(BENCH_ENV)/.installed: $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --target $(BENCH_ENV) torch-cka==0.21 ckatorch==1.0.3 seaborn==0.13.2
	touch $@

bench-env: $(BENCH_ENV)/.installed

bench: bench-env
	$(BIN)/python benchmarks/bench_extract.py
	$(BIN)/python benchmarks/bench_extract.py --pool 8
	$(BIN)/python benchmarks/bench_cka.py --limit-batches 2
