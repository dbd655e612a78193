# g2i — the two commands a new user needs: `make demo` and `make test`. Both run setup first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export PYSPARK_PYTHON := $(CURDIR)/$(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast bench lint constraints s3-start s3-stop clean-local

setup:  ## venv + pinned packages, jars, GraphX bridge, SeaweedFS (idempotent)
	@bash scripts/setup.sh

demo: setup  ## run the pipeline on the embedded default (local S3, local Spark, tiny preset)
	@bash scripts/demo.sh

test: setup  ## the whole test suite (starts its own S3 server, Spark and Airflow)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-fast: setup  ## unit tests only (no JVM, no S3 server)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

bench: setup  ## benchmarks; results written to bench/results/
	@bash scripts/bench.sh

lint: setup  ## ruff (line length 120, see pyproject.toml)
	$(VENV)/bin/ruff check g2i_core jobs dags tests bench

constraints:  ## regenerate constraints.txt from the current venv (after a deliberate upgrade)
	$(VENV)/bin/pip freeze --exclude-editable | grep -v '^g2i' > constraints.txt

s3-start: setup
	$(VENV)/bin/g2i s3 start

s3-stop:
	$(VENV)/bin/g2i s3 stop

clean-local:  ## remove local data (S3 data, Spark scratch, Airflow home); keeps the venv and jars
	-$(VENV)/bin/g2i s3 stop
	rm -rf .local/s3 .local/spark .local/airflow .local/demo
