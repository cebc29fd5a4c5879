# One-command setup: `make run` trains and analyses the default config, `make test` runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all
# The console of `make run`/`make smoke`: progress, failures with their logs, the end-of-run
# tables; not every job's inputs and outputs (the default run's were 580 kB). `QUIET=` shows them.
QUIET ?= --quiet rules

.PHONY: run smoke test test-unit lint report dryrun plan verify bench-env bench config-reference

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when a requirements file or pyproject.toml changes.
$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt requirements-robustbench.txt pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.txt -r requirements-dev.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import torch, torchvision, snakemake, zarr, xarray, robrep"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) $(QUIET)

# Every stage end to end in about 2 minutes (config/smoke.yaml), in smoke/: a results tree of its
# own, so it never mixes with the default run's results/.
smoke: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --directory smoke --configfile config/smoke.yaml $(QUIET)

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --report results/report.zip

# Every artefact under results/ checked (checksums, completeness, comparison stores aligned).
verify: $(STAMP)
	$(BIN)/robrep verify results

# --durations: the slowest tests, so a CI log shows where the suite's time goes.
test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q --durations=15

# The fast tests: no Snakemake run, no SLURM cluster, nothing marked slow.
test-unit: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -m "not integration and not slow and not slurm"

# config/README.md is rendered from config/schema.yaml (tests/test_config_reference.py checks it).
config-reference: $(STAMP)
	$(BIN)/python -m robrep.pipeline.config_reference config/schema.yaml > config/README.md

lint: $(STAMP)
	$(BIN)/ruff check workflow_scripts tests benchmarks
	$(BIN)/ruff format --check workflow_scripts tests benchmarks
	$(BIN)/snakefmt --check Snakefile rules
	$(BIN)/snakemake --lint

dryrun: $(STAMP)
	$(BIN)/snakemake -n --cores $(CORES)

# What a config's run costs, per rule, from the resource model (PLAN_ARGS="--configfile F ...").
plan: $(STAMP)
	$(BIN)/robrep plan $(PLAN_ARGS)

# The competitors of benchmarks/bench_cka.py, kept out of the project's venv.
BENCH_ENV := benchmarks/.env
$(BENCH_ENV)/.installed: $(STAMP)
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --target $(BENCH_ENV) torch-cka==0.21 ckatorch==1.0.3 seaborn==0.13.2
	touch $@

bench-env: $(BENCH_ENV)/.installed

# Every bench's quick case; each writes its figures to benchmarks/results/ (benchmarks/README.md).
bench: bench-env
	$(BIN)/python benchmarks/bench_gram.py --quick
	$(BIN)/python benchmarks/bench_null.py --quick
	$(BIN)/python benchmarks/bench_checksums.py --quick
	$(BIN)/python benchmarks/bench_cka.py --quick
	$(BIN)/python benchmarks/bench_extract.py --quick
	$(BIN)/python benchmarks/bench_jobs.py --quick
	$(BIN)/python benchmarks/bench_gpu.py --quick
	$(BIN)/python benchmarks/report.py
