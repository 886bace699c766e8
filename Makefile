# Two entry points: `make run` (install + the whole workflow on the embedded default config)
# and `make test` (install + the test suite). Both create a virtual environment in .venv.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= all
TORCH_VERSION ?= 2.13.0

.PHONY: install run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==$(TORCH_VERSION)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/snakemake --cores $(CORES)

test: install
	$(BIN)/pytest

lint: install
	$(BIN)/snakemake --lint

bench: install
	$(BIN)/python bench/bench_simulator.py
	$(BIN)/python bench/bench_training.py
	$(BIN)/python bench/bench_tng.py
	$(BIN)/python bench/bench_workflow.py

clean:
	rm -rf results logs .snakemake
